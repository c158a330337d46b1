"""Whether this machine can run cuflash's kernels, and if not, why, in one line.

The API, `cuflash info`, `cuflash bench` and the test tiers all ask ``why_no_gpu()``, so a
machine without a GPU says so the same way everywhere, instead of CuPy's
``cudaErrorInsufficientDriver`` (which reads like "update your driver" where the truth is
"there is no driver, and no GPU, here").
"""
from __future__ import annotations

import functools
import os

INSTALL_HINT = "pip install 'cuflash[cuda12]' (or cuda13; -e '.[cuda12]' in a checkout)"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


@functools.lru_cache(maxsize=None)
def why_no_gpu() -> str | None:
    """None when CuPy sees a CUDA GPU, else one line saying why not and what to do."""
    try:
        import cupy
    except Exception as exc:  # not installed, or a broken install
        return f"CuPy cannot be imported ({one_line(exc)}): {INSTALL_HINT}"
    runtime = cupy.cuda.runtime
    try:
        driver = runtime.driverGetVersion()  # 0 when no NVIDIA driver is installed
    except Exception:
        driver = 0
    if driver == 0:
        return ("no GPU visible: there is no NVIDIA driver on this machine (cuflash needs an NVIDIA GPU of "
                "compute capability 8.0 or newer, with its driver)")
    try:
        count = runtime.getDeviceCount()
    except Exception as exc:
        text = one_line(exc)
        if "InsufficientDriver" in text:
            built = _cuda_version(runtime.runtimeGetVersion())
            return (f"no GPU usable: the NVIDIA driver supports CUDA {_cuda_version(driver)} but this CuPy needs "
                    f"CUDA {built}: update the driver, or install the CuPy of the driver's CUDA ({text})")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        return f"no GPU visible ({text}{where})"
    if count < 1:
        return "no GPU visible (CuPy counts 0 devices, device count 0)"
    return None
