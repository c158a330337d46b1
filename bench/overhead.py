"""Host time per call at small shapes: cuflash's entry points beside the peers (DESIGN 4c).

Each row times N back-to-back calls with perf_counter and no synchronisation
inside the loop (host: the Python work up to the last launch), then waits for
the GPU (wall: host plus the GPU work still queued). N is small (200) so the
launch queue never fills, which would make the host wait for the GPU; the
median over repeats is reported, in microseconds per call. A row whose wall
time is far above its host time is bound by its GPU work, not by the host.

    PYTHONPATH=. python3 bench/overhead.py [--json out.json] [--calls 200]

Shapes (from issue 13): decode q (1, 1, 32, 128) against k/v (1, 256, 8, 128) fp16;
backward q/k/v (1, 128, 8, 64) fp16, causal.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


#: --profile: print a cProfile table of each row's calls before timing it.
PROFILE = False


def per_call_us(fn, calls: int, repeats: int, sync) -> tuple[float, float]:
    """(host, wall) µs per call, medians over repeats."""
    for _ in range(50):
        fn()
    sync()
    if PROFILE:
        _print_profile(fn, calls, sync)
    host, wall = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        host.append((t1 - t0) / calls * 1e6)
        wall.append((t2 - t0) / calls * 1e6)
    return statistics.median(host), statistics.median(wall)


def cupy_rows(calls, repeats):
    import cupy as cp

    import cuflash
    from cuflash import testing

    sync = cp.cuda.Device().synchronize
    q, _, _ = testing.random_qkv(1, 1, 256, 32, 8, 128, "fp16", xp=cp)
    _, k, v = testing.random_qkv(1, 1, 256, 32, 8, 128, "fp16", xp=cp)
    rows = {"cupy.empty (for scale)": per_call_us(lambda: cp.empty(q.shape, q.dtype), calls, repeats, sync)}
    rows["cuflash.attention (CuPy), decode"] = per_call_us(lambda: cuflash.attention(q, k, v), calls, repeats, sync)
    out = cp.empty_like(q)
    rows["cuflash.attention (CuPy, out=), decode"] = per_call_us(
        lambda: cuflash.attention(q, k, v, out=out), calls, repeats, sync)
    # the same shape as a KV-cache call: q over a cache of 256 keys (issue 12: within 1.5x of the row above)
    lengths = cp.full((1,), 256, dtype=cp.int32)
    rows["cuflash.attention_with_kvcache (CuPy), decode"] = per_call_us(
        lambda: cuflash.attention_with_kvcache(q, k, v, cache_seqlens=lengths), calls, repeats, sync)
    kc, vc = cp.zeros((1, 512, 8, 128), cp.float16), cp.zeros((1, 512, 8, 128), cp.float16)
    lengths_255 = cp.full((1,), 255, dtype=cp.int32)
    rows["cuflash.attention_with_kvcache (CuPy), decode + append"] = per_call_us(
        lambda: cuflash.attention_with_kvcache(q, kc, vc, k[:, :1], v[:, :1], cache_seqlens=lengths_255), calls,
        repeats, sync)

    rows.update(cupy_steps(q, k, v, calls, repeats, sync))

    bq, bk, bv = testing.random_qkv(1, 128, 128, 8, 8, 64, "fp16", xp=cp)
    bout, lse = cuflash.attention(bq, bk, bv, causal=True, return_lse=True)
    dout = cp.asarray(testing.random_like(bout))
    rows["cuflash.attention_backward (CuPy), small"] = per_call_us(
        lambda: cuflash.attention_backward(dout, bq, bk, bv, bout, lse, causal=True), calls // 2, repeats, sync)
    return rows


def cupy_steps(q, k, v, calls, repeats, sync):
    """The decode call's host path step by step as a repeated call runs it (its launch plan's replay,
    DESIGN 4c), each step alone in a loop; the output's cupy.empty is the row above."""
    import cupy as cp

    import cuflash
    from cuflash import api

    cuflash.attention(q, k, v)  # the first call records the plan
    options = (None, False, (-1, -1), 0.0, False)  # attention()'s defaults, as its key holds them
    key = api._cupy_key("fwd", (q, k, v), *options)
    plan = api.recorded_plan(key)
    assert plan is not None, "the decode call left no plan under the key built here"
    out = cp.empty(q.shape, dtype=q.dtype)
    pointers = (q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, 0)
    stream = cp.cuda.get_current_stream().ptr
    steps = {
        "plan key from q, k, v and the options": lambda: api._cupy_key("fwd", (q, k, v), *options),
        "plan lookup": lambda: api.recorded_plan(key),
        "alignment and current device": lambda: api._aligned(q, k, v) and api._current_device() == q.data.device_id,
        "current stream": lambda: cp.cuda.get_current_stream().ptr,
        "replay: params copy, pointers, cuLaunchKernel": lambda: plan.replay(pointers, stream),
    }
    return {f"  step: {name}": per_call_us(fn_, calls, repeats, sync) for name, fn_ in steps.items()}


def torch_rows(calls, repeats):
    import torch
    import torch.nn.functional as F

    sync = torch.cuda.synchronize
    q = torch.randn(1, 1, 32, 128, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(1, 256, 8, 128, device="cuda", dtype=torch.float16) for _ in range(2))
    rows = {}
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    rows["torch SDPA (default backend), decode"] = per_call_us(
        lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True), calls, repeats, sync)
    try:
        import cuflash.torch as ct
    except ImportError as e:
        print(f"cuflash.torch not importable: {e}")
        return rows
    rows["cuflash.torch.flash_attn_func, decode"] = per_call_us(
        lambda: ct.flash_attn_func(q, k, v), calls, repeats, sync)
    rows["torch.ops.cuflash.fwd (custom op), decode"] = per_call_us(
        lambda: torch.ops.cuflash.fwd(q, k, v, None, None, 128 ** -0.5, False, -1, -1, 0.0, False, 0.0),
        calls, repeats, sync)

    bq, bk, bv = (torch.randn(1, 128, 8, 64, device="cuda", dtype=torch.float16, requires_grad=True)
                  for _ in range(3))
    g = torch.randn(1, 128, 8, 64, device="cuda", dtype=torch.float16)

    def train_step_cuflash():
        ct.flash_attn_func(bq, bk, bv, causal=True).backward(g)

    def train_step_sdpa():
        F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (bq, bk, bv)), is_causal=True).backward(
            g.transpose(1, 2))

    rows["cuflash.torch fwd+bwd (autograd), small"] = per_call_us(train_step_cuflash, calls // 2, repeats, sync)
    rows["torch SDPA fwd+bwd (autograd), small"] = per_call_us(train_step_sdpa, calls // 2, repeats, sync)
    return rows


def jax_rows(calls, repeats):
    try:
        import jax
        import jax.numpy as jnp

        import cuflash.jax as cj
    except ImportError as e:
        print(f"JAX rows skipped: {e}")
        return {}
    key = jax.random.PRNGKey(0)
    q = jax.random.normal(key, (1, 1, 32, 128), jnp.float16)
    k = jax.random.normal(key, (1, 256, 8, 128), jnp.float16)
    v = jax.random.normal(jax.random.PRNGKey(1), (1, 256, 8, 128), jnp.float16)
    rows = {}
    f = jax.jit(cj.attention)
    last = [None]

    def call(fn):
        def run():
            last[0] = fn(q, k, v)
        return run

    def sync():
        jax.block_until_ready(last[0])

    rows["cuflash.jax.attention under jit, decode"] = per_call_us(call(f), calls, repeats, sync)
    g = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    try:
        rows["jax.nn.dot_product_attention cudnn under jit, decode"] = per_call_us(call(g), calls, repeats, sync)
    except Exception as e:  # cuDNN attention may refuse a shape
        print(f"JAX cuDNN row skipped: {e}")
    return rows


def _print_profile(fn, calls: int, sync) -> None:
    """cProfile of `calls` calls, top functions by own time (to find where a row's time goes)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    sync()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--only", choices=["cupy", "torch", "jax"], action="append")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile table per row")
    args = ap.parse_args(argv)
    global PROFILE
    PROFILE = args.profile
    rows = {}
    for name, fn in (("cupy", cupy_rows), ("torch", torch_rows), ("jax", jax_rows)):
        if not args.only or name in args.only:
            rows.update(fn(args.calls, args.repeats))
    width = max(map(len, rows))
    print(f"{'call':<{width}}  {'host µs':>8}  {'wall µs':>8}   (per call, median of {args.repeats})")
    for name, (host, wall) in rows.items():
        print(f"{name:<{width}}  {host:8.1f}  {wall:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
