"""Time cuflash.attention (bf16, non-causal, H200 16k-token shapes) with the warp-specialised
forward's grid as launch.py picks it (a persistent grid where FwdSm90Spec.persistent), or with
argv[1] == "per-tile" one CTA per tile for the same kernel; any other argv[1] is a label (run it
in an older tree's directory to time that tree). CUDA events, a 256 MB write between calls to
flush the L2, median of 30 after 10 warm-up calls (bench/NOTES.md v10)."""
import sys
import cupy as cp
import numpy as np
import cuflash
from cuflash import launch, testing
mode = sys.argv[1]
if mode == "per-tile":
    orig = launch.fwd_grid
    def per_tile(spec, batch, nheads, seqlen_q, *rest):
        g = orig(spec, batch, nheads, seqlen_q, *rest)
        m = -(-seqlen_q // spec.tiles.block_m)
        return (m * nheads * batch, 1, 1) if g[1] == 1 else g
    launch.fwd_grid = per_tile
flush = cp.empty(256 << 20, dtype=cp.uint8)
for d, s in ((128, 8192), (128, 4096), (128, 2048), (64, 8192), (64, 4096)):
    b, h = 16384 // s, 2048 // d
    q, k, v = testing.random_qkv(b, s, s, h, h, d, "bf16", xp=cp, seed=0)
    out = cuflash.attention(q, k, v)
    if s == 2048:
        ref = cuflash.attention(q[:1, :300], k[:1], v[:1])  # smoke: finite
        assert bool(cp.isfinite(ref.astype(cp.float32)).all())
    times = []
    for i in range(40):
        flush.fill(i & 255)
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(); cuflash.attention(q, k, v, out=out); e1.record(); e1.synchronize()
        if i >= 10:
            times.append(cp.cuda.get_elapsed_time(e0, e1))
    ms = float(np.median(times))
    print(f"{mode:9s} d{d} s{s}: {ms:.4f} ms {4 * b * h * s * s * d / ms / 1e9:.1f} TFLOP/s", flush=True)
