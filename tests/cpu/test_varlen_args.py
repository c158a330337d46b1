"""Variable-length batches without a GPU: the host checks of cu_seqlens and max_seqlen (each
error names its argument) and the reference's per-sequence semantics."""
from __future__ import annotations

import numpy as np
import pytest

from cuflash import api, launch, reference


@pytest.mark.parametrize("cu, total, max_seqlen, match", [
    ([1, 3, 5], 5, 8, "must start at 0"),
    ([0, 4, 3], 4, 8, r"non-decreasing: entry 2 \(3\) < entry 1 \(4\)"),
    ([0, 3, 5], 6, 8, r"\[-1\] must equal the number of rows \(6\)"),
    ([0, 3, 9], 9, 5, r"max_seqlen_q \(5\) is smaller than the longest sequence"),
])
def test_bad_cu_seqlens_name_the_argument(cu, total, max_seqlen, match):
    with pytest.raises(ValueError, match=match):
        api.check_sequence_lengths(np.asarray(cu, np.int64), "cu_seqlens_q", total, max_seqlen, "max_seqlen_q")


def test_good_cu_seqlens_give_the_lengths():
    lengths = api.check_sequence_lengths(np.asarray([0, 0, 3, 3, 10]), "cu_seqlens_k", 10, 7, "max_seqlen_k")
    assert lengths.tolist() == [0, 3, 0, 7]


def test_reference_varlen_is_the_dense_reference_per_sequence():
    rng = np.random.default_rng(0)
    lens_q, lens_k = [3, 0, 5, 1, 4], [4, 2, 7, 1, 0]
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lens_q, lens_k))
    q = rng.standard_normal((cu_q[-1], 4, 16))
    k, v = rng.standard_normal((2, cu_k[-1], 2, 16))
    slopes = rng.uniform(0.1, 1.0, (5, 4))
    out, lse = reference.attention_forward_varlen(q, k, v, cu_q, cu_k, causal=True, alibi_slopes=slopes)
    assert out.shape == (cu_q[-1], 4, 16) and lse.shape == (4, cu_q[-1])
    for b in range(5):
        rq, rk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        o, s = reference.attention_forward(q[None, rq], k[None, rk], v[None, rk], causal=True, alibi_slopes=slopes[b])
        assert np.array_equal(out[rq], o[0]) and np.array_equal(lse[:, rq], s[0])
    used = np.asarray([2, 1, 7, 0, 0], np.int32)
    out_u, _ = reference.attention_forward_varlen(q, k, v, cu_q, cu_k, seqused_k=used)
    o, _ = reference.attention_forward(q[None, 3:8], k[None, 6:13], v[None, 6:13])
    assert np.array_equal(out_u[3:8], o[0])
    o, _ = reference.attention_forward(q[None, 0:3], k[None, 0:2], v[None, 0:2])
    assert np.array_equal(out_u[0:3], o[0])


def test_reference_varlen_backward_is_the_dense_backward_per_sequence():
    rng = np.random.default_rng(1)
    lens_q, lens_k = [3, 0, 5, 2], [4, 2, 7, 0]
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lens_q, lens_k))
    q = rng.standard_normal((cu_q[-1], 4, 16))
    k, v = rng.standard_normal((2, cu_k[-1], 2, 16))
    dout = rng.standard_normal(q.shape)
    sink = rng.standard_normal(4)
    dq, dk, dv, dsink = reference.attention_backward_varlen(dout, q, k, v, cu_q, cu_k, causal=True,
                                                            learnable_sink=sink)
    total = np.zeros(4)
    for b in range(4):
        rq, rk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        g = reference.attention_backward(dout[None, rq], q[None, rq], k[None, rk], v[None, rk], causal=True,
                                         learnable_sink=sink)
        assert np.array_equal(dq[rq], g[0][0]) and np.array_equal(dk[rk], g[1][0]) and np.array_equal(dv[rk], g[2][0])
        total += g[4]
    assert np.allclose(dsink, total)


def _ref(shape, dtype, ptr):
    return launch.Ref(ptr, tuple(shape), launch._contiguous(tuple(shape))[0], dtype, 0)


@pytest.mark.parametrize("nheads_kv, seqused", [(2, True), (2, False), (8, True)], ids=["gqa-seqused", "gqa", "mha"])
def test_varlen_backward_clears_the_group_accumulators_under_seqused_k(monkeypatch, nheads_kv, seqused):
    """Under GQA the kernels write dK, dV per query head into fp32 accumulators, and the convert
    kernel sums every row of each group; with seqused_k no kernel writes the unused keys' rows, so
    both accumulators are cleared on the stream before the main kernel (an A100-class GPU, no launch)."""
    events = []
    monkeypatch.setattr(api, "_compute_capability", lambda device: (8, 0))
    monkeypatch.setattr(api, "_device_smem_limit", lambda device: 166912)
    monkeypatch.setattr(launch, "run", lambda spec, device, grid, block, smem, packer, fields, stream, maps=None:
                        events.append(("run", fields.get("dk_accum"), fields.get("dv_accum"))))
    monkeypatch.setattr(launch, "convert", lambda src, dst, group, dtype, stream, swizzled=False:
                        events.append(("convert", src.ptr)))
    monkeypatch.setattr(launch, "clear", lambda x, stream: events.append(("clear", x.ptr, x.shape, stream)))
    total_q, total_k, nheads, d = 40, 56, 8, 64
    q = _ref((1, total_q, nheads, d), "bfloat16", 1 << 24)
    k = _ref((1, total_k, nheads_kv, d), "bfloat16", 2 << 24)
    lse = _ref((nheads, total_q), "float32", 3 << 24)
    opts = api._varlen_options(q, None, True, (-1, -1), 0.0, None, None)
    sequences = {"cu_seqlens_q": 4 << 24, "cu_seqlens_k": 5 << 24, "seqused_k": (6 << 24) if seqused else 0}

    def alloc(shape, dtype):
        return None, _ref(shape, dtype, 7 << 24)

    api.run_varlen_backward(q, q, k, k, q, lse, q, k, k, opts, False, None, alloc, 99, sequences, 20, 30)
    runs = [e for e in events if e[0] == "run"]
    main = runs[-1]  # after the prepare kernel
    clears = [e for e in events if e[0] == "clear"]
    if nheads_kv == nheads:
        assert main[1:] == (None, None) and not clears
        return
    assert main[1] and main[2]
    if not seqused:
        assert not clears
        return
    assert [c[1] for c in clears] == [main[1], main[2]]
    assert all(c[2] == (1, total_k, nheads, d) and c[3] == 99 for c in clears)
    assert events.index(clears[-1]) < events.index(main)  # cleared before the kernel adds into them
