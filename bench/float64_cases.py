"""Shared pieces of the float64 check scripts that device calls run (bench/results/*/*_check.py): importing this
records the name of every kernel cuflash launches, check() applies the accuracy rule to one case's out and lse
against the float64 and the plain low-precision references (cuflash.testing.check_accuracy) and prints a line,
dense_case() runs and checks one dense forward with its features drawn, varlen_case() one varlen forward,
and summary() prints the kernels whose
names start with a prefix and the count of failed cases. A script runs
from the repo root, with sys.path.insert(0, "bench") before `import float64_cases`."""
import cupy as cp
import numpy as np

import cuflash
from cuflash import launch, reference, testing

kernel_names = set()
failures = 0
_run = launch.run


def _recording_run(spec, *args, **kwargs):
    kernel_names.add(spec.name)
    return _run(spec, *args, **kwargs)


launch.run = _recording_run


def check(label, got, refs, dtype):
    """got: (out, lse) from cuflash; refs: ((out64, out_lowp), (lse64, lse_lowp))."""
    global failures
    try:
        errs = [testing.check_accuracy(n, g, r64, rl, dtype)["err"] for n, g, (r64, rl) in zip(("out", "lse"), got, refs)]
        print(f"ok   {label}: out err {errs[0]:.2e}", flush=True)
    except AssertionError as err:
        failures += 1
        print(f"FAIL {label}: {err}", flush=True)


def dense_case(d, sq, sk, kw, dtype, seed, batch=2, nheads=4, nheads_kv=2):
    """cuflash.attention on fresh inputs against the references, kw as its options, of which sink, alibi, bias
    and dropout (True) become a learnable sink, ALiBi slopes, a 16-bit (batch, nheads, sq, sk) bias and
    dropout 0.2 with seed 5 (the reference given the same keep mask); the output poisoned first."""
    kw = dict(kw)
    q, k, v = testing.random_qkv(batch, sq, sk, nheads, nheads_kv, d, dtype, xp=cp, seed=seed)
    extra, ref_extra = {}, {}
    if kw.pop("sink", False):
        extra["learnable_sink"] = cp.asarray(np.linspace(-1, 2, nheads), dtype=cp.float32)
    if kw.pop("alibi", False):
        extra["alibi_slopes"] = cp.asarray(np.linspace(0.01, 0.2, nheads), dtype=cp.float32)
    if kw.pop("bias", False):
        extra["bias"] = testing.random_like(cp.empty((batch, nheads, sq, sk), cp.uint16).view(q.dtype))
    if kw.pop("dropout", False):
        extra.update(dropout_p=0.2, seed=5)
        ref_extra["dropout_p"] = 0.2
        ref_extra["dropout_mask"] = reference.dropout_keep_mask(5, 0, batch, nheads, sq, sk, 0.2)
    out = testing.poison(cp.empty_like(q))
    out, lse = cuflash.attention(q, k, v, out=out, return_lse=True, **kw, **extra)
    qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
    ex = {n: testing.to_numpy(x) for n, x in extra.items() if n not in ("dropout_p", "seed")}
    refs = [reference.attention_forward(qh, kh, vh, **kw, **ex, **ref_extra, precision=p) for p in ("float64", "lowp")]
    check(f"d{d} {dtype} {sq}x{sk} {kw} {list(extra)}", (out, lse), list(zip(*refs)), dtype)


def varlen_case(d, lens_q, lens_k, kw, dtype="bf16", seed=7, nheads=8, nheads_kv=2):
    """cuflash.attention_varlen of sequences of lengths lens_q / lens_k (lists) on fresh inputs against the
    references, kw as its options; the label says whether the two length lists are the same."""
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(lens)]).astype(np.int32) for lens in (lens_q, lens_k))
    q = testing.random_qkv(1, int(cu_q[-1]), 1, nheads, nheads_kv, d, dtype, xp=cp, seed=seed)[0][0]
    _, k, v = (x[0] for x in testing.random_qkv(1, 1, int(cu_k[-1]), nheads, nheads_kv, d, dtype, xp=cp, seed=seed + 1))
    out, lse = cuflash.attention_varlen(q, k, v, cp.asarray(cu_q), cp.asarray(cu_k), max(lens_q), max(lens_k),
                                        return_lse=True, **kw)
    qh, kh, vh = (testing.to_numpy(x) for x in (q, k, v))
    refs = [reference.attention_forward_varlen(qh, kh, vh, cu_q, cu_k, **kw, precision=p) for p in ("float64", "lowp")]
    same = "equal" if list(lens_q) == list(lens_k) else "unequal"
    check(f"d{d} varlen {same} lengths {nheads} heads {kw}", (out, lse), list(zip(*refs)), dtype)


def summary(prefix):
    print("kernels:", sorted(n for n in kernel_names if n.startswith(prefix)))
    print("failures:", failures)
