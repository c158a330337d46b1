"""merge_attention_states (DESIGN 3) on NumPy arrays: the exact merge of attention over disjoint
key sets equals attention over their union; parts that saw no key are ignored; no NaN."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference


def parts(q, k, v, splits, **options):
    outs, lses = [], []
    for keys in splits:
        out, lse = reference.attention_forward(q, k[:, keys], v[:, keys], **options)
        outs.append(out.astype(np.float32))
        lses.append(lse.astype(np.float32))
    return np.stack(outs), np.stack(lses)


@pytest.mark.parametrize("splits", [[slice(0, 40), slice(40, 97)], [slice(0, 1), slice(1, 50), slice(50, 97)]])
def test_merged_parts_equal_attention_over_the_union(splits):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 13, 4, 32)), rng.standard_normal((2, 97, 2, 32)), rng.standard_normal((2, 97, 2, 32))
    outs, lses = parts(q, k, v, splits, alibi_slopes=None)
    out, lse = cuflash.merge_attention_states(outs, lses)
    want, want_lse = reference.attention_forward(q, k, v)
    assert out.dtype == np.float32 and lse.dtype == np.float32 and lse.shape == (2, 4, 13)
    assert np.allclose(out, want, atol=1e-5) and np.allclose(lse, want_lse, atol=1e-5)


def test_cascade_of_a_shared_prefix_and_per_request_suffixes():
    """Cascade inference: one prefix for every request, merged with each request's own suffix."""
    rng = np.random.default_rng(1)
    prefix_k, prefix_v = rng.standard_normal((2, 1, 64, 2, 16))
    q = rng.standard_normal((3, 1, 4, 16))
    suffix_k, suffix_v = rng.standard_normal((2, 3, 20, 2, 16))
    pre_out, pre_lse = reference.attention_forward(q, np.repeat(prefix_k, 3, 0), np.repeat(prefix_v, 3, 0))
    suf_out, suf_lse = reference.attention_forward(q, suffix_k, suffix_v)
    out, lse = cuflash.merge_attention_states(np.stack([pre_out, suf_out]).astype(np.float32),
                                              np.stack([pre_lse, suf_lse]).astype(np.float32))
    full_k = np.concatenate([np.repeat(prefix_k, 3, 0), suffix_k], axis=1)
    full_v = np.concatenate([np.repeat(prefix_v, 3, 0), suffix_v], axis=1)
    want, want_lse = reference.attention_forward(q, full_k, full_v)
    assert np.allclose(out, want, atol=1e-5) and np.allclose(lse, want_lse, atol=1e-5)


def test_parts_that_saw_nothing_are_ignored_and_nothing_is_nan():
    rng = np.random.default_rng(2)
    outs = rng.standard_normal((3, 1, 5, 2, 8)).astype(np.float32)
    lses = rng.standard_normal((3, 1, 2, 5)).astype(np.float32)
    lses[1] = -np.inf            # part 1 saw no key anywhere
    outs[1] = 0.0
    lses[:, 0, 0, 3] = -np.inf   # row 3 of head 0: no part saw a key
    outs[:, 0, 3, 0] = 0.0
    out, lse = cuflash.merge_attention_states(outs, lses)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert lse[0, 0, 3] == -np.inf and (out[0, 3, 0] == 0).all()
    both, both_lse = cuflash.merge_attention_states(outs[[0, 2]], lses[[0, 2]])
    mask = np.isfinite(lse)
    assert np.allclose(out, both) and np.allclose(lse[mask], both_lse[mask])


def test_varlen_layout():
    rng = np.random.default_rng(3)
    outs = rng.standard_normal((2, 11, 3, 8)).astype(np.float32)
    lses = rng.standard_normal((2, 3, 11)).astype(np.float32)
    out, lse = cuflash.merge_attention_states(outs, lses)
    dense, dense_lse = cuflash.merge_attention_states(outs[:, None], lses[:, :, :, None].transpose(0, 3, 1, 2))
    assert np.allclose(out, dense[0]) and np.allclose(lse, dense_lse[0])


@pytest.mark.parametrize("outs, lses, exc, match", [
    (np.zeros((2, 1, 4, 2, 8), np.float32), np.zeros((2, 1, 4, 2), np.float32), ValueError, "lses must have shape"),
    (np.zeros((2, 1, 4, 2, 8), np.float32), np.zeros((2, 1, 2, 4), np.float64), TypeError, "lses must be float32"),
    (np.zeros((2, 8), np.float32), np.zeros((2,), np.float32), ValueError, "outs must be"),
    ([[1.0]], np.zeros((1,), np.float32), TypeError, "outs must be a CuPy or NumPy array"),
])
def test_bad_input_names_the_argument(outs, lses, exc, match):
    with pytest.raises(exc, match=match):
        cuflash.merge_attention_states(outs, lses)
