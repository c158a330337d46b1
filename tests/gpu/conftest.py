"""Fixtures of the GPU tests."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def tma_for_small_calls(monkeypatch):
    """The Hopper forward takes TMA loads only for calls of at least tma.MIN_FLOP; the tests' small
    shapes take them too, so that they test that path (the cp.async one: CUFLASH_TMA=0 and the
    arrays TMA cannot address, tests/gpu/test_forward.py)."""
    from cuflash import tma

    monkeypatch.setattr(tma, "MIN_FLOP", 0)


@pytest.fixture(params=["sm90", "portable"])
def kernel_path(request, monkeypatch):
    """Run a test once per kernel family the GPU has: the portable kernels
    (CUFLASH_DISABLE_SM90=1) and, on compute capability 9.0, the Hopper ones.
    Modules opt in with ``pytestmark = [..., pytest.mark.usefixtures("kernel_path")]``."""
    cp = pytest.importorskip("cupy")
    callspec = getattr(request.node, "callspec", None)
    if request.param == "sm90" and callspec is not None and callspec.params.get("dtype") == "fp32":
        pytest.skip("float32 runs on the portable kernels only (the portable run covers it)")
    if request.param == "sm90":
        from cuflash.compile import cache

        if cache.device_compute_capability(cp.cuda.Device().id) != (9, 0):
            pytest.skip("the Hopper kernels need compute capability 9.0")
        monkeypatch.setenv("CUFLASH_DISABLE_SM90", "0")
    else:
        monkeypatch.setenv("CUFLASH_DISABLE_SM90", "1")
    return request.param
