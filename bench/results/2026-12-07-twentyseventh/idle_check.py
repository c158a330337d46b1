"""Float64 check of the warp-specialised forward where a tile's last consumer warpgroups lie past the
sequence's end (fwd_sm90_ws.cu idle_step, kernels_cu/dev/fwd90_idle_walk.patch): query lengths that end 1-63 rows into a 128- or 192-row
tile, with every feature the kernel takes, dense and varlen; every selected kernel's name printed."""
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


for d in [int(x) for x in os.environ.get("DIMS", "32,64,96,128,256").split(",")]:
    for i, kw in enumerate([dict(), dict(causal=True), dict(window_size=(100, 0)), dict(softcap=30.0),
                            dict(causal=True, sink=True), dict(alibi=True), dict(causal=True, bias=True),
                            dict(dropout=True)]):
        # rows: 1000 ends 40 rows into a 192-row tile; 1050 26 rows into a 128-row one; 100 in the first tile
        sq = (1000, 1050, 100)[i % 3]
        sk = (1031, 1050, 300)[i % 3]
        dtype = "bf16" if i % 2 == 0 else "fp16"
        dense_case(d, sq, sk, kw, dtype, seed=i)
    lens = [0, 1, 37, 64, 65, 129, 200, 500, 1000, 3]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    for kw in (dict(), dict(causal=True), dict(window_size=(100, 0))):
        q, k, v = (x[0] for x in testing.random_qkv(1, int(cu[-1]), int(cu[-1]), 8, 2, d, "bf16", xp=cp, seed=7))
        cuc = cp.asarray(cu)
        out, lse = cuflash.attention_varlen(q, k, v, cuc, cuc, max(lens), max(lens), return_lse=True, **kw)
        qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
        refs = [reference.attention_forward_varlen(qh, kh, vh, cu, cu, **kw, precision=p) for p in ("float64", "lowp")]
        check(f"d{d} varlen {kw}", (out, lse), list(zip(*refs)), "bf16")
float64_cases.summary("fwd90")
