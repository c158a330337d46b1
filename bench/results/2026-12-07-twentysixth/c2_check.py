"""Float64 check of the warp-specialised forward on two CTAs per SM (one consumer warpgroup each; needs
kernels_cu/dev/fwd90_ws_two_ctas.patch applied):
the head dims' tiles replaced by 64-row ones with ctas_per_sm=2, every selected kernel's name printed."""
import sys

import cupy as cp
import numpy as np

import cuflash
from cuflash import reference, specs, testing

sys.path.insert(0, "bench")
import float64_cases  # noqa: E402 (records the kernels launched)

specs.FWD_SM90_TILES[128] = specs.FwdSm90Tiles(64, 64, ctas_per_sm=2, stages=2)
specs.FWD_SM90_TILES[64] = specs.FwdSm90Tiles(64, 128, ctas_per_sm=2, stages=2)
specs.FWD_SM90_SHORT_CAUSAL_TILES[64] = specs.FwdSm90Tiles(64, 128, ctas_per_sm=2, stages=2)
specs.FWD_SM90_NARROW_BAND.clear()
failures = 0
for d in (64, 128):
    for dtype in ("bf16", "fp16"):
        cases = [dict(), dict(causal=True), dict(window_size=(128, 0)), dict(window_size=(256, 64)),
                 dict(softcap=30.0), dict(causal=True, softcap=20.0), dict(sink=True), dict(alibi=True, causal=True)]
        for i, kw in enumerate(cases):
            b, sq, sk, h, hk = (4, 1000, 1000, 16, 4) if i % 2 == 0 else (3, 777, 1031, 8, 8)
            q, k, v = testing.random_qkv(b, sq, sk, h, hk, d, dtype, xp=cp, seed=i)
            extra = {}
            if kw.pop("sink", False):
                extra["learnable_sink"] = cp.asarray(np.linspace(-1, 2, h), dtype=cp.float32)
            if kw.pop("alibi", False):
                extra["alibi_slopes"] = cp.asarray(np.linspace(0.01, 0.2, h), dtype=cp.float32)
            out = testing.poison(cp.empty_like(q))
            out, lse = cuflash.attention(q, k, v, out=out, return_lse=True, **kw, **extra)
            qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
            ex = {n: testing.to_numpy(x) for n, x in extra.items()}
            r64, l64 = reference.attention_forward(qh, kh, vh, **kw, **ex)
            rl, ll = reference.attention_forward(qh, kh, vh, **kw, **ex, precision="lowp")
            try:
                e = testing.check_accuracy("out", out, r64, rl, dtype)
                testing.check_accuracy("lse", lse, l64, ll, dtype)
                print(f"ok   d{d} {dtype} {kw} {list(extra)}: err {e['err']:.2e} allowed {e['allowed']:.2e}", flush=True)
            except AssertionError as err:
                failures += 1
                print(f"FAIL d{d} {dtype} {kw} {list(extra)}: {err}", flush=True)
    # varlen: lengths with 0 and 1, causal and a window
    lens = [0, 1, 37, 64, 65, 500, 1000, 3]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    for kw in (dict(), dict(causal=True), dict(window_size=(100, 0))):
        q, k, v = testing.random_qkv(1, int(cu[-1]), int(cu[-1]), 8, 2, d, "bf16", xp=cp, seed=7)
        q, k, v = (x[0] for x in (q, k, v))
        cuc = cp.asarray(cu)
        out = cuflash.attention_varlen(q, k, v, cuc, cuc, max(lens), max(lens), **kw)
        qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
        r64, _ = reference.attention_forward_varlen(qh, kh, vh, cu, cu, **kw)
        rl, _ = reference.attention_forward_varlen(qh, kh, vh, cu, cu, **kw, precision="lowp")
        try:
            e = testing.check_accuracy("out", out, r64, rl, "bf16")
            print(f"ok   d{d} varlen {kw}: err {e['err']:.2e}", flush=True)
        except AssertionError as err:
            failures += 1
            print(f"FAIL d{d} varlen {kw}: {err}", flush=True)
print("kernels:", sorted(float64_cases.kernel_names))
print("failures:", failures)
