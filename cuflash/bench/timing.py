"""Timers, the L2 flush and the ceilings (DESIGN.md section 6).

CuPy and torch work is timed with CUDA events recorded on the framework's
current stream: per repetition, the L2 flush is enqueued first (outside the
timed region), then ``start``, the call, ``end``; the host synchronises once
after the last repetition, so the GPU is never starved by the host.

JAX gives no handle on its stream, so JAX is timed with a host clock: per
sample the L2 is flushed and the device synchronised, then ``calls`` calls are
issued back to back and the clock stops when the last result is ready
(``jax.block_until_ready``); the sample is the elapsed time divided by
``calls``.  That includes JAX's dispatch, amortised over the calls.
"""
from __future__ import annotations

import statistics
import time

import numpy

from cuflash.gpu import one_line, why_no_gpu  # noqa: F401 (one_line: the bench modules call timing.one_line)

FLUSH_MIN_BYTES = 256 * 1024 * 1024
MATMUL_N = 8192
COPY_BYTES = 1024 * 1024 * 1024


def gpu_problem() -> str | None:
    """None when CuPy sees a CUDA device, else why not (one line; cuflash.gpu.why_no_gpu)."""
    why_no_gpu.cache_clear()  # the tests patch CuPy's device count
    return why_no_gpu()


def summarize(samples_ms) -> dict:
    """Median and spread of per-repetition times in milliseconds."""
    a = numpy.asarray(samples_ms, dtype=numpy.float64)
    q1, median, q3 = numpy.percentile(a, [25, 50, 75])
    return {"ms": float(median), "ms_min": float(a.min()), "ms_max": float(a.max()),
            "ms_q1": float(q1), "ms_q3": float(q3), "samples_ms": [float(x) for x in a]}


def flush_bytes() -> int:
    """Size of the L2 flush buffer: twice the L2 of the current device, at least 256 MiB."""
    import cupy
    l2 = cupy.cuda.Device().attributes.get("L2CacheSize", 0)
    return max(FLUSH_MIN_BYTES, 2 * int(l2))


class EventTimer:
    """Times ``fn()`` with CUDA events on a framework's current stream.

    ``flush()`` overwrites a buffer larger than the L2 on the same stream; it is
    enqueued before each repetition's start event, so it is not timed.
    """

    def __init__(self, new_event, elapsed_ms, synchronize, flush, record=lambda event: event.record()):
        self._new_event = new_event
        self._elapsed_ms = elapsed_ms
        self._record = record    # records an event on the current stream
        self.synchronize = synchronize
        self.flush = flush

    def time(self, fn, *, warmup: int, rep: int, flush: bool = True) -> list[float]:
        for _ in range(warmup):
            fn()
        self.synchronize()
        events = []
        for _ in range(rep):
            if flush:
                self.flush()
            start, end = self._new_event(), self._new_event()
            self._record(start)
            fn()
            self._record(end)
            events.append((start, end))
        self.synchronize()
        return [self._elapsed_ms(s, e) for s, e in events]


def cupy_timer(nbytes: int) -> EventTimer:
    import cupy
    buf = cupy.empty(nbytes, dtype=cupy.uint8)
    return EventTimer(new_event=cupy.cuda.Event,
                      elapsed_ms=cupy.cuda.get_elapsed_time,
                      synchronize=lambda: cupy.cuda.Device().synchronize(),
                      flush=lambda: buf.fill(0),
                      record=lambda event: event.record(cupy.cuda.get_current_stream()))


def torch_timer(nbytes: int) -> EventTimer:
    import torch
    buf = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    return EventTimer(new_event=lambda: torch.cuda.Event(enable_timing=True),
                      elapsed_ms=lambda s, e: s.elapsed_time(e),
                      synchronize=torch.cuda.synchronize,
                      flush=buf.zero_)


_SCRIPT_TIMER = None


def median_ms(fn, *, warmup: int = 3, rep: int = 15) -> float:
    """Median CUDA-event time of fn() on CuPy's current stream, L2 flushed before each
    repetition: one call for scripts (bench/tune_*.py) that time many variants."""
    global _SCRIPT_TIMER
    if _SCRIPT_TIMER is None:
        _SCRIPT_TIMER = cupy_timer(flush_bytes())
    return statistics.median(_SCRIPT_TIMER.time(fn, warmup=warmup, rep=rep))


class Timers:
    """The timers of one run: CuPy's, and torch's made on first use (torch is imported only then)."""

    def __init__(self, nbytes: int):
        self.flush_bytes = nbytes
        self.cupy = cupy_timer(nbytes)
        self._torch = None

    def torch(self) -> EventTimer:
        if self._torch is None:
            self._torch = torch_timer(self.flush_bytes)
        return self._torch


def time_host(fn, *, warmup: int, rep: int, flush, block, calls: int = 5) -> list[float]:
    """Host-clock timing for frameworks whose stream we cannot record events on.

    ``flush()`` must leave the L2 flushed and the device idle; ``block(result)``
    waits for a result.  Returns per-call milliseconds, one value per sample.
    """
    for _ in range(warmup):
        block(fn())
    samples = []
    for _ in range(rep):
        flush()
        t0 = time.perf_counter()
        for _ in range(calls):
            result = fn()
        block(result)
        samples.append((time.perf_counter() - t0) * 1e3 / calls)
    return samples


def first_call_ms(fn, synchronize):
    """Wall time of one call, synchronised: the first call of a shape compiles or loads its kernel."""
    synchronize()
    t0 = time.perf_counter()
    result = fn()
    synchronize()
    return (time.perf_counter() - t0) * 1e3, result


# --------------------------------------------------------------------------
# Ceilings
# --------------------------------------------------------------------------

def _cupy_matmul(dtype_name):
    import cupy
    if dtype_name == "bf16":
        import ml_dtypes
        dtype = ml_dtypes.bfloat16
    else:
        dtype = cupy.float16
    a = (cupy.random.random((MATMUL_N, MATMUL_N), dtype=cupy.float32) - 0.5).astype(dtype)
    b = (cupy.random.random((MATMUL_N, MATMUL_N), dtype=cupy.float32) - 0.5).astype(dtype)
    c = cupy.matmul(a, b)
    if c.dtype != a.dtype:
        raise TypeError(f"cupy.matmul returned {c.dtype} for {a.dtype} inputs")
    return lambda: cupy.matmul(a, b, out=c)


def _torch_matmul():
    import torch
    a = torch.rand(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16) - 0.5
    b = torch.rand(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16) - 0.5
    c = torch.empty_like(a)
    return lambda: torch.matmul(a, b, out=c)


def _copy_tbps(timer: EventTimer, warmup: int, rep: int) -> float:
    """Device-to-device copy bandwidth, bytes read + bytes written."""
    import cupy
    src = cupy.ones(COPY_BYTES, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    samples = timer.time(lambda: dst.data.copy_from_device_async(src.data, COPY_BYTES), warmup=warmup, rep=rep,
                         flush=False)
    return 2 * COPY_BYTES / (summarize(samples)["ms"] * 1e-3) / 1e12


def measure_ceilings(timers: Timers, *, use_torch: bool, warmup=3, rep=10) -> dict:
    """Matmul TFLOP/s and device copy TB/s on this GPU, now.

    Matmul: the best of CuPy bf16 and (with ``use_torch``, or when CuPy has no
    bf16 matmul) torch bf16; CuPy fp16 when neither works.  Which one won and
    why the others failed go in the result.
    """
    flops = 2 * MATMUL_N ** 3
    matmul = {}
    errors = {}

    def try_one(name, make_fn, timer_factory):
        try:
            fn = make_fn()
            ms = summarize(timer_factory().time(fn, warmup=warmup, rep=rep, flush=False))["ms"]
            matmul[name] = flops / (ms * 1e-3) / 1e12
        except Exception as e:
            errors[name] = one_line(e)

    try_one("cupy-bf16", lambda: _cupy_matmul("bf16"), lambda: timers.cupy)
    if use_torch or not matmul:
        try_one("torch-bf16", _torch_matmul, timers.torch)
    if not matmul:
        try_one("cupy-fp16", lambda: _cupy_matmul("fp16"), lambda: timers.cupy)

    import cupy
    copy_tbps = _copy_tbps(timers.cupy, warmup, rep)
    cupy.get_default_memory_pool().free_all_blocks()

    best = max(matmul, key=matmul.get) if matmul else None
    return {
        "matmul_tflops": matmul.get(best),
        "matmul_source": best,
        "matmul_candidates_tflops": matmul,
        "matmul_errors": errors,
        "matmul_shape": [MATMUL_N, MATMUL_N, MATMUL_N],
        "copy_tbps": copy_tbps,
        "copy_bytes_each_way": COPY_BYTES,
        "copy_note": "device-to-device memcpy; TB/s counts bytes read + bytes written",
    }
