"""Backward kernels against the float64 reference (DESIGN §5), on the GPU.

Every case draws fresh random q, k, v and dout, runs cuflash's forward for out
and lse (as a user does), passes preallocated dq, dk, dv poisoned with NaN (an
element the backward does not write fails), and applies the accuracy rule to
each gradient against reference.attention_backward for the same q, k, v:
    max|x - ref64| <= 2 * max|ref_lowp - ref64| + floor     (kind="bwd").
"""
from __future__ import annotations

import pytest

import cuflash
from cuflash import reference, specs, support, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]

DTYPES = list(support.SUPPORTED_DTYPES)


def poisoned_like(x):
    return testing.poison(cp.empty(x.shape, dtype=x.dtype))


def backward(q, k, v, dout, *, causal, softmax_scale=None, deterministic=False, grads=None):
    """cuflash forward (out, lse) then backward into poisoned (or the given) dq, dk, dv."""
    out, lse = cuflash.attention(q, k, v, causal=causal, softmax_scale=softmax_scale, return_lse=True)
    dq, dk, dv = grads if grads is not None else (poisoned_like(q), poisoned_like(k), poisoned_like(v))
    got = cuflash.attention_backward(
        dout, q, k, v, out, lse, causal=causal, softmax_scale=softmax_scale, deterministic=deterministic,
        dq=dq, dk=dk, dv=dv,
    )
    assert got[0] is dq and got[1] is dk and got[2] is dv
    return got


def check(grads, q, k, v, dout, *, causal, softmax_scale=None, label=""):
    """Accuracy rule for (dq, dk, dv) against the float64 and low-precision references."""
    host = [testing.to_numpy(x) for x in (dout, q, k, v)]
    opts = dict(causal=causal, softmax_scale=softmax_scale)
    ref64 = reference.attention_backward(*host, precision="float64", **opts)
    reflp = reference.attention_backward(*host, precision="lowp", **opts)
    dt = testing.dtype_name(q.dtype)
    for name, got, r64, rlp in zip(("dq", "dk", "dv"), grads, ref64[:3], reflp[:3]):
        assert got.shape == r64.shape and got.dtype == q.dtype
        testing.check_accuracy(f"{name} {label}", got, r64, rlp, dt, kind="bwd")


def run_and_check(q, k, v, *, causal, softmax_scale=None, deterministic=False, label=""):
    dout = testing.random_like(q)
    grads = backward(q, k, v, dout, causal=causal, softmax_scale=softmax_scale, deterministic=deterministic)
    check(grads, q, k, v, dout, causal=causal, softmax_scale=softmax_scale, label=label)
    return grads


def bits(x):
    return cp.ascontiguousarray(x).view(cp.uint16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", support.supported_head_dims())
def test_every_head_dim(dtype, causal, head_dim):
    q, k, v = testing.random_qkv(2, 113, 203, 3, 3, head_dim, dtype, xp=cp)
    run_and_check(q, k, v, causal=causal, label=f"d={head_dim}")


SEQLENS = [
    (1, 1), (1, 239), (239, 1), (113, 203), (203, 113), (128, 128), (64, 1000), (1000, 64),
    (4097, 1), (1, 4097), (300, 50), (777, 777),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [40, 72, 96, 128, 200, 256])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_shapes(dtype, causal, head_dim, seqlens):
    seqlen_q, seqlen_k = seqlens
    q, k, v = testing.random_qkv(1, seqlen_q, seqlen_k, 2, 2, head_dim, dtype, xp=cp)
    run_and_check(q, k, v, causal=causal, label=f"{seqlens} d={head_dim}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nheads_kv", [8, 2, 1], ids=lambda n: f"ratio{8 // n}")
@pytest.mark.parametrize("seqlens", [(300, 333), (333, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_gqa(dtype, causal, nheads_kv, seqlens):
    q, k, v = testing.random_qkv(3, *seqlens, 8, nheads_kv, 128, dtype, xp=cp)
    run_and_check(q, k, v, causal=causal, label=f"gqa {8 // nheads_kv}")


@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("nheads_kv", [2, 1], ids=lambda n: f"ratio{8 // n}")
def test_gqa_head_dims(head_dim, nheads_kv):
    q, k, v = testing.random_qkv(2, 190, 257, 8, nheads_kv, head_dim, "fp16", xp=cp)
    run_and_check(q, k, v, causal=True, label=f"gqa {8 // nheads_kv} d={head_dim}")


@pytest.mark.parametrize("batch", [1, 37])
def test_batch(batch):
    q, k, v = testing.random_qkv(batch, 65, 130, 2, 1, 64, "bf16", xp=cp)
    run_and_check(q, k, v, causal=True, label=f"batch {batch}")


@pytest.mark.parametrize("causal", [False, True])
def test_strided_inputs_and_outputs(causal):
    q, k, v = testing.random_qkv(2, 150, 190, 4, 2, 96, "fp16", xp=cp)
    dout = testing.random_like(q)
    out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True)
    qs, ks, vs, dos, outs = (testing.strided_view(x) for x in (q, k, v, dout, out))
    assert not qs.flags.c_contiguous and not dos.flags.c_contiguous
    # lse with a row stride of 2 and its heads and batches apart
    lse_big = cp.full(lse.shape[:2] + (2 * lse.shape[2],), cp.nan, dtype=cp.float32)
    lse_big[..., ::2] = lse
    lses = lse_big[..., ::2]
    grads = [testing.poison(testing.strided_view(x)) for x in (q, k, v)]
    got = cuflash.attention_backward(dos, qs, ks, vs, outs, lses, causal=causal, dq=grads[0], dk=grads[1], dv=grads[2])
    assert all(a is b for a, b in zip(got, grads))
    check(got, q, k, v, dout, causal=causal, label="strided")


@pytest.mark.parametrize("head_dim", [128, 256])
def test_inputs_reversed_along_the_sequence(head_dim):
    # negative row strides (CuPy x[:, ::-1]) give the gradients of the contiguous copies, bit for bit
    q, k, v = testing.random_qkv(1, 300, 400, 2, 2, head_dim, "bf16", xp=cp)
    dout = testing.random_like(q)
    rev = [x[:, ::-1] for x in (q, k, v, dout)]
    flat = [cp.ascontiguousarray(x) for x in rev]
    for causal in (False, True):
        out, lse = cuflash.attention(*flat[:3], causal=causal, return_lse=True)
        out_rev = cp.ascontiguousarray(out[:, ::-1])[:, ::-1]  # out's values, row stride negative
        got = cuflash.attention_backward(rev[3], *rev[:3], out_rev, lse, causal=causal, deterministic=True)
        want = cuflash.attention_backward(flat[3], *flat[:3], out, lse, causal=causal, deterministic=True)
        assert all(bool(cp.array_equal(a, b)) for a, b in zip(got, want)), causal


@pytest.mark.parametrize("head_dim", [64, 72, 128, 200, 256])
def test_tma_and_cp_async_loads_agree_bitwise(head_dim, monkeypatch):
    # The Hopper backwards load dense q, k, v, dout with TMA (cuflash/tma.py) and otherwise with
    # cp.async (CUFLASH_TMA=0): the same tiles land in shared memory, so the deterministic
    # gradients must agree bit for bit; ragged lengths, d below D, GQA, masks. bwd_sm90_ws.cu at
    # d64 / d128; bwd_sm90.cu at d256 and with dropout or a bias (whose tiles stay on cp.async).
    from cuflash import tma

    if not tma.available():
        pytest.skip("the driver has no tensor-map encoder")
    q, k, v = testing.random_qkv(3, 333, 419, 6, 2, head_dim, "bf16", xp=cp)
    dout = testing.random_like(q)
    bias = cp.random.standard_normal((3, 1, 1, 419), dtype=cp.float32)
    for opts in ({}, {"causal": True}, {"window_size": (100, 0)}, {"causal": True, "softcap": 20.0},
                 {"causal": True, "dropout_p": 0.2, "seed": 5}, {"bias": bias}):
        out, lse = cuflash.attention(q, k, v, return_lse=True, **opts)
        results = []
        for flag in ("1", "0"):
            monkeypatch.setenv("CUFLASH_TMA", flag)
            results.append(cuflash.attention_backward(dout, q, k, v, out, lse, deterministic=True, **opts))
        assert all(bool(cp.array_equal(a, b)) for a, b in zip(*results)), opts
    run_and_check(q, k, v, causal=True, label="tma")


def test_softmax_scale():
    q, k, v = testing.random_qkv(1, 100, 120, 2, 2, 64, "bf16", xp=cp)
    run_and_check(q, k, v, causal=False, softmax_scale=0.37, label="scale")


def test_large_scores_stay_finite():
    # Scores of order 1e3: P is recomputed from lse without overflow.
    q, k, v = testing.random_qkv(1, 200, 200, 2, 2, 128, "bf16", xp=cp)
    run_and_check(q * 8, k * 8, v, causal=True, softmax_scale=1.0, label="large scores")


@pytest.mark.parametrize("deterministic", [False, True])
def test_fully_masked_rows(deterministic):
    # causal with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k queries see no
    # key (lse = -inf); their dq rows are exactly 0 and nothing is NaN.
    q, k, v = testing.random_qkv(1, 300, 50, 2, 2, 64, "fp16", xp=cp)
    dq, dk, dv = run_and_check(q, k, v, causal=True, deterministic=deterministic, label="fully masked")
    hidden = 300 - 50
    assert float(cp.abs(dq[:, :hidden].astype(cp.float32)).max()) == 0.0
    for x in (dq, dk, dv):
        assert not bool(cp.isnan(x.astype(cp.float32)).any())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nheads_kv", [4, 1], ids=lambda n: f"ratio{4 // n}")
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_deterministic_is_bitwise_reproducible(causal, nheads_kv, head_dim):
    # Many key blocks add to every query block, so the order of dQ additions matters.
    q, k, v = testing.random_qkv(2, 1000, 1537, 4, nheads_kv, head_dim, "bf16", xp=cp)
    dout = testing.random_like(q)
    first = backward(q, k, v, dout, causal=causal, deterministic=True)
    second = backward(q, k, v, dout, causal=causal, deterministic=True)
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert bool(cp.all(bits(a) == bits(b))), f"{name} differs between two deterministic runs"
    check(first, q, k, v, dout, causal=causal, label="deterministic")


@pytest.mark.parametrize("causal", [False, True])
def test_non_deterministic_within_the_rule(causal):
    q, k, v = testing.random_qkv(2, 1000, 1537, 4, 2, 128, "bf16", xp=cp)
    dout = testing.random_like(q)
    for _ in range(2):
        check(backward(q, k, v, dout, causal=causal), q, k, v, dout, causal=causal, label="atomics")


def test_default_outputs_are_allocated():
    q, k, v = testing.random_qkv(2, 70, 90, 4, 2, 64, "fp16", xp=cp)
    dout = testing.random_like(q)
    out, lse = cuflash.attention(q, k, v, return_lse=True)
    dq, dk, dv = cuflash.attention_backward(dout, q, k, v, out, lse)
    check((dq, dk, dv), q, k, v, dout, causal=False, label="allocated")


def test_empty_sequences():
    # No queries: dk = dv = 0. No keys: every row is fully masked, dq = 0.
    for seqlen_q, seqlen_k in ((0, 16), (16, 0)):
        q, k, v = testing.random_qkv(2, seqlen_q, seqlen_k, 2, 1, 64, "bf16", xp=cp)
        dout = testing.random_like(q)
        dq, dk, dv = backward(q, k, v, dout, causal=True)
        for x in (dq, dk, dv):
            assert x.size == 0 or float(cp.abs(x.astype(cp.float32)).max()) == 0.0


def test_64bit_offsets():
    # q, dout, out, dq exceed 2^31 elements: batch offsets overflow 32-bit arithmetic.
    batch, seqlen_q, seqlen_k, d = 65535, 272, 16, 128
    assert batch * seqlen_q * d > 2**31
    bf16 = testing.resolve_dtype("bf16")
    tail = 3  # only the last batch entries are filled and checked
    qt, kt, vt = testing.random_qkv(tail, seqlen_q, seqlen_k, 1, 1, d, "bf16", xp=cp)
    dot = testing.random_like(qt)
    q = cp.zeros((batch, seqlen_q, 1, d), dtype=bf16)
    q[-tail:] = qt
    dout = cp.zeros_like(q)
    dout[-tail:] = dot
    del dot
    k = cp.concatenate([cp.zeros((batch - tail, seqlen_k, 1, d), bf16), kt])
    v = cp.concatenate([cp.zeros((batch - tail, seqlen_k, 1, d), bf16), vt])
    out, lse = cuflash.attention(q, k, v, return_lse=True)
    dq, dk, dv = cuflash.attention_backward(dout, q, k, v, out, lse)
    got = (dq[-tail:].copy(), dk[-tail:].copy(), dv[-tail:].copy())
    dot = dout[-tail:].copy()
    del q, dout, out, lse, dq, dk, dv
    check(got, qt, kt, vt, dot, causal=False, label="64-bit")


def test_hopper_gets_the_sm90_backward(kernel_path):
    from cuflash import api
    from cuflash.specs import BwdSm90Spec, BwdSpec

    for head_dim, sm90 in ((64, True), (128, True), (256, True), (96, False)):
        spec = api.bwd_spec("bf16", head_dim, specs.PLAIN, False, cp.cuda.Device().id)
        want = BwdSm90Spec if kernel_path == "sm90" and sm90 else BwdSpec
        assert isinstance(spec, want), spec.name
