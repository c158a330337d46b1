"""One forward per case under Nsight Compute, cuflash beside SDPA's cuDNN backend on the same inputs
(bf16, 16k tokens, the short lengths where cuflash trails cuDNN: bench/NOTES.md v20-v23). Run as
    ncu --profile-from-start off --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section WarpStateStats --section Occupancy python kernels_cu/dev/ncu_short.py
Each case is called twice first (compile, cache, plan), then once between profiler start and stop.
CASES=64:512:1,... (head dim:seqlen:causal) profiles those cases instead.
WINDOW=256:0 profiles cuflash alone on that sliding window instead (d128, 16k, batch 1, 16 heads;
bench/NOTES.md w1-w2), with a copy of as many bytes (Q, K, V read, O written) beside it.
"""
import os

import cupy as cp
import torch

import cuflash
from cuflash import testing

CASES = [(64, 512, True), (256, 512, True), (256, 512, False)]  # (head dim, seqlen, causal)
if "CASES" in os.environ:  # CASES=64:512:1,128:512:0 (head dim:seqlen:causal)
    CASES = [tuple(int(x) for x in c.split(":")) for c in os.environ["CASES"].split(",")]
    CASES = [(d, s, bool(c)) for d, s, c in CASES]

if "WINDOW" in os.environ:
    window = tuple(int(x) for x in os.environ["WINDOW"].split(":"))
    q, k, v = testing.random_qkv(1, 16384, 16384, 16, 16, 128, "bf16", xp=cp, seed=0)
    src, dst = cp.empty(2 * q.size, q.dtype), cp.empty(2 * q.size, q.dtype)
    for _ in range(2):
        cuflash.attention(q, k, v, window_size=window)
        cp.copyto(dst, src)
    cp.cuda.runtime.deviceSynchronize()
    print(f"case d128 s16384 window={window}: cuflash, then a copy of Q, K, V and O's bytes", flush=True)
    cp.cuda.runtime.profilerStart()
    cuflash.attention(q, k, v, window_size=window)
    cp.copyto(dst, src)
    cp.cuda.runtime.deviceSynchronize()
    cp.cuda.runtime.profilerStop()
    CASES = []

for d, s, causal in CASES:
    b, h = 16384 // s, 2048 // d
    q, k, v = testing.random_qkv(b, s, s, h, h, d, "bf16", xp=cp, seed=0)
    tq, tk, tv = (torch.from_dlpack(x).transpose(1, 2) for x in (q, k, v))

    def sdpa():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

    for _ in range(2):
        cuflash.attention(q, k, v, causal=causal)
        sdpa()
    torch.cuda.synchronize()
    cp.cuda.runtime.deviceSynchronize()
    print(f"case d{d} s{s} causal={causal}: cuflash, then cudnn", flush=True)
    cp.cuda.runtime.profilerStart()
    cuflash.attention(q, k, v, causal=causal)
    cp.cuda.runtime.deviceSynchronize()
    sdpa()
    torch.cuda.synchronize()
    cp.cuda.runtime.profilerStop()
