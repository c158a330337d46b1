"""Softcap's accuracy over many draws (bench/NOTES.md s3): for DRAWS fixed seeds of the case
tests/gpu/test_variants.py::test_softcap runs (batch 2, 4 heads, d128, 257 x 257, scale 6 / sqrt(d)),
forward and backward of the kernel family in use (CUFLASH_DISABLE_SM90=1: the portable one), each
output's error against the float64 reference over the plain low-precision computation's error
(the accuracy rule allows 2 + floor / lowp error). Prints, per dtype / softcap / causal, the largest
ratio per output over the draws and how many draws broke the rule. Same seeds in any tree, so
two trees (CUFLASH_KERNELS_DIR) compare draw for draw. DTYPES=bf16 limits the dtypes; FIXED=0 keeps a
bounded softcap's forward off the fixed softmax offset (specs.fixed_offset, bench/NOTES.md s4).
    python kernels_cu/dev/softcap_error.py [DRAWS, default 20]"""
import math
import os
import sys

import cupy as cp

import cuflash
from cuflash import reference, support, testing

if os.environ.get("FIXED") == "0":
    support.fixed_offset = lambda dtype, features, softcap: False

draws = int(sys.argv[1]) if len(sys.argv) > 1 else 20
scale = 6.0 / math.sqrt(128)
for dtype in os.environ.get("DTYPES", "fp16,bf16").split(","):
    for softcap in (5.0, 30.0):
        for causal in (False, True):
            worst, broken = {}, 0
            for seed in range(draws):
                q, k, v = testing.random_qkv(2, 257, 257, 4, 4, 128, dtype, seed=seed, xp=cp)
                dout = testing.random_like(q, seed=1000 + seed)
                opts = dict(causal=causal, softcap=softcap, softmax_scale=scale)
                out, lse = cuflash.attention(q, k, v, return_lse=True, **opts)
                grads = cuflash.attention_backward(dout, q, k, v, out, lse, **opts)
                host = [testing.to_numpy(x) for x in (dout, q, k, v)]
                f64 = reference.attention_forward(*host[1:], precision="float64", **opts)
                flp = reference.attention_forward(*host[1:], precision="lowp", **opts)
                b64 = reference.attention_backward(*host, precision="float64", **opts)
                blp = reference.attention_backward(*host, precision="lowp", **opts)
                bad = False
                for name, got, x64, xlp, kind in [("out", out, f64[0], flp[0], "fwd")] + [
                        (n, g, a, b, "bwd") for n, g, a, b in zip(("dq", "dk", "dv"), grads, b64, blp)]:
                    floor = testing.FLOORS[(kind, dtype)]
                    err = testing.max_abs_err(got, x64)
                    lowp = testing.max_abs_err(xlp, x64)
                    ratio = err / (lowp + floor / 2)
                    worst[name] = max(worst.get(name, 0.0), ratio)
                    bad |= err > 2 * lowp + floor
                broken += bad
            print(f"{dtype} softcap={softcap:4.0f} causal={causal!s:5}: worst err / (lowp + floor/2) "
                  + " ".join(f"{n} {r:.2f}" for n, r in worst.items()) + f"; {broken}/{draws} draws off", flush=True)
