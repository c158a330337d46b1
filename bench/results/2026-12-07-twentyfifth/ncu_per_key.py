"""The d128 8k forward (bf16, batch 2, 16 heads, non-causal) without a bias, with a per-key (b, 1, 1, s) and a
full (b, h, s, s) bias, once each under Nsight Compute (each called twice first: compile, cache, plan):
    ncu --profile-from-start off --section SpeedOfLight --section WarpStateStats ... python3 ncu_per_key.py
Why the per-key kernel runs at 0.84-0.86x plain when neither its per-score add nor its producer warps matter
(bench/NOTES.md v36)."""
import cupy as cp

import cuflash
from cuflash import testing

q, k, v = testing.random_qkv(2, 8192, 8192, 16, 16, 128, "bf16", xp=cp, seed=0)
cases = {"plain": None,
         "per_key": (cp.random.standard_normal((2, 1, 1, 8192), dtype=cp.float32)).astype(q.dtype),
         "full": (cp.random.standard_normal((2, 16, 8192, 8192), dtype=cp.float32)).astype(q.dtype)}
for name, bias in cases.items():
    for _ in range(2):
        cuflash.attention(q, k, v, bias=bias)
    cp.cuda.runtime.deviceSynchronize()
    print(f"case {name}", flush=True)
    cp.cuda.runtime.profilerStart()
    cuflash.attention(q, k, v, bias=bias)
    cp.cuda.runtime.deviceSynchronize()
    cp.cuda.runtime.profilerStop()
