"""Float64 check of the Hopper forward's lean tile bookkeeping (kernels_cu/dev/fwd90_lean_tile_bookkeeping.patch,
bench/NOTES.md v41): tile numbers divided by multiplies (platform.cuh FastDiv) and O staged at XORed offsets
(epilogue.cuh stage_tile_swizzled). Grids with many tiles per CTA (odd head counts, 3 x 37 heads) so that the
persistent CTAs find many tiles from their numbers, plain, causal (paired) and windowed, head dims with one to four
64-column atoms (64, 128, 192, 256) and one that keeps the old staging (96), both dtypes, dense and varlen; every
selected kernel's name printed.
    DIMS=64,128 python3 lean_check.py   (default 64,128,256,96,192)"""
import os
import sys

from cuflash import tma

sys.path.insert(0, "bench")
import float64_cases  # noqa: E402 (records the kernels launched)
from float64_cases import dense_case, varlen_case  # noqa: E402

tma.MIN_FLOP = 0  # small calls take the TMA loads (and O's TMA store) too

SHAPES = [(512, 512), (1050, 1050), (300, 500), (500, 300), (129, 129)]
MASKS = [dict(), dict(causal=True), dict(window_size=(100, 0)), dict(window_size=(300, 10))]
FEATURES = [dict(), dict(softcap=30.0), dict(sink=True), dict(alibi=True), dict(bias=True), dict(dropout=True)]
for d in [int(x) for x in os.environ.get("DIMS", "64,128,256,96,192").split(",")]:
    for i, (sq, sk) in enumerate(SHAPES):
        for j, mask in enumerate(MASKS):
            kw = dict(mask, **FEATURES[(i + j) % len(FEATURES)])
            dense_case(d, sq, sk, kw, "bf16" if (i + j) % 2 == 0 else "fp16", seed=10 * i + j)
    for j, mask in enumerate(MASKS[:2]):  # 3 x 37 heads of 640 rows: many tiles per persistent CTA
        dense_case(d, 640, 640, mask, "bf16", seed=90 + j, batch=3, nheads=37, nheads_kv=37)
    lens = [0, 1, 37, 64, 65, 129, 200, 500, 1000, 3]
    for kw in (dict(), dict(causal=True)):
        varlen_case(d, lens, lens, kw, nheads=37, nheads_kv=37)
float64_cases.summary("fwd90")
