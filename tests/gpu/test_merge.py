"""merge_attention_states on the GPU (CuPy): merging cuflash's attention over disjoint key sets
gives the float64 merge of the same parts to the output dtype's rounding (the exact-merge property
itself, parts over a union = attention over it, is tests/cpu/test_merge.py's, in float64)."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import testing

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("cuts", [[300], [1, 64, 500]])
def test_gpu_merge_equals_the_float64_merge_of_the_same_parts(dtype, cuts):
    q, k, v = testing.random_qkv(2, 33, 777, 8, 2, 128, dtype, xp=cp)
    edges = [0, *cuts, k.shape[1]]
    results = [cuflash.attention(q, k[:, a:b], v[:, a:b], return_lse=True, causal=True)
               for a, b in zip(edges, edges[1:])]
    outs, lses = cp.stack([o for o, _ in results]), cp.stack([s for _, s in results])
    out, lse = cuflash.merge_attention_states(outs, lses)
    assert out.dtype == q.dtype and lse.dtype == np.float32 and out.shape == q.shape
    o64, l64 = testing.to_float64(outs), testing.to_float64(lses)
    top = np.max(l64, axis=0)
    safe = np.where(np.isneginf(top), 0.0, top)
    w = np.exp(l64 - safe)                                       # (n, b, h, s)
    total = w.sum(axis=0)
    want_lse = np.where(total > 0, safe + np.log(np.where(total > 0, total, 1)), -np.inf)
    want = (np.swapaxes(w, -1, -2)[..., None] * o64).sum(axis=0) / np.where(total > 0, total, 1).swapaxes(-1, -2)[..., None]
    assert np.array_equal(np.isneginf(testing.to_float64(lse)), np.isneginf(want_lse))  # causal: rows that see nothing
    finite = np.isfinite(want_lse)
    assert np.allclose(testing.to_float64(lse)[finite], want_lse[finite], atol=1e-5)
    eps = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}[dtype]  # one rounding to the output dtype
    assert np.abs(testing.to_float64(out) - want).max() <= eps * max(1.0, np.abs(want).max())
