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
