"""Launch plans on the GPU (DESIGN 4c): the replay of a repeated call gives bitwise what the
validated path gives, on the caller's stream, with fresh outputs each call."""
from __future__ import annotations

import pytest

import cuflash
from cuflash import api, testing

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernel_path")]


@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(40, 8), softcap=20.0)])
def test_replayed_calls_equal_validated_ones(options, monkeypatch):
    q, k, v = testing.random_qkv(2, 77, 130, 8, 2, 64, "bf16", xp=cp)
    dout = cp.asarray(testing.random_like(q))
    api._PLANS.clear()
    out, lse = cuflash.attention(q, k, v, return_lse=True, **options)  # validated, then recorded
    grads = cuflash.attention_backward(dout, q, k, v, out, lse, deterministic=True, **options)
    assert len(api._PLANS) == 2
    replays = []
    record = api.recorded_plan

    def counting(key):
        found = record(key)
        replays.append(found is not None)
        return found

    monkeypatch.setattr(api, "recorded_plan", counting)
    for _ in range(2):
        out2, lse2 = cuflash.attention(q, k, v, return_lse=True, **options)
        grads2 = cuflash.attention_backward(dout, q, k, v, out2, lse2, deterministic=True, **options)
        assert out2.data.ptr != out.data.ptr  # a fresh output each call
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), (out2, lse2, *grads2)):
            assert cp.array_equal(a, b), name
    assert replays == [True] * 4


def test_a_replay_runs_on_the_current_stream():
    q, k, v = testing.random_qkv(1, 64, 64, 4, 4, 64, "fp16", xp=cp)
    want = cuflash.attention(q, k, v, causal=True)
    cuflash.attention(q, k, v, causal=True)  # the plan exists
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        big = cp.random.standard_normal((4096, 4096), dtype=cp.float32)
        for _ in range(8):
            big = big @ big * 1e-3  # work queued before the call on the same stream
        qs = q.copy()
        got = cuflash.attention(qs, k, v, causal=True)
        qs[...] = 0  # queued after: must not reach the call's reads
    stream.synchronize()
    assert cp.array_equal(got, want)


def test_replayed_kvcache_calls_equal_validated_ones(monkeypatch):
    """A paged decode step with an append and rotary, repeated: the same out, lse and caches."""
    batch, page, pages = 3, 16, 12
    q, _, _ = testing.random_qkv(batch, 1, 1, 8, 2, 128, "fp16", xp=cp)
    k_cache = cp.asarray(testing.random_like(cp.empty((pages, page, 2, 128), cp.float16)))
    v_cache = cp.asarray(testing.random_like(k_cache))
    k, v = (cp.asarray(testing.random_like(cp.empty((batch, 1, 2, 128), cp.float16))) for _ in range(2))
    block_table = cp.asarray(cp.random.permutation(pages)[:batch * 4].reshape(batch, 4), dtype=cp.int32)
    lengths = cp.asarray([5, 40, 63], dtype=cp.int32)
    angles = cp.arange(64 * 32, dtype=cp.float32).reshape(64, 32) * 1e-3
    cos, sin = cp.cos(angles).astype(cp.float16), cp.sin(angles).astype(cp.float16)
    api._PLANS.clear()

    def step():
        return cuflash.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths,
                                              block_table=block_table, rotary_cos=cos, rotary_sin=sin, causal=True,
                                              return_lse=True, check_indices=False)

    out, lse = step()
    caches = k_cache.copy(), v_cache.copy()
    assert len(api._PLANS) == 1
    out2, lse2 = step()  # replayed: appends the same keys at the same places again
    assert cp.array_equal(out, out2) and cp.array_equal(lse, lse2)
    assert cp.array_equal(k_cache, caches[0]) and cp.array_equal(v_cache, caches[1])
