"""cuflash.reference against an independent naive formula and finite differences (CPU only)."""

import math

import ml_dtypes
import numpy as np
import pytest

from cuflash import reference as ref
from cuflash.reference import (attention_backward, attention_forward, count_visible_pairs, round_to,
                               visible_mask)

BF16 = np.dtype(ml_dtypes.bfloat16)


# --------------------------------------------------------------------------
# Naive formula, written independently of the reference: explicit loops over
# batch, head, query and key, scalar math only.
# --------------------------------------------------------------------------

def naive_attention(q, k, v, scale=None, causal=False, window=(-1, -1), softcap=0.0, alibi=None,
                    bias=None, dropout_p=0.0, keep=None, sink=None):
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, Sq, H, D = q.shape
    _, Sk, Hkv, Dv = v.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    left, right = window
    if causal:
        right = 0
    out = np.zeros((B, Sq, H, Dv))
    lse = np.zeros((B, H, Sq))
    full_bias = None if bias is None else np.broadcast_to(bias, (B, H, Sq, Sk))
    for b in range(B):
        for h in range(H):
            kh = h // (H // Hkv)
            slope = 0.0
            if alibi is not None:
                slope = float(alibi[h] if np.ndim(alibi) == 1 else alibi[b][h])
            for i in range(Sq):
                scores = []
                for j in range(Sk):
                    diag = i + Sk - Sq
                    if left >= 0 and j < diag - left:
                        continue
                    if right >= 0 and j > diag + right:
                        continue
                    s = sum(q[b, i, h, t] * k[b, j, kh, t] for t in range(D)) * scale
                    if softcap > 0:
                        s = softcap * math.tanh(s / softcap)
                    s -= slope * abs(i + Sk - Sq - j)
                    if full_bias is not None:
                        s += full_bias[b, h, i, j]
                    scores.append((j, s))
                sink_h = None if sink is None else float(sink[h])
                if not scores:
                    lse[b, h, i] = -math.inf if sink_h is None else sink_h
                    continue
                m = max(s for _, s in scores)
                if sink_h is not None:
                    m = max(m, sink_h)
                total = sum(math.exp(s - m) for _, s in scores)
                if sink_h is not None:
                    total += math.exp(sink_h - m)  # joins the denominator, no value
                lse[b, h, i] = m + math.log(total)
                for j, s in scores:
                    p = math.exp(s - m) / total
                    if keep is not None:
                        p = p * keep[b, h, i, j] / (1.0 - dropout_p)
                    out[b, i, h] += p * v[b, j, kh]
    return out, lse


def rand(rng, *shape):
    return rng.standard_normal(shape)


def make(rng, B, Sq, Sk, H, Hkv, D, Dv=None):
    return rand(rng, B, Sq, H, D), rand(rng, B, Sk, Hkv, D), rand(rng, B, Sk, Hkv, Dv or D)


def assert_close(a, b, tol=1e-11):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    both_inf = np.isinf(a) & (a == b)
    assert not np.isnan(a).any()
    diff = np.where(both_inf, 0.0, np.abs(np.where(both_inf, 0, a) - np.where(both_inf, 0, b)))
    assert diff.max(initial=0.0) <= tol * max(1.0, np.abs(np.where(np.isfinite(b), b, 0)).max(initial=0)), diff.max()


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("sq,sk", [(1, 1), (5, 9), (9, 5), (7, 7), (1, 13), (13, 1), (0, 4), (4, 0)])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (2, 1)),
                                           (True, (3, -1)), (False, (0, 0)), (False, (-1, 2)),
                                           (False, (4, -1)), (True, (0, 5))])
def test_visible_mask_matches_rule_and_count(sq, sk, causal, window):
    m = visible_mask(sq, sk, causal=causal, window_size=window)
    assert m.shape == (sq, sk) and m.dtype == bool
    left, right = window
    if causal:
        right = 0
    for i in range(sq):
        for j in range(sk):
            lo_ok = left < 0 or j >= i + sk - sq - left
            hi_ok = right < 0 or j <= i + sk - sq + right
            assert m[i, j] == (lo_ok and hi_ok)
    assert count_visible_pairs(sq, sk, causal=causal, window_size=window) == int(m.sum())


def test_count_visible_pairs_large_known_values():
    n = 8192
    assert count_visible_pairs(n, n) == n * n
    assert count_visible_pairs(n, n, causal=True) == n * (n + 1) // 2
    # window (w, 0): row i sees min(i, w) + 1 keys
    w = 256
    assert count_visible_pairs(n, n, window_size=(w, 0)) == sum(min(i, w) + 1 for i in range(n))
    # seqlen_q > seqlen_k with causal: the first sq - sk rows see nothing
    assert count_visible_pairs(10, 4, causal=True) == 1 + 2 + 3 + 4


# --------------------------------------------------------------------------
# Forward against the naive formula
# --------------------------------------------------------------------------

FWD_CASES = {
    "plain": dict(),
    "scale": dict(scale=0.37),
    "causal_sq_lt_sk": dict(causal=True, shape=(2, 3, 7, 2, 2, 4)),
    "causal_sq_eq_sk": dict(causal=True),
    "causal_sq_gt_sk": dict(causal=True, shape=(1, 8, 3, 2, 1, 4)),
    "window": dict(window=(2, 1), shape=(1, 7, 9, 2, 2, 3)),
    "window_left_only": dict(window=(1, -1), shape=(1, 6, 6, 2, 2, 3)),
    "causal_window": dict(causal=True, window=(2, -1), shape=(1, 6, 8, 2, 2, 3)),
    "softcap": dict(softcap=1.5, scale=1.0),
    "alibi_heads": dict(alibi="h"),
    "alibi_batch_heads": dict(alibi="bh", causal=True),
    "bias_full": dict(bias=(2, 4, 5, 6)),
    "bias_broadcast_heads": dict(bias=(2, 1, 5, 6)),
    "bias_keys_only": dict(bias=(6,)),
    "bias_key_padding": dict(bias=(2, 1, 1, 6)),
    "gqa2": dict(shape=(2, 5, 6, 4, 2, 3)),
    "gqa4": dict(shape=(1, 5, 6, 4, 1, 3), causal=True),
    "dropout": dict(dropout=0.3),
    "dropout_gqa_softcap": dict(dropout=0.2, softcap=2.0, shape=(1, 4, 5, 4, 2, 3)),
    "headdim_v_differs": dict(shape=(1, 4, 5, 2, 2, 3), dv=5),
    "everything": dict(causal=True, window=(3, -1), softcap=3.0, alibi="h", bias=(1, 4, 5, 6), dropout=0.25,
                       shape=(2, 5, 6, 4, 2, 3)),
}


def build_case(case, seed=0):
    rng = np.random.default_rng(seed)
    B, Sq, Sk, H, Hkv, D = case.get("shape", (2, 5, 6, 4, 4, 3))
    q, k, v = make(rng, B, Sq, Sk, H, Hkv, D, case.get("dv"))
    kw = dict(softmax_scale=case.get("scale"), causal=case.get("causal", False),
              window_size=case.get("window", (-1, -1)), softcap=case.get("softcap", 0.0))
    if case.get("alibi") == "h":
        kw["alibi_slopes"] = rng.uniform(0.1, 1.0, size=(H,)).astype(np.float32)
    elif case.get("alibi") == "bh":
        kw["alibi_slopes"] = rng.uniform(0.1, 1.0, size=(B, H))
    if "bias" in case:
        kw["bias"] = rng.standard_normal(case["bias"])
    if "dropout" in case:
        kw["dropout_p"] = case["dropout"]
        kw["dropout_mask"] = rng.random((B, H, Sq, Sk)) >= case["dropout"]
    if "sink" in case:  # "f32" (the API's dtype) or "f64" (for finite differences)
        sink = rng.uniform(-1.0, 2.0, size=(H,))
        kw["learnable_sink"] = sink.astype(np.float32) if case["sink"] == "f32" else sink
    return q, k, v, kw


def naive_from_kw(q, k, v, kw):
    return naive_attention(q, k, v, scale=kw["softmax_scale"], causal=kw["causal"], window=kw["window_size"],
                           softcap=kw["softcap"], alibi=kw.get("alibi_slopes"), bias=kw.get("bias"),
                           dropout_p=kw.get("dropout_p", 0.0), keep=kw.get("dropout_mask"),
                           sink=kw.get("learnable_sink"))


@pytest.mark.parametrize("name", list(FWD_CASES))
def test_forward_matches_naive(name):
    q, k, v, kw = build_case(FWD_CASES[name])
    out, lse = attention_forward(q, k, v, **kw)
    out_n, lse_n = naive_from_kw(q, k, v, kw)
    assert out.dtype == np.float64 and lse.dtype == np.float64
    assert out.shape == out_n.shape and lse.shape == lse_n.shape
    assert_close(out, out_n)
    assert_close(lse, lse_n)


def test_options_change_the_result():
    """Guard against options being silently ignored (each must move the output)."""
    q, k, v, _ = build_case({}, seed=3)
    base, _ = attention_forward(q, k, v)
    rng = np.random.default_rng(4)
    variants = [dict(softmax_scale=0.9), dict(causal=True), dict(window_size=(1, 1)), dict(softcap=0.5),
                dict(alibi_slopes=np.full(4, 0.5)), dict(bias=rng.standard_normal((5, 6))),
                dict(dropout_p=0.5, dropout_mask=rng.random((2, 4, 5, 6)) > 0.5)]
    for kw in variants:
        out, _ = attention_forward(q, k, v, **kw)
        assert np.abs(out - base).max() > 1e-3, kw


def test_default_scale_is_inverse_sqrt_headdim():
    q, k, v, _ = build_case({}, seed=5)
    a, la = attention_forward(q, k, v)
    b, lb = attention_forward(q, k, v, softmax_scale=1 / math.sqrt(q.shape[-1]))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_gqa_equals_repeated_kv():
    rng = np.random.default_rng(6)
    q, k, v = make(rng, 2, 5, 7, 8, 2, 4)
    out, lse = attention_forward(q, k, v, causal=True)
    out_r, lse_r = attention_forward(q, np.repeat(k, 4, axis=2), np.repeat(v, 4, axis=2), causal=True)
    assert_close(out, out_r, 1e-13)
    assert_close(lse, lse_r, 1e-13)


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32])
def test_float64_mode_upcasts_low_precision_inputs_exactly(dtype):
    rng = np.random.default_rng(7)
    q, k, v = (x.astype(dtype) for x in make(rng, 1, 4, 5, 2, 1, 8))
    out, lse = attention_forward(q, k, v)
    out_n, lse_n = attention_forward(*(x.astype(np.float64) for x in (q, k, v)))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, out_n)
    np.testing.assert_array_equal(lse, lse_n)


# --------------------------------------------------------------------------
# Fully masked rows and large scores
# --------------------------------------------------------------------------

def fully_masked_cases():
    rng = np.random.default_rng(8)
    Sq, Sk = 6, 3
    # causal with seqlen_q > seqlen_k: rows 0..2 see no key
    yield "causal_sq_gt_sk", dict(causal=True), np.arange(Sq) < Sq - Sk
    # window (1, 0) with seqlen_q > seqlen_k: row i sees keys i-4..i-3, so rows 0..2 see none
    yield "window_1_0", dict(window_size=(1, 0)), np.arange(Sq) < Sq - Sk
    # bias of -inf on row 1 and 4 (every key)
    bias = rng.standard_normal((1, 1, Sq, Sk))
    bias[..., [1, 4], :] = -np.inf
    rows = np.isin(np.arange(Sq), [1, 4])
    yield "bias_minus_inf", dict(bias=bias), rows


@pytest.mark.parametrize("name,kw,rows", list(fully_masked_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_fully_masked_rows(name, kw, rows):
    rng = np.random.default_rng(9)
    q, k, v = make(rng, 2, 6, 3, 2, 2, 4)
    out, lse = attention_forward(q, k, v, **kw)
    assert rows.any() and not rows.all()
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert (out[:, rows] == 0).all()
    assert np.isneginf(lse[:, :, rows]).all()
    assert np.isfinite(lse[:, :, ~rows]).all()
    assert np.abs(out[:, ~rows]).min() > 0
    dout = rng.standard_normal(out.shape)
    dq, dk, dv, dbias = attention_backward(dout, q, k, v, **kw)
    for g in (dq, dk, dv) + ((dbias,) if dbias is not None else ()):
        assert not np.isnan(g).any()
    assert (dq[:, rows] == 0).all()
    assert np.abs(dq[:, ~rows]).max() > 0
    if dbias is not None:
        assert (dbias[..., rows, :] == 0).all()
    # The masked rows also contribute nothing to dk, dv: drop them and compare.
    # (Only for the bias case: dropping rows of a causal/window problem would
    # move the bottom-right alignment.)
    keep = ~rows
    kw2 = dict(kw)
    if "bias" in kw2:
        kw2["bias"] = kw2["bias"][..., keep, :]
        _, dk2, dv2, _ = attention_backward(dout[:, keep], q[:, keep], k, v, **kw2)
        assert_close(dk, dk2, 1e-12)
        assert_close(dv, dv2, 1e-12)


def test_empty_key_sequence():
    rng = np.random.default_rng(10)
    q, k, v = make(rng, 1, 3, 0, 2, 2, 4)
    out, lse = attention_forward(q, k, v)
    assert out.shape == (1, 3, 2, 4) and (out == 0).all() and np.isneginf(lse).all()
    dq, dk, dv, _ = attention_backward(np.ones_like(out), q, k, v)
    assert (dq == 0).all() and dk.shape == k.shape and dv.shape == v.shape


def test_lse_stable_for_large_scores():
    rng = np.random.default_rng(11)
    q, k, v = make(rng, 1, 4, 6, 1, 1, 8)
    q *= 300.0  # scores in the thousands: exp would overflow without max-subtraction
    out, lse = attention_forward(q, k, v, softmax_scale=1.0)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    s = np.einsum("bihd,bjhd->bhij", q, k)
    m = s.max(-1)
    expected = m + np.log(np.exp(s - m[..., None]).sum(-1))
    assert_close(lse, expected, 1e-14)
    assert lse.max() > 710  # exp(710) overflows float64


# --------------------------------------------------------------------------
# Chunking (memory bound) gives the same answer as one block
# --------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [1, 7, 40, 200])
def test_chunking_is_invisible(monkeypatch, limit):
    rng = np.random.default_rng(12)
    B, Sq, Sk, H, Hkv, D = 2, 9, 7, 6, 2, 4
    q, k, v = make(rng, B, Sq, Sk, H, Hkv, D)
    kw = dict(causal=True, window_size=(4, -1), softcap=2.0, alibi_slopes=rng.uniform(0.1, 1, (B, H)),
              bias=rng.standard_normal((1, H, 1, Sk)), dropout_p=0.1,
              dropout_mask=rng.random((B, H, Sq, Sk)) > 0.1)
    dout = rng.standard_normal((B, Sq, H, D))
    whole_f = attention_forward(q, k, v, **kw)
    whole_b = attention_backward(dout, q, k, v, **kw)
    monkeypatch.setattr(ref, "_CHUNK_ELEMENTS", limit)
    chunk_f = attention_forward(q, k, v, **kw)
    chunk_b = attention_backward(dout, q, k, v, **kw)
    for a, b in zip(whole_f + whole_b, chunk_f + chunk_b):
        assert_close(a, b, 1e-13)


# --------------------------------------------------------------------------
# Backward against central finite differences (float64, tiny shapes)
# --------------------------------------------------------------------------

def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


BWD_CASES = {
    "plain": dict(shape=(1, 3, 4, 2, 2, 3)),
    "causal_sq_gt_sk": dict(causal=True, shape=(1, 5, 3, 2, 1, 3)),
    "causal_sq_lt_sk": dict(causal=True, shape=(2, 3, 5, 2, 2, 2)),
    "window": dict(window=(1, 1), shape=(1, 4, 5, 2, 2, 3)),
    "softcap": dict(softcap=0.8, scale=1.0, shape=(1, 3, 4, 2, 2, 3)),
    "alibi_bias": dict(alibi="bh", bias=(1, 2, 3, 4), shape=(2, 3, 4, 2, 2, 3)),
    "bias_broadcast": dict(bias=(1, 1, 4), shape=(2, 3, 4, 2, 2, 3)),
    "gqa4": dict(shape=(1, 3, 4, 4, 1, 3)),
    "dropout": dict(dropout=0.3, shape=(1, 3, 4, 2, 2, 3)),
    "everything": dict(causal=True, softcap=1.2, bias=(2, 1, 4, 5), dropout=0.25, alibi="h",
                       shape=(2, 4, 5, 4, 2, 2)),
}


@pytest.mark.parametrize("name", list(BWD_CASES))
def test_backward_matches_finite_differences(name):
    case = BWD_CASES[name]
    q, k, v, kw = build_case(case, seed=13)
    dout = np.random.default_rng(14).standard_normal(q.shape[:3] + (v.shape[-1],))

    def loss():
        return float((attention_forward(q, k, v, **kw)[0] * dout).sum())

    dq, dk, dv, dbias = attention_backward(dout, q, k, v, **kw)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    for analytic, x in ((dq, q), (dk, k), (dv, v)):
        num = numeric_grad(loss, x)
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7)
        assert np.abs(analytic).max() > 1e-3  # a real, non-trivial gradient
    if "bias" in case:
        assert dbias.shape == kw["bias"].shape
        np.testing.assert_allclose(dbias, numeric_grad(loss, kw["bias"]), rtol=1e-6, atol=1e-7)
    else:
        assert dbias is None


def test_backward_dropout_mask_zeroes_dv_of_dropped_keys():
    rng = np.random.default_rng(15)
    q, k, v = make(rng, 1, 4, 5, 1, 1, 3)
    keep = np.ones((1, 1, 4, 5), bool)
    keep[..., 2] = False  # key 2 dropped for every query
    dout = rng.standard_normal(q.shape)
    _, _, dv, _ = attention_backward(dout, q, k, v, dropout_p=0.4, dropout_mask=keep)
    assert (dv[0, 2] == 0).all() and np.abs(dv[0, [0, 1, 3, 4]]).min() > 0


# --------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------

def test_validation_errors():
    rng = np.random.default_rng(16)
    q, k, v = make(rng, 1, 3, 4, 4, 2, 3)
    with pytest.raises(ValueError, match="dropout_mask"):
        attention_forward(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="multiple"):
        attention_forward(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="alibi"):
        attention_forward(q, k, v, alibi_slopes=np.ones(3))
    with pytest.raises(ValueError, match="bias"):
        attention_forward(q, k, v, bias=np.ones((2, 4)))
    with pytest.raises(ValueError, match="precision"):
        attention_forward(q, k, v, precision="fp8")
    with pytest.raises(ValueError, match="one dtype"):
        attention_forward(q.astype(np.float16), k, v, precision="lowp")
    with pytest.raises(ValueError, match="dout"):
        attention_backward(np.ones((1, 3, 4, 2)), q, k, v)


# --------------------------------------------------------------------------
# round_to and lowp mode
# --------------------------------------------------------------------------

def test_round_to_bf16_matches_ml_dtypes():
    rng = np.random.default_rng(17)
    x = rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 20000)
    x = x.astype(np.float32)
    bits = x.view(np.uint32)
    # exact ties (low half 0x8000) with even and odd kept parts, values just
    # above / below a tie, and specials
    ties = (bits[:2000] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    near = np.concatenate([ties + np.uint32(1), ties - np.uint32(1)])
    special_bits = np.array([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x00000001, 0x80008000, 0x00018000,
                             0x00008000, 0x3F808000, 0x3F818000], dtype=np.uint32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45, 3.4e38], dtype=np.float32)
    allx = np.concatenate([x, ties.view(np.float32), near.view(np.float32), special_bits.view(np.float32),
                           specials])
    got = round_to(allx, BF16)
    want = allx.astype(BF16).astype(np.float32)
    assert got.dtype == np.float32
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # ties really went both ways (to even): some rounded up, some down
    t = ties.view(np.float32)
    rt = round_to(t, BF16)
    assert (np.abs(rt) > np.abs(t)).any() and (np.abs(rt) < np.abs(t)).any()


def test_round_to_fp16_and_fp32():
    rng = np.random.default_rng(18)
    x = (rng.standard_normal(5000) * 100).astype(np.float32)
    np.testing.assert_array_equal(round_to(x, np.float16), x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(round_to(x, np.float32), x)
    assert round_to(x, np.float16).dtype == np.float32
    assert not np.array_equal(round_to(x, np.float16), x)


LOWP_TOL = {np.dtype(np.float16): 5e-3, BF16: 4e-2, np.dtype(np.float32): 1e-5}


def representable(x, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return x.dtype == np.float32
    return np.array_equal(x.astype(dtype).astype(np.float32), x, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True, softcap=5.0), dict(bias="b", dropout=0.2)],
                         ids=["plain", "causal_softcap", "bias_dropout"])
def test_lowp_close_to_float64_and_representable(dtype, opts):
    rng = np.random.default_rng(19)
    B, Sq, Sk, H, Hkv, D = 2, 33, 47, 4, 2, 32
    q, k, v = (x.astype(dtype) for x in make(rng, B, Sq, Sk, H, Hkv, D))
    dout = rng.standard_normal((B, Sq, H, D)).astype(dtype)
    kw = dict(causal=opts.get("causal", False), softcap=opts.get("softcap", 0.0))
    if "bias" in opts:
        kw["bias"] = rng.standard_normal((1, H, Sq, Sk)).astype(dtype)
    if "dropout" in opts:
        kw["dropout_p"] = opts["dropout"]
        kw["dropout_mask"] = rng.random((B, H, Sq, Sk)) > opts["dropout"]
    out64, lse64 = attention_forward(q, k, v, **kw)
    outl, lsel = attention_forward(q, k, v, precision="lowp", **kw)
    assert outl.dtype == np.float32 and lsel.dtype == np.float32
    assert outl.shape == out64.shape and lsel.shape == lse64.shape
    assert representable(outl, dtype)
    tol = LOWP_TOL[np.dtype(dtype)]
    err = np.abs(outl - out64).max()
    assert err <= tol, err
    if np.dtype(dtype) != np.float32:
        assert err > 0  # really computed in low precision
    assert np.abs(lsel - lse64).max() <= 2 * tol

    g64 = attention_backward(dout, q, k, v, **kw)
    gl = attention_backward(dout, q, k, v, precision="lowp", **kw)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), gl, g64):
        if b is None:
            assert a is None
            continue
        assert a.dtype == np.float32 and a.shape == b.shape
        assert representable(a, dtype), name
        rel = np.abs(a - b).max() / np.abs(b).max()
        assert rel <= 4 * tol, (name, rel)


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["fp16", "bf16"])
def test_lowp_follows_the_documented_recipe(dtype):
    """An independent einsum version of the lowp conventions (forward and dq)."""
    rng = np.random.default_rng(22)
    B, Sq, Sk, H, D = 1, 24, 40, 2, 16
    q, k, v = (x.astype(dtype) for x in make(rng, B, Sq, Sk, H, H, D))
    dout = rng.standard_normal((B, Sq, H, D)).astype(dtype)
    scale = 1 / math.sqrt(D)

    def rnd(x):  # round float32 to dtype, keep float32
        return x.astype(np.float32).astype(dtype).astype(np.float32)

    f = [x.astype(np.float32) for x in (q, k, v, dout)]
    s = rnd(np.einsum("bihd,bjhd->bhij", f[0], f[1]) * np.float32(scale))
    s = np.where(visible_mask(Sq, Sk, causal=True), s, -np.inf)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    p = rnd(e / e.sum(-1, keepdims=True))
    out = rnd(np.einsum("bhij,bjhd->bihd", p, f[2]))
    dp = rnd(np.einsum("bihd,bjhd->bhij", f[3], f[2]))
    ds = rnd(p * (dp - (p * dp).sum(-1, keepdims=True)))
    dq = rnd(np.einsum("bhij,bjhd->bihd", ds, f[1]) * np.float32(scale))

    outl, _ = attention_forward(q, k, v, causal=True, precision="lowp")
    dql = attention_backward(dout, q, k, v, causal=True, precision="lowp")[0]
    # float32 summation order may differ (BLAS vs einsum) and flip a rare
    # rounding; skipping any rounding step changes most elements.
    assert np.mean(outl == out) > 0.97
    assert np.mean(dql == dq) > 0.97
    assert np.abs(outl - out).max() <= 2 * np.abs(out).max() * float(np.finfo(np.float16).eps if dtype == np.float16 else 2.0 ** -7)


def test_lowp_float64_inputs_is_float64_arithmetic():
    rng = np.random.default_rng(20)
    q, k, v = make(rng, 1, 5, 6, 2, 2, 4)
    a = attention_forward(q, k, v, causal=True, precision="lowp")
    b = attention_forward(q, k, v, causal=True)
    assert a[0].dtype == np.float64
    assert_close(a[0], b[0], 1e-14)


def test_lowp_fully_masked_rows_no_nan():
    rng = np.random.default_rng(21)
    q, k, v = (x.astype(BF16) for x in make(rng, 1, 6, 3, 2, 2, 8))
    out, lse = attention_forward(q, k, v, causal=True, precision="lowp")
    assert (out[:, :3] == 0).all() and np.isneginf(lse[:, :, :3]).all() and not np.isnan(out).any()
    dq, dk, dv, _ = attention_backward(np.ones(out.shape, BF16), q, k, v, causal=True, precision="lowp")
    assert (dq[:, :3] == 0).all() and not np.isnan(dk).any() and not np.isnan(dv).any()


def test_array_module_is_numpy_for_numpy():
    assert ref.array_module(np.zeros(2)) is np
    assert ref.array_module(None, np.zeros(2)) is np


def test_empty_query_sequence():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 0, 2, 8))
    k = rng.standard_normal((2, 5, 2, 8))
    out, lse = attention_forward(q, k, k)
    assert out.shape == (2, 0, 2, 8) and lse.shape == (2, 2, 0)
    dq, dk, dv, _ = attention_backward(np.zeros_like(q), q, k, k)
    assert dq.shape == q.shape and not dk.any() and not dv.any()


# --------------------------------------------------------------------------
# Learnable sink and dlse
# --------------------------------------------------------------------------

SINK_FWD_CASES = {
    "plain": dict(),
    "causal_sq_gt_sk": dict(causal=True, shape=(2, 6, 3, 2, 1, 4)),   # rows 0..2 see no key
    "window_1_0": dict(window=(1, 0), shape=(1, 6, 3, 2, 2, 4)),       # rows 0..2 see no key
    "gqa_causal_window_softcap_alibi": dict(causal=True, window=(2, -1), softcap=1.5, alibi="bh",
                                            shape=(2, 5, 7, 4, 2, 3)),
    "everything": dict(causal=True, window=(3, -1), softcap=3.0, alibi="h", bias=(1, 4, 5, 6), dropout=0.25,
                       shape=(2, 5, 6, 4, 2, 3)),
}


@pytest.mark.parametrize("name", list(SINK_FWD_CASES))
def test_sink_forward_matches_naive(name):
    q, k, v, kw = build_case(dict(SINK_FWD_CASES[name], sink="f32"), seed=30)
    assert kw["learnable_sink"].dtype == np.float32
    out, lse = attention_forward(q, k, v, **kw)
    out_n, lse_n = naive_from_kw(q, k, v, kw)
    assert out.dtype == np.float64 and lse.dtype == np.float64
    assert np.isfinite(lse).all()
    assert_close(out, out_n)
    assert_close(lse, lse_n)
    # the sink really changes the result (it takes probability mass away)
    out0, lse0 = attention_forward(q, k, v, **dict(kw, learnable_sink=None))
    assert np.abs(out - out0).max() > 1e-3
    assert (lse[np.isfinite(lse0)] > lse0[np.isfinite(lse0)]).all()


@pytest.mark.parametrize("kw", [dict(causal=True), dict(window_size=(1, 0))], ids=["causal", "window_1_0"])
def test_sink_fully_masked_rows_out_zero_lse_sink(kw):
    rng = np.random.default_rng(31)
    q, k, v = make(rng, 2, 6, 3, 2, 2, 4)
    sink = np.array([0.75, -1.25], np.float32)
    rows = np.arange(6) < 3
    out, lse = attention_forward(q, k, v, learnable_sink=sink, **kw)
    assert (out[:, rows] == 0).all() and not np.isnan(out).any()
    np.testing.assert_array_equal(lse[:, :, rows], np.broadcast_to(sink.astype(np.float64)[None, :, None],
                                                                   (2, 2, 3)))
    assert np.abs(out[:, ~rows]).min() > 0
    # no keys at all
    out, lse = attention_forward(q, k[:, :0], v[:, :0], learnable_sink=sink)
    assert (out == 0).all() and lse.shape == (2, 2, 6)
    np.testing.assert_array_equal(lse, np.broadcast_to(sink.astype(np.float64)[None, :, None], (2, 2, 6)))


def test_sink_stable_for_large_scores_and_large_sink():
    rng = np.random.default_rng(32)
    q, k, v = make(rng, 1, 4, 6, 2, 2, 8)
    q *= 300.0  # scores in the thousands
    s = np.einsum("bihd,bjhd->bhij", q, k)
    for sink in (np.array([800.0, -5.0]), np.array([s[0, 0].max() + 3.0, 2000.0])):
        out, lse = attention_forward(q, k, v, softmax_scale=1.0, learnable_sink=sink)
        assert np.isfinite(out).all() and np.isfinite(lse).all()
        m = np.maximum(s.max(-1), sink[None, :, None])
        expected = m + np.log(np.exp(s - m[..., None]).sum(-1) + np.exp(sink[None, :, None] - m))
        assert_close(lse, expected, 1e-14)
        out_n = np.einsum("bhij,bjhd->bihd", np.exp(s - expected[..., None]), v)
        assert_close(out, out_n, 1e-12)
    # head 1's sink (2000) dominates every score (well below 2000 - 300): its output is ~0
    assert s[0, 1].max() < 1700 and np.abs(out[:, :, 1]).max() < 1e-100


def _loss_with_lse(q, k, v, kw, dout, dlse):
    out, lse = attention_forward(q, k, v, **kw)
    total = float((out * dout).sum())
    if dlse is not None:
        # rows with lse = -inf (no key, no sink) read nothing
        total += float(np.where(np.isfinite(lse), lse * dlse, 0.0).sum())
    return total


SINK_BWD_CASES = {
    "plain": dict(shape=(1, 3, 4, 2, 2, 3)),
    "causal_sq_gt_sk": dict(causal=True, shape=(1, 5, 3, 2, 1, 3)),
    "window": dict(window=(1, 0), shape=(1, 5, 3, 2, 2, 2)),
    "combo": dict(causal=True, window=(2, -1), softcap=1.2, alibi="h", shape=(2, 4, 5, 4, 2, 2)),
    "everything": dict(causal=True, softcap=1.2, bias=(2, 1, 4, 5), dropout=0.25, alibi="bh",
                       shape=(2, 4, 5, 4, 2, 2)),
}


@pytest.mark.parametrize("with_dlse", [False, True], ids=["no_dlse", "dlse"])
@pytest.mark.parametrize("name", list(SINK_BWD_CASES))
def test_sink_backward_matches_finite_differences(name, with_dlse):
    case = dict(SINK_BWD_CASES[name], sink="f64")
    q, k, v, kw = build_case(case, seed=33)
    rng = np.random.default_rng(34)
    dout = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    B, Sq, H = q.shape[:3]
    dlse = rng.standard_normal((B, H, Sq)) if with_dlse else None
    sink = kw["learnable_sink"]

    def loss():
        return _loss_with_lse(q, k, v, kw, dout, dlse)

    grads = attention_backward(dout, q, k, v, dlse=dlse, **kw)
    assert len(grads) == 5
    dq, dk, dv, dbias, dsink = grads
    assert dsink.shape == (H,) and dsink.dtype == np.float64
    for analytic, x in ((dq, q), (dk, k), (dv, v), (dsink, sink)):
        np.testing.assert_allclose(analytic, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    assert np.abs(dsink).min() > 1e-4  # every head's sink has a real gradient
    if "bias" in case:
        np.testing.assert_allclose(dbias, numeric_grad(loss, kw["bias"]), rtol=1e-6, atol=1e-7)
    else:
        assert dbias is None


def test_dsink_closed_form():
    """dsink = -sum exp(sink - lse) * (rowsum(dO * O) - dlse), summed over batch and rows."""
    q, k, v, kw = build_case(dict(causal=True, shape=(2, 6, 4, 4, 2, 3), sink="f32"), seed=35)
    rng = np.random.default_rng(36)
    dout = rng.standard_normal(q.shape)
    dlse = rng.standard_normal((2, 4, 6))
    out, lse = attention_forward(q, k, v, **kw)
    delta = np.einsum("bihd,bihd->bhi", dout, out) - dlse
    sink = kw["learnable_sink"].astype(np.float64)
    expected = -(np.exp(sink[None, :, None] - lse) * delta).sum(axis=(0, 2))
    dsink = attention_backward(dout, q, k, v, dlse=dlse, **kw)[4]
    assert_close(dsink, expected, 1e-12)


@pytest.mark.parametrize("name", ["plain", "causal_sq_gt_sk", "window", "alibi_bias", "gqa4", "dropout"])
def test_dlse_backward_matches_finite_differences(name):
    case = dict(BWD_CASES.get(name) or SINK_BWD_CASES[name])
    q, k, v, kw = build_case(case, seed=37)
    rng = np.random.default_rng(38)
    dout = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    B, Sq, H = q.shape[:3]
    dlse = rng.standard_normal((B, H, Sq))

    def loss():
        return _loss_with_lse(q, k, v, kw, dout, dlse)

    grads = attention_backward(dout, q, k, v, dlse=dlse, **kw)
    assert len(grads) == 4  # no sink: the 4-tuple
    dq, dk, dv, dbias = grads
    for g in grads:
        assert g is None or not np.isnan(g).any()
    for analytic, x in ((dq, q), (dk, k), (dv, v)):
        np.testing.assert_allclose(analytic, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    if "bias" in case:
        np.testing.assert_allclose(dbias, numeric_grad(loss, kw["bias"]), rtol=1e-6, atol=1e-7)
    # dlse really matters
    dq0 = attention_backward(dout, q, k, v, **kw)[0]
    assert np.abs(dq - dq0).max() > 1e-3


def test_dlse_fully_masked_rows_contribute_nothing():
    rng = np.random.default_rng(39)
    q, k, v = make(rng, 2, 6, 3, 2, 2, 4)
    dout = rng.standard_normal(q.shape)
    dlse = rng.standard_normal((2, 2, 6))
    dlse2 = dlse.copy()
    dlse2[:, :, :3] = 1e6  # rows 0..2 see no key (lse = -inf): their dlse is ignored
    a = attention_backward(dout, q, k, v, causal=True, dlse=dlse)
    b = attention_backward(dout, q, k, v, causal=True, dlse=dlse2)
    for x, y in zip(a[:3], b[:3]):
        assert not np.isnan(x).any()
        np.testing.assert_array_equal(x, y)
    assert (a[0][:, :3] == 0).all()


def test_sink_backward_fully_masked_and_empty_keys():
    rng = np.random.default_rng(40)
    q, k, v = make(rng, 2, 6, 3, 2, 2, 4)
    sink = np.array([0.5, -0.5])
    dout = rng.standard_normal(q.shape)
    dlse = rng.standard_normal((2, 2, 6))
    dq, dk, dv, _, dsink = attention_backward(dout, q, k, v, causal=True, learnable_sink=sink, dlse=dlse)
    assert (dq[:, :3] == 0).all() and np.isfinite(dsink).all()
    # a row that sees no key has P_sink = 1 and delta = -dlse: it adds dlse to dsink
    _, _, _, _, dsink_rows = attention_backward(dout[:, 3:], q[:, 3:], k, v, causal=True, learnable_sink=sink,
                                                dlse=dlse[:, :, 3:])
    assert_close(dsink - dsink_rows, dlse[:, :, :3].sum(axis=(0, 2)), 1e-12)
    # no keys at all: dsink = sum of dlse, everything else 0
    dq, dk, dv, _, dsink = attention_backward(dout, q, k[:, :0], v[:, :0], learnable_sink=sink, dlse=dlse)
    assert (dq == 0).all() and dk.shape == (2, 0, 2, 4)
    assert_close(dsink, dlse.sum(axis=(0, 2)), 1e-14)
    _, _, _, _, dsink = attention_backward(dout, q, k[:, :0], v[:, :0], learnable_sink=sink)
    assert (dsink == 0).all()


def test_sink_minus_inf_equals_no_sink():
    q, k, v, kw = build_case(dict(causal=True, shape=(1, 5, 3, 2, 2, 3)), seed=41)
    dout = np.random.default_rng(42).standard_normal(q.shape)
    sink = np.full(2, -np.inf)
    a = attention_forward(q, k, v, **kw)
    b = attention_forward(q, k, v, learnable_sink=sink, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    ga = attention_backward(dout, q, k, v, **kw)
    gb = attention_backward(dout, q, k, v, learnable_sink=sink, **kw)
    for x, y in zip(ga[:3], gb[:3]):
        np.testing.assert_array_equal(x, y)
    assert (gb[4] == 0).all()


def test_sink_and_dlse_chunking_is_invisible(monkeypatch):
    q, k, v, kw = build_case(dict(causal=True, window=(4, -1), softcap=2.0, alibi="bh", sink="f32",
                                  shape=(2, 9, 7, 6, 2, 4)), seed=43)
    rng = np.random.default_rng(44)
    dout = rng.standard_normal(q.shape)
    dlse = rng.standard_normal((2, 6, 9))
    whole = attention_forward(q, k, v, **kw) + attention_backward(dout, q, k, v, dlse=dlse, **kw)
    monkeypatch.setattr(ref, "_CHUNK_ELEMENTS", 7)
    chunked = attention_forward(q, k, v, **kw) + attention_backward(dout, q, k, v, dlse=dlse, **kw)
    for a, b in zip(whole, chunked):
        if a is None:
            assert b is None
        else:
            assert_close(a, b, 1e-13)


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32], ids=["fp16", "bf16", "fp32"])
def test_sink_lowp_runs_and_returns_float32(dtype):
    rng = np.random.default_rng(45)
    B, Sq, Sk, H, Hkv, D = 2, 20, 13, 4, 2, 16
    q, k, v = (x.astype(dtype) for x in make(rng, B, Sq, Sk, H, Hkv, D))
    dout = rng.standard_normal((B, Sq, H, D)).astype(dtype)
    sink = rng.uniform(-1, 2, H).astype(np.float32)
    dlse = rng.standard_normal((B, H, Sq)).astype(np.float32)
    kw = dict(causal=True, softcap=5.0, learnable_sink=sink)
    out64, lse64 = attention_forward(q, k, v, **kw)
    outl, lsel = attention_forward(q, k, v, precision="lowp", **kw)
    assert outl.dtype == np.float32 and lsel.dtype == np.float32
    assert representable(outl, dtype)
    tol = LOWP_TOL[np.dtype(dtype)]
    assert np.abs(outl - out64).max() <= tol
    assert np.abs(lsel - lse64).max() <= 2 * tol
    # rows 0..6 see no key: out 0, lse = the float32 sink exactly
    assert (outl[:, :Sq - Sk] == 0).all()
    np.testing.assert_array_equal(lsel[:, :, :Sq - Sk], np.broadcast_to(sink[None, :, None], (B, H, Sq - Sk)))

    g64 = attention_backward(dout, q, k, v, dlse=dlse, **kw)
    gl = attention_backward(dout, q, k, v, dlse=dlse, precision="lowp", **kw)
    assert len(gl) == 5 and gl[3] is None
    for name, a, b in zip(("dq", "dk", "dv"), gl[:3], g64[:3]):
        assert a.dtype == np.float32 and representable(a, dtype), name
        assert np.abs(a - b).max() / np.abs(b).max() <= 4 * tol, name
    dsink_l, dsink_64 = gl[4], g64[4]
    assert dsink_l.dtype == np.float32 and dsink_l.shape == (H,)
    assert dsink_64.dtype == np.float64
    assert np.abs(dsink_l - dsink_64).max() / np.abs(dsink_64).max() <= 4 * tol


def test_sink_and_dlse_validation():
    rng = np.random.default_rng(46)
    q, k, v = make(rng, 1, 3, 4, 4, 2, 3)
    with pytest.raises(ValueError, match="learnable_sink"):
        attention_forward(q, k, v, learnable_sink=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="learnable_sink"):
        attention_forward(q, k, v, learnable_sink=np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="dlse"):
        attention_backward(np.ones(q.shape), q, k, v, dlse=np.zeros((1, 3, 4)))
