"""cuflash.attention_with_kvcache on the GPU (issue 12, first piece): new keys and values appended
into the caches in place, then attention over each batch row's filled keys, against
cuflash.reference.attention_with_kvcache (the accuracy rule on out and lse, the caches bitwise);
rows past the cache's end dropped; GQA, causal, windows, softcap, ALiBi, sinks, several queries
per row; both kernel families. Outputs are poisoned before each call."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import launch, reference, support, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]


def as_pages(cache, page_size, rng):
    """A contiguous cache (batch, seqlen, ...) (NumPy) as shuffled pages (num_pages, page_size, ...)
    with two spare pages of NaN, and the int32 block table (batch, max_pages) that reads it back."""
    batch, seqlen = cache.shape[:2]
    per_row = -(-seqlen // page_size)
    order = rng.permutation(batch * per_row + 2)[:batch * per_row]
    pages = np.full((batch * per_row + 2, page_size, *cache.shape[2:]), np.nan, dtype=cache.dtype)
    padded = np.full((batch, per_row * page_size, *cache.shape[2:]), np.nan, dtype=cache.dtype)
    padded[:, :seqlen] = cache
    pages[order] = padded.reshape(batch * per_row, page_size, *cache.shape[2:])
    return pages, order.reshape(batch, per_row).astype(np.int32)


def rotary_tables(seqlen, rotary_dim, dtype):
    angles = np.outer(np.arange(seqlen), 1.0 / 10000 ** (np.arange(rotary_dim // 2) / (rotary_dim // 2)))
    dt = testing.resolve_dtype(dtype)
    return np.cos(angles).astype(dt), np.sin(angles).astype(dt)


def run_case(*, batch=3, seqlen_q=1, seqlen_cache=300, seqlen_new=1, nheads=8, nheads_kv=2, d=128, dtype="bf16",
             cache_seqlens=(0, 137, 299), as_array=True, page_size=None, cache_rows=None, rotary_dim=0,
             leftpad=None, **opts):
    """One call against the reference. Slots past each row's filled keys hold NaN (they must not
    reach the output). page_size: a paged cache of shuffled pages; cache_rows: a contiguous cache
    of that many rows read through a random cache_batch_idx; rotary_dim: rotary tables of that
    width (rotary_interleaved in opts); leftpad: cache_leftpad (keys before it hold NaN)."""
    rng = np.random.default_rng()
    q, kc, vc = testing.random_qkv(batch, seqlen_q, seqlen_cache, nheads, nheads_kv, d, dtype, xp=cp)
    k = v = None
    if seqlen_new:
        _, k, v = testing.random_qkv(batch, seqlen_q, seqlen_new, nheads, nheads_kv, d, dtype, xp=cp)
    q_host, kc, vc = testing.to_numpy(q), testing.to_numpy(kc), testing.to_numpy(vc)
    filled = np.broadcast_to(np.asarray(cache_seqlens), (batch,))
    for b in range(batch):
        kc[b, max(filled[b], 0):] = np.nan
        vc[b, max(filled[b], 0):] = np.nan
    extra = {}
    if leftpad is not None:
        for b, pad in enumerate(leftpad):
            kc[b, :pad] = np.nan
            vc[b, :pad] = np.nan
        extra["cache_leftpad"] = np.asarray(leftpad, np.int32)
    if rotary_dim:
        capacity = seqlen_cache if page_size is None else -(-seqlen_cache // page_size) * page_size
        extra["rotary_cos"], extra["rotary_sin"] = rotary_tables(capacity, rotary_dim, dtype)
    if page_size is not None:
        seed = int(rng.integers(1 << 30))
        (kc, table), (vc, _) = as_pages(kc, page_size, np.random.default_rng(seed)), as_pages(
            vc, page_size, np.random.default_rng(seed))
        extra["block_table"] = table
    if cache_rows is not None:
        idx = rng.permutation(cache_rows)[:batch].astype(np.int32)
        spare_k = np.full((cache_rows, *kc.shape[1:]), np.nan, dtype=kc.dtype)
        spare_v = spare_k.copy()
        spare_k[idx], spare_v[idx] = kc, vc
        kc, vc = spare_k, spare_v
        extra["cache_batch_idx"] = idx
    kc_dev, vc_dev = cp.asarray(kc), cp.asarray(vc)
    new = None if k is None else [testing.to_numpy(x) for x in (k, v)]
    lengths = cp.asarray(np.asarray(cache_seqlens, np.int32)) if as_array else cache_seqlens
    got, lse = cuflash.attention_with_kvcache(q, kc_dev, vc_dev, k, v, cache_seqlens=lengths, return_lse=True,
                                              **{key: cp.asarray(x) for key, x in extra.items()}, **opts)
    ropts = {key: testing.to_numpy(x) if isinstance(x, cp.ndarray) else x for key, x in opts.items()}
    ropts.pop("num_splits", None)
    r64 = reference.attention_with_kvcache(q_host, kc, vc, *(new or (None, None)), cache_seqlens=cache_seqlens,
                                           **extra, **ropts)
    rlp = reference.attention_with_kvcache(q_host, kc, vc, *(new or (None, None)), cache_seqlens=cache_seqlens,
                                           precision="lowp", **extra, **ropts)
    testing.check_accuracy("out", got, r64[0], rlp[0], dtype, "fwd")
    testing.check_accuracy("lse", lse, r64[1], rlp[1], dtype, "fwd")
    # Byte for byte: the appended rows and nothing else changed (NaN slots keep their bits).
    assert np.array_equal(testing.to_numpy(kc_dev).view(np.uint16), r64[2].view(np.uint16)), "k_cache after the append"
    assert np.array_equal(testing.to_numpy(vc_dev).view(np.uint16), r64[3].view(np.uint16)), "v_cache after the append"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen_q, seqlen_new", [(1, 1), (4, 4), (7, 0), (1, 0)])
def test_append_then_attend(causal, seqlen_q, seqlen_new):
    run_case(seqlen_q=seqlen_q, seqlen_new=seqlen_new, causal=causal)


def test_rows_past_the_end_are_dropped_and_an_int_length_works():
    run_case(seqlen_cache=64, seqlen_new=5, cache_seqlens=62, as_array=False, causal=True)


@pytest.mark.parametrize("head_dim, dtype", [(64, "fp16"), (96, "bf16"), (256, "bf16")])
def test_head_dims(head_dim, dtype):
    run_case(d=head_dim, dtype=dtype, nheads=4, nheads_kv=4, causal=True)


@pytest.mark.parametrize("smem_limit", [166912, 101376])  # A100, and 99 KB GPUs (RTX 3090/4090-class)
@pytest.mark.parametrize("head_dim", [64, 96, 128])
def test_tiles_of_smaller_gpus(smem_limit, head_dim, monkeypatch):
    # The decode tiles such a GPU selects (fewer warps and stages where the H200's do not fit), run
    # here through CUFLASH_SMEM_LIMIT; an int length, so that no recorded plan of another limit replays.
    monkeypatch.setenv("CUFLASH_SMEM_LIMIT", str(smem_limit))
    spec = support.decode_spec("bf16", head_dim, support.CAUSAL, (9, 0), smem_limit)
    assert launch.decode_smem_bytes(spec) <= smem_limit
    run_case(d=head_dim, seqlen_cache=900, cache_seqlens=880, as_array=False, seqlen_new=1, causal=True)


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


@pytest.mark.parametrize("page_size", [1, 16, 64, 256])
@pytest.mark.parametrize("seqlen_q, seqlen_new", [(1, 1), (5, 5), (1, 0)])
def test_paged_cache(page_size, seqlen_q, seqlen_new):
    run_case(seqlen_q=seqlen_q, seqlen_new=seqlen_new, seqlen_cache=700, cache_seqlens=(0, 333, 695),
             page_size=page_size, causal=True)


@pytest.mark.parametrize("num_splits", [1, 2, 7, 64, 0])
def test_split_counts(num_splits):
    run_case(batch=2, seqlen_cache=3000, cache_seqlens=(1500, 2990), seqlen_new=4, seqlen_q=4, causal=True,
             num_splits=num_splits)


@pytest.mark.parametrize("num_splits, page_size", [(0, None), (3, 16)])
def test_many_rows(num_splits, page_size):
    # At least as many CTAs per split as SMs (batch x 2 kv heads): the 4-warp tile, two CTAs per SM
    # (specs.DECODE_TILES_MANY_UNITS)
    batch = cp.cuda.Device().attributes["MultiProcessorCount"] // 2 + 1
    run_case(batch=batch, seqlen_cache=300, cache_seqlens=tuple(int(x) for x in np.arange(batch) * 7 % 299),
             causal=True, num_splits=num_splits, page_size=page_size)


def test_repeated_split_calls():
    # Repeated calls of one kind replay their launch plan with its epoch (kernels_cu/decode.cu step
    # 4), most likely on the same scratch: the split that merged must have cleared the flags, or the
    # next call's first split to finish would merge parts that are not all in yet. New inputs each time.
    for _ in range(4):
        run_case(batch=2, seqlen_cache=3000, cache_seqlens=(1500, 2990), seqlen_new=1, causal=True, num_splits=16)


def test_splits_with_every_modifier_and_a_paged_cache():
    slopes = cp.asarray(np.random.default_rng().uniform(0.05, 0.5, (3, 8)).astype(np.float32))
    sink = cp.asarray(np.linspace(-1.0, 3.0, 8, dtype=np.float32))
    run_case(seqlen_q=2, seqlen_new=2, seqlen_cache=1200, cache_seqlens=(3, 600, 1190), page_size=16, causal=True,
             window_size=(300, 0), softcap=20.0, alibi_slopes=slopes, learnable_sink=sink, num_splits=5)


def test_cache_batch_idx():
    run_case(cache_rows=7, seqlen_new=3, seqlen_q=3, causal=True)


@pytest.mark.parametrize("seqlen_q", [40, 200])
def test_long_query_chunks(seqlen_q):
    # 40 x 4 heads and 200 x 4 folded rows: over 64 the contiguous cache takes the varlen prefill kernels
    run_case(seqlen_q=seqlen_q, seqlen_new=seqlen_q, seqlen_cache=600, cache_seqlens=(0, 137, 400), causal=True)


def test_long_query_chunk_over_pages():
    run_case(seqlen_q=100, seqlen_new=100, seqlen_cache=600, cache_seqlens=(0, 137, 400), page_size=16, causal=True)


def test_mqa_and_mha_groups():
    run_case(nheads=16, nheads_kv=1, seqlen_q=2, seqlen_new=2, causal=True)
    run_case(nheads=4, nheads_kv=4, seqlen_q=9, seqlen_new=0, causal=False)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_rotary(interleaved, causal):
    run_case(seqlen_q=3, seqlen_new=3, rotary_dim=64, rotary_interleaved=interleaved, causal=causal)


def test_rotary_full_width_over_pages_with_left_padding():
    run_case(seqlen_q=2, seqlen_new=2, rotary_dim=128, rotary_interleaved=False, page_size=16, leftpad=(0, 20, 100),
             cache_seqlens=(5, 137, 290), causal=True, num_splits=3)


def test_left_padding():
    run_case(seqlen_q=4, seqlen_new=4, leftpad=(7, 0, 250), cache_seqlens=(30, 137, 280), causal=True)
    run_case(seqlen_q=1, seqlen_new=0, leftpad=(7, 0, 250), cache_seqlens=(30, 137, 280), window_size=(10, 0))


def test_bad_cache_arguments_are_named():
    q, kc, vc = testing.random_qkv(2, 1, 64, 4, 2, 64, "bf16", xp=cp)
    with pytest.raises(ValueError, match=r"cache_seqlens \(65\) must be in \[0, 64\]"):
        cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=65)
    with pytest.raises(ValueError, match="cache_seqlens must be an int or a contiguous int32 array"):
        cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=cp.zeros(3, cp.int32))
    with pytest.raises(ValueError, match="k must have shape"):
        cuflash.attention_with_kvcache(q, kc, vc, kc[:, :, :1], vc[:, :, :1], cache_seqlens=3)
    table = cp.zeros((2, 4), cp.int32)
    with pytest.raises(ValueError, match=r"block_table entries must be in \[0, 2\)"):
        cuflash.attention_with_kvcache(q, kc, vc, block_table=table + 5, cache_seqlens=3)
    with pytest.raises(ValueError, match=r"cache_batch_idx entries must be in \[0, 2\)"):
        cuflash.attention_with_kvcache(q, kc, vc, cache_batch_idx=cp.asarray([0, 2], cp.int32), cache_seqlens=3)
    before = testing.to_numpy(kc)
    with pytest.raises(ValueError, match="block_table must be an int32"):
        cuflash.attention_with_kvcache(q, kc, vc, kc[:, :1], vc[:, :1], block_table=table.astype(cp.int64),
                                       cache_seqlens=3)
    assert np.array_equal(testing.to_numpy(kc).view(np.uint16), before.view(np.uint16)), "nothing was written"
