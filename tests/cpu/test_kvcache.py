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


@pytest.mark.parametrize("option", ["rotary_cos", "rotary_sin", "cache_batch_idx", "cache_leftpad", "block_table"])
def test_options_without_a_kernel_are_named(option):
    q, kc, vc, _, _ = cache_inputs()
    with pytest.raises(NotImplementedError, match=option):
        cuflash.attention_with_kvcache(q, kc, vc, **{option: np.zeros(2, np.int32)})


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_splits=-1), ValueError, "num_splits must be an int >= 0"),
    (dict(num_splits=1.5), ValueError, "num_splits"),
    (dict(k="k"), ValueError, "k and v come together"),
    (dict(k="k", v="v"), ValueError, "appending k, v needs cache_seqlens"),
    (dict(cache_seqlens=3), TypeError, "q is a NumPy array"),
], ids=lambda x: None)
def test_bad_arguments_are_named_before_any_launch(kwargs, error, match):
    q, kc, vc, k, v = cache_inputs()
    kwargs = {name: {"k": k, "v": v}.get(value, value) if isinstance(value, str) else value
              for name, value in kwargs.items()}
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
    monkeypatch.setattr(launch, "run", lambda spec, device, grid, block, smem, packer, fields, stream:
                        calls.append((spec.name, grid, dict(fields))))
    monkeypatch.setattr(api, "_check_device", lambda device: None)
    monkeypatch.setattr(api, "_compute_capability", lambda device: (9, 0))
    monkeypatch.setattr(api, "_device_smem_limit", lambda device: 232448)
    return calls


def test_run_kvcache_appends_then_runs_the_varlen_forward_over_the_used_keys(recorded):
    batch, seqlen_q, nheads, nheads_kv, d, seqlen_cache, seqlen_new = 3, 2, 8, 2, 128, 64, 2
    q, out = ref((batch, seqlen_q, nheads, d), ptr=0x1000000), ref((batch, seqlen_q, nheads, d), ptr=0x2000000)
    kc, vc = ref((batch, seqlen_cache, nheads_kv, d), ptr=0x3000000), ref((batch, seqlen_cache, nheads_kv, d),
                                                                         ptr=0x4000000)
    k, v = ref((batch, seqlen_new, nheads_kv, d), ptr=0x5000000), ref((batch, seqlen_new, nheads_kv, d), ptr=0x6000000)
    lengths, used = ref((batch,), "int32", 0x7000000), ref((batch,), "int32", 0x7001000)
    lse = ref((nheads, batch * seqlen_q), "float32", 0x8000000)
    api.check_kvcache(q, kc, vc, k, v)
    opts = api.kvcache_options(q, None, True, (-1, -1), 0.0, None, None)
    api.run_kvcache(q, kc, vc, k, v, lengths, used, out, lse, opts, (0x9000000, 0x9001000), stream=0)
    (append, append_grid, a), (forward, _, f) = recorded
    assert append.startswith("kvcache_append_bf16") and append_grid[1] == batch
    assert (a["k"], a["k_cache"], a["cache_seqlens"], a["seqused"]) == (k.ptr, kc.ptr, lengths.ptr, used.ptr)
    assert (a["seqlen_new"], a["seqlen_cache"], a["nheads_kv"], a["head_dim"]) == (2, 64, 2, 128)
    assert append_grid[0] * 256 * 8 >= seqlen_new * nheads_kv * d
    assert "varlen" in forward and "causal" in forward
    assert (f["cu_seqlens_q"], f["cu_seqlens_k"], f["seqused_k"]) == (0x9000000, 0x9001000, used.ptr)
    assert (f["total_q"], f["total_k"], f["seqlen_q"], f["batch"]) == (batch * seqlen_q, batch * seqlen_cache,
                                                                        seqlen_q, batch)
    assert (f["q"], f["k"], f["o"], f["lse"]) == (q.ptr, kc.ptr, out.ptr, lse.ptr)
    assert f["q_batch_stride"] == 0 and f["q_row_stride"] == nheads * d and f["k_row_stride"] == nheads_kv * d


def test_run_kvcache_without_append_reads_the_given_lengths(recorded):
    q, kc = ref((2, 1, 4, 64)), ref((2, 32, 4, 64), ptr=1 << 22)
    lengths = ref((2,), "int32", 1 << 24)
    opts = api.kvcache_options(q, None, False, (-1, -1), 0.0, None, None)
    api.run_kvcache(q, kc, kc, None, None, lengths, None, ref((2, 1, 4, 64), ptr=1 << 23), None, opts, (16, 32), 0)
    ((name, _, f),) = recorded
    assert name.startswith("fwd") and f["seqused_k"] == lengths.ptr and f["lse"] == 0


def test_caches_whose_batches_are_not_consecutive_are_refused(recorded):
    q = ref((2, 1, 4, 64))
    kc = Ref(1 << 20, (2, 32, 4, 64), (2 * 32 * 256, 256, 64, 1), "bfloat16", 0)
    with pytest.raises(ValueError, match="k_cache must have batch stride"):
        api.check_kvcache(q, kc, ref((2, 32, 4, 64)), None, None)
