"""Public entry points on CuPy arrays, and the validation every front end shares.

The path of a call goes down the layers once (DESIGN 4c): a front end (this
module's CuPy functions, cuflash.torch, cuflash.jax) turns its arrays into
``Ref``s (pointer, shape, strides, dtype, device); ``validate_qkv``,
``check_like``, ``check_lse`` and ``options`` check them, each error naming the
offending argument, before any kernel is launched; ``run_forward`` /
``run_backward`` pick the spec (memoised) and hand it to launch.py, which
launches on the stream the front end names. CuPy calls run on the current CuPy
stream of q's device.
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from . import launch, reference, support
from .compile import cache, env
from .launch import Ref
from .specs import DTYPE_BYTES, HALF_DTYPES, LOG2E, PLAIN, Features

#: An unbounded side of the window in the params (kernels_cu/common/mask.cuh UNBOUNDED).
UNBOUNDED = 1 << 30
#: Kernel dtype name of each supported input dtype (NumPy names, as in Ref.dtype).
KERNEL_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
#: Bytes per element of the input dtypes by array dtype name (a 16-byte row chunk is 8 or 4 elements).
ITEMSIZE = {name: DTYPE_BYTES[kernel] for name, kernel in KERNEL_DTYPES.items()}


def _cupy():
    import cupy

    return cupy


# ---------------------------------------------------------------- CuPy arrays as Refs


def _as_gpu_array(x, name: str):
    """A CuPy array for x; objects with __dlpack__ (torch, JAX) are wrapped without a copy."""
    cp = _cupy()
    if type(x) is cp.ndarray or isinstance(x, cp.ndarray):
        return x
    if isinstance(x, np.ndarray):
        from .gpu import why_no_gpu

        reason = why_no_gpu()
        raise TypeError(f"{name} is a NumPy array on the host; cuflash needs GPU arrays: pass cupy.asarray({name})"
                        + (f" (but this machine has none: {reason})" if reason else ""))
    if hasattr(x, "__dlpack__"):
        try:
            return cp.from_dlpack(x)
        except Exception as e:  # a host tensor, or a dtype DLPack cannot carry
            raise TypeError(f"{name} could not be taken as a GPU array through DLPack: {e}") from None
    raise TypeError(f"{name} must be a CuPy array (or a GPU tensor with __dlpack__), got {type(x).__name__}")


#: NumPy dtype -> its name; numpy's dtype.name property costs ~10 µs per call, a dict lookup ~50 ns.
_NUMPY_NAMES: dict = {}


def _numpy_name(dtype) -> str:
    name = _NUMPY_NAMES.get(dtype)
    if name is None:
        name = _NUMPY_NAMES[dtype] = dtype.name
    return name


def cupy_ref(x) -> Ref:
    """The Ref of a CuPy array (strides in elements)."""
    mem = x.data
    return Ref(mem.ptr, x.shape, tuple(map(x.itemsize.__rfloordiv__, x.strides)), _numpy_name(x.dtype),
               mem.device_id)


def _cupy_dtype(name: str):
    """The dtype CuPy takes for a NumPy dtype name ("bfloat16" is ml_dtypes')."""
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return name


def cupy_alloc(shape, dtype):
    """launch.Alloc on CuPy: (the array, its Ref) for a NumPy dtype name."""
    a = _cupy().empty(shape, dtype=_cupy_dtype(dtype))
    return a, cupy_ref(a)


_NO_SCOPE = contextlib.nullcontext()


def _current_device() -> int:
    return _cupy().cuda.runtime.getDevice()


def device_scope(device: int):
    """Make `device` current for the call (a no-op when it already is)."""
    if _current_device() == device:
        return _NO_SCOPE
    return _cupy().cuda.Device(device)


# ---------------------------------------------------------------- validation on Refs


@functools.lru_cache(maxsize=None)
def _check_device(device_id: int) -> None:
    cc = _compute_capability(device_id)
    if cc < support.MIN_COMPUTE_CAPABILITY:
        need = "%d.%d" % support.MIN_COMPUTE_CAPABILITY
        raise RuntimeError(
            f"GPU {device_id} has compute capability {cc[0]}.{cc[1]}; cuflash needs {need} or newer (Ampere, Hopper, ...)"
        )


@functools.lru_cache(maxsize=None)
def _compute_capability(device_id: int) -> tuple[int, int]:
    from .compile import cache

    return cache.device_compute_capability(device_id)


def _check_layout(x: Ref, name: str) -> None:
    """Last dim contiguous; 16-byte aligned rows, as the kernels' 16-byte copies need."""
    strides = x.strides
    unit = 16 // ITEMSIZE.get(x.dtype, 2) - 1  # a stride must be a multiple of unit + 1 elements
    if strides[-1] == 1 and not x.ptr & 15:
        for st in strides[:-1]:
            if st & unit:
                break
        else:
            return
    if 0 in x.shape:  # nothing is read or written (CuPy reports stride 0 for empty arrays)
        return
    if strides[-1] != 1:
        raise ValueError(
            f"{name} must be contiguous in its last dimension (stride {strides[-1]}, need 1): "
            f"pass a contiguous copy ({name}.contiguous() in torch, cupy.ascontiguousarray({name}))"
        )
    raise ValueError(
        f"{name} must start on a 16-byte boundary with strides that are multiples of 16 bytes "
        f"(strides {tuple(strides)}); pass a contiguous copy ({name}.contiguous() in torch, "
        f"cupy.ascontiguousarray({name}))"
    )


def _softmax_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    s = float(softmax_scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"softmax_scale must be a finite positive number, got {softmax_scale!r}")
    return s


def validate_qkv(q: Ref, k: Ref, v: Ref) -> str:
    """Check q, k, v (shapes, dtypes, devices, layout, GPU); returns the kernel dtype name."""
    qs, ks, vs = q.shape, k.shape, v.shape
    if len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
        for x, n in ((qs, "q"), (ks, "k"), (vs, "v")):
            if len(x) != 4:
                raise ValueError(f"{n} must have 4 dims (batch, seqlen, nheads, headdim), got shape {tuple(x)}")
    name = KERNEL_DTYPES.get(q.dtype)
    if name is None:
        raise TypeError(f"q has dtype {q.dtype}; supported: float16, bfloat16, float32")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        n, x = ("k", k) if k.dtype != q.dtype else ("v", v)
        raise TypeError(f"{n} has dtype {x.dtype} but q has {q.dtype}; q, k and v must share one dtype")
    batch, seqlen_q, nheads, head_dim = qs
    nheads_kv = ks[2]
    if ks[0] != batch or vs[0] != batch:
        raise ValueError(f"batch sizes differ: q {tuple(qs)}, k {tuple(ks)}, v {tuple(vs)}")
    if ks[3] != head_dim or vs[3] != head_dim:
        raise ValueError(f"head dims differ: q {tuple(qs)}, k {tuple(ks)}, v {tuple(vs)}")
    if vs != ks:
        raise ValueError(f"v must have the shape of k: k {tuple(ks)}, v {tuple(vs)}")
    if nheads_kv == 0 or nheads % nheads_kv:
        raise ValueError(f"nheads of q ({nheads}) must be a multiple of nheads of k/v ({nheads_kv})")
    if head_dim % support.HEAD_DIM_MULTIPLE or not 0 < head_dim <= support.HEAD_DIM_MAX:
        raise ValueError(
            f"head dim (last dim of q) must be a multiple of {support.HEAD_DIM_MULTIPLE} "
            f"in [{support.HEAD_DIM_MULTIPLE}, {support.HEAD_DIM_MAX}], got {head_dim}"
        )
    if batch > launch.MAX_GRID_YZ or nheads > launch.MAX_GRID_YZ:
        raise ValueError(f"batch and nheads must be at most {launch.MAX_GRID_YZ}, got {batch} and {nheads}")
    if k.device != q.device or v.device != q.device:
        n, x = ("k", k) if k.device != q.device else ("v", v)
        raise ValueError(f"{n} is on GPU {x.device} but q is on GPU {q.device}")
    _check_layout(q, "q")
    _check_layout(k, "k")
    _check_layout(v, "v")
    _check_device(q.device)
    return name


def check_like(x: Ref, like: Ref, name: str, like_name: str) -> Ref:
    """x has like's shape and dtype, is on like's device, last dim contiguous, 16-byte rows."""
    if tuple(x.shape) != tuple(like.shape) or x.dtype != like.dtype:
        raise ValueError(
            f"{name} must have {like_name}'s shape {tuple(like.shape)} and dtype {like.dtype}, "
            f"got {tuple(x.shape)} {x.dtype}"
        )
    if x.device != like.device:
        raise ValueError(f"{name} is on GPU {x.device} but {like_name} is on GPU {like.device}")
    _check_layout(x, name)
    return x


def check_lse(lse: Ref, q: Ref, name: str = "lse") -> Ref:
    """lse (or dlse) as attention(..., return_lse=True) returns it: (batch, nheads, seqlen_q) float32, any strides."""
    batch, seqlen_q, nheads, _ = q.shape
    if tuple(lse.shape) != (batch, nheads, seqlen_q) or lse.dtype != "float32":
        raise ValueError(
            f"{name} must have shape (batch, nheads, seqlen_q) = {(batch, nheads, seqlen_q)} and dtype float32 "
            f"(like the lse attention(..., return_lse=True) returns), got {tuple(lse.shape)} {lse.dtype}"
        )
    if lse.device != q.device:
        raise ValueError(f"{name} is on GPU {lse.device} but q is on GPU {q.device}")
    return lse


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """The validated attention options of one call: the compile-time features
    and the run-time values that go into the params head (params.cuh
    CUFLASH_ATTENTION_FIELDS)."""

    scale: float
    features: Features = PLAIN
    window: tuple = (-1, -1)  # (left, right), -1 unbounded; read under the local mask only
    softcap: float = 0.0
    alibi_slopes: Ref | None = None  # validated float32 (nheads,) or (batch, nheads)
    learnable_sink: Ref | None = None  # validated float32 (nheads,)
    dropout: DropoutRng | None = None  # validated dropout (with_dropout)
    dropout_rng: int = 0  # device address of the seed words the kernels read instead (Features.dropout 2)
    bias: Ref | None = None  # validated bias as (batch, nheads, seqlen_q, seqlen_k), 0 strides on broadcast dims

    @property
    def band(self) -> int:
        """Keys per query of a sliding window bounded on both sides (left + right + 1), else 0: a
        tile and grid choice of the Hopper forward (specs.FwdSm90Spec.for_problem)."""
        left, right = self.window
        return left + right + 1 if self.features.mask == "local" and 0 <= left and 0 <= right else 0

    @property
    def fields(self) -> dict:
        """The params head's run-time feature fields, by name (computed once; do not mutate). Kept
        in the instance's __dict__ by hand: functools.cached_property takes a lock (~5 µs a call
        on Python 3.11, where each call builds its own Options)."""
        f = self.__dict__.get("_fields")
        if f is None:
            f = self.__dict__["_fields"] = self._fields()
        return f

    def _fields(self) -> dict:
        left, right = (UNBOUNDED if w < 0 else w for w in self.window)
        f = {"scale": self.scale, "scale_log2": self.scale * LOG2E, "window_left": left, "window_right": right}
        if self.softcap > 0:
            f["softcap_in"], f["softcap_out"] = self.scale / self.softcap, self.softcap / self.scale
        if self.alibi_slopes is not None:
            a = self.alibi_slopes
            f["alibi_slopes"] = a.ptr
            f["alibi_batch_stride"] = a.strides[0] if len(a.shape) == 2 else 0
        if self.learnable_sink is not None:
            f["sink"] = self.learnable_sink.ptr
        if self.bias is not None:
            b = self.bias
            f["bias"] = b.ptr
            f["bias_batch_stride"], f["bias_head_stride"], f["bias_row_stride"] = b.strides[:3]
        if self.dropout is not None:
            d = self.dropout
            f["dropout_seed_lo"], f["dropout_seed_hi"] = d.seed & 0xFFFFFFFF, d.seed >> 32
            f["dropout_offset"], f["dropout_threshold"] = d.offset, reference.dropout_threshold(d.p)
            f["dropout_scale"] = 1.0 / (1.0 - d.p)
            if self.dropout_rng:
                f["dropout_rng"] = self.dropout_rng
        return f


class DropoutRng(NamedTuple):
    """Dropout's probability and the Philox key (seed) and counter word (offset) of its mask
    (kernels_cu/common/dropout.cuh, reference.dropout_keep_mask)."""

    p: float
    seed: int
    offset: int


SEED_LIMIT = 1 << 64
OFFSET_LIMIT = 1 << 32


def draw_seed() -> int:
    """A fresh 64-bit dropout seed from the operating system's entropy."""
    return int.from_bytes(os.urandom(8), "little")


def dropout_options(dropout_p, seed, backward: bool = False) -> DropoutRng | None:
    """Validate dropout_p and seed (an int in [0, 2^64), or a pair (seed, offset) with offset in
    [0, 2^32)); None when dropout_p is 0. A forward with seed=None gets a fresh seed (draw_seed);
    the backward needs the forward's."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    p = float(dropout_p)
    if not (math.isfinite(p) and 0.0 <= p < 1.0):
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if p == 0.0:
        return None
    if seed is None:
        if backward:
            raise ValueError("dropout_p > 0 in the backward needs the forward's seed (the one it was given, "
                             "or the one it returned when it drew it)")
        return DropoutRng(p, draw_seed(), 0)
    pair = isinstance(seed, tuple)
    value, offset = seed if pair and len(seed) == 2 else (seed, 0)
    for x, name, limit in ((value, "seed", SEED_LIMIT), (offset, "seed's offset", OFFSET_LIMIT)):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"seed must be an int in [0, 2^64) or a pair (seed, offset) with offset in "
                            f"[0, 2^32), got {seed!r}")
        if not 0 <= int(x) < limit:
            raise ValueError(f"{name} must be in [0, {limit}), got {int(x)}")
    return DropoutRng(p, int(value), int(offset))


def with_dropout(opts: Options, dropout: DropoutRng | None, seed_address: int = 0) -> Options:
    """opts with dropout's switch and values (unchanged for None). seed_address: the device address
    of uint32 words (seed_lo, seed_hi, offset) that the kernels read instead of dropout's seed and
    offset (Features.dropout 2: a seed a traced JAX program makes on the device)."""
    if dropout is None:
        return opts
    kind = 2 if seed_address else 1
    return replace(opts, features=replace(opts.features, dropout=kind), dropout=dropout, dropout_rng=seed_address)


#: Bias dtypes: the kernel's own 16-bit dtype (Features.bias 16) or float32 (32); the other
#: 16-bit dtype is widened to float32 (a copy of the bias's own size).
BIAS_DTYPES = ("float16", "bfloat16", "float32")


class Bias(NamedTuple):
    """A validated bias: the array the kernels read (the caller's, or a float32 / key-contiguous
    copy), its Ref viewed as (batch, nheads, seqlen_q, seqlen_k) with stride 0 on each broadcast
    dim, the Features.bias bits (16: q's dtype, 32: float32), and the caller's shape and dtype
    (dbias gets them)."""

    array: object
    ref: Ref
    bits: int
    shape: tuple
    dtype: str


def check_bias(bias, q: Ref, k: Ref, ref_of, convert) -> Bias:
    """Validate `bias` against q (batch, seqlen_q, nheads, d) and k: broadcastable to (batch,
    nheads, seqlen_q, seqlen_k) with every dim full or 1 except the keys' (seqlen_k), fp16, bf16
    or float32, on q's device. ref_of(array) is an array's Ref; convert(array, dtype name or None)
    a copy in that dtype (None: its own), keys contiguous, for what the kernels cannot read in
    place (the other 16-bit dtype than q's: float32; keys not contiguous)."""
    ref = ref_of(bias)
    batch, seqlen_q, nheads, _ = q.shape
    full = (batch, nheads, seqlen_q, k.shape[1])
    if ref.dtype not in BIAS_DTYPES:
        raise TypeError(f"bias must be float16, bfloat16 or float32, got {ref.dtype}")
    if not 1 <= len(ref.shape) <= 4:
        raise ValueError(f"bias must have 1 to 4 dims broadcastable to (batch, nheads, seqlen_q, seqlen_k) = {full}, "
                         f"got shape {tuple(ref.shape)}")
    shape4 = (1,) * (4 - len(ref.shape)) + tuple(ref.shape)
    if shape4[3] != full[3] or any(n not in (1, f) for n, f in zip(shape4[:3], full[:3])):
        raise ValueError(f"bias of shape {tuple(ref.shape)} does not broadcast to (batch, nheads, seqlen_q, seqlen_k) "
                         f"= {full}: its last dim must be seqlen_k, each other dim 1 or full")
    if ref.device != q.device:
        raise ValueError(f"bias is on GPU {ref.device} but q is on GPU {q.device}")
    array = bias
    if ref.dtype != q.dtype and ref.dtype != "float32":
        array = convert(bias, "float32")
    elif full[3] > 1 and ref.strides[-1] != 1:
        array = convert(bias, None)
    kernel_ref = ref if array is bias else ref_of(array)
    strides4 = (0,) * (4 - len(ref.shape)) + tuple(kernel_ref.strides)
    strides4 = tuple(0 if n == 1 else st for n, st in zip(shape4, strides4))
    ref4 = kernel_ref._replace(shape=shape4, strides=strides4)
    return Bias(array, ref4, 32 if kernel_ref.dtype == "float32" else 16, tuple(ref.shape), ref.dtype)


def with_bias(opts: Options, bias: Bias | None) -> Options:
    """opts with the bias's switch and pointer (unchanged for None)."""
    if bias is None:
        return opts
    return replace(opts, features=replace(opts.features, bias=bias.bits), bias=bias.ref)


def _cupy_convert(x, dtype):
    cp = _cupy()
    return cp.ascontiguousarray(x, dtype=dtype) if dtype is not None else cp.ascontiguousarray(x)


class DbiasPlan(NamedTuple):
    """Where the backward puts dbias (kernels_cu/common/score_mod.cuh BiasGrad): a zeroed buffer of
    `shape` (the bias's own 4-D shape, or, deterministic, expanded over the broadcast dims that
    would need atomics), the kernel's strides (batch, head, row; 0 sums that dim), whether it
    accumulates with atomics, `sum_axes`: the axes the host then sums (deterministic), and `f32`:
    the buffer is float32 (atomics and expanded buffers); else it has the bias's kernel dtype and
    each entry is stored once, already rounded."""

    shape: tuple
    strides: tuple
    atomic: bool
    sum_axes: tuple
    f32: bool = True


def dbias_plan(bias4_shape: tuple, full: tuple, deterministic: bool) -> DbiasPlan:
    """The dbias buffer for a bias of 4-D shape bias4_shape broadcast to full = (batch, nheads,
    seqlen_q, seqlen_k). Broadcast dims of length > 1 share an entry between several (b, h, i):
    atomics, or with deterministic=True a buffer expanded over them (one writer per entry, then a
    fixed-order sum on the host: extra memory 4 * prod of the expanded shape bytes)."""
    shared = tuple(n == 1 and f > 1 for n, f in zip(bias4_shape[:3], full[:3]))
    if deterministic and any(shared):
        shape = tuple(f if s else n for n, f, s in zip(bias4_shape[:3], full[:3], shared)) + (full[3],)
        sum_axes = tuple(a for a in range(3) if shared[a])
        atomic, summed = False, (False, False, False)
    else:
        shape, sum_axes, atomic, summed = tuple(bias4_shape), (), any(shared), shared
    sk = full[3]
    # A summed dim has stride 0; so has a batch or head dim of one entry (only index 0 occurs).
    # The row stride is 0 only when summed: the kernel takes 0 as "sum over the queries".
    batch_stride = 0 if shape[0] == 1 else shape[1] * shape[2] * sk
    head_stride = 0 if shape[1] == 1 else shape[2] * sk
    row_stride = 0 if summed[2] else sk
    return DbiasPlan(shape, (batch_stride, head_stride, row_stride), atomic, sum_axes, atomic or bool(sum_axes))


def dbias_buffer(bias: Bias, q: Ref, k: Ref, deterministic: bool, zeros, ref_of) -> tuple:
    """(plan, buffer, the backward's dbias fields) for a validated bias: the buffer from
    zeros(shape, NumPy dtype name) (float32, or the dtype the kernels read the bias in), ref_of
    its Ref; finish_dbias turns it into dbias after the backward."""
    plan = dbias_plan(bias.ref.shape, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]), deterministic)
    buffer = zeros(plan.shape, "float32" if plan.f32 else bias.ref.dtype)
    fields = {"dbias": ref_of(buffer).ptr, "dbias_batch_stride": plan.strides[0],
              "dbias_head_stride": plan.strides[1], "dbias_row_stride": plan.strides[2],
              "dbias_atomic": int(plan.atomic), "dbias_f32": int(plan.f32)}
    return plan, buffer, fields


def _window(window_size, causal: bool) -> tuple[int, int]:
    """(left, right) from flash-attn's window_size, with causal forcing right = 0."""
    try:
        entries = tuple(window_size)
    except TypeError:
        raise TypeError(f"window_size must be a pair (left, right) of ints >= -1, got {window_size!r}") from None
    if len(entries) != 2:
        raise ValueError(f"window_size must be a pair (left, right) of ints >= -1, got {window_size!r}")
    for x in entries:
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"window_size entries must be ints >= -1 (-1: unbounded), got {window_size!r}")
        if x < -1:
            raise ValueError(f"window_size entries must be >= -1 (-1: unbounded), got {window_size!r}")
    left, right = int(entries[0]), int(entries[1])
    return (left, 0) if causal else (left, right)


def _mask_kind(causal: bool, left: int, right: int) -> str:
    if left == -1 and right == -1:
        return "none"
    if left == -1 and right == 0:
        return "causal"
    return "local"


def _check_f32_vector(x: Ref, name: str, q: Ref, shapes: tuple, shape_text: str) -> Ref:
    """A float32 GPU array on q's device, of one of `shapes`, contiguous in its last dim."""
    if x.dtype != "float32":
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if tuple(x.shape) not in shapes:
        raise ValueError(f"{name} must have shape {shape_text}, got {tuple(x.shape)}")
    if x.device != q.device:
        raise ValueError(f"{name} is on GPU {x.device} but q is on GPU {q.device}")
    if 0 not in x.shape and x.strides[-1] != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension: pass a contiguous copy")
    return x


@functools.lru_cache(maxsize=4096)
def _value_options(head_dim: int, softmax_scale, causal, window_size, softcap, alibi: bool, sink: bool):
    """(scale, features, window, softcap) of the value options, memoised: a repeated call with the
    same options pays for one dict lookup (DESIGN 4c)."""
    scale = _softmax_scale(softmax_scale, head_dim)
    left, right = _window(window_size, bool(causal))
    try:
        cap = float(softcap)
    except (TypeError, ValueError):
        raise TypeError(f"softcap must be a number >= 0 (0: off), got {softcap!r}") from None
    if not (math.isfinite(cap) and cap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0 (0: off), got {softcap!r}")
    features = Features(_mask_kind(bool(causal), left, right), softcap=cap > 0, alibi=alibi, sink=sink)
    return scale, features, (left, right), cap


@functools.lru_cache(maxsize=4096)
def _plain_options(*key) -> Options:
    return Options(*_value_options(*key))


def options(q: Ref, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
            alibi_slopes: Ref | None = None, learnable_sink: Ref | None = None) -> Options:
    """Validate every attention option (each error names its argument) into Options."""
    batch, _, nheads, head_dim = q.shape
    alibi, sink = alibi_slopes is not None, learnable_sink is not None
    key = (head_dim, softmax_scale, causal, window_size, softcap, alibi, sink)
    try:
        if not (alibi or sink):
            return _plain_options(*key)
        values = _value_options(*key)
    except TypeError as e:
        if "unhashable" not in str(e):
            raise
        values = _value_options.__wrapped__(*key)  # a list window_size or an array scale: not memoised
        if not (alibi or sink):
            return Options(*values)
    if alibi:
        alibi_slopes = _check_f32_vector(alibi_slopes, "alibi_slopes", q, ((nheads,), (batch, nheads)),
                                         f"(nheads,) = ({nheads},) or (batch, nheads) = ({batch}, {nheads})")
    if sink:
        learnable_sink = _check_f32_vector(learnable_sink, "learnable_sink", q, ((nheads,),),
                                           f"(nheads,) = ({nheads},)")
    return Options(*values, alibi_slopes, learnable_sink)


# ---------------------------------------------------------------- running on Refs


def fwd_spec(dtype: str, head_dim: int, features: Features, device: int, band: int = 0, seqlen_q: int = 0,
             softcap: float = 0.0, bias_per_key: bool = False):
    return support.fwd_spec(dtype, head_dim, features, _compute_capability(device), env.sm90_enabled(),
                            _smem_limit(device), band, seqlen_q, softcap, bias_per_key)


def bwd_spec(dtype: str, head_dim: int, features: Features, deterministic: bool, device: int):
    return support.bwd_spec(dtype, head_dim, features, bool(deterministic), _compute_capability(device),
                            env.sm90_enabled(), _smem_limit(device))


def _smem_limit(device: int) -> int:
    """Shared memory per block the tiles may use: CUFLASH_SMEM_LIMIT, else what the device allows."""
    override = env.smem_limit_override()
    return override if override is not None else _device_smem_limit(device)


@functools.lru_cache(maxsize=None)
def _device_smem_limit(device: int) -> int:
    return int(_cupy().cuda.Device(device).attributes["MaxSharedMemoryPerBlockOptin"])


def run_forward(q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref | None, opts: Options, stream: int) -> None:
    """The forward for validated Refs on `stream` (q's device current); no-op for an empty output."""
    batch, seqlen_q, nheads, head_dim = q.shape
    if batch and seqlen_q and nheads:
        per_key = opts.bias is not None and opts.bias.strides[2] == 0  # one row per (batch, head)
        spec = fwd_spec(KERNEL_DTYPES[q.dtype], head_dim, opts.features, q.device, opts.band, seqlen_q,
                        opts.softcap, per_key)
        launch.forward(spec, q, k, v, out, lse, opts.fields, stream)


def run_backward(dout: Ref, q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref, dq: Ref, dk: Ref, dv: Ref,
                 opts: Options, deterministic: bool, dlse: Ref | None, alloc: launch.Alloc, stream: int,
                 dbias_fields: dict | None = None):
    """The backward for validated Refs on `stream` (q's device current). Returns launch.backward's
    SinkPart for dsink() (None without a learnable sink, or when batch * nheads is 0: then dq, dk,
    dv are empty too)."""
    batch, _, nheads, head_dim = q.shape
    if not (batch and nheads):
        return None
    spec = bwd_spec(KERNEL_DTYPES[q.dtype], head_dim, opts.features, deterministic, q.device)
    return launch.backward(spec, dout, q, k, v, out, lse, dq, dk, dv, opts.fields, dlse, alloc, stream,
                           dbias_fields=dbias_fields)


# ---------------------------------------------------------------- launch plans of repeated calls
#
# DESIGN 4c: a plain call (no alibi, sink, bias, dropout, dlse or preallocated outputs) that
# repeats the shapes, strides, dtypes, devices and options of an earlier call replays that
# call's launch.Plan. The front end builds the key from its own arrays' attributes (no Refs),
# checks what the key does not fix (16-byte aligned pointers, the current device), allocates
# the outputs and replays. The first call of a kind takes the validated path and then records
# its plan here. Slots: forward (q, k, v, out, lse); backward (dout, q, k, v, out, lse, dq, dk,
# dv, scratch).

_PLANS: dict = {}
#: Plans kept at most (a server that meets ever new shapes must not grow without bound).
PLAN_LIMIT = 1024


def recorded_plan(key):
    """The recorded plan of a call's key, or None (also for an unhashable key: a list window)."""
    try:
        return _PLANS.get(key)
    except TypeError:
        return None


def _at(x: Ref | None, slot: int) -> Ref | None:
    return None if x is None else x._replace(ptr=launch.placeholder(slot))


def remember(key, plan_: launch.Plan) -> None:
    """Keep a recorded plan under key (a front end's own key; unhashable keys are not kept)."""
    try:
        hash(key)
    except TypeError:
        return
    if len(_PLANS) >= PLAN_LIMIT:
        _PLANS.clear()
    _PLANS[key] = plan_


def remember_forward(key, q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref | None, opts: Options) -> None:
    """Record, under key, the plan of run_forward for these validated Refs (after the call ran)."""
    remember(key, launch.record(
        lambda alloc: run_forward(_at(q, 0), _at(k, 1), _at(v, 2), _at(out, 3), _at(lse, 4), opts, 0), 5, q.device))


def remember_backward(key, dout: Ref, q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref, dq: Ref, dk: Ref, dv: Ref,
                      opts: Options, deterministic: bool) -> None:
    """Record, under key, the plan of run_backward (no dlse, sink or dbias) for these Refs."""
    remember(key, launch.record(
        lambda alloc: run_backward(_at(dout, 0), _at(q, 1), _at(k, 2), _at(v, 3), _at(out, 4), _at(lse, 5),
                                   _at(dq, 6), _at(dk, 7), _at(dv, 8), opts, deterministic, None, alloc, 0), 9,
        q.device))


def kvcache_plannable(cache_seqlens, block_table, cache_batch_idx, cache_leftpad, alibi_slopes, learnable_sink,
                      check_indices) -> bool:
    """Whether an attention_with_kvcache call may replay a plan: an array cache_seqlens (an int is
    filled into one per call), no alibi or sink, and no index arrays to check on the host. Its
    slots: q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad,
    rotary_cos, rotary_sin, used (int32 (batch,) when k is given), out, lse rows ((nheads, batch *
    seqlen_q) float32 or absent), then the plan's allocations."""
    return (alibi_slopes is None and learnable_sink is None and cache_seqlens is not None
            and not isinstance(cache_seqlens, numbers.Integral)
            and not (check_indices and (block_table is not None or cache_batch_idx is not None
                                        or cache_leftpad is not None)))


def remember_kvcache(key, q: Ref, k_cache: Ref, v_cache: Ref, k: Ref | None, v: Ref | None, lengths: Ref,
                     used: Ref | None, out: Ref, lse_rows: Ref | None, opts: Options, cache: KvCache,
                     num_splits: int, rotary: tuple | None) -> None:
    """Record, under key, the plan of run_kvcache for these checked Refs (kvcache_plannable's slots),
    when the call runs on the decode kernel (the prefill path reads offset arrays of its own)."""
    if not uses_decode_kernel(q, k_cache, v_cache, cache):
        return
    m = cache.cache_map
    cache_at = cache._replace(cache_map=m._replace(block_table=_at(m.block_table, 6),
                                                   cache_batch_idx=_at(m.cache_batch_idx, 7),
                                                   cache_leftpad=_at(m.cache_leftpad, 8)))
    rotary_at = None if rotary is None else (_at(rotary[0], 9), _at(rotary[1], 10), rotary[2])
    remember(key, launch.record(lambda alloc: run_kvcache(
        _at(q, 0), _at(k_cache, 1), _at(v_cache, 2), _at(k, 3), _at(v, 4), _at(lengths, 5), _at(used, 11),
        _at(out, 12), _at(lse_rows, 13), opts, cache_at, int(num_splits), alloc, None, 0, rotary_at), 14, q.device))


def _forget_plans() -> None:
    _PLANS.clear()


cache.on_clear(_forget_plans)  # a plan holds kernel handles: dropped with the loaded kernels


def _cupy_key(kind: str, arrays: tuple, *options):
    """A plan key from CuPy arrays' shapes, strides, dtypes and devices (None: an absent optional
    array), the options and the selection environment; None unless every array is a CuPy array."""
    nd = _cupy().ndarray
    key = [kind]
    for x in arrays:
        if x is None:
            key.append(None)
        elif type(x) is not nd:
            return None
        else:
            key += (x.shape, x.strides, x.dtype, x.data.device_id)
    return (*key, *options, env.selection_key())


def _aligned(*arrays) -> bool:
    """Every array's pointer on a 16-byte boundary (what a plan key leaves open)."""
    bits = 0
    for x in arrays:
        bits |= x.data.ptr
    return not bits & 15


# ---------------------------------------------------------------- CuPy entry points


def _refs(arrays: dict) -> tuple:
    """(CuPy arrays, their Refs) for {name: array or None}; None stays None."""
    xs = tuple(None if x is None else _as_gpu_array(x, n) for n, x in arrays.items())
    return xs, tuple(None if x is None else cupy_ref(x) for x in xs)


def attention(
    q,
    k,
    v,
    *,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    bias=None,
    learnable_sink=None,
    dropout_p=0.0,
    seed=None,
    return_lse=False,
    return_attn_probs=False,
    out=None,
):
    """Exact attention softmax(q k^T * softmax_scale) v, FlashAttention style.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim),
    fp16, bf16 or float32 CuPy arrays (or GPU tensors with __dlpack__), last dim contiguous,
    rows 16-byte aligned; nheads % nheads_kv == 0 (GQA/MQA); headdim a multiple of 8 up to 256.
    causal and window_size=(left, right) masks are aligned to the bottom-right
    corner: query i sees key j iff i + seqlen_k - seqlen_q - left <= j <=
    i + seqlen_k - seqlen_q + right (-1: unbounded; causal=True sets right = 0).
    softcap > 0 caps the scaled scores: s = softcap * tanh(s / softcap).
    alibi_slopes: float32 (nheads,) or (batch, nheads); adds
    -slope * |i + seqlen_k - seqlen_q - j| to the scores.
    learnable_sink: float32 (nheads,), one logit per head that joins every row's
    softmax denominator but has no value.
    bias: an additive bias broadcastable to (batch, nheads, seqlen_q, seqlen_k): 1 to 4
    dims, the last seqlen_k, each other dim full or 1 (a (batch, 1, 1, seqlen_k) per-key
    bias, a (1, nheads, seqlen_q, seqlen_k) shared one, a stride-0 broadcast view), fp16,
    bf16 or float32; added to the scaled (and softcapped) scores, so -inf entries mask.
    Read tile by tile in place (a bias whose keys are not contiguous, or of the other
    16-bit dtype than q, is first copied: keys contiguous, float32).
    A query that sees no key gets output 0 and lse -inf (with a sink: lse = sink).
    dropout_p in [0, 1): each probability is dropped with probability dropout_p
    rounded to the nearest multiple of 1/256 (reference.dropout_rate; a random byte
    per entry, as flash-attn 2.x) and kept ones are scaled by 1 / (1 - dropout_p),
    by a Philox mask on absolute (batch, head, query, key) coordinates (DESIGN 3):
    seed (an int in [0, 2^64), or a pair (seed, offset) with offset in [0, 2^32)) fixes the mask, so the backward given
    the same seed sees the same one. seed=None draws a fresh seed and returns it
    (last in the result tuple); attention_backward needs it.

    Returns out (batch, seqlen_q, nheads, headdim) in q's dtype, and with
    return_lse=True also lse (batch, nheads, seqlen_q) float32, natural log.
    return_attn_probs=True returns (out, lse, probs): probs (batch, nheads,
    seqlen_q, seqlen_k) float32 are the softmax probabilities with the entries
    that dropout drops negated (flash-attn 2.x's convention), computed by
    cuflash.reference from the same inputs and mask: for tests, at small sizes.
    out: optional preallocated output (that shape and dtype, on q's device,
    last dim contiguous), written in place and returned.
    """
    key = None
    if alibi_slopes is None and learnable_sink is None and bias is None and not dropout_p and not return_attn_probs:
        arrays = (q, k, v) if out is None else (q, k, v, out)
        key = _cupy_key("fwd", arrays, softmax_scale, causal, window_size, softcap, bool(return_lse))
        replayed = recorded_plan(key)
        if replayed is not None and _aligned(*arrays) and _current_device() == q.data.device_id:
            cp = _cupy()
            if out is None:
                out = cp.empty(q.shape, dtype=q.dtype)
            lse = cp.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=np.float32) if return_lse else None
            replayed.replay((q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, 0 if lse is None else lse.data.ptr),
                            cp.cuda.get_current_stream().ptr)
            return (out, lse) if return_lse else out
    drop = dropout_options(dropout_p, seed) if dropout_p else None
    cp = _cupy()
    nd = cp.ndarray
    q = q if type(q) is nd else _as_gpu_array(q, "q")
    k = k if type(k) is nd else _as_gpu_array(k, "k")
    v = v if type(v) is nd else _as_gpu_array(v, "v")
    qr, kr, vr = cupy_ref(q), cupy_ref(k), cupy_ref(v)
    validate_qkv(qr, kr, vr)
    if alibi_slopes is None and learnable_sink is None:
        opts = options(qr, softmax_scale, causal, window_size, softcap)
    else:
        (alibi_slopes, learnable_sink), (ar, sr) = _refs({"alibi_slopes": alibi_slopes,
                                                          "learnable_sink": learnable_sink})
        opts = options(qr, softmax_scale, causal, window_size, softcap, ar, sr)
    if drop is not None:
        opts = with_dropout(opts, drop)
    if bias is not None:
        bias = check_bias(_as_gpu_array(bias, "bias"), qr, kr, cupy_ref, _cupy_convert)
        opts = with_bias(opts, bias)
    with device_scope(qr.device):
        if out is None:
            out = cp.empty(q.shape, dtype=q.dtype)
            outr = cupy_ref(out)
        else:
            out = _as_gpu_array(out, "out")
            outr = check_like(cupy_ref(out), qr, "out", "q")
        lse = lser = None
        if return_lse or return_attn_probs:
            lse = cp.empty((qr.shape[0], qr.shape[2], qr.shape[1]), dtype=np.float32)
            lser = cupy_ref(lse)
        run_forward(qr, kr, vr, outr, lser, opts, cp.cuda.get_current_stream().ptr)
        if key is not None:
            remember_forward(key, qr, kr, vr, outr, lser, opts)
        results = (out, lse) if return_lse or return_attn_probs else (out,)
        if return_attn_probs:
            results += (attention_probs(q, k, v, opts, alibi_slopes, learnable_sink,
                                        None if bias is None else bias.array),)
    return _with_drawn_seed(results, drop, seed)


def _with_drawn_seed(results: tuple, drop: DropoutRng | None, seed):
    """A forward's results, plus the seed it drew (dropout with seed=None) last; one array alone."""
    if drop is not None and seed is None:
        results += (drop.seed,)
    return results if len(results) > 1 else results[0]


def attention_probs(q, k, v, opts: Options, alibi_slopes, learnable_sink, bias=None):
    """return_attn_probs' probabilities (batch, nheads, seqlen_q, seqlen_k) float32 on q's device:
    reference.attention_probs (float64 on the GPU) with the kernels' dropout mask."""
    cp = _cupy()
    batch, seqlen_q, nheads, _ = q.shape
    mask = None
    if opts.dropout is not None:
        d = opts.dropout
        mask = cp.asarray(reference.dropout_keep_mask(d.seed, d.offset, batch, nheads, seqlen_q, k.shape[1], d.p))
    probs = reference.attention_probs(
        q, k, v, softmax_scale=opts.scale,
        window_size=opts.window, softcap=opts.softcap, alibi_slopes=alibi_slopes, bias=bias,
        learnable_sink=learnable_sink, dropout_p=0.0 if mask is None else opts.dropout.p, dropout_mask=mask,
        precision="float64")
    return probs.astype(np.float32)


def attention_backward(
    dout,
    q,
    k,
    v,
    out,
    lse,
    *,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    bias=None,
    learnable_sink=None,
    dropout_p=0.0,
    seed=None,
    dlse=None,
    deterministic=False,
    bias_requires_grad=False,
    dq=None,
    dk=None,
    dv=None,
):
    """Gradients of attention(q, k, v, ...) with respect to q, k and v, FlashAttention-2 style.

    dout: gradient of the output, shaped and typed like q. out, lse: the forward's
    output and its lse (attention(..., return_lse=True)), from the same q, k, v and
    options. q, k, v and the options (softmax_scale, causal, ...) as for attention().
    deterministic=True makes dq, dk, dv (and dsink) bitwise reproducible across runs
    (dQ is accumulated in a fixed order), at some cost in speed.
    dlse: optional float32 (batch, nheads, seqlen_q), the gradient of a loss that also
    reads lse (it adds dlse * P to dS, i.e. -dlse to delta).
    dropout_p, seed: the forward's (with seed=None the forward returned the seed it drew).

    bias: the forward's bias. With bias_requires_grad=True the result also holds dbias
    (after dv), the bias's shape and dtype: dS summed over the dims the bias broadcasts
    (dbias_plan: entries with one writer stored in the bias's dtype, shared ones added in a
    float32 buffer of the bias's own size; with deterministic=True and a broadcast dim, a
    float32 buffer expanded over the broadcast dims, e.g. 4 * batch * nheads * seqlen_q *
    seqlen_k bytes for a (1, 1, 1, seqlen_k) bias).

    Returns (dq, dk, dv) like q, k, v in their dtype, [dbias,] and with learnable_sink also
    dsink, float32 (nheads,): -sum over batch and rows of exp(sink - lse) * (rowsum(dout * out) - dlse).
    Under GQA/MQA dk and dv are summed over the query heads that share a kv head. Queries that see no key
    contribute nothing (their dq rows are 0). dq, dk, dv: optional preallocated
    outputs (shape and dtype of q, k, v, on q's device, last dim contiguous, not
    overlapping any input), written in place and returned.
    """
    key = None
    if (alibi_slopes is None and learnable_sink is None and bias is None and not dropout_p and dlse is None
            and dq is None and dk is None and dv is None):
        key = _cupy_key("bwd", (dout, q, k, v, out, lse), softmax_scale, causal, window_size, softcap,
                        bool(deterministic))
        replayed = recorded_plan(key)
        if replayed is not None and _aligned(dout, q, k, v, out) and _current_device() == q.data.device_id:
            cp = _cupy()
            dq, dk, dv = cp.empty(q.shape, dtype=q.dtype), cp.empty(k.shape, dtype=k.dtype), cp.empty(v.shape, v.dtype)
            (shape, _), = replayed.allocations  # the backward's one float32 scratch buffer
            scratch = cp.empty(shape, dtype=np.float32)
            replayed.replay((dout.data.ptr, q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, lse.data.ptr,
                             dq.data.ptr, dk.data.ptr, dv.data.ptr, scratch.data.ptr), cp.cuda.get_current_stream().ptr)
            return dq, dk, dv
    if bias is None and bias_requires_grad:
        raise ValueError("bias_requires_grad=True needs the forward's bias")
    drop = dropout_options(dropout_p, seed, backward=True) if dropout_p else None
    arrays, refs = _refs({"q": q, "k": k, "v": v, "dout": dout, "out": out, "lse": lse, "dlse": dlse,
                          "alibi_slopes": alibi_slopes, "learnable_sink": learnable_sink,
                          "dq": dq, "dk": dk, "dv": dv})
    q, k, v, dout, out, lse, dlse, alibi_slopes, learnable_sink, dq, dk, dv = arrays
    qr, kr, vr, doutr, outr, lser, dlser, ar, sr, dqr, dkr, dvr = refs
    validate_qkv(qr, kr, vr)
    check_like(doutr, qr, "dout", "q")
    check_like(outr, qr, "out", "q")
    check_lse(lser, qr)
    if dlser is not None:
        check_lse(dlser, qr, "dlse")
    opts = with_dropout(options(qr, softmax_scale, causal, window_size, softcap, ar, sr), drop)
    if bias is not None:
        bias = check_bias(_as_gpu_array(bias, "bias"), qr, kr, cupy_ref, _cupy_convert)
        opts = with_bias(opts, bias)

    cp = _cupy()
    with device_scope(qr.device):
        grads = []
        for x, xr, like, like_r, n, like_n in ((dq, dqr, q, qr, "dq", "q"), (dk, dkr, k, kr, "dk", "k"),
                                               (dv, dvr, v, vr, "dv", "v")):
            if x is None:
                x = cp.empty(like.shape, dtype=like.dtype)
                xr = cupy_ref(x)
            else:
                check_like(xr, like_r, n, like_n)
            grads.append((x, xr))
        (dq, dqr), (dk, dkr), (dv, dvr) = grads
        plan = buffer = fields = None
        if bias_requires_grad:
            plan, buffer, fields = dbias_buffer(bias, qr, kr, deterministic,
                                                lambda shape, name: cp.zeros(shape, dtype=_cupy_dtype(name)), cupy_ref)
        part = run_backward(doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, deterministic, dlser,
                            cupy_alloc, cp.cuda.get_current_stream().ptr, fields)
        if key is not None:
            remember_backward(key, doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, deterministic)
        grads = (dq, dk, dv)
        if bias_requires_grad:
            grads += (finish_dbias(buffer, plan, bias, lambda x: _numpy_name(x.dtype), _cupy_cast),)
        if learnable_sink is None:
            return grads
        return *grads, dsink(cp, part, learnable_sink, lse, dlse)


def finish_dbias(buffer, plan: DbiasPlan, bias: Bias, dtype_name, cast):
    """dbias from the kernel's buffer (CuPy or torch): the deterministic sums over the expanded
    dims (both frameworks' reductions add in a fixed order), then the bias's own shape and dtype.
    dtype_name(array) is an array's NumPy dtype name; cast(array, name) converts it."""
    if plan.sum_axes:
        buffer = buffer.sum(plan.sum_axes)  # the summed dims become the bias's 1s in the reshape
    buffer = buffer.reshape(bias.shape)
    return buffer if dtype_name(buffer) == bias.dtype else cast(buffer, bias.dtype)


def _cupy_cast(x, name: str):
    return x.astype(_cupy_dtype(name))


# ---------------------------------------------------------------- variable-length batches


def check_sequence_lengths(cu_host, name: str, total: int, max_seqlen: int, max_name: str):
    """Check cu_seqlens (on the host, int64 (batch + 1,)) against the rows it indexes; returns
    the lengths. Each error names the argument."""
    if cu_host.ndim != 1 or len(cu_host) < 1:
        raise ValueError(f"{name} must be 1-D (batch + 1,), got shape {cu_host.shape}")
    if cu_host[0] != 0:
        raise ValueError(f"{name} must start at 0, got {int(cu_host[0])}")
    lengths = np.diff(cu_host)
    if (lengths < 0).any():
        i = int(np.argmax(lengths < 0))
        raise ValueError(f"{name} must be non-decreasing: entry {i + 1} ({int(cu_host[i + 1])}) < entry {i} "
                         f"({int(cu_host[i])})")
    if cu_host[-1] != total:
        raise ValueError(f"{name}[-1] must equal the number of rows ({total}), got {int(cu_host[-1])}")
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > max_seqlen:
        raise ValueError(f"{max_name} ({max_seqlen}) is smaller than the longest sequence of {name} ({longest})")
    return lengths


def check_sequence_arrays(cu_q: Ref, cu_k: Ref, used: Ref | None, q_device: int) -> int:
    """cu_seqlens_q, cu_seqlens_k (int32 (batch + 1,)) and seqused_k (int32 (batch,) or None) as
    Refs: types, shapes, device, contiguity, each error naming its argument. Returns batch."""
    batch = cu_q.shape[0] - 1 if len(cu_q.shape) == 1 else -1
    for x, name, length in ((cu_q, "cu_seqlens_q", None), (cu_k, "cu_seqlens_k", batch + 1),
                            (used, "seqused_k", batch)):
        if x is None:
            continue
        if x.dtype != "int32":
            raise TypeError(f"{name} must be int32, got {x.dtype}")
        if len(x.shape) != 1 or (x.shape[0] != length if length is not None else x.shape[0] < 1):
            want = f"({length},)" if length is not None else "(batch + 1,)"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
        if x.device != q_device:
            raise ValueError(f"{name} is on GPU {x.device} but q is on GPU {q_device}")
        if x.shape[0] and x.strides[0] != 1:
            raise ValueError(f"{name} must be contiguous: pass a contiguous copy")
    return batch


def check_varlen_lse(x: Ref | None, q: Ref, name: str = "lse") -> None:
    """lse (or dlse) of a varlen call: float32 (nheads, total_q) on q's device (q as _varlen_ref gives it)."""
    nheads, total_q = q.shape[2], q.shape[1]
    if x is not None and (tuple(x.shape) != (nheads, total_q) or x.dtype != "float32" or x.device != q.device):
        raise ValueError(f"{name} must be float32 (nheads, total_q) = {(nheads, total_q)} on q's GPU (as "
                         f"attention_varlen(..., return_lse=True) returns it), got {tuple(x.shape)} {x.dtype}")


def _varlen_ref(x: Ref, batch: int, rows: int) -> Ref:
    """A (total, heads, dim) array seen as (batch, rows, heads, dim) with batch stride 0: the
    layout the kernels read, each sequence finding its own rows through cu_seqlens."""
    return Ref(x.ptr, (batch, rows) + tuple(x.shape[1:]), (0,) + tuple(x.strides), x.dtype, x.device)


def check_max_seqlens(max_seqlen_q, max_seqlen_k) -> None:
    for value, n in ((max_seqlen_q, "max_seqlen_q"), (max_seqlen_k, "max_seqlen_k")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{n} must be an int >= 0, got {value!r}")


def check_varlen_lengths(host, batch: int, total_q: int, total_k: int, max_seqlen_q: int, max_seqlen_k: int):
    """The length checks of a varlen call on `host`: cu_seqlens_q, cu_seqlens_k and (when present)
    seqused_k concatenated, copied from the GPU. Each error names its argument."""
    host = np.asarray(host).astype(np.int64)
    check_sequence_lengths(host[: batch + 1], "cu_seqlens_q", total_q, int(max_seqlen_q), "max_seqlen_q")
    k_lengths = check_sequence_lengths(host[batch + 1: 2 * batch + 2], "cu_seqlens_k", total_k,
                                       int(max_seqlen_k), "max_seqlen_k")
    used = host[2 * batch + 2:]
    if len(used):
        bad = (used > k_lengths) | (used < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"seqused_k[{i}] ({int(used[i])}) must be in [0, {int(k_lengths[i])}], "
                             "the length of that sequence's keys")


def run_varlen_forward(q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref | None, opts: Options, sequences: dict,
                       max_seqlen_q: int, stream: int) -> None:
    """The varlen forward for validated Refs: q, k, v, out as (batch, total rows, heads, dim) with batch
    stride 0 (_varlen_ref), lse (nheads, total_q) or None, sequences the cu_seqlens_q / cu_seqlens_k /
    seqused_k pointers. q's device current."""
    batch, total_q, nheads, head_dim = q.shape
    rows = int(max_seqlen_q)
    if batch and nheads and rows and total_q:
        spec = fwd_spec(KERNEL_DTYPES[q.dtype], head_dim, opts.features, q.device, opts.band, rows, opts.softcap)
        # the grid covers max_seqlen_q rows per sequence (launch.fwd_grid reads q's shape)
        launch.forward(spec, q._replace(shape=(batch, rows, nheads, head_dim)), k, v,
                       out._replace(shape=(batch, rows, nheads, head_dim)), lse,
                       {**opts.fields, **sequences, "total_q": total_q, "total_k": k.shape[1]}, stream)


def run_varlen_backward(dout: Ref, q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref, dq: Ref, dk: Ref, dv: Ref,
                        opts: Options, deterministic: bool, dlse: Ref | None, alloc: launch.Alloc, stream: int,
                        sequences: dict, max_seqlen_q: int, max_seqlen_k: int):
    """The varlen backward for validated Refs laid out as for run_varlen_forward (k-side ones with
    total_k rows); returns launch.backward's SinkPart (or None) as run_backward."""
    batch, total_q, nheads, head_dim = q.shape
    if not (batch and nheads):
        return None
    spec = bwd_spec(KERNEL_DTYPES[q.dtype], head_dim, opts.features, deterministic, q.device)
    rows_q, rows_k = int(max_seqlen_q), int(max_seqlen_k)

    def longest(x, rows):  # the grids read seqlen from the shape: the longest sequence
        return x._replace(shape=(batch, rows, *x.shape[2:]))

    return launch.backward(
        spec, longest(dout, rows_q), longest(q, rows_q), longest(k, rows_k), longest(v, rows_k),
        longest(out, rows_q), lse, longest(dq, rows_q), longest(dk, rows_k), longest(dv, rows_k), opts.fields,
        dlse, alloc, stream, {**sequences, "total_q": total_q, "total_k": k.shape[1]})


def dsink(xp, part: launch.SinkPart | None, sink, lse=None, dlse=None):
    """dsink[h] = -sum over batch and rows i of P_sink,i (sum_j P_ij dP_ij - dlse_i), with
    P_sink,i = exp(sink[h] - lse_i) (DESIGN 3). The first term from the backward kernels' per-CTA
    parts (`part`, from run_backward; None: no rows, so 0); the dlse term from lse and dlse as
    (batch, nheads, rows) float32 (a varlen caller views its (nheads, total_q) ones as (1, nheads,
    total_q)). `xp`: cupy, numpy or torch, whose arrays slice, reshape and reduce alike."""
    if part is None:
        result = sink * 0
    else:
        b, h, n = part.shape
        result = -part.owner[part.offset: part.offset + b * h * n].reshape(b, h, n).sum((0, 2))
    if dlse is not None:
        # lse = -inf (a row that sees no key, under a sink of -inf): P_sink = 0 there, not NaN
        p_sink = xp.where(lse > -math.inf, xp.exp(sink[None, :, None] - lse), 0.0)
        result = result + (p_sink * dlse).sum((0, 2))
    return result


def heads_rows(lse, dlse):
    """A varlen (nheads, total_q) lse and dlse as (1, nheads, total_q) for dsink(); (None, None)
    without dlse."""
    if dlse is None:
        return None, None
    return lse.reshape(1, *lse.shape), dlse.reshape(1, *dlse.shape)


def _varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, check_lengths):
    """Check a varlen call's arrays and, with check_lengths, its lengths (on the host: one copy
    from the GPU, so one synchronisation). Returns (q, k, v, cu_q, cu_k, used, batch, and the Refs of q, k, v as (batch, total, heads,
    dim) with batch stride 0)."""
    cp = _cupy()
    q, k, v = (_as_gpu_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    for x, n in ((q, "q"), (k, "k"), (v, "v")):
        if x.ndim != 3:
            raise ValueError(f"{n} must have 3 dims (total_{'q' if n == 'q' else 'k'}, nheads, headdim) in a varlen "
                             f"call, got shape {x.shape}")
    (cu_q, cu_k, used), refs = _refs({"cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k,
                                      "seqused_k": seqused_k})
    batch = check_sequence_arrays(*refs, q.device.id)
    check_max_seqlens(max_seqlen_q, max_seqlen_k)
    if check_lengths:
        host = cp.asnumpy(cp.concatenate([cu_q, cu_k] + ([used] if used is not None else [])))
        check_varlen_lengths(host, batch, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)
    qr, kr, vr = (_varlen_ref(cupy_ref(x), batch, x.shape[0]) for x in (q, k, v))
    validate_qkv(qr, kr, vr)
    return q, k, v, cu_q, cu_k, used, batch, qr, kr, vr


@functools.lru_cache(maxsize=None)
def _with_varlen(features: Features, varlen: bool) -> Features:
    """features with the varlen switch set (memoised: dataclasses.replace costs ~10 µs a call)."""
    return replace(features, varlen=varlen)


def _varlen_options(qr, softmax_scale, causal, window_size, softcap, ar, sr) -> Options:
    opts = options(qr, softmax_scale, causal, window_size, softcap, ar, sr)
    return Options(opts.scale, _with_varlen(opts.features, True), opts.window, opts.softcap, opts.alibi_slopes,
                   opts.learnable_sink)


def attention_varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    *,
    seqused_k=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    learnable_sink=None,
    dropout_p=0.0,
    seed=None,
    return_lse=False,
    out=None,
    check_lengths=True,
):
    """attention() of a batch of sequences of their own lengths, packed along the rows.

    q: (total_q, nheads, headdim); k, v: (total_k, nheads_kv, headdim); sequence b is rows
    cu_seqlens_q[b]:cu_seqlens_q[b + 1] of q and cu_seqlens_k[b]:cu_seqlens_k[b + 1] of k, v
    (int32 (batch + 1,), from 0, non-decreasing; empty sequences allowed); with seqused_k
    (int32 (batch,)) it uses only the first seqused_k[b] of its keys. max_seqlen_q /
    max_seqlen_k: the longest lengths (they size the grid). Causal masks, windows and ALiBi
    are aligned per sequence (bottom-right, as attention()); alibi_slopes (nheads,) or
    (batch, nheads). dropout_p and seed as attention(): the mask's coordinates are sequence b's
    own (query and key positions from its start), as if each sequence were batch row b. Returns
    out (total_q, nheads, headdim) and with return_lse=True also lse (nheads, total_q) float32
    (and a drawn seed last, as attention()).

    The lengths are checked on the host before the launch, which copies cu_seqlens (and
    seqused_k) from the GPU: one synchronisation per call. check_lengths=False skips that (a
    training loop whose offsets are known good, as flash-attn trusts them): the kernels clamp
    each sequence into the tensors and to max_seqlen, so invalid offsets then give wrong values,
    never an out-of-bounds access.
    """
    drop = dropout_options(dropout_p, seed) if dropout_p else None
    cp = _cupy()
    q, k, v, cu_q, cu_k, used, batch, qr, kr, vr = _varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                                  max_seqlen_k, seqused_k, check_lengths)
    (alibi_slopes, learnable_sink), (ar, sr) = _refs({"alibi_slopes": alibi_slopes, "learnable_sink": learnable_sink})
    opts = with_dropout(_varlen_options(qr, softmax_scale, causal, window_size, softcap, ar, sr), drop)
    total_q, nheads, head_dim = q.shape
    with device_scope(qr.device):
        if out is None:
            out = cp.empty(q.shape, dtype=q.dtype)
        else:
            out = _as_gpu_array(out, "out")
            check_like(cupy_ref(out), cupy_ref(q), "out", "q")
        lse = cp.empty((nheads, total_q), dtype=np.float32) if return_lse else None
        sequences = {"cu_seqlens_q": cu_q.data.ptr, "cu_seqlens_k": cu_k.data.ptr,
                     "seqused_k": 0 if used is None else used.data.ptr}
        run_varlen_forward(qr, kr, vr, _varlen_ref(cupy_ref(out), batch, total_q),
                           None if lse is None else cupy_ref(lse), opts, sequences, max_seqlen_q,
                           cp.cuda.get_current_stream().ptr)
    return _with_drawn_seed((out, lse) if return_lse else (out,), drop, seed)


def attention_varlen_backward(
    dout,
    q,
    k,
    v,
    out,
    lse,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    *,
    seqused_k=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    learnable_sink=None,
    dropout_p=0.0,
    seed=None,
    dlse=None,
    deterministic=False,
    dq=None,
    dk=None,
    dv=None,
    check_lengths=True,
):
    """Gradients of attention_varlen(q, k, v, cu_seqlens_q, ...) with respect to q, k, v.

    dout, out: (total_q, nheads, headdim) like q; lse (and dlse): (nheads, total_q) float32, as
    attention_varlen(..., return_lse=True) returns it. Arguments and options (check_lengths too) as attention_varlen;
    deterministic, dq, dk, dv as attention_backward. Returns (dq, dk, dv), and with learnable_sink
    also dsink (nheads,) float32. With seqused_k, the keys past each sequence's used ones get
    zero gradients (dk and dv are cleared first).
    """
    drop = dropout_options(dropout_p, seed, backward=True) if dropout_p else None
    cp = _cupy()
    q, k, v, cu_q, cu_k, used, batch, qr, kr, vr = _varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                                  max_seqlen_k, seqused_k, check_lengths)
    total_q, nheads, head_dim = q.shape
    (dout, out, lse, dlse, alibi_slopes, learnable_sink), (doutr, outr, lser, dlser, ar, sr) = _refs(
        {"dout": dout, "out": out, "lse": lse, "dlse": dlse, "alibi_slopes": alibi_slopes,
         "learnable_sink": learnable_sink})
    check_like(doutr, cupy_ref(q), "dout", "q")
    check_like(outr, cupy_ref(q), "out", "q")
    check_varlen_lse(lser, qr)
    check_varlen_lse(dlser, qr, "dlse")
    opts = with_dropout(_varlen_options(qr, softmax_scale, causal, window_size, softcap, ar, sr), drop)
    with device_scope(qr.device):
        grads = []
        for x, like, n in ((dq, q, "dq"), (dk, k, "dk"), (dv, v, "dv")):
            if x is None:
                x = cp.empty(like.shape, dtype=like.dtype)
            else:
                x = _as_gpu_array(x, n)
                check_like(cupy_ref(x), cupy_ref(like), n, "qkv"[("dq", "dk", "dv").index(n)])
            grads.append(x)
        dq, dk, dv = grads
        if used is not None:  # keys past seqused_k get no gradient from the kernels: it is 0
            dk.fill(0)
            dv.fill(0)
        sequences = {"cu_seqlens_q": cu_q.data.ptr, "cu_seqlens_k": cu_k.data.ptr,
                     "seqused_k": 0 if used is None else used.data.ptr}

        def by_sequence(x):  # (total, heads, dim) -> (batch, total, heads, dim), batch stride 0
            return _varlen_ref(cupy_ref(x), batch, x.shape[0])

        part = run_varlen_backward(by_sequence(dout), qr, kr, vr, by_sequence(out), lser, by_sequence(dq),
                                   by_sequence(dk), by_sequence(dv), opts, deterministic, dlser, cupy_alloc,
                                   cp.cuda.get_current_stream().ptr, sequences, max_seqlen_q, max_seqlen_k)
        if learnable_sink is None:
            return dq, dk, dv
        return dq, dk, dv, dsink(cp, part, learnable_sink, *heads_rows(lse, dlse))


# ---------------------------------------------------------------- attention over a KV cache


#: Folded query rows (seqlen_q x query heads per kv head) up to which attention over a contiguous
#: cache runs on the split-KV decode kernel; longer chunks run on the varlen prefill kernels,
#: which read each K/V block once per 128 query rows. Paged caches and cache_batch_idx always
#: take the decode kernel.
DECODE_MAX_FOLDED_ROWS = 64


def check_kvcache_call(k, v, cache_seqlens, num_splits, rotary_cos=None, rotary_sin=None) -> None:
    """The checks of an attention_with_kvcache call that need no array: num_splits, k and v
    together, cache_seqlens with them, rotary_cos and rotary_sin together and with k, v."""
    if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0: chosen by cuflash), got {num_splits!r}")
    if (k is None) != (v is None):
        raise ValueError("k and v come together: pass both (to append to the cache) or neither")
    if k is not None and cache_seqlens is None:
        raise ValueError("appending k, v needs cache_seqlens: where each batch row's new keys go")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin come together: pass both or neither")
    if rotary_cos is not None and k is None:
        raise ValueError("rotary_cos / rotary_sin rotate q and the new keys: they need k and v (flash-attn's rule)")


def check_cache_length(value: int, seqlen_cache: int) -> None:
    if not 0 <= value <= seqlen_cache:
        raise ValueError(f"cache_seqlens ({value}) must be in [0, {seqlen_cache}] (the cache's length)")


def check_cache_lengths(x: Ref, batch: int, device: int) -> None:
    """An array cache_seqlens: contiguous int32 (batch,) on q's device (its values are not read on
    the host: the kernels clamp them to [0, seqlen_cache])."""
    if x.dtype != "int32" or x.shape != (batch,) or (batch and x.strides[0] != 1):
        raise ValueError(f"cache_seqlens must be an int or a contiguous int32 array of shape ({batch},), got "
                         f"{x.dtype} {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"cache_seqlens is on GPU {x.device} but q is on GPU {device}")


class KvCache(NamedTuple):
    """A checked KV cache: how many keys one batch row can hold, and where they live."""

    seqlen: int  # contiguous: the cache's dim 1; paged: max_pages * page_size
    cache_map: launch.CacheMap

    @property
    def contiguous_rows(self) -> bool:
        """Batch row b is cache row b from key 0 (no block table, cache_batch_idx or left padding)."""
        m = self.cache_map
        return m.block_table is None and m.cache_batch_idx is None and m.cache_leftpad is None


def check_kvcache(q: Ref, k_cache: Ref, v_cache: Ref, k: Ref | None, v: Ref | None, block_table: Ref | None = None,
                  cache_batch_idx: Ref | None = None, cache_leftpad: Ref | None = None, rotary_cos: Ref | None = None,
                  rotary_sin: Ref | None = None) -> KvCache:
    """q against the caches as attention() checks q against k and v (the caches' first dim may
    differ from the batch: pages, or the rows cache_batch_idx picks from); block_table int32
    (batch, max_pages) with contiguous rows, or cache_batch_idx int32 (batch,), not both;
    cache_leftpad int32 (batch,); k, v (when given) shaped and typed like the cache, with equal
    lengths; rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2) contiguous in q's dtype, rotary_dim
    a multiple of 16 up to headdim, seqlen_ro at least the cache's keys per row. Index values
    are checked by check_cache_indices."""
    batch = q.shape[0] if len(q.shape) == 4 else 0
    for x, n in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        if len(x.shape) != 4:
            raise ValueError(f"{n} must have 4 dims (batch or pages, seqlen or page_size, nheads_kv, headdim), "
                             f"got shape {tuple(x.shape)}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache must have the shape of k_cache: {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    num_pages, rows = k_cache.shape[:2]
    if block_table is not None:
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx and block_table exclude each other: a paged cache maps batch rows "
                             "to pages through block_table")
        bt = block_table
        if bt.dtype != "int32" or len(bt.shape) != 2 or bt.shape[0] != batch or (bt.shape[1] > 1 and bt.strides[1] != 1):
            raise ValueError(f"block_table must be an int32 array (batch, max_pages) = ({batch}, max_pages) with "
                             f"contiguous rows, got {bt.dtype} {tuple(bt.shape)} strides {bt.strides}")
        if bt.device != q.device:
            raise ValueError(f"block_table is on GPU {bt.device} but q is on GPU {q.device}")
        if rows < 1:
            raise ValueError("the page size (k_cache.shape[1] of a paged cache) must be at least 1, got 0")
        seqlen, page_size = bt.shape[1] * rows, rows
    else:
        seqlen, page_size = rows, 0
    for x, n in ((cache_batch_idx, "cache_batch_idx"), (cache_leftpad, "cache_leftpad")):
        if x is not None:
            if x.dtype != "int32" or x.shape != (batch,) or (batch and x.strides[0] != 1):
                raise ValueError(f"{n} must be a contiguous int32 array of shape ({batch},), got "
                                 f"{x.dtype} {tuple(x.shape)}")
            if x.device != q.device:
                raise ValueError(f"{n} is on GPU {x.device} but q is on GPU {q.device}")
    if (block_table is not None or cache_batch_idx is not None) and batch and not num_pages:
        raise ValueError(f"the cache has no {'pages' if block_table is not None else 'rows'} to map batch rows to "
                         f"(k_cache.shape[0] = 0)")
    if KERNEL_DTYPES.get(k_cache.dtype) not in HALF_DTYPES:
        raise TypeError(f"k_cache has dtype {k_cache.dtype}; attention_with_kvcache takes float16 or bfloat16 "
                        f"caches (float32 attention runs through cuflash.attention / attention_varlen)")
    # The caches seen with q's batch and keys per row: what attention() checks of k and v.
    validate_qkv(q, k_cache._replace(shape=(batch, seqlen, *k_cache.shape[2:])),
                 v_cache._replace(shape=(batch, seqlen, *v_cache.shape[2:])))
    if k is not None:
        for x, n in ((k, "k"), (v, "v")):
            if len(x.shape) != 4 or x.shape[0] != batch or x.shape[2:] != k_cache.shape[2:]:
                raise ValueError(f"{n} must have shape (batch, seqlen_new, nheads_kv, headdim) = ({batch}, "
                                 f"seqlen_new, {k_cache.shape[2]}, {k_cache.shape[3]}) like the cache, got "
                                 f"{tuple(x.shape)}")
            if x.dtype != k_cache.dtype or x.device != k_cache.device:
                raise ValueError(f"{n} must have the cache's dtype ({k_cache.dtype}) and device, got {x.dtype} on "
                                 f"GPU {x.device}")
            _check_layout(x, n)
        if k.shape[1] != v.shape[1]:
            raise ValueError(f"k and v must have the same seqlen_new, got {k.shape[1]} and {v.shape[1]}")
    if rotary_cos is not None:
        _check_rotary(q, rotary_cos, rotary_sin, seqlen)
    return KvCache(seqlen, launch.CacheMap(block_table, page_size, cache_batch_idx, num_pages, cache_leftpad))


def _check_rotary(q: Ref, cos: Ref, sin: Ref, seqlen: int) -> None:
    head_dim = q.shape[3]
    for x, n in ((cos, "rotary_cos"), (sin, "rotary_sin")):
        if x.dtype != q.dtype or len(x.shape) != 2:
            raise ValueError(f"{n} must be a 2-D array (seqlen_ro, rotary_dim / 2) of q's dtype {q.dtype}, got "
                             f"{x.dtype} {tuple(x.shape)}")
        if x.device != q.device:
            raise ValueError(f"{n} is on GPU {x.device} but q is on GPU {q.device}")
        if x.shape[1] and (x.strides[1] != 1 or x.strides[0] != x.shape[1] or x.ptr % 16):
            raise ValueError(f"{n} must be contiguous and 16-byte aligned, got strides {x.strides}")
    if cos.shape != sin.shape:
        raise ValueError(f"rotary_cos and rotary_sin must have one shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    rotary_dim = 2 * cos.shape[1]
    if not rotary_dim or rotary_dim % 16 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim (2 * rotary_cos.shape[1]) must be a multiple of 16 in [16, headdim = "
                         f"{head_dim}], got {rotary_dim}")
    if cos.shape[0] < seqlen:
        raise ValueError(f"rotary_cos / rotary_sin need a row per cache position: seqlen_ro >= {seqlen} (the "
                         f"cache's keys per row), got {cos.shape[0]}")


def check_cache_indices(xp, block_table, cache_batch_idx, num_pages: int, cache_leftpad=None,
                        seqlen: int = 0) -> None:
    """block_table entries in [0, num_pages) (pages) and cache_batch_idx in [0, num_pages) (cache
    rows) and cache_leftpad in [0, seqlen], CuPy arrays or torch tensors (xp: their module), read on the host (one synchronisation; the kernels also clamp them, for callers that
    cannot read them, such as a CUDA graph being captured)."""
    for x, name, what, end in ((block_table, "block_table", "pages", num_pages),
                               (cache_batch_idx, "cache_batch_idx", "cache rows", num_pages),
                               (cache_leftpad, "cache_leftpad", "keys per row, plus one", seqlen + 1)):
        if x is not None and (x.numel() if hasattr(x, "numel") else x.size):
            lo, hi = (int(y) for y in xp.stack([x.min(), x.max()]).tolist())
            if lo < 0 or hi >= end:
                raise ValueError(f"{name} entries must be in [0, {end}) (the cache's {what}), got values in "
                                 f"[{lo}, {hi}]")


def _rows_of(x: Ref, name: str) -> Ref:
    """A (batch, seqlen, heads, dim) array whose batches follow one another as (batch * seqlen,
    heads, dim) rows (batch stride = seqlen * row stride), for the varlen kernels."""
    batch, seqlen, heads, dim = x.shape
    if batch > 1 and x.strides[0] != seqlen * x.strides[1]:
        raise ValueError(f"{name} must have batch stride = seqlen * row stride (its batches one after another), "
                         f"got strides {x.strides}")
    return Ref(x.ptr, (batch * seqlen, heads, dim), x.strides[1:], x.dtype, x.device)


def uses_decode_kernel(q: Ref, k_cache: Ref, v_cache: Ref, cache: KvCache) -> bool:
    """Whether attention over this cache runs on the split-KV decode kernel: always for paged
    caches, cache_batch_idx, short query chunks and caches whose batches are not one after
    another (the varlen prefill kernels, which take the rest, see the batches as rows)."""
    if not cache.contiguous_rows or q.shape[1] * (q.shape[2] // k_cache.shape[2]) <= DECODE_MAX_FOLDED_ROWS:
        return True
    return q.shape[0] > 1 and any(x.strides[0] != x.shape[1] * x.strides[1] for x in (k_cache, v_cache))


def run_kvcache(q: Ref, k_cache: Ref, v_cache: Ref, k: Ref | None, v: Ref | None, lengths: Ref, used: Ref | None,
                out: Ref, lse_rows: Ref | None, opts: Options, cache: KvCache, num_splits: int, alloc: launch.Alloc,
                offsets, stream: int, rotary: tuple | None = None) -> None:
    """attention_with_kvcache for checked Refs (check_kvcache), q's device current: append k, v at
    `lengths` (int32 (batch,)) writing `used` (int32 (batch,)), then attention of q over each row's
    used keys (`lengths` without k, v) into out and lse_rows (nheads, batch * seqlen_q): on the
    split-KV decode kernel (num_splits parts, 0: chosen from the shape and the GPU) or, for long
    query chunks over a contiguous cache, the varlen prefill kernels. offsets: a callable giving
    the pointers of int32 [0, seqlen_q, 2 seqlen_q, ...] and [0, seqlen_cache, ...] (batch + 1
    each), asked for only by the prefill path. opts: kvcache_options. rotary: (cos, sin,
    interleaved) checked Refs, applied to q and the new keys in the append (the attention then
    reads the rotated q from scratch)."""
    batch, seqlen_q, nheads, head_dim = q.shape
    dtype = KERNEL_DTYPES[k_cache.dtype]
    rot = q_rot_owner = None
    if rotary is not None and batch:
        # q_rot_owner keeps the scratch alive until the kernels reading it are queued (frees are stream-ordered)
        q_rot_owner, q_rot = alloc((batch, seqlen_q, nheads, head_dim), q.dtype)
        step = 0 if opts.features.mask == "none" else 1  # causal or local: query i with new key i (flash-attn)
        rot = launch.Rotary(*rotary, step, q_rot)
    if k is not None and batch:
        launch.kvcache_append(k, v, k_cache, v_cache, lengths, used, cache.seqlen, cache.cache_map, dtype, stream, q,
                              rot)
    if rot is not None:
        q = rot.q_rot
    seqused = used if k is not None else lengths
    if not (batch and seqlen_q):
        return
    if uses_decode_kernel(q, k_cache, v_cache, cache):
        features = _with_varlen(opts.features, False)
        nheads_kv = k_cache.shape[2]
        sms = launch.sm_resources(q.device)
        many_units = launch.decode_many_units(batch, nheads, nheads_kv, seqlen_q, cache.cache_map, sms[0])
        spec = support.decode_spec(dtype, head_dim, features, _compute_capability(q.device), _smem_limit(q.device),
                                   many_units)
        splits = num_splits or launch.decode_splits(spec, batch, nheads, nheads_kv, seqlen_q, cache.seqlen, *sms)
        launch.decode(spec, q, k_cache, v_cache, out, lse_rows, cache.seqlen, seqused, cache.cache_map, opts.fields,
                      splits, alloc, stream)
        return
    rows = [_varlen_ref(r, batch, r.shape[0]) for r in (_rows_of(q, "q"), _rows_of(k_cache, "k_cache"),
                                                          _rows_of(v_cache, "v_cache"), _rows_of(out, "out"))]
    cu_q, cu_k = offsets()
    sequences = {"cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k, "seqused_k": seqused.ptr}
    run_varlen_forward(*rows, lse_rows, opts, sequences, seqlen_q, stream)
    del q_rot_owner


def kvcache_options(q: Ref, softmax_scale, causal, window_size, softcap, alibi: Ref | None,
                    sink: Ref | None) -> Options:
    """The options of attention_with_kvcache: attention()'s, checked against q's batch rows, on the
    varlen kernels."""
    rows = Ref(q.ptr, (q.shape[0], q.shape[0] * q.shape[1], *q.shape[2:]), (0, *q.strides[1:]), q.dtype, q.device)
    return _varlen_options(rows, softmax_scale, causal, window_size, softcap, alibi, sink)


@functools.lru_cache(maxsize=64)
def _offsets(device: int, batch: int, step: int):
    """int32 (batch + 1,) [0, step, 2 step, ...] on `device` (CuPy): the sequence offsets of a batch
    of rows of `step` each, kept per shape (they are constants)."""
    cp = _cupy()
    with cp.cuda.Device(device):
        return cp.arange(0, (batch + 1) * step, step, dtype=np.int32)


def attention_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    *,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    rotary_interleaved=True,
    alibi_slopes=None,
    learnable_sink=None,
    num_splits=0,
    return_lse=False,
    check_indices=True,
):
    """Attention of q over a KV cache, after appending new keys and values to it in place
    (flash-attn 2.x's flash_attn_with_kvcache, on CuPy arrays).

    q: (batch, seqlen_q, nheads, headdim). The cache is contiguous, k_cache, v_cache (batch,
    seqlen_cache, nheads_kv, headdim) (or (cache rows, ...) with cache_batch_idx: int32 (batch,),
    batch row b reads cache row cache_batch_idx[b]), or paged: (num_pages, page_size, nheads_kv,
    headdim) with block_table int32 (batch, max_pages), key j of batch row b in row j % page_size
    of page block_table[b, j // page_size], any page_size >= 1 (seqlen_cache = max_pages *
    page_size). k, v (optional, both or neither): (batch, seqlen_new, nheads_kv, headdim), written
    into the caches from key cache_seqlens[b] on (keys past seqlen_cache are dropped).
    cache_seqlens: an int or int32 (batch,): each row's filled length before the append (default:
    the whole cache, only without k, v). Batch row b then attends over its first
    min(cache_seqlens[b] + seqlen_new, seqlen_cache) keys; causal and windows are aligned to the
    end of those keys (bottom-right). softmax_scale, causal, window_size, softcap, alibi_slopes
    ((nheads,) or (batch, nheads)) and learnable_sink as attention(). num_splits: how many parts
    the keys are split into (0: chosen from the shape and the GPU's SM count; results agree to
    rounding). Returns out (batch, seqlen_q, nheads, headdim) and with return_lse=True also lse
    (batch, nheads, seqlen_q) float32.

    rotary_cos, rotary_sin: (seqlen_ro >= seqlen_cache, rotary_dim / 2) in q's dtype, rotary_dim a
    multiple of 16 up to headdim (with k, v only): q and the new keys are rotated at their
    positions in the same launch as the append, interleaved (GPT-J pairs 2i, 2i + 1) or not
    (GPT-NeoX pairs i, i + rotary_dim / 2); the new key i of row b sits at position
    cache_seqlens[b] - leftpad + i, and so does query i under causal or local attention, while
    without them every query sits at cache_seqlens[b] - leftpad (flash-attn 2.x). cache_leftpad:
    int32 (batch,), row b's keys start at cache key cache_leftpad[b] (left padding; the keys
    before it are not attended to). block_table, cache_batch_idx and cache_leftpad entries are
    checked on the host, which costs one synchronisation per call;
    check_indices=False skips that (a decode loop whose tables are known good): the kernels clamp
    every entry, so a bad one reads a wrong page or row, never outside the cache. An array
    cache_seqlens is not read on the host: values outside [0, seqlen_cache] are clamped.
    """
    key = None
    if kvcache_plannable(cache_seqlens, block_table, cache_batch_idx, cache_leftpad, alibi_slopes, learnable_sink,
                         check_indices):
        arrays = (q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad, rotary_cos,
                  rotary_sin)
        key = _cupy_key("kvcache", arrays, softmax_scale, causal, window_size, softcap, bool(rotary_interleaved),
                        num_splits, bool(return_lse))
        replayed = recorded_plan(key)
        if (replayed is not None and _current_device() == q.data.device_id
                and _aligned(*(x for x in (q, k_cache, v_cache, k, v, rotary_cos, rotary_sin) if x is not None))):
            cp = _cupy()
            batch, seqlen_q, nheads, _ = q.shape
            used = cp.empty((batch,), dtype=np.int32) if k is not None else None
            out = cp.empty(q.shape, dtype=q.dtype)
            lse_rows = cp.empty((nheads, batch * seqlen_q), dtype=np.float32) if return_lse else None
            scratch = [cp.empty(shape, dtype=_cupy_dtype(dtype)) for shape, dtype in replayed.allocations]
            replayed.replay(tuple(0 if x is None else x.data.ptr for x in (*arrays, used, out, lse_rows, *scratch)),
                            cp.cuda.get_current_stream().ptr)
            return _kvcache_result(out, lse_rows, return_lse)
    check_kvcache_call(k, v, cache_seqlens, num_splits, rotary_cos=rotary_cos, rotary_sin=rotary_sin)
    cp = _cupy()
    arrays, refs = _refs(
        {"q": q, "k_cache": k_cache, "v_cache": v_cache, "k": k, "v": v, "alibi_slopes": alibi_slopes,
         "learnable_sink": learnable_sink, "block_table": block_table, "cache_batch_idx": cache_batch_idx,
         "cache_leftpad": cache_leftpad, "rotary_cos": rotary_cos, "rotary_sin": rotary_sin})
    q, k_cache, v_cache, k, v, alibi_slopes, learnable_sink, block_table, cache_batch_idx, cache_leftpad = arrays[:10]
    qr, kcr, vcr, kr, vr, ar, sr, btr, cir, lpr, cosr, sinr = refs
    cache = check_kvcache(qr, kcr, vcr, kr, vr, btr, cir, lpr, cosr, sinr)
    batch, seqlen_q, nheads, _ = qr.shape
    with device_scope(qr.device):
        opts = kvcache_options(qr, softmax_scale, causal, window_size, softcap, ar, sr)
        if check_indices:
            check_cache_indices(cp, block_table, cache_batch_idx, cache.cache_map.num_pages, cache_leftpad, cache.seqlen)
        if cache_seqlens is None or isinstance(cache_seqlens, numbers.Integral):
            value = cache.seqlen if cache_seqlens is None else int(cache_seqlens)
            check_cache_length(value, cache.seqlen)
            lengths = cp.full((batch,), value, dtype=np.int32)
        else:
            lengths = _as_gpu_array(cache_seqlens, "cache_seqlens")
            check_cache_lengths(cupy_ref(lengths), batch, qr.device)
        used = cp.empty((batch,), dtype=np.int32) if k is not None else None
        if batch > 1 and qr.strides[0] != seqlen_q * qr.strides[1]:
            q = cp.ascontiguousarray(q)
        out = cp.empty(q.shape, dtype=q.dtype)
        lse_rows = cp.empty((nheads, batch * seqlen_q), dtype=np.float32) if return_lse else None

        def offsets():
            return _offsets(qr.device, batch, seqlen_q).data.ptr, _offsets(qr.device, batch, cache.seqlen).data.ptr

        qr_now, lr = cupy_ref(q), cupy_ref(lengths)
        usedr, outr = None if used is None else cupy_ref(used), cupy_ref(out)
        lser = None if lse_rows is None else cupy_ref(lse_rows)
        rotary = None if cosr is None else (cosr, sinr, bool(rotary_interleaved))
        run_kvcache(qr_now, kcr, vcr, kr, vr, lr, usedr, outr, lser, opts, cache, int(num_splits), cupy_alloc,
                    offsets, cp.cuda.get_current_stream().ptr, rotary)
        if key is not None and qr_now.ptr == qr.ptr:
            remember_kvcache(key, qr, kcr, vcr, kr, vr, lr, usedr, outr, lser, opts, cache, num_splits, rotary)
        return _kvcache_result(out, lse_rows, return_lse)


def _kvcache_result(out, lse_rows, return_lse: bool):
    """attention_with_kvcache's result: out, or (out, lse (batch, nheads, seqlen_q)) from the
    kernels' lse rows (nheads, batch * seqlen_q)."""
    if not return_lse:
        return out
    batch, seqlen_q, nheads, _ = out.shape
    return out, _cupy().ascontiguousarray(lse_rows.reshape(nheads, batch, seqlen_q).transpose(1, 0, 2))


# ---------------------------------------------------------------- merging attention states


def merge_attention_states(outs, lses):
    """The exact softmax merge of attention results over disjoint key sets (split-KV, cascade
    and ring attention build on it).

    outs: (n, batch, seqlen_q, nheads, headdim) with lses (n, batch, nheads, seqlen_q), or the
    varlen layout outs (n, total_q, nheads, headdim) with lses (n, nheads, total_q); part i is
    attention over key set i with its natural-log lse, as attention(..., return_lse=True) /
    attention_varlen return them. Returns (out, lse) with
        lse = log(sum_i exp(lse_i)),   out = sum_i exp(lse_i - lse) * out_i,
    computed in float32; out in the parts' dtype, lse float32. Parts with lse = -inf (no key
    seen) contribute nothing; a row that no part saw gets out = 0 and lse = -inf, never NaN.
    Works on CuPy arrays (on the GPU) and NumPy arrays alike.
    """
    xp = _array_module(outs, "outs")
    if _array_module(lses, "lses") is not xp:
        raise TypeError("outs and lses must both be CuPy arrays or both NumPy arrays")
    if outs.ndim not in (4, 5):
        raise ValueError(f"outs must be (n, batch, seqlen_q, nheads, headdim) or (n, total_q, nheads, headdim), "
                         f"got shape {outs.shape}")
    n = outs.shape[0]
    if outs.ndim == 5:
        _, batch, seqlen_q, nheads, _ = outs.shape
        want = (n, batch, nheads, seqlen_q)
    else:
        _, total_q, nheads, _ = outs.shape
        want = (n, nheads, total_q)
    if tuple(lses.shape) != want:
        raise ValueError(f"lses must have shape {want} to match outs {tuple(outs.shape)}, got {tuple(lses.shape)}")
    if n < 1:
        raise ValueError("outs must hold at least one part (n >= 1)")
    if np.dtype(lses.dtype) != np.float32:
        raise TypeError(f"lses must be float32 (as attention returns lse), got {lses.dtype}")
    # lse to the out layout: (n, batch, seqlen_q, nheads, 1) or (n, total_q, nheads, 1)
    lse_rows = xp.swapaxes(lses, -1, -2)[..., None]
    top = lse_rows.max(axis=0)
    # Rows no part saw: every lse is -inf; a finite stand-in keeps exp() away from (-inf) - (-inf) = NaN.
    safe_top = xp.where(xp.isneginf(top), xp.float32(0), top)
    weights = xp.exp(lse_rows - safe_top)  # exp(-inf) = 0: parts that saw nothing add nothing
    total = weights.sum(axis=0)
    merged_lse = xp.where(total > 0, safe_top + xp.log(xp.where(total > 0, total, 1)), xp.float32(-np.inf))
    out = (weights * outs.astype(np.float32)).sum(axis=0) / xp.where(total > 0, total, 1)
    return out.astype(outs.dtype), xp.swapaxes(merged_lse[..., 0], -1, -2).astype(np.float32)


def _array_module(x, name: str):
    """numpy or cupy, whichever x belongs to."""
    if isinstance(x, np.ndarray):
        return np
    if type(x).__module__.startswith("cupy"):
        return _cupy()
    raise TypeError(f"{name} must be a CuPy or NumPy array, got {type(x).__name__}")


# ---------------------------------------------------------------- packed inputs


def _unpack(packed, name: str, count: int, layout: str):
    """The `count` (batch, seqlen, heads, headdim) views of a packed array (batch, seqlen, count, heads,
    headdim): strided views of the same memory, never copies."""
    packed = _as_gpu_array(packed, name)
    if packed.ndim != 5 or packed.shape[2] != count:
        raise ValueError(f"{name} must have shape {layout}, got {packed.shape}")
    return packed, tuple(packed[:, :, i] for i in range(count))


def attention_qkvpacked(qkv, **options):
    """attention() of q, k, v packed in one array qkv (batch, seqlen, 3, nheads, headdim), read
    through strided views (no copy). Options and returns as for attention()."""
    _, (q, k, v) = _unpack(qkv, "qkv", 3, "(batch, seqlen, 3, nheads, headdim)")
    return attention(q, k, v, **options)


def attention_kvpacked(q, kv, **options):
    """attention() with k and v packed in kv (batch, seqlen_k, 2, nheads_kv, headdim), read through
    strided views (no copy). Options and returns as for attention()."""
    _, (k, v) = _unpack(kv, "kv", 2, "(batch, seqlen_k, 2, nheads_kv, headdim)")
    return attention(q, k, v, **options)


def _packed_gradient(grad, like, name: str):
    """A preallocated packed gradient checked against its input, or a new one (one allocation)."""
    cp = _cupy()
    if grad is None:
        with device_scope(like.device.id):
            return cp.empty(like.shape, dtype=like.dtype)
    grad = _as_gpu_array(grad, name)
    if grad.shape != like.shape or grad.dtype != like.dtype:
        raise ValueError(f"{name} must have the shape {like.shape} and dtype {like.dtype} of its input, "
                         f"got {grad.shape} {grad.dtype}")
    return grad


def attention_qkvpacked_backward(dout, qkv, out, lse, *, dqkv=None, **options):
    """Gradient of attention_qkvpacked: dqkv like qkv (one allocation, or the given dqkv), its three
    slices written in place by attention_backward; then what attention_backward adds (dbias with
    bias_requires_grad, dsink with learnable_sink): (dqkv, [dbias,] [dsink])."""
    qkv, (q, k, v) = _unpack(qkv, "qkv", 3, "(batch, seqlen, 3, nheads, headdim)")
    dqkv = _packed_gradient(dqkv, qkv, "dqkv")
    grads = attention_backward(dout, q, k, v, out, lse, dq=dqkv[:, :, 0], dk=dqkv[:, :, 1], dv=dqkv[:, :, 2],
                               **options)
    return dqkv if len(grads) == 3 else (dqkv, *grads[3:])


def attention_kvpacked_backward(dout, q, kv, out, lse, *, dq=None, dkv=None, **options):
    """Gradient of attention_kvpacked: (dq, dkv) with dkv like kv (one allocation, or the given dkv);
    then what attention_backward adds: (dq, dkv, [dbias,] [dsink])."""
    kv, (k, v) = _unpack(kv, "kv", 2, "(batch, seqlen_k, 2, nheads_kv, headdim)")
    dkv = _packed_gradient(dkv, kv, "dkv")
    grads = attention_backward(dout, q, k, v, out, lse, dq=dq, dk=dkv[:, :, 0], dv=dkv[:, :, 1], **options)
    return (grads[0], dkv) + tuple(grads[3:])
