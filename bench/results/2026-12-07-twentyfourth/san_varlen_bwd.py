"""Varlen Hopper backwards (bwd_sm90_ws.cu d64 / d128: Q and dO of blocks inside a sequence by TMA, the
last partial block by cp.async) for compute-sanitizer: ragged lengths with empty and one-row sequences,
a sequence ending on a block boundary and one that does not, causal and not, deterministic or not."""
import cupy as cp
import numpy as np

import cuflash
from cuflash import testing, tma

tma.MIN_FLOP = 0
lengths_q, lengths_k = [37, 0, 1, 256, 129, 64], [64, 5, 1, 150, 300, 64]
cu_q, cu_k = (cp.asarray(np.concatenate([[0], np.cumsum(n)]).astype(np.int32)) for n in (lengths_q, lengths_k))
for head_dim in (64, 128):
    q, k, v = (x[0] for x in testing.random_qkv(1, sum(lengths_q), sum(lengths_k), 4, 2, head_dim, "bf16", xp=cp))
    dout = testing.random_like(q)
    for causal in (False, True):
        out, lse = cuflash.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), return_lse=True,
                                            causal=causal)
        for deterministic in (False, True):
            cuflash.attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                              causal=causal, deterministic=deterministic)
cp.cuda.Device().synchronize()
print("ok")
