"""Varlen d128 forwards (the rows' sums from P V beside the tile list) for compute-sanitizer: ragged lengths
with empty and one-row sequences, causal and not, a batch that fills the list and one past it."""
import cupy as cp
import numpy as np

import cuflash
from cuflash import testing, tma

tma.MIN_FLOP = 0
for lengths_q, lengths_k in (([37, 0, 1, 200, 129], [64, 5, 1, 150, 300]), ([5] * 240, [7] * 240), ([5] * 241, [7] * 241)):
    cu_q, cu_k = (cp.asarray(np.concatenate([[0], np.cumsum(n)]).astype(np.int32)) for n in (lengths_q, lengths_k))
    q, k, v = (x[0] for x in testing.random_qkv(1, sum(lengths_q), sum(lengths_k), 4, 2, 128, "bf16", xp=cp))
    for causal in (False, True):
        cuflash.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), return_lse=True, causal=causal)
cp.cuda.Device().synchronize()
print("ok")
