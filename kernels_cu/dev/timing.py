"""Dev probes' timer: median over `rep` of the mean of `inner` back-to-back calls (CUDA events;
the host runs ahead of the GPU, so short calls are timed by the GPU, not by their Python work)."""
import cupy as cp
import numpy as np


def timeit(fn, rep=7, inner=10):
    """Seconds per call."""
    for _ in range(3):
        fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    ts = []
    for _ in range(rep):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        ts.append(cp.cuda.get_elapsed_time(start, end) / inner)
    return float(np.median(ts)) * 1e-3
