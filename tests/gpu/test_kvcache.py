"""cuflash.attention_with_kvcache on the GPU (issue 12, first piece): new keys and values appended
into the caches in place, then attention over each batch row's filled keys, against
cuflash.reference.attention_with_kvcache (the accuracy rule on out and lse, the caches bitwise);
rows past the cache's end dropped; GQA, causal, windows, softcap, ALiBi, sinks, several queries
per row; both kernel families. Outputs are poisoned before each call."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]


def run_case(*, batch=3, seqlen_q=1, seqlen_cache=300, seqlen_new=1, nheads=8, nheads_kv=2, d=128, dtype="bf16",
             cache_seqlens=(0, 137, 299), as_array=True, **opts):
    q, kc, vc = testing.random_qkv(batch, seqlen_q, seqlen_cache, nheads, nheads_kv, d, dtype, xp=cp)
    k = v = None
    if seqlen_new:
        _, k, v = testing.random_qkv(batch, seqlen_q, seqlen_new, nheads, nheads_kv, d, dtype, xp=cp)
    host = [testing.to_numpy(x) for x in (q, kc, vc)]
    new = None if k is None else [testing.to_numpy(x) for x in (k, v)]
    lengths = cp.asarray(np.asarray(cache_seqlens, np.int32)) if as_array else cache_seqlens
    got, lse = cuflash.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lengths, return_lse=True, **opts)
    ropts = {key: testing.to_numpy(x) if isinstance(x, cp.ndarray) else x for key, x in opts.items()}
    r64 = reference.attention_with_kvcache(*host, *(new or (None, None)), cache_seqlens=cache_seqlens, **ropts)
    rlp = reference.attention_with_kvcache(*host, *(new or (None, None)), cache_seqlens=cache_seqlens,
                                           precision="lowp", **ropts)
    testing.check_accuracy("out", got, r64[0], rlp[0], dtype, "fwd")
    testing.check_accuracy("lse", lse, r64[1], rlp[1], dtype, "fwd")
    assert np.array_equal(testing.to_numpy(kc).view(np.uint16), r64[2].view(np.uint16)), "k_cache after the append"
    assert np.array_equal(testing.to_numpy(vc).view(np.uint16), r64[3].view(np.uint16)), "v_cache after the append"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen_q, seqlen_new", [(1, 1), (4, 4), (7, 0), (1, 0)])
def test_append_then_attend(causal, seqlen_q, seqlen_new):
    run_case(seqlen_q=seqlen_q, seqlen_new=seqlen_new, causal=causal)


def test_rows_past_the_end_are_dropped_and_an_int_length_works():
    run_case(seqlen_cache=64, seqlen_new=5, cache_seqlens=62, as_array=False, causal=True)


@pytest.mark.parametrize("head_dim, dtype", [(64, "fp16"), (96, "bf16"), (256, "bf16")])
def test_head_dims(head_dim, dtype):
    run_case(d=head_dim, dtype=dtype, nheads=4, nheads_kv=4, causal=True)


def test_window_softcap_alibi_and_sink():
    slopes = cp.asarray(np.random.default_rng().uniform(0.05, 0.5, (3, 8)).astype(np.float32))
    sink = cp.asarray(np.linspace(-1.0, 3.0, 8, dtype=np.float32))
    run_case(seqlen_q=3, seqlen_new=3, causal=True, window_size=(50, 0), softcap=20.0, alibi_slopes=slopes,
             learnable_sink=sink)


def test_whole_cache_without_append_equals_attention():
    q, kc, vc = testing.random_qkv(2, 5, 200, 4, 1, 64, "fp16", xp=cp)
    out = testing.poison(cp.empty_like(q))
    out[...] = cuflash.attention_with_kvcache(q, kc, vc, causal=True)
    want = cuflash.attention(q, kc, vc, causal=True)
    host = [testing.to_numpy(x) for x in (q, kc, vc)]
    r64 = reference.attention_forward(*host, causal=True)
    rlp = reference.attention_forward(*host, causal=True, precision="lowp")
    testing.check_accuracy("out", out, r64[0], rlp[0], "fp16", "fwd")
    testing.check_accuracy("dense out", want, r64[0], rlp[0], "fp16", "fwd")


def test_bad_cache_arguments_are_named():
    q, kc, vc = testing.random_qkv(2, 1, 64, 4, 2, 64, "bf16", xp=cp)
    with pytest.raises(ValueError, match=r"cache_seqlens \(65\) must be in \[0, 64\]"):
        cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=65)
    with pytest.raises(ValueError, match="cache_seqlens must be an int or a contiguous int32 array"):
        cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=cp.zeros(3, cp.int32))
    with pytest.raises(ValueError, match="k must have shape"):
        cuflash.attention_with_kvcache(q, kc, vc, kc[:, :, :1], vc[:, :, :1], cache_seqlens=3)
    with pytest.raises(ValueError, match="k_cache must have batch stride"):
        cuflash.attention_with_kvcache(q, kc[:, ::2], vc[:, ::2], cache_seqlens=3)
