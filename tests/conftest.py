"""Test tiers (DESIGN section 5): tests/cpu (no CUDA), tests/compile (NVRTC, no GPU), tests/gpu (a GPU).

Every test under tests/gpu/ is marked `gpu` and skipped when CuPy sees no GPU,
so `python -m pytest tests` runs everywhere and each machine runs what it can.
"""
from __future__ import annotations

from pathlib import Path

import pytest

GPU_DIR = Path(__file__).parent / "gpu"


def gpu_skip_reason() -> str | None:
    """None when CuPy sees a GPU, else why not (cuflash.gpu.why_no_gpu: one line)."""
    from cuflash.gpu import why_no_gpu

    return why_no_gpu()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if GPU_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and gpu_skip_reason():
        skip = pytest.mark.skip(reason=gpu_skip_reason())
        for item in gpu_items:
            item.add_marker(skip)


# ---------------------------------------------------------------- toy kernels
# A stand-in for kernels_cu/ with the same file and kernel names as the real
# forward kernel (fwd.cu, extern "C" cuflash_fwd), so the real FwdSpec specs
# render and compile against it: tests of the compile machinery do not depend
# on the state of the real kernels.

TOY_FWD = """\
// toy forward kernel: out[i] = TOY_SCALE * (i + CUFLASH_HEAD_DIM)
#include "common/toy.cuh"
#include "common/toy.cuh"
extern "C" __global__ void cuflash_fwd(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = toy_value(i);
}
"""

TOY_HEADER = """\
#pragma once
#include "values.cuh"
__device__ inline float toy_value(int i) { return TOY_SCALE * (i + CUFLASH_HEAD_DIM); }
"""

TOY_VALUES = """\
#pragma once
#define TOY_SCALE 2.0f
"""

#: A kernel limited to 32 registers (1024 threads x 2 blocks) that needs more: ptxas spills.
TOY_SPILLING_FWD = """\
extern "C" __global__ void __launch_bounds__(1024, 2) cuflash_fwd(float* out, int n) {
    float a[48];
#pragma unroll
    for (int i = 0; i < 48; ++i) a[i] = out[i * 256 + threadIdx.x];
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 48; ++i) s += a[i] * a[47 - i] * out[i];
#pragma unroll
    for (int i = 0; i < 48; ++i) out[i * 256 + threadIdx.x] = a[i] * s;
}
"""


class ToyKernels:
    """A toy kernels folder (``root``) and a cache folder (``cache``); ``write``
    replaces its files (default: the toy sources above)."""

    FWD, HEADER, VALUES, SPILLING_FWD = TOY_FWD, TOY_HEADER, TOY_VALUES, TOY_SPILLING_FWD

    def __init__(self, root: Path, cache: Path):
        self.root, self.cache = root, cache
        self.write()

    def write(self, fwd: str = TOY_FWD, header: str = TOY_HEADER, values: str = TOY_VALUES) -> "ToyKernels":
        (self.root / "common").mkdir(parents=True, exist_ok=True)
        (self.root / "fwd.cu").write_text(fwd)
        (self.root / "common" / "toy.cuh").write_text(header)
        (self.root / "common" / "values.cuh").write_text(values)
        return self


@pytest.fixture
def toy_kernels(tmp_path, monkeypatch) -> ToyKernels:
    """Toy kernels as CUFLASH_KERNELS_DIR and an empty CUFLASH_CACHE_DIR, both under tmp_path."""
    toy = ToyKernels(tmp_path / "kernels_cu", tmp_path / "cache")
    monkeypatch.setenv("CUFLASH_KERNELS_DIR", str(toy.root))
    monkeypatch.setenv("CUFLASH_CACHE_DIR", str(toy.cache))
    monkeypatch.delenv("CUFLASH_DISABLE_DISK_CACHE", raising=False)
    monkeypatch.delenv("CUFLASH_NVRTC_OPTIONS", raising=False)
    monkeypatch.delenv("CUFLASH_LOG_LEVEL", raising=False)
    return toy


@pytest.fixture
def toy_spec():
    """A real forward spec (bf16, head dim 64, not causal); renders toy_kernels' fwd.cu."""
    from cuflash.specs import FwdSpec

    return FwdSpec.for_problem("bf16", 64)
