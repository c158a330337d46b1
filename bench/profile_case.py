"""One forward call (--mode bwd: a forward, then one backward) of a given shape, for a profiler
(ncu) to capture.

    PYTHONPATH=. ncu -k cuflash_fwd -c 1 python3 bench/profile_case.py --headdim 128 --seqlen 8k
    PYTHONPATH=. ncu -k regex:cuflash_bwd_sm90 -c 1 python3 bench/profile_case.py --mode bwd --headdim 256
    PYTHONPATH=. ncu -k regex:cuflash_fwd -c 1 python3 bench/profile_case.py --batch 2 --nheads 16 --bias b,h,s,s
    PYTHONPATH=. ncu -k regex:cuflash_fwd -c 1 python3 bench/profile_case.py --dropout 0.1

Defaults: 16k tokens (batch = 16k / seqlen) and hidden 2048 (nheads = 2048 / headdim). --bias takes
`cuflash bench`'s shapes (b,h,s,s, 1,h,s,s, b,1,1,s): a random bias in q's dtype.
"""
import argparse

import cupy as cp

import cuflash
from cuflash import testing
from cuflash.bench.configs import bias_shape, parse_bias
from cuflash.bench.runner import random_normal

ap = argparse.ArgumentParser()
ap.add_argument("--headdim", type=int, default=128)
ap.add_argument("--seqlen", default="8k")
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--causal", action="store_true")
ap.add_argument("--mode", choices=("fwd", "bwd"), default="fwd")
ap.add_argument("--batch", type=int)
ap.add_argument("--nheads", type=int)
ap.add_argument("--bias", type=parse_bias, default="")
ap.add_argument("--dropout", type=float, default=0.0, help="dropout_p (seed 1)")
args = ap.parse_args()
s = int(args.seqlen[:-1]) * 1024 if args.seqlen.endswith("k") else int(args.seqlen)
batch = args.batch or max(1, 16384 // s)
nheads = args.nheads or 2048 // args.headdim
q, k, v = testing.random_qkv(batch, s, s, nheads, nheads, args.headdim, args.dtype, xp=cp)
bias = random_normal(cp, bias_shape(args.bias, batch, nheads, s, s), args.dtype, seed=3) if args.bias else None
drop = dict(dropout_p=args.dropout, seed=1) if args.dropout else {}
out, lse = cuflash.attention(q, k, v, causal=args.causal, bias=bias, return_lse=True, **drop)
if args.mode == "bwd":
    cuflash.attention_backward(testing.random_like(q), q, k, v, out, lse, causal=args.causal, bias=bias, **drop)
cp.cuda.Device().synchronize()
