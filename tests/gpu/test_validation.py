"""Bad input raises an error naming the argument, before any kernel runs."""
import numpy as np
import pytest

import cuflash
from cuflash import api, support, testing

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


def qkv(d=64, dtype="bf16", nheads=4, nheads_kv=2):
    return testing.random_qkv(2, 16, 24, nheads, nheads_kv, d, dtype, xp=cp)


def test_wrong_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="q has dtype float32"):
        cuflash.attention(q.astype(cp.float32), k, v)


def test_mixed_dtypes():
    q, _, _ = qkv(dtype="bf16")
    _, k, v = qkv(dtype="fp16")
    with pytest.raises(TypeError, match="k has dtype float16 but q has bfloat16"):
        cuflash.attention(q, k, v)


def test_wrong_ndim():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k must have 4 dims"):
        cuflash.attention(q, k[0], v)


def test_batch_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="batch sizes differ"):
        cuflash.attention(q, k[:1], v[:1])


def test_head_dim_mismatch():
    q, _, _ = qkv(d=64)
    _, k, v = qkv(d=128)
    with pytest.raises(ValueError, match="head dims differ"):
        cuflash.attention(q, k, v)


def test_kv_shape_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="v must have the shape of k"):
        cuflash.attention(q, k, v[:, :5])


def test_heads_not_divisible():
    q, k, v = qkv(nheads=4, nheads_kv=4)
    with pytest.raises(ValueError, match=r"nheads of q \(4\) must be a multiple of nheads of k/v \(3\)"):
        cuflash.attention(q, k[:, :, :3], v[:, :, :3])


@pytest.mark.parametrize("d", [264, 20])
def test_head_dim_limits(d):
    q, k, v = qkv(d=d)
    with pytest.raises(ValueError, match="head dim"):
        cuflash.attention(q, k, v)


def test_last_dim_not_contiguous():
    q, k, v = qkv(d=128)
    with pytest.raises(ValueError, match="q must be contiguous in its last dimension"):
        cuflash.attention(q[..., ::2], k[..., ::2], v[..., ::2])


def test_misaligned_strides():
    q, k, v = qkv(d=64)
    big = cp.empty((2, 16, 4, 68), q.dtype)
    big[..., :64] = q
    with pytest.raises(ValueError, match="q must start on a 16-byte boundary"):
        cuflash.attention(big[..., :64], k, v)


def test_bad_scale():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="softmax_scale"):
        cuflash.attention(q, k, v, softmax_scale=-1.0)


def test_bad_out():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="out must have q's shape"):
        cuflash.attention(q, k, v, out=cp.empty((1, 2, 3, 64), q.dtype))


def test_different_devices():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    q, k, v = qkv()
    with cp.cuda.Device(1):
        k1 = cp.asarray(k)
    with pytest.raises(ValueError, match="k is on GPU 1 but q is on GPU 0"):
        cuflash.attention(q, k1, v)


def test_old_gpu_is_refused(monkeypatch):
    q, k, v = qkv()
    monkeypatch.setattr(support, "MIN_COMPUTE_CAPABILITY", (99, 0))
    api._check_device.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="compute capability"):
            cuflash.attention(q, k, v)
    finally:
        api._check_device.cache_clear()


def test_dlpack_input_from_torch():
    torch = pytest.importorskip("torch")
    q, k, v = (torch.randn(1, 32, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = cuflash.attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    got = torch.from_dlpack(out)
    assert torch.allclose(got.float(), ref.float(), atol=2e-2, rtol=0)
