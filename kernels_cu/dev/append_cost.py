"""Dev probe: what appending one token (and rotary) adds to a decode call (issue 12: at most 10%)."""
import cupy as cp
import numpy as np
import cuflash
from timing import timeit


H, HK, D = 32, 8, 128
for batch, keys in ((64, 8192), (8, 32768), (1, 131072)):
    q = cp.random.standard_normal((batch, 1, H, D), dtype=cp.float32).astype(cp.float16)
    kc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal((batch, keys, HK, D), dtype=cp.float32).astype(cp.float16)
    k = cp.random.standard_normal((batch, 1, HK, D), dtype=cp.float32).astype(cp.float16)
    v = cp.random.standard_normal((batch, 1, HK, D), dtype=cp.float32).astype(cp.float16)
    angles = np.outer(np.arange(keys), 1.0 / 10000 ** (np.arange(64) / 64))
    cos, sin = (cp.asarray(f(angles).astype(np.float16)) for f in (np.cos, np.sin))
    full = cp.full((batch,), keys, cp.int32)
    last = cp.full((batch,), keys - 1, cp.int32)
    base = 1e3 * timeit(lambda: cuflash.attention_with_kvcache(q, kc, vc, cache_seqlens=full, causal=True))
    app = 1e3 * timeit(lambda: cuflash.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=last, causal=True))
    rot = 1e3 * timeit(lambda: cuflash.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=last, causal=True,
                                                        rotary_cos=cos, rotary_sin=sin))
    print(f"b{batch} k{keys}: no append {base * 1e3:.1f} us, append {app * 1e3:.1f} us (x{app / base:.3f}), "
          f"append + rotary {rot * 1e3:.1f} us (x{rot / base:.3f})", flush=True)
