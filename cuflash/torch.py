"""cuflash.torch: flash-attn 2.x's functions on torch tensors, as torch custom ops.

    from cuflash.torch import flash_attn_func
    out = flash_attn_func(q, k, v, causal=True)     # q, k, v: (batch, seqlen, nheads, headdim) CUDA tensors

The functions keep flash-attn 2.x's names, parameter order, defaults and
returns; cuflash's own options (``learnable_sink``) come only as keywords after
them. Options whose kernels cuflash does not have yet raise NotImplementedError
naming the option (block_table in the varlen functions, for now).

How a call runs (DESIGN 8):
- Tensors reach the kernels as raw pointers and strides (``Ref``); nothing goes
  through DLPack or CuPy arrays. Outputs and scratch come from ``torch.empty``,
  so they count in torch's memory stats and work under CUDA-graph capture;
  kernels launch on ``torch.cuda.current_stream()`` of the inputs' device.
- Eagerly, when no gradient is needed, the forward runs directly (the decode
  path: no dispatcher cost). When a gradient is needed, or under
  ``torch.compile``, the call goes through the ``cuflash::fwd`` custom op, whose
  autograd formula calls ``cuflash::bwd``. Both ops have fake implementations, so
  ``torch.compile(fullgraph=True)`` traces them without a graph break.
- Like flash-attn, an input whose last dimension is not contiguous is copied to
  a contiguous tensor first (so is dout in the backward).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from . import api
from .compile import env
from .launch import Ref

__all__ = [
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_with_kvcache",
    "transformers_attention",
    "register_transformers",
    "SDPA_IMPL_NAME",
]

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                torch.int32: "int32", torch.float64: "float64"}
_TORCH_DTYPES = {name: dt for dt, name in _DTYPE_NAMES.items()}


# ---------------------------------------------------------------- tensors as Refs


def _ref(t: torch.Tensor, name: str, real: bool = True) -> Ref:
    """The Ref of a CUDA tensor (real=False: a fake tensor under tracing, pointer 0)."""
    try:
        dtype = _DTYPE_NAMES[t.dtype]
        cuda = t.is_cuda
    except (AttributeError, KeyError):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}") from None
        dtype, cuda = str(t.dtype).removeprefix("torch."), t.is_cuda
    if not cuda:
        raise ValueError(f"{name} must be a CUDA tensor, got one on {t.device}")
    return Ref(t.data_ptr() if real else 0, t.shape, t.stride(), dtype, t.get_device())


def _maybe_contiguous(t):
    """flash-attn's rule: a tensor whose last dimension is not contiguous is copied."""
    return t.contiguous() if t is not None and t.stride(-1) != 1 else t


try:  # torch's raw-stream getter (inductor's generated code uses it): far cheaper than current_stream()
    from torch._C import _cuda_getCurrentRawStream as _stream
except ImportError:  # pragma: no cover - a torch without it

    def _stream(device: int) -> int:
        return torch.cuda.current_stream(device).cuda_stream


_NO_GUARD = contextlib.nullcontext()

try:  # the current CUDA device without torch.cuda.current_device()'s Python wrapper
    from torch._C import _cuda_getDevice as _current_device
except ImportError:  # pragma: no cover - a torch without it
    _current_device = torch.cuda.current_device


def _on_device(device: int):
    """Make the tensors' device current for the launch (a no-op when it already is)."""
    return _NO_GUARD if _current_device() == device else torch.cuda.device(device)


def _alloc(device: int):
    def alloc(shape, dtype: str):
        t = torch.empty(shape, dtype=_TORCH_DTYPES[dtype], device=device)
        return t, _ref(t, "scratch")

    return alloc


# ---------------------------------------------------------------- validation and the two launches


def _validate(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left, window_right, softcap,
              real: bool = True, dropout: api.DropoutRng | None = None, seed_address: int = 0):
    """Refs of q, k, v and the validated Options; every error names its argument. seed_address:
    where the kernels read the dropout seed (_seed_address), 0 when it is dropout's own."""
    qr, kr, vr = _ref(q, "q", real), _ref(k, "k", real), _ref(v, "v", real)
    api.validate_qkv(qr, kr, vr)
    ar = None if alibi_slopes is None else _ref(alibi_slopes, "alibi_slopes", real)
    sr = None if learnable_sink is None else _ref(learnable_sink, "learnable_sink", real)
    opts = api.options(qr, softmax_scale, causal, (window_left, window_right), softcap, ar, sr)
    return qr, kr, vr, api.with_dropout(opts, dropout, seed_address)


def _convert(t, dtype: str | None):
    """api.check_bias's copy: in that dtype (None: its own), contiguous."""
    return (t if dtype is None else t.to(_TORCH_DTYPES[dtype])).contiguous()


def _with_bias(opts, bias, qr: Ref, kr: Ref, real: bool = True):
    """(opts with the bias, the validated api.Bias), or (opts, None) without one."""
    if bias is None:
        return opts, None
    checked = api.check_bias(bias, qr, kr, lambda t: _ref(t, "bias", real), _convert)
    return api.with_bias(opts, checked), checked


def _draw_dropout(dropout_p, device) -> tuple[api.DropoutRng | None, torch.Tensor]:
    """The forward's dropout (None without) and its rng state: int64 (2,) (seed, offset) on `device`,
    or an empty host tensor without dropout. The kernels read the seed from the state (_seed_address),
    as flash-attn's read its rng state on the GPU, so
    - torch.manual_seed makes the mask reproducible (the state comes from torch's CUDA generator);
    - it is drawn when the forward runs (eagerly, or inside a compiled graph's custom op), never
      baked into a trace, and the backward reads it where it is, with no copy to the host;
    - a CUDA graph that captured the call draws a fresh state on every replay (torch advances its
      generator per replay), so each replay drops other entries."""
    if not dropout_p:
        return None, _NO_RNG
    return api.dropout_options(dropout_p, (0, 0)), _draw_rng(device)


def _draw_rng(device) -> torch.Tensor:
    """A fresh rng state, int64 (seed, offset) on `device`, both from torch's CUDA generator in [0, 2^32):
    64 random bits, of the Philox key (seed) and counter (offset) that reference.dropout_keep_mask takes."""
    return torch.randint(0, 2**32, (2,), dtype=torch.int64, device=device)


def _seed_address(rng: Optional[torch.Tensor]) -> int:
    """The device address the kernels read the dropout seed from for an rng state on the GPU: int64
    (seed, offset) is, as little-endian uint32 words, (seed_lo, seed_hi, offset, 0), the words of
    api.with_dropout's seed_address (offset < 2^32). 0 for a state on the host (its seed is a launch
    value)."""
    return rng.data_ptr() if rng is not None and rng.is_cuda else 0


_NO_RNG = torch.empty((0,), dtype=torch.int64)  # the rng state of a call without dropout


def _fake_rng(q, dropout_p) -> torch.Tensor:
    """The rng state output of a fake forward, where _draw_dropout puts it."""
    return q.new_empty((2,), dtype=torch.int64) if dropout_p else torch.empty((0,), dtype=torch.int64, device="cpu")


def _saved_dropout(dropout_p, rng: Optional[torch.Tensor], q: torch.Tensor) -> tuple[api.DropoutRng | None, int]:
    """The backward's dropout from the forward's rng state (_draw_dropout), and _seed_address of it:
    a state on the host gives its seed as a launch value; one on q's GPU is read there by the kernels
    (no copy, no synchronisation)."""
    if not dropout_p:
        return None, 0
    if rng is None or rng.numel() != 2 or rng.dtype not in (torch.int64, torch.uint64):
        raise ValueError("dropout_p > 0 in the backward needs the forward's rng state, int64 (seed, offset)")
    if rng.is_cuda:
        if rng.get_device() != q.get_device() or not rng.is_contiguous():
            raise ValueError(f"the rng state must be contiguous on q's device (cuda:{q.get_device()}), got "
                             f"{rng.device}")
        return api.dropout_options(dropout_p, (0, 0), backward=True), _seed_address(rng)
    seed, offset = (int(x) for x in rng.tolist())  # a state kept on the host: its seed as a launch value
    return api.dropout_options(dropout_p, (seed, offset), backward=True), 0


def _plan_key(kind: str, tensors: tuple, *options):
    """An api launch-plan key from tensors' shapes, strides, dtypes and devices (None: an absent
    optional tensor) and the options."""
    key = [kind]
    for t in tensors:
        key += (None,) if t is None else (t.shape, t.stride(), t.dtype, t.get_device())
    return (*key, *options, env.selection_key())


def _aligned(*tensors) -> bool:
    bits = 0
    for t in tensors:
        bits |= t.data_ptr()
    return not bits & 15


def _forward(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left, window_right, softcap,
             return_lse: bool, dropout_p: float = 0.0, bias=None):
    """(out, lse or None, rng state): the forward kernel on validated-on-entry tensors. A plain call
    of a kind seen before replays its launch plan (api: launch plans)."""
    key = None
    if alibi_slopes is None and learnable_sink is None and bias is None and not dropout_p:
        key = _plan_key("torch-fwd", (q, k, v), softmax_scale, causal, window_left, window_right, softcap,
                        bool(return_lse))
        plan = api.recorded_plan(key)
        device = q.get_device()
        if plan is not None and _aligned(q, k, v) and _current_device() == device:
            out = q.new_empty(q.shape)
            lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32) if return_lse else None
            plan.replay((q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), 0 if lse is None else lse.data_ptr()),
                        _stream(device))
            return out, lse, _NO_RNG
    drop, rng = _draw_dropout(dropout_p, q.device)
    qr, kr, vr, opts = _validate(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left,
                                 window_right, softcap, dropout=drop, seed_address=_seed_address(rng))
    opts, _ = _with_bias(opts, bias, qr, kr)
    batch, seqlen_q, nheads, _ = q.shape
    device = qr.device
    with _on_device(device):
        out = q.new_empty(q.shape)
        lse = q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32) if return_lse else None
        outr, lser = _ref(out, "out"), None if lse is None else _ref(lse, "lse")
        api.run_forward(qr, kr, vr, outr, lser, opts, _stream(device))
        if key is not None:
            api.remember_forward(key, qr, kr, vr, outr, lser, opts)
    return out, lse, rng


def _backward(dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink, softmax_scale, causal, window_left,
              window_right, softcap, deterministic, dropout_p=0.0, rng=None, bias=None, bias_grad=False):
    """(dq, dk, dv, dsink, dbias): dsink is float32 (nheads,) with a learnable sink, dbias the
    bias's gradient (its shape and dtype) when bias_grad, each else an empty tensor. A plain call of a
    kind seen before replays its launch plan (api: launch plans)."""
    dout = _maybe_contiguous(dout)
    key = None
    if alibi_slopes is None and learnable_sink is None and bias is None and not dropout_p and dlse is None:
        key = _plan_key("torch-bwd", (dout, q, k, v, out, lse), softmax_scale, causal, window_left, window_right,
                        softcap, bool(deterministic))
        plan = api.recorded_plan(key)
        device = q.get_device()
        if plan is not None and _aligned(dout, q, k, v, out) and _current_device() == device:
            dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
            (shape, _), = plan.allocations  # the backward's one float32 scratch buffer
            scratch = q.new_empty(shape, dtype=torch.float32)
            plan.replay((dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
                         dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), scratch.data_ptr()), _stream(device))
            return dq, dk, dv, q.new_empty((0,), dtype=torch.float32), q.new_empty((0,))
    drop, seed_address = _saved_dropout(dropout_p, rng, q)
    qr, kr, vr, opts = _validate(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left,
                                 window_right, softcap, dropout=drop, seed_address=seed_address)
    opts, checked = _with_bias(opts, bias, qr, kr)
    doutr, outr, lser = _ref(dout, "dout"), _ref(out, "out"), _ref(lse, "lse")
    api.check_like(doutr, qr, "dout", "q")
    api.check_like(outr, qr, "out", "q")
    api.check_lse(lser, qr)
    dlser = None if dlse is None else api.check_lse(_ref(dlse, "dlse"), qr, "dlse")
    device = qr.device
    with _on_device(device):
        dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
        plan = buffer = fields = None
        if bias_grad and checked is not None:
            plan, buffer, fields = api.dbias_buffer(
                checked, qr, kr, deterministic,
                lambda shape, name: torch.zeros(shape, dtype=_TORCH_DTYPES[name], device=device),
                lambda t: _ref(t, "dbias"))
        dqr, dkr, dvr = _ref(dq, "dq"), _ref(dk, "dk"), _ref(dv, "dv")
        part = api.run_backward(doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, deterministic, dlser,
                                _alloc(device), _stream(device), fields)
        if key is not None:
            api.remember_backward(key, doutr, qr, kr, vr, outr, lser, dqr, dkr, dvr, opts, deterministic)
        if learnable_sink is None:
            dsink = q.new_empty((0,), dtype=torch.float32)
        else:
            dsink = api.dsink(torch, part, learnable_sink, lse, dlse)
        if plan is None:
            dbias = q.new_empty((0,))
        else:
            dbias = api.finish_dbias(buffer, plan, checked, lambda t: _DTYPE_NAMES[t.dtype],
                                     lambda t, name: t.to(_TORCH_DTYPES[name]))
    return dq, dk, dv, dsink, dbias


# ---------------------------------------------------------------- custom ops


@torch.library.custom_op("cuflash::fwd", mutates_args=(), device_types="cuda")
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alibi_slopes: Optional[torch.Tensor],
            learnable_sink: Optional[torch.Tensor], softmax_scale: float, causal: bool, window_left: int,
            window_right: int, softcap: float, deterministic: bool, dropout_p: float,
            bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (batch, seqlen_q, nheads, headdim), lse (batch, nheads, seqlen_q) float32, rng state
    (int64 (seed, offset) on q's GPU, empty without dropout)). deterministic is carried for the
    backward only. bias: broadcastable to (batch, nheads, seqlen_q, seqlen_k) (cuflash.attention)."""
    return _forward(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left, window_right,
                    softcap, True, dropout_p, bias)


@_fwd_op.register_fake
def _fwd_fake(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left, window_right, softcap,
              deterministic, dropout_p, bias=None):
    qr, kr, _, opts = _validate(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left,
                                window_right, softcap, real=False)
    _with_bias(opts, bias, qr, kr, real=False)
    api.dropout_options(dropout_p, 0)
    batch, seqlen_q, nheads, _ = q.shape
    rng = _fake_rng(q, dropout_p)
    return q.new_empty(q.shape), q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32), rng


@torch.library.custom_op("cuflash::bwd", mutates_args=(), device_types="cuda")
def _bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, dlse: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
            learnable_sink: Optional[torch.Tensor], rng: torch.Tensor, softmax_scale: float, causal: bool,
            window_left: int, window_right: int, softcap: float, deterministic: bool, dropout_p: float,
            bias: Optional[torch.Tensor] = None, bias_grad: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dsink, dbias); dsink is (nheads,) float32 with a learnable sink, dbias like bias
    when bias_grad, each else empty. rng: the forward's rng state."""
    return _backward(dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink, softmax_scale, causal,
                     window_left, window_right, softcap, deterministic, dropout_p, rng, bias, bias_grad)


@_bwd_op.register_fake
def _bwd_fake(dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink, rng, softmax_scale, causal, window_left,
              window_right, softcap, deterministic, dropout_p, bias=None, bias_grad=False):
    dsink = q.new_empty((0,) if learnable_sink is None else learnable_sink.shape, dtype=torch.float32)
    dbias = bias.new_empty(bias.shape) if bias is not None and bias_grad else q.new_empty((0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dsink, dbias


def _fwd_setup_context(ctx, inputs, output):
    """inputs: (q, k, v, alibi_slopes, learnable_sink, the 7 value options[, bias]) (the op's bias
    defaults to None and may be left out)."""
    q, k, v, alibi_slopes, learnable_sink, *options = inputs
    ctx.options, bias = options[:7], (options[7] if len(options) > 7 else None)
    out, lse, rng = output
    ctx.mark_non_differentiable(rng)
    ctx.save_for_backward(q, k, v, out, lse, alibi_slopes, learnable_sink, rng, bias)
    ctx.inputs = len(inputs)


def _fwd_backward(ctx, dout, dlse, drng=None, backward=_bwd_op):
    """The gradients of (q, k, v, alibi_slopes, learnable_sink, *options[, bias]) from those of
    (out, lse): the autograd formula of cuflash::fwd (through cuflash::bwd) and of the eager Function."""
    q, k, v, out, lse, alibi_slopes, learnable_sink, rng, bias = ctx.saved_tensors
    if dout is None:  # only lse was used
        dout = torch.zeros_like(out)
    bias_grad = bias is not None and bool(ctx.needs_input_grad[-1])
    dq, dk, dv, dsink, dbias = backward(dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink, rng,
                                        *ctx.options, bias, bias_grad)
    grads = (dq, dk, dv, None, dsink if learnable_sink is not None else None) + (None,) * len(ctx.options)
    return grads + (dbias if bias_grad else None,) * (ctx.inputs - len(grads))


_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def _eager_backward(dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink, rng, softmax_scale, causal,
                    window_left, window_right, softcap, deterministic, dropout_p, bias=None, bias_grad=False):
    """_backward in cuflash::bwd's argument order."""
    return _backward(dout, q, k, v, out, lse, dlse, alibi_slopes, learnable_sink, softmax_scale, causal,
                     window_left, window_right, softcap, deterministic, dropout_p, rng, bias, bias_grad)


class _EagerAttention(torch.autograd.Function):
    """cuflash::fwd's autograd without the dispatcher: a custom op costs ~100 µs per call in
    eager mode (measured on the H200), an autograd.Function a fraction of that. Same kernels, same formula."""

    @staticmethod
    def forward(ctx, q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left, window_right,
                softcap, deterministic, dropout_p, bias):
        ctx.set_materialize_grads(False)
        output = _forward(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left, window_right,
                          softcap, True, dropout_p, bias)
        _fwd_setup_context(ctx, (q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left,
                                 window_right, softcap, deterministic, dropout_p, bias), output)
        return output

    @staticmethod
    def backward(ctx, dout, dlse, drng):
        return _fwd_backward(ctx, dout, dlse, backward=_eager_backward)


# ---------------------------------------------------------------- flash-attn 2.x functions


def _not_implemented(**options):
    for name, value in options.items():
        if value:
            raise NotImplementedError(f"{name}={value!r} is not implemented yet in cuflash")


def _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
               return_attn_probs, learnable_sink, bias=None):
    """The one path behind every dense function: (out) or (out, lse, None)."""
    if not (isinstance(window_size, tuple) and len(window_size) == 2):
        window_size = api._window(window_size, False)  # a clear error for a bad value; a list becomes a tuple
    window_left, window_right = window_size
    q, k, v = _maybe_contiguous(q), _maybe_contiguous(k), _maybe_contiguous(v)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or (
        learnable_sink is not None and learnable_sink.requires_grad) or (bias is not None and bias.requires_grad))
    if dropout_p:
        api.dropout_options(dropout_p, 0)  # a clear error for a bad value before any work
    dropout_p = float(dropout_p)
    if torch.compiler.is_compiling():
        out, lse, _ = _fwd_op(q, k, v, alibi_slopes, learnable_sink, float(softmax_scale), bool(causal), window_left,
                              window_right, float(softcap), bool(deterministic), dropout_p, bias)
    elif grad:
        out, lse, _ = _EagerAttention.apply(q, k, v, alibi_slopes, learnable_sink, float(softmax_scale),
                                            bool(causal), window_left, window_right, float(softcap),
                                            bool(deterministic), dropout_p, bias)
    else:
        out, lse, _ = _forward(q, k, v, alibi_slopes, learnable_sink, softmax_scale, causal, window_left,
                               window_right, softcap, return_attn_probs, dropout_p, bias)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *, learnable_sink=None, bias=None):
    """flash-attn 2.x's flash_attn_func. q: (batch, seqlen_q, nheads, headdim); k, v:
    (batch, seqlen_k, nheads_kv, headdim); fp16/bf16 CUDA tensors (float32 too, unlike flash-attn).
    Returns out like q, or with return_attn_probs=True (out, softmax_lse (batch, nheads, seqlen_q)
    float32, None): the third element, flash-attn's debug tensor of probabilities, is not produced (cuflash.attention's
    return_attn_probs gives it on CuPy arrays). dropout_p > 0 draws the mask's seed on q's GPU from torch's
    CUDA generator (torch.manual_seed makes it reproducible; a CUDA graph replay draws a fresh one); the
    backward uses the same mask.
    learnable_sink (cuflash only): float32 (nheads,) sink logits, differentiable. bias (cuflash
    only): an additive bias broadcastable to (batch, nheads, seqlen_q, seqlen_k), fp16, bf16 or
    float32 (cuflash.attention's rules), differentiable: its gradient has its shape and dtype."""
    return _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                      return_attn_probs, learnable_sink, bias)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                              learnable_sink=None):
    """flash-attn 2.x's flash_attn_qkvpacked_func: qkv (batch, seqlen, 3, nheads, headdim), read
    through views (no copy); the gradient comes back packed like qkv."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must have shape (batch, seqlen, 3, nheads, headdim), got {tuple(qkv.shape)}")
    return _attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal, window_size,
                      softcap, alibi_slopes, deterministic, return_attn_probs, learnable_sink)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                             learnable_sink=None):
    """flash-attn 2.x's flash_attn_kvpacked_func: kv (batch, seqlen_k, 2, nheads_kv, headdim), read
    through views (no copy)."""
    if kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(f"kv must have shape (batch, seqlen_k, 2, nheads_kv, headdim), got {tuple(kv.shape)}")
    return _attention(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                      alibi_slopes, deterministic, return_attn_probs, learnable_sink)


# ---------------------------------------------------------------- variable-length batches


def _varlen_validate(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, alibi_slopes,
                     learnable_sink, softmax_scale, causal, window_left, window_right, softcap, real: bool = True,
                     check_lengths: bool = True, dropout: api.DropoutRng | None = None, seed_address: int = 0):
    """Refs of q, k, v as (batch, total rows, heads, dim) with batch stride 0, the validated Options,
    the sequence pointers and batch. The lengths are checked on the host (one copy from the GPU)
    unless tracing (fake tensors) or capturing a CUDA graph, where no copy may happen: there, as in
    flash-attn, valid cu_seqlens are the caller's contract. check_lengths=False skips that copy where
    the lengths are known good (built here, or checked by the forward of the same call)."""
    for x, n in ((q, "q"), (k, "k"), (v, "v")):
        if x.dim() != 3:
            raise ValueError(f"{n} must have 3 dims (total, nheads, headdim) in a varlen call, got {tuple(x.shape)}")
    cu_q, cu_k = _ref(cu_seqlens_q, "cu_seqlens_q", real), _ref(cu_seqlens_k, "cu_seqlens_k", real)
    used = None if seqused_k is None else _ref(seqused_k, "seqused_k", real)
    batch = api.check_sequence_arrays(cu_q, cu_k, used, q.get_device())
    api.check_max_seqlens(max_seqlen_q, max_seqlen_k)
    if real and check_lengths and not torch.cuda.is_current_stream_capturing():
        host = torch.cat([cu_seqlens_q, cu_seqlens_k] + ([seqused_k] if seqused_k is not None else [])).cpu().numpy()
        api.check_varlen_lengths(host, batch, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)
    qr, kr, vr = (api._varlen_ref(_ref(x, n, real), batch, x.shape[0]) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    api.validate_qkv(qr, kr, vr)
    ar = None if alibi_slopes is None else _ref(alibi_slopes, "alibi_slopes", real)
    sr = None if learnable_sink is None else _ref(learnable_sink, "learnable_sink", real)
    opts = api.with_dropout(api._varlen_options(qr, softmax_scale, causal, (window_left, window_right), softcap,
                                                ar, sr), dropout, seed_address)
    sequences = {"cu_seqlens_q": cu_q.ptr, "cu_seqlens_k": cu_k.ptr, "seqused_k": 0 if used is None else used.ptr}
    return qr, kr, vr, opts, sequences, batch


def _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, alibi_slopes,
                    learnable_sink, softmax_scale, causal, window_left, window_right, softcap, dropout_p=0.0,
                    check_lengths=True):
    """(out (total_q, nheads, headdim), lse (nheads, total_q) float32, rng state (_draw_dropout))."""
    drop, rng = _draw_dropout(dropout_p, q.device)
    qr, kr, vr, opts, sequences, batch = _varlen_validate(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, alibi_slopes, learnable_sink,
        softmax_scale, causal, window_left, window_right, softcap, check_lengths=check_lengths, dropout=drop,
        seed_address=_seed_address(rng))
    with _on_device(qr.device):
        out = q.new_empty(q.shape)
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
        api.run_varlen_forward(qr, kr, vr, api._varlen_ref(_ref(out, "out"), batch, q.shape[0]), _ref(lse, "lse"),
                               opts, sequences, max_seqlen_q, _stream(qr.device))
    return out, lse, rng


def _varlen_forward_of(inputs: tuple, check_lengths: bool = True):
    """_varlen_forward of cuflash::varlen_fwd's inputs (their deterministic is the backward's)."""
    *head, _deterministic, dropout_p = inputs
    return _varlen_forward(*head, dropout_p=dropout_p, check_lengths=check_lengths)


def _varlen_backward(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k,
                     alibi_slopes, learnable_sink, rng, softmax_scale, causal, window_left, window_right, softcap,
                     deterministic, dropout_p=0.0, check_lengths=True):
    """(dq, dk, dv, dsink): dsink (nheads,) float32 with a learnable sink, else an empty tensor. rng:
    the forward's rng state."""
    dout = _maybe_contiguous(dout)
    drop, seed_address = _saved_dropout(dropout_p, rng, q)
    qr, kr, vr, opts, sequences, batch = _varlen_validate(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, alibi_slopes, learnable_sink,
        softmax_scale, causal, window_left, window_right, softcap, check_lengths=check_lengths,
        dropout=drop, seed_address=seed_address)
    for x, like, n in ((dout, q, "dout"), (out, q, "out")):
        api.check_like(_ref(x, n), _ref(like, "q"), n, "q")
    api.check_varlen_lse(_ref(lse, "lse"), qr)
    if dlse is not None:
        api.check_varlen_lse(_ref(dlse, "dlse"), qr, "dlse")
    device = qr.device
    with _on_device(device):
        # keys past seqused_k get no gradient from the kernels: it is 0
        new = k.new_empty if seqused_k is None else k.new_zeros
        dq, dk, dv = q.new_empty(q.shape), new(k.shape), new(v.shape)

        def by_sequence(x, n):
            return api._varlen_ref(_ref(x, n), batch, x.shape[0])

        part = api.run_varlen_backward(
            by_sequence(dout, "dout"), qr, kr, vr, by_sequence(out, "out"), _ref(lse, "lse"), by_sequence(dq, "dq"),
            by_sequence(dk, "dk"), by_sequence(dv, "dv"), opts, deterministic,
            None if dlse is None else _ref(dlse, "dlse"), _alloc(device), _stream(device), sequences,
            max_seqlen_q, max_seqlen_k)
        if learnable_sink is None:
            dsink = q.new_empty((0,), dtype=torch.float32)
        else:
            dsink = api.dsink(torch, part, learnable_sink, *api.heads_rows(lse, dlse))
    return dq, dk, dv, dsink


@torch.library.custom_op("cuflash::varlen_fwd", mutates_args=(), device_types="cuda")
def _varlen_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                   cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, seqused_k: Optional[torch.Tensor],
                   alibi_slopes: Optional[torch.Tensor], learnable_sink: Optional[torch.Tensor], softmax_scale: float,
                   causal: bool, window_left: int, window_right: int, softcap: float, deterministic: bool,
                   dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (total_q, nheads, headdim), lse (nheads, total_q) float32, rng state (as cuflash::fwd's));
    deterministic is for the backward."""
    return _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, alibi_slopes,
                           learnable_sink, softmax_scale, causal, window_left, window_right, softcap, dropout_p)


@_varlen_fwd_op.register_fake
def _varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, alibi_slopes,
                     learnable_sink, softmax_scale, causal, window_left, window_right, softcap, deterministic,
                     dropout_p=0.0):
    _varlen_validate(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k, alibi_slopes,
                     learnable_sink, softmax_scale, causal, window_left, window_right, softcap, real=False)
    api.dropout_options(dropout_p, 0)
    rng = _fake_rng(q, dropout_p)
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32), rng


@torch.library.custom_op("cuflash::varlen_bwd", mutates_args=(), device_types="cuda")
def _varlen_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, dlse: Optional[torch.Tensor], cu_seqlens_q: torch.Tensor,
                   cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                   seqused_k: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
                   learnable_sink: Optional[torch.Tensor], rng: torch.Tensor, softmax_scale: float, causal: bool,
                   window_left: int, window_right: int, softcap: float, deterministic: bool, dropout_p: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dsink) of a varlen batch; dsink is (nheads,) float32 with a learnable sink, else empty.
    rng: the forward's rng state."""
    return _varlen_backward(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                            seqused_k, alibi_slopes, learnable_sink, rng, softmax_scale, causal, window_left,
                            window_right, softcap, deterministic, dropout_p)


@_varlen_bwd_op.register_fake
def _varlen_bwd_fake(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     seqused_k, alibi_slopes, learnable_sink, *rest):
    dsink = q.new_empty((0,) if learnable_sink is None else learnable_sink.shape, dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dsink


def _varlen_setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, used, alibi_slopes, learnable_sink, *ctx.options = inputs
    ctx.lengths = (max_q, max_k)
    out, lse, rng = output
    ctx.mark_non_differentiable(rng)
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, used, alibi_slopes, learnable_sink, rng)


def _varlen_grads(ctx, dout, dlse, drng=None, backward=_varlen_bwd_op):
    """The gradients of cuflash::varlen_fwd's inputs from those of (out, lse), for the custom op
    and the eager Function alike."""
    q, k, v, out, lse, cu_q, cu_k, used, alibi_slopes, learnable_sink, rng = ctx.saved_tensors
    if dout is None:  # only lse was used
        dout = torch.zeros_like(out)
    dq, dk, dv, dsink = backward(dout, q, k, v, out, lse, dlse, cu_q, cu_k, *ctx.lengths, used, alibi_slopes,
                                 learnable_sink, rng, *ctx.options)
    return ((dq, dk, dv, None, None, None, None, None, None, dsink if learnable_sink is not None else None)
            + (None,) * len(ctx.options))


_varlen_fwd_op.register_autograd(_varlen_grads, setup_context=_varlen_setup_context)


class _EagerVarlen(torch.autograd.Function):
    """cuflash::varlen_fwd's autograd without the dispatcher (as _EagerAttention). Its inputs are the
    op's, then check_lengths; the backward never re-checks the lengths the forward saw."""

    @staticmethod
    def forward(ctx, *inputs):
        ctx.set_materialize_grads(False)
        *op_inputs, check_lengths = inputs
        output = _varlen_forward_of(op_inputs, check_lengths)
        _varlen_setup_context(ctx, op_inputs, output)
        return output

    @staticmethod
    def backward(ctx, dout, dlse, drng):
        grads = _varlen_grads(ctx, dout, dlse, backward=functools.partial(_varlen_backward, check_lengths=False))
        return (*grads, None)


def _attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                      causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs, block_table,
                      learnable_sink, seqused_k=None, check_lengths=True):
    """The one path behind the varlen functions: out, or (out, lse (nheads, total_q), None).
    check_lengths=False: the caller built cu_seqlens itself (no host copy to check them)."""
    _not_implemented(block_table=block_table is not None)
    if not (isinstance(window_size, tuple) and len(window_size) == 2):
        window_size = api._window(window_size, False)
    if dropout_p:
        api.dropout_options(dropout_p, 0)  # a clear error for a bad value before any work
    q, k, v = _maybe_contiguous(q), _maybe_contiguous(k), _maybe_contiguous(v)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), seqused_k, alibi_slopes,
            learnable_sink, float(softmax_scale), bool(causal), window_size[0], window_size[1], float(softcap),
            bool(deterministic), float(dropout_p))
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or (
        learnable_sink is not None and learnable_sink.requires_grad))
    if torch.compiler.is_compiling():
        out, lse, _ = _varlen_fwd_op(*args)
    elif grad:
        out, lse, _ = _EagerVarlen.apply(*args, check_lengths)
    else:
        out, lse, _ = _varlen_forward_of(args, check_lengths)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *, learnable_sink=None,
                           check_lengths=True):
    """flash-attn 2.x's flash_attn_varlen_func: q (total_q, nheads, headdim), k, v (total_k, nheads_kv,
    headdim), cu_seqlens int32 (batch + 1,). Returns out, or (out, softmax_lse (nheads, total_q), None).
    block_table (paged KV) raises NotImplementedError. dropout_p > 0 draws the mask's seed from torch's
    CUDA generator, as flash_attn_func does. The lengths are checked on the host (one copy of
    cu_seqlens, a synchronisation per call) unless check_lengths=False (cuflash only; flash-attn never
    checks them) or a CUDA graph is being captured: the kernels then clamp every sequence into the
    tensors (cuflash.attention_varlen)."""
    return _attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                             softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                             return_attn_probs, block_table, learnable_sink, check_lengths=check_lengths)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, *, learnable_sink=None, check_lengths=True):
    """flash-attn 2.x's flash_attn_varlen_qkvpacked_func: qkv (total, 3, nheads, headdim), read through
    views; check_lengths as flash_attn_varlen_func."""
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"qkv must have shape (total, 3, nheads, headdim), got {tuple(qkv.shape)}")
    return _attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                             dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                             return_attn_probs, None, learnable_sink, check_lengths=check_lengths)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                                    learnable_sink=None, check_lengths=True):
    """flash-attn 2.x's flash_attn_varlen_kvpacked_func: kv (total_k, 2, nheads_kv, headdim), read through
    views; check_lengths as flash_attn_varlen_func."""
    if kv.dim() != 4 or kv.shape[1] != 2:
        raise ValueError(f"kv must have shape (total_k, 2, nheads_kv, headdim), got {tuple(kv.shape)}")
    return _attention_varlen(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                             return_attn_probs, None, learnable_sink, check_lengths=check_lengths)


@functools.lru_cache(maxsize=64)
def _cached_offsets(device: int, batch: int, step: int) -> torch.Tensor:
    return torch.arange(0, (batch + 1) * step, step, dtype=torch.int32, device=device)


def _offsets(device: int, batch: int, step: int) -> torch.Tensor:
    """int32 (batch + 1,) [0, step, 2 step, ...] on `device`: kept per shape (constants), except
    while a CUDA graph is captured, where the arange is only recorded and its values do not exist
    until a replay, so it must not be kept for later calls."""
    if torch.cuda.is_current_stream_capturing():
        return torch.arange(0, (batch + 1) * step, step, dtype=torch.int32, device=device)
    return _cached_offsets(device, batch, step)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False, *,
                            learnable_sink=None, check_indices=True):
    """flash-attn 2.x's flash_attn_with_kvcache (no autograd, as there): k, v appended into the caches
    in place at cache_seqlens, then attention over each row's filled keys (cuflash.api.run_kvcache:
    the split-KV decode kernel, or the varlen prefill kernels for long query chunks). Caches
    contiguous, through cache_batch_idx, or paged through block_table with any page size; rotary
    embedding of q and the new keys fused into the append; cache_leftpad. Without cache
    operations (no k, v, cache_seqlens, block_table, cache_batch_idx or cache_leftpad) it is dense
    attention over the whole cache. block_table, cache_batch_idx and cache_leftpad entries are
    checked on the host (one synchronisation) unless check_indices=False or a CUDA graph is being
    captured; the kernels clamp them either way."""
    api.check_kvcache_call(k, v, cache_seqlens, num_splits, rotary_cos=rotary_cos, rotary_sin=rotary_sin)
    if k is None and cache_seqlens is None and block_table is None and cache_batch_idx is None and cache_leftpad is None:
        with torch.no_grad():
            out = _attention(q, k_cache, v_cache, 0.0, softmax_scale, causal, window_size, softcap, alibi_slopes,
                             False, return_softmax_lse, learnable_sink)
        return (out[0], out[1]) if return_softmax_lse else out
    q, k, v = _maybe_contiguous(q), _maybe_contiguous(k), _maybe_contiguous(v)
    batch, seqlen_q, nheads, _ = q.shape
    if batch > 1 and q.stride(0) != seqlen_q * q.stride(1):
        q = q.contiguous()
    key = None
    if api.kvcache_plannable(cache_seqlens, block_table, cache_batch_idx, cache_leftpad, alibi_slopes,
                             learnable_sink, check_indices) and isinstance(cache_seqlens, torch.Tensor):
        tensors = (q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, cache_leftpad, rotary_cos,
                   rotary_sin)
        key = _plan_key("torch-kvcache", tensors, softmax_scale, causal, tuple(window_size), softcap,
                        bool(rotary_interleaved), num_splits, bool(return_softmax_lse))
        plan = api.recorded_plan(key)
        device = q.get_device()
        if (plan is not None and _current_device() == device
                and _aligned(*(t for t in (q, k_cache, v_cache, k, v, rotary_cos, rotary_sin) if t is not None))):
            used = torch.empty((batch,), dtype=torch.int32, device=q.device) if k is not None else None
            out = torch.empty_like(q)
            lse_rows = q.new_empty((nheads, batch * seqlen_q), dtype=torch.float32) if return_softmax_lse else None
            scratch = [torch.empty(shape, dtype=_TORCH_DTYPES[dtype], device=q.device)
                       for shape, dtype in plan.allocations]
            plan.replay(tuple(0 if t is None else t.data_ptr() for t in (*tensors, used, out, lse_rows, *scratch)),
                        _stream(device))
            return _kvcache_result(out, lse_rows, return_softmax_lse)
    qr, kcr, vcr = _ref(q, "q"), _ref(k_cache, "k_cache"), _ref(v_cache, "v_cache")
    kr = None if k is None else _ref(k, "k")
    vr = None if v is None else _ref(v, "v")
    btr, cir, lpr, cosr, sinr = (None if x is None else _ref(x, n) for x, n in (
        (block_table, "block_table"), (cache_batch_idx, "cache_batch_idx"), (cache_leftpad, "cache_leftpad"),
        (rotary_cos, "rotary_cos"), (rotary_sin, "rotary_sin")))
    cache = api.check_kvcache(qr, kcr, vcr, kr, vr, btr, cir, lpr, cosr, sinr)
    ar = None if alibi_slopes is None else _ref(alibi_slopes, "alibi_slopes")
    sr = None if learnable_sink is None else _ref(learnable_sink, "learnable_sink")
    left, right = window_size
    opts = api.kvcache_options(qr, softmax_scale, causal, (left, right), softcap, ar, sr)
    device = qr.device
    with _on_device(device), torch.no_grad():
        if check_indices and not torch.cuda.is_current_stream_capturing():
            api.check_cache_indices(torch, block_table, cache_batch_idx, cache.cache_map.num_pages, cache_leftpad,
                                    cache.seqlen)
        if cache_seqlens is None or isinstance(cache_seqlens, int):
            value = cache.seqlen if cache_seqlens is None else cache_seqlens
            api.check_cache_length(value, cache.seqlen)
            cache_seqlens = torch.full((batch,), value, dtype=torch.int32, device=q.device)
        lengths = _ref(cache_seqlens, "cache_seqlens")
        api.check_cache_lengths(lengths, batch, device)
        used = torch.empty((batch,), dtype=torch.int32, device=q.device) if k is not None else None
        out = torch.empty_like(q)
        lse_rows = q.new_empty((nheads, batch * seqlen_q), dtype=torch.float32) if return_softmax_lse else None

        def offsets():
            return tuple(_offsets(device, batch, step).data_ptr() for step in (seqlen_q, cache.seqlen))

        usedr, outr = None if used is None else _ref(used, "seqused"), _ref(out, "out")
        lser = None if lse_rows is None else _ref(lse_rows, "lse")
        rotary = None if cosr is None else (cosr, sinr, bool(rotary_interleaved))
        api.run_kvcache(qr, kcr, vcr, kr, vr, lengths, usedr, outr, lser, opts, cache, int(num_splits),
                        _alloc(device), offsets, _stream(device), rotary)
        if key is not None:
            api.remember_kvcache(key, qr, kcr, vcr, kr, vr, lengths, usedr, outr, lser, opts, cache, num_splits,
                                 rotary)
        return _kvcache_result(out, lse_rows, return_softmax_lse)


def _kvcache_result(out, lse_rows, return_lse: bool):
    """flash_attn_with_kvcache's result: out, or (out, lse (batch, nheads, seqlen_q)) from the kernels'
    lse rows (nheads, batch * seqlen_q)."""
    if not return_lse:
        return out
    batch, seqlen_q, nheads, _ = out.shape
    return out, lse_rows.view(nheads, batch, seqlen_q).transpose(0, 1).contiguous()


# ---------------------------------------------------------------- SDPA: a flash implementation for torch

#: The name cuflash registers under torch.nn.attention.register_flash_attention_impl (torch >= 2.10).
SDPA_IMPL_NAME = "cuflash"


class _SdpaHandle:
    """What register_fn returns: remove() drops cuflash's kernels for the SDPA flash ops."""

    def __init__(self, library):
        self.library = library

    def remove(self) -> None:
        if self.library is not None:
            self.library._destroy()
            self.library = None


def _sdpa_forward(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    """aten::_scaled_dot_product_flash_attention on cuflash. query (B, H, S_q, D), key/value
    (B, H_kv, S_k, D); returns flash's 9-tuple with out in query's layout and lse (B, H, S_q)."""
    if return_debug_mask:
        raise NotImplementedError(
            "cuflash as SDPA's flash implementation has no debug mask; call "
            "torch.nn.attention.restore_flash_attention_impl() to use torch's own flash kernels")
    out = torch.empty_like(query)
    q, k, v, o = (t.transpose(1, 2) for t in (query, key, value, out))  # (B, S, H, D) views, no copies
    if scale is None:
        scale = query.shape[-1] ** -0.5
    drop, rng = _draw_dropout(dropout_p, query.device)
    qr, kr, vr, opts = _validate(q, k, v, None, None, scale, is_causal, -1, -1, 0.0, dropout=drop,
                                 seed_address=_seed_address(rng))
    batch, seqlen_q, nheads, _ = q.shape
    lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=query.device)
    with _on_device(qr.device):
        api.run_forward(qr, kr, vr, _ref(o, "out"), _ref(lse, "lse"), opts, _stream(qr.device))
    # (seed, offset) of the dropout mask where torch keeps its own, on the GPU, as flash's
    rng_state = torch.zeros((2,), dtype=torch.uint64, device=query.device) if drop is None else rng.view(torch.uint64)
    philox_offset = torch.zeros((), dtype=torch.uint64, device=query.device)
    debug_mask = torch.empty(0, dtype=query.dtype, device=query.device)
    return out, lse, None, None, query.shape[2], key.shape[2], rng_state, philox_offset, debug_mask


def _sdpa_backward(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p,
                   is_causal, philox_seed, philox_offset, *, scale=None):
    """aten::_scaled_dot_product_flash_attention_backward on cuflash: (dq, dk, dv) in the inputs' layouts."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    q, k, v, o, do = (t.transpose(1, 2) for t in (query, key, value, out, grad_out))
    rng = philox_seed.view(torch.int64) if dropout_p else None  # read by the kernels on the GPU: no synchronisation
    dq, dk, dv, _, _ = _backward(do, q, k, v, o, logsumexp, None, None, None, scale, is_causal, -1, -1, 0.0, False,
                                 dropout_p, rng)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def _sdpa_register():
    lib = torch.library.Library("aten", "IMPL", "CUDA")  # noqa: TOR901
    lib.impl("_scaled_dot_product_flash_attention", _sdpa_forward, "CUDA")
    lib.impl("_scaled_dot_product_flash_attention_backward", _sdpa_backward, "CUDA")
    return _SdpaHandle(lib)


def _register_sdpa_impl() -> bool:
    """Offer cuflash to torch's flash-implementation registry (not activated: the user calls
    torch.nn.attention.activate_flash_attention_impl("cuflash")). False on a torch without it."""
    register = getattr(torch.nn.attention, "register_flash_attention_impl", None)
    if register is None:
        return False
    if SDPA_IMPL_NAME not in torch.nn.attention.list_flash_attention_impls():
        register(SDPA_IMPL_NAME, register_fn=_sdpa_register)
    return True


_register_sdpa_impl()


# ---------------------------------------------------------------- HuggingFace transformers


def transformers_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, softcap=None, is_causal=None, s_aux=None, **kwargs):
    """An attention function for transformers' AttentionInterface (register_transformers does the
    registration). query (B, H, S_q, D), key/value (B, H_kv, S_k, D) -> ((B, S_q, H, D), None).

    Causal unless the module (or the call) says otherwise, bottom-right aligned as in flash-attn;
    sliding_window w lets a query see the w most recent keys (itself included); softcap as Gemma 2;
    s_aux (gpt-oss sinks) becomes the differentiable learnable_sink. A padding mask (B, S_k), as
    transformers' flash mask function gives it (True: a real token), runs as a variable-length
    batch: the real tokens are gathered, attended per sequence and scattered back (padded query
    rows get 0); the queries are the last S_q positions of the mask."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window = (sliding_window - 1, sliding_window - 1) if sliding_window else (-1, -1)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, S, H, D) views
    sink = None if s_aux is None else s_aux.float()
    if attention_mask is None:
        out = _attention(q, k, v, dropout, scaling, causal, window, softcap or 0.0, None, False, False, sink)
        return out, None
    return _padded_attention(q, k, v, attention_mask, scaling, causal, window, softcap or 0.0, sink, dropout), None


def _padded_attention(q, k, v, mask, scaling, causal, window, softcap, sink, dropout_p=0.0):
    """Attention of a padded batch through the varlen path. q (B, S_q, H, D), k, v (B, S_k, H_kv, D),
    mask (B, S_k) (nonzero: a real token). Costs a gather of the real rows, a scatter back and one
    host synchronisation (the longest lengths), like flash-attn's unpadding."""
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k = k.shape[1]
    if tuple(mask.shape) != (batch, seqlen_k):
        raise ValueError(f"attention_mask must be a (batch, seqlen_k) = {(batch, seqlen_k)} padding mask (transformers' "
                         f"flash mask), got {tuple(mask.shape)}")
    keep_k = mask.bool()
    keep_q = keep_k[:, -seqlen_q:]
    lens_q, lens_k = keep_q.sum(1, dtype=torch.int32), keep_k.sum(1, dtype=torch.int32)
    cu_q = torch.nn.functional.pad(lens_q.cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = torch.nn.functional.pad(lens_k.cumsum(0, dtype=torch.int32), (1, 0))
    rows_q, rows_k = keep_q.flatten().nonzero().flatten(), keep_k.flatten().nonzero().flatten()
    max_q, max_k = (int(x) for x in torch.stack([lens_q.max(), lens_k.max()]).tolist())
    qu = q.reshape(batch * seqlen_q, nheads, head_dim)[rows_q]
    ku, vu = (x.reshape(batch * seqlen_k, *x.shape[2:])[rows_k] for x in (k, v))
    out = _attention_varlen(qu, ku, vu, cu_q, cu_k, max_q, max_k, dropout_p, scaling, causal, window, softcap, None,
                            False, False, None, sink, check_lengths=False)  # lengths built from the mask
    full = out.new_zeros(batch * seqlen_q, nheads, head_dim).index_copy(0, rows_q, out)
    return full.view(batch, seqlen_q, nheads, head_dim)


def register_transformers(name: str = "cufa") -> str:
    """Register transformers_attention (and the mask function it reads) under `name`, so that
    attn_implementation=name selects cuflash. transformers 5.x treats any name containing "flash"
    as a flash-attn kernel to import from the Hub and refuses it, hence the default name."""
    if "flash" in name:
        raise ValueError(f"name {name!r} contains 'flash', which transformers 5.x refuses for registered functions")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, transformers_attention)
    # flash_attention_mask gives None without padding and a (B, S_k) padding mask otherwise:
    # exactly what transformers_attention reads (a padded batch runs through varlen).
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
