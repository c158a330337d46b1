"""The portable kernels' tiles for GPUs with less shared memory per block than the H200
(A100: 163 KB; RTX 3090/4090/5090-class: 99 KB; issue 15), run on the H200 through
CUFLASH_SMEM_LIMIT with the Hopper kernels off: each selected kernel fits the limit and meets
the accuracy rule, forward and backward (deterministic too)."""
from __future__ import annotations

import pytest

import cuflash
from cuflash import api, reference, support, testing

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

LIMITS = {"a100": 166912, "rtx": 101376}
HEAD_DIMS = [32, 64, 96, 128, 160, 192, 224, 256]


@pytest.fixture(params=list(LIMITS))
def smem_limit(request, monkeypatch):
    monkeypatch.setenv("CUFLASH_SMEM_LIMIT", str(LIMITS[request.param]))
    monkeypatch.setenv("CUFLASH_DISABLE_SM90", "1")
    return LIMITS[request.param]


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_tiles_that_fit_run_correctly(smem_limit, head_dim, deterministic):
    q, k, v = testing.random_qkv(2, 113, 203, 4, 2, head_dim, "bf16", xp=cp)
    device = cp.cuda.Device().id
    fwd = api.fwd_spec("bf16", head_dim, support.CAUSAL, device)
    assert support.smem_bytes(fwd) <= smem_limit
    out, lse = cuflash.attention(q, k, v, causal=True, return_lse=True)
    host = [testing.to_numpy(x) for x in (q, k, v)]
    r64 = reference.attention_forward(*host, causal=True, precision="float64")
    rlp = reference.attention_forward(*host, causal=True, precision="lowp")
    testing.check_accuracy("out", out, r64[0], rlp[0], "bf16", "fwd")
    if smem_limit < 166912 and head_dim > 160:  # no portable backward tile fits 99 KB
        with pytest.raises(ValueError, match="no tiles for head dim"):
            cuflash.attention_backward(testing.random_like(q), q, k, v, out, lse, causal=True)
        return
    bwd = api.bwd_spec("bf16", head_dim, support.CAUSAL, deterministic, device)
    assert support.smem_bytes(bwd) <= smem_limit
    dout = testing.random_like(q)
    grads = cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=deterministic)
    b64 = reference.attention_backward(*(testing.to_numpy(x) for x in (dout, q, k, v)), causal=True,
                                       precision="float64")
    blp = reference.attention_backward(*(testing.to_numpy(x) for x in (dout, q, k, v)), causal=True,
                                       precision="lowp")
    for name, got, x64, xlp in zip(("dq", "dk", "dv"), grads, b64[:3], blp[:3]):
        testing.check_accuracy(name, got, x64, xlp, "bf16", "bwd")
