"""Where a backward call's time goes, launch by launch: the dense backward and the varlen one on the same
tokens (every sequence SEQLEN long), each kernel's median time over REP calls (CUDA events around each
launch.run; recorded plans off, so every launch goes through it), and the whole call's (host gaps and
the memsets of launch.clear included). For issue 11: whether the varlen backward's gap to the dense call
is its main kernel or the steps around it (bwd_prepare, bwd_convert).
    python kernels_cu/dev/bwd_steps.py [HEAD_DIM=128] [SEQLEN=8192] [CAUSAL=1] [REP=10]"""
import collections
import sys

import cupy as cp
import numpy as np

import cuflash
from cuflash import api, launch, testing

DEFAULTS = ["128", "8192", "1", "10"]  # HEAD_DIM, SEQLEN, CAUSAL, REP
d, n, causal, rep = (int(a) for a in sys.argv[1:] + DEFAULTS[len(sys.argv) - 1:])
tokens, heads = 16384, 2048 // d
batch = tokens // n
api.remember = lambda key, plan: None  # no recorded plans: each call launches through launch.run
# (each dense call still records its plan after it ran, through launch.run: timed_run leaves those
# steps untimed; until 2026-12-07 it timed them too, as a second "launch" of ~0 ms that halved the
# dense call's medians and showed as x2)
steps = []
run = launch.run


def timed_run(spec, device, grid, block, smem, packer, fields, stream, maps=None):
    if getattr(launch._recording, "steps", None) is not None:  # a plan being recorded: nothing launches
        return run(spec, device, grid, block, smem, packer, fields, stream, maps)
    s = cp.cuda.ExternalStream(stream)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(s)
    run(spec, device, grid, block, smem, packer, fields, stream, maps)
    end.record(s)
    steps.append((spec.name, start, end))


launch.run = timed_run
q, k, v = testing.random_qkv(batch, n, n, heads, heads, d, "bf16", xp=cp)
dout = testing.random_like(q)
out, lse = cuflash.attention(q, k, v, causal=causal, return_lse=True)
flat = [x.reshape(tokens, heads, d) for x in (dout, q, k, v)]
cu = cp.arange(0, tokens + 1, n, dtype=cp.int32)
out_v, lse_v = cuflash.attention_varlen(*flat[1:], cu, cu, n, n, causal=causal, return_lse=True)
calls = {
    "dense": lambda: cuflash.attention_backward(dout, q, k, v, out, lse, causal=causal),
    # check_lengths=False, as a training loop whose offsets are known good: no host copy and sync per call
    "varlen": lambda: cuflash.attention_varlen_backward(*flat, out_v, lse_v, cu, cu, n, n, causal=causal,
                                                        check_lengths=False),
}
busy = cp.empty(256 << 20, dtype=cp.uint8)
print(f"bf16 d{d}, {batch} x {n} tokens, {heads} heads, causal={bool(causal)}; ms, median of {rep}")
for name, call in calls.items():
    for _ in range(3):
        call()
    per, total = collections.defaultdict(list), []
    for _ in range(rep):
        steps.clear()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        # ~0.1 ms of GPU work first, so that the host work before the call's first launch overlaps it
        # (else that launch's event pair, on an idle GPU, would span launch.run's host work as well)
        busy.fill(1)
        start.record()
        call()
        end.record()
        end.synchronize()
        total.append(cp.cuda.get_elapsed_time(start, end))
        for step, a, b in steps:
            per[step].append(cp.cuda.get_elapsed_time(a, b))
    print(f"{name}: call {np.median(total):.3f}")
    for step, ts in per.items():
        print(f"  {step:48s} {np.median(ts):.3f} x{len(ts) // rep}")
