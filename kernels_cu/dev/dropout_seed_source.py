"""Time the dropout kernels with the seed as launch values (Features.dropout 1: cuflash.attention's
seed) against the seed read from device memory (Features.dropout 2: what cuflash.torch and
cuflash.jax run), forward and backward, bf16, 16k tokens (batch = 16384 / seqlen, nheads = 2048 / d),
causal and not, dropout 0.1; the two alternated, two rounds. Both draw the same mask, so the outputs
are compared bit for bit first (out, and dq / dk / dv of the deterministic backward).
    PYTHONPATH=. python kernels_cu/dev/dropout_seed_source.py [HEAD_DIMS, default 64,128] [SEQLENS, default 2048,8192]
"""
import itertools
import sys

import cupy as cp

from cuflash import api, testing
from cuflash.bench.timing import median_ms

head_dims = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "64,128").split(",")]
seqlens = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "2048,8192").split(",")]
P, SEED, OFFSET = 0.1, 0x1234_5678_9ABC, 7
WORDS = cp.asarray([SEED & 0xFFFFFFFF, SEED >> 32, OFFSET], dtype=cp.uint32)  # (seed_lo, seed_hi, offset)


def calls(d, s, causal):
    """{kind: (forward, backward)} closures over one problem; kind 1 and kind 2 draw the same mask."""
    q, k, v = testing.random_qkv(16384 // s, s, s, 2048 // d, 2048 // d, d, "bf16", xp=cp)
    dout = testing.random_like(q)
    refs = [api.cupy_ref(x) for x in (q, k, v, dout)]
    stream = cp.cuda.get_current_stream().ptr
    made = {}
    for kind, address in (("launch", 0), ("memory", WORDS.data.ptr)):
        drop = api.dropout_options(P, (0, 0) if address else (SEED, OFFSET))
        opts = api.with_dropout(api.options(refs[0], None, causal), drop, address)
        out, lse = cp.empty_like(q), cp.empty(q.shape[:1] + (q.shape[2], q.shape[1]), cp.float32)
        grads = [cp.empty_like(x) for x in (q, k, v)]
        orefs, lref, grefs = api.cupy_ref(out), api.cupy_ref(lse), [api.cupy_ref(x) for x in grads]

        def fwd(opts=opts, orefs=orefs, lref=lref):
            api.run_forward(*refs[:3], orefs, lref, opts, stream)

        def bwd(opts=opts, orefs=orefs, lref=lref, grefs=grefs, deterministic=False):
            api.run_backward(refs[3], *refs[:3], orefs, lref, *grefs, opts, deterministic, None, api.cupy_alloc,
                             stream)

        fwd()
        bwd(deterministic=True)
        made[kind] = (fwd, bwd, [out, *grads])
    a, b = made["launch"][2], made["memory"][2]
    for name, x, y in zip(("out", "dq", "dk", "dv"), a, b):
        assert bool(cp.array_equal(x, y)), f"d{d} s{s} causal={causal}: {name} differs between the seed sources"
    return {kind: made[kind][:2] for kind in made}


print(f"{'d':>4} {'seqlen':>6} {'causal':>6} {'dir':>4} {'launch ms':>22} {'memory ms':>22} {'memory/launch':>13}")
for d, s, causal in itertools.product(head_dims, seqlens, (False, True)):
    fns = calls(d, s, causal)
    for i, direction in enumerate(("fwd", "bwd")):
        times = {"launch": [], "memory": []}
        for _ in range(2):
            for kind in ("launch", "memory"):
                times[kind].append(median_ms(fns[kind][i], warmup=5, rep=20))
        ratio = sum(times["memory"]) / sum(times["launch"])
        fmt = lambda ts: " / ".join(f"{t:.4f}" for t in ts)  # noqa: E731
        print(f"{d:>4} {s:>6} {str(causal):>6} {direction:>4} {fmt(times['launch']):>22} {fmt(times['memory']):>22} "
              f"{ratio:>13.3f}", flush=True)
