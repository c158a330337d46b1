"""Forward tile tuner: time candidate tiles per head dim beside torch SDPA's flash (or cuDNN) backend.

Run on a GPU machine from the repo root:
    PYTHONPATH=. python bench/tune_fwd.py --headdim 64,128,256 --seqlen 2k,8k
    PYTHONPATH=. python bench/tune_fwd.py --kernel sm90 --tiles 128x128,128x64
    PYTHONPATH=. python bench/tune_fwd.py --kernel sm90 --peer cudnn --tiles 128x128s2,192x128s2
    PYTHONPATH=. python bench/tune_fwd.py --kernel sm90 --window 256,0 --seqlen 16k --tiles 128x128,64x64c2
With --window the kernels run the sliding-window mask, FLOPs count the visible pairs, and the last
columns compare with the band's share of the non-causal time of the current tiles (issue: at most
1.5x that) instead of SDPA.
float32 (--dtype fp32) compares with SDPA's efficient backend (its flash backend has no float32)
and starts from FWD_TILES_FP32. Each candidate is checked against SDPA's output first, then timed with CUDA
events (warm-up, L2 flushed before every repetition, median). The chosen
tiles go into cuflash/specs.py FWD_TILES (portable, fwd.cu) or FWD_SM90_TILES
(Hopper: fwd_sm90_ws.cu for tiles with stages, fwd_sm90.cu without); the reasoning into bench/NOTES.md.
"""
from __future__ import annotations

import argparse
import itertools
import math
import re

import cupy as cp
import numpy as np
import torch

from cuflash.bench.configs import parse_list, parse_size
from cuflash.bench.timing import median_ms
from cuflash import api, launch, testing
from cuflash.specs import (FWD_SM90_TILES, FWD_TILES, FWD_TILES_FP32, Features, FwdSm90Spec, FwdSm90Tiles, FwdSpec,
                           FwdTiles, head_dim_bucket)

CANDIDATES = [
    FwdTiles(128, 32, 4),
    FwdTiles(128, 64, 4),
    FwdTiles(128, 128, 4),
    FwdTiles(64, 64, 4),
    FwdTiles(128, 64, 8),
    FwdTiles(128, 32, 8),
    FwdTiles(128, 128, 8),
    FwdTiles(64, 128, 4),
    FwdTiles(64, 32, 4),
    FwdTiles(128, 64, 4, q_in_regs=True),
    FwdTiles(64, 64, 4, q_in_regs=True),
    FwdTiles(64, 128, 4, q_in_regs=True),
    FwdTiles(128, 64, 8, q_in_regs=True),
    FwdTiles(128, 128, 8, q_in_regs=True),
]


SM90_CANDIDATES = [FwdSm90Tiles(128, 128), FwdSm90Tiles(128, 64), FwdSm90Tiles(128, 192), FwdSm90Tiles(192, 64)]

#: kernel -> (spec class, current tiles per D, default candidates)
KERNELS = {
    "portable": (FwdSpec, FWD_TILES, CANDIDATES),
    "sm90": (FwdSm90Spec, FWD_SM90_TILES, SM90_CANDIDATES),
}


def parse_tiles(text: str, kernel: str) -> list:
    """portable: '128x64x4,64x64x4q' -> FwdTiles (a trailing q keeps Q in registers);
    sm90: '128x128,128x64c2,128x128s2' -> FwdSm90Tiles (cN: N CTAs per SM; sN: the warp-specialised
    kernel with N stages)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if kernel == "sm90":  # BMxBN, BMxBNcC for C CTAs per SM, BMxBNsS warp-specialised with S stages
            m = re.fullmatch(r"(\d+)x(\d+)(?:c(\d+))?(?:s(\d+))?", item)
            if m is None:
                raise SystemExit(f"--tiles: {item!r} is not BMxBN, BMxBNcC or BMxBNsS")
            bm, bn, ctas, stages = m.groups()
            out.append(FwdSm90Tiles(int(bm), int(bn), int(ctas or 1), int(stages or 0)))
            continue
        q = item.endswith("q")
        bm, bn, w = (int(x) for x in item.rstrip("q").split("x"))
        out.append(FwdTiles(bm, bn, w, q_in_regs=q))
    return out


def tiles_label(tiles) -> str:
    if isinstance(tiles, FwdSm90Tiles):
        return (f"{tiles.block_m}x{tiles.block_n}" + (f"c{tiles.ctas_per_sm}" if tiles.ctas_per_sm > 1 else "")
                + (f"s{tiles.stages}" if tiles.stages else ""))
    return f"{tiles.block_m}x{tiles.block_n}x{tiles.warps}{'q' if tiles.q_in_regs else ''}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--headdim", default="64,128,256")
    ap.add_argument("--seqlen", default="2k,8k")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--causal", default="both", choices=["true", "false", "both"])
    ap.add_argument("--total-tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--kernel", default="portable", choices=sorted(KERNELS))
    ap.add_argument("--current", action="store_true", help="time only the current tiles of the kernel")
    ap.add_argument("--tiles", help="time these tiles (plus the current ones), e.g. 128x64x4,64x64x4q")
    ap.add_argument("--window", help="LEFT,RIGHT: a sliding window (sets --causal false)")
    ap.add_argument("--peer", default="flash", choices=["flash", "cudnn"],
                    help="SDPA backend to compare with (16-bit inputs; float32 always uses the efficient one)")
    args = ap.parse_args()
    if args.window:
        window_main(args)
        return

    causals = {"true": [True], "false": [False], "both": [False, True]}[args.causal]
    print(f"{'d':>4} {'seqlen':>6} {'causal':>6} {'tiles':>14} {'smem':>7} {'ms':>8} {'TFLOP/s':>8} {'sdpa':>8} {'ratio':>6}")
    for d, s, causal in itertools.product(parse_list(args.headdim, int), parse_list(args.seqlen, parse_size), causals):
        batch, nheads = args.total_tokens // s, args.hidden // d
        q, k, v = testing.random_qkv(batch, s, s, nheads, nheads, d, args.dtype, xp=cp)
        flops = 4 * batch * nheads * s * s * d / (2 if causal else 1)
        tq, tk, tv = (torch.from_dlpack(x).transpose(1, 2) for x in (q, k, v))
        backend = ("EFFICIENT_ATTENTION" if args.dtype == "fp32"
                   else {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}[args.peer])
        with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, backend)):
            ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

            def peer():
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

            peer_ms = median_ms(peer)
        out = cp.empty_like(q)
        scale = 1 / math.sqrt(d)
        name = testing.dtype_name(q.dtype)
        D = head_dim_bucket(d)
        spec_cls, current, default = KERNELS[args.kernel]
        if name == "fp32":
            current = {dd: tiles[0] for dd, tiles in FWD_TILES_FP32.items()}
        if args.tiles:
            candidates = [current[D]] + [t for t in parse_tiles(args.tiles, args.kernel) if t != current[D]]
        else:
            candidates = [current[D]] if args.current else default
        for tiles in candidates:
            try:
                spec = spec_cls(name, D, Features('causal' if causal else 'none'), tiles)
            except ValueError:
                continue
            if launch.fwd_smem_bytes(spec) > 227 * 1024:
                continue
            try:
                launch.forward(spec, *map(api.cupy_ref, (q, k, v, out)), None, api.Options(scale).fields,
                               cp.cuda.get_current_stream().ptr)
                cp.cuda.Device().synchronize()
            except Exception as e:  # a candidate that does not compile or launch is reported, not fatal
                print(f"{d:>4} {s:>6} {causal!s:>6} {tiles_label(tiles):>14} failed: {e}")
                continue
            err = (torch.from_dlpack(out).transpose(1, 2).float() - ref.float()).abs().max().item()
            ms = median_ms(lambda: launch.forward(spec, *map(api.cupy_ref, (q, k, v, out)), None, api.Options(scale).fields,
                                                  cp.cuda.get_current_stream().ptr))
            mark = " *" if current[D] == tiles else ""
            t = tiles_label(tiles)
            print(
                f"{d:>4} {s:>6} {causal!s:>6} {t:>14} {launch.fwd_smem_bytes(spec):>7} {ms:8.3f} "
                f"{flops / ms / 1e9:8.1f} {flops / peer_ms / 1e9:8.1f} {peer_ms / ms:6.2f}  err={err:.3g}{mark}",
                flush=True,
            )
        # Free the GPU arrays before the next point (rebound, not deleted: closures above use them).
        q = k = v = tq = tk = tv = ref = out = None


def window_main(args):
    """--window: candidate tiles under the sliding-window mask beside the band's share of the
    non-causal time of the current tiles."""
    left, right = (int(x) for x in args.window.split(","))
    print(f"{'d':>4} {'seqlen':>6} {'tiles':>14} {'ms':>8} {'TFLOP/s':>8} {'band share ms':>13} {'x share':>8}")
    for d, s in itertools.product(parse_list(args.headdim, int), parse_list(args.seqlen, parse_size)):
        batch, nheads = max(1, args.total_tokens // s), args.hidden // d
        q, k, v = testing.random_qkv(batch, s, s, nheads, nheads, d, args.dtype, xp=cp)
        i = np.arange(s)
        visible = int((np.minimum(s - 1, i + right) - np.maximum(0, i - left) + 1).sum())
        flops = 4 * batch * nheads * visible * d
        out = cp.empty_like(q)
        stream = cp.cuda.get_current_stream().ptr
        name, D = testing.dtype_name(q.dtype), head_dim_bucket(d)
        spec_cls = KERNELS[args.kernel][0]
        refs = [api.cupy_ref(x) for x in (q, k, v, out)]
        device = cp.cuda.Device().id
        full = api.fwd_spec(name, d, Features("none"), device)  # what the library picks
        full_ms = median_ms(lambda: launch.forward(full, *refs, None, api.Options(1 / math.sqrt(d)).fields, stream))
        share = full_ms * visible / (s * s)
        want = api.attention(q, k, v, window_size=(left, right))  # the validated path, whatever tiles it picks
        local = api.Options(1 / math.sqrt(d), Features("local"), window=(left, right))
        picked = api.fwd_spec(name, d, Features("local"), device, local.band)
        candidates = [picked] + [spec_cls(name, D, Features("local"), t)
                                 for t in (parse_tiles(args.tiles, args.kernel) if args.tiles else [])]
        for spec in candidates:
            tiles = spec.tiles

            def run():
                launch.forward(spec, *refs, None, local.fields, stream)

            run()
            err = float(cp.abs(out.astype(cp.float32) - want.astype(cp.float32)).max())
            ms = median_ms(run)
            print(f"{d:>4} {s:>6} {tiles_label(tiles):>14} {ms:8.3f} {flops / ms / 1e9:8.1f} {share:13.3f} "
                  f"{ms / share:8.2f}  err={err:.3g}", flush=True)


if __name__ == "__main__":
    main()
