"""Variable-length batches (cuflash.attention_varlen and attention_varlen_backward; issue 11)
against the float64 reference per sequence, on both kernel families: empty and single-token
sequences, causal with seqlen_q != seqlen_k per sequence, windows, GQA, ALiBi per sequence,
sinks, seqused_k, dlse, deterministic; equal lengths give the dense call's bits; blocks past a
short sequence write nothing (outputs are poisoned before each call)."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference, specs, support, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]

LENGTHS = {
    "mixed": ([37, 0, 1, 200, 129], [64, 5, 1, 150, 300]),
    "equal": ([128, 128, 128], [128, 128, 128]),
    "one": ([1], [333]),
}


def packed(lengths_q, lengths_k, nheads, nheads_kv, head_dim, dtype):
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lengths_q, lengths_k))
    q, k, v = testing.random_qkv(1, int(cu_q[-1]), int(cu_k[-1]), nheads, nheads_kv, head_dim, dtype, xp=cp)
    return q[0], k[0], v[0], cu_q, cu_k


def check(q, k, v, cu_q, cu_k, dtype, *, seqused_k=None, **opts):
    max_q, max_k = int(np.diff(cu_q).max()), int(np.diff(cu_k).max())
    out = testing.poison(cp.empty_like(q))
    used = None if seqused_k is None else cp.asarray(seqused_k)
    got, lse = cuflash.attention_varlen(q, k, v, cp.asarray(cu_q), cp.asarray(cu_k), max_q, max_k,
                                        seqused_k=used, return_lse=True, out=out, **opts)
    assert got is out and lse.shape == (q.shape[1], q.shape[0])
    host = [testing.to_numpy(x) for x in (q, k, v)]
    ropts = {key: testing.to_numpy(val) if isinstance(val, cp.ndarray) else val for key, val in opts.items()}
    r64 = reference.attention_forward_varlen(*host, cu_q, cu_k, seqused_k=seqused_k, precision="float64", **ropts)
    rlp = reference.attention_forward_varlen(*host, cu_q, cu_k, seqused_k=seqused_k, precision="lowp", **ropts)
    testing.check_accuracy("out", out, r64[0], rlp[0], dtype, "fwd")
    testing.check_accuracy("lse", lse, r64[1], rlp[1], dtype, "fwd")
    return out, lse


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(32, 8)), dict(causal=True, softcap=20.0)],
                         ids=["full", "causal", "window", "causal_softcap"])
def test_varlen_forward(dtype, lengths, opts):
    q, k, v, cu_q, cu_k = packed(*LENGTHS[lengths], 8, 2, 128, dtype)
    check(q, k, v, cu_q, cu_k, dtype, **opts)


@pytest.mark.parametrize("head_dim", [64, 72, 256])
def test_varlen_head_dims_alibi_and_sink(head_dim):
    q, k, v, cu_q, cu_k = packed(*LENGTHS["mixed"], 4, 4, head_dim, "bf16")
    slopes = cp.asarray(np.random.default_rng().uniform(0.05, 0.5, (5, 4)).astype(np.float32))
    sink = cp.asarray(np.linspace(-1.0, 4.0, 4, dtype=np.float32))
    check(q, k, v, cu_q, cu_k, "bf16", causal=True, alibi_slopes=slopes, learnable_sink=sink)


@pytest.mark.parametrize("case", ["rounds", "full_list", "past_the_list", "longer_than_listed"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True)], ids=["full", "causal"])
def test_many_sequences(case, opts):
    # rounds: 48 sequences of up to 700 rows, more work units than SMs, so the Hopper forward's
    # persistent grid walks its tile list for many rounds (causal: pairs, and odd block counts'
    # middle block alone). full_list: as many sequences as the d128 kernel's list holds (its
    # listed_seqs, shortened by the ones of sums_by_mma); past_the_list: one more, and
    # longer_than_listed: a sequence longer than FWD_SM90_LISTED_ROWS, both one CTA per tile instead.
    rng = np.random.default_rng()
    features = specs.Features("causal" if opts else "none", varlen=True)
    listed = support.select(support.Problem("fwd", "bf16", 128, features, compute_capability=(9, 0))).listed_seqs
    if case == "longer_than_listed":
        lengths_q = np.asarray([specs.FWD_SM90_LISTED_ROWS + 100, 300, 0, 129])
    else:
        count = {"rounds": 48, "full_list": listed, "past_the_list": listed + 1}[case]
        lengths_q = rng.integers(0, 700 if case == "rounds" else 90, count)
    lengths_k = lengths_q + rng.integers(0, 50, len(lengths_q))
    q, k, v, cu_q, cu_k = packed(lengths_q, lengths_k, 4, 2, 128, "bf16")
    check(q, k, v, cu_q, cu_k, "bf16", **opts)


def test_seqused_k():
    q, k, v, cu_q, cu_k = packed(*LENGTHS["mixed"], 8, 8, 64, "bf16")
    check(q, k, v, cu_q, cu_k, "bf16", causal=True, seqused_k=np.asarray([10, 0, 1, 150, 17], np.int32))


def test_tma_loads_keep_each_sequence_to_its_own_rows(monkeypatch):
    # The Hopper forward loads a varlen batch's full K/V blocks and Q with TMA (maps over every
    # sequence's rows) and a sequence's last, partial block with cp.async: the output bits equal the
    # all-cp.async run (CUFLASH_TMA=0), and infinities in the rows of one sequence reach no other.
    from cuflash import tma

    if not tma.available():
        pytest.skip("the driver has no tensor-map encoder")
    lengths_q, lengths_k = [37, 0, 300, 1, 200, 129], [64, 5, 400, 1, 150, 300]
    q, k, v, cu_q, cu_k = packed(lengths_q, lengths_k, 8, 2, 128, "bf16")
    v[int(cu_k[2]):int(cu_k[3])] = cp.inf  # sequence 2's values: infinite
    max_q, max_k = max(lengths_q), max(lengths_k)
    for opts in ({}, {"causal": True}):
        results = []
        for flag in ("1", "0"):
            monkeypatch.setenv("CUFLASH_TMA", flag)
            out = testing.poison(cp.empty_like(q))
            results.append(cuflash.attention_varlen(q, k, v, cp.asarray(cu_q), cp.asarray(cu_k), max_q, max_k,
                                                    return_lse=True, out=out, **opts))
        (o1, l1), (o0, l0) = results
        # (sequence 2's own rows hold inf and NaN: 0 * inf)
        assert bool(cp.array_equal(o1, o0, equal_nan=True)) and bool(cp.array_equal(l1, l0, equal_nan=True)), opts
        others = cp.concatenate([o1[:int(cu_q[2])], o1[int(cu_q[3]):]])
        assert bool(cp.isfinite(others).all()), opts


@pytest.mark.parametrize("head_dim", [64, 128])
def test_backward_tma_loads_keep_each_sequence_to_its_own_rows(head_dim, monkeypatch):
    # The Hopper backward (bwd_sm90_ws.cu) loads Q and dO of a varlen block inside its sequence with
    # TMA (maps over every sequence's rows) and a sequence's last, partial block with cp.async: the
    # deterministic gradients equal the all-cp.async run's bits (CUFLASH_TMA=0), and infinities in
    # one sequence's rows of dO reach no other sequence's gradients.
    from cuflash import tma

    if not tma.available():
        pytest.skip("the driver has no tensor-map encoder")
    lengths_q, lengths_k = [37, 0, 300, 1, 200, 129], [64, 5, 400, 1, 150, 300]
    q, k, v, cu_q, cu_k = packed(lengths_q, lengths_k, 8, 2, head_dim, "bf16")
    dout = testing.random_like(q)
    rows_q, rows_k = slice(int(cu_q[2]), int(cu_q[3])), slice(int(cu_k[2]), int(cu_k[3]))
    dout[rows_q] = cp.inf  # sequence 2's output gradient: infinite
    cu = cp.asarray(cu_q), cp.asarray(cu_k)
    max_q, max_k = max(lengths_q), max(lengths_k)
    for opts in ({}, {"causal": True}):
        out, lse = cuflash.attention_varlen(q, k, v, *cu, max_q, max_k, return_lse=True, **opts)
        results = []
        for flag in ("1", "0"):
            monkeypatch.setenv("CUFLASH_TMA", flag)
            results.append(cuflash.attention_varlen_backward(dout, q, k, v, out, lse, *cu, max_q, max_k,
                                                             deterministic=True, **opts))
        # (sequence 2's own gradients hold inf and NaN)
        assert all(bool(cp.array_equal(a, b, equal_nan=True)) for a, b in zip(*results)), opts
        dq, dk, dv = results[0]
        for grad, rows in ((dq, rows_q), (dk, rows_k), (dv, rows_k)):
            others = cp.concatenate([grad[:rows.start], grad[rows.stop:]])
            assert bool(cp.isfinite(others).all()), opts


def test_equal_lengths_give_the_dense_bits():
    lengths = [256] * 3
    q, k, v, cu_q, cu_k = packed(lengths, lengths, 8, 4, 128, "bf16")
    got = cuflash.attention_varlen(q, k, v, cp.asarray(cu_q), cp.asarray(cu_k), 256, 256, causal=True)
    dense = cuflash.attention(q.reshape(3, 256, 8, 128), k.reshape(3, 256, 4, 128), v.reshape(3, 256, 4, 128),
                              causal=True)
    assert cp.array_equal(got.view(cp.uint16), dense.reshape(got.shape).view(cp.uint16))


@pytest.mark.parametrize("head_dim", [64, 128])
def test_equal_lengths_give_the_dense_gradient_bits(head_dim):
    # deterministic: the same dQ additions in the same order, whatever the dQ accumulator's layout
    lengths, dense = [192] * 3, lambda x: x.reshape(3, 192, *x.shape[1:])
    q, k, v, cu_q, cu_k = packed(lengths, lengths, 4, 2, head_dim, "bf16")
    dout = testing.random_like(q)
    args = (cp.asarray(cu_q), cp.asarray(cu_k), 192, 192)
    out, lse = cuflash.attention_varlen(q, k, v, *args, causal=True, return_lse=True)
    got = cuflash.attention_varlen_backward(dout, q, k, v, out, lse, *args, causal=True, deterministic=True)
    d_out, d_lse = cuflash.attention(dense(q), dense(k), dense(v), causal=True, return_lse=True)
    want = cuflash.attention_backward(dense(dout), dense(q), dense(k), dense(v), d_out, d_lse, causal=True,
                                      deterministic=True)
    for a, b in zip(got, want):
        assert cp.array_equal(a.view(cp.uint16), b.reshape(a.shape).view(cp.uint16))


def test_unchecked_lengths_give_the_same_bits():
    # check_lengths=False skips only the host copy of the offsets
    q, k, v, cu_q, cu_k = packed(*LENGTHS["mixed"], 8, 2, 128, "bf16")
    dout = testing.random_like(q)
    args = (cp.asarray(cu_q), cp.asarray(cu_k), 200, 300)
    results = []
    for checked in (True, False):
        out, lse = cuflash.attention_varlen(q, k, v, *args, causal=True, return_lse=True, check_lengths=checked)
        grads = cuflash.attention_varlen_backward(dout, q, k, v, out, lse, *args, causal=True, deterministic=True,
                                                  check_lengths=checked)
        results.append((out, lse.view(cp.uint32), *grads))
    for a, b in zip(*results):
        assert cp.array_equal(a.view(cp.uint16) if a.dtype != cp.uint32 else a,
                              b.view(cp.uint16) if b.dtype != cp.uint32 else b)


@pytest.mark.parametrize("bad, exc, match", [
    (dict(cu_seqlens_q=np.asarray([0, 5, 3], np.int32)), ValueError, "cu_seqlens_q must be non-decreasing"),
    (dict(cu_seqlens_q=np.asarray([0, 2, 8], np.int64)), TypeError, "cu_seqlens_q must be int32"),
    (dict(cu_seqlens_k=np.asarray([0, 8], np.int32)), ValueError, r"cu_seqlens_k must have shape \(3,\)"),
    (dict(max_seqlen_q=3), ValueError, "max_seqlen_q"),
    (dict(seqused_k=np.asarray([9, 1], np.int32)), ValueError, r"seqused_k\[0\]"),
])
def test_bad_varlen_input_names_the_argument(bad, exc, match):
    q, k, v, cu_q, cu_k = packed([3, 5], [4, 4], 2, 2, 64, "bf16")
    args = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=5, max_seqlen_k=4, seqused_k=None)
    args.update(bad)
    args = {key: cp.asarray(val) if isinstance(val, np.ndarray) else val for key, val in args.items()}
    with pytest.raises(exc, match=match):
        cuflash.attention_varlen(q, k, v, args.pop("cu_seqlens_q"), args.pop("cu_seqlens_k"), args.pop("max_seqlen_q"),
                                 args.pop("max_seqlen_k"), **args)
    cuflash.attention_varlen(q, k, v, cp.asarray(cu_q), cp.asarray(cu_k), 5, 4)  # the context is still usable


def check_backward(q, k, v, cu_q, cu_k, dtype, *, seqused_k=None, deterministic=False, with_dlse=False, dout=None,
                   **opts):
    """Forward, then backward into poisoned dq, dk, dv, every gradient against the reference
    (dout: random unless given)."""
    max_q, max_k = int(np.diff(cu_q).max()), int(np.diff(cu_k).max())
    used = None if seqused_k is None else cp.asarray(seqused_k)
    args = (cp.asarray(cu_q), cp.asarray(cu_k), max_q, max_k)
    out, lse = cuflash.attention_varlen(q, k, v, *args, seqused_k=used, return_lse=True, **opts)
    dout = testing.random_like(q) if dout is None else dout
    dlse = cp.asarray(np.random.default_rng().standard_normal(lse.shape, dtype=np.float32)) if with_dlse else None
    grads = tuple(testing.poison(cp.empty_like(x)) for x in (q, k, v))
    got = cuflash.attention_varlen_backward(dout, q, k, v, out, lse, *args, seqused_k=used, dlse=dlse,
                                            deterministic=deterministic, dq=grads[0], dk=grads[1], dv=grads[2], **opts)
    assert all(a is b for a, b in zip(got, grads))
    host = [testing.to_numpy(x) for x in (dout, q, k, v)]
    ropts = {key: testing.to_numpy(val) if isinstance(val, cp.ndarray) else val for key, val in opts.items()}
    if with_dlse:
        ropts["dlse"] = testing.to_numpy(dlse)
    r64 = reference.attention_backward_varlen(*host, cu_q, cu_k, seqused_k=seqused_k, precision="float64", **ropts)
    rlp = reference.attention_backward_varlen(*host, cu_q, cu_k, seqused_k=seqused_k, precision="lowp", **ropts)
    for name, g, x64, xlp in zip(("dq", "dk", "dv", "dsink"), got, r64, rlp):
        testing.check_accuracy(name, g, x64, xlp, dtype, "bwd")
    return got


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("lengths", ["mixed", "one"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(32, 8), softcap=20.0)],
                         ids=["full", "causal", "window_softcap"])
def test_varlen_backward(dtype, lengths, opts):
    q, k, v, cu_q, cu_k = packed(*LENGTHS[lengths], 8, 2, 128, dtype)
    check_backward(q, k, v, cu_q, cu_k, dtype, **opts)


@pytest.mark.parametrize("head_dim", [64, 96, 256])
def test_varlen_backward_head_dims_alibi_dlse_seqused(head_dim):
    q, k, v, cu_q, cu_k = packed(*LENGTHS["mixed"], 4, 4, head_dim, "bf16")
    slopes = cp.asarray(np.random.default_rng().uniform(0.05, 0.5, (5, 4)).astype(np.float32))
    check_backward(q, k, v, cu_q, cu_k, "bf16", causal=True, alibi_slopes=slopes, with_dlse=True,
                   seqused_k=np.asarray([10, 0, 1, 150, 17], np.int32))


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_varlen_backward_seqused_under_gqa(head_dim, deterministic):
    """GQA 8/2 with seqused_k: the keys past each sequence's used ones get dk = dv = 0 from the
    group sum of per-query-head accumulators the kernels leave alone there (cleared first)."""
    q, k, v, cu_q, cu_k = packed(*LENGTHS["mixed"], 8, 2, head_dim, "bf16")
    used = np.asarray([10, 0, 1, 150, 17], np.int32)
    _, dk, dv = check_backward(q, k, v, cu_q, cu_k, "bf16", causal=True, seqused_k=used, deterministic=deterministic)
    for b, n in enumerate(used):
        assert not cp.any(dk[int(cu_k[b]) + int(n): int(cu_k[b + 1])]), f"dk past seqused_k[{b}]"
        assert not cp.any(dv[int(cu_k[b]) + int(n): int(cu_k[b + 1])]), f"dv past seqused_k[{b}]"


def test_varlen_backward_deterministic_is_bitwise_repeatable():
    q, k, v, cu_q, cu_k = packed(*LENGTHS["mixed"], 8, 2, 128, "bf16")
    dout = testing.random_like(q)
    first = check_backward(q, k, v, cu_q, cu_k, "bf16", causal=True, deterministic=True, dout=dout)
    again = check_backward(q, k, v, cu_q, cu_k, "bf16", causal=True, deterministic=True, dout=dout)
    for a, b in zip(first, again):
        assert cp.array_equal(a.view(cp.uint16), b.view(cp.uint16))


@pytest.mark.parametrize("with_dlse", [False, True], ids=["sink", "sink_dlse"])
def test_varlen_backward_sink_gradient(with_dlse):
    q, k, v, cu_q, cu_k = packed(*LENGTHS["mixed"], 4, 2, 64, "bf16")
    sink = cp.asarray(np.linspace(-1.0, 3.0, 4, dtype=np.float32))
    got = check_backward(q, k, v, cu_q, cu_k, "bf16", causal=True, learnable_sink=sink, with_dlse=with_dlse)
    assert len(got) == 4 and got[3].shape == (4,) and got[3].dtype == np.float32
