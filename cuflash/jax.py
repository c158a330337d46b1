"""cuflash.jax: FlashAttention on JAX arrays, differentiable and usable inside ``jax.jit``.

    import cuflash.jax
    out = cuflash.jax.attention(q, k, v, causal=True)    # q: (batch, seqlen_q, nheads, headdim) fp16/bf16
    out, lse = cuflash.jax.attention(q, k, v, return_lse=True)
    dq, dk, dv = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

How it works (DESIGN sections 1, 8): the kernels are launched from a
``jax.experimental.buffer_callback`` on XLA's own CUDA stream, inside a jitted
program (eager calls go through a cached ``jax.jit`` too; XLA allocates every
output). A ``jax.custom_vjp`` wraps it: the forward
saves (out, lse), the backward launches cuflash's backward kernels. All
argument checks run at trace time on shapes and dtypes (api.validate_qkv and
api.options on Refs with a null pointer), so a bad input raises a Python error
naming the argument before anything is launched; only pointer alignment is
checked when the callback runs.

Limits, stated once:
- vmap works by looping: each vmapped element is one launch (``vmap_method=
  "sequential"``); fold a vmapped axis into batch yourself for speed.
- One device per call: under ``jit`` with sharded inputs, call it inside
  ``shard_map`` so each device attends on its own shard.
- The backward's scratch (fp32 dQ accumulator, lse/delta rows) comes from CuPy's
  memory pool on XLA's stream: start JAX with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
  (or a lower ``XLA_PYTHON_CLIENT_MEM_FRACTION``) so CuPy finds free memory.
- Options (softmax_scale, causal, window_size, softcap, deterministic) are
  Python values fixed at trace time; alibi_slopes and learnable_sink are arrays.
  alibi_slopes gets a zero gradient.
"""
from __future__ import annotations

import ctypes
import functools
import math
from typing import NamedTuple

try:
    import jax
    import jax.numpy as jnp
    from jax.experimental.buffer_callback import buffer_callback
except ImportError as exc:  # pragma: no cover - exercised only where JAX is missing
    raise ImportError(
        f"cuflash.jax needs JAX with its CUDA backend (pip install 'jax[cuda12]' or 'jax[cuda13]'): {exc}"
    ) from exc

import numpy as np

from . import api, reference
from .launch import Ref

__all__ = ["attention", "attention_varlen"]


class _Static(NamedTuple):
    """The options fixed at trace time (hashable: a jit cache key and a custom_vjp nondiff argument)."""

    softmax_scale: float | None
    causal: bool
    window_size: tuple  # (left, right) ints
    softcap: float
    deterministic: bool


# ---------------------------------------------------------------- trace time: shapes and dtypes


@functools.lru_cache(maxsize=None)
def _contiguous_strides(shape: tuple) -> tuple:
    """Row-major strides in elements (XLA hands custom calls dense row-major buffers)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _layout(x) -> Ref:
    """Shape, strides and dtype of an array at trace time (pointer and device are filled per call)."""
    shape = tuple(int(n) for n in x.shape)
    return Ref(0, shape, _contiguous_strides(shape), np.dtype(x.dtype).name, -1)


def _abstract_ref(x, device: int) -> Ref:
    """A Ref with a null pointer for the trace-time checks (shape, dtype, device)."""
    return _layout(x)._replace(device=device)


def _as_array(x, name: str):
    """x as a JAX array (or tracer); NumPy arrays are moved to the default device."""
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x
    if isinstance(x, np.ndarray):
        return jnp.asarray(x)
    raise TypeError(f"{name} must be a JAX array, got {type(x).__name__}")


def _static(value, name: str):
    """An option that must be known at trace time: refuse a traced value with a hint."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a Python value known at trace time, not a traced JAX value: "
            f"mark it static (jax.jit(..., static_argnames=...)) or close over it"
        )
    return value


def _device_ordinal(q) -> int:
    """The CUDA ordinal q lives on (a concrete array), or of JAX's first GPU (a tracer);
    used only by the trace-time checks: the callback reads the real one from its buffers."""
    if isinstance(q, jax.core.Tracer):
        if jax.default_backend() != "gpu":
            raise RuntimeError(
                f"cuflash.jax runs on a CUDA GPU, but JAX's default backend is {jax.default_backend()!r} "
                "(install jax[cuda12] / jax[cuda13], or run the jitted function on a GPU)"
            )
        device = jax.devices()[0]
    else:
        devices = q.devices()
        if len(devices) != 1:
            raise ValueError(
                f"q is spread over {len(devices)} devices; cuflash.jax attends on one GPU per call "
                "(call it inside jax.shard_map)"
            )
        (device,) = devices
    if device.platform != "gpu":
        raise ValueError(f"q is on a {device.platform} device; cuflash.jax needs arrays on a CUDA GPU")
    return int(device.local_hardware_id)


def _validate(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_size, softcap,
              deterministic) -> _Static:
    """Every check api.py makes, on shapes and dtypes, each error naming its argument.
    Returns the normalised static options."""
    device = _device_ordinal(q)
    qr, kr, vr = (_abstract_ref(x, device) for x in (q, k, v))
    api.validate_qkv(qr, kr, vr)
    return _static_options(qr, device, alibi_slopes, learnable_sink, softmax_scale, causal, window_size, softcap,
                           deterministic)


def _static_options(qr: Ref, device: int, alibi_slopes, learnable_sink, softmax_scale, causal, window_size,
                    softcap, deterministic) -> _Static:
    """The option checks of api.options (and that the Python ones are not traced), for q's Ref."""
    ar = None if alibi_slopes is None else _abstract_ref(alibi_slopes, device)
    sr = None if learnable_sink is None else _abstract_ref(learnable_sink, device)
    for value, name in ((softmax_scale, "softmax_scale"), (causal, "causal"), (window_size, "window_size"),
                        (softcap, "softcap"), (deterministic, "deterministic")):
        _static(value, name)
    if isinstance(window_size, (list, tuple)):
        for w in window_size:
            _static(w, "window_size")
    opts = api.options(qr, softmax_scale, causal, window_size, softcap, ar, sr)
    return _Static(None if softmax_scale is None else opts.scale, bool(causal),
                   tuple(int(w) for w in window_size), float(softcap), bool(deterministic))


class _Varlen(NamedTuple):
    """The static part of a varlen call: its options, the grid's longest sequences and the batch."""

    st: _Static
    max_seqlen_q: int
    max_seqlen_k: int
    batch: int


def _validate_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, alibi_slopes,
                     learnable_sink, softmax_scale, causal, window_size, softcap, deterministic) -> _Varlen:
    """The varlen checks of api.py on shapes and dtypes; the lengths themselves are checked on the
    host when cu_seqlens are concrete (an eager call: one copy from the GPU), and under jit they
    cannot be: the kernels clamp every sequence to the tensors (seqinfo.cuh), so invalid ones give
    wrong values, never an out-of-bounds access."""
    device = _device_ordinal(q)
    for x, n in ((q, "q"), (k, "k"), (v, "v")):
        if x.ndim != 3:
            raise ValueError(f"{n} must have 3 dims (total, nheads, headdim) in a varlen call, got {tuple(x.shape)}")
    _static(max_seqlen_q, "max_seqlen_q")
    _static(max_seqlen_k, "max_seqlen_k")
    api.check_max_seqlens(max_seqlen_q, max_seqlen_k)
    seqs = [None if x is None else _abstract_ref(x, device) for x in (cu_seqlens_q, cu_seqlens_k, seqused_k)]
    batch = api.check_sequence_arrays(*seqs, device)
    arrays = [x for x in (cu_seqlens_q, cu_seqlens_k, seqused_k) if x is not None]
    if not any(isinstance(x, jax.core.Tracer) for x in arrays):
        host = np.concatenate([np.asarray(x) for x in arrays])
        api.check_varlen_lengths(host, batch, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)
    qr, kr, vr = (api._varlen_ref(_abstract_ref(x, device), batch, x.shape[0]) for x in (q, k, v))
    api.validate_qkv(qr, kr, vr)
    st = _static_options(qr, device, alibi_slopes, learnable_sink, softmax_scale, causal, window_size, softcap,
                         deterministic)
    return _Varlen(st, int(max_seqlen_q), int(max_seqlen_k), batch)


# ---------------------------------------------------------------- run time: inside the callback


_DLPACK_ONLY: set = set()  # dtype names whose buffers refuse __cuda_array_interface__


# PyCapsule_GetPointer(capsule, name) with its own prototype (ctypes.pythonapi's shared one is left alone).
_PyCapsule_GetPointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def _dlpack_data_ptr(buf) -> int:
    """The data pointer of a buffer's DLPack capsule (DLManagedTensor starts with a DLTensor:
    void* data at offset 0 ... uint64 byte_offset at offset 40). The capsule is not
    consumed: its deleter frees it when it goes."""
    capsule = buf.__dlpack__()
    tensor = _PyCapsule_GetPointer(capsule, b"dltensor")
    data = ctypes.c_void_p.from_address(tensor).value or 0
    return data + ctypes.c_uint64.from_address(tensor + 40).value


def _buffer_ptr(buf, dtype: str) -> int:
    if dtype not in _DLPACK_ONLY:
        try:
            return buf.__cuda_array_interface__["data"][0] or 0
        except Exception:  # a jaxlib whose interface refuses this dtype (bf16), or a host buffer
            _DLPACK_ONLY.add(dtype)
    return _dlpack_data_ptr(buf)


def _bind(buf, layout: Ref, device: int, name: str) -> Ref:
    """The Ref of an XLA buffer (dense row-major, of the layout seen at trace time); its start
    must be 16-byte aligned."""
    ptr = _buffer_ptr(buf, layout.dtype)
    if ptr % 16 and 0 not in layout.shape:
        raise ValueError(f"{name} starts at {ptr:#x}, not on a 16-byte boundary as the kernels need")
    return Ref(ptr, layout.shape, layout.strides, layout.dtype, device)


def _stream(ctx) -> int:
    """XLA's CUDA stream of this call."""
    return ctx.stream


class _XlaStream:
    """XLA's stream in the CUDA stream protocol (for cupy.cuda.Stream.from_external)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def _cupy_stream(stream: int, device: int):
    """XLA's stream as a CuPy stream, to be made current (`with`): the backward's scratch then
    comes from CuPy's stream-ordered pool on it, and the dsink sum runs on it."""
    import cupy

    return cupy.cuda.Stream.from_external(_XlaStream(stream))


def _device_view(ref: Ref):
    """A CuPy array over an XLA buffer (no copy; XLA owns the memory)."""
    import cupy

    dtype = np.dtype(ref.dtype)
    nbytes = math.prod(ref.shape) * dtype.itemsize
    mem = cupy.cuda.UnownedMemory(ref.ptr, nbytes, None, ref.device)
    return cupy.ndarray(ref.shape, dtype, cupy.cuda.MemoryPointer(mem, 0))


def _dsink_into(dsink: Ref, sink: Ref, part, lse: Ref, dlse: Ref | None, varlen: bool = False) -> None:
    """dsink (nheads,) float32 from run_backward's SinkPart (api.dsink), on the current CuPy stream;
    varlen: lse and dlse are (nheads, total_q)."""
    out = _device_view(dsink)
    s = _device_view(sink)
    xp = reference.array_module(s)  # CuPy here (NumPy in the CPU tests' stand-in)
    lse_a, dlse_a = (None, None) if dlse is None else (_device_view(lse), _device_view(dlse))
    if varlen:
        lse_a, dlse_a = api.heads_rows(lse_a, dlse_a)
    out[...] = api.dsink(xp, part, s, lse_a, dlse_a)


@functools.lru_cache(maxsize=None)
def _forward_callback(st: _Static, with_lse: bool, lq: Ref, lk: Ref, la: Ref | None, ls: Ref | None):
    """The forward callback of one set of static options and layouts (one object per set, so
    JAX's compile caches hit). lq, lk: layouts of q and of k, v; la, ls: of alibi_slopes, learnable_sink.
    outs: out (batch, seqlen_q, nheads, headdim) [, lse (batch, nheads, seqlen_q) f32]."""
    llse = _lse_layout(lq)

    def callback(ctx, outs, q, k, v, alibi_slopes, learnable_sink):
        device = q.__dlpack_device__()[1]
        qr, kr, vr = _bind(q, lq, device, "q"), _bind(k, lk, device, "k"), _bind(v, lk, device, "v")
        ar = None if la is None else _bind(alibi_slopes, la, device, "alibi_slopes")
        sr = None if ls is None else _bind(learnable_sink, ls, device, "learnable_sink")
        out, lse = outs if with_lse else (outs, None)
        outr = _bind(out, lq, device, "out")
        lser = None if lse is None else _bind(lse, llse, device, "lse")
        opts = api.options(qr, st.softmax_scale, st.causal, st.window_size, st.softcap, ar, sr)
        with api.device_scope(device):
            api.run_forward(qr, kr, vr, outr, lser, opts, _stream(ctx))

    return callback


@functools.lru_cache(maxsize=None)
def _backward_callback(st: _Static, with_dlse: bool, lq: Ref, lk: Ref, la: Ref | None, ls: Ref | None):
    """The backward callback of one set of static options and layouts (as _forward_callback).
    grads: (dq, dk, dv, dsink or None)."""
    llse = _lse_layout(lq)

    def callback(ctx, grads, dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink):
        device = q.__dlpack_device__()[1]
        qr, kr, vr = _bind(q, lq, device, "q"), _bind(k, lk, device, "k"), _bind(v, lk, device, "v")
        doutr, outr = _bind(dout, lq, device, "dout"), _bind(out, lq, device, "out")
        lser = _bind(lse, llse, device, "lse")
        dlser = _bind(dlse, llse, device, "dlse") if with_dlse else None
        ar = None if la is None else _bind(alibi_slopes, la, device, "alibi_slopes")
        sr = None if ls is None else _bind(learnable_sink, ls, device, "learnable_sink")
        dq, dk, dv, dsink = grads
        dqr, dkr, dvr = _bind(dq, lq, device, "dq"), _bind(dk, lk, device, "dk"), _bind(dv, lk, device, "dv")
        opts = api.options(qr, st.softmax_scale, st.causal, st.window_size, st.softcap, ar, sr)
        stream = _stream(ctx)
        with api.device_scope(device), _cupy_stream(stream, device):
            part = api.run_backward(doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, st.deterministic, dlser,
                                    api.cupy_alloc, stream)
            if ls is not None:
                _dsink_into(_bind(dsink, ls, device, "dsink"), sr, part, lser, dlser)
            del part  # the scratch goes back to CuPy's pool, stream-ordered after the kernels that use it

    return callback


def _lse_layout(lq: Ref) -> Ref:
    """lse and dlse: (batch, nheads, seqlen_q) float32, contiguous."""
    batch, seqlen_q, nheads, _ = lq.shape
    shape = (batch, nheads, seqlen_q)
    return Ref(0, shape, _contiguous_strides(shape), "float32", -1)


def _varlen_lse_layout(lq: Ref) -> Ref:
    """A varlen lse and dlse: (nheads, total_q) float32, contiguous."""
    shape = (lq.shape[1], lq.shape[0])
    return Ref(0, shape, _contiguous_strides(shape), "float32", -1)


def _bind_sequences(cu_q, cu_k, used, lcq: Ref, lu: Ref | None, device: int) -> dict:
    """The sequence pointers of a varlen call (cu_seqlens_q, cu_seqlens_k, seqused_k)."""
    return {"cu_seqlens_q": _bind(cu_q, lcq, device, "cu_seqlens_q").ptr,
            "cu_seqlens_k": _bind(cu_k, lcq, device, "cu_seqlens_k").ptr,
            "seqused_k": 0 if lu is None else _bind(used, lu, device, "seqused_k").ptr}


@functools.lru_cache(maxsize=None)
def _varlen_forward_callback(vs: _Varlen, with_lse: bool, lq: Ref, lk: Ref, lcq: Ref, lu: Ref | None,
                             la: Ref | None, ls: Ref | None):
    """The varlen forward callback (as _forward_callback). lq, lk: (total, heads, dim) layouts; lcq:
    of cu_seqlens; lu: of seqused_k. outs: out (total_q, nheads, headdim) [, lse (nheads, total_q)]."""
    st, llse = vs.st, _varlen_lse_layout(lq)

    def callback(ctx, outs, q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink):
        device = q.__dlpack_device__()[1]
        qr, kr, vr = (api._varlen_ref(_bind(x, lay, device, n), vs.batch, lay.shape[0])
                      for x, lay, n in ((q, lq, "q"), (k, lk, "k"), (v, lk, "v")))
        ar = None if la is None else _bind(alibi_slopes, la, device, "alibi_slopes")
        sr = None if ls is None else _bind(learnable_sink, ls, device, "learnable_sink")
        out, lse = outs if with_lse else (outs, None)
        outr = api._varlen_ref(_bind(out, lq, device, "out"), vs.batch, lq.shape[0])
        lser = None if lse is None else _bind(lse, llse, device, "lse")
        opts = api._varlen_options(qr, st.softmax_scale, st.causal, st.window_size, st.softcap, ar, sr)
        with api.device_scope(device):
            api.run_varlen_forward(qr, kr, vr, outr, lser, opts, _bind_sequences(cu_q, cu_k, used, lcq, lu, device),
                                   vs.max_seqlen_q, _stream(ctx))

    return callback


@functools.lru_cache(maxsize=None)
def _varlen_backward_callback(vs: _Varlen, with_dlse: bool, lq: Ref, lk: Ref, lcq: Ref, lu: Ref | None,
                              la: Ref | None, ls: Ref | None):
    """The varlen backward callback. grads: (dq, dk, dv, dsink or None); with seqused_k, dk and dv
    are cleared first (the kernels leave the keys past each sequence's used ones alone)."""
    st, llse = vs.st, _varlen_lse_layout(lq)

    def callback(ctx, grads, dout, q, k, v, out, lse, dlse, cu_q, cu_k, used, alibi_slopes, learnable_sink):
        device = q.__dlpack_device__()[1]

        def rows(x, lay, n):
            return api._varlen_ref(_bind(x, lay, device, n), vs.batch, lay.shape[0])

        qr, kr, vr, doutr, outr = (rows(x, lay, n) for x, lay, n in (
            (q, lq, "q"), (k, lk, "k"), (v, lk, "v"), (dout, lq, "dout"), (out, lq, "out")))
        lser = _bind(lse, llse, device, "lse")
        dlser = _bind(dlse, llse, device, "dlse") if with_dlse else None
        ar = None if la is None else _bind(alibi_slopes, la, device, "alibi_slopes")
        sr = None if ls is None else _bind(learnable_sink, ls, device, "learnable_sink")
        dq, dk, dv, dsink = grads
        dqr, dkr, dvr = rows(dq, lq, "dq"), rows(dk, lk, "dk"), rows(dv, lk, "dv")
        opts = api._varlen_options(qr, st.softmax_scale, st.causal, st.window_size, st.softcap, ar, sr)
        stream = _stream(ctx)
        with api.device_scope(device), _cupy_stream(stream, device):
            if lu is not None:
                _device_view(_bind(dk, lk, device, "dk")).fill(0)
                _device_view(_bind(dv, lk, device, "dv")).fill(0)
            part = api.run_varlen_backward(doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, st.deterministic,
                                           dlser, api.cupy_alloc, stream,
                                           _bind_sequences(cu_q, cu_k, used, lcq, lu, device), vs.max_seqlen_q,
                                           vs.max_seqlen_k)
            if ls is not None:
                _dsink_into(_bind(dsink, ls, device, "dsink"), sr, part, lser, dlser, varlen=True)
            del part  # the scratch goes back to CuPy's pool, stream-ordered after the kernels that use it

    return callback


# ---------------------------------------------------------------- the primitives and their VJP


def _like(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _layouts(q, k, alibi_slopes, learnable_sink) -> tuple:
    """Layouts of q, of k (and v), of alibi_slopes and of learnable_sink (None where absent)."""
    return (_layout(q), _layout(k), None if alibi_slopes is None else _layout(alibi_slopes),
            None if learnable_sink is None else _layout(learnable_sink))


def _forward(q, k, v, alibi_slopes, learnable_sink, st: _Static, with_lse: bool):
    """out (batch, seqlen_q, nheads, headdim) like q, and with with_lse also lse (batch, nheads, seqlen_q) f32."""
    batch, seqlen_q, nheads, _ = q.shape
    result = _like(q)
    if with_lse:
        result = (result, jax.ShapeDtypeStruct((batch, nheads, seqlen_q), jnp.float32))
    callback = _forward_callback(st, with_lse, *_layouts(q, k, alibi_slopes, learnable_sink))
    call = buffer_callback(callback, result, vmap_method="sequential")
    return call(q, k, v, alibi_slopes, learnable_sink)


def _backward(st: _Static, residuals, dout, dlse):
    """(dq, dk, dv, dalibi, dsink): cotangents of (q, k, v, alibi_slopes, learnable_sink)."""
    q, k, v, alibi_slopes, learnable_sink, out, lse = residuals
    result = (_like(q), _like(k), _like(v), None if learnable_sink is None else _like(learnable_sink))
    callback = _backward_callback(st, dlse is not None, *_layouts(q, k, alibi_slopes, learnable_sink))
    call = buffer_callback(callback, result, vmap_method="sequential")
    dq, dk, dv, dsink = call(dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink)
    dalibi = None if alibi_slopes is None else jnp.zeros_like(alibi_slopes)  # ALiBi slopes are not learned
    return dq, dk, dv, dalibi, dsink


# out only: the forward of the undifferentiated call skips the lse store.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, alibi_slopes, learnable_sink, st):
    return _forward(q, k, v, alibi_slopes, learnable_sink, st, with_lse=False)


def _attention_fwd(q, k, v, alibi_slopes, learnable_sink, st):
    out, lse = _forward(q, k, v, alibi_slopes, learnable_sink, st, with_lse=True)
    return out, (q, k, v, alibi_slopes, learnable_sink, out, lse)


def _attention_bwd(st, residuals, dout):
    return _backward(st, residuals, dout, None)


_attention.defvjp(_attention_fwd, _attention_bwd)


# (out, lse): a loss may read lse too; its cotangent dlse goes to the backward kernels.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_lse(q, k, v, alibi_slopes, learnable_sink, st):
    return _forward(q, k, v, alibi_slopes, learnable_sink, st, with_lse=True)


def _attention_lse_fwd(q, k, v, alibi_slopes, learnable_sink, st):
    out, lse = _forward(q, k, v, alibi_slopes, learnable_sink, st, with_lse=True)
    return (out, lse), (q, k, v, alibi_slopes, learnable_sink, out, lse)


def _attention_lse_bwd(st, residuals, cotangents):
    dout, dlse = cotangents
    return _backward(st, residuals, dout, dlse)


_attention_lse.defvjp(_attention_lse_fwd, _attention_lse_bwd)

# Eager calls go through jit (one compiled program per shapes and options, dispatched by jit's
# fast path); inside an outer jit, grad or vmap the inner jit is simply inlined.
_attention_jit = jax.jit(_attention, static_argnums=(5,))
_attention_lse_jit = jax.jit(_attention_lse, static_argnums=(5,))


# Variable-length batches: the same two entry points over packed rows; cu_seqlens_q, cu_seqlens_k
# and seqused_k are int32 arrays (no cotangent), vs holds the static part.
def _varlen_layouts(q, k, cu_q, used, alibi_slopes, learnable_sink) -> tuple:
    return (_layout(q), _layout(k), _layout(cu_q), None if used is None else _layout(used),
            None if alibi_slopes is None else _layout(alibi_slopes),
            None if learnable_sink is None else _layout(learnable_sink))


def _varlen_fwd_call(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs: _Varlen, with_lse: bool):
    """out (total_q, nheads, headdim) like q, and with with_lse also lse (nheads, total_q) f32."""
    result = _like(q)
    if with_lse:
        result = (result, jax.ShapeDtypeStruct((q.shape[1], q.shape[0]), jnp.float32))
    callback = _varlen_forward_callback(vs, with_lse, *_varlen_layouts(q, k, cu_q, used, alibi_slopes,
                                                                       learnable_sink))
    call = buffer_callback(callback, result, vmap_method="sequential")
    return call(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink)


def _varlen_bwd_call(vs: _Varlen, residuals, dout, dlse):
    """Cotangents of (q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, alibi_slopes, learnable_sink)."""
    q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, out, lse = residuals
    api.check_varlen_backward_support(used is not None, _layout(q)._replace(shape=(1, *q.shape)),
                                      _layout(k)._replace(shape=(1, *k.shape)))
    result = (_like(q), _like(k), _like(v), None if learnable_sink is None else _like(learnable_sink))
    callback = _varlen_backward_callback(vs, dlse is not None, *_varlen_layouts(q, k, cu_q, used, alibi_slopes,
                                                                                learnable_sink))
    call = buffer_callback(callback, result, vmap_method="sequential")
    dq, dk, dv, dsink = call(dout, q, k, v, out, lse, dlse, cu_q, cu_k, used, alibi_slopes, learnable_sink)
    dalibi = None if alibi_slopes is None else jnp.zeros_like(alibi_slopes)
    return dq, dk, dv, None, None, None, dalibi, dsink


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _varlen(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs):
    return _varlen_fwd_call(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs, with_lse=False)


def _varlen_fwd(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs):
    out, lse = _varlen_fwd_call(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs, with_lse=True)
    return out, (q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, out, lse)


_varlen.defvjp(_varlen_fwd, lambda vs, residuals, dout: _varlen_bwd_call(vs, residuals, dout, None))


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _varlen_lse(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs):
    return _varlen_fwd_call(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs, with_lse=True)


def _varlen_lse_fwd(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs):
    out, lse = _varlen_fwd_call(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs, with_lse=True)
    return (out, lse), (q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, out, lse)


_varlen_lse.defvjp(_varlen_lse_fwd, lambda vs, residuals, cts: _varlen_bwd_call(vs, residuals, *cts))
_varlen_jit = jax.jit(_varlen, static_argnums=(8,))
_varlen_lse_jit = jax.jit(_varlen_lse, static_argnums=(8,))


# ---------------------------------------------------------------- public


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
    learnable_sink=None,
    deterministic=False,
    return_lse=False,
):
    """Exact attention softmax(q k^T * softmax_scale) v on JAX arrays, with a custom VJP.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim);
    float16 or bfloat16 on one CUDA GPU; nheads % nheads_kv == 0 (GQA/MQA); headdim a
    multiple of 8 up to 256. The options mean what they mean in cuflash.attention:
    causal / window_size=(left, right) masks aligned to the bottom-right corner (-1:
    unbounded), softcap > 0 caps the scaled scores, alibi_slopes float32 (nheads,) or
    (batch, nheads), learnable_sink float32 (nheads,) (one logit per head in every
    row's softmax denominator). deterministic=True makes the gradients bitwise
    reproducible. softmax_scale, causal, window_size, softcap and deterministic are
    Python values (static under jit).

    Returns out (batch, seqlen_q, nheads, headdim) in q's dtype; with return_lse=True,
    (out, lse) with lse (batch, nheads, seqlen_q) float32, natural log, differentiable too.
    Gradients: q, k, v, and learnable_sink (float32); alibi_slopes gets zeros.
    Works eagerly and under jax.jit and jax.grad; under jax.vmap it loops (one launch
    per element).
    """
    q, k, v = _as_array(q, "q"), _as_array(k, "k"), _as_array(v, "v")
    if alibi_slopes is not None:
        alibi_slopes = _as_array(alibi_slopes, "alibi_slopes")
    if learnable_sink is not None:
        learnable_sink = _as_array(learnable_sink, "learnable_sink")
    st = _validate(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_size, softcap,
                   deterministic)
    if return_lse:
        return _attention_lse_jit(q, k, v, alibi_slopes, learnable_sink, st)
    return _attention_jit(q, k, v, alibi_slopes, learnable_sink, st)


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
    deterministic=False,
    return_lse=False,
):
    """attention() of a batch of sequences of their own lengths, packed along the rows, on JAX
    arrays with a custom VJP (as cuflash.attention_varlen on CuPy arrays).

    q: (total_q, nheads, headdim); k, v: (total_k, nheads_kv, headdim); cu_seqlens_q,
    cu_seqlens_k: int32 (batch + 1,) cumulative offsets (sequence b is rows cu[b]:cu[b + 1];
    empty sequences allowed); seqused_k: int32 (batch,), the keys of each sequence that count.
    max_seqlen_q, max_seqlen_k: Python ints, the longest lengths (static: they size the grid).
    Options as attention(); alibi_slopes (nheads,) or (batch, nheads). Returns out (total_q,
    nheads, headdim) and with return_lse=True also lse (nheads, total_q) float32.

    The lengths are checked on the host in an eager call; under jit they cannot be, and the
    kernels then clamp each sequence to the tensors (invalid offsets give wrong values, never an
    out-of-bounds access). The backward refuses seqused_k under GQA/MQA (as the CuPy one does).
    """
    q, k, v = _as_array(q, "q"), _as_array(k, "k"), _as_array(v, "v")
    cu_q, cu_k = _as_array(cu_seqlens_q, "cu_seqlens_q"), _as_array(cu_seqlens_k, "cu_seqlens_k")
    used = None if seqused_k is None else _as_array(seqused_k, "seqused_k")
    if alibi_slopes is not None:
        alibi_slopes = _as_array(alibi_slopes, "alibi_slopes")
    if learnable_sink is not None:
        learnable_sink = _as_array(learnable_sink, "learnable_sink")
    vs = _validate_varlen(q, k, v, cu_q, cu_k, used, max_seqlen_q, max_seqlen_k, alibi_slopes, learnable_sink,
                          softmax_scale, causal, window_size, softcap, deterministic)
    call = _varlen_lse_jit if return_lse else _varlen_jit
    return call(q, k, v, cu_q, cu_k, used, alibi_slopes, learnable_sink, vs)
