"""A small causal GQA case with ragged shapes for compute-sanitizer (bench/gpu_check.sh).

Every kernel cuflash has runs once here; the sanitizer reports any
out-of-bounds access or shared-memory race.
"""
import cupy as cp

import cuflash
from cuflash import testing

for dtype in ("fp16", "bf16"):
    for d in (40, 128, 256):
        q, k, v = testing.random_qkv(2, 77, 131, 4, 2, d, dtype, xp=cp)
        for causal in (False, True):
            cuflash.attention(q, k, v, causal=causal, return_lse=True)
cp.cuda.Device().synchronize()
print("sanitize_case: done")
