"""Forward kernel against the float64 reference (DESIGN §5), on the GPU.

Every case draws fresh random inputs, poisons the output with NaN before the
launch, and applies the accuracy rule to out and lse:
    max|x - ref64| <= 2 * max|ref_lowp - ref64| + floor.
Every test runs once per forward kernel the GPU has: the portable one
(CUFLASH_DISABLE_SM90=1) and, on compute capability 9.0, the Hopper one.
"""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference, specs, support, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]


def run_and_check(q, k, v, *, causal, softmax_scale=None, label=""):
    """cuflash forward on (poisoned) fresh buffers, checked against both references."""
    batch, seqlen_q, nheads, head_dim = q.shape
    out = testing.poison(cp.empty(q.shape, dtype=q.dtype))
    out, lse = cuflash.attention(q, k, v, causal=causal, softmax_scale=softmax_scale, return_lse=True, out=out)
    assert lse.shape == (batch, nheads, seqlen_q) and lse.dtype == np.float32
    qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
    opts = dict(causal=causal, softmax_scale=softmax_scale)
    ref64, lse64 = reference.attention_forward(qh, kh, vh, precision="float64", **opts)
    reflp, lselp = reference.attention_forward(qh, kh, vh, precision="lowp", **opts)
    dt = testing.dtype_name(q.dtype)
    testing.check_accuracy(f"out {label}", out, ref64, reflp, dt, kind="fwd")
    testing.check_accuracy(f"lse {label}", lse, lse64, lselp, dt, kind="fwd")
    return out, lse


DTYPES = list(support.SUPPORTED_DTYPES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", support.supported_head_dims())
def test_every_head_dim(dtype, causal, head_dim):
    q, k, v = testing.random_qkv(2, 113, 203, 3, 3, head_dim, dtype, xp=cp)
    run_and_check(q, k, v, causal=causal, label=f"d={head_dim}")


SEQLENS = [(1, 1), (1, 239), (239, 1), (113, 203), (203, 113), (128, 128), (64, 1000), (1000, 64), (4097, 1), (777, 777)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [40, 64, 72, 128, 200, 256])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_shapes(dtype, causal, head_dim, seqlens):
    seqlen_q, seqlen_k = seqlens
    q, k, v = testing.random_qkv(1, seqlen_q, seqlen_k, 2, 2, head_dim, dtype, xp=cp)
    run_and_check(q, k, v, causal=causal, label=f"{seqlens} d={head_dim}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nheads_kv", [8, 2, 1], ids=lambda n: f"ratio{8 // n}")
def test_gqa(dtype, causal, nheads_kv):
    q, k, v = testing.random_qkv(3, 300, 333, 8, nheads_kv, 128, dtype, xp=cp)
    run_and_check(q, k, v, causal=causal, label=f"gqa {8 // nheads_kv}")


@pytest.mark.parametrize("head_dim", [64, 128, 192, 256])
@pytest.mark.parametrize("causal, seqlens", [(False, (777, 409)), (True, (777, 409)), (True, (1000, 1100))],
                         ids=["full", "causal-odd-blocks", "causal-even-blocks"])
def test_more_tiles_than_sms(head_dim, causal, seqlens):
    # Hopper: a persistent grid (FwdSm90Spec.persistent), each CTA walking several tiles of ragged
    # query blocks through both Q buffers and the K/V ring; causal at d128/d192 in pairs of tiles
    # (FwdSm90Spec.paired; an odd block count leaves a middle block alone; 777 x 409 has rows that
    # see no key); d256 causal there through its one Q buffer (FwdSm90Spec.short_causal, up to
    # 4096 rows; non-causal one CTA per tile); each row checked
    q, k, v = testing.random_qkv(3, *seqlens, 48, 16, head_dim, "bf16", xp=cp)
    run_and_check(q, k, v, causal=causal, label=f"d={head_dim} {seqlens}")


@pytest.mark.parametrize("batch", [1, 37])
def test_batch(batch):
    q, k, v = testing.random_qkv(batch, 65, 130, 2, 1, 64, "bf16", xp=cp)
    run_and_check(q, k, v, causal=True, label=f"batch {batch}")


@pytest.mark.parametrize("causal", [False, True])
def test_strided_inputs(causal):
    q, k, v = testing.random_qkv(2, 150, 190, 4, 2, 96, "fp16", xp=cp)
    qs, ks, vs = (testing.strided_view(x) for x in (q, k, v))
    assert not qs.flags.c_contiguous
    run_and_check(qs, ks, vs, causal=causal, label="strided")


@pytest.mark.parametrize("head_dim", [128, 256])
def test_inputs_reversed_along_the_sequence(head_dim):
    # CuPy views with negative row strides (x[:, ::-1]) pass validation; the kernels must read them as
    # the contiguous copies, also where a tile lies inside the tensor (copy.cuh's untested path)
    q, k, v = testing.random_qkv(2, 300, 400, 2, 2, head_dim, "bf16", xp=cp)
    qr, kr, vr = (x[:, ::-1] for x in (q, k, v))
    assert qr.strides[1] < 0
    for causal in (False, True):
        got, lse = cuflash.attention(qr, kr, vr, causal=causal, return_lse=True)
        want, want_lse = cuflash.attention(*map(cp.ascontiguousarray, (qr, kr, vr)), causal=causal, return_lse=True)
        assert bool(cp.array_equal(got, want)) and bool(cp.array_equal(lse, want_lse)), causal


@pytest.mark.parametrize("head_dim", [32, 64, 72, 96, 128, 160, 200, 256])
def test_tma_and_cp_async_loads_agree_bitwise(head_dim, monkeypatch):
    # The Hopper forward loads dense q, k, v and stores O with TMA (cuflash/tma.py), and otherwise
    # with cp.async and 16-byte stores (CUFLASH_TMA=0): the same tiles land in shared memory, so every
    # output bit must agree (out is poisoned first, so a row either way leaves unwritten shows);
    # ragged lengths (a last box partly past seqlen_q), d below the compiled D, GQA, and each grid
    # (per tile, persistent, paired causal, short band).
    from cuflash import tma

    if not tma.available():
        pytest.skip("the driver has no tensor-map encoder")
    q, k, v = testing.random_qkv(3, 333, 419, 6, 2, head_dim, "bf16", xp=cp)
    for opts in ({}, {"causal": True}, {"window_size": (100, 0)}, {"causal": True, "softcap": 20.0}):
        results = []
        for flag in ("1", "0"):
            monkeypatch.setenv("CUFLASH_TMA", flag)
            out = testing.poison(cp.empty(q.shape, dtype=q.dtype))
            results.append(cuflash.attention(q, k, v, return_lse=True, out=out, **opts))
        (o1, l1), (o0, l0) = results
        assert bool(cp.array_equal(o1, o0)) and bool(cp.array_equal(l1, l0)), opts
    run_and_check(q, k, v, causal=True, label="tma")


@pytest.mark.parametrize("head_dim", [64, 128])
def test_long_calls_take_the_kernel_built_for_one_cta_per_tile(head_dim, monkeypatch):
    # Past specs.FWD_SM90_PERSISTENT_ROWS query rows a dense Hopper forward takes the kernel built for
    # one CTA per tile (FwdSm90Spec.long_rows); the limit lowered so that a short call takes it too:
    # ragged lengths, GQA, causal and not, against the reference.
    from cuflash import api

    monkeypatch.setattr(specs, "FWD_SM90_PERSISTENT_ROWS", 256)  # read at each selection (specs.long_rows)
    q, k, v = testing.random_qkv(2, 1100, 1000, 6, 2, head_dim, "bf16", xp=cp)
    spec = api.fwd_spec("bf16", head_dim, specs.PLAIN, cp.cuda.Device().id, 0, 1100)
    if isinstance(spec, specs.FwdSm90Spec):
        assert spec.long_rows and not spec.persistent, spec.name
    for causal in (False, True):
        run_and_check(q, k, v, causal=causal, label=f"long rows d{head_dim}")


def test_softmax_scale():
    q, k, v = testing.random_qkv(1, 100, 120, 2, 2, 64, "bf16", xp=cp)
    run_and_check(q, k, v, causal=False, softmax_scale=0.37, label="scale")


def test_large_scores_stay_finite():
    # Scores of order 1e3: the max-subtracted exp2 must not overflow.
    q, k, v = testing.random_qkv(1, 200, 200, 2, 2, 128, "bf16", xp=cp)
    run_and_check(q * 8, k * 8, v, causal=True, softmax_scale=1.0, label="large scores")


def test_fully_masked_rows():
    # causal with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k queries see no key.
    q, k, v = testing.random_qkv(1, 300, 50, 2, 2, 64, "fp16", xp=cp)
    out, lse = run_and_check(q, k, v, causal=True, label="fully masked")
    hidden = 300 - 50
    assert float(cp.abs(out[:, :hidden].astype(cp.float32)).max()) == 0.0
    assert bool(cp.all(cp.isneginf(lse[:, :, :hidden])))
    assert not bool(cp.isnan(out.astype(cp.float32)).any())


def test_repeat_is_bitwise_equal():
    q, k, v = testing.random_qkv(2, 513, 700, 4, 2, 128, "bf16", xp=cp)
    a, la = cuflash.attention(q, k, v, causal=True, return_lse=True)
    b, lb = cuflash.attention(q, k, v, causal=True, return_lse=True)
    assert bool(cp.all(a.view(cp.uint16) == b.view(cp.uint16)))
    assert bool(cp.all((la == lb) | (cp.isneginf(la) & cp.isneginf(lb))))


def test_empty_sequences():
    q, k, v = testing.random_qkv(2, 0, 16, 2, 2, 64, "bf16", xp=cp)
    out, lse = cuflash.attention(q, k, v, return_lse=True)
    assert out.shape == (2, 0, 2, 64) and lse.shape == (2, 2, 0)
    q, k, v = testing.random_qkv(2, 16, 0, 2, 2, 64, "bf16", xp=cp)
    out = testing.poison(cp.empty(q.shape, q.dtype))
    out, lse = cuflash.attention(q, k, v, return_lse=True, out=out)
    assert float(cp.abs(out.astype(cp.float32)).max()) == 0.0
    assert bool(cp.all(cp.isneginf(lse)))


def test_64bit_offsets():
    # q and out exceed 2^31 elements: batch offsets overflow 32-bit arithmetic.
    batch, seqlen_q, seqlen_k, d = 65535, 272, 16, 128
    assert batch * seqlen_q * d > 2**31
    q = cp.empty((batch, seqlen_q, 1, d), dtype=testing.resolve_dtype("bf16"))
    testing.poison(q)
    tail = 3  # only the last batch entries get real inputs and are checked (their offsets are > 2^31)
    qt, k, v = testing.random_qkv(tail, seqlen_q, seqlen_k, 1, 1, d, "bf16", xp=cp)
    q[-tail:] = qt
    k = cp.concatenate([cp.zeros((batch - tail, seqlen_k, 1, d), k.dtype), k])
    v = cp.concatenate([cp.zeros((batch - tail, seqlen_k, 1, d), v.dtype), v])
    out = cuflash.attention(q, k, v)
    got = out[-tail:]
    del out, q
    run_ref = reference.attention_forward(*(testing.to_numpy(x) for x in (qt, k[-tail:], v[-tail:])))
    lowp = reference.attention_forward(*(testing.to_numpy(x) for x in (qt, k[-tail:], v[-tail:])), precision="lowp")
    testing.check_accuracy("out 64-bit", got, run_ref[0], lowp[0], "bf16", kind="fwd")


def test_hopper_gets_the_sm90_kernel(kernel_path):
    from cuflash import api
    from cuflash.specs import FwdSm90Spec, FwdSpec

    spec = api.fwd_spec("bf16", 128, specs.PLAIN, cp.cuda.Device().id)
    assert isinstance(spec, FwdSm90Spec if kernel_path == "sm90" else FwdSpec), spec.name
