"""Dev probe: the split count of the split-KV decode over caches of few rows (CUDA events, median;
GQA 32/8, d128, fp16, one query, full contiguous caches), per tile (the peers: `cuflash bench --mode decode`):

    PYTHONPATH=$PWD python3 kernels_cu/dev/decode_splits.py [16,12,2 16,4,3 ...]

For each shape (batch x keys) and tile (block_n,warps,stages) it prints TB/s of K+V read for
num_splits = 0 (launch.decode_split_count's choice, shown as `=s`) and for the listed counts,
with the CTAs each launches (batch x kv heads x splits). The question: whether a count that does
not divide the key blocks evenly but fills the GPU's CTA slots (132 SMs x CTAs per SM) beats the
even count that leaves some SMs idle (1 x 128k: 16 splits = 128 CTAs of 12 warps on 132 SMs)."""
import sys

import cupy as cp

import cuflash
from cuflash import api, launch, specs, support
from timing import timeit

chosen = []  # launch.decode_splits' answers, to show what num_splits = 0 picked
_decode_splits = launch.decode_splits


def _recorded(*args):
    chosen.append(_decode_splits(*args))
    return chosen[-1]


launch.decode_splits = _recorded

H, HK, D = 32, 8, 128
tiles = [specs.DecodeTiles(*(int(x) for x in a.split(","))) for a in sys.argv[1:]] or [
    specs.DecodeTiles(16, 12, 2), specs.DecodeTiles(16, 8, 3), specs.DecodeTiles(16, 4, 3)]
# (batch, keys, split counts to try besides the launcher's own)
shapes = [(1, 131072, (16, 17, 22, 32, 33, 44, 48, 64, 66)),
          (2, 65536, (8, 9, 16, 17, 32, 33)),
          (8, 32768, (2, 3, 4, 5, 8, 9)),
          (4, 32768, (4, 5, 8, 9, 16, 17))]


print("shape        tile        splits   CTAs   TB/s")
for batch, keys, counts in shapes:
    q = cp.random.standard_normal((batch, 1, H, D), dtype=cp.float32).astype(cp.float16)
    kc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
    nbytes = 2 * batch * keys * HK * D * 2
    name = f"{batch}x{keys // 1024}k".ljust(12)
    ref = None
    for tile in tiles:
        specs.DECODE_TILES[128] = [tile]
        specs.DECODE_TILES_MANY_UNITS[128] = [tile]
        support.decode_spec.cache_clear()
        support.select.cache_clear()
        api._PLANS.clear()
        for s in (0, *counts):
            try:
                run = lambda: cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=keys, num_splits=s)  # noqa: E731
                out = run()
                if ref is None:
                    ref = out.astype(cp.float32)
                err = float(cp.abs(out.astype(cp.float32) - ref).max())
                tt = timeit(run)
            except Exception as e:  # a tile that does not fit or compile: say why, go on
                print(f"{name} n{tile.block_n}w{tile.warps}s{tile.stages} {s}: {str(e)[:120]}", flush=True)
                continue
            label = str(s) if s else f"={chosen[-1]}"
            print(f"{name} n{tile.block_n}w{tile.warps}s{tile.stages}".ljust(25) + f"{label:>6} {batch * HK * (s or chosen[-1]):>6}"
                  f"  {nbytes / tt / 1e12:.3f}  (max diff to the first {err:.1e})", flush=True)
