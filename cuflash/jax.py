"""cuflash.jax: FlashAttention on JAX arrays, differentiable and usable inside ``jax.jit``.

    import cuflash.jax
    out = cuflash.jax.attention(q, k, v, causal=True)    # q: (batch, seqlen_q, nheads, headdim) fp16/bf16
    out, lse = cuflash.jax.attention(q, k, v, return_lse=True)
    dq, dk, dv = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    out = cuflash.jax.attention(q, k, v, bias=bias, dropout_p=0.1, seed=jax.random.key(0))
    out, k_cache, v_cache = cuflash.jax.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths)

How it works (DESIGN sections 1, 8): the kernels are launched from a
``jax.experimental.buffer_callback`` on XLA's own CUDA stream, inside a jitted
program (eager calls go through a cached ``jax.jit`` too; XLA allocates every
output). A ``jax.custom_vjp`` wraps it: the forward
saves (out, lse), the backward launches cuflash's backward kernels. All
argument checks run at trace time on shapes and dtypes (api.validate_qkv,
api.options, api.check_bias, api.check_kvcache on Refs with a null pointer), so
a bad input raises a Python error naming the argument before anything is
launched; only pointer alignment is checked when the callback runs. Dense and
varlen calls share one custom VJP and one pair of callbacks (``_Static.varlen``
tells them apart).

- bias: the kernels read it in place (XLA's buffers are dense, so a broadcast
  dim is a dim of 1, seen with stride 0); a 16-bit bias of the other dtype than
  q is widened to float32 with ``astype`` in the traced program (the gradient
  flows back through it). dbias is an extra output of the backward callback,
  zeroed on XLA's stream, in api.dbias_plan's layout, then summed (deterministic
  plans) and reshaped to the bias's shape by XLA.
- dropout: JAX's randomness is explicit, so ``seed`` is required with
  ``dropout_p > 0``. The kernels read the Philox seed words (seed_lo, seed_hi,
  offset) from a uint32 (3,) device buffer (the params' ``dropout_rng``), so the
  seed may be a traced value: a jitted training step draws a fresh mask per step
  from its key with no recompilation. ``seed_words`` gives the words of a seed.
- attention_with_kvcache is functional: it returns the updated caches, which
  alias the input caches (buffer_callback's input_output_aliases), so under
  ``jax.jit(..., donate_argnums=...)`` the append is in place; without donation
  XLA copies the caches first. Forward only (no gradient).

Limits, stated once:
- vmap works by looping: each vmapped element is one launch (``vmap_method=
  "sequential"``); fold a vmapped axis into batch yourself for speed.
- One device per call: under ``jit`` with sharded inputs, call it inside
  ``shard_map`` so each device attends on its own shard.
- The backward's scratch (fp32 dQ accumulator, lse/delta rows) and the KV-cache
  call's (split-KV partials, rotated q) come from CuPy's memory pool on XLA's
  stream: start JAX with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (or a lower
  ``XLA_PYTHON_CLIENT_MEM_FRACTION``) so CuPy finds free memory.
- Options (softmax_scale, causal, window_size, softcap, deterministic,
  dropout_p, bias_requires_grad, num_splits) are Python values fixed at trace
  time; alibi_slopes, learnable_sink, bias and a key seed are arrays.
  alibi_slopes gets a zero gradient.
"""
from __future__ import annotations

import ctypes
import functools
import math
import numbers
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

from . import api, launch, reference
from .compile import env
from .launch import Ref

__all__ = ["attention", "attention_varlen", "attention_with_kvcache", "seed_words"]


class _Varlen(NamedTuple):
    """The static part of a varlen call: the grid's longest sequences and the batch."""

    max_seqlen_q: int
    max_seqlen_k: int
    batch: int


class _Static(NamedTuple):
    """The options fixed at trace time (hashable: a jit cache key and a custom_vjp nondiff argument)."""

    softmax_scale: float | None
    causal: bool
    window_size: tuple  # (left, right) ints
    softcap: float
    deterministic: bool
    dropout: api.DropoutRng | None = None  # dropout_p (its seed and offset are read from the device)
    bias: api.Bias | None = None  # the checked bias with a null pointer (api.check_bias), or None
    bias_grad: bool = False  # compute dbias (bias_requires_grad)
    varlen: _Varlen | None = None  # a varlen call's static part; None: dense


# ---------------------------------------------------------------- trace time: shapes and dtypes


@functools.lru_cache(maxsize=None)
def _contiguous_strides(shape: tuple) -> tuple:
    """Row-major strides in elements (XLA hands custom calls dense row-major buffers)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _dense(shape: tuple, dtype: str) -> Ref:
    """The layout of a dense row-major buffer (pointer and device are filled per call)."""
    shape = tuple(int(n) for n in shape)
    return Ref(0, shape, _contiguous_strides(shape), dtype, -1)


def _layout(x) -> Ref:
    """Shape, strides and dtype of an array at trace time."""
    return _dense(x.shape, np.dtype(x.dtype).name)


def _layouts(arrays: dict) -> tuple:
    """((name, layout), ...) of a dict of arrays, in its pytree (sorted) order: hashable."""
    return tuple((name, _layout(arrays[name])) for name in sorted(arrays))


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


def _arrays(**named) -> dict:
    """{name: JAX array} of the optional array arguments that were given (None left out)."""
    return {name: _as_array(x, name) for name, x in named.items() if x is not None}


def _traced(*arrays) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in arrays)


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


def _static_options(qr: Ref, device: int, ex: dict, softmax_scale, causal, window_size, softcap, deterministic,
                    options=api.options) -> _Static:
    """The option checks of api.options (or `options`: api.kvcache_options), and that the Python
    ones are not traced, for q's Ref; ex holds the array options."""
    ar, sr = (None if ex.get(n) is None else _abstract_ref(ex[n], device) for n in ("alibi_slopes", "learnable_sink"))
    for value, name in ((softmax_scale, "softmax_scale"), (causal, "causal"), (window_size, "window_size"),
                        (softcap, "softcap"), (deterministic, "deterministic")):
        _static(value, name)
    if isinstance(window_size, (list, tuple)):
        for w in window_size:
            _static(w, "window_size")
    opts = options(qr, softmax_scale, causal, window_size, softcap, ar, sr)
    return _Static(None if softmax_scale is None else opts.scale, bool(causal),
                   tuple(int(w) for w in window_size), float(softcap), bool(deterministic))


def _never_copied(x, dtype):
    raise AssertionError("XLA's buffers are dense and the bias is converted at trace time")  # pragma: no cover


def _validate(q, k, v, ex: dict, softmax_scale, causal, window_size, softcap, deterministic,
              dropout: api.DropoutRng | None, bias_requires_grad) -> _Static:
    """Every check api.py makes, on shapes and dtypes, each error naming its argument.
    Returns the normalised static options."""
    device = _device_ordinal(q)
    qr, kr, vr = (_abstract_ref(x, device) for x in (q, k, v))
    api.validate_qkv(qr, kr, vr)
    st = _static_options(qr, device, ex, softmax_scale, causal, window_size, softcap, deterministic)
    _static(bias_requires_grad, "bias_requires_grad")
    bias = None
    if "bias" in ex:
        bias = api.check_bias(ex["bias"], qr, kr, lambda b: _abstract_ref(b, device), _never_copied)
        bias = bias._replace(array=None)
    return st._replace(dropout=dropout, bias=bias, bias_grad=bias is not None and bool(bias_requires_grad))


def _bias_array(bias, q):
    """The bias the kernels read: a 16-bit bias of the other dtype than q widened to float32 (in the
    traced program: its gradient flows back through the conversion)."""
    if bias.dtype in (jnp.float16, jnp.bfloat16) and bias.dtype != q.dtype:
        return bias.astype(jnp.float32)
    return bias


_SEED_TYPES = ("seed must be a JAX PRNG key (jax.random.key(n), or a legacy uint32 (2,) jax.random.PRNGKey(n)), "
               "a uint32 (3,) array of the words (seed_lo, seed_hi, offset), a Python int in [0, 2^64) or a "
               "pair (seed, offset)")


def seed_words(seed):
    """The dropout seed as the kernels read it: a uint32 (3,) array (seed_lo, seed_hi, offset),
    the Philox key seed_lo + 2^32 seed_hi and counter word offset of reference.dropout_keep_mask.

    seed: a JAX PRNG key (``jax.random.key(n)``, or a legacy uint32 (2,) ``jax.random.PRNGKey(n)``):
    the three words are ``jax.random.bits(key, (3,), jnp.uint32)`` (traceable: split the key per
    step for a fresh mask); a uint32 (3,) array: the words themselves; a Python int in [0, 2^64)
    or a pair (seed, offset) with offset in [0, 2^32): as cuflash.attention's seed (a constant)."""
    if isinstance(seed, (jax.Array, jax.core.Tracer, np.ndarray)):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            if seed.shape != ():
                raise ValueError(f"seed must be one PRNG key, got an array of keys of shape {tuple(seed.shape)}")
            return jax.random.bits(seed, (3,), jnp.uint32)
        if seed.dtype == np.uint32 and seed.shape == (2,):
            return jax.random.bits(seed, (3,), jnp.uint32)
        if seed.dtype == np.uint32 and seed.shape == (3,):
            return jnp.asarray(seed)
        raise TypeError(f"{_SEED_TYPES}; got an array {seed.dtype} {tuple(seed.shape)}")
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, tuple)):
        raise TypeError(f"{_SEED_TYPES}; got {seed!r}")
    drop = api.dropout_options(0.5, seed)  # api's checks of an int or (seed, offset) pair (0.5: any valid p)
    return jnp.asarray(np.array([drop.seed & 0xFFFFFFFF, drop.seed >> 32, drop.offset], np.uint32))


def _dropout(dropout_p, seed) -> tuple:
    """(api.DropoutRng of dropout_p with a zero seed, the seed words) or (None, None) for dropout_p 0.
    The kernels read the seed from the words (the params' dropout_rng), not from the DropoutRng."""
    drop = api.dropout_options(_static(dropout_p, "dropout_p"), (0, 0))
    if drop is None:
        return None, None
    if seed is None:
        raise ValueError("dropout_p > 0 needs seed: JAX's randomness is explicit, pass seed=jax.random.key(n) "
                         "(split it per step), uint32 words (seed_lo, seed_hi, offset) or a Python int")
    return drop, seed_words(seed)


def _validate_varlen(q, k, v, seqs: dict, ex: dict, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                     window_size, softcap, deterministic, dropout: api.DropoutRng | None) -> _Static:
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
    names = ("cu_seqlens_q", "cu_seqlens_k", "seqused_k")
    batch = api.check_sequence_arrays(*(None if n not in seqs else _abstract_ref(seqs[n], device) for n in names),
                                      device)
    arrays = [seqs[n] for n in names if n in seqs]
    if not _traced(*arrays):
        host = np.concatenate([np.asarray(x) for x in arrays])
        api.check_varlen_lengths(host, batch, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)
    qr, kr, vr = (api._varlen_ref(_abstract_ref(x, device), batch, x.shape[0]) for x in (q, k, v))
    api.validate_qkv(qr, kr, vr)
    st = _static_options(qr, device, ex, softmax_scale, causal, window_size, softcap, deterministic)
    return st._replace(varlen=_Varlen(int(max_seqlen_q), int(max_seqlen_k), batch), dropout=dropout)


class _KvCall(NamedTuple):
    """The static part of an attention_with_kvcache call."""

    st: _Static
    cache: api.KvCache  # checked, with null pointers in its cache map
    num_splits: int
    rotary_interleaved: bool
    append: bool  # k, v given: the caches are written (and returned as aliases of the inputs)
    with_lse: bool


def _validate_kvcache(q, k_cache, v_cache, new: dict, ex: dict, cache_seqlens, softmax_scale, causal, window_size,
                      softcap, rotary_interleaved, num_splits, return_lse) -> tuple:
    """(_KvCall, cache_seqlens as an int32 (batch,) array): api.check_kvcache and the options on
    shapes and dtypes; an int cache_seqlens is checked against the cache's length."""
    device = _device_ordinal(q)
    ref = functools.partial(_abstract_ref, device=device)
    qr, kcr, vcr = ref(q), ref(k_cache), ref(v_cache)
    kr, vr = (None if n not in new else ref(new[n]) for n in ("k", "v"))
    cache = api.check_kvcache(qr, kcr, vcr, kr, vr, *(None if n not in ex else ref(ex[n]) for n in (
        "block_table", "cache_batch_idx", "cache_leftpad", "rotary_cos", "rotary_sin")))
    st = _static_options(qr, device, ex, softmax_scale, causal, window_size, softcap, False, api.kvcache_options)
    _static(rotary_interleaved, "rotary_interleaved")
    batch = q.shape[0]
    if cache_seqlens is None or isinstance(cache_seqlens, numbers.Integral):
        value = cache.seqlen if cache_seqlens is None else int(cache_seqlens)
        api.check_cache_length(value, cache.seqlen)
        lengths = jnp.full((batch,), value, jnp.int32)
    else:
        lengths = _as_array(cache_seqlens, "cache_seqlens")
        api.check_cache_lengths(ref(lengths), batch, device)
    return _KvCall(st, cache, int(num_splits), bool(rotary_interleaved), bool(new), bool(return_lse)), lengths


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
    return _ref_at(_buffer_ptr(buf, layout.dtype), layout, device, name)


def _ref_at(ptr: int, layout: Ref, device: int, name: str) -> Ref:
    """The Ref of a buffer at ptr with a trace-time layout; its start must be 16-byte aligned."""
    if ptr % 16 and 0 not in layout.shape:
        raise ValueError(f"{name} starts at {ptr:#x}, not on a 16-byte boundary as the kernels need")
    return Ref(ptr, layout.shape, layout.strides, layout.dtype, device)


def _bind_all(bufs: dict, layouts: tuple, device: int) -> dict:
    """{name: Ref} of a dict of buffers with their _layouts."""
    return {name: _bind(bufs[name], lay, device, name) for name, lay in layouts}


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
    """XLA's stream as a CuPy stream, to be made current (`with`): scratch then comes from CuPy's
    stream-ordered pool on it, and the clears and the dsink sum run on it."""
    import cupy

    return cupy.cuda.Stream.from_external(_XlaStream(stream))


def _device_view(ref: Ref):
    """A CuPy array over an XLA buffer (no copy; XLA owns the memory)."""
    import cupy

    dtype = np.dtype(ref.dtype)
    nbytes = math.prod(ref.shape) * dtype.itemsize
    mem = cupy.cuda.UnownedMemory(ref.ptr, nbytes, None, ref.device)
    return cupy.ndarray(ref.shape, dtype, cupy.cuda.MemoryPointer(mem, 0))


def _zero(ref: Ref) -> Ref:
    """Clear an XLA buffer (dense, any dtype: as bytes) on the current CuPy stream (XLA's, under
    _cupy_stream)."""
    nbytes = math.prod(ref.shape) * np.dtype(ref.dtype).itemsize
    _device_view(_dense((nbytes,), "uint8")._replace(ptr=ref.ptr, device=ref.device)).fill(0)
    return ref


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


def _run_options(st: _Static, qr: Ref, refs: dict, options=None):
    """The Options of one call from its static part and the Refs of its array options (bias,
    dropout seed words included); options: api.options (dense), api._varlen_options (varlen) or
    api.kvcache_options."""
    if options is None:
        options = api.options if st.varlen is None else api._varlen_options
    opts = options(qr, st.softmax_scale, st.causal, st.window_size, st.softcap, refs.get("alibi_slopes"),
                   refs.get("learnable_sink"))
    if st.bias is not None:
        b = refs["bias"]
        opts = api.with_bias(opts, st.bias._replace(ref=st.bias.ref._replace(ptr=b.ptr, device=b.device)))
    if st.dropout is not None:
        opts = api.with_dropout(opts, st.dropout, seed_address=refs["rng"].ptr)
    return opts


def _lse_layout(lq: Ref, varlen: bool) -> Ref:
    """lse and dlse, float32 contiguous: (batch, nheads, seqlen_q), or (nheads, total_q) varlen."""
    return _dense((lq.shape[1], lq.shape[0]) if varlen else (lq.shape[0], lq.shape[2], lq.shape[1]), "float32")


def _dbias_plan(st: _Static, q_shape: tuple, k_shape: tuple) -> api.DbiasPlan:
    return api.dbias_plan(st.bias.ref.shape, (q_shape[0], q_shape[2], q_shape[1], k_shape[1]), st.deterministic)


def _dbias_layout(st: _Static, q_shape: tuple, k_shape: tuple) -> Ref | None:
    """The dbias buffer the backward writes (api.dbias_plan: float32, or the bias's kernel dtype),
    or None without a bias gradient."""
    if not st.bias_grad:
        return None
    plan = _dbias_plan(st, q_shape, k_shape)
    return _dense(plan.shape, "float32" if plan.f32 else st.bias.ref.dtype)


def _rows(st: _Static, ref: Ref) -> Ref:
    """The Ref the kernels take: varlen (total, heads, dim) seen as (batch, rows, heads, dim) with
    batch stride 0; a dense one as it is."""
    return ref if st.varlen is None else api._varlen_ref(ref, st.varlen.batch, ref.shape[0])


def _sequences(refs: dict) -> dict:
    """The sequence pointers of a varlen call (cu_seqlens_q, cu_seqlens_k, seqused_k) from Refs by
    name (an absent seqused_k: 0)."""
    return {n: refs[n].ptr if n in refs else 0 for n in ("cu_seqlens_q", "cu_seqlens_k", "seqused_k")}


#: Whether forward callbacks record and replay launch plans (the CPU tests' stand-in kernels, which
#: compute on the host from the pointers they are given, turn it off: a recording hands out placeholders).
REPLAY_PLANS = True


@functools.lru_cache(maxsize=None)
def _forward_callback(st: _Static, with_lse: bool, lq: Ref, lk: Ref, lseqs: tuple, lx: tuple):
    """The forward callback of one set of static options and layouts (one object per set, so
    JAX's compile caches hit). lq, lk: layouts of q and of k, v; lseqs: of the varlen sequence
    arrays (empty when dense); lx: of the array options. outs: out like q [, lse].

    Its launches depend only on what the object is made for, so the first call records them
    (api launch plans) and later calls on that device replay them with the buffers' pointers."""
    llse = _lse_layout(lq, st.varlen is not None)
    # every buffer of a call, in slot order: q, k, v, out[, lse], the sequence arrays, the array options
    names = ("q", "k", "v", "out", *(("lse",) if with_lse else ()), *(n for n, _ in lseqs), *(n for n, _ in lx))
    layouts = (lq, lk, lk, lq, *((llse,) if with_lse else ()), *(lay for _, lay in lseqs), *(lay for _, lay in lx))
    token = object()  # this callback's part of the plan keys

    def launch_all(refs: tuple, stream: int) -> None:
        qr, kr, vr, outr = (_rows(st, r) for r in refs[:4])
        lser = refs[4] if with_lse else None
        by_name = dict(zip(names, refs))
        opts = _run_options(st, qr, by_name)
        if st.varlen is None:
            api.run_forward(qr, kr, vr, outr, lser, opts, stream)
        else:
            api.run_varlen_forward(qr, kr, vr, outr, lser, opts, _sequences(by_name), st.varlen.max_seqlen_q,
                                   stream)

    def callback(ctx, outs, q, k, v, seqs, ex):
        device = q.__dlpack_device__()[1]
        buffers = (q, k, v, *(outs if with_lse else (outs,)), *(seqs[n] for n, _ in lseqs), *(ex[n] for n, _ in lx))
        pointers = tuple(_buffer_ptr(b, lay.dtype) for b, lay in zip(buffers, layouts))
        key = (token, device, env.selection_key())
        plan = api.recorded_plan(key)
        with api.device_scope(device):
            if plan is not None and not any(p & 15 for p in pointers):
                plan.replay(pointers, _stream(ctx))
                return
            launch_all(tuple(_ref_at(p, lay, device, n) for p, lay, n in zip(pointers, layouts, names)), _stream(ctx))
            if REPLAY_PLANS:
                api.remember(key, launch.record(lambda alloc: launch_all(tuple(
                    lay._replace(ptr=launch.placeholder(i), device=device) for i, lay in enumerate(layouts)), 0),
                    len(layouts), device))

    return callback


@functools.lru_cache(maxsize=None)
def _backward_callback(st: _Static, with_dlse: bool, lq: Ref, lk: Ref, lseqs: tuple, lx: tuple):
    """The backward callback (as _forward_callback). grads: (dq, dk, dv, dsink or None, the dbias
    buffer or None); varlen with seqused_k, dk and dv are cleared first (the kernels leave the
    keys past each sequence's used ones alone)."""
    varlen = st.varlen is not None
    llse = _lse_layout(lq, varlen)
    ldbias = _dbias_layout(st, lq.shape, lk.shape)
    ls = dict(lx).get("learnable_sink")

    def callback(ctx, grads, dout, q, k, v, out, lse, dlse, seqs, ex):
        device = q.__dlpack_device__()[1]
        dq, dk, dv, dsink, dbias = grads
        qr, kr, vr, doutr, outr, dqr = (_rows(st, _bind(x, lay, device, n)) for x, lay, n in (
            (q, lq, "q"), (k, lk, "k"), (v, lk, "v"), (dout, lq, "dout"), (out, lq, "out"), (dq, lq, "dq")))
        dkr, dvr = _bind(dk, lk, device, "dk"), _bind(dv, lk, device, "dv")
        lser = _bind(lse, llse, device, "lse")
        dlser = _bind(dlse, llse, device, "dlse") if with_dlse else None
        refs = _bind_all(ex, lx, device)
        opts = _run_options(st, qr, refs)
        stream = _stream(ctx)
        with api.device_scope(device), _cupy_stream(stream, device):
            if "seqused_k" in seqs:
                _zero(dkr)
                _zero(dvr)
            dkr, dvr = _rows(st, dkr), _rows(st, dvr)
            if varlen:
                sequences = _sequences(_bind_all(seqs, lseqs, device))
                part = api.run_varlen_backward(doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, st.deterministic,
                                               dlser, api.cupy_alloc, stream, sequences, st.varlen.max_seqlen_q,
                                               st.varlen.max_seqlen_k)
            else:
                fields = None
                if dbias is not None:  # XLA's buffer, cleared here: api.dbias_buffer's zeros
                    buffer = _bind(dbias, ldbias, device, "dbias")
                    fields = api.dbias_buffer(st.bias, qr, kr, st.deterministic, lambda shape, dtype: _zero(buffer),
                                              lambda ref: ref)[2]
                part = api.run_backward(doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, st.deterministic, dlser,
                                        api.cupy_alloc, stream, fields)
            if dsink is not None:
                _dsink_into(_bind(dsink, ls, device, "dsink"), refs["learnable_sink"], part, lser, dlser, varlen)
            del part  # the scratch goes back to CuPy's pool, stream-ordered after the kernels that use it

    return callback


@functools.lru_cache(maxsize=None)
def _kvcache_callback(kv: _KvCall, lq: Ref, lc: Ref, lnew: tuple, ll: Ref, lx: tuple):
    """The attention_with_kvcache callback. lq: layout of q; lc: of the caches; lnew: of k, v;
    ll: of cache_seqlens; lx: of the array options. outs: (k_cache, v_cache, seqused) when
    appending (the caches alias the inputs: written in place), else Nones, then out [, lse rows
    (nheads, batch * seqlen_q)]."""
    batch, seqlen_q, nheads, _ = lq.shape
    llse = _dense((nheads, batch * seqlen_q), "float32")

    def callback(ctx, outs, k_cache, v_cache, q, new, lengths, ex):
        device = q.__dlpack_device__()[1]
        kc, vc, used, out, lse = outs
        if kv.append:  # read and write the outputs: they are the inputs' buffers (input_output_aliases)
            k_cache, v_cache = kc, vc
        qr = _bind(q, lq, device, "q")
        kcr, vcr = _bind(k_cache, lc, device, "k_cache"), _bind(v_cache, lc, device, "v_cache")
        newr = _bind_all(new, lnew, device)
        refs = _bind_all(ex, lx, device)
        opts = _run_options(kv.st, qr, refs, api.kvcache_options)
        cache = kv.cache._replace(cache_map=kv.cache.cache_map._replace(
            block_table=refs.get("block_table"), cache_batch_idx=refs.get("cache_batch_idx"),
            cache_leftpad=refs.get("cache_leftpad")))
        rotary = None if "rotary_cos" not in refs else (refs["rotary_cos"], refs["rotary_sin"], kv.rotary_interleaved)

        def offsets():
            return tuple(api._offsets(device, batch, step).data.ptr for step in (seqlen_q, cache.seqlen))

        stream = _stream(ctx)
        with api.device_scope(device), _cupy_stream(stream, device):
            api.run_kvcache(qr, kcr, vcr, newr.get("k"), newr.get("v"), _bind(lengths, ll, device, "cache_seqlens"),
                            None if used is None else _bind(used, ll, device, "seqused"), _bind(out, lq, device, "out"),
                            None if lse is None else _bind(lse, llse, device, "lse"), opts, cache, kv.num_splits,
                            api.cupy_alloc, offsets, stream, rotary)

    return callback


# ---------------------------------------------------------------- the primitives and their VJP


def _like(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


# One custom VJP serves dense and varlen calls: seqs holds the varlen sequence arrays ({} when
# dense; int32, no cotangent), ex the array options by name (alibi_slopes, learnable_sink, bias,
# rng: the dropout seed words, uint32, no cotangent), st the static part.


def _forward(q, k, v, seqs: dict, ex: dict, st: _Static, with_lse: bool):
    """out like q, and with with_lse also lse: (batch, nheads, seqlen_q), or (nheads, total_q) varlen, f32."""
    result = _like(q)
    if with_lse:
        result = (result, jax.ShapeDtypeStruct(_lse_layout(_layout(q), st.varlen is not None).shape, jnp.float32))
    callback = _forward_callback(st, with_lse, _layout(q), _layout(k), _layouts(seqs), _layouts(ex))
    return buffer_callback(callback, result, vmap_method="sequential")(q, k, v, seqs, ex)


def _backward(st: _Static, residuals, dout, dlse):
    """Cotangents of (q, k, v, seqs, ex): alibi_slopes gets zeros, the integer arrays None, the bias
    dbias (its own shape and dtype) or zeros when bias_requires_grad was False."""
    q, k, v, seqs, ex, out, lse = residuals
    ldbias = _dbias_layout(st, q.shape, k.shape)
    result = (_like(q), _like(k), _like(v), _like(ex["learnable_sink"]) if "learnable_sink" in ex else None,
              None if ldbias is None else jax.ShapeDtypeStruct(ldbias.shape, ldbias.dtype))
    callback = _backward_callback(st, dlse is not None, _layout(q), _layout(k), _layouts(seqs), _layouts(ex))
    dq, dk, dv, dsink, dbias = buffer_callback(callback, result, vmap_method="sequential")(
        dout, q, k, v, out, lse, dlse, seqs, ex)
    dex = dict.fromkeys(ex)
    if "alibi_slopes" in ex:
        dex["alibi_slopes"] = jnp.zeros_like(ex["alibi_slopes"])  # ALiBi slopes are not learned
    if dsink is not None:
        dex["learnable_sink"] = dsink
    if "bias" in ex:
        dex["bias"] = jnp.zeros_like(ex["bias"]) if dbias is None else api.finish_dbias(
            dbias, _dbias_plan(st, q.shape, k.shape), st.bias, lambda x: jnp.dtype(x.dtype).name,
            lambda x, name: x.astype(jnp.dtype(name)))
    return dq, dk, dv, dict.fromkeys(seqs), dex


# out only: the forward of the undifferentiated call skips the lse store.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, seqs, ex, st):
    return _forward(q, k, v, seqs, ex, st, with_lse=False)


def _attention_fwd(q, k, v, seqs, ex, st):
    out, lse = _forward(q, k, v, seqs, ex, st, with_lse=True)
    return out, (q, k, v, seqs, ex, out, lse)


_attention.defvjp(_attention_fwd, lambda st, residuals, dout: _backward(st, residuals, dout, None))


# (out, lse): a loss may read lse too; its cotangent dlse goes to the backward kernels.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_lse(q, k, v, seqs, ex, st):
    return _forward(q, k, v, seqs, ex, st, with_lse=True)


def _attention_lse_fwd(q, k, v, seqs, ex, st):
    out, lse = _forward(q, k, v, seqs, ex, st, with_lse=True)
    return (out, lse), (q, k, v, seqs, ex, out, lse)


_attention_lse.defvjp(_attention_lse_fwd, lambda st, residuals, cts: _backward(st, residuals, *cts))

# Eager calls go through jit (one compiled program per shapes and options, dispatched by jit's
# fast path); inside an outer jit, grad or vmap the inner jit is simply inlined.
_attention_jit = jax.jit(_attention, static_argnums=(5,))
_attention_lse_jit = jax.jit(_attention_lse, static_argnums=(5,))


def _kvcache(k_cache, v_cache, q, new: dict, lengths, ex: dict, kv: _KvCall):
    """(out, lse or None, k_cache, v_cache): the caches first among the inputs and the outputs,
    so that buffer_callback's alias indices (flat positions) are 0 and 1."""
    batch, seqlen_q, nheads, _ = q.shape
    result = (_like(k_cache), _like(v_cache), jax.ShapeDtypeStruct((batch,), jnp.int32)) if kv.append else (None,) * 3
    result += (_like(q), jax.ShapeDtypeStruct((nheads, batch * seqlen_q), jnp.float32) if kv.with_lse else None)
    callback = _kvcache_callback(kv, _layout(q), _layout(k_cache), _layouts(new), _layout(lengths), _layouts(ex))
    call = buffer_callback(callback, result, vmap_method="sequential",
                           input_output_aliases={0: 0, 1: 1} if kv.append else None)
    kc, vc, _, out, lse_rows = call(k_cache, v_cache, q, new, lengths, ex)
    lse = None if lse_rows is None else lse_rows.reshape(nheads, batch, seqlen_q).transpose(1, 0, 2)
    return (out, lse, kc, vc) if kv.append else (out, lse, k_cache, v_cache)


_kvcache_jit = jax.jit(_kvcache, static_argnums=(6,))


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
    bias=None,
    learnable_sink=None,
    dropout_p=0.0,
    seed=None,
    deterministic=False,
    bias_requires_grad=True,
    return_lse=False,
):
    """Exact attention softmax(q k^T * softmax_scale) v on JAX arrays, with a custom VJP.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim);
    float16, bfloat16 or float32 (3xTF32, README) on one CUDA GPU; nheads % nheads_kv == 0
    (GQA/MQA); headdim a multiple of 8 up to 256. The options mean what they mean in cuflash.attention:
    causal / window_size=(left, right) masks aligned to the bottom-right corner (-1:
    unbounded), softcap > 0 caps the scaled scores, alibi_slopes float32 (nheads,) or
    (batch, nheads), learnable_sink float32 (nheads,) (one logit per head in every
    row's softmax denominator). deterministic=True makes the gradients bitwise
    reproducible. softmax_scale, causal, window_size, softcap, deterministic, dropout_p
    and bias_requires_grad are Python values (static under jit).

    bias: an additive bias broadcastable to (batch, nheads, seqlen_q, seqlen_k): 1 to 4
    dims, the last seqlen_k, each other dim full or 1; float16, bfloat16 or float32
    (a 16-bit bias of the other dtype than q is widened to float32 first); -inf entries
    mask. Its gradient is dS summed over the broadcast dims, in the bias's shape and
    dtype; bias_requires_grad=False skips computing it (the bias then gets zeros).

    dropout_p in [0, 1): each probability is dropped with probability dropout_p rounded
    to a multiple of 1/256 (cuflash.reference.dropout_rate) and kept ones are scaled by
    1 / (1 - dropout_p), by the kernels' Philox mask on absolute (batch, head,
    query, key) coordinates; the backward sees the same mask. seed is required with
    dropout_p > 0: a JAX PRNG key (the words are jax.random.bits(key, (3,), uint32); split
    the key per step), a uint32 (3,) array (seed_lo, seed_hi, offset), or a Python int /
    (seed, offset) pair as in cuflash.attention; it is ignored when dropout_p is 0.
    seed_words(seed) gives the words, from which cuflash.reference.dropout_keep_mask(
    seed_lo + 2**32 * seed_hi, offset, ...) rebuilds the mask.

    Returns out (batch, seqlen_q, nheads, headdim) in q's dtype; with return_lse=True,
    (out, lse) with lse (batch, nheads, seqlen_q) float32, natural log, differentiable too.
    Gradients: q, k, v, learnable_sink (float32) and bias; alibi_slopes gets zeros.
    Works eagerly and under jax.jit and jax.grad; under jax.vmap it loops (one launch
    per element).
    """
    q, k, v = _as_array(q, "q"), _as_array(k, "k"), _as_array(v, "v")
    ex = _arrays(alibi_slopes=alibi_slopes, learnable_sink=learnable_sink, bias=bias)
    if "bias" in ex:
        ex["bias"] = _bias_array(ex["bias"], q)
    dropout, words = _dropout(dropout_p, seed)
    if words is not None:
        ex["rng"] = words
    st = _validate(q, k, v, ex, softmax_scale, causal, window_size, softcap, deterministic, dropout,
                   bias_requires_grad)
    call = _attention_lse_jit if return_lse else _attention_jit
    return call(q, k, v, {}, ex, st)


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
    deterministic=False,
    return_lse=False,
):
    """attention() of a batch of sequences of their own lengths, packed along the rows, on JAX
    arrays with a custom VJP (as cuflash.attention_varlen on CuPy arrays).

    q: (total_q, nheads, headdim); k, v: (total_k, nheads_kv, headdim); cu_seqlens_q,
    cu_seqlens_k: int32 (batch + 1,) cumulative offsets (sequence b is rows cu[b]:cu[b + 1];
    empty sequences allowed); seqused_k: int32 (batch,), the keys of each sequence that count.
    max_seqlen_q, max_seqlen_k: Python ints, the longest lengths (static: they size the grid).
    Options as attention(); alibi_slopes (nheads,) or (batch, nheads). dropout_p and seed as
    attention(), the mask's coordinates each sequence's own (query and key positions from its
    start, batch index b), as cuflash.attention_varlen draws it: reference.dropout_keep_mask with
    the longest lengths, read at [b, :, :its queries, :its keys]. Returns out (total_q, nheads,
    headdim) and with return_lse=True also lse (nheads, total_q) float32.

    The lengths are checked on the host in an eager call; under jit they cannot be, and the
    kernels then clamp each sequence to the tensors (invalid offsets give wrong values, never an
    out-of-bounds access). With seqused_k the keys past each sequence's used ones get zero gradients.
    """
    q, k, v = _as_array(q, "q"), _as_array(k, "k"), _as_array(v, "v")
    seqs = _arrays(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, seqused_k=seqused_k)
    ex = _arrays(alibi_slopes=alibi_slopes, learnable_sink=learnable_sink)
    dropout, words = _dropout(dropout_p, seed)
    if words is not None:
        ex["rng"] = words
    st = _validate_varlen(q, k, v, seqs, ex, max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_size, softcap,
                          deterministic, dropout)
    call = _attention_lse_jit if return_lse else _attention_jit
    return call(q, k, v, seqs, ex, st)


def attention_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    *,
    cache_seqlens,
    rotary_cos=None,
    rotary_sin=None,
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
    """Attention of q over a KV cache after appending k, v to it (cuflash.attention_with_kvcache on
    JAX arrays), functional: returns (out, k_cache_new, v_cache_new), or with return_lse=True
    (out, lse, k_cache_new, v_cache_new). Forward only: no gradient (jax.grad through it raises).

    The new caches alias the input caches (the callback's input_output_aliases): under
    jax.jit(..., donate_argnums=...) donating the caches, the append writes into them in place
    (same buffers); otherwise XLA first copies them, and the inputs stay unchanged. Without k, v
    the caches are returned as given.

    q: (batch, seqlen_q, nheads, headdim); caches contiguous (batch, seqlen_cache, nheads_kv,
    headdim), or (cache rows, ...) read through cache_batch_idx int32 (batch,), or paged
    (num_pages, page_size, nheads_kv, headdim) through block_table int32 (batch, max_pages).
    k, v (both or neither): (batch, seqlen_new, nheads_kv, headdim), written from key
    cache_seqlens[b] of row b on (keys past the cache's end dropped). cache_seqlens (required): a
    Python int or an int32 (batch,) array, each row's filled length before the append (None: the
    whole cache, only without k, v). rotary_cos, rotary_sin (seqlen_ro, rotary_dim / 2) in q's
    dtype with rotary_interleaved, cache_leftpad int32 (batch,), softmax_scale, causal,
    window_size, softcap, alibi_slopes, learnable_sink and num_splits (0: chosen from the shape
    and the GPU) mean what they mean in cuflash.attention_with_kvcache; the scalar options are
    Python values (static under jit). lse: (batch, nheads, seqlen_q) float32.

    block_table, cache_batch_idx and cache_leftpad entries are checked on the host in an eager
    call (one synchronisation each; check_indices=False skips it); under jit they cannot be
    read, and the kernels clamp every entry (a bad one reads a wrong page or row, never outside
    the cache). An array cache_seqlens is never read on the host (the kernels clamp it).
    """
    for value, name in ((num_splits, "num_splits"), (return_lse, "return_lse"), (check_indices, "check_indices")):
        _static(value, name)
    api.check_kvcache_call(k, v, cache_seqlens, num_splits, rotary_cos=rotary_cos, rotary_sin=rotary_sin)
    q, k_cache, v_cache = _as_array(q, "q"), _as_array(k_cache, "k_cache"), _as_array(v_cache, "v_cache")
    new = _arrays(k=k, v=v)
    ex = _arrays(block_table=block_table, cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad,
                 rotary_cos=rotary_cos, rotary_sin=rotary_sin, alibi_slopes=alibi_slopes,
                 learnable_sink=learnable_sink)
    kv, lengths = _validate_kvcache(q, k_cache, v_cache, new, ex, cache_seqlens, softmax_scale, causal, window_size,
                                    softcap, rotary_interleaved, num_splits, return_lse)
    indices = [ex.get(n) for n in ("block_table", "cache_batch_idx", "cache_leftpad")]
    if check_indices and not _traced(*indices):
        api.check_cache_indices(jnp, *indices[:2], kv.cache.cache_map.num_pages, indices[2], kv.cache.seqlen)
    out, lse, kc, vc = _kvcache_jit(k_cache, v_cache, q, new, lengths, ex, kv)
    return (out, lse, kc, vc) if return_lse else (out, kc, vc)
