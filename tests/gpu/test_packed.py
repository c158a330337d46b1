"""Packed inputs (DESIGN 3): attention_qkvpacked / attention_kvpacked read strided views of one
array and give the same bits as the unpacked call; their backward returns the packed gradient,
written in place into one allocation."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import testing

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


def stacked(*arrays):
    return cp.ascontiguousarray(cp.stack(arrays, axis=2))


@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(16, 4), softcap=10.0)])
def test_qkvpacked_equals_unpacked(opts):
    q, k, v = testing.random_qkv(2, 97, 97, 4, 4, 64, "bf16", xp=cp)
    qkv = stacked(q, k, v)
    out, lse = cuflash.attention_qkvpacked(qkv, return_lse=True, **opts)
    ref, ref_lse = cuflash.attention(q, k, v, return_lse=True, **opts)
    assert cp.array_equal(out.view(cp.uint16), ref.view(cp.uint16)) and cp.array_equal(lse, ref_lse)
    dout = testing.random_like(out)
    dqkv = testing.poison(cp.empty_like(qkv))
    got = cuflash.attention_qkvpacked_backward(dout, qkv, out, lse, dqkv=dqkv, deterministic=True, **opts)
    assert got is dqkv
    want = cuflash.attention_backward(dout, q, k, v, ref, ref_lse, deterministic=True, **opts)
    for i, w in enumerate(want):
        assert cp.array_equal(dqkv[:, :, i].view(cp.uint16), w.view(cp.uint16)), i


def test_kvpacked_equals_unpacked_with_gqa_and_sink():
    q, k, v = testing.random_qkv(2, 50, 130, 8, 2, 128, "fp16", xp=cp)
    kv = stacked(k, v)
    sink = cp.asarray(np.linspace(-1, 3, 8, dtype=np.float32))
    out, lse = cuflash.attention_kvpacked(q, kv, causal=True, learnable_sink=sink, return_lse=True)
    ref, ref_lse = cuflash.attention(q, k, v, causal=True, learnable_sink=sink, return_lse=True)
    assert cp.array_equal(out.view(cp.uint16), ref.view(cp.uint16))
    dout = testing.random_like(out)
    dq, dkv, dsink = cuflash.attention_kvpacked_backward(dout, q, kv, out, lse, causal=True, learnable_sink=sink,
                                                         deterministic=True)
    wq, wk, wv, wsink = cuflash.attention_backward(dout, q, k, v, ref, ref_lse, causal=True, learnable_sink=sink,
                                                   deterministic=True)
    assert dkv.shape == kv.shape
    for got, want in ((dq, wq), (dkv[:, :, 0], wk), (dkv[:, :, 1], wv)):
        assert cp.array_equal(got.view(cp.uint16), want.view(cp.uint16))
    assert cp.array_equal(dsink, wsink)


@pytest.mark.parametrize("call, match", [
    (lambda x: cuflash.attention_qkvpacked(x[:, :, :2]), r"qkv must have shape \(batch, seqlen, 3"),
    (lambda x: cuflash.attention_kvpacked(x[:, :, 0], x), r"kv must have shape \(batch, seqlen_k, 2"),
    (lambda x: cuflash.attention_qkvpacked(x[..., 0]), "qkv must have shape"),
])
def test_packed_shapes_are_checked(call, match):
    q, k, v = testing.random_qkv(1, 16, 16, 2, 2, 64, "bf16", xp=cp)
    with pytest.raises(ValueError, match=match):
        call(stacked(q, k, v))
