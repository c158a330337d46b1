"""The additive bias and its gradient in the kernels against the float64 reference (DESIGN 3, 5).

Every case runs on both kernel families (kernel_path): the forward into NaN-poisoned
outputs, the backward from the forward's own out and lse with bias_requires_grad=True,
and out, lse, dq, dk, dv and dbias each pass the accuracy rule against
reference.attention_forward / attention_backward given the same bias. dbias is dS summed
over the bias's broadcast dims (in float32, with atomics or, deterministic, an expanded
buffer summed in a fixed order).
"""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]

BATCH, NHEADS = 2, 4


def draw(dtype, seqlens, *, head_dim=64, nheads=NHEADS, nheads_kv=None):
    return testing.random_qkv(BATCH, *seqlens, nheads, nheads_kv or nheads, head_dim, dtype, xp=cp)


def random_bias(shape, dtype, scale=2.0):
    x = (np.random.default_rng().standard_normal(shape) * scale).astype(testing.resolve_dtype(dtype))
    if x.dtype == np.float16 or x.dtype == np.float32:
        return cp.asarray(x)
    return cp.asarray(x.view(np.uint16)).view(x.dtype)  # bf16: move the bits


def host(opts):
    return {key: testing.to_numpy(v) if isinstance(v, cp.ndarray) else v for key, v in opts.items()}


def check_case(q, k, v, bias, opts=None, *, deterministic=False, grad=True):
    """Forward and backward with `bias`, every output against both references; returns
    (out, lse, dq, dk, dv[, dbias])."""
    opts = opts or {}
    out = testing.poison(cp.empty(q.shape, dtype=q.dtype))
    got, lse = cuflash.attention(q, k, v, bias=bias, return_lse=True, out=out, **opts)
    assert got is out
    dout = testing.random_like(q)
    res = cuflash.attention_backward(dout, q, k, v, out, lse, bias=bias, bias_requires_grad=grad,
                                     deterministic=deterministic, **opts)
    ropts = dict(host(opts), bias=testing.to_numpy(bias))
    ropts.pop("seed", None)
    hq, hk, hv, hdo = (testing.to_numpy(x) for x in (q, k, v, dout))
    dt = testing.dtype_name(q.dtype)
    checks = testing.AccuracyChecks()

    def rule(name, x, x64, xlp, kind):
        checks.rule(name, x, x64, xlp, dt, kind)

    f64 = reference.attention_forward(hq, hk, hv, precision="float64", **ropts)
    flp = reference.attention_forward(hq, hk, hv, precision="lowp", **ropts)
    rule("out", out, f64[0], flp[0], "fwd")
    rule("lse", lse, f64[1], flp[1], "fwd")
    b64 = reference.attention_backward(hdo, hq, hk, hv, precision="float64", **ropts)
    blp = reference.attention_backward(hdo, hq, hk, hv, precision="lowp", **ropts)
    for name, x, x64, xlp in zip(("dq", "dk", "dv"), res[:3], b64[:3], blp[:3]):
        rule(name, x, x64, xlp, "bwd")
    if grad:
        dbias = res[3]
        assert dbias.shape == bias.shape and dbias.dtype == bias.dtype, (dbias.shape, dbias.dtype)
        rule("dbias", dbias, b64[3], blp[3], "bwd")
    if "learnable_sink" in opts:
        rule("dsink", res[-1], b64[4], blp[4], "bwd")
    checks.done()
    return (out, lse) + tuple(res)


SHAPES = {
    "full": lambda b, h, sq, sk: (b, h, sq, sk),
    "heads": lambda b, h, sq, sk: (1, h, sq, sk),
    "per_key": lambda b, h, sq, sk: (b, 1, 1, sk),
    "batch_rows": lambda b, h, sq, sk: (b, 1, sq, sk),
    "keys_1d": lambda b, h, sq, sk: (sk,),
    "rows_3d": lambda b, h, sq, sk: (h, sq, sk),
}


#: float32 is a known gap here (strict=False: most cases pass; the failures seen are listed in the reason).
FP32_GAP = pytest.mark.xfail(strict=False, reason="issue 11: float32 S = Q K^T keeps the truncating tensor-core sum (no registers for per-k-step rounding, kernels_cu/fwd.cu); with large biased, softcapped or ALiBi scores or d >= 200, lse and dsink measured 1.1-1.3x over the float32 floor")


@pytest.mark.parametrize("dtype", ["bf16", "fp16", pytest.param("fp32", marks=FP32_GAP)])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(113, 203), (257, 130)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bias_shapes(dtype, shape, causal, seqlens):
    q, k, v = draw(dtype, seqlens)
    bias = random_bias(SHAPES[shape](BATCH, NHEADS, *seqlens), dtype)
    check_case(q, k, v, bias, dict(causal=causal))


@pytest.mark.parametrize("head_dim", [32, 96, 128, 160, 192, 256])
def test_bias_head_dims(head_dim):
    q, k, v = draw("bf16", (200, 300), head_dim=head_dim)
    check_case(q, k, v, random_bias((BATCH, NHEADS, 200, 300), "bf16"), dict(causal=True))


@pytest.mark.parametrize("bias_dtype", ["fp32", "fp16"])
def test_bias_dtypes(bias_dtype):
    # float32 is read as is; fp16 beside bf16 inputs is widened to float32; dbias comes back in its own dtype
    q, k, v = draw("bf16", (150, 190))
    check_case(q, k, v, random_bias((1, NHEADS, 150, 190), bias_dtype))


def test_stride_zero_views_and_strided_keys():
    q, k, v = draw("bf16", (96, 160))
    row = random_bias((1, 1, 1, 160), "bf16")
    check_case(q, k, v, cp.broadcast_to(row, (BATCH, NHEADS, 96, 160)))  # stride 0: read in place, full dbias
    wide = random_bias((BATCH, NHEADS, 160, 96), "bf16")
    check_case(q, k, v, wide.transpose(0, 1, 3, 2))  # keys not contiguous: copied
    odd = random_bias((BATCH, NHEADS, 96, 161), "bf16")[..., :160]  # odd row stride: unaligned pairs
    check_case(q, k, v, odd)


#: Biases whose rows are 16-byte aligned, which the warp-specialised Hopper forward copies into shared
#: memory with cp.async (kernels_cu/common/bias_tile.cuh; the shapes above, of odd or unaligned row
#: strides, take its element-by-element copy): every row aligned, rows cut inside a 16-byte chunk
#: (keys sliced from wider rows), one row for every query (stride 0), heads shared.
ALIGNED = {
    "full": lambda sq, sk: random_bias((BATCH, NHEADS, sq, sk), "bf16"),
    "cut_chunk": lambda sq, sk: random_bias((BATCH, NHEADS, sq, sk + 11), "bf16")[..., :sk],
    "per_key": lambda sq, sk: random_bias((BATCH, 1, 1, sk), "bf16"),
    "heads": lambda sq, sk: random_bias((1, NHEADS, sq, sk), "bf16"),
}


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("case", list(ALIGNED))
def test_aligned_biases(case, head_dim):
    sq, sk = (200, 261) if case == "cut_chunk" else (200, 320)
    q, k, v = draw("bf16", (sq, sk), head_dim=head_dim)
    bias = ALIGNED[case](sq, sk)
    for causal in (False, True):
        check_case(q, k, v, bias, dict(causal=causal))


@pytest.mark.parametrize("head_dim", [64, 128, 160])
def test_bias_tma_and_cp_async_loads_agree_bitwise(head_dim, monkeypatch):
    # With TMA the Hopper forward's producer has one thread load Q, K, V and a bias with 16-byte
    # aligned query rows (bias_tile.cuh load; broadcast dims as index 0 of the map), and all 128
    # threads copy the other biases' tiles; with CUFLASH_TMA=0 all 128 do everything: the same tiles
    # land in shared memory, so every output bit must agree, for a bias loaded by TMA (full, and
    # broadcast over the batch or the heads), copied by cp.async (per key) and element by element.
    from cuflash import tma

    if not tma.available():
        pytest.skip("the driver has no tensor-map encoder")
    q, k, v = testing.random_qkv(BATCH, 333, 416, 6, 2, head_dim, "bf16", xp=cp)
    for bias in (random_bias((BATCH, 6, 333, 416), "bf16"), random_bias((6, 333, 416), "bf16"),
                 random_bias((BATCH, 1, 333, 416), "bf16"), random_bias((BATCH, 1, 1, 416), "bf16"),
                 random_bias((BATCH, 6, 333, 419), "bf16")[..., :416]):
        for causal in (False, True):
            results = []
            for flag in ("1", "0"):
                monkeypatch.setenv("CUFLASH_TMA", flag)
                out = testing.poison(cp.empty(q.shape, dtype=q.dtype))
                results.append(cuflash.attention(q, k, v, bias=bias, causal=causal, return_lse=True, out=out))
            (o1, l1), (o0, l0) = results
            assert bool(cp.array_equal(o1, o0)) and bool(cp.array_equal(l1, l0)), (bias.strides, causal)


@pytest.mark.parametrize("case", ["gqa_window", "softcap_alibi", "sink", "dropout", "everything"])
def test_bias_with_other_features(case):
    q, k, v = draw("bf16", (203, 257), head_dim=128, nheads=8, nheads_kv=2)
    scale = 3.0 / np.sqrt(q.shape[-1])
    slopes = cp.asarray((2.0 ** -np.arange(1, 9)).astype(np.float32))
    sink = cp.asarray(np.linspace(-2, 4, 8).astype(np.float32))
    opts = {
        "gqa_window": dict(causal=True, window_size=(48, 0)),
        "softcap_alibi": dict(softcap=5.0, softmax_scale=scale, alibi_slopes=slopes),
        "sink": dict(window_size=(32, 16), learnable_sink=sink),
        "dropout": dict(dropout_p=0.2, seed=77),
        "everything": dict(causal=True, window_size=(64, 0), softcap=5.0, softmax_scale=scale,
                           alibi_slopes=slopes, learnable_sink=sink),
    }[case]
    bias = random_bias((BATCH, 1, 203, 257), "bf16")
    if case == "dropout":
        mask = reference.dropout_keep_mask(77, 0, BATCH, 8, 203, 257, 0.2)
        check_dropout_case(q, k, v, bias, mask)
    else:
        check_case(q, k, v, bias, opts)


def check_dropout_case(q, k, v, bias, mask):
    out, lse = cuflash.attention(q, k, v, bias=bias, dropout_p=0.2, seed=77, return_lse=True)
    dout = testing.random_like(q)
    res = cuflash.attention_backward(dout, q, k, v, out, lse, bias=bias, bias_requires_grad=True,
                                     dropout_p=0.2, seed=77)
    hq, hk, hv, hdo, hb = (testing.to_numpy(x) for x in (q, k, v, dout, bias))
    ropts = dict(bias=hb, dropout_p=0.2, dropout_mask=mask)
    f = [reference.attention_forward(hq, hk, hv, precision=p, **ropts) for p in ("float64", "lowp")]
    testing.check_accuracy("out", out, f[0][0], f[1][0], "bf16", kind="fwd")
    b = [reference.attention_backward(hdo, hq, hk, hv, precision=p, **ropts) for p in ("float64", "lowp")]
    for i, name in enumerate(("dq", "dk", "dv", "dbias")):
        testing.check_accuracy(name, res[i], b[0][i], b[1][i], "bf16", kind="bwd")


def test_minus_inf_entries_mask_and_an_all_masked_row_gives_zero():
    q, k, v = draw("bf16", (64, 96))
    b = np.random.default_rng().standard_normal((BATCH, NHEADS, 64, 96)).astype(np.float32)
    b[:, :, :, ::3] = -np.inf  # every third key masked
    b[:, :, 5, :] = -np.inf    # row 5 sees nothing
    bias = cp.asarray(b)
    out, lse, dq, dk, dv, dbias = check_case(q, k, v, bias)
    assert bool(cp.all(out[:, 5] == 0)) and bool(cp.all(cp.isneginf(lse[:, :, 5])))
    assert bool(cp.all(dq[:, 5] == 0)) and bool(cp.all(dbias[:, :, 5] == 0))
    assert not bool(cp.any(cp.isnan(dbias)))


@pytest.mark.parametrize("shape", ["full", "heads", "per_key"])
def test_deterministic_dbias_repeats_bitwise(shape):
    q, k, v = draw("bf16", (257, 257), nheads=4, nheads_kv=2)
    bias = random_bias(SHAPES[shape](BATCH, NHEADS, 257, 257), "bf16")
    out, lse = check_case(q, k, v, bias, dict(causal=True), deterministic=True)[:2]
    dout = testing.random_like(q)
    runs = [cuflash.attention_backward(dout, q, k, v, out, lse, bias=bias, bias_requires_grad=True, causal=True,
                                       deterministic=True) for _ in range(2)]
    for x, y in zip(*runs):
        assert bool(cp.all(x.view(cp.uint16) == y.view(cp.uint16))), "deterministic backward differs"


def test_without_bias_requires_grad_no_dbias_is_returned():
    q, k, v = draw("bf16", (64, 64))
    bias = random_bias((1, 1, 64, 64), "bf16")
    assert len(check_case(q, k, v, bias, grad=False)) == 5


def test_bad_bias_is_refused_before_any_launch():
    q, k, v = draw("bf16", (16, 24))
    out = testing.poison(cp.empty(q.shape, dtype=q.dtype))
    bad = [
        (cp.zeros((BATCH, NHEADS, 16, 23), cp.float32), ValueError, "does not broadcast"),
        (cp.zeros((3, NHEADS, 16, 24), cp.float32), ValueError, "does not broadcast"),
        (cp.zeros((1, 1, 1, 1, 24), cp.float32), ValueError, "1 to 4 dims"),
        (cp.zeros((16, 24), cp.int32), TypeError, "float16, bfloat16 or float32"),
        (np.zeros((16, 24), np.float32), TypeError, "bias is a NumPy array"),
    ]
    for bias, exc, text in bad:
        with pytest.raises(exc, match=text):
            cuflash.attention(q, k, v, bias=bias, out=out)
    assert np.isnan(testing.to_float64(out)).all(), "a refused call wrote its output"
    lse = cp.zeros((BATCH, NHEADS, 16), cp.float32)
    with pytest.raises(ValueError, match="needs the forward's bias"):
        cuflash.attention_backward(q, q, k, v, q, lse, bias_requires_grad=True)
