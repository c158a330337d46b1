"""Public entry points on CuPy arrays: validate, allocate, dispatch, launch.

Every check runs before any kernel is launched and raises an error that names
the offending argument. Kernels run on the current CuPy stream of q's device.
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import launch, params, support
from .specs import PLAIN, BwdConvertSpec, BwdPrepareSpec, Features

LOG2E = 1.4426950408889634
#: An unbounded side of the window in the params (kernels_cu/common/mask.cuh UNBOUNDED).
UNBOUNDED = 1 << 30


def _cupy():
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _dtype_names() -> dict:
    import ml_dtypes

    return {np.dtype(np.float16): "fp16", np.dtype(ml_dtypes.bfloat16): "bf16"}


def dtype_name(dtype) -> str | None:
    """'fp16' / 'bf16' for a supported array dtype, else None."""
    return _dtype_names().get(np.dtype(dtype))


def _as_gpu_array(x, name: str):
    """A CuPy array for x; objects with __dlpack__ (torch, JAX) are wrapped without a copy."""
    cp = _cupy()
    if isinstance(x, cp.ndarray):
        return x
    if isinstance(x, np.ndarray):
        raise TypeError(f"{name} is a NumPy array on the host; cuflash needs GPU arrays: pass cupy.asarray({name})")
    if hasattr(x, "__dlpack__"):
        try:
            return cp.from_dlpack(x)
        except Exception as e:  # a host tensor, or a dtype DLPack cannot carry
            raise TypeError(f"{name} could not be taken as a GPU array through DLPack: {e}") from None
    raise TypeError(f"{name} must be a CuPy array (or a GPU tensor with __dlpack__), got {type(x).__name__}")


@functools.lru_cache(maxsize=None)
def _check_device(device_id: int) -> None:
    cp = _cupy()
    cc = cp.cuda.Device(device_id).compute_capability  # e.g. "90"
    major, minor = int(cc[:-1]), int(cc[-1])
    if (major, minor) < support.MIN_COMPUTE_CAPABILITY:
        need = "%d.%d" % support.MIN_COMPUTE_CAPABILITY
        raise RuntimeError(
            f"GPU {device_id} has compute capability {major}.{minor}; cuflash needs {need} or newer (Ampere, Hopper, ...)"
        )


def _check_layout(x, name: str) -> None:
    """Last dim contiguous; 16-byte aligned rows, as the kernels' 16-byte copies need."""
    item = x.itemsize
    if x.size == 0:  # nothing is read or written; CuPy reports stride 0 for empty arrays
        return
    if x.strides[-1] != item:
        raise ValueError(f"{name} must be contiguous in its last dimension (stride {x.strides[-1] // item}, need 1)")
    if any(s % (8 * item) for s in x.strides[:-1]) or x.data.ptr % 16:
        raise ValueError(
            f"{name} must start on a 16-byte boundary with strides that are multiples of 8 elements "
            f"(strides {tuple(s // item for s in x.strides)}); pass cupy.ascontiguousarray({name})"
        )


def _check_not_implemented(**options) -> None:
    for key, default in support.NOT_YET_IMPLEMENTED.items():
        value = options[key]
        if value is None and default is None:
            continue
        if value is not None and default is not None and tuple(np.atleast_1d(value)) == tuple(np.atleast_1d(default)):
            continue
        raise NotImplementedError(f"{key}={value!r} is not implemented yet in cuflash")


def _softmax_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    s = float(softmax_scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"softmax_scale must be a finite positive number, got {softmax_scale!r}")
    return s


def _validate_qkv(q, k, v):
    q, k, v = (_as_gpu_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    for x, n in ((q, "q"), (k, "k"), (v, "v")):
        if x.ndim != 4:
            raise ValueError(f"{n} must have 4 dims (batch, seqlen, nheads, headdim), got shape {x.shape}")
    name = dtype_name(q.dtype)
    if name is None:
        raise TypeError(f"q has dtype {q.dtype}; supported: float16, bfloat16")
    for x, n in ((k, "k"), (v, "v")):
        if x.dtype != q.dtype:
            raise TypeError(f"{n} has dtype {x.dtype} but q has {q.dtype}; q, k and v must share one dtype")
    batch, seqlen_q, nheads, head_dim = q.shape
    _, seqlen_k, nheads_kv, _ = k.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape}")
    if k.shape[3] != head_dim or v.shape[3] != head_dim:
        raise ValueError(f"head dims differ: q {q.shape}, k {k.shape}, v {v.shape}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k: k {k.shape}, v {v.shape}")
    if nheads_kv == 0 or nheads % nheads_kv:
        raise ValueError(f"nheads of q ({nheads}) must be a multiple of nheads of k/v ({nheads_kv})")
    if head_dim % support.HEAD_DIM_MULTIPLE or not 0 < head_dim <= support.HEAD_DIM_MAX:
        raise ValueError(
            f"head dim (last dim of q) must be a multiple of {support.HEAD_DIM_MULTIPLE} "
            f"in [{support.HEAD_DIM_MULTIPLE}, {support.HEAD_DIM_MAX}], got {head_dim}"
        )
    if batch > launch.MAX_GRID_YZ or nheads > launch.MAX_GRID_YZ:
        raise ValueError(f"batch and nheads must be at most {launch.MAX_GRID_YZ}, got {batch} and {nheads}")
    for x, n in ((k, "k"), (v, "v")):
        if x.device.id != q.device.id:
            raise ValueError(f"{n} is on GPU {x.device.id} but q is on GPU {q.device.id}")
    for x, n in ((q, "q"), (k, "k"), (v, "v")):
        _check_layout(x, n)
    _check_device(q.device.id)
    return q, k, v, name


def _check_like(x, like, name: str, like_name: str):
    """x as a GPU array with like's shape and dtype, on like's device, last dim contiguous, 16-byte rows."""
    x = _as_gpu_array(x, name)
    if x.shape != like.shape or x.dtype != like.dtype:
        raise ValueError(
            f"{name} must have {like_name}'s shape {like.shape} and dtype {like.dtype}, got {x.shape} {x.dtype}"
        )
    if x.device.id != like.device.id:
        raise ValueError(f"{name} is on GPU {x.device.id} but {like_name} is on GPU {like.device.id}")
    _check_layout(x, name)
    return x


def _check_out(out, q):
    return _check_like(out, q, "out", "q")


def _strides(x) -> tuple[int, int, int]:
    """(batch, row, head) strides in elements of a (batch, seqlen, heads, dim) array."""
    item = x.itemsize
    return x.strides[0] // item, x.strides[1] // item, x.strides[2] // item


def _fwd_spec(dtype: str, head_dim: int, features: Features, seqlen_q: int, device_id: int):
    from .compile import cache, env

    cc = cache.device_compute_capability(device_id)
    return support.fwd_spec(dtype, head_dim, features, seqlen_q, cc, sm90=env.sm90_enabled())


def _bwd_spec(dtype: str, head_dim: int, features: Features, deterministic: bool, device_id: int):
    from .compile import cache, env

    cc = cache.device_compute_capability(device_id)
    return support.bwd_spec(dtype, head_dim, features, deterministic, cc, sm90=env.sm90_enabled())


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
    alibi_slopes: object = None  # validated CuPy float32 (nheads,) or (batch, nheads)
    learnable_sink: object = None  # validated CuPy float32 (nheads,)

    def fields(self) -> dict:
        """The params head's run-time feature fields, by name."""
        left, right = (UNBOUNDED if w < 0 else w for w in self.window)
        f = {"scale": self.scale, "scale_log2": self.scale * LOG2E, "window_left": left, "window_right": right}
        if self.softcap > 0:
            f["softcap_in"], f["softcap_out"] = self.scale / self.softcap, self.softcap / self.scale
        if self.alibi_slopes is not None:
            a = self.alibi_slopes
            f["alibi_slopes"] = a.data.ptr
            f["alibi_batch_stride"] = a.strides[0] // 4 if a.ndim == 2 else 0
        if self.learnable_sink is not None:
            f["sink"] = self.learnable_sink.data.ptr
        return f


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


def _check_f32_vector(x, name: str, q, shapes: tuple, shape_text: str):
    """A float32 GPU array on q's device, of one of `shapes`, contiguous in its last dim."""
    x = _as_gpu_array(x, name)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.shape not in shapes:
        raise ValueError(f"{name} must have shape {shape_text}, got {x.shape}")
    if x.device.id != q.device.id:
        raise ValueError(f"{name} is on GPU {x.device.id} but q is on GPU {q.device.id}")
    if x.size and x.strides[-1] != 4:
        raise ValueError(f"{name} must be contiguous in its last dimension: pass cupy.ascontiguousarray({name})")
    return x


def _options(q, softmax_scale, causal, window_size, softcap, alibi_slopes, learnable_sink) -> Options:
    """Validate every attention option (each error names its argument) into Options."""
    batch, _, nheads, head_dim = q.shape
    scale = _softmax_scale(softmax_scale, head_dim)
    left, right = _window(window_size, bool(causal))
    try:
        cap = float(softcap)
    except (TypeError, ValueError):
        raise TypeError(f"softcap must be a number >= 0 (0: off), got {softcap!r}") from None
    if not (math.isfinite(cap) and cap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0 (0: off), got {softcap!r}")
    if alibi_slopes is not None:
        alibi_slopes = _check_f32_vector(alibi_slopes, "alibi_slopes", q, ((nheads,), (batch, nheads)),
                                         f"(nheads,) = ({nheads},) or (batch, nheads) = ({batch}, {nheads})")
    if learnable_sink is not None:
        learnable_sink = _check_f32_vector(learnable_sink, "learnable_sink", q, ((nheads,),),
                                           f"(nheads,) = ({nheads},)")
    features = Features(_mask_kind(bool(causal), left, right), softcap=cap > 0, alibi=alibi_slopes is not None,
                        sink=learnable_sink is not None)
    return Options(scale, features, (left, right), cap, alibi_slopes, learnable_sink)


def _strides_named(prefix: str, x) -> dict:
    """{prefix_batch_stride, prefix_row_stride, prefix_head_stride} of a (batch, seqlen, heads, dim) array."""
    b, r, h = _strides(x)
    return {f"{prefix}_batch_stride": b, f"{prefix}_row_stride": r, f"{prefix}_head_stride": h}


def _attention_fields(q, k, v, opts: Options) -> dict:
    """The params head (CUFLASH_ATTENTION_FIELDS) of validated q, k, v and options."""
    batch, seqlen_q, nheads, head_dim = q.shape
    return {
        "q": q.data.ptr, "k": k.data.ptr, "v": v.data.ptr,
        **_strides_named("q", q), **_strides_named("k", k), **_strides_named("v", v),
        "batch": batch, "nheads": nheads, "nheads_kv": k.shape[2],
        "seqlen_q": seqlen_q, "seqlen_k": k.shape[1], "head_dim": head_dim,
        **opts.fields(),
    }


def _launch_fwd(q, k, v, out, lse, opts: Options, spec) -> None:
    """Launch the forward (a FwdSpec or FwdSm90Spec: both read FwdParams) for
    validated arrays (the benchmark's tuner passes its own spec)."""
    batch, seqlen_q, nheads, _ = q.shape
    smem = launch.fwd_smem_bytes(spec)
    fn = _kernel(spec, q.device.id, smem)
    p = params.pack_named(
        params.FWD_PARAMS,
        {**_attention_fields(q, k, v, opts), "o": out.data.ptr, "lse": 0 if lse is None else lse.data.ptr,
         **_strides_named("o", out)},
    )
    fn(launch.fwd_grid(spec, batch, nheads, seqlen_q), launch.fwd_block(spec), (p,), shared_mem=smem)


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
    out=None,
):
    """Exact attention softmax(q k^T * softmax_scale) v, FlashAttention style.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim),
    fp16 or bf16 CuPy arrays (or GPU tensors with __dlpack__), last dim contiguous;
    nheads % nheads_kv == 0 (GQA/MQA); headdim a multiple of 8 up to 256.
    causal and window_size=(left, right) masks are aligned to the bottom-right
    corner: query i sees key j iff i + seqlen_k - seqlen_q - left <= j <=
    i + seqlen_k - seqlen_q + right (-1: unbounded; causal=True sets right = 0).
    softcap > 0 caps the scaled scores: s = softcap * tanh(s / softcap).
    alibi_slopes: float32 (nheads,) or (batch, nheads); adds
    -slope * |i + seqlen_k - seqlen_q - j| to the scores.
    learnable_sink: float32 (nheads,), one logit per head that joins every row's
    softmax denominator but has no value.
    A query that sees no key gets output 0 and lse -inf (with a sink: lse = sink).

    Returns out (batch, seqlen_q, nheads, headdim) in q's dtype, and with
    return_lse=True also lse (batch, nheads, seqlen_q) float32, natural log.
    out: optional preallocated output (that shape and dtype, on q's device,
    last dim contiguous), written in place and returned.
    """
    _check_not_implemented(bias=bias, dropout_p=dropout_p)
    q, k, v, name = _validate_qkv(q, k, v)
    batch, seqlen_q, nheads, head_dim = q.shape
    opts = _options(q, softmax_scale, causal, window_size, softcap, alibi_slopes, learnable_sink)

    cp = _cupy()
    with q.device:
        out = _check_out(out, q) if out is not None else cp.empty(q.shape, dtype=q.dtype)
        lse = cp.empty((batch, nheads, seqlen_q), dtype=np.float32) if return_lse else None
        if out.size:
            _launch_fwd(q, k, v, out, lse, opts, _fwd_spec(name, head_dim, opts.features, seqlen_q, q.device.id))
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------- backward


def _check_lse(lse, q, name: str = "lse"):
    """lse (or dlse) as returned by attention(..., return_lse=True): (batch, nheads, seqlen_q) float32, any strides."""
    lse = _as_gpu_array(lse, name)
    batch, seqlen_q, nheads, _ = q.shape
    if lse.shape != (batch, nheads, seqlen_q) or lse.dtype != np.float32:
        raise ValueError(
            f"{name} must have shape (batch, nheads, seqlen_q) = {(batch, nheads, seqlen_q)} and dtype float32 "
            f"(like the lse attention(..., return_lse=True) returns), got {lse.shape} {lse.dtype}"
        )
    if lse.device.id != q.device.id:
        raise ValueError(f"{name} is on GPU {lse.device.id} but q is on GPU {q.device.id}")
    return lse


@functools.lru_cache(maxsize=None)
def _kernel(spec, device_id: int, smem: int = 0):
    """The loaded kernel of a spec, allowed `smem` bytes of dynamic shared memory."""
    from .compile.cache import get_function

    fn = get_function(spec, device_id)
    if smem > 48 * 1024:
        cp = _cupy()
        limit = cp.cuda.Device(device_id).attributes["MaxSharedMemoryPerBlockOptin"]
        if smem > limit:
            raise RuntimeError(
                f"kernel {spec.name} needs {smem} bytes of shared memory per block; GPU {device_id} allows {limit}"
            )
        fn.max_dynamic_shared_size_bytes = smem
    return fn


def _launch_bwd(dout, q, k, v, out, lse, dq, dk, dv, opts: Options, spec, dlse=None):
    """The backward for validated arrays: prepare, main kernel, conversions (the tuner passes its own spec).
    Returns dsink (float32 (nheads,)) when opts has a learnable sink, else None.

    Scratch (fp32, freed when this returns; nothing grows with seqlen_q * seqlen_k):
      lse_log2, delta (batch, nheads, seqlen_q rounded up to Br), dq_accum (batch, seqlen_q, nheads, D),
      under GQA dk_accum, dv_accum (batch, seqlen_k, nheads, headdim): dK, dV per query head, summed
      over each group by the convert kernel in a fixed order; deterministic: int32 turn counters
      (batch, nheads, seqlen_q / Br).
    """
    cp = _cupy()
    batch, seqlen_q, nheads, head_dim = q.shape
    _, seqlen_k, nheads_kv, _ = k.shape
    group = nheads // nheads_kv
    device = q.device.id
    name = spec.dtype
    m_blocks = launch.bwd_m_blocks(spec, seqlen_q)
    rounded = m_blocks * spec.tiles.block_m
    f32 = np.float32

    lse_log2 = cp.empty((batch, nheads, rounded), dtype=f32)
    delta = cp.empty((batch, nheads, rounded), dtype=f32)
    dq_accum = cp.empty((batch, seqlen_q, nheads, spec.head_dim), dtype=f32)
    semaphore = cp.empty((batch, nheads, m_blocks), dtype=np.int32) if spec.deterministic else None

    if rounded:
        prep = BwdPrepareSpec(name)
        stat_strides = ("batch_stride", "head_stride", "row_stride")
        p = params.pack_named(
            params.BWD_PREPARE_PARAMS,
            {
                "o": out.data.ptr, "dout": dout.data.ptr, "lse": lse.data.ptr, "lse_log2": lse_log2.data.ptr,
                "delta": delta.data.ptr, "dq_accum": dq_accum.data.ptr,
                "dq_semaphore": 0 if semaphore is None else semaphore.data.ptr,
                **_strides_named("o", out), **_strides_named("do", dout), **_strides_named("dqa", dq_accum),
                **{f"lse_{n}": st // 4 for n, st in zip(stat_strides, lse.strides)},
                **({} if dlse is None else
                   {"dlse": dlse.data.ptr, **{f"dlse_{n}": st // 4 for n, st in zip(stat_strides, dlse.strides)}}),
                "batch": batch, "nheads": nheads, "seqlen_q": seqlen_q, "seqlen_q_rounded": rounded,
                "head_dim": head_dim, "dq_accum_cols": spec.head_dim, "block_m": spec.tiles.block_m,
                "m_blocks": m_blocks,
            },
        )
        _kernel(prep, device)(launch.bwd_prepare_grid(prep, batch, nheads, rounded), (prep.threads, 1, 1), (p,))

    if seqlen_k:
        dk_accum = dv_accum = None
        if group > 1:
            dk_accum = cp.empty((batch, seqlen_k, nheads, head_dim), dtype=f32)
            dv_accum = cp.empty((batch, seqlen_k, nheads, head_dim), dtype=f32)
        smem = launch.bwd_smem_bytes(spec)
        p = params.pack_named(
            params.BWD_PARAMS,
            {
                **_attention_fields(q, k, v, opts),
                "dout": dout.data.ptr, "lse_log2": lse_log2.data.ptr, "delta": delta.data.ptr,
                "dq_accum": dq_accum.data.ptr, "dk": dk.data.ptr, "dv": dv.data.ptr,
                "dq_semaphore": 0 if semaphore is None else semaphore.data.ptr,
                **_strides_named("do", dout), **_strides_named("dqa", dq_accum),
                **_strides_named("dk", dk), **_strides_named("dv", dv),
                **({} if dk_accum is None else
                   {"dk_accum": dk_accum.data.ptr, "dv_accum": dv_accum.data.ptr, **_strides_named("dka", dk_accum)}),
                "seqlen_q_rounded": rounded, "m_blocks": m_blocks,
            },
        )
        _kernel(spec, device, smem)(
            launch.bwd_grid(spec, batch, nheads, seqlen_k), launch.bwd_block(spec), (p,), shared_mem=smem
        )
        if group > 1:
            for acc, grad in ((dk_accum, dk), (dv_accum, dv)):
                _launch_convert(acc, grad, group, name, device)

    if seqlen_q:
        _launch_convert(dq_accum, dq, 1, name, device)
    if opts.learnable_sink is None:
        return None
    # dsink[h] = -sum over batch and rows of exp(sink[h] - lse) * delta (DESIGN 3), in
    # float32 from the forward's lse and the prepared delta (which holds - dlse).
    sink = opts.learnable_sink[None, :, None]
    return -(cp.exp(sink - lse) * delta[:, :, :seqlen_q]).sum(axis=(0, 2), dtype=f32)


def _launch_convert(src, dst, group: int, name: str, device: int) -> None:
    """dst[b, s, h, :d] = sum_j src[b, s, h * group + j, :d] (kernels_cu/bwd_convert.cu)."""
    batch, seqlen, nheads, head_dim = dst.shape
    spec = BwdConvertSpec(name)
    p = params.pack(
        params.BWD_CONVERT_PARAMS,
        (src.data.ptr, dst.data.ptr, *_strides(src), *_strides(dst), batch, seqlen, nheads, group, head_dim, 0),
    )
    _kernel(spec, device)(launch.bwd_convert_grid(spec, batch, seqlen, nheads, head_dim), (spec.threads, 1, 1), (p,))


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

    Returns (dq, dk, dv) like q, k, v in their dtype, and with learnable_sink also
    dsink, float32 (nheads,): -sum over batch and rows of exp(sink - lse) * (rowsum(dout * out) - dlse).
    Under GQA/MQA dk and dv are summed over the query heads that share a kv head. Queries that see no key
    contribute nothing (their dq rows are 0). dq, dk, dv: optional preallocated
    outputs (shape and dtype of q, k, v, on q's device, last dim contiguous, not
    overlapping any input), written in place and returned.
    """
    _check_not_implemented(bias=bias, dropout_p=dropout_p)
    q, k, v, name = _validate_qkv(q, k, v)
    dout = _check_like(dout, q, "dout", "q")
    out = _check_like(out, q, "out", "q")
    lse = _check_lse(lse, q)
    if dlse is not None:
        dlse = _check_lse(dlse, q, "dlse")
    batch, seqlen_q, nheads, head_dim = q.shape
    opts = _options(q, softmax_scale, causal, window_size, softcap, alibi_slopes, learnable_sink)

    cp = _cupy()
    with q.device:
        dq = _check_like(dq, q, "dq", "q") if dq is not None else cp.empty(q.shape, dtype=q.dtype)
        dk = _check_like(dk, k, "dk", "k") if dk is not None else cp.empty(k.shape, dtype=k.dtype)
        dv = _check_like(dv, v, "dv", "v") if dv is not None else cp.empty(v.shape, dtype=v.dtype)
        dsink = None
        if batch and nheads:
            spec = _bwd_spec(name, head_dim, opts.features, deterministic, q.device.id)
            dsink = _launch_bwd(dout, q, k, v, out, lse, dq, dk, dv, opts, spec, dlse)
        if learnable_sink is None:
            return dq, dk, dv
        return dq, dk, dv, dsink if dsink is not None else cp.zeros((nheads,), dtype=np.float32)
