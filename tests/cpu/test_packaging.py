"""The wheel holds every cuflash package and the CUDA sources, and an installed copy finds them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a clean copy: setuptools leaves build/ and *.egg-info/ in the
    # source folder, and a stale build/ could put deleted files into a wheel.
    source = tmp_path_factory.mktemp("source") / "cuflash"
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv", "venv")
    shutil.copytree(REPO, source, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    (path,) = out.glob("cuflash-0.1.0-*.whl")
    return path


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_wheel_has_every_package(wheel):
    names = wheel_files(wheel)
    packages = sorted(p.parent for p in (REPO / "cuflash").rglob("__init__.py") if "__pycache__" not in p.parts)
    assert REPO / "cuflash" / "compile" in packages
    for package in packages:
        for module in package.glob("*.py"):
            assert module.relative_to(REPO).as_posix() in names, f"{module.relative_to(REPO)} is not in the wheel"
    for required in ("cuflash/__init__.py", "cuflash/cli.py", "cuflash/compile/cache.py", "cuflash/bench/__init__.py"):
        assert required in names, f"{required} is not in the wheel"


def test_wheel_has_the_kernel_sources(wheel):
    names = wheel_files(wheel)
    sources = [
        p for p in (REPO / "kernels_cu").rglob("*")
        if p.suffix in (".cu", ".cuh") and "dev" not in p.relative_to(REPO / "kernels_cu").parts
    ]
    assert any(p.name == "fwd.cu" for p in sources)
    for path in sources:
        inside = "cuflash/kernels_cu/" + path.relative_to(REPO / "kernels_cu").as_posix()
        assert inside in names, f"{inside} is not in the wheel"
    assert not any(n.startswith("cuflash/kernels_cu/dev/") for n in names), "kernels_cu/dev/ experiments must not ship"


def test_wheel_declares_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as zf:
        entry_points = next(zf.read(n).decode() for n in zf.namelist() if n.endswith("entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in zf.namelist() if n.endswith("/METADATA"))
    assert "cuflash = cuflash.cli:main" in entry_points
    assert "Requires-Python: >=3.10" in metadata
    for extra in ("cuda12", "cuda13", "torch", "jax", "test", "bench"):
        assert f"Provides-Extra: {extra}" in metadata


def test_installed_wheel_finds_its_kernels(wheel, tmp_path):
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    code = "import cuflash.compile.env as e, cuflash; print(e.kernels_dir()); print(cuflash.__file__)"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CUFLASH_")}
    run_env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    kernels, package = out.stdout.split()
    assert Path(package).parent == site / "cuflash"  # the installed copy, not the checkout
    assert Path(kernels) == (site / "cuflash" / "kernels_cu").resolve()
    assert (Path(kernels) / "fwd.cu").is_file()


def test_ci_runs_the_readme_test_commands():
    """The README's Tests block is an install line then the test command; .ci/run runs both."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Tests", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    install, command = (line.split("#", 1)[0].strip() for line in block.strip().splitlines())
    assert install == 'pip install -e ".[cuda12,test,jax]"', install
    assert command.startswith("python -m pytest"), command
    ci = (REPO / ".ci" / "run").read_text()
    assert command in ci.splitlines() or f"{command} " in ci or f"{command}\n" in ci, f".ci/run does not run {command!r}"
    assert install in ci
    assert os.access(REPO / ".ci" / "run", os.X_OK), ".ci/run must be executable"


def test_wheel_metadata_is_complete(wheel):
    """License, classifiers and bounded dependencies reach the wheel's METADATA (issue: first contact)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        assert any(n.endswith("licenses/LICENSE") for n in zf.namelist())
    assert "License-Expression: BSD-3-Clause" in meta
    assert "Classifier: Environment :: GPU :: NVIDIA CUDA :: 12" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    nvrtc = [r for r in requires if "nvidia-cuda-nvrtc" in r]
    assert nvrtc and all(("<" in r or "==" in r) for r in nvrtc), nvrtc  # every NVRTC pin has an upper bound
    assert any(r.startswith("Requires-Dist: numpy>=") for r in requires)
    assert any("hypothesis" in r and "test" in r for r in requires)
