"""Packages of the cuflash wheel; all other metadata is in pyproject.toml.

The CUDA sources live in kernels_cu/ at the top of the repository (where the
kernel engineers edit them, and where a checkout run with PYTHONPATH=. reads
them). The wheel ships them as package data under cuflash/kernels_cu/, which
cuflash.compile.env.kernels_dir() finds in an installed copy. kernels_cu/dev/
(experiments) is left out.
"""
from pathlib import Path

from setuptools import find_packages, setup

KERNEL_FOLDERS = sorted(
    p for p in Path("kernels_cu").rglob("*") if p.is_dir() and "dev" not in p.relative_to("kernels_cu").parts
)
KERNEL_PACKAGES = {"cuflash.kernels_cu": "kernels_cu"}
for folder in KERNEL_FOLDERS:
    name = "cuflash.kernels_cu." + ".".join(folder.relative_to("kernels_cu").parts)
    KERNEL_PACKAGES[name] = folder.as_posix()

setup(
    packages=find_packages(include=["cuflash", "cuflash.*"]) + list(KERNEL_PACKAGES),
    package_dir=KERNEL_PACKAGES,
    package_data={name: ["*.cu", "*.cuh"] for name in KERNEL_PACKAGES},
)
