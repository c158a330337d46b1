# compute-sanitizer case for the per-key bias kernel (bench/NOTES.md v36): d128 / d256, bf16 / fp16,
# causal or not, with and without a softcap, ragged lengths (a partial last key block).
import cupy as cp
import numpy as np

import cuflash
from cuflash import testing

for d in (128, 256):
    for dt in ("bf16", "fp16"):
        q, k, v = testing.random_qkv(2, 200, 333, 4, 4, d, dt, xp=cp)
        b = np.random.default_rng(1).standard_normal((2, 1, 1, 333)).astype(np.float32)
        b[0, ..., ::7] = -np.inf
        bias = cp.asarray(b).astype(q.dtype)
        for causal in (False, True):
            for softcap in (0.0, 5.0):
                out, lse = cuflash.attention(q, k, v, bias=bias, causal=causal, softcap=softcap, return_lse=True)
                assert bool(cp.isfinite(out).all()), (d, dt, causal, softcap)
cp.cuda.runtime.deviceSynchronize()
print("ok")
