"""Small calls of the four Hopper kernels that kernels_cu/dev/sm90_uniform_warpgroup.patch changes, for
compute-sanitizer memcheck and racecheck: backwards at d64 / d128 (bwd_sm90_ws.cu) and d256 (bwd_sm90.cu),
dense, causal, a window, GQA, deterministic, varlen with sequences of 0, 1 and 65 rows; forwards with a
float32 bias (fwd_sm90.cu). The warp-specialised forward has idle_sanitize.py."""
import cupy as cp

import cuflash
from cuflash import testing

for d in (64, 128, 256):
    q, k, v = testing.random_qkv(2, 100, 77, 4, 2, d, "bf16", xp=cp, seed=1)
    for kw in ({}, {"causal": True}, {"causal": True, "window_size": (30, 0)}, {"deterministic": True}):
        fwd = {key: val for key, val in kw.items() if key != "deterministic"}
        out, lse = cuflash.attention(q, k, v, return_lse=True, **fwd)
        cuflash.attention_backward(testing.random_like(out), q, k, v, out, lse, **kw)
    bias = testing.random_like(cp.empty((2, 4, 100, 77), cp.float32))
    cuflash.attention(q, k, v, bias=bias)
    cuflash.attention(q, k, v, causal=True, bias=bias)
    cu = cp.asarray([0, 0, 1, 66, 166, 169], dtype=cp.int32)
    qv, kv, vv = (x[0] for x in testing.random_qkv(1, 169, 169, 4, 2, d, "bf16", xp=cp, seed=2))
    for causal in (False, True):
        out, lse = cuflash.attention_varlen(qv, kv, vv, cu, cu, 100, 100, causal=causal, return_lse=True)
        cuflash.attention_varlen_backward(testing.random_like(out), qv, kv, vv, out, lse, cu, cu, 100, 100,
                                          causal=causal)
cp.cuda.runtime.deviceSynchronize()
print("done")
