"""Backward tile tuner: time candidate BwdTiles per head dim beside torch SDPA's flash backward.

Run on a GPU machine from the repo root:
    PYTHONPATH=. python bench/tune_bwd.py --headdim 64,128,256 --seqlen 2k,8k
Each candidate's dq, dk, dv are checked against SDPA's gradients first, then the
backward alone (prepare + main kernel + conversions, after one forward) is timed
with CUDA events (warm-up, L2 flushed before every repetition, median).
The deterministic variant of the chosen tiles is timed too (column `det/nondet`):
that is the measured cost of deterministic=True. Candidates that need more
shared memory than the GPU allows, or that do not compile, are reported and
skipped. The chosen tiles go into cuflash/specs.py BWD_TILES.
"""
from __future__ import annotations

import argparse
import itertools
import math

import cupy as cp
import torch

from cuflash.bench.configs import parse_list, parse_size
from cuflash.bench.timing import median_ms
from cuflash import api, launch, testing
from cuflash.specs import BWD_TILES, BWD_TILES_FP32, BwdSpec, BwdTiles, Features, head_dim_bucket

#: (block_m, block_n, warps, sdp_warps_n, dkv_warps_n, dq_warps_m, dq_pass_dims=0, k_unroll=0);
#: candidates invalid for a head dim are skipped.
CANDIDATES = [
    BwdTiles(128, 128, 8, 4, 4, 4),
    BwdTiles(128, 128, 8, 4, 4, 4, k_unroll=2),
    BwdTiles(128, 128, 8, 4, 4, 4, k_unroll=2, k_ahead=True),
    BwdTiles(64, 128, 8, 4, 4, 2),
    BwdTiles(64, 128, 8, 4, 4, 2, k_unroll=2),
    BwdTiles(64, 128, 8, 4, 4, 4),
    BwdTiles(64, 128, 8, 2, 4, 2),
    BwdTiles(128, 64, 8, 2, 2, 4),
    BwdTiles(64, 64, 8, 2, 4, 4),
    BwdTiles(64, 64, 8, 2, 4, 4, k_unroll=2),
    BwdTiles(64, 64, 8, 2, 2, 2),
    BwdTiles(64, 64, 8, 2, 2, 2, k_unroll=2),
    BwdTiles(64, 64, 8, 2, 2, 2, k_unroll=2, k_ahead=True),
    BwdTiles(64, 64, 8, 4, 4, 2),
    BwdTiles(64, 64, 4, 4, 4, 2),
    BwdTiles(64, 128, 8, 8, 8, 2),  # P^T and dS^T in registers for dV, dK
]


def describe(t: BwdTiles) -> str:
    extra = f"/p{t.dq_pass_dims}" if t.dq_pass_dims else ""
    ahead = "a" if t.k_ahead else ""
    return (f"{t.block_m}x{t.block_n}w{t.warps}s{t.sdp_warps_n}k{t.dkv_warps_n}q{t.dq_warps_m}u{t.k_unroll}{ahead}"
            f"{extra}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--headdim", default="64,128,256")
    ap.add_argument("--seqlen", default="2k,8k")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--causal", default="both", choices=["true", "false", "both"])
    ap.add_argument("--total-tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--current", action="store_true", help="time only BWD_TILES (and its deterministic mode)")
    ap.add_argument("--tiles", help="time these tiles (plus the current ones): BMxBNxWARPSxSDPxDKVxDQ[uK], "
                    "e.g. 32x64x4x4x4x2u2")
    args = ap.parse_args()

    smem_limit = cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]

    causals = {"true": [True], "false": [False], "both": [False, True]}[args.causal]
    print(f"{'d':>4} {'seqlen':>6} {'causal':>6} {'tiles':>24} {'smem':>7} {'ms':>8} {'TFLOP/s':>8} "
          f"{'sdpa':>8} {'ratio':>6}")
    for d, s, causal in itertools.product(parse_list(args.headdim, int), parse_list(args.seqlen, parse_size), causals):
        batch, nheads = max(1, args.total_tokens // s), max(1, args.hidden // d)
        q, k, v = testing.random_qkv(batch, s, s, nheads, nheads, d, args.dtype, xp=cp)
        dout = testing.random_like(q)
        # backward = 2.5 x forward FLOPs (DESIGN §4)
        flops = 2.5 * 4 * batch * nheads * s * s * d / (2 if causal else 1)
        out, lse = api.attention(q, k, v, causal=causal, return_lse=True)

        tq, tk, tv = (torch.from_dlpack(x).transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
        tdo = torch.from_dlpack(dout).transpose(1, 2)
        # float32: SDPA's efficient backend (its flash backend has no float32), tiles from BWD_TILES_FP32
        backend = "EFFICIENT_ATTENTION" if args.dtype == "fp32" else "FLASH_ATTENTION"
        with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, backend)):
            tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            ref = torch.autograd.grad(tout, (tq, tk, tv), tdo, retain_graph=True)

            def peer():
                torch.autograd.grad(tout, (tq, tk, tv), tdo, retain_graph=True)

            peer_ms = median_ms(peer)

        grads = (cp.empty_like(q), cp.empty_like(k), cp.empty_like(v))
        scale = 1 / math.sqrt(d)
        name = testing.dtype_name(q.dtype)
        D = head_dim_bucket(d)
        timed = {}
        current = BWD_TILES_FP32[D][0] if name == "fp32" else BWD_TILES[D]
        if args.tiles:
            candidates = [current] + [t for t in map(parse_tiles, args.tiles.split(",")) if t != current]
        else:
            candidates = [current] if args.current else CANDIDATES
        for tiles, deterministic in [(t, False) for t in candidates] + [(current, True)]:
            try:
                spec = BwdSpec(name, D, Features('causal' if causal else 'none'), deterministic, tiles)
            except ValueError:
                continue
            smem = launch.bwd_smem_bytes(spec)
            label = describe(tiles) + (" det" if deterministic else "")
            if smem > smem_limit:
                print(f"{d:>4} {s:>6} {causal!s:>6} {label:>24} {smem:>7} needs more shared memory than {smem_limit}")
                continue

            def run():
                launch.backward(spec, *map(api.cupy_ref, (dout, q, k, v, out, lse, *grads)), api.Options(scale).fields,
                                None, api.cupy_alloc, cp.cuda.get_current_stream().ptr)

            try:
                run()
                cp.cuda.Device().synchronize()
            except Exception as e:  # a candidate that does not compile or launch is reported, not fatal
                print(f"{d:>4} {s:>6} {causal!s:>6} {label:>24} failed: {e}")
                continue
            err = max(
                (torch.from_dlpack(g).transpose(1, 2).float() - r.float()).abs().max().item()
                for g, r in zip(grads, ref)
            )
            ms = median_ms(run)
            timed[(tiles, deterministic)] = ms
            mark = " *" if current == tiles and not deterministic else ""
            print(
                f"{d:>4} {s:>6} {causal!s:>6} {label:>24} {smem:>7} {ms:8.3f} {flops / ms / 1e9:8.1f} "
                f"{flops / peer_ms / 1e9:8.1f} {peer_ms / ms:6.2f}  err={err:.3g}{mark}",
                flush=True,
            )
        base, det = timed.get((current, False)), timed.get((current, True))
        if base and det:
            print(f"{d:>4} {s:>6} {causal!s:>6} det/nondet = {det / base:.3f}", flush=True)
        # Free the GPU arrays before the next point (rebound, not deleted: closures above use them).
        q = k = v = dout = out = lse = tq = tk = tv = tdo = tout = ref = grads = None


def parse_tiles(text: str) -> BwdTiles:
    """'32x64x4x4x4x2u2' -> BwdTiles(32, 64, 4, 4, 4, 2, k_unroll=2); a trailing 'a' sets k_ahead."""
    shape, _, unroll = text.strip().partition("u")
    ahead = unroll.endswith("a")
    return BwdTiles(*(int(x) for x in shape.split("x")), k_unroll=int(unroll.rstrip("a") or 0), k_ahead=ahead)


if __name__ == "__main__":
    main()
