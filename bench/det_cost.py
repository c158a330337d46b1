"""Cost of deterministic=True in cuflash.attention_backward: median ms of both modes per config.

    PYTHONPATH=. python bench/det_cost.py [--headdim 64,128,256] [--seqlen 8k] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import itertools

import cupy as cp

import cuflash
from cuflash import testing
from cuflash.bench.configs import parse_list, parse_size
from cuflash.bench.timing import median_ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--headdim", default="64,128,256")
    ap.add_argument("--seqlen", default="8k")
    ap.add_argument("--dtype", default="bf16")
    args = ap.parse_args()
    print(f"{'d':>4} {'seqlen':>6} {'causal':>6} {'ms':>8} {'det ms':>8} {'cost':>6}")
    for d, s, causal in itertools.product(parse_list(args.headdim, int), parse_list(args.seqlen, parse_size), (False, True)):
        batch, nheads = 16384 // s, 2048 // d
        q, k, v = testing.random_qkv(batch, s, s, nheads, nheads, d, args.dtype, xp=cp)
        dout = testing.random_like(q)
        out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True)
        ms = {}
        for det in (False, True):
            ms[det] = median_ms(lambda: cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal, deterministic=det))
        print(f"{d:>4} {s:>6} {causal!s:>6} {ms[False]:8.3f} {ms[True]:8.3f} {ms[True] / ms[False]:6.2f}", flush=True)


if __name__ == "__main__":
    main()
