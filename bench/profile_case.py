"""One forward call (--mode bwd: a forward, then one backward) of a given shape, for a profiler
(ncu) to capture.

    PYTHONPATH=. ncu -k cuflash_fwd -c 1 python3 bench/profile_case.py --headdim 128 --seqlen 8k
    PYTHONPATH=. ncu -k regex:cuflash_bwd_sm90 -c 1 python3 bench/profile_case.py --mode bwd --headdim 256
"""
import argparse

import cupy as cp

import cuflash
from cuflash import testing

ap = argparse.ArgumentParser()
ap.add_argument("--headdim", type=int, default=128)
ap.add_argument("--seqlen", default="8k")
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--causal", action="store_true")
ap.add_argument("--mode", choices=("fwd", "bwd"), default="fwd")
args = ap.parse_args()
s = int(args.seqlen[:-1]) * 1024 if args.seqlen.endswith("k") else int(args.seqlen)
batch, nheads = max(1, 16384 // s), 2048 // args.headdim
q, k, v = testing.random_qkv(batch, s, s, nheads, nheads, args.headdim, args.dtype, xp=cp)
out, lse = cuflash.attention(q, k, v, causal=args.causal, return_lse=True)
if args.mode == "bwd":
    cuflash.attention_backward(testing.random_like(q), q, k, v, out, lse, causal=args.causal)
cp.cuda.Device().synchronize()
