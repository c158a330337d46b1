"""Small forwards whose tiles end with idle consumer warpgroups (fwd_sm90_ws.cu idle_step, kernels_cu/dev/fwd90_idle_walk.patch), for
compute-sanitizer memcheck and racecheck: dense (TMA and cp.async), varlen, a 16-bit bias, dropout."""
import cupy as cp

import cuflash
from cuflash import testing, tma

for min_flop in (0, None):  # TMA loads forced, then cuflash's own choice (cp.async at these sizes)
    if min_flop is not None:
        tma.MIN_FLOP = min_flop
    for d in (64, 128):
        q, k, v = testing.random_qkv(2, 100, 77, 4, 2, d, "bf16", xp=cp, seed=1)
        cuflash.attention(q, k, v)
        cuflash.attention(q, k, v, causal=True, window_size=(30, 0))
        bias = testing.random_like(cp.empty((2, 4, 100, 77), cp.uint16).view(q.dtype))
        cuflash.attention(q, k, v, causal=True, bias=bias)
        cuflash.attention(q, k, v, dropout_p=0.1, seed=3)
        lens = [0, 1, 65, 100, 3]
        cu = cp.asarray([0, 0, 1, 66, 166, 169], dtype=cp.int32)
        qv, kv, vv = (x[0] for x in testing.random_qkv(1, 169, 169, 4, 2, d, "bf16", xp=cp, seed=2))
        cuflash.attention_varlen(qv, kv, vv, cu, cu, 100, 100, causal=True)
cp.cuda.Device().synchronize()
print("done")
