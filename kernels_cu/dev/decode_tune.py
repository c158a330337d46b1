"""Dev probe: split-KV decode tiles and split counts (kernel time via CUDA events, median)."""
import cupy as cp
import cuflash
from timing import timeit
from cuflash import specs, support


H, HK, D = 32, 8, 128
tiles = [specs.DecodeTiles(*t) for t in ((16, 4, 3), (16, 4, 4), (16, 8, 3), (32, 4, 3))]
shapes = [(64, 8192, None), (8, 32768, None), (1, 131072, None), (8, 32768, 16), (8, 32768, 1)]
for t in tiles:
    specs.DECODE_TILES[128] = [t]
    support.decode_spec.cache_clear()
    support.select.cache_clear()
    for batch, keys, page in shapes:
        q = cp.random.standard_normal((batch, 1, H, D), dtype=cp.float32).astype(cp.float16)
        kc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
        vc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
        extra = {}
        if page:
            n = batch * keys // page
            perm = cp.random.permutation(n).astype(cp.int32)
            kp, vp = cp.empty((n, page, HK, D), cp.float16), cp.empty((n, page, HK, D), cp.float16)
            kp[perm] = kc.reshape(n, page, HK, D)
            vp[perm] = vc.reshape(n, page, HK, D)
            extra = {"block_table": perm.reshape(batch, keys // page), "check_indices": False}
            kc, vc = kp, vp
        nbytes = 2 * batch * keys * HK * D * 2
        row = []
        for splits in (0, 4, 16, 33):
            if batch * 8 * splits > 8 * 4096 or (splits == 1 and keys > 8192 and batch < 64):
                continue
            try:
                tt = timeit(lambda: cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=keys, num_splits=splits, **extra))
            except Exception as e:
                row.append(f"{splits}:ERR {str(e)[:50]}")
                continue
            row.append(f"{splits}:{nbytes / tt / 1e12:.2f}")
        print(f"tile n{t.block_n}w{t.warps}s{t.stages} b{batch} k{keys} p{page}: " + " ".join(row), flush=True)
