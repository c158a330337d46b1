"""Float64 check of the warp-specialised forward where a tile's last consumer warpgroups lie past the
sequence's end (fwd_sm90_ws.cu idle_step, kernels_cu/dev/fwd90_idle_walk.patch): query lengths that end 1-63 rows into a 128- or 192-row
tile, with every feature the kernel takes, dense and varlen; every selected kernel's name printed."""
import os

import cupy as cp
import numpy as np

import cuflash
from cuflash import launch, reference, testing, tma

tma.MIN_FLOP = 0  # small calls take the TMA loads too
names = set()
run = launch.run


def recording_run(spec, *args, **kwargs):
    names.add(spec.name)
    return run(spec, *args, **kwargs)


launch.run = recording_run
failures = 0


def check(label, got, refs, dtype):
    global failures
    try:
        errs = [testing.check_accuracy(n, g, r64, rl, dtype)["err"] for n, g, (r64, rl) in zip(("out", "lse"), got, refs)]
        print(f"ok   {label}: out err {errs[0]:.2e}", flush=True)
    except AssertionError as err:
        failures += 1
        print(f"FAIL {label}: {err}", flush=True)


for d in [int(x) for x in os.environ.get("DIMS", "32,64,96,128,256").split(",")]:
    for i, kw in enumerate([dict(), dict(causal=True), dict(window_size=(100, 0)), dict(softcap=30.0),
                            dict(causal=True, sink=True), dict(alibi=True), dict(causal=True, bias=True),
                            dict(dropout=True)]):
        # rows: 1000 ends 40 rows into a 192-row tile; 1050 26 rows into a 128-row one; 100 in the first tile
        sq = (1000, 1050, 100)[i % 3]
        sk = (1031, 1050, 300)[i % 3]
        dtype = "bf16" if i % 2 == 0 else "fp16"
        q, k, v = testing.random_qkv(2, sq, sk, 4, 2, d, dtype, xp=cp, seed=i)
        extra, ref_extra = {}, {}
        if kw.pop("sink", False):
            extra["learnable_sink"] = cp.asarray(np.linspace(-1, 2, 4), dtype=cp.float32)
        if kw.pop("alibi", False):
            extra["alibi_slopes"] = cp.asarray(np.linspace(0.01, 0.2, 4), dtype=cp.float32)
        if kw.pop("bias", False):
            extra["bias"] = testing.random_like(cp.empty((2, 4, sq, sk), cp.uint16).view(q.dtype))
        if kw.pop("dropout", False):
            extra.update(dropout_p=0.2, seed=5)
            ref_extra["dropout_p"] = 0.2
            ref_extra["dropout_mask"] = reference.dropout_keep_mask(5, 0, 2, 4, sq, sk, 0.2)
        out = testing.poison(cp.empty_like(q))
        out, lse = cuflash.attention(q, k, v, out=out, return_lse=True, **kw, **extra)
        qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
        ex = {n: testing.to_numpy(x) for n, x in extra.items() if n not in ("dropout_p", "seed")}
        refs = [reference.attention_forward(qh, kh, vh, **kw, **ex, **ref_extra, precision=p) for p in ("float64", "lowp")]
        check(f"d{d} {dtype} {sq}x{sk} {kw} {list(extra)}", (out, lse), list(zip(*refs)), dtype)
    lens = [0, 1, 37, 64, 65, 129, 200, 500, 1000, 3]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    for kw in (dict(), dict(causal=True), dict(window_size=(100, 0))):
        q, k, v = (x[0] for x in testing.random_qkv(1, int(cu[-1]), int(cu[-1]), 8, 2, d, "bf16", xp=cp, seed=7))
        cuc = cp.asarray(cu)
        out, lse = cuflash.attention_varlen(q, k, v, cuc, cuc, max(lens), max(lens), return_lse=True, **kw)
        qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
        refs = [reference.attention_forward_varlen(qh, kh, vh, cu, cu, **kw, precision=p) for p in ("float64", "lowp")]
        check(f"d{d} varlen {kw}", (out, lse), list(zip(*refs)), "bf16")
print("kernels:", sorted(n for n in names if n.startswith("fwd90")))
print("failures:", failures)
