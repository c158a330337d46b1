"""Compile fwd90_bf16_d64_full_m192n128s2 (the d64 512 plain forward) as a first use does: argv[1] "plain", "torch"
(torch imported first) or "cuda" (torch's CUDA context and cuDNN started first, as fwd_grid_ab.py PEER=cudnn does
before its first cuflash call). Prints its spills, the cubin's hash, the header folders and the NVRTC libraries
the process mapped."""
import hashlib
import sys

if sys.argv[1] in ("torch", "cuda"):
    import torch
    if sys.argv[1] == "cuda":
        x = torch.randn(1, 64, 4, 64, device="cuda", dtype=torch.bfloat16)
        torch.nn.functional.scaled_dot_product_attention(x, x, x)
        torch.cuda.synchronize()
from cuflash import support
from cuflash.compile import cache, nvrtc
from cuflash.specs import Features

print(sys.argv[1], "nvrtc", nvrtc.nvrtc_version(), "include", nvrtc.include_dirs())
spec = support.fwd_spec("bf16", 64, Features(), (9, 0), seqlen_q=512)
prepared = cache.prepare(spec, "sm_90a")
result = cache._compile(prepared)
print(sys.argv[1], spec.name, "key", prepared.key[:12], "spills", result.spill_stores, result.spill_loads,
      "cubin", hashlib.sha256(result.cubin).hexdigest()[:12])
for line in open("/proc/self/maps"):
    if "nvrtc" in line or "ptx" in line.lower():
        print(sys.argv[1], line.split()[-1])
