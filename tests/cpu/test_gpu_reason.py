"""One line saying why there is no usable GPU (cuflash.gpu.why_no_gpu), for each way it can happen."""
from __future__ import annotations

import pytest

from cuflash import gpu

cupy = pytest.importorskip("cupy")


@pytest.fixture(autouse=True)
def fresh():
    gpu.why_no_gpu.cache_clear()
    yield
    gpu.why_no_gpu.cache_clear()


def test_no_driver(monkeypatch):
    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", lambda: 0)
    assert "there is no NVIDIA driver on this machine" in gpu.why_no_gpu()


def test_driver_too_old(monkeypatch):
    def count():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", lambda: 12020)
    monkeypatch.setattr(cupy.cuda.runtime, "runtimeGetVersion", lambda: 13000)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", count)
    reason = gpu.why_no_gpu()
    assert "supports CUDA 12.2 but this CuPy needs CUDA 13.0" in reason and "\n" not in reason


def test_no_device(monkeypatch):
    def count():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", lambda: 12020)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", count)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.why_no_gpu() == ("no GPU visible (RuntimeError: cudaErrorNoDevice: no CUDA-capable device is "
                                "detected; CUDA_VISIBLE_DEVICES='')")


def test_zero_devices(monkeypatch):
    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", lambda: 12020)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    assert "device count 0" in gpu.why_no_gpu()


def test_a_gpu(monkeypatch):
    monkeypatch.setattr(cupy.cuda.runtime, "driverGetVersion", lambda: 12020)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    assert gpu.why_no_gpu() is None
