"""cuflash.attention_with_kvcache without a GPU: its reference against plain attention over the
concatenated keys, and the arguments refused before anything is launched (issue 12)."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference, testing


def cache_inputs(batch=2, seqlen_q=3, seqlen_cache=20, seqlen_new=4, nheads=4, nheads_kv=2, d=32):
    q, kc, vc = testing.random_qkv(batch, seqlen_q, seqlen_cache, nheads, nheads_kv, d, "fp16", seed=1)
    _, k, v = testing.random_qkv(batch, seqlen_q, seqlen_new, nheads, nheads_kv, d, "fp16", seed=2)
    return q, kc, vc, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_reference_appends_then_attends_over_the_filled_keys(causal):
    q, kc, vc, k, v = cache_inputs()
    out, lse, k_new, v_new = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=[5, 11], causal=causal)
    for b, filled in enumerate((5, 11)):
        keys = np.concatenate([kc[b:b + 1, :filled], k[b:b + 1]], axis=1)
        values = np.concatenate([vc[b:b + 1, :filled], v[b:b + 1]], axis=1)
        want = reference.attention_forward(q[b:b + 1], keys, values, causal=causal)
        assert np.array_equal(out[b:b + 1], want[0]) and np.array_equal(lse[b:b + 1], want[1])
        assert np.array_equal(k_new[b, filled:filled + 4], k[b]) and np.array_equal(v_new[b, :filled], vc[b, :filled])
        assert np.array_equal(k_new[b, filled + 4:], kc[b, filled + 4:])


def test_reference_drops_rows_past_the_end_and_defaults_to_the_whole_cache():
    q, kc, vc, k, v = cache_inputs(seqlen_cache=10)
    _, _, k_new, _ = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=8)
    assert np.array_equal(k_new[:, 8:], k[:, :2]) and np.array_equal(k_new[:, :8], kc[:, :8])
    out, _, _, _ = reference.attention_with_kvcache(q, kc, vc)
    assert np.array_equal(out, reference.attention_forward(q, kc, vc)[0])


def paged(cache, page_size, rng):
    """A contiguous cache (batch, seqlen, ...) as shuffled pages (num_pages, page_size, ...) plus one
    spare page of NaN, and the block table that reads it back."""
    batch, seqlen = cache.shape[:2]
    per_row = -(-seqlen // page_size)
    order = rng.permutation(batch * per_row)
    pages = np.full((batch * per_row + 1, page_size, *cache.shape[2:]), np.nan, dtype=cache.dtype)
    padded = np.zeros((batch, per_row * page_size, *cache.shape[2:]), dtype=cache.dtype)
    padded[:, :seqlen] = cache
    pages[order] = padded.reshape(batch * per_row, page_size, *cache.shape[2:])
    return pages, order.reshape(batch, per_row).astype(np.int32)


@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_reference_paged_cache_equals_the_contiguous_one(page_size):
    rng = np.random.default_rng(0)
    q, kc, vc, k, v = cache_inputs(seqlen_cache=48)
    (kp, table), (vp, _) = paged(kc, page_size, np.random.default_rng(1)), paged(vc, page_size, np.random.default_rng(1))
    lengths = rng.integers(0, 40, size=2)
    want = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lengths, causal=True)
    got = reference.attention_with_kvcache(q, kp, vp, k, v, cache_seqlens=lengths, block_table=table, causal=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    flat = got[2].reshape(-1, *kc.shape[2:])[(table[:, :, None] * page_size + np.arange(page_size)).reshape(2, -1)]
    assert np.array_equal(flat[:, :48], want[2])


def test_reference_cache_batch_idx_reads_the_named_rows():
    q, kc, vc, k, v = cache_inputs()
    idx = np.array([1, 0], np.int32)
    got = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=[3, 9], cache_batch_idx=idx)
    want = reference.attention_with_kvcache(q, kc[idx], vc[idx], k, v, cache_seqlens=[3, 9])
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[2][idx], want[2])


@pytest.mark.parametrize("interleaved", [True, False])
def test_reference_rotary_pairs_and_angles(interleaved):
    x = np.arange(1, 2 * 32 + 1, dtype=np.float32).reshape(2, 1, 32).astype(np.float16)
    cos = np.zeros((4, 8), np.float16)
    sin = np.ones((4, 8), np.float16)
    cos[1], sin[1] = 1, 0  # position 1: no rotation
    y = reference.rotary(x, cos, sin, [0, 1], interleaved)
    assert np.array_equal(y[1], x[1]) and np.array_equal(y[:, :, 16:], x[:, :, 16:])  # columns >= R = 16 kept
    first, second = (slice(0, 16, 2), slice(1, 16, 2)) if interleaved else (slice(0, 8), slice(8, 16))
    # a quarter turn: (x0, x1) -> (-x1, x0)
    assert np.array_equal(y[0, :, first], -x[0, :, second]) and np.array_equal(y[0, :, second], x[0, :, first])


def test_reference_rotates_the_new_keys_and_q_at_their_positions():
    q, kc, vc, k, v = cache_inputs(seqlen_q=4, seqlen_new=4)
    angles = np.outer(np.arange(20), 1.0 / 10000 ** (np.arange(8) / 8))
    cos, sin = np.cos(angles).astype(np.float16), np.sin(angles).astype(np.float16)
    out, _, k_new, _ = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=[5, 11], rotary_cos=cos,
                                                         rotary_sin=sin, causal=True)
    for b, filled in enumerate((5, 11)):
        want = reference.rotary(k[b], cos, sin, filled + np.arange(4))
        assert np.array_equal(k_new[b, filled:filled + 4], want)
        qr = reference.rotary(q[b], cos, sin, filled + np.arange(4))[None]  # causal: query i at filled + i
        keys = np.concatenate([kc[b:b + 1, :filled], want[None]], axis=1)
        values = np.concatenate([vc[b:b + 1, :filled], v[b:b + 1]], axis=1)
        assert np.array_equal(out[b:b + 1], reference.attention_forward(qr, keys, values, causal=True)[0])
    # without a mask every query sits at the row's length
    out, _, _, _ = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=[5, 11], rotary_cos=cos,
                                                    rotary_sin=sin, rotary_interleaved=False)
    qr = reference.rotary(q[1], cos, sin, [11] * 4, False)[None]
    keys = np.concatenate([kc[1:2, :11], reference.rotary(k[1], cos, sin, 11 + np.arange(4), False)[None]], axis=1)
    values = np.concatenate([vc[1:2, :11], v[1:2]], axis=1)
    assert np.array_equal(out[1:2], reference.attention_forward(qr, keys, values)[0])


def test_reference_left_padding_drops_the_first_keys():
    q, kc, vc, k, v = cache_inputs()
    got = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=[9, 12], cache_leftpad=[3, 0], causal=True)
    for b, (filled, pad) in enumerate(((9, 3), (12, 0))):
        keys = np.concatenate([kc[b:b + 1, pad:filled], k[b:b + 1]], axis=1)
        values = np.concatenate([vc[b:b + 1, pad:filled], v[b:b + 1]], axis=1)
        assert np.array_equal(got[0][b:b + 1], reference.attention_forward(q[b:b + 1], keys, values, causal=True)[0])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_splits=-1), ValueError, "num_splits must be an int >= 0"),
    (dict(num_splits=1.5), ValueError, "num_splits"),
    (dict(k="k"), ValueError, "k and v come together"),
    (dict(k="k", v="v"), ValueError, "appending k, v needs cache_seqlens"),
    (dict(rotary_cos="cos"), ValueError, "rotary_cos and rotary_sin come together"),
    (dict(rotary_cos="cos", rotary_sin="cos"), ValueError, "need k and v"),
    (dict(cache_seqlens=3), TypeError, "q is a NumPy array"),
], ids=lambda x: None)
def test_bad_arguments_are_named_before_any_launch(kwargs, error, match):
    q, kc, vc, k, v = cache_inputs()
    kwargs = {name: {"k": k, "v": v, "cos": np.ones((20, 8), np.float16)}.get(value, value)
              if isinstance(value, str) else value for name, value in kwargs.items()}
    with pytest.raises(error, match=match):
        cuflash.attention_with_kvcache(q, kc, vc, **kwargs)


# ---------------------------------------------------------------- the launches, recorded

from cuflash import api, launch  # noqa: E402
from cuflash.launch import Ref  # noqa: E402


def ref(shape, dtype="bfloat16", ptr=1 << 20):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.insert(0, acc)
        acc *= n
    return Ref(ptr, tuple(shape), tuple(strides), dtype, 0)


@pytest.fixture
def recorded(monkeypatch):
    """launch.run replaced by a recorder of (kernel name, grid, fields); a Hopper-class GPU 0."""
    calls = []
    monkeypatch.setattr(launch, "run", lambda spec, device, grid, block, smem, packer, fields, stream, maps=None:
                        calls.append((spec.name, grid, dict(fields))))
    monkeypatch.setattr(api, "_check_device", lambda device: None)
    monkeypatch.setattr(api, "_compute_capability", lambda device: (9, 0))
    monkeypatch.setattr(api, "_device_smem_limit", lambda device: 232448)
    monkeypatch.setattr(launch, "sm_resources", lambda device: (132, 233472))
    return calls


def alloc(shape, dtype):
    return None, ref(tuple(shape), dtype, ptr=0xA000000)


def test_run_kvcache_appends_then_runs_the_varlen_forward_over_the_used_keys(recorded):
    # 32 queries x 4 heads per kv head: more folded rows than the decode kernel takes
    batch, seqlen_q, nheads, nheads_kv, d, seqlen_cache, seqlen_new = 3, 32, 8, 2, 128, 64, 2
    q, out = ref((batch, seqlen_q, nheads, d), ptr=0x1000000), ref((batch, seqlen_q, nheads, d), ptr=0x2000000)
    kc, vc = ref((batch, seqlen_cache, nheads_kv, d), ptr=0x3000000), ref((batch, seqlen_cache, nheads_kv, d),
                                                                         ptr=0x4000000)
    k, v = ref((batch, seqlen_new, nheads_kv, d), ptr=0x5000000), ref((batch, seqlen_new, nheads_kv, d), ptr=0x6000000)
    lengths, used = ref((batch,), "int32", 0x7000000), ref((batch,), "int32", 0x7001000)
    lse = ref((nheads, batch * seqlen_q), "float32", 0x8000000)
    cache = api.check_kvcache(q, kc, vc, k, v)
    assert not api.uses_decode_kernel(q, kc, vc, cache)
    opts = api.kvcache_options(q, None, True, (-1, -1), 0.0, None, None)
    api.run_kvcache(q, kc, vc, k, v, lengths, used, out, lse, opts, cache, 0, alloc, lambda: (0x9000000, 0x9001000),
                    stream=0)
    (append, append_grid, a), (forward, _, f) = recorded
    assert append.startswith("kvcache_append_bf16") and append_grid[1] == batch
    assert (a["k"], a["k_cache"], a["cache_seqlens"], a["seqused"]) == (k.ptr, kc.ptr, lengths.ptr, used.ptr)
    assert (a["seqlen_new"], a["seqlen_cache"], a["nheads_kv"], a["head_dim"]) == (2, 64, 2, 128)
    assert (a["block_table"], a["cache_batch_idx"], a["num_pages"]) == (0, 0, batch)
    assert append_grid[0] * 256 * 8 >= seqlen_new * nheads_kv * d
    assert "varlen" in forward and "causal" in forward
    assert (f["cu_seqlens_q"], f["cu_seqlens_k"], f["seqused_k"]) == (0x9000000, 0x9001000, used.ptr)
    assert (f["total_q"], f["total_k"], f["seqlen_q"], f["batch"]) == (batch * seqlen_q, batch * seqlen_cache,
                                                                        seqlen_q, batch)
    assert (f["q"], f["k"], f["o"], f["lse"]) == (q.ptr, kc.ptr, out.ptr, lse.ptr)
    assert f["q_batch_stride"] == 0 and f["q_row_stride"] == nheads * d and f["k_row_stride"] == nheads_kv * d


def test_decode_reads_the_given_lengths_in_one_part(recorded):
    q, kc = ref((2, 1, 4, 64)), ref((2, 32, 4, 64), ptr=1 << 22)
    lengths = ref((2,), "int32", 1 << 24)
    cache = api.check_kvcache(q, kc, kc, None, None)
    opts = api.kvcache_options(q, None, False, (-1, -1), 0.0, None, None)
    api.run_kvcache(q, kc, kc, None, None, lengths, None, ref((2, 1, 4, 64), ptr=1 << 23), None, opts, cache, 0,
                    alloc, None, 0)
    ((name, grid, f),) = recorded  # short cache: one split, no combine
    assert name.startswith("decode_bf16_d64_full") and "varlen" not in name
    assert grid == (1, 1, 2 * 4) and f["num_splits"] == 1
    assert (f["seqused_k"], f["seqlen_k"], f["lse"], f["block_table"]) == (lengths.ptr, 32, 0, 0)


def test_decode_splits_long_caches_and_merges_the_parts(recorded):
    # one batch row, 8 kv heads, 128k keys: far fewer CTAs than SMs without splitting
    q, kc = ref((1, 1, 32, 128)), ref((1, 131072, 8, 128), ptr=1 << 30)
    lengths, out = ref((1,), "int32", 1 << 24), ref((1, 1, 32, 128), ptr=1 << 23)
    lse = ref((32, 1), "float32", 1 << 25)
    cache = api.check_kvcache(q, kc, kc, None, None)
    sink = ref((32,), "float32", 1 << 26)
    opts = api.kvcache_options(q, None, True, (-1, -1), 0.0, None, sink)
    api.run_kvcache(q, kc, kc, None, None, lengths, None, out, lse, opts, cache, 0, alloc, None, 0)
    ((name, grid, f),) = recorded  # the splits merge in the decode kernel: no second launch
    splits = grid[0]
    assert 8 * splits >= 0.9 * 132 and grid[1:] == (1, 8) and f["num_splits"] == splits
    assert name.startswith("decode_bf16_d128_causal_sink")
    assert f["o_part"] and f["lse_part"] and f["split_flags"] and (f["sink"], f["lse"], f["o"]) == (sink.ptr, lse.ptr,
                                                                                                  out.ptr)
    # the flags (a uint64 per split and row block) follow the parts in the scratch, 8-byte aligned
    assert f["split_flags"] % 8 == 0 and f["split_flags"] >= f["lse_part"] + 4 * splits * 32
    epoch = f["epoch"]
    api.run_kvcache(q, kc, kc, None, None, lengths, None, out, lse, opts, cache, 3, alloc, None, 0)
    assert recorded[1][1][0] == 3 and recorded[1][2]["num_splits"] == 3  # num_splits given: taken as is
    assert 0 < epoch < 2**62 and recorded[1][2]["epoch"] == epoch + 1  # a new epoch per call


@pytest.mark.parametrize("batch, keys, want", [(64, 8192, 1), (8, 32768, 2), (1, 131072, 16), (1, 256, 1)])
def test_split_counts_fill_the_gpu(batch, keys, want):
    # GQA 32 / 8, d128, one query: batch * 8 CTAs per split. H200: 132 SMs, one 12-warp CTA each
    spec = api.support.decode_spec("bf16", 128, api.PLAIN, (9, 0), 232448)
    assert spec.tiles.warps == 12
    assert launch.decode_splits(spec, batch, 32, 8, 1, keys, 132, 233472) == want
    # A100 (108 SMs, one 4-warp CTA of 100 KB each) and a 99 KB GPU (84 SMs, two-stage tiles): even
    # splits that fill 90% of the CTA slots, where the cache is long enough to split
    for cc, limit, sms, per_sm_smem, stages, slots_per_sm in (((8, 0), 166912, 108, 167936, 3, 1),
                                                              ((8, 6), 101376, 84, 102400, 2, 1)):
        other = api.support.decode_spec("bf16", 128, api.PLAIN, cc, limit)
        assert (other.tiles.warps, other.tiles.stages) == (4, stages)
        splits = launch.decode_splits(other, batch, 32, 8, 1, keys, sms, per_sm_smem)
        slots, n = sms * slots_per_sm, batch * 8 * splits
        assert (keys // 16) % splits == 0
        assert n / (-(-n // slots) * slots) >= 0.9 or keys < 4 * 4 * 16 * 2


def test_many_rows_take_two_ctas_per_sm(recorded):
    # 64 x 2k, GQA 32/8: 512 CTAs per split on 132 SMs take the 4-warp tile (two per SM); 8 batch rows
    # (64 CTAs) keep the 12-warp one
    for batch, want in ((64, "n16w4s3"), (33, "n16w4s3"), (16, "n16w12s2")):
        recorded.clear()
        q, kc = ref((batch, 1, 32, 128)), ref((batch, 2048, 8, 128), ptr=1 << 30)
        cache = api.check_kvcache(q, kc, kc, None, None)
        opts = api.kvcache_options(q, None, False, (-1, -1), 0.0, None, None)
        api.run_kvcache(q, kc, kc, None, None, ref((batch,), "int32", 1 << 24), None, ref((batch, 1, 32, 128)),
                        None, opts, cache, 0, alloc, None, 0)
        ((name, grid, _),) = recorded
        assert name.endswith(want) and grid == (1, 1, batch * 8), (batch, name, grid)
    assert api.support.decode_spec("bf16", 256, api.PLAIN, (9, 0), 232448, True).tiles.warps == 4  # d > 128: as before
    # pages of fewer than 16 keys keep the 12 warps (their block-table reads), pages of 16 take the 4
    for page, want in ((1, "n16w12s2"), (8, "n16w12s2"), (16, "n16w4s3")):
        recorded.clear()
        q, kp = ref((64, 1, 32, 128)), ref((64 * 2048 // page, page, 8, 128), ptr=1 << 30)
        table = ref((64, 2048 // page), "int32", 1 << 26)
        cache = api.check_kvcache(q, kp, kp, None, None, table)
        opts = api.kvcache_options(q, None, False, (-1, -1), 0.0, None, None)
        api.run_kvcache(q, kp, kp, None, None, ref((64,), "int32", 1 << 24), None, ref((64, 1, 32, 128)), None, opts,
                        cache, 0, alloc, None, 0)
        assert recorded[0][0].endswith(want), (page, recorded[0][0])


def test_paged_caches_pass_their_block_table_and_page_size(recorded):
    q, kp = ref((2, 40, 8, 64)), ref((7, 5, 2, 64), ptr=1 << 22)  # 7 pages of 5 keys
    table = ref((2, 3), "int32", 1 << 24)
    cache = api.check_kvcache(q, kp, kp, None, None, table)
    assert cache.seqlen == 15 and api.uses_decode_kernel(q, kp, kp, cache)  # paged: decode at any length
    opts = api.kvcache_options(q, None, False, (-1, -1), 0.0, None, None)
    api.run_kvcache(q, kp, kp, None, None, ref((2,), "int32", 1 << 25), None, ref((2, 40, 8, 64)), None, opts, cache,
                    1, alloc, None, 0)
    ((_, grid, f),) = recorded
    assert (f["block_table"], f["block_table_batch_stride"], f["page_size"], f["num_pages"]) == (table.ptr, 3, 5, 7)
    assert grid == (1, -(-40 * 4 // 16), 2 * 2)


def test_rotary_rides_on_the_append_and_the_attention_reads_the_rotated_q(recorded):
    q, kc, k = ref((2, 3, 8, 128)), ref((2, 64, 2, 128), ptr=1 << 22), ref((2, 3, 2, 128), ptr=1 << 23)
    cos, sin = ref((64, 32), ptr=1 << 24), ref((64, 32), ptr=1 << 25)
    pad = ref((2,), "int32", 1 << 26)
    cache = api.check_kvcache(q, kc, kc, k, k, None, None, pad, cos, sin)
    assert api.uses_decode_kernel(q, kc, kc, cache)  # left padding: decode kernel
    opts = api.kvcache_options(q, None, True, (-1, -1), 0.0, None, None)
    lengths, used = ref((2,), "int32", 1 << 27), ref((2,), "int32", 1 << 28)
    api.run_kvcache(q, kc, kc, k, k, lengths, used, ref((2, 3, 8, 128)), None, opts, cache, 1, alloc, None, 0,
                    (cos, sin, False))
    (append, grid, a), (decode, _, f) = recorded
    assert (a["rotary_cos"], a["rotary_sin"], a["rotary_dim"], a["seqlen_ro"]) == (cos.ptr, sin.ptr, 64, 64)
    assert (a["rotary_interleaved"], a["q_positions_step"], a["q"], a["nheads"]) == (0, 1, q.ptr, 8)
    assert a["q_rot"] == f["q"] != q.ptr and a["cache_leftpad"] == f["cache_leftpad"] == pad.ptr
    assert grid[0] * 256 * 8 >= (3 * 2 + 3 * 8) * 128  # the keys' chunks, then q's


def test_caches_whose_batches_are_not_consecutive_take_the_decode_kernel(recorded):
    q = ref((2, 64, 4, 64))
    kc = Ref(1 << 20, (2, 32, 4, 64), (2 * 32 * 256, 256, 64, 1), "bfloat16", 0)
    cache = api.check_kvcache(q, kc, ref((2, 32, 4, 64)), None, None)
    assert api.uses_decode_kernel(q, kc, ref((2, 32, 4, 64)), cache)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_table=ref((2, 3), "int64")), "block_table must be an int32 array"),
    (dict(block_table=ref((3, 3), "int32")), r"block_table must be an int32 array \(batch, max_pages\) = \(2"),
    (dict(block_table=ref((2, 3), "int32"), cache_batch_idx=ref((2,), "int32")), "exclude each other"),
    (dict(cache_batch_idx=ref((3,), "int32")), "cache_batch_idx must be a contiguous int32 array of shape"),
    (dict(block_table=ref((2, 3), "int32"), k_cache=ref((7, 0, 2, 64))), "page size"),
    (dict(v_cache=ref((7, 5, 2, 64))), "v_cache must have the shape of k_cache"),
    (dict(cache_leftpad=ref((2,), "int64")), "cache_leftpad must be a contiguous int32 array of shape"),
    (dict(rotary_cos=ref((7, 8)), rotary_sin=ref((7, 8))), r"seqlen_ro >= 8"),
    (dict(rotary_cos=ref((8, 4)), rotary_sin=ref((8, 4))), "multiple of 16"),
    (dict(rotary_cos=ref((8, 40)), rotary_sin=ref((8, 40))), "multiple of 16 in"),
    (dict(rotary_cos=ref((8, 8), "float16"), rotary_sin=ref((8, 8), "float16")), "rotary_cos must be a 2-D array"),
    (dict(rotary_cos=ref((8, 8)), rotary_sin=ref((9, 8))), "one shape"),
], ids=lambda x: None)
def test_bad_cache_layouts_are_named(kwargs, match, recorded):
    q = ref((2, 1, 4, 64))
    args = {"k_cache": ref((2, 8, 2, 64)), "v_cache": ref((2, 8, 2, 64)), **kwargs}
    kc, vc = args.pop("k_cache"), args.pop("v_cache")
    if "block_table" in args and "v_cache" not in kwargs and kc.shape[0] == 2:
        kc = vc = ref((7, 5, 2, 64))
    if "k_cache" in kwargs:
        vc = kc
    with pytest.raises(ValueError, match=match):
        api.check_kvcache(q, kc, vc, None, None, args.get("block_table"), args.get("cache_batch_idx"),
                          args.get("cache_leftpad"), args.get("rotary_cos"), args.get("rotary_sin"))


def test_out_of_range_indices_are_refused_on_the_host():
    tbl = np.array([[0, 6], [2, 7]], np.int32)
    with pytest.raises(ValueError, match=r"block_table entries must be in \[0, 7\).*\[0, 7\]"):
        api.check_cache_indices(np, tbl, None, 7)
    with pytest.raises(ValueError, match="cache_batch_idx entries"):
        api.check_cache_indices(np, None, np.array([-1, 0], np.int32), 2)
    api.check_cache_indices(np, tbl.clip(0, 6), np.array([1, 0], np.int32), 7)
    with pytest.raises(ValueError, match=r"cache_leftpad entries must be in \[0, 9\)"):
        api.check_cache_indices(np, None, None, 2, np.array([0, 9], np.int32), 8)


def test_a_float32_cache_is_refused_naming_k_cache():
    q, kc = ref((2, 1, 4, 64), "float32"), ref((2, 32, 4, 64), "float32", ptr=1 << 22)
    with pytest.raises(TypeError, match="k_cache has dtype float32.*float16 or bfloat16.*cuflash.attention"):
        api.check_kvcache(q, kc, kc, None, None)
