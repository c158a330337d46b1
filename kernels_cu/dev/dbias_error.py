"""The per-key bias's gradient over many draws: the case of tests/gpu/test_bias.py
test_aligned_biases[sm90-per_key-256] that failed now and then (batch 2, 4 heads, d256, 200 x 320
keys, bf16, a per-key bias (2, 1, 1, 320) of scale 2, causal and not), for DRAWS fixed seeds, on
the kernel family in use (CUFLASH_DISABLE_SM90=1: the portable one). Per draw and output: the
error against the float64 reference, the plain bf16 computation's error (reference lowp) and the
share of what the accuracy rule allows (err / (2 lowp + floor); above 1 breaks it). Prints the
worst share per output, how many draws broke the rule, and for dbias the spread of err and of
lowp over the draws: whether a failing draw has a large error or a small lowp error (the
allowance), and where its worst element lies (key, and the dbias value there). Same seeds in any
tree (CUFLASH_KERNELS_DIR), so two trees compare draw for draw.
    python kernels_cu/dev/dbias_error.py [DRAWS, default 30]"""
import sys

import cupy as cp
import numpy as np

import cuflash
from cuflash import reference, testing

draws = int(sys.argv[1]) if len(sys.argv) > 1 else 30
dtype, floor = "bf16", testing.FLOORS[("bwd", "bf16")]
for causal in (False, True):
    worst, broken, rows = {}, 0, []
    for seed in range(draws):
        q, k, v = testing.random_qkv(2, 200, 320, 4, 4, 256, dtype, seed=seed, xp=cp)
        dout = testing.random_like(q, seed=1000 + seed)
        b = (np.random.default_rng(2000 + seed).standard_normal((2, 1, 1, 320)) * 2.0)
        b = b.astype(testing.resolve_dtype(dtype))
        bias = cp.asarray(b.view(np.uint16)).view(b.dtype)
        out, lse = cuflash.attention(q, k, v, bias=bias, causal=causal, return_lse=True)
        grads = cuflash.attention_backward(dout, q, k, v, out, lse, bias=bias, causal=causal,
                                           bias_requires_grad=True)
        host = [testing.to_numpy(x) for x in (dout, q, k, v)]
        opts = dict(causal=causal, bias=b)
        b64 = reference.attention_backward(*host, precision="float64", **opts)
        blp = reference.attention_backward(*host, precision="lowp", **opts)
        bad = False
        for name, got, x64, xlp in zip(("dq", "dk", "dv", "dbias"), grads[:4], b64[:4], blp[:4]):
            err = testing.max_abs_err(got, x64)
            lowp = testing.max_abs_err(xlp, x64)
            share = err / (2 * lowp + floor)
            worst[name] = max(worst.get(name, 0.0), share)
            bad |= share > 1
            if name == "dbias":
                g = testing.to_numpy(got).astype(np.float64)
                i = np.unravel_index(np.argmax(np.abs(g - x64)), g.shape)
                rows.append((seed, err, lowp, share, i[0], i[-1], x64[i]))
        broken += bad
    print(f"causal={causal!s:5}: worst err / (2 lowp + floor) "
          + " ".join(f"{n} {r:.2f}" for n, r in worst.items()) + f"; {broken}/{draws} draws off", flush=True)
    errs, lows = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    print(f"  dbias err min / median / max {errs.min():.3g} / {np.median(errs):.3g} / {errs.max():.3g}; "
          f"lowp {lows.min():.3g} / {np.median(lows):.3g} / {lows.max():.3g}; floor {floor:.3g}")
    for seed, err, lowp, share, bi, key, ref in sorted(rows, key=lambda r: -r[3])[:5]:
        print(f"  seed {seed:3d}: dbias err {err:.3g} lowp {lowp:.3g} share {share:.2f} at batch {bi} key {key}"
              f" (float64 value {ref:.3g})")
