"""Attention variants against the float64 reference (DESIGN §3, §5), on the GPU.

Sliding windows (bottom-right aligned, causal forces right = 0), softcap,
ALiBi (slopes per head or per (batch, head)), the learnable sink and dlse, alone
and combined, forward AND backward.  Every case draws fresh random inputs, runs
cuflash's forward into an output poisoned with NaN, then its backward into
poisoned dq, dk, dv (from the forward's own out and lse, as a user does), and
applies the accuracy rule to out, lse, dq, dk, dv (and dsink) against both
references (reference.attention_forward / attention_backward, float64 and lowp):
    max|x - ref64| <= 2 * max|ref_lowp - ref64| + floor.
All checks of a case are made before it fails, so the report names every
output that is off (out, lse, dq, dk, dv, dsink), not only the first.
Every test runs once per kernel family the GPU has (the kernel_path fixture).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import cuflash
from cuflash import reference, support, testing
from cuflash.specs import Features

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]

#: float32 is a known gap here (strict=False: most cases pass; the failures seen are listed in the reason).
FP32_GAP = pytest.mark.xfail(strict=False, reason="issue 11: float32 S = Q K^T keeps the truncating tensor-core sum (no registers for per-k-step rounding, kernels_cu/fwd.cu); with large biased, softcapped or ALiBi scores or d >= 200, lse and dsink measured 1.1-1.3x over the float32 floor")
DTYPES = [pytest.param(d, marks=FP32_GAP) if d == "fp32" else d for d in support.SUPPORTED_DTYPES]
#: powers of two, one odd head dim (72) and one padded into the largest bucket (200)
HEAD_DIMS = [64, 72, 128, 160, 176, 200, 256]
SEQLENS = [(113, 203), (203, 113), (1, 239), (257, 257)]
WINDOWS = [(16, 0), (0, 16), (32, 32), (64, -1), (-1, 64), (0, 0)]


def seq_id(s):
    return f"{s[0]}x{s[1]}"


def win_id(w):
    return f"w{w[0]}_{w[1]}"


def ratio_id(r):
    return f"ratio{r}"


# ---------------------------------------------------------------- inputs


def qkv(dtype, seqlens, *, head_dim=128, batch=2, nheads=4, ratio=1):
    """Fresh random q, k, v on the GPU; nheads // ratio kv heads."""
    return testing.random_qkv(batch, *seqlens, nheads, nheads // ratio, head_dim, dtype, xp=cp)


def alibi_slopes(batch, nheads, per_batch):
    """float32 ALiBi slopes: the usual 2^(-8 h / nheads), shape (nheads,); with
    per_batch, shape (batch, nheads) with each entry scaled by a random factor."""
    rng = np.random.default_rng()
    s = 2.0 ** (-8.0 * np.arange(1, nheads + 1) / nheads)
    if per_batch:
        s = s[None, :] * rng.uniform(0.5, 2.0, (batch, nheads))
    return cp.asarray(s.astype(np.float32))


def learnable_sink(nheads):
    """float32 (nheads,) sink logits spread from negligible (-3) to dominant (8) for
    rows that see a few hundred keys (lse ~ log(seqlen_k)), in random head order."""
    rng = np.random.default_rng()
    s = np.linspace(-3.0, 8.0, nheads) + rng.uniform(-0.5, 0.5, nheads)
    return cp.asarray(rng.permutation(s).astype(np.float32))


def random_dlse(q):
    """float32 (batch, nheads, seqlen_q), like lse."""
    batch, seqlen_q, nheads, _ = q.shape
    return cp.asarray(np.random.default_rng().standard_normal((batch, nheads, seqlen_q), dtype=np.float32))


def capping_scale(head_dim, std=6.0):
    """A softmax_scale that makes the scores ~N(0, std^2) for unit-normal q, k: large
    enough that softcap 30 bends the top scores and softcap 5 saturates most."""
    return std / math.sqrt(head_dim)


def options(*, causal=False, window=None, softcap=None, softmax_scale=None, alibi=None, sink=None, q=None, k=None):
    """The keyword options of a case (only the ones it sets). alibi: None, "h" or "bh"; sink: bool."""
    opts = dict(causal=causal)
    if window is not None:
        opts["window_size"] = tuple(window)
    if softcap is not None:
        opts["softcap"] = float(softcap)
    if softmax_scale is not None:
        opts["softmax_scale"] = softmax_scale
    if alibi is not None:
        opts["alibi_slopes"] = alibi_slopes(q.shape[0], q.shape[2], per_batch=(alibi == "bh"))
    if sink:
        opts["learnable_sink"] = learnable_sink(q.shape[2])
    return opts


def reference_options(opts):
    """opts for cuflash.reference: GPU arrays (slopes, sink) copied to the host."""
    return {key: testing.to_numpy(val) if isinstance(val, cp.ndarray) else val for key, val in opts.items()}


def poisoned_like(x):
    return testing.poison(cp.empty(x.shape, dtype=x.dtype))


# ---------------------------------------------------------------- running


def forward(q, k, v, opts):
    """cuflash forward into a poisoned out; returns (out, lse)."""
    batch, seqlen_q, nheads, _ = q.shape
    out = poisoned_like(q)
    got, lse = cuflash.attention(q, k, v, return_lse=True, out=out, **opts)
    assert got is out
    assert lse.shape == (batch, nheads, seqlen_q) and lse.dtype == np.float32
    return out, lse


def backward(dout, q, k, v, out, lse, opts, *, dlse=None, deterministic=False):
    """cuflash backward into poisoned dq, dk, dv; returns ((dq, dk, dv), dsink or None)."""
    grads = tuple(poisoned_like(x) for x in (q, k, v))
    kw = dict(opts)
    if dlse is not None:
        kw["dlse"] = dlse
    got = cuflash.attention_backward(
        dout, q, k, v, out, lse, deterministic=deterministic, dq=grads[0], dk=grads[1], dv=grads[2], **kw
    )
    has_sink = opts.get("learnable_sink") is not None
    assert len(got) == (4 if has_sink else 3), f"attention_backward returned {len(got)} arrays"
    assert all(a is b for a, b in zip(got[:3], grads))
    dsink = None
    if has_sink:
        dsink = got[3]
        assert dsink.shape == (q.shape[2],) and dsink.dtype == np.float32, (dsink.shape, dsink.dtype)
    return grads, dsink


class Checks(testing.AccuracyChecks):
    """The accuracy rule on a case's forward and backward outputs, failing once, naming all that are off."""

    def forward(self, q, k, v, opts, out, lse):
        host = [testing.to_numpy(x) for x in (q, k, v)]
        ropts = reference_options(opts)
        r64 = reference.attention_forward(*host, precision="float64", **ropts)
        rlp = reference.attention_forward(*host, precision="lowp", **ropts)
        dt = testing.dtype_name(q.dtype)
        self.rule("out", out, r64[0], rlp[0], dt, "fwd")
        self.rule("lse", lse, r64[1], rlp[1], dt, "fwd")

    def backward(self, dout, q, k, v, opts, grads, dsink, dlse=None):
        host = [testing.to_numpy(x) for x in (dout, q, k, v)]
        ropts = reference_options(opts)
        if dlse is not None:
            ropts["dlse"] = testing.to_numpy(dlse)
        r64 = reference.attention_backward(*host, precision="float64", **ropts)
        rlp = reference.attention_backward(*host, precision="lowp", **ropts)
        dt = testing.dtype_name(q.dtype)
        for name, got, x64, xlp in zip(("dq", "dk", "dv"), grads, r64[:3], rlp[:3]):
            assert got.shape == x64.shape and got.dtype == q.dtype
            self.rule(name, got, x64, xlp, dt, "bwd")
        if dsink is not None:
            assert len(r64) == 5, "the reference returns dsink as its 5th result when given a learnable_sink"
            self.rule("dsink", dsink, r64[4], rlp[4], dt, "bwd")



def run_and_check(q, k, v, opts, *, dlse=False, deterministic=False, label=""):
    """Forward and backward of one case, every output checked against both references."""
    checks = Checks(label)
    out, lse = forward(q, k, v, opts)
    checks.forward(q, k, v, opts, out, lse)
    dout = testing.random_like(q)
    dl = random_dlse(q) if dlse else None
    grads, dsink = backward(dout, q, k, v, out, lse, opts, dlse=dl, deterministic=deterministic)
    checks.backward(dout, q, k, v, opts, grads, dsink, dlse=dl)
    checks.done()
    return SimpleNamespace(out=out, lse=lse, grads=grads, dsink=dsink, opts=opts)


def bits(x):
    x = cp.ascontiguousarray(x)
    return x.view(cp.uint32 if x.itemsize == 4 else cp.uint16)


def assert_bitwise_equal(name, a, b):
    assert bool(cp.all(bits(a) == bits(b))), f"{name} differs between two runs"


# ---------------------------------------------------------------- one feature at a time


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS, ids=win_id)
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_window(seqlens, window, causal):
    q, k, v = qkv("bf16", seqlens)
    run_and_check(q, k, v, options(causal=causal, window=window), label=f"{seqlens} {window} causal={causal}")


# Bands either side of specs.FWD_SM90_NARROW_BAND (d64: the narrow Hopper tiles up to 512 keys per
# query, the usual ones above) and FWD_SM90_PERSISTENT_BAND (the persistent grid up to 1025 keys),
# forward and backward.
@pytest.mark.parametrize("window", [(200, 0), (300, 0), (150, 150), (600, 0), (1024, 0), (1100, 0)], ids=win_id)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_bands_around_the_narrow_tiles(window, head_dim):
    q, k, v = qkv("bf16", (700, 900), head_dim=head_dim)
    run_and_check(q, k, v, options(causal=True, window=window), label=f"d={head_dim} {window}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_window_head_dims(dtype, causal, head_dim):
    q, k, v = qkv(dtype, (113, 203), head_dim=head_dim)
    run_and_check(q, k, v, options(causal=causal, window=(32, 32)), label=f"d={head_dim} causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("softcap", [30.0, 5.0])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_softcap(dtype, causal, softcap, seqlens):
    q, k, v = qkv(dtype, seqlens)
    scale = capping_scale(q.shape[-1])
    # The scores must reach the cap's bend, or softcap would go untested.
    qh, kh = testing.to_float64(q), testing.to_float64(k)
    top = scale * float(np.abs(np.einsum("bqhd,bkhd->bhqk", qh, kh)).max())
    assert top > 0.5 * softcap, f"scores up to {top:.1f} do not reach softcap {softcap}"
    run_and_check(q, k, v, options(causal=causal, softcap=softcap, softmax_scale=scale),
                  label=f"{seqlens} softcap={softcap} causal={causal}")


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("mask", ["none", "causal", "window"])
@pytest.mark.parametrize("softcap", [20.0, 50.0, 51.5])
def test_softcap_scores_at_both_ends(head_dim, mask, softcap):
    # bf16 scores bounded by a softcap of at most ~51.3 take the Hopper forward's softmax at one
    # fixed offset (specs.fixed_offset, kernels_cu/common/softmax.cuh SOFTMAX_FIXED): softcap 20
    # puts P in [2^-57.7, 1], 50 in [2^-124, 2^20.3], the ends of the range; 51.5 keeps the running
    # max. Keys lie near one direction u; a third of the query rows are +4u (every score at
    # +softcap), a third -4u (every score at -softcap: the smallest P), a third random. The window
    # (48, 0) runs d64 on the narrow tiles of kernels_cu/fwd_sm90.cu, the others on fwd_sm90_ws.cu.
    b, sq, sk, h = 2, 203, 257, 4
    window = (48, 0) if mask == "window" else None
    features = Features("local" if window else mask, softcap=True)
    spec = support.fwd_spec("bf16", head_dim, features, (9, 0), band=49 if window else 0, softcap=softcap)
    assert spec.fixed_offset == (softcap <= 51.29)
    rng = np.random.default_rng()
    u = rng.standard_normal(head_dim)
    u /= np.linalg.norm(u)
    k = u + 0.05 * rng.standard_normal((b, sk, h, head_dim))
    kind = rng.integers(0, 3, (b, sq, h, 1))
    q = np.where(kind == 0, 4 * u, np.where(kind == 1, -4 * u, rng.standard_normal((b, sq, h, head_dim))))
    v = rng.standard_normal((b, sk, h, head_dim))
    q, k, v = (cp.asarray(x.astype(testing.BF16).view(np.uint16)).view(testing.BF16) for x in (q, k, v))
    # scale * 4 = 10 softcap: the +-4u rows' scores saturate the tanh. The forward alone: at this
    # scale the backward's dS rests on 1 - tanh^2 of saturated scores, the 16-bit kernels' known
    # weak point (bench/NOTES.md s3; softcap 20: dq 1.1x over the rule in one draw); the backward
    # through the fixed offset's lse is test_softcap's.
    opts = options(causal=mask == "causal", window=window, softcap=softcap, softmax_scale=2.5 * softcap)
    checks = Checks(f"softcap={softcap} {mask} d={head_dim}")
    out, lse = forward(q, k, v, opts)
    checks.forward(q, k, v, opts, out, lse)
    checks.done()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("softcap", [5.0, 30.0, 60.0])
def test_rows_of_one_key_return_its_value(dtype, head_dim, softcap):
    # A row that sees one key puts weight 1 on it: out = v exactly, whichever softmax offset the
    # kernel takes. bf16 softcaps up to ~51.3 run at a fixed offset (specs.fixed_offset), where
    # that key's P is not 1 and is rounded for P V like any other: only a row sum of P as rounded
    # (softmax.cuh pack_p) gives back v; the sum of P itself gave v (1 + e), |e| up to 2^-9
    # (bench/NOTES.md s5). Window (0, 0) gives every row one key (the band's kernels), causal
    # the first row. fp16 and softcap 60 keep the running max (P = 1 there).
    q, k, v = qkv(dtype, (203, 203), head_dim=head_dim)
    for window, causal, rows in (((0, 0), False, slice(None)), (None, True, slice(0, 1))):
        opts = options(causal=causal, window=window, softcap=softcap, softmax_scale=capping_scale(head_dim))
        label = f"softcap={softcap} window={window} causal={causal} d={head_dim}"
        checks = Checks(label)
        out, lse = forward(q, k, v, opts)
        checks.forward(q, k, v, opts, out, lse)
        checks.done()
        off = int(cp.count_nonzero(bits(out[:, rows]) != bits(v[:, rows])))
        assert off == 0, f"{off} entries of out differ from v in rows that see one key ({label})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("slopes", ["h", "bh"], ids=["slopes_h", "slopes_bh"])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_alibi(dtype, causal, slopes, seqlens):
    q, k, v = qkv(dtype, seqlens)
    opts = options(causal=causal, alibi=slopes, q=q)
    assert opts["alibi_slopes"].shape == ((4,) if slopes == "h" else (2, 4))
    run_and_check(q, k, v, opts, label=f"{seqlens} alibi {slopes} causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("ratio", [1, 4], ids=ratio_id)
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_sink(dtype, causal, ratio, seqlens):
    q, k, v = qkv(dtype, seqlens, nheads=8, ratio=ratio)
    run_and_check(q, k, v, options(causal=causal, sink=True, q=q), label=f"{seqlens} sink causal={causal}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sink", [False, True], ids=["dlse", "dlse_sink"])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_dlse(dtype, causal, sink, seqlens):
    q, k, v = qkv(dtype, seqlens)
    run_and_check(q, k, v, options(causal=causal, sink=sink, q=q), dlse=True,
                  label=f"{seqlens} dlse sink={sink} causal={causal}")


# ---------------------------------------------------------------- combinations


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [(16, 0), (100, -1)], ids=win_id)
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_window_causal_gqa(dtype, window, seqlens):
    q, k, v = qkv(dtype, seqlens, nheads=8, ratio=4)
    run_and_check(q, k, v, options(causal=True, window=window), label=f"{seqlens} {window} causal gqa4")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slopes,causal", [("h", True), ("bh", False)], ids=["slopes_h-causal", "slopes_bh"])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_softcap_alibi(dtype, slopes, causal, seqlens):
    q, k, v = qkv(dtype, seqlens)
    opts = options(causal=causal, softcap=30.0, softmax_scale=capping_scale(q.shape[-1]), alibi=slopes, q=q)
    run_and_check(q, k, v, opts, label=f"{seqlens} softcap+alibi {slopes}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [(16, 0), (32, 32), (-1, 64)], ids=win_id)
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_sink_window(dtype, window, seqlens):
    q, k, v = qkv(dtype, seqlens)
    run_and_check(q, k, v, options(window=window, sink=True, q=q), label=f"{seqlens} sink {window}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal,ratio", [(False, 1), (True, 4)], ids=["ratio1", "causal-ratio4"])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=seq_id)
def test_all_four(dtype, head_dim, causal, ratio, seqlens):
    # window + softcap + ALiBi (per (batch, head) under GQA, per head otherwise) + sink
    q, k, v = qkv(dtype, seqlens, head_dim=head_dim, nheads=8, ratio=ratio)
    opts = options(causal=causal, window=(48, 24), softcap=15.0, softmax_scale=capping_scale(head_dim, 3.0),
                   alibi="bh" if ratio > 1 else "h", sink=True, q=q)
    run_and_check(q, k, v, opts, label=f"{seqlens} d={head_dim} all four causal={causal} gqa{ratio}")


# ---------------------------------------------------------------- rows that see no key

# Bottom-right alignment with seqlen_q > seqlen_k leaves the first rows without
# any visible key; the count is not a multiple of any tile height, so one tile
# holds rows of both kinds.
EMPTY_ROW_CASES = {
    "causal": dict(seqlens=(300, 50), causal=True),                        # rows 0..249
    "right_band": dict(seqlens=(300, 100), causal=False, window=(0, 16)),  # rows 0..183
    "left_causal": dict(seqlens=(300, 100), causal=True, window=(16, 0)),  # rows 0..199
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", ["plain", "sink", "sink_dlse", "dlse"])
@pytest.mark.parametrize("case", list(EMPTY_ROW_CASES))
def test_rows_that_see_no_key(dtype, extra, case):
    c = dict(EMPTY_ROW_CASES[case])
    seqlen_q, seqlen_k = c.pop("seqlens")
    vis = reference.visible_mask(seqlen_q, seqlen_k, causal=c["causal"], window_size=c.get("window", (-1, -1)))
    empty = ~vis.any(axis=1)
    hidden = int(empty.sum())
    assert 0 < hidden < seqlen_q and empty[:hidden].all(), "the empty rows should be a prefix"

    q, k, v = qkv(dtype, (seqlen_q, seqlen_k), head_dim=64, nheads=4, ratio=2)
    opts = options(**c, sink="sink" in extra, q=q)
    r = run_and_check(q, k, v, opts, dlse="dlse" in extra, label=f"{case} {extra}")

    out = testing.to_float64(r.out)
    lse = testing.to_numpy(r.lse)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert np.abs(out[:, :hidden]).max() == 0.0, "a row that sees no key must output exactly 0"
    if "sink" in extra:
        # lse = log(exp(sink)) = sink, up to the float32 rounding of a log2-domain round trip
        sink = testing.to_numpy(opts["learnable_sink"]).astype(np.float64)[None, :, None]
        err = np.abs(lse[:, :, :hidden].astype(np.float64) - sink)
        tol = 4 * np.spacing(np.maximum(np.abs(sink), 1.0).astype(np.float32)).astype(np.float64)
        assert (err <= tol).all(), f"lse of an empty row must equal the sink: max error {err.max():.3e}"
        assert np.isfinite(lse).all()
    else:
        assert np.isneginf(lse[:, :, :hidden]).all(), "a row that sees no key must have lse = -inf"
        assert np.isfinite(lse[:, :, hidden:]).all()
    dq = testing.to_float64(r.grads[0])
    assert np.abs(dq[:, :hidden]).max() == 0.0, "a row that sees no key must get dq exactly 0"
    for name, g in zip(("dq", "dk", "dv"), r.grads):
        assert not np.isnan(testing.to_float64(g)).any(), f"NaN in {name}"
    if r.dsink is not None:
        assert np.isfinite(testing.to_numpy(r.dsink)).all()


# ---------------------------------------------------------------- determinism

DETERMINISTIC_CASES = {
    # a left window: each query block sees few key blocks, and the dQ turns are
    # ordered by position inside the visible range (no deadlock, same order)
    "left_window_causal": dict(seqlens=(300, 300), opts=dict(causal=True, window=(40, 0))),
    # many key blocks add to each query block; dsink is a sum over rows too
    "softcap_sink": dict(seqlens=(1000, 1537), opts=dict(causal=False, softcap=30.0, sink=True)),
}


@pytest.mark.parametrize("ratio", [1, 4], ids=ratio_id)
@pytest.mark.parametrize("case", list(DETERMINISTIC_CASES))
def test_deterministic_is_bitwise_reproducible(case, ratio):
    c = DETERMINISTIC_CASES[case]
    q, k, v = qkv("bf16", c["seqlens"], head_dim=128, batch=2, nheads=4, ratio=ratio)
    extra = dict(softmax_scale=capping_scale(128)) if "softcap" in c["opts"] else {}
    opts = options(**c["opts"], **extra, q=q)
    out, lse = forward(q, k, v, opts)
    out2, lse2 = forward(q, k, v, opts)
    assert_bitwise_equal("out", out, out2)
    assert_bitwise_equal("lse", lse, lse2)
    dout = testing.random_like(q)
    first, dsink1 = backward(dout, q, k, v, out, lse, opts, deterministic=True)
    second, dsink2 = backward(dout, q, k, v, out, lse, opts, deterministic=True)
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert_bitwise_equal(name, a, b)
    if dsink1 is not None:
        assert_bitwise_equal("dsink", dsink1, dsink2)
    checks = Checks(f"{case} deterministic")
    checks.forward(q, k, v, opts, out, lse)
    checks.backward(dout, q, k, v, opts, first, dsink1)
    checks.done()


# ---------------------------------------------------------------- long sequences: window block skipping

LONG_CASES = [
    ((2048, 2048), (128, 0), False),
    ((2048, 2048), (128, 0), True),
    ((2048, 2048), (128, 256), False),
    ((2048, 3000), (128, 0), True),   # keys 0..823 are seen by no query
    ((3000, 2048), (128, 0), True),   # queries 0..951 see no key
]


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seqlens,window,causal", LONG_CASES,
                         ids=[f"{seq_id(s)}-{win_id(w)}{'-causal' if c else ''}" for s, w, c in LONG_CASES])
def test_long_window(seqlens, window, causal, head_dim):
    # Most key blocks are outside each query block's window: only a correct
    # block range (forward: keys per query block; backward: queries per key block)
    # gives the reference's result.
    q, k, v = qkv("bf16", seqlens, head_dim=head_dim, batch=1, nheads=2, ratio=1)
    run_and_check(q, k, v, options(causal=causal, window=window), label=f"{seqlens} {window} d={head_dim}")


# A short band on the Hopper forward's persistent grid (specs.FWD_SM90_PERSISTENT_BAND): more tiles than
# SMs, so each CTA walks several, the first query blocks of a row seeing fewer keys, and with more queries
# than keys, blocks that see none.
SHORT_BAND_CASES = [((3000, 3000), (300, 0)), ((3000, 2048), (1000, 24)), ((2048, 2500), (200, 200))]


@pytest.mark.parametrize("seqlens,window", SHORT_BAND_CASES, ids=[f"{seq_id(s)}-{win_id(w)}" for s, w in SHORT_BAND_CASES])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_short_band_on_the_persistent_grid(seqlens, window, head_dim):
    q, k, v = qkv("bf16", seqlens, head_dim=head_dim, batch=2, nheads=8)
    run_and_check(q, k, v, options(window=window), label=f"{seqlens} {window} d={head_dim}")


@pytest.mark.parametrize("seqlens", [(777, 409), (1000, 1100)], ids=seq_id)
def test_short_causal_d256_on_the_persistent_grid(seqlens):
    # d256 causal calls of at most 4096 rows (specs.FWD_SM90_SHORT_CAUSAL) run the warp-specialised
    # forward on its persistent grid with one Q buffer: more tile pairs than SMs, with softcap and
    # the sink, forward and backward (777 x 409 has rows that see no key)
    q, k, v = qkv("bf16", seqlens, head_dim=256, batch=3, nheads=48, ratio=4)
    run_and_check(q, k, v, options(causal=True, softcap=30.0, sink=True, q=q), label=f"{seqlens} d=256")


@pytest.mark.parametrize("deterministic", [False, True])
def test_unseen_keys_are_never_read(deterministic):
    # seqlen 2048 x 3000, window (128, 0): query i sees keys i + 952 - 128 .. i + 952,
    # so keys below 824 are seen by no query. Keys below 512 are NaN in the
    # kernel's k and v: any key block of at most 312 keys that holds one of them is
    # fully masked and must be skipped, not read (0 * NaN is NaN). The references
    # get the clean values (which do not matter); dk, dv of those keys must be 0.
    seqlens, window, poisoned = (2048, 3000), (128, 0), 512
    q, k, v = qkv("bf16", seqlens, head_dim=128, batch=1, nheads=4, ratio=2)
    kp, vp = k.copy(), v.copy()
    testing.poison(kp[:, :poisoned])
    testing.poison(vp[:, :poisoned])
    opts = options(causal=True, window=window)
    checks = Checks("unseen keys poisoned")
    out, lse = forward(q, kp, vp, opts)
    checks.forward(q, k, v, opts, out, lse)
    dout = testing.random_like(q)
    grads, _ = backward(dout, q, kp, vp, out, lse, opts, deterministic=deterministic)
    checks.backward(dout, q, k, v, opts, grads, None)
    checks.done()
    for name, g in zip(("dk", "dv"), grads[1:]):
        assert np.abs(testing.to_float64(g)[:, :poisoned]).max() == 0.0, f"{name} of unseen keys must be 0"
