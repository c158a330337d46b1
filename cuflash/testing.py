"""Helpers for the GPU tests and the benchmark's correctness check.

Input factories (:func:`random_qkv`, :func:`random_like`), NaN poisoning
(:func:`poison`), non-contiguous views (:func:`strided_view`), host conversion
(:func:`to_numpy`, :func:`to_float64`) and the accuracy rule
(:func:`check_accuracy`, :data:`FLOORS`).

Works on NumPy and CuPy arrays alike; CuPy is never imported here (a CuPy
array implies CuPy is already loaded), so this module imports without CuPy or
a GPU.
"""

from __future__ import annotations

import ml_dtypes
import numpy

from cuflash.reference import array_module

__all__ = [
    "FLOORS",
    "resolve_dtype",
    "dtype_name",
    "random_qkv",
    "random_like",
    "poison",
    "to_numpy",
    "to_float64",
    "strided_view",
    "max_abs_err",
    "check_accuracy",
]

BF16 = numpy.dtype(ml_dtypes.bfloat16)

_DTYPE_NAMES = {
    "fp16": numpy.dtype(numpy.float16), "float16": numpy.dtype(numpy.float16), "half": numpy.dtype(numpy.float16),
    "bf16": BF16, "bfloat16": BF16,
    "fp32": numpy.dtype(numpy.float32), "float32": numpy.dtype(numpy.float32), "float": numpy.dtype(numpy.float32),
    "fp64": numpy.dtype(numpy.float64), "float64": numpy.dtype(numpy.float64), "double": numpy.dtype(numpy.float64),
}

# Accuracy floors of the rule  max|out - ref64| <= 2 * max|ref_lowp - ref64| + floor,
# keyed by (kind, dtype name).  The floor only matters when the low-precision
# reference happens to be (nearly) exact, e.g. tiny outputs or a problem whose
# rounding errors cancel; otherwise the 2x term dominates.  Values are a
# fraction of one unit in the last place at 1.0 for O(1) outputs (unit normal
# inputs give |out| <= max|v| and typical gradients of order 1-10):
#   fp16: ulp(1) = 9.8e-4 -> fwd 1e-4 (~0.1 ulp), bwd 5e-4 (~0.5 ulp: gradients are
#         sums over seqlen with larger magnitude and a longer chain of roundings);
#   bf16: ulp(1) = 7.8e-3 -> fwd 1e-3, bwd 5e-3, the same fractions;
#   fp32: ulp(1) = 1.2e-7 -> fwd 1e-5, bwd 1e-4: far above fp32 rounding, because
#         the lowp reference for fp32 is plain fp32 arithmetic, which can agree
#         with float64 to ~1e-7 while a kernel's different (online-softmax,
#         exp2-domain, split) summation order legitimately differs by more.
#         A kernel using TF32 tensor cores for fp32 would NOT pass these.
FLOORS = {
    ("fwd", "fp16"): 1e-4,
    ("fwd", "bf16"): 1e-3,
    ("fwd", "fp32"): 1e-5,
    ("bwd", "fp16"): 5e-4,
    ("bwd", "bf16"): 5e-3,
    ("bwd", "fp32"): 1e-4,
}


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------

def resolve_dtype(x):
    """Return the NumPy dtype for a name ("fp16", "bf16", "fp32", "float16", ...) or dtype-like.

    bf16 resolves to ``ml_dtypes.bfloat16``.
    """
    if isinstance(x, str):
        try:
            return _DTYPE_NAMES[x.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype name {x!r}; expected one of {sorted(_DTYPE_NAMES)}") from None
    return numpy.dtype(x)


def dtype_name(x):
    """Short name ("fp16", "bf16", "fp32", "fp64") of anything :func:`resolve_dtype` accepts."""
    dt = resolve_dtype(x)
    names = {numpy.dtype(numpy.float16): "fp16", BF16: "bf16",
             numpy.dtype(numpy.float32): "fp32", numpy.dtype(numpy.float64): "fp64"}
    try:
        return names[dt]
    except KeyError:
        raise ValueError(f"not a supported floating dtype: {dt}") from None


# --------------------------------------------------------------------------
# Host conversion
# --------------------------------------------------------------------------

def to_numpy(x):
    """NumPy copy/view of a NumPy or CuPy array, keeping the dtype (bf16 as ml_dtypes.bfloat16)."""
    xp = array_module(x)
    if xp is numpy:
        return numpy.asarray(x)
    if x.dtype.name == "bfloat16":
        # Move the raw bits, so this works whatever CuPy's bf16 support.
        return xp.asnumpy(xp.ascontiguousarray(x.view(xp.uint16))).view(BF16)
    return xp.asnumpy(x)


def to_float64(x):
    """float64 NumPy array with the values of ``x`` (NumPy or CuPy, any float dtype)."""
    return to_numpy(x).astype(numpy.float64)


# --------------------------------------------------------------------------
# Input factories
# --------------------------------------------------------------------------

def _normal(shape, dtype, rng, xp):
    """Standard normal values in ``dtype`` on ``xp``, with no exact zeros.

    Drawn on the host (so one seed gives the same values for NumPy and CuPy)
    in float32; magnitudes below 2**-10 are pushed to +-2**-10 so no value is
    or rounds to 0 (a zero would hide a kernel that never wrote its output or
    read the wrong element), which changes the distribution negligibly.
    """
    x = rng.standard_normal(shape, dtype=numpy.float32)
    tiny = numpy.float32(2.0 ** -10)
    x = numpy.where(numpy.abs(x) < tiny, numpy.where(x < 0, -tiny, tiny), x).astype(numpy.float32)
    x = x.astype(dtype)
    if xp is numpy:
        return x
    if dtype == BF16:
        # Move the raw bits, so this works whatever CuPy's bf16 support.
        return xp.asarray(x.view(numpy.uint16)).view(BF16)
    return xp.asarray(x)


def random_qkv(batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim, dtype, *, seed=None, xp=numpy):
    """Fresh random q, k, v (standard normal, never zero) in ``dtype``.

    Returns q (batch, seqlen_q, nheads, headdim), k and v (batch, seqlen_k,
    nheads_kv, headdim), contiguous, on ``xp`` (numpy or cupy).  ``seed=None``
    draws fresh entropy each call.
    """
    if nheads_kv <= 0 or nheads % nheads_kv:
        raise ValueError(f"nheads ({nheads}) must be a multiple of nheads_kv ({nheads_kv})")
    dt = resolve_dtype(dtype)
    rng = numpy.random.default_rng(seed)
    q = _normal((batch, seqlen_q, nheads, headdim), dt, rng, xp)
    k = _normal((batch, seqlen_k, nheads_kv, headdim), dt, rng, xp)
    v = _normal((batch, seqlen_k, nheads_kv, headdim), dt, rng, xp)
    return q, k, v


def random_like(x, seed=None):
    """Fresh standard normal array (never zero) with x's shape, dtype and array module."""
    return _normal(tuple(x.shape), numpy.dtype(x.dtype), numpy.random.default_rng(seed), array_module(x))


# --------------------------------------------------------------------------
# Poisoning and strided views
# --------------------------------------------------------------------------

# Quiet-NaN bit patterns of the 16-bit float formats.
_NAN_BITS = {numpy.dtype(numpy.float16): 0x7E00, BF16: 0x7FC0}


def poison(arr):
    """Fill ``arr`` (NumPy or CuPy, any float dtype, any strides) with NaN in place; return it.

    16-bit formats are written through a uint16 view of the same memory, so
    this needs no fp16/bf16 arithmetic support.
    """
    dt = numpy.dtype(arr.dtype)
    xp = array_module(arr)
    if dt in _NAN_BITS:
        arr.view(xp.uint16)[...] = _NAN_BITS[dt]
    elif dt.kind in "fc":
        arr[...] = numpy.nan
    else:
        raise TypeError(f"cannot poison an array of dtype {dt} with NaN")
    return arr


def strided_view(x, *, pad_last=8):
    """Non-contiguous array with the values of ``x``; the last dim stays contiguous.

    The memory holds the leading dims in reverse order (for (batch, seqlen,
    nheads, headdim): a (nheads, seqlen, batch, headdim + pad_last) buffer) and
    the returned view is transposed back and sliced to ``headdim``, so every
    stride except the last differs from a contiguous array's.  The padding is
    poisoned with NaN (float dtypes), so a kernel that ignores the strides reads
    NaN.  The default pad of 8 elements keeps rows 16-byte aligned for 2-byte
    dtypes when headdim is a multiple of 8.  Works on NumPy and CuPy arrays.
    """
    xp = array_module(x)
    if x.ndim < 1:
        raise ValueError("strided_view needs at least one dimension")
    lead = list(range(x.ndim - 1))[::-1]                 # reversed leading axes
    shape = [x.shape[a] for a in lead] + [x.shape[-1] + pad_last]
    buf = xp.empty(shape, dtype=x.dtype)
    if numpy.dtype(x.dtype).kind == "f" or numpy.dtype(x.dtype) == BF16:
        poison(buf)
    view = buf[..., :x.shape[-1]]
    # buf axis p holds original axis lead[p]; invert that permutation.
    inverse = [lead.index(a) for a in range(x.ndim - 1)] + [x.ndim - 1]
    view = view.transpose(inverse)
    if numpy.dtype(x.dtype) == BF16 and xp is not numpy:
        view.view(xp.uint16)[...] = x.view(xp.uint16)
    else:
        view[...] = x
    return view


# --------------------------------------------------------------------------
# The accuracy rule
# --------------------------------------------------------------------------

def max_abs_err(a, b):
    """max |a - b| as a float, computed in float64 on the host.

    Positions where both are the same infinity count as 0 (e.g. lse = -inf for
    a fully masked row).  An infinity against a different value gives inf; any
    NaN gives nan.  Empty arrays give 0.0.
    """
    a, b = to_float64(a), to_float64(b)
    a, b = numpy.broadcast_arrays(a, b)
    if a.size == 0:
        return 0.0
    same_inf = numpy.isinf(a) & (a == b)
    with numpy.errstate(invalid="ignore"):  # inf - inf is handled by same_inf
        diff = numpy.where(same_inf, 0.0, numpy.abs(a - b))
    if numpy.isnan(diff).any():
        return float("nan")
    return float(diff.max())


def _first_index(mask):
    idx = numpy.argwhere(mask)
    return tuple(int(i) for i in idx[0]) if len(idx) else None


def check_accuracy(name, out, ref64, ref_lowp, dtype, kind="fwd"):
    """Assert ``max|out - ref64| <= 2 * max|ref_lowp - ref64| + FLOORS[(kind, dtype)]``.

    Args:
        name: label for the message ("out", "lse", "dq", ...).
        out: the result under test (NumPy or CuPy, any float dtype).
        ref64: :mod:`cuflash.reference` result with precision="float64".
        ref_lowp: the same reference with precision="lowp" in the input dtype.
        dtype: the input dtype (name or dtype), selects the floor.
        kind: "fwd" or "bwd".

    Non-finite values are checked first: NaN in ``out`` always fails, and
    every non-finite value of ``out`` or ``ref64`` must be matched exactly by
    the other (e.g. lse = -inf for fully masked rows).  A non-finite
    ``ref_lowp`` where ref64 is finite also fails (the inputs overflow the
    dtype, so the rule would be meaningless).

    Returns:
        dict(err=..., allowed=..., lowp_err=..., floor=...) for reporting.
    Raises:
        AssertionError with the name, the error, the allowed error and the
        index and values of the worst element.
    """
    key = (kind, dtype_name(dtype))
    if key not in FLOORS:
        raise ValueError(f"no accuracy floor for {key}")
    floor = FLOORS[key]
    o, r, rl = to_float64(out), to_float64(ref64), to_float64(ref_lowp)
    if o.shape != r.shape or rl.shape != r.shape:
        raise AssertionError(f"{name}: shape mismatch: out {o.shape}, ref64 {r.shape}, ref_lowp {rl.shape}")

    nan = numpy.isnan(o)
    if nan.any():
        raise AssertionError(f"{name}: {int(nan.sum())} NaN in output (of {o.size}), "
                             f"first at {_first_index(nan)}")
    if numpy.isnan(r).any():
        raise AssertionError(f"{name}: NaN in the float64 reference at {_first_index(numpy.isnan(r))}")
    bad = (~numpy.isfinite(o) | ~numpy.isfinite(r)) & (o != r)
    if bad.any():
        i = _first_index(bad)
        raise AssertionError(f"{name}: non-finite mismatch at {i} ({int(bad.sum())} elements): "
                             f"out {o[i]!r}, ref64 {r[i]!r}")
    bad_lowp = numpy.isfinite(r) & ~numpy.isfinite(rl)
    if bad_lowp.any():
        i = _first_index(bad_lowp)
        raise AssertionError(f"{name}: low-precision reference not finite at {i} ({rl[i]!r}, ref64 {r[i]!r}); "
                             "inputs out of the dtype's range?")

    finite = numpy.isfinite(r)   # out equals ref64 at every other position (checked above)
    err_arr = numpy.where(finite, numpy.abs(o - numpy.where(finite, r, 0.0)), 0.0) if o.size else o
    lowp_err = float(numpy.where(finite, numpy.abs(rl - numpy.where(finite, r, 0.0)), 0.0).max()) if o.size else 0.0
    err = float(err_arr.max()) if o.size else 0.0
    allowed = 2.0 * lowp_err + floor
    if not err <= allowed:
        i = tuple(int(j) for j in numpy.unravel_index(int(numpy.argmax(err_arr)), err_arr.shape))
        raise AssertionError(
            f"{name}: max error {err:.3e} > allowed {allowed:.3e} "
            f"(= 2 * lowp error {lowp_err:.3e} + floor {floor:.0e}, {key}); "
            f"worst at {i}: out {o[i]!r}, ref64 {r[i]!r}, ref_lowp {rl[i]!r}")
    return dict(err=err, allowed=allowed, lowp_err=lowp_err, floor=floor)


class AccuracyChecks:
    """:func:`check_accuracy` on several outputs of one case, failing once, at :meth:`done`, with
    every output that is off (one failure hides no other). ``label`` follows each name."""

    def __init__(self, label=""):
        self.label, self.failures = label, []

    def rule(self, name, out, ref64, ref_lowp, dtype, kind="fwd"):
        try:
            check_accuracy(f"{name} {self.label}".rstrip(), out, ref64, ref_lowp, dtype, kind=kind)
        except AssertionError as e:
            self.failures.append(str(e))

    def done(self):
        if self.failures:
            raise AssertionError(f"{len(self.failures)} output(s) off:\n" + "\n".join(self.failures))
