"""Float64 check of the warp-specialised forward's half diagonal (kernels_cu/dev/fwd90_half_diagonal.patch,
bench/NOTES.md v40): a warpgroup whose rows see none of its tile's first key block's second half issues P V over
the first 64 keys only (and S too in the plain dense causal and local kernels on two consumer warpgroups). Causal
and right-bounded windows with seqlen_q equal to, above and below seqlen_k, lengths that end inside a tile, every
feature the kernel takes, dense and varlen, d32-d128 (d256's 64- and 80-key blocks never take it), both dtypes;
every selected kernel's name printed.
    DIMS=64,128 python3 half_check.py   (default 64,128,32,96)"""
import os
import sys

import cupy as cp
import numpy as np

import cuflash
from cuflash import reference, testing, tma

sys.path.insert(0, "bench")
import float64_cases  # noqa: E402 (records the kernels launched)
from float64_cases import check, dense_case  # noqa: E402

tma.MIN_FLOP = 0  # small calls take the TMA loads too

# (seqlen_q, seqlen_k): equal (128-row tiles up to 2048 rows at d64, 192-row ones past it), ending inside a
# tile, the diagonal shifted right (sk > sq) and left (sq > sk: leading rows that see no key)
SHAPES = [(512, 512), (1050, 1050), (2500, 2500), (300, 500), (500, 300), (129, 129)]
MASKS = [dict(causal=True), dict(window_size=(100, 0)), dict(window_size=(300, 10)), dict(window_size=(0, 0)),
         dict(causal=True, window_size=(64, -1))]
FEATURES = [dict(), dict(softcap=30.0), dict(sink=True), dict(alibi=True), dict(bias=True), dict(dropout=True)]
for d in [int(x) for x in os.environ.get("DIMS", "64,128,32,96").split(",")]:
    for i, (sq, sk) in enumerate(SHAPES):
        for j, mask in enumerate(MASKS):
            feat = FEATURES[(i + j) % len(FEATURES)] if j < 2 else {}
            kw = dict(mask, **feat)
            dtype = "bf16" if (i + j) % 2 == 0 else "fp16"
            dense_case(d, sq, sk, kw, dtype, seed=10 * i + j)
    lens_q = [0, 1, 37, 64, 65, 129, 200, 500, 1000, 3]
    lens_k = [5, 1, 37, 100, 65, 128, 150, 500, 1200, 0]
    cq = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    for kw in (dict(causal=True), dict(window_size=(100, 0))):
        for cu_q, cu_k, lq, lk in ((cq, cq, lens_q, lens_q), (cq, ck, lens_q, lens_k)):
            q = testing.random_qkv(1, int(cu_q[-1]), int(cu_q[-1]), 8, 2, d, "bf16", xp=cp, seed=7)[0][0]
            _, k, v = (x[0] for x in testing.random_qkv(1, int(cu_k[-1]), int(cu_k[-1]), 8, 2, d, "bf16", xp=cp, seed=8))
            out, lse = cuflash.attention_varlen(q, k, v, cp.asarray(cu_q), cp.asarray(cu_k), max(lq), max(lk),
                                                return_lse=True, **kw)
            qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
            refs = [reference.attention_forward_varlen(qh, kh, vh, cu_q, cu_k, **kw, precision=p) for p in ("float64", "lowp")]
            check(f"d{d} varlen {'equal' if cu_q is cu_k else 'unequal'} lengths {kw}", (out, lse), list(zip(*refs)), "bf16")
float64_cases.summary("fwd90")
