"""Time cuflash.attention (bf16, H200 16k-token shapes: batch = 16384 / seqlen, nheads = 2048 / d,
21 at d96, 12 at d160, 10 at d192), causal and not, 1k / 2k / 8k, with the warp-specialised
forward's grid as cuflash picks it, or:
  PERSIST=0  every kernel built and launched one CTA per tile (FwdSm90Spec.persistent forced off);
  QBUF=1     one Q buffer on the persistent grid (FwdSm90Spec.q_buffers forced to 1);
  TILES=64:128x128,...  other tiles (Br x Bc, two stages; 128x128s3: three; 64x64c2: two CTAs per SM, with
             kernels_cu/dev/fwd90_ws_two_ctas.patch applied) for those head dims
             (d64 causal on two consumer warpgroups: bench/NOTES.md v12);
  SHORT_TILES=64:128x64,...  other tiles for the short causal calls (specs.FWD_SM90_SHORT_CAUSAL_TILES);
  SHORT_ROWS=64:2048,...  the short causal calls' row limits instead (specs.FWD_SM90_SHORT_CAUSAL;
             "none": no short tiles);
  VARLEN=1   the same tokens as a varlen batch of equal lengths (cuflash.attention_varlen);
  PERSIST_DIMS=224,256  these head dims on the persistent grid too (specs.FWD_SM90_PERSISTENT_HEAD_DIMS);
  SEQLENS=1024,4096,16384  these query lengths instead of 1k, 2k and 8k;
  PERSIST_LOCAL=1  every band on the persistent grid (specs.FWD_SM90_PERSISTENT_BAND unbounded);
  PERSIST_ROWS=N  dense calls past N query rows on the kernels built for one CTA per tile
             (specs.FWD_SM90_PERSISTENT_ROWS; 1000000: never);
  NARROW=0   no narrow tiles for short bands (specs.FWD_SM90_NARROW_BAND emptied);
  WINDOWS=128:0,256:0,...  time these windows (left:right) at 16k, batch 1, instead of the grid above,
             beside a copy of as many bytes as Q, K, V and O (the DRAM floor of a narrow band).
  PEER=cudnn  each dense point also timed on torch SDPA's cuDNN backend (same inputs, by DLPack);
  SOFTCAP=30  every call with this softcap; FIXED=0 keeps its softmax off the fixed offset
             (specs.fixed_offset), FOLD=1 folds it at every head dim (FwdSm90Spec.softcap_folded).
    python kernels_cu/dev/fwd_grid_ab.py LABEL [HEAD_DIMS, default 64,128]
Run it in an older tree's directory (PYTHONPATH there) to time that tree. CUDA events, a 256 MB
write between calls to flush the L2, median of 15 after 10 warm-up calls (bench/NOTES.md v10-v13)."""
import os
import sys

import cupy as cp
import numpy as np

import cuflash
from cuflash import specs, support, testing

if os.environ.get("PERSIST") == "0":
    specs.FwdSm90Spec.persistent = property(lambda self: False)
extra = [int(x) for x in filter(None, os.environ.get("PERSIST_DIMS", "").split(","))]
specs.FWD_SM90_PERSISTENT_HEAD_DIMS = tuple(specs.FWD_SM90_PERSISTENT_HEAD_DIMS) + tuple(extra)
if os.environ.get("PERSIST_LOCAL") == "1":
    specs.FWD_SM90_PERSISTENT_BAND = 1 << 30
if "PERSIST_ROWS" in os.environ:
    specs.FWD_SM90_PERSISTENT_ROWS = int(os.environ["PERSIST_ROWS"])
if os.environ.get("NARROW") == "0":
    specs.FWD_SM90_NARROW_BAND.clear()
if os.environ.get("FIXED") == "0":
    support.fixed_offset = lambda dtype, features, softcap: False
if os.environ.get("FOLD") == "1":
    specs.FwdSm90Spec.softcap_folded = property(lambda self: self.features.softcap_alone)
softcap = float(os.environ.get("SOFTCAP", "0"))
if os.environ.get("QBUF") == "1":
    specs.FwdSm90Spec.q_buffers = property(lambda self: 1)


def tiles(shape):
    """FwdSm90Tiles of "BRxBC" (two stages), "BRxBCsS", and either with "cN" (N CTAs per SM) after BC."""
    shape, _, stages = shape.partition("s")
    shape, _, ctas = shape.partition("c")
    block_m, block_n = (int(x) for x in shape.split("x"))
    return specs.FwdSm90Tiles(block_m, block_n, ctas_per_sm=int(ctas or 1), stages=int(stages or 2))


for name, table in (("TILES", specs.FWD_SM90_TILES), ("SHORT_TILES", specs.FWD_SM90_SHORT_CAUSAL_TILES)):
    for item in filter(None, os.environ.get(name, "").split(",")):
        d, shape = item.split(":")
        table[int(d)] = tiles(shape)
if "SHORT_ROWS" in os.environ:
    specs.FWD_SM90_SHORT_CAUSAL = {int(d): int(rows) for d, rows in (
        item.split(":") for item in os.environ["SHORT_ROWS"].split(",") if ":" in item)}
varlen = os.environ.get("VARLEN") == "1"
label = sys.argv[1]
dims = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "64,128").split(",")]
flush = cp.empty(256 << 20, dtype=cp.uint8)


def median_ms(call):
    """Median of 15 timed calls after 10 warm-up ones, the L2 flushed before each."""
    times = []
    for i in range(25):
        flush.fill(i & 255)
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        call()
        e1.record()
        e1.synchronize()
        if i >= 10:
            times.append(cp.cuda.get_elapsed_time(e0, e1))
    return float(np.median(times))


seqlens = [int(x) for x in os.environ.get("SEQLENS", "1024,2048,8192").split(",")]
windows = [tuple(int(x) for x in w.split(":")) for w in filter(None, os.environ.get("WINDOWS", "").split(","))]
for d in dims:
    h = {96: 21, 160: 12, 192: 10}.get(d, 2048 // d)
    if windows:
        q, k, v = testing.random_qkv(1, 16384, 16384, h, h, d, "bf16", xp=cp, seed=0)
        # the DRAM floor of a band call: reading Q, K and V and writing O, timed as copies of as many bytes
        src, dst = cp.empty(2 * q.size, q.dtype), cp.empty(2 * q.size, q.dtype)
        ms = median_ms(lambda: cp.copyto(dst, src))
        print(f"{label:8s} d{d} s16384 copy of Q, K, V and O's bytes: {ms:.4f} ms "
              f"{4 * q.nbytes / ms / 1e9:.2f} TB/s", flush=True)
        for window in windows:
            out = cuflash.attention(q, k, v, window_size=window)
            ms = median_ms(lambda: cuflash.attention(q, k, v, window_size=window, out=out))
            print(f"{label:8s} d{d} s16384 window={window}: {ms:.4f} ms", flush=True)
        continue
    for causal in (True, False):
        for s in seqlens:
            b = 16384 // s
            q, k, v = testing.random_qkv(b, s, s, h, h, d, "bf16", xp=cp, seed=0)
            if varlen:
                q, k, v = (x.reshape(b * s, h, d) for x in (q, k, v))
                cu = cp.arange(0, b * s + 1, s, dtype=cp.int32)
                out = cuflash.attention_varlen(q, k, v, cu, cu, s, s, causal=causal)
                ms = median_ms(lambda: cuflash.attention_varlen(q, k, v, cu, cu, s, s, causal=causal, out=out,
                                                                check_lengths=False))
            else:
                out = cuflash.attention(q, k, v, causal=causal, softcap=softcap)
                ms = median_ms(lambda: cuflash.attention(q, k, v, causal=causal, softcap=softcap, out=out))
            flops = 4 * b * h * s * s * d / (2 if causal else 1)
            peer = ""
            if os.environ.get("PEER") == "cudnn" and not varlen:
                import torch
                from torch.nn.attention import SDPBackend, sdpa_kernel
                tq, tk, tv = (torch.from_dlpack(x).transpose(1, 2) for x in (q, k, v))
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    peer_ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                        tq, tk, tv, is_causal=causal))
                peer = f" cudnn {peer_ms:.4f} ms x{peer_ms / ms:.3f}"
            print(f"{label:8s} d{d} s{s} causal={int(causal)}: {ms:.4f} ms {flops / ms / 1e9:.1f} TFLOP/s{peer}", flush=True)
