"""Bad input raises an error naming the argument, before any kernel runs."""
import numpy as np
import pytest

import cuflash
from cuflash import api, reference, support, testing

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


def qkv(d=64, dtype="bf16", nheads=4, nheads_kv=2):
    return testing.random_qkv(2, 16, 24, nheads, nheads_kv, d, dtype, xp=cp)


def test_wrong_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="q has dtype float64"):
        cuflash.attention(q.astype(cp.float64), k, v)


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


# ---------------------------------------------------------------- variant options (DESIGN §3)
# Each bad value raises the stated exception, with a message naming the argument,
# from attention and from attention_backward; the next call, with a valid value of
# the same argument, works (checked against the reference).

BATCH, SEQLEN_Q, SEQLEN_K, NHEADS = 2, 16, 24, 4  # qkv()'s shapes


def f32(shape, value=0.25):
    return cp.full(shape, value, dtype=cp.float32)


BAD_OPTIONS = [
    # (id, argument, bad value (a factory), expected exception type(s))
    ("window_left_below_-1", "window_size", lambda: (-2, 0), ValueError),
    ("window_right_below_-1", "window_size", lambda: (0, -5), ValueError),
    ("window_left_float", "window_size", lambda: (1.5, 0), (TypeError, ValueError)),
    ("window_right_float", "window_size", lambda: (4, 1.5), (TypeError, ValueError)),
    ("window_3_entries", "window_size", lambda: (1, 2, 3), (TypeError, ValueError)),
    ("window_1_entry", "window_size", lambda: (16,), (TypeError, ValueError)),
    ("softcap_negative", "softcap", lambda: -1.0, ValueError),
    ("softcap_nan", "softcap", lambda: float("nan"), ValueError),
    ("softcap_inf", "softcap", lambda: float("inf"), ValueError),
    ("alibi_wrong_nheads", "alibi_slopes", lambda: f32((NHEADS + 1,)), ValueError),
    ("alibi_wrong_batch", "alibi_slopes", lambda: f32((BATCH + 1, NHEADS)), ValueError),
    ("alibi_3_dims", "alibi_slopes", lambda: f32((BATCH, NHEADS, 1)), ValueError),
    ("alibi_float16", "alibi_slopes", lambda: cp.full((NHEADS,), 0.25, dtype=cp.float16), (TypeError, ValueError)),
    ("alibi_numpy", "alibi_slopes", lambda: np.full((NHEADS,), 0.25, dtype=np.float32), TypeError),
    ("sink_wrong_nheads", "learnable_sink", lambda: f32((NHEADS + 1,)), ValueError),
    ("sink_per_batch", "learnable_sink", lambda: f32((BATCH, NHEADS)), ValueError),
    ("sink_float16", "learnable_sink", lambda: cp.zeros((NHEADS,), dtype=cp.float16), (TypeError, ValueError)),
    ("sink_float64", "learnable_sink", lambda: cp.zeros((NHEADS,), dtype=cp.float64), (TypeError, ValueError)),
    ("sink_numpy", "learnable_sink", lambda: np.zeros((NHEADS,), dtype=np.float32), TypeError),
    ("bias_wrong_keys", "bias", lambda: f32((BATCH, NHEADS, SEQLEN_Q, SEQLEN_K + 1)), ValueError),
    ("bias_wrong_batch", "bias", lambda: f32((BATCH + 1, 1, 1, SEQLEN_K)), ValueError),
    ("bias_keys_broadcast", "bias", lambda: f32((BATCH, NHEADS, SEQLEN_Q, 1)), ValueError),
    ("bias_5_dims", "bias", lambda: f32((1, BATCH, NHEADS, SEQLEN_Q, SEQLEN_K)), ValueError),
    ("bias_int32", "bias", lambda: cp.zeros((SEQLEN_Q, SEQLEN_K), dtype=cp.int32), TypeError),
    ("bias_float64", "bias", lambda: cp.zeros((SEQLEN_Q, SEQLEN_K), dtype=cp.float64), TypeError),
    ("bias_numpy", "bias", lambda: np.zeros((SEQLEN_Q, SEQLEN_K), dtype=np.float32), TypeError),
]

VALID_OPTIONS = {
    "window_size": lambda: (4, 0),
    "softcap": lambda: 30.0,
    "alibi_slopes": lambda: f32((BATCH, NHEADS)),
    "learnable_sink": lambda: f32((NHEADS,), 1.5),
    "bias": lambda: cp.asarray(np.random.default_rng().standard_normal((1, NHEADS, SEQLEN_Q, SEQLEN_K), np.float32)),
}


def _host_options(opts):
    return {key: testing.to_numpy(val) if isinstance(val, cp.ndarray) else val for key, val in opts.items()}


def _check_forward_works(q, k, v, opts):
    out, lse = cuflash.attention(q, k, v, return_lse=True, **opts)
    host = [testing.to_numpy(x) for x in (q, k, v)]
    ref64 = reference.attention_forward(*host, precision="float64", **_host_options(opts))
    reflp = reference.attention_forward(*host, precision="lowp", **_host_options(opts))
    dt = testing.dtype_name(q.dtype)
    testing.check_accuracy("out after a refused call", out, ref64[0], reflp[0], dt, kind="fwd")
    testing.check_accuracy("lse after a refused call", lse, ref64[1], reflp[1], dt, kind="fwd")
    return out, lse


def _check_backward_works(dout, q, k, v, out, lse, opts, dlse=None):
    extra = {} if dlse is None else {"dlse": dlse}
    got = cuflash.attention_backward(dout, q, k, v, out, lse, **opts, **extra)
    host = [testing.to_numpy(x) for x in (dout, q, k, v)]
    hopts = dict(_host_options(opts), **_host_options(extra))
    ref64 = reference.attention_backward(*host, precision="float64", **hopts)
    reflp = reference.attention_backward(*host, precision="lowp", **hopts)
    dt = testing.dtype_name(q.dtype)
    names = ("dq", "dk", "dv") + (("dsink",) if opts.get("learnable_sink") is not None else ())
    assert len(got) == len(names)
    refs64 = list(ref64[:3]) + list(ref64[4:])
    refslp = list(reflp[:3]) + list(reflp[4:])
    for name, g, r64, rlp in zip(names, got, refs64, refslp):
        testing.check_accuracy(f"{name} after a refused call", g, r64, rlp, dt, kind="bwd")


@pytest.mark.parametrize("entry", BAD_OPTIONS, ids=[e[0] for e in BAD_OPTIONS])
def test_bad_variant_option_forward(entry):
    _, arg, bad, exc = entry
    q, k, v = qkv()
    with pytest.raises(exc, match=arg):
        cuflash.attention(q, k, v, **{arg: bad()})
    _check_forward_works(q, k, v, {arg: VALID_OPTIONS[arg]()})


@pytest.mark.parametrize("entry", BAD_OPTIONS, ids=[e[0] for e in BAD_OPTIONS])
def test_bad_variant_option_backward(entry):
    _, arg, bad, exc = entry
    q, k, v = qkv()
    good = {arg: VALID_OPTIONS[arg]()}
    out, lse = cuflash.attention(q, k, v, return_lse=True, **good)
    dout = testing.random_like(q)
    with pytest.raises(exc, match=arg):
        cuflash.attention_backward(dout, q, k, v, out, lse, **{arg: bad()})
    _check_backward_works(dout, q, k, v, out, lse, good)


BAD_DLSE = [
    ("one_row_too_many", lambda: f32((BATCH, NHEADS, SEQLEN_Q + 1)), ValueError),
    ("transposed", lambda: f32((BATCH, SEQLEN_Q, NHEADS)), ValueError),
    ("no_batch_dim", lambda: f32((NHEADS, SEQLEN_Q)), ValueError),
    ("float16", lambda: cp.zeros((BATCH, NHEADS, SEQLEN_Q), dtype=cp.float16), (TypeError, ValueError)),
    ("numpy", lambda: np.zeros((BATCH, NHEADS, SEQLEN_Q), dtype=np.float32), TypeError),
]


@pytest.mark.parametrize("sink", [False, True], ids=["no_sink", "sink"])
@pytest.mark.parametrize("entry", BAD_DLSE, ids=[e[0] for e in BAD_DLSE])
def test_bad_dlse(entry, sink):
    _, bad, exc = entry
    q, k, v = qkv()
    opts = {"learnable_sink": VALID_OPTIONS["learnable_sink"]()} if sink else {}
    out, lse = cuflash.attention(q, k, v, return_lse=True, **opts)
    dout = testing.random_like(q)
    with pytest.raises(exc, match="dlse"):
        cuflash.attention_backward(dout, q, k, v, out, lse, dlse=bad(), **opts)
    dlse = cp.asarray(np.random.default_rng().standard_normal((BATCH, NHEADS, SEQLEN_Q), dtype=np.float32))
    _check_backward_works(dout, q, k, v, out, lse, opts, dlse=dlse)


@pytest.mark.parametrize("arg", ["alibi_slopes", "learnable_sink"])
def test_variant_array_on_another_gpu(arg):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    q, k, v = qkv()
    with cp.cuda.Device(1):
        other = cp.asarray(VALID_OPTIONS[arg]())
    with pytest.raises(ValueError, match=arg):
        cuflash.attention(q, k, v, **{arg: other})
    _check_forward_works(q, k, v, {arg: VALID_OPTIONS[arg]()})
