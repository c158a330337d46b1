"""Dev probe: split-KV decode tiles (kernel time via CUDA events, median), GQA 32/8, d128, one
query, bf16, full caches, num_splits = 0 (the launcher's choice for each tile):

    PYTHONPATH=$PWD python3 kernels_cu/dev/decode_tune.py 16,12,2 16,8,3 16,4,3

Each tile is block_n,warps,stages (specs.DecodeTiles). Prints TB/s of K+V read per shape
and cache layout (contig, paged16, paged1)."""
import sys

import cupy as cp

import cuflash
from cuflash import specs, support
from timing import timeit

H, HK, D = 32, 8, 128
tiles = [specs.DecodeTiles(*(int(x) for x in a.split(","))) for a in sys.argv[1:]] or [specs.DECODE_TILES[128][0]]
shapes = [(64, 8192, 0), (8, 32768, 0), (1, 131072, 0), (64, 8192, 16), (8, 32768, 16), (8, 32768, 1)]


def caches(batch, keys, page):
    q = cp.random.standard_normal((batch, 1, H, D), dtype=cp.float32).astype(cp.float16)
    kc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
    if not page:
        return q, kc, vc, {}
    n = batch * keys // page
    perm = cp.random.permutation(n).astype(cp.int32)
    kp, vp = cp.empty((n, page, HK, D), cp.float16), cp.empty((n, page, HK, D), cp.float16)
    kp[perm] = kc.reshape(n, page, HK, D)
    vp[perm] = vc.reshape(n, page, HK, D)
    return q, kp, vp, {"block_table": perm.reshape(batch, keys // page), "check_indices": False}


print("tile              " + " ".join(f"{b}x{k // 1024}k/{'p%d' % p if p else 'c'}".rjust(11) for b, k, p in shapes))
results = [[] for _ in tiles]  # by position: a tile listed twice gets two rows
for batch, keys, page in shapes:
    q, kc, vc, extra = caches(batch, keys, page)
    nbytes = 2 * batch * keys * HK * D * 2
    for t, row in zip(tiles, results):
        specs.DECODE_TILES[128] = [t]
        support.decode_spec.cache_clear()
        support.select.cache_clear()
        try:
            tt = timeit(lambda: cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=keys, **extra))
            row.append(f"{nbytes / tt / 1e12:.3f}")
        except Exception as e:  # a tile that does not fit or compile: say why, go on
            row.append("ERR")
            print(f"{t}: {str(e)[:120]}", file=sys.stderr)
for t, row in zip(tiles, results):
    print(f"n{t.block_n}w{t.warps}s{t.stages}".ljust(18) + " ".join(r.rjust(11) for r in row), flush=True)
