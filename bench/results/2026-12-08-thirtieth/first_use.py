"""Compile fwd90_bf16_d64_full_m192n128s2 (the d64 512 plain forward) as a first use does, after importing torch
when argv[1] is "torch"; print its spills and the NVRTC libraries the process mapped."""
import sys, os
if sys.argv[1] == "torch":
    import torch
from cuflash import support
from cuflash.specs import Features
from cuflash.compile import cache, nvrtc
print("nvrtc", nvrtc.nvrtc_version())
s = support.fwd_spec("bf16", 64, Features(), (9, 0), seqlen_q=512)
p = cache.prepare(s, "sm_90a")
r = cache._compile(p)
print(s.name, "spills", r.spill_stores, r.spill_loads)
for line in open("/proc/self/maps"):
    if "nvrtc" in line or "ptx" in line.lower():
        print(line.split()[-1])
