"""Small Hopper forwards on persistent grids with several tiles per CTA, for compute-sanitizer memcheck and
racecheck of the lean tile bookkeeping (kernels_cu/dev/fwd90_lean_tile_bookkeeping.patch, bench/NOTES.md v41):
plain, causal (paired), a window, a bias, dropout, varlen; d64 (two and three consumer warpgroups), d128, d256,
d96 (the old staging); TMA loads and stores, then cuflash's own choice."""
import cupy as cp
import numpy as np

import cuflash
from cuflash import testing, tma

for min_flop in (0, None):
    if min_flop is not None:
        tma.MIN_FLOP = min_flop
    for d, sq in ((64, 300), (64, 2500), (128, 300), (256, 300), (96, 300)):
        q, k, v = testing.random_qkv(2, sq, sq, 37, 37, d, "bf16", xp=cp, seed=1)
        cuflash.attention(q, k, v)
        cuflash.attention(q, k, v, causal=True)
        cuflash.attention(q, k, v, window_size=(100, 0))
        q2, k2, v2 = testing.random_qkv(1, 200, 330, 4, 2, d, "bf16", xp=cp, seed=2)
        bias = testing.random_like(cp.empty((1, 4, 200, 330), cp.uint16).view(q.dtype))
        cuflash.attention(q2, k2, v2, causal=True, bias=bias)
        cuflash.attention(q2, k2, v2, causal=True, dropout_p=0.1, seed=3)
        cu = cp.asarray([0, 0, 1, 66, 166, 169], dtype=cp.int32)
        qv, kv, vv = (x[0] for x in testing.random_qkv(1, 169, 169, 4, 2, d, "bf16", xp=cp, seed=2))
        cuflash.attention_varlen(qv, kv, vv, cu, cu, 100, 100, causal=True)
cp.cuda.Device().synchronize()
print("done")
