"""Dev probe: one decode call of cuflash and one of SDPA's cuDNN backend on the same caches,
inside a profiler range, for ncu to compare (warm-up calls run outside the range):

    PYTHONPATH=. ncu --profile-from-start off --section SpeedOfLight ... \
        python3 kernels_cu/dev/decode_profile.py --batch 64 --keys 8192
"""
import argparse

import cupy as cp
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import cuflash

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--keys", type=int, default=8192)
ap.add_argument("--page", type=int, default=0)
ap.add_argument("--tile", default="", help="block_n,warps,stages (specs.DecodeTiles); default: the table's")
args = ap.parse_args()
if args.tile:
    from cuflash import specs
    specs.DECODE_TILES[128] = [specs.DecodeTiles(*(int(x) for x in args.tile.split(",")))]
H, HK, D = 32, 8, 128
q = torch.randn(args.batch, 1, H, D, device="cuda", dtype=torch.bfloat16)
kc, vc = (torch.randn(args.batch, args.keys, HK, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
qx, kx, vx = (cp.from_dlpack(t) for t in (q, kc, vc))
extra = {}
if args.page:
    n = args.batch * args.keys // args.page
    perm = torch.randperm(n, device="cuda", dtype=torch.int32)
    kp, vp = (torch.empty(n, args.page, HK, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    kp[perm.long()] = kc.reshape(n, args.page, HK, D)
    vp[perm.long()] = vc.reshape(n, args.page, HK, D)
    kx, vx = cp.from_dlpack(kp), cp.from_dlpack(vp)
    extra = {"block_table": cp.from_dlpack(perm.reshape(args.batch, -1)), "check_indices": False}


def ours():
    return cuflash.attention_with_kvcache(qx, kx, vx, cache_seqlens=args.keys, **extra)


def cudnn():
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2),
                                              enable_gqa=True)


for _ in range(3):
    ours(), cudnn()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
ours()
cudnn()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
