"""Dropout in the kernels against the float64 reference (DESIGN 3, 5), on the GPU.

The reference is given the keep-mask that reference.dropout_keep_mask rebuilds from
(seed, offset) with the NumPy Philox, so forward (out, lse) and backward (dq, dk, dv,
dsink) are checked exactly against it by the accuracy rule, not statistically: an entry
kept or dropped differently changes out by about P / (1 - p) times a value row, far
above the rule's bound at these sizes. Every case runs on both kernel families
(kernel_path), forward into NaN-poisoned outputs, backward from the forward's own out
and lse; the mask is the same whatever the family, tile shape or launch.
"""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]

SEQLENS = [(113, 203), (203, 113), (257, 257)]


def draw(dtype, seqlens, *, head_dim=128, batch=2, nheads=4, nheads_kv=None):
    return testing.random_qkv(batch, *seqlens, nheads, nheads_kv or nheads, head_dim, dtype, xp=cp)


def keep_mask(q, k, p, seed, offset=0):
    batch, seqlen_q, nheads, _ = q.shape
    return reference.dropout_keep_mask(seed, offset, batch, nheads, seqlen_q, k.shape[1], p)


def host(opts):
    return {key: testing.to_numpy(v) if isinstance(v, cp.ndarray) else v for key, v in opts.items()}


def check_case(q, k, v, p, seed, opts, *, deterministic=False, dlse=False):
    """Forward and backward with dropout p under `seed`, every output against both references;
    returns (out, lse, dq, dk, dv)."""
    out = testing.poison(cp.empty(q.shape, dtype=q.dtype))
    got, lse = cuflash.attention(q, k, v, return_lse=True, out=out, dropout_p=p, seed=seed, **opts)
    assert got is out
    dout = testing.random_like(q)
    dl = cp.asarray(np.random.default_rng().standard_normal(lse.shape, dtype=np.float32)) if dlse else None
    grads = tuple(testing.poison(cp.empty(x.shape, dtype=x.dtype)) for x in (q, k, v))
    res = cuflash.attention_backward(dout, q, k, v, out, lse, dropout_p=p, seed=seed, dlse=dl,
                                     deterministic=deterministic, dq=grads[0], dk=grads[1], dv=grads[2], **opts)
    seed_value, offset = seed if isinstance(seed, tuple) else (seed, 0)
    ropts = dict(host(opts), dropout_p=p, dropout_mask=keep_mask(q, k, p, seed_value, offset))
    hq, hk, hv, hdo = (testing.to_numpy(x) for x in (q, k, v, dout))
    dt = testing.dtype_name(q.dtype)
    checks = testing.AccuracyChecks()

    def rule(name, x, x64, xlp, kind):
        checks.rule(name, x, x64, xlp, dt, kind)

    f64 = reference.attention_forward(hq, hk, hv, precision="float64", **ropts)
    flp = reference.attention_forward(hq, hk, hv, precision="lowp", **ropts)
    rule("out", out, f64[0], flp[0], "fwd")
    rule("lse", lse, f64[1], flp[1], "fwd")
    if dl is not None:
        ropts["dlse"] = testing.to_numpy(dl)
    b64 = reference.attention_backward(hdo, hq, hk, hv, precision="float64", **ropts)
    blp = reference.attention_backward(hdo, hq, hk, hv, precision="lowp", **ropts)
    for name, x, x64, xlp in zip(("dq", "dk", "dv"), res[:3], b64[:3], blp[:3]):
        rule(name, x, x64, xlp, "bwd")
    if "learnable_sink" in opts:
        rule("dsink", res[3], b64[4], blp[4], "bwd")
    checks.done()
    return (out, lse) + tuple(res)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dropout(dtype, causal, head_dim, seqlens):
    q, k, v = draw(dtype, seqlens, head_dim=head_dim)
    check_case(q, k, v, 0.17, int(np.random.default_rng().integers(2**63)), dict(causal=causal))


@pytest.mark.parametrize("p", [0.01, 0.5, 0.9])
def test_dropout_rates(p):
    q, k, v = draw("bf16", (130, 250))
    check_case(q, k, v, p, (12345, 77), {})


@pytest.mark.parametrize("head_dim", [128, 256])  # d256: 64-key blocks with a window (specs.FwdSm90Tiles.with_features)
@pytest.mark.parametrize("case", ["gqa_window", "softcap_alibi", "sink_window", "everything"])
def test_dropout_with_other_features(case, head_dim):
    q, k, v = draw("bf16", (203, 257), head_dim=head_dim, nheads=8, nheads_kv=2)
    scale = 3.0 / np.sqrt(q.shape[-1])
    slopes = cp.asarray((2.0 ** -np.arange(1, 9)).astype(np.float32))
    sink = cp.asarray(np.linspace(-2, 4, 8).astype(np.float32))
    opts = {
        "gqa_window": dict(causal=True, window_size=(48, 0)),
        "softcap_alibi": dict(softcap=5.0, softmax_scale=scale, alibi_slopes=slopes),
        "sink_window": dict(window_size=(32, 16), learnable_sink=sink),
        "everything": dict(causal=True, window_size=(64, 0), softcap=5.0, softmax_scale=scale,
                           alibi_slopes=slopes, learnable_sink=sink),
    }[case]
    check_case(q, k, v, 0.2, 2024, opts, dlse=case == "everything")


@pytest.mark.parametrize("head_dim", [64, 128])  # Hopper: d64 ping-pong backward, d128 bwd_sm90.cu
def test_long_queries_use_the_same_mask(head_dim):
    # Many query blocks of the warp-specialised Hopper forward (a long walk through its
    # K/V ring) and the backward's own tiles: the mask must not depend on either.
    q, k, v = draw("bf16", (2048, 384), head_dim=head_dim, batch=1, nheads=2)
    check_case(q, k, v, 0.25, 99, dict(causal=True))


def test_deterministic_backward_repeats_bitwise_and_the_seed_fixes_the_mask():
    q, k, v = draw("bf16", (257, 257), nheads=4, nheads_kv=2)
    a = check_case(q, k, v, 0.3, 5, dict(causal=True), deterministic=True)
    grads = cuflash.attention_backward(testing.random_like(q), q, k, v, a[0], a[1], causal=True,
                                       dropout_p=0.3, seed=5, deterministic=True)
    again = cuflash.attention(q, k, v, causal=True, dropout_p=0.3, seed=5)
    assert bool(cp.all(again.view(cp.uint16) == a[0].view(cp.uint16))), "same seed, different out"
    for other in (6, (5, 1)):  # another seed, another offset
        x = cuflash.attention(q, k, v, causal=True, dropout_p=0.3, seed=other)
        assert not bool(cp.all(x.view(cp.uint16) == a[0].view(cp.uint16))), f"seed {other} gave the same out"
    dout = testing.random_like(q)
    one = cuflash.attention_backward(dout, q, k, v, a[0], a[1], causal=True, dropout_p=0.3, seed=5,
                                     deterministic=True)
    two = cuflash.attention_backward(dout, q, k, v, a[0], a[1], causal=True, dropout_p=0.3, seed=5,
                                     deterministic=True)
    for x, y in zip(one, two):
        assert bool(cp.all(x.view(cp.uint16) == y.view(cp.uint16))), "deterministic backward differs"
    assert len(grads) == 3


def test_a_drawn_seed_is_returned_and_reproduces_the_call():
    q, k, v = draw("bf16", (64, 96))
    out, lse, seed = cuflash.attention(q, k, v, dropout_p=0.2, return_lse=True)
    assert isinstance(seed, int) and 0 <= seed < 2**64
    again = cuflash.attention(q, k, v, dropout_p=0.2, seed=seed)
    assert bool(cp.all(again.view(cp.uint16) == out.view(cp.uint16)))
    out2, seed2 = cuflash.attention(q, k, v, dropout_p=0.2)
    assert seed2 != seed
    check_case(q, k, v, 0.2, seed, {})


def test_return_attn_probs_marks_the_dropped_entries():
    q, k, v = draw("bf16", (128, 256), nheads=4)
    p, seed = 0.3, 31337
    out, lse, probs = cuflash.attention(q, k, v, causal=True, dropout_p=p, seed=seed, return_attn_probs=True)
    assert probs.shape == (2, 4, 128, 256) and probs.dtype == np.float32
    keep = keep_mask(q, k, p, seed)
    visible = reference.visible_mask(128, 256, causal=True)
    got = testing.to_numpy(probs)
    assert np.array_equal(got[..., visible] < 0, ~keep[..., visible])
    assert np.all(got[..., ~visible] == 0)
    rate = 1 - keep[..., visible].mean()
    assert abs(rate - p) < 0.01, f"dropped {rate:.4f} of the entries, asked {p}"
    # the kernel's output is the kept probabilities times v over 1 - p
    hv = testing.to_float64(v)
    expect = np.einsum("bhqk,bkhd->bqhd", np.maximum(got, 0) / (1 - p), hv)
    assert float(np.abs(testing.to_float64(out) - expect).max()) < 2e-2


def test_bad_dropout_is_refused_before_any_launch():
    q, k, v = draw("bf16", (16, 16))
    out = testing.poison(cp.empty(q.shape, dtype=q.dtype))
    for kw, exc in ((dict(dropout_p=1.0, seed=1), ValueError), (dict(dropout_p=0.1, seed=-1), ValueError),
                    (dict(dropout_p=0.1, seed="x"), TypeError), (dict(dropout_p=float("nan"), seed=1), ValueError)):
        with pytest.raises(exc):
            cuflash.attention(q, k, v, out=out, **kw)
    assert np.isnan(testing.to_float64(out)).all(), "a refused call wrote its output"
    lse = cp.zeros((2, 4, 16), cp.float32)
    with pytest.raises(ValueError, match="forward's seed"):
        cuflash.attention_backward(q, q, k, v, q, lse, dropout_p=0.1)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_dropout_uses_each_sequences_own_coordinates(causal):
    lengths_q, lengths_k = [37, 0, 1, 200, 129], [64, 5, 1, 150, 300]
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lengths_q, lengths_k))
    q, k, v = (x[0] for x in testing.random_qkv(1, int(cu_q[-1]), int(cu_k[-1]), 4, 2, 64, "bf16", xp=cp))
    p, seed = 0.25, (424242, 3)
    args = (cp.asarray(cu_q), cp.asarray(cu_k), max(lengths_q), max(lengths_k))
    out, lse = cuflash.attention_varlen(q, k, v, *args, causal=causal, dropout_p=p, seed=seed, return_lse=True)
    dout = testing.random_like(q)
    grads = cuflash.attention_varlen_backward(dout, q, k, v, out, lse, *args, causal=causal, dropout_p=p, seed=seed)
    mask = reference.dropout_keep_mask(seed[0], seed[1], len(lengths_q), 4, max(lengths_q), max(lengths_k), p)
    hq, hk, hv, hdo = (testing.to_numpy(x) for x in (q, k, v, dout))
    ropts = dict(causal=causal, dropout_p=p, dropout_mask=mask)
    f = [reference.attention_forward_varlen(hq, hk, hv, cu_q, cu_k, precision=prec, **ropts)
         for prec in ("float64", "lowp")]
    testing.check_accuracy("out", out, f[0][0], f[1][0], "bf16", kind="fwd")
    b = [reference.attention_backward_varlen(hdo, hq, hk, hv, cu_q, cu_k, precision=prec, **ropts)
         for prec in ("float64", "lowp")]
    for name, x, x64, xlp in zip(("dq", "dk", "dv"), grads, b[0], b[1]):
        testing.check_accuracy(name, x, x64, xlp, "bf16", kind="bwd")
