"""One backward per case under Nsight Compute, cuflash's portable kernel (bwd.cu) beside SDPA's
flash backend (FlashAttention-2's sm80 code) on the same inputs: bf16, 16k tokens, hidden 2048
(issue 15: the portable d256 backward at 0.79-0.85x SDPA flash). Run as
    CUFLASH_DISABLE_SM90=1 ncu --profile-from-start off -k regex:"cuflash_bwd$|flash_bwd_dq_dk_dv" \
        --section SpeedOfLight --section WarpStateStats python kernels_cu/dev/ncu_bwd_portable.py [D:SEQLEN ...]
Each case runs twice first (compile, cache), then once between profiler start and stop.
"""
import sys

import cupy as cp
import torch

import cuflash
from cuflash import testing

for case in sys.argv[1:] or ["256:2048"]:
    d, s = (int(x) for x in case.split(":"))
    b, h = 16384 // s, 2048 // d
    q, k, v = testing.random_qkv(b, s, s, h, h, d, "bf16", xp=cp, seed=0)
    dout = testing.random_like(q)
    out, lse = cuflash.attention(q, k, v, return_lse=True)
    tq, tk, tv = (torch.from_dlpack(x).transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
    tdo = torch.from_dlpack(dout).transpose(1, 2)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)

    def sdpa():
        torch.autograd.grad(tout, (tq, tk, tv), tdo, retain_graph=True)

    for _ in range(2):
        cuflash.attention_backward(dout, q, k, v, out, lse)
        sdpa()
    torch.cuda.synchronize()
    print(f"case d{d} s{s}: cuflash portable backward, then SDPA flash's", flush=True)
    cp.cuda.runtime.profilerStart()
    cuflash.attention_backward(dout, q, k, v, out, lse)
    cp.cuda.runtime.deviceSynchronize()
    sdpa()
    torch.cuda.synchronize()
    cp.cuda.runtime.profilerStop()
