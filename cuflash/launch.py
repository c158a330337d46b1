"""Everything after the spec is chosen: the kernel from the compile cache, the
launch geometry (derived from the spec's tile constants), the params packing,
scratch buffers and the launches on the caller's stream (DESIGN 4c).

Arrays arrive as ``Ref`` (a raw pointer, shape, strides in elements, dtype name
and device), already validated by api.py or an adapter, so one path serves CuPy,
torch and JAX. Launches go straight to ``cuLaunchKernel`` on the stream the
caller names; the caller has made the arrays' device current.
"""
from __future__ import annotations

import functools
import itertools
import os
import struct
import threading
from typing import Callable, NamedTuple

from . import params, tma
from .compile import env
from .compile.cache import get_pointer
from .specs import (DTYPE_BYTES, BwdConvertSpec, BwdPrepareSpec, BwdSm90Spec, BwdSpec, DecodeSpec, FwdSm90Spec,
                    FwdSpec, KvAppendSpec)

#: CUDA limit on gridDim.y and gridDim.z.
MAX_GRID_YZ = 65535


class Ref(NamedTuple):
    """An array as a kernel sees it. strides are in elements; dtype is NumPy's
    name ("float16", "bfloat16", "float32", "int32"); device is the CUDA ordinal."""

    ptr: int
    shape: tuple
    strides: tuple
    dtype: str
    device: int


class SinkPart(NamedTuple):
    """Where a backward with a learnable sink left each CTA's sum_i P_sink,i sum_j P_ij dP_ij
    (kernels_cu/common/softmax.cuh SinkDot): owner[offset : offset + prod(shape)] viewed as
    shape = (batch, nheads, key blocks); cuflash.api.dsink turns it into dsink."""

    owner: object
    offset: int
    shape: tuple


#: alloc(shape, dtype name) -> (owner, Ref): scratch from the caller's framework, so it
#: counts in that framework's memory stats and works under its CUDA-graph capture. The
#: owner object keeps the memory alive; frees are stream-ordered in CuPy, torch and XLA.
Alloc = Callable[[tuple, str], tuple]


def swizzled_pitch(dtype: str, head_dim: int) -> int:
    """Row pitch in elements of the portable kernels' streamed tiles (fwd.cu K and V, bwd.cu Q and
    dO, decode.cu's K/V ring): swizzled rows of D for 16-bit inputs with D % 64 == 0
    (kernels_cu/common/copy.cuh chunk_offset), else padded by 16 bytes."""
    e = DTYPE_BYTES[dtype]
    return head_dim if e == 2 and head_dim % 64 == 0 else head_dim + 16 // e


@functools.lru_cache(maxsize=None)
def fwd_smem_bytes(spec: FwdSpec | FwdSm90Spec) -> int:
    """Dynamic shared memory of the forward.

    kernels_cu/fwd.cu: Q (Br rows, pitch D + 16 bytes) + K + V (Bc rows each, swizzled_pitch).
    kernels_cu/fwd_sm90.cu: Q (Br rows) + two stages of K and V (Bc rows each),
    swizzled rows of D, plus 1 KB so the kernel can align the tiles to 1024 bytes.
    kernels_cu/fwd_sm90_ws.cu: spec.q_buffers Q buffers, t.stages stages of K and V, and its
    mbarriers (FwdSm90Spec.ws_smem_bytes).
    """
    t = spec.tiles
    if isinstance(spec, FwdSm90Spec):
        if not t.stages:
            return (t.block_m + 4 * t.block_n) * spec.head_dim * 2 + 1024
        return spec.ws_smem_bytes(spec.q_buffers)
    e, d = DTYPE_BYTES[spec.dtype], spec.head_dim
    return (t.block_m * (d + 16 // e) + 2 * t.block_n * swizzled_pitch(spec.dtype, d)) * e


def dynamic_smem_bytes(spec) -> int:
    """The dynamic shared memory a spec's launches use (0 for the helper kernels)."""
    if isinstance(spec, (FwdSpec, FwdSm90Spec)):
        return fwd_smem_bytes(spec)
    if isinstance(spec, (BwdSpec, BwdSm90Spec)):
        return bwd_smem_bytes(spec)
    if isinstance(spec, DecodeSpec):
        return decode_smem_bytes(spec)
    return 0


def fwd_grid(spec: FwdSpec | FwdSm90Spec, batch: int, nheads: int, seqlen_q: int, device: int) -> tuple[int, int, int]:
    """One CTA per (query block, head, batch); blockIdx.x fastest so CTAs of one head share K/V in L2.
    The warp-specialised Hopper kernel numbers the same tiles along x alone (fwd_sm90_ws.cu tile_at):
    one CTA per tile, or on a persistent grid (spec.persistent) one per SM, each walking every
    gridDim.x-th work unit (a tile, or under spec.paired a pair of tiles). Varlen (seqlen_q the
    longest sequence): the persistent grid walks a list of the sequences' own tiles, at most as
    many units as a dense batch of the longest, where spec.lists_tiles; other batches take one CTA
    per tile."""
    m_blocks = -(-seqlen_q // spec.tiles.block_m)
    if not (isinstance(spec, FwdSm90Spec) and spec.tiles.stages):
        return (m_blocks, nheads, batch)
    tiles = m_blocks * nheads * batch
    if not spec.persistent or (spec.features.varlen and not spec.lists_tiles(batch, seqlen_q)):
        return (tiles, 1, 1)
    units = (m_blocks + 1) // 2 * nheads * batch if spec.paired else tiles  # fwd_sm90_ws.cu grid_units
    return (min(units, sm_resources(device)[0]), 1, 1)


@functools.lru_cache(maxsize=None)
def sm_resources(device: int) -> tuple[int, int]:
    """(SM count, shared memory per SM in bytes) of a device."""
    import cupy
    attributes = cupy.cuda.Device(device).attributes
    return int(attributes["MultiProcessorCount"]), int(attributes["MaxSharedMemoryPerMultiprocessor"])


# ---------------------------------------------------------------- backward


@functools.lru_cache(maxsize=None)
def bwd_smem_bytes(spec: BwdSpec | BwdSm90Spec) -> int:
    """Dynamic shared memory of the backward's main kernel.

    kernels_cu/bwd.cu: L2 and D (fp32, two buffers of Br), K and V (Bc rows, pitch D + 16
    bytes), Q and dO (two buffers of Br rows each, swizzled_pitch); dS^T (Bc rows, pitch
    Br + 16 bytes) and P^T unless it stays in registers (in the input dtype).
    kernels_cu/bwd_sm90.cu: K, V (Bc rows), Q, dO (two buffers of Br rows), swizzled
    rows of D; dS^T (Bc x Br, 16-bit; with split_d also P^T); L2 and D (two
    buffers of Br); two mbarriers (16 bytes); 1 KB alignment slack.
    kernels_cu/bwd_sm90_ws.cu: K, V, and t.stages slots of Q, dO, L2 and D; two
    dS^T buffers and one fp32 dQ buffer (Br x (D + pad)), or with ping-pong four and two; the
    sink sums of the 256 consumer threads; the dQ turns (8 bytes); its mbarriers (1 + 2
    per dQ buffer + 2 per stage, 8 bytes each); a staged bias's tiles (Br x Bc, 16-bit) and
    their 2 mbarriers each (BwdSm90Spec.bias_stages); the slack.
    All: with a learnable sink, one fp32 running sum per computing thread (softmax.cuh sink_log2).
    """
    t = spec.tiles
    stages = getattr(t, "stages", 0)
    # a running dsink sum per computing thread (the warp-specialised kernel's producer has none)
    sink_parts = 4 * (spec.threads - (128 if stages else 0)) if spec.features.sink else 0
    if isinstance(spec, BwdSm90Spec) and stages:
        ds_buffers, dq_buffers = t.buffers
        tiles = 2 * (2 * t.block_n + 2 * stages * t.block_m) * spec.head_dim + ds_buffers * 2 * t.block_n * t.block_m
        dq = dq_buffers * 4 * t.block_m * (spec.head_dim + spec.dq_accum_pad)
        bias = spec.bias_stages * (2 * t.block_m * t.block_n + 16)  # staged bias tiles and their two mbarriers
        return tiles + dq + 8 * stages * t.block_m + sink_parts + 8 + 8 * (1 + 2 * dq_buffers + 2 * stages) + bias + 1024
    if isinstance(spec, BwdSm90Spec):
        exchange = (2 if t.split_d else 1) * 2 * t.block_n * t.block_m
        return 2 * (2 * t.block_n + 4 * t.block_m) * spec.head_dim + exchange + 16 * t.block_m + sink_parts + 16 + 1024
    e = DTYPE_BYTES[spec.dtype]
    pitch, pitch_t = spec.head_dim + 16 // e, t.block_m + 16 // e
    q_pitch = swizzled_pitch(spec.dtype, spec.head_dim)
    transposed = 1 if t.p_in_regs else 2
    return (4 * 4 * t.block_m + e * (2 * t.block_n * pitch + 4 * t.block_m * q_pitch)
            + transposed * e * t.block_n * pitch_t + sink_parts)


def bwd_m_blocks(spec: BwdSpec | BwdSm90Spec, seqlen_q: int) -> int:
    """Query blocks of Br rows; lse_log2 and delta are padded to m_blocks * Br rows."""
    return -(-seqlen_q // spec.tiles.block_m)


def bwd_grid(spec: BwdSpec | BwdSm90Spec, batch: int, nheads: int, seqlen_k: int) -> tuple[int, int, int]:
    """One CTA per (key block, query head, batch). blockIdx.x (the key block) is
    fastest: the deterministic mode relies on CTAs of one (head, batch) being
    dispatched in key-block order, and under a causal mask the low key blocks
    (seen by the most queries) start first."""
    return (-(-seqlen_k // spec.tiles.block_n), nheads, batch)


def bwd_prepare_grid(spec: BwdPrepareSpec, batch: int, nheads: int, seqlen_q_rounded: int) -> tuple[int, int, int]:
    """One CTA per (rows_per_cta rows of the padded query range, head, batch)."""
    return (-(-seqlen_q_rounded // spec.rows_per_cta), nheads, batch)


def bwd_convert_grid(spec: BwdConvertSpec, batch: int, seqlen: int, nheads: int, head_dim: int) -> tuple[int, int, int]:
    """One thread per 8 columns of one (row, head) of the output; blockIdx.y is the batch."""
    chunks = seqlen * nheads * (head_dim // 8)
    return (-(-chunks // spec.threads), batch, 1)



# ---------------------------------------------------------------- launching


@functools.lru_cache(maxsize=None)
def _driver():
    from cupy_backends.cuda.api import driver

    return driver


_thread = threading.local()


def _make_context_current(device: int | None) -> None:
    """A thread's first launch: make the primary context of `device` (None: the current device)
    current. In a thread that never used CUDA (torch runs a backward in its autograd threads)
    cudaGetDevice answers 0 while no context is current, so the front ends' check that the device
    is current passes and the driver's launch fails with CUDA_ERROR_INVALID_CONTEXT;
    cudaSetDevice makes the primary context current. Once per thread: the context stays current
    there (a later device switch goes through cudaSetDevice too)."""
    from cupy_backends.cuda.api import runtime

    runtime.setDevice(runtime.getDevice() if device is None else device)
    _thread.context = True


def run(spec, device: int, grid, block, smem: int, packer: params.Packer, fields: dict, stream: int,
        maps: dict | None = None) -> None:
    """Pack `fields` into the spec's params struct and launch its kernel (from the compile
    cache, allowed `smem` bytes of dynamic shared memory) on `stream`; inside record(), note the
    launch in the plan instead. maps: {tensor-map field: (tma.TensorMap, address)}, encoded into
    the struct after the fields (a plan encodes them again with each call's addresses)."""
    fn = get_pointer(spec, device, smem)
    steps = getattr(_recording, "steps", None)
    if steps is not None:
        map_slots = tuple((name, m, *_placeholder_slot(ptr)) for name, (m, ptr) in (maps or {}).items())
        steps.append(_Step(fn, grid, block, smem, packer, *packer.template(fields, _placeholder_slot), map_slots))
        return
    if not getattr(_thread, "context", False):
        _make_context_current(device)
    argv = packer.pack(fields)
    if maps:
        for name, (m, ptr) in maps.items():
            packer.put_map(name, tma.encode(m, ptr))
    _driver().launchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem, stream, argv, 0)


# ---------------------------------------------------------------- launch plans (DESIGN 4c)
#
# A call's launches are fixed by what its arrays look like (shapes, strides, dtypes, device)
# and its options; only the pointers change from call to call. record() runs a launch function
# once with placeholder pointers and keeps what run() would have launched: kernel handles,
# geometry and each params struct packed, with the places where pointers go. Plan.replay then
# costs a copy of each struct, a store per pointer and the launches: no validation, spec
# selection or field dicts on a repeated call. The front ends key their plans by everything
# that determines them (api.py: launch plans of repeated calls).

#: Placeholder pointer of argument slot i: (i + 1) << 52 plus a byte offset below 2^52. Device
#: addresses lie below 2^48 (the unified virtual address space), so no real pointer looks like one.
_SLOT_SHIFT = 52
_recording = threading.local()


def placeholder(slot: int) -> int:
    """The placeholder pointer of argument `slot` in record()."""
    return (slot + 1) << _SLOT_SHIFT


def _placeholder_slot(value: int) -> tuple[int, int] | None:
    """(slot, byte offset) of a placeholder pointer; None for 0 (null). A real pointer inside a
    recording is an error: the plan would replay it for every later call."""
    if not value:
        return None
    slot = (value >> _SLOT_SHIFT) - 1
    if slot < 0:
        raise AssertionError(f"a real pointer ({value:#x}) reached a recorded launch; give it a plan slot")
    return slot, value & ((1 << _SLOT_SHIFT) - 1)


_POINTER = struct.Struct("<Q")


class _Step(NamedTuple):
    fn: int
    grid: tuple
    block: tuple
    smem: int
    packer: params.Packer
    template: bytes  # the packed params with 0 where pointers go
    slots: tuple  # (byte offset in the struct, argument slot, byte offset added to its pointer)
    maps: tuple  # (tensor-map field, tma.TensorMap, argument slot, byte offset added to its pointer)


class Plan(NamedTuple):
    """The launches of one kind of call (record()); allocations: (shape, dtype name) of each
    scratch array the call takes, in order: the caller allocates them and passes their pointers
    in the slots after the arguments'."""

    steps: tuple
    allocations: tuple

    def replay(self, pointers: tuple, stream: int) -> None:
        """Launch every step on `stream` with `pointers` in the slots (the device current)."""
        if not getattr(_thread, "context", False):
            _make_context_current(None)
        launch_kernel = _driver().launchKernel
        for fn, grid, block, smem, packer, template, slots, maps in self.steps:
            buf, argv = packer.buffers()
            buf[:] = template
            for at, slot, offset in slots:
                _POINTER.pack_into(buf, at, pointers[slot] + offset)
            for name, m, slot, offset in maps:
                packer.put_map(name, tma.encode(m, pointers[slot] + offset))
            launch_kernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem, stream, argv, 0)


def record(launches: Callable[[Alloc], object], first_scratch_slot: int, device: int) -> Plan:
    """The Plan of `launches(alloc)`, a call of the launch functions below made with Refs whose
    pointers are placeholder(slot). The i-th array it takes from `alloc` (on `device`) lies at
    placeholder(first_scratch_slot + i)."""
    allocations = []

    def alloc(shape, dtype):
        shape = tuple(shape)
        ref = Ref(placeholder(first_scratch_slot + len(allocations)), shape, _contiguous(shape)[0], dtype, device)
        allocations.append((shape, dtype))
        return None, ref

    _recording.steps = steps = []
    try:
        launches(alloc)
    finally:
        del _recording.steps
    return Plan(tuple(steps), tuple(allocations))


def strides_named(prefix: str, x: Ref) -> dict:
    """{prefix_batch_stride, prefix_row_stride, prefix_head_stride} of a (batch, seqlen, heads, dim) array."""
    b, r, h = x.strides[:3]
    return {f"{prefix}_batch_stride": b, f"{prefix}_row_stride": r, f"{prefix}_head_stride": h}


def attention_fields(spec, q: Ref, k: Ref, v: Ref, option_fields: dict) -> dict:
    """The params head (CUFLASH_ATTENTION_FIELDS) of validated q, k, v and the options' run-time
    fields, for `spec`: where it folds a softcap (AttentionSpec.softcap_folded) the exp2 multiply
    takes softcap_out too."""
    batch, seqlen_q, nheads, head_dim = q.shape
    qs, ks, vs = q.strides, k.strides, v.strides
    folded = {"scale_log2": option_fields["scale_log2"] * option_fields["softcap_out"]} if spec.softcap_folded else {}
    return {
        "q": q.ptr, "k": k.ptr, "v": v.ptr,
        "q_batch_stride": qs[0], "q_row_stride": qs[1], "q_head_stride": qs[2],
        "k_batch_stride": ks[0], "k_row_stride": ks[1], "k_head_stride": ks[2],
        "v_batch_stride": vs[0], "v_row_stride": vs[1], "v_head_stride": vs[2],
        "batch": batch, "nheads": nheads, "nheads_kv": k.shape[2],
        "seqlen_q": seqlen_q, "seqlen_k": k.shape[1], "head_dim": head_dim,
        **option_fields, **folded,
    }


def forward(spec, q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref | None, option_fields: dict, stream: int) -> None:
    """The forward (a FwdSpec or FwdSm90Spec: both read FwdParams) into out and, unless None,
    lse (batch, nheads, seqlen_q) float32 contiguous."""
    batch, seqlen_q, nheads, _ = q.shape
    os_ = out.strides
    fields = attention_fields(spec, q, k, v, option_fields)
    fields["o"], fields["lse"] = out.ptr, 0 if lse is None else lse.ptr
    fields["o_batch_stride"], fields["o_row_stride"], fields["o_head_stride"] = os_[0], os_[1], os_[2]
    maps = fwd_tensor_maps(spec, q, k, v, out, option_fields)
    fields["tma"] = (1 if maps else 0) | (2 if "tma_bias" in maps else 0)  # params.cuh FwdParams tma
    run(spec, q.device, fwd_grid(spec, batch, nheads, seqlen_q, q.device), (spec.threads, 1, 1), fwd_smem_bytes(spec),
        params.FWD, fields, stream, maps)


def fwd_tensor_maps(spec, q: Ref, k: Ref, v: Ref, out: Ref, option_fields: dict) -> dict:
    """{tma_q, tma_k, tma_v, tma_o: (map, address)} for the warp-specialised Hopper forward's TMA
    loads and O stores (kernels_cu/fwd_sm90_ws.cu), or {} where it copies with cp.async and stores
    16-byte chunks: another kernel, a call of little work (tma.MIN_FLOP), arrays TMA cannot address
    (tma.tile_map), no encoder in the driver, or CUFLASH_TMA=0. Varlen (q, k, v with batch stride
    0, total_q / total_k in option_fields): the maps of q, k, v span every sequence's rows as one
    batch, and O leaves by 16-byte stores (no tma_o). A dense call's bias with query rows (not a
    per-key one) adds tma_bias where TMA can address it (_bias_map); else the kernel copies it."""
    if not (isinstance(spec, FwdSm90Spec) and spec.tiles.stages):
        return {}
    batch, seqlen_q, nheads, _ = q.shape
    totals = (option_fields["total_q"], option_fields["total_k"]) if spec.features.varlen else None
    if not _tma_pays(q, k, totals):
        return {}
    if totals:  # rows of all sequences, one batch (the kernel starts at each sequence's first)
        q, k, v = _one_batch(q, totals[0]), _one_batch(k, totals[1]), _one_batch(v, totals[1])
    t = spec.tiles
    arrays = [("tma_q", q, t.block_m), ("tma_k", k, t.block_n), ("tma_v", v, t.block_n)]
    if not spec.features.varlen:  # O leaves in boxes of one consumer warpgroup's 64 rows (dense only)
        arrays.append(("tma_o", out, 64))
    maps = _tensor_maps(arrays, tma.atom_columns(spec.head_dim))
    if maps and spec.features.bias and not spec.features.varlen and option_fields["bias_row_stride"]:
        bias = _bias_map(option_fields, batch, nheads, seqlen_q, k.shape[1], t.block_m)
        if bias is not None:
            maps["tma_bias"] = bias
    return maps


def _tma_pays(q: Ref, k: Ref, totals: tuple | None) -> bool:
    """Whether a call has the work for TMA (tma.MIN_FLOP; varlen: totals = (total_q, total_k), the
    (query, key) pairs exact for equal lengths) and TMA is on and encodable here."""
    batch, seqlen_q, nheads, head_dim = q.shape
    pairs = totals[0] * totals[1] // max(batch, 1) if totals else batch * seqlen_q * k.shape[1]
    return 4 * nheads * pairs * head_dim >= tma.MIN_FLOP and env.tma_enabled() and tma.available()


def _one_batch(x: Ref, rows: int) -> Ref:
    """A varlen array (batch stride 0) seen as one batch of all `rows` rows: what its tensor map spans."""
    return x._replace(shape=(1, rows, *x.shape[2:]))


def _bias_map(option_fields: dict, batch: int, nheads: int, seqlen_q: int, seqlen_k: int, rows: int):
    """(map, address) of a dense 16-bit bias for the forward's tiles of `rows` queries x 64 keys
    (kernels_cu/common/bias_tile.cuh load), the bias seen as a (batch, seqlen_q, heads, seqlen_k)
    array whose broadcast dims (stride 0) have one entry (the kernel asks for index 0 there); or
    None where TMA cannot address it."""
    bs, hs, rs = (option_fields[f"bias_{n}_stride"] for n in ("batch", "head", "row"))
    shape = (batch if bs else 1, seqlen_q, nheads if hs else 1, seqlen_k)
    m = tma.tile_map(shape, (bs, rs, hs, 1), option_fields["bias"], rows, 64)
    return None if m is None else (m, option_fields["bias"])


def bwd_tensor_maps(spec, q: Ref, k: Ref, v: Ref, dout: Ref, totals: tuple | None = None) -> dict:
    """{tma_q, tma_k, tma_v, tma_do: (map, address)} for the Hopper backwards' TMA loads
    (kernels_cu/bwd_sm90_ws.cu, bwd_sm90.cu), or {} where they copy with cp.async, for the reasons
    of fwd_tensor_maps. Varlen (q, k, v, dout with batch stride 0; totals = (total_q, total_k)):
    bwd_sm90_ws.cu only, the maps spanning every sequence's rows as one batch, as the forward's."""
    if not _takes_tensor_maps(spec) or (spec.features.varlen and not spec.tiles.stages):
        return {}
    if not _tma_pays(q, k, totals if spec.features.varlen else None):
        return {}
    if spec.features.varlen:  # rows of all sequences, one batch, as fwd_tensor_maps
        total_q, total_k = totals
        q, dout = _one_batch(q, total_q), _one_batch(dout, total_q)
        k, v = _one_batch(k, total_k), _one_batch(v, total_k)
    t = spec.tiles
    return _tensor_maps((("tma_q", q, t.block_m), ("tma_k", k, t.block_n), ("tma_v", v, t.block_n),
                         ("tma_do", dout, t.block_m)), spec.swizzle_atom)


def _takes_tensor_maps(spec) -> bool:
    """Whether the backward kernel's parameter is params.cuh BwdTmaParams (the Hopper backwards,
    bwd_sm90_ws.cu and bwd_sm90.cu) rather than BwdParams (the portable one)."""
    return isinstance(spec, BwdSm90Spec)


def _tensor_maps(arrays, atom: int) -> dict:
    """{field: (map, address)} of (field, array, box rows) with boxes of `atom` columns; {} when TMA
    cannot address one of them."""
    maps = {}
    for name, x, rows in arrays:
        m = tma.tile_map(x.shape, x.strides, x.ptr, rows, atom)
        if m is None:
            return {}
        maps[name] = (m, x.ptr)
    return maps


_prepare_spec = functools.lru_cache(maxsize=None)(BwdPrepareSpec)
_convert_spec = functools.lru_cache(maxsize=None)(BwdConvertSpec)


def _contiguous(shape: tuple) -> tuple[tuple, int]:
    """(row-major strides in elements, element count) of a shape."""
    strides, size = [], 1
    for n in reversed(shape):
        strides.append(size)
        size *= n
    return tuple(reversed(strides)), size


def _scratch(alloc: Alloc, sizes: dict) -> tuple:
    """One float32 scratch buffer from `alloc`, split into named contiguous pieces for
    {name: (shape, dtype)}, each starting on a 256-byte boundary. Returns (owner, {name: Ref},
    {name: offset in 4-byte words})."""
    layout, total = {}, 0
    for name, (shape, dtype) in sizes.items():
        strides, size = _contiguous(shape)
        layout[name] = (total, shape, strides, dtype)
        total += -(-size // 64) * 64
    owner, base = alloc((total,), "float32")
    refs = {name: Ref(base.ptr + 4 * offset, shape, strides, dtype, base.device)
            for name, (offset, shape, strides, dtype) in layout.items()}
    return owner, refs, {name: entry[0] for name, entry in layout.items()}


def clear(x: Ref, stream: int) -> None:
    """Zero a contiguous float32 or int32 scratch array on `stream` (cudaMemsetAsync). Not recordable: only the
    varlen backward clears, and no launch plan holds a varlen call."""
    if getattr(_recording, "steps", None) is not None:
        raise RuntimeError("cuflash internal error: a launch plan cannot hold a cleared buffer")
    if not getattr(_thread, "context", False):
        _make_context_current(x.device)
    from cupy_backends.cuda.api import runtime

    runtime.memsetAsync(x.ptr, 0, 4 * _contiguous(x.shape)[1], stream)


def backward(spec, dout: Ref, q: Ref, k: Ref, v: Ref, out: Ref, lse: Ref, dq: Ref, dk: Ref, dv: Ref,
             option_fields: dict, dlse: Ref | None, alloc: Alloc, stream: int, sequences: dict | None = None,
             dbias_fields: dict | None = None):
    """The backward: prepare, main kernel, conversions. With a learnable sink (the spec's sink
    switch) returns a SinkPart: where the kernel's parts of dsink lie in the scratch buffer (a 1-D
    float32 array of the caller's framework); else None.

    Varlen (`sequences`: cu_seqlens_q, cu_seqlens_k, seqused_k pointers, total_q, total_k): q, k,
    v, dout, out, dq, dk, dv come as (batch, longest sequence, heads, dim) views with batch stride
    0, lse and dlse as (nheads, total_q); the fp32 accumulators then hold total_q / total_k rows.
    dbias_fields: the main kernel's dbias pointer, strides and mode (api.dbias_buffer), into a
    zeroed buffer the caller owns; None: no bias gradient.

    Scratch (one fp32 allocation from `alloc`; nothing grows with seqlen_q * seqlen_k):
      lse_log2, delta (batch, nheads, seqlen_q rounded up to Br), dq_accum ((batch, nheads, seqlen_q
      rounded, D + pad), varlen (nheads, total_q + Br, D + pad), pad = spec.dq_accum_pad),
      deterministic: int32 turn counters (batch, nheads, seqlen_q / Br); with a sink dsink_part
      (batch, nheads, key blocks); under GQA dk_accum, dv_accum
      (batch, seqlen_k, nheads, headdim): dK, dV per query head, summed over each group by the convert
      kernel in a fixed order; with seqused_k these are cleared first (the main kernel leaves the
      rows of each sequence's unused keys alone, and the group sum reads every row).
    """
    batch, seqlen_q, nheads, head_dim = q.shape
    _, seqlen_k, nheads_kv, _ = k.shape
    group = nheads // nheads_kv
    device = q.device
    m_blocks = bwd_m_blocks(spec, seqlen_q)
    rounded = m_blocks * spec.tiles.block_m
    varlen = sequences is not None
    # The accumulators: per (batch, row) dense; one "batch" of total rows for a varlen batch.
    acc_batch = 1 if varlen else batch
    acc_q = sequences["total_q"] if varlen else seqlen_q
    acc_k = sequences["total_k"] if varlen else seqlen_k

    # Every backward adds whole blocks of dQ, Br rows by D columns (the Hopper ones with one bulk
    # copy, the portable one with no bounds test): dq_accum is (batch, head, rounded rows, D + pad),
    # or (1, head, total_q + Br, D + pad) for varlen (a sequence's last block reaches into the next
    # one's rows, or past the last row by < Br, adding exact zeros there), seen below as (batch,
    # rows, head, D) by strides; the pad columns are never read.
    blocked_rows = acc_q + spec.tiles.block_m if varlen else rounded
    dq_shape = (acc_batch, nheads, blocked_rows, spec.head_dim + spec.dq_accum_pad)
    sizes = {"lse_log2": ((batch, nheads, rounded), "float32"), "delta": ((batch, nheads, rounded), "float32"),
             "dq_accum": (dq_shape, "float32")}
    if spec.deterministic:
        sizes["semaphore"] = ((batch, nheads, m_blocks), "int32")
    grid = bwd_grid(spec, batch, nheads, seqlen_k)  # (key blocks, heads, batch)
    if spec.features.sink:
        sizes["dsink_part"] = ((batch, nheads, grid[0]), "float32")
    if group > 1 and seqlen_k:
        sizes["dk_accum"] = ((acc_batch, acc_k, nheads, head_dim), "float32")
        sizes["dv_accum"] = ((acc_batch, acc_k, nheads, head_dim), "float32")
    owner, s, offsets = _scratch(alloc, sizes)
    lse_log2, delta, dq_accum, semaphore = s["lse_log2"], s["delta"], s["dq_accum"], s.get("semaphore")
    b_stride, h_stride, r_stride, _ = dq_accum.strides
    dq_accum = dq_accum._replace(shape=(acc_batch, blocked_rows, nheads, spec.head_dim),
                                 strides=(b_stride, r_stride, h_stride, 1))
    seq_fields = {}
    if varlen:  # sequences index the accumulators by row: batch stride 0
        seq_fields = {key: sequences[key] for key in ("cu_seqlens_q", "cu_seqlens_k", "seqused_k", "total_q",
                                                     "total_k")}
        dq_accum = _batchless(dq_accum)
    # lse / dlse strides as (batch, head, row): varlen ones are (nheads, total_q)
    lse_strides = (0, *lse.strides) if varlen else lse.strides

    if rounded:
        prep = _prepare_spec(spec.dtype, varlen)
        fields = {
            "o": out.ptr, "dout": dout.ptr, "lse": lse.ptr, "lse_log2": lse_log2.ptr,
            "delta": delta.ptr, "dq_accum": dq_accum.ptr, "dq_semaphore": 0 if semaphore is None else semaphore.ptr,
            **strides_named("o", out), **strides_named("do", dout), **strides_named("dqa", dq_accum),
            "lse_batch_stride": lse_strides[0], "lse_head_stride": lse_strides[1], "lse_row_stride": lse_strides[2],
            "batch": batch, "nheads": nheads, "seqlen_q": seqlen_q, "seqlen_q_rounded": rounded,
            "head_dim": head_dim, "dq_accum_cols": spec.head_dim, "block_m": spec.tiles.block_m, "m_blocks": m_blocks,
            **seq_fields,
        }
        if dlse is not None:
            fields["dlse"] = dlse.ptr
            fields["dlse_batch_stride"], fields["dlse_head_stride"], fields["dlse_row_stride"] = (
                (0, *dlse.strides) if varlen else dlse.strides)
        run(prep, device, bwd_prepare_grid(prep, batch, nheads, rounded), (prep.threads, 1, 1), 0,
            params.BWD_PREPARE, fields, stream)

    if seqlen_k:
        fields = {
            **attention_fields(spec, q, k, v, option_fields),
            "dout": dout.ptr, "lse_log2": lse_log2.ptr, "delta": delta.ptr,
            "dq_accum": dq_accum.ptr, "dk": dk.ptr, "dv": dv.ptr,
            "dq_semaphore": 0 if semaphore is None else semaphore.ptr,
            **strides_named("do", dout), **strides_named("dqa", dq_accum),
            **strides_named("dk", dk), **strides_named("dv", dv),
            "seqlen_q_rounded": rounded, "m_blocks": m_blocks,
            "dsink_part": s["dsink_part"].ptr if spec.features.sink else 0,
            **seq_fields,
            **(dbias_fields or {}),
        }
        if group > 1:
            dk_accum, dv_accum = s["dk_accum"], s["dv_accum"]
            if varlen and sequences["seqused_k"]:
                clear(dk_accum, stream)
                clear(dv_accum, stream)
            fields.update({"dk_accum": dk_accum.ptr, "dv_accum": dv_accum.ptr,
                           **strides_named("dka", _batchless(dk_accum) if varlen else dk_accum)})
        packer, maps = params.BWD, {}
        if _takes_tensor_maps(spec):
            packer, maps = params.BWD_TMA, bwd_tensor_maps(spec, q, k, v, dout, (acc_q, acc_k) if varlen else None)
            fields["tma"] = int(bool(maps))
        run(spec, device, grid, (spec.threads, 1, 1), bwd_smem_bytes(spec), packer, fields, stream, maps)
        if group > 1:
            convert(dk_accum, _rows(dk, acc_batch, acc_k), group, spec.dtype, stream)
            convert(dv_accum, _rows(dv, acc_batch, acc_k), group, spec.dtype, stream)

    if seqlen_q:
        convert(_rows(dq_accum, acc_batch, acc_q), _rows(dq, acc_batch, acc_q), 1, spec.dtype, stream,
                swizzled=spec.swizzled_dq_accum)
    return SinkPart(owner, offsets["dsink_part"], (batch, nheads, grid[0])) if spec.features.sink else None


def _batchless(x: Ref) -> Ref:
    """x with batch stride 0: every sequence of a varlen batch finds its rows by cu_seqlens."""
    return x._replace(strides=(0, *x.strides[1:]))


def _rows(x: Ref, batch: int, rows: int) -> Ref:
    """x as (batch, rows, heads, dim), for the convert kernel (varlen: one batch of all rows)."""
    return x._replace(shape=(batch, rows, *x.shape[2:]))


def convert(src: Ref, dst: Ref, group: int, dtype: str, stream: int, swizzled: bool = False) -> None:
    """dst[b, s, h, :d] = sum_j src[b, s, h * group + j, :d] in dst's dtype (kernels_cu/bwd_convert.cu);
    swizzled: src row s holds its 8-column group c at c ^ 8 (s % 8) (the warp-specialised
    Hopper backward's dq_accum)."""
    batch, seqlen, nheads, head_dim = dst.shape
    spec = _convert_spec(dtype)
    fields = {
        "src": src.ptr, "dst": dst.ptr,
        "src_batch_stride": src.strides[0], "src_row_stride": src.strides[1], "src_head_stride": src.strides[2],
        "dst_batch_stride": dst.strides[0], "dst_row_stride": dst.strides[1], "dst_head_stride": dst.strides[2],
        "batch": batch, "seqlen": seqlen, "nheads": nheads, "group": group, "head_dim": head_dim,
        "src_swizzled": int(swizzled),
    }
    run(spec, dst.device, bwd_convert_grid(spec, batch, seqlen, nheads, head_dim), (spec.threads, 1, 1), 0,
        params.BWD_CONVERT, fields, stream)


# ---------------------------------------------------------------- KV cache


_append_spec = functools.lru_cache(maxsize=None)(KvAppendSpec)


class CacheMap(NamedTuple):
    """Where a KV cache's keys live (kernels_cu/common/kvcache.cuh): block_table (batch,
    max_pages) int32 or None (contiguous), page_size (paged), cache_batch_idx (batch,) int32 or
    None, num_pages = the cache's first dim (pages, or cache rows), cache_leftpad (batch,) int32
    (each row's first key) or None."""

    block_table: Ref | None
    page_size: int
    cache_batch_idx: Ref | None
    num_pages: int
    cache_leftpad: Ref | None = None

    def fields(self) -> dict:
        bt = self.block_table
        return {"block_table": 0 if bt is None else bt.ptr,
                "block_table_batch_stride": 0 if bt is None else bt.strides[0],
                "page_size": self.page_size, "num_pages": self.num_pages,
                "cache_batch_idx": 0 if self.cache_batch_idx is None else self.cache_batch_idx.ptr,
                "cache_leftpad": 0 if self.cache_leftpad is None else self.cache_leftpad.ptr}


class Rotary(NamedTuple):
    """Rotary embedding in the append (kernels_cu/common/rotary.cuh): cos, sin (seqlen_ro,
    rotary_dim / 2) contiguous in the cache's dtype; interleaved: GPT-J pairs, else GPT-NeoX;
    q_positions_step 1 puts query i at the row's length + i (causal, local), 0 every query at the
    length; q_rot: where rotated q goes ((batch, seqlen_q, nheads, d) contiguous)."""

    cos: Ref
    sin: Ref
    interleaved: bool
    q_positions_step: int
    q_rot: Ref

    def fields(self, q: Ref) -> dict:
        return {"q": q.ptr, "q_rot": self.q_rot.ptr, "rotary_cos": self.cos.ptr, "rotary_sin": self.sin.ptr,
                **strides_named("q", q), "seqlen_q": q.shape[1], "nheads": q.shape[2],
                "seqlen_ro": self.cos.shape[0], "rotary_dim": 2 * self.cos.shape[1],
                "rotary_interleaved": int(self.interleaved), "q_positions_step": self.q_positions_step}


def kvcache_append(k: Ref, v: Ref, k_cache: Ref, v_cache: Ref, cache_seqlens: Ref, seqused: Ref, seqlen_cache: int,
                   cache_map: CacheMap, dtype: str, stream: int, q: Ref | None = None,
                   rotary: Rotary | None = None) -> None:
    """k, v (batch, seqlen_new, nheads_kv, d) into the caches at key cache_seqlens[b] of each
    batch row (cache_map says where that key lives), and seqused[b] = min(cache_seqlens[b] +
    seqlen_new, seqlen_cache) (kernels_cu/kvcache_append.cu; int32 (batch,) both). seqlen_cache:
    the keys one batch row can hold. With `rotary`, the new keys are rotated on their way in and
    q (batch, seqlen_q, nheads, d) is rotated into rotary.q_rot, in the same launch."""
    batch, seqlen_new, nheads_kv, head_dim = k.shape
    spec = _append_spec(dtype)
    fields = {
        "k": k.ptr, "v": v.ptr, "k_cache": k_cache.ptr, "v_cache": v_cache.ptr,
        "cache_seqlens": cache_seqlens.ptr, "seqused": seqused.ptr,
        **strides_named("k", k), **strides_named("v", v), **strides_named("kc", k_cache),
        **strides_named("vc", v_cache),
        "seqlen_new": seqlen_new, "seqlen_cache": seqlen_cache, "nheads_kv": nheads_kv, "head_dim": head_dim,
        **cache_map.fields(),
    }
    chunks = seqlen_new * nheads_kv * head_dim // 8
    if rotary is not None:
        fields.update(rotary.fields(q))
        chunks += q.shape[1] * q.shape[2] * head_dim // 8
    grid = (max(1, -(-chunks // spec.threads)), batch, 1)
    run(spec, k.device, grid, (spec.threads, 1, 1), 0, params.KV_APPEND, fields, stream)


# ---------------------------------------------------------------- split-KV decode

#: Folded query rows (query x head of a GQA group) per decode CTA (BM in kernels_cu/decode.cu).
DECODE_ROWS = 16


@functools.lru_cache(maxsize=None)
def decode_smem_bytes(spec: DecodeSpec) -> int:
    """kernels_cu/decode.cu: Q (16 rows, pitch D + 8) and per warp `stages` K and V blocks
    (swizzled_pitch); reused after the main loop for the warps' fp32 parts (16 rows of D + 1
    and an lse each)."""
    t, d = spec.tiles, spec.head_dim
    loop = (DECODE_ROWS * (d + 8) + t.warps * t.stages * 2 * t.block_n * swizzled_pitch(spec.dtype, d)) * 2
    merge = t.warps * DECODE_ROWS * (spec.head_dim + 1) * 4 + t.warps * DECODE_ROWS * 4
    return max(loop, merge)


def decode_grid(spec: DecodeSpec, batch: int, nheads: int, nheads_kv: int, seqlen_q: int, splits: int):
    """(splits, folded-row blocks, batch * nheads_kv): each CTA one split of one (b, h_kv)'s keys
    for 16 of its seqlen_q * group folded rows. (The kv heads of a batch row fastest instead, so
    that the CTAs reading one cache row's heads run together, measured no faster on the H200.)"""
    rows = seqlen_q * (nheads // nheads_kv)
    return (splits, -(-rows // DECODE_ROWS), batch * nheads_kv)


#: Smallest page size at which a paged decode of many units takes specs.DECODE_TILES_MANY_UNITS
#: (measured: pages of 16 as fast as with 12 warps; pages of 1 at 0.77 of contiguous against 0.90).
DECODE_MANY_UNITS_MIN_PAGE = 16


def decode_units(batch: int, nheads: int, nheads_kv: int, seqlen_q: int) -> int:
    """CTAs per split of decode.cu: per batch row and kv head, blocks of DECODE_ROWS of its
    seqlen_q * group folded query rows."""
    return batch * nheads_kv * -(-seqlen_q * (nheads // nheads_kv) // DECODE_ROWS)


def decode_many_units(batch: int, nheads: int, nheads_kv: int, seqlen_q: int, cache_map: CacheMap,
                      sm_count: int) -> bool:
    """support.Problem.many_units: at least as many CTAs per split as SMs, over a contiguous cache or
    pages of at least DECODE_MANY_UNITS_MIN_PAGE keys (smaller pages' block-table reads want the 12
    warps of the usual tiles)."""
    return (decode_units(batch, nheads, nheads_kv, seqlen_q) >= sm_count
            and (cache_map.block_table is None or cache_map.page_size >= DECODE_MANY_UNITS_MIN_PAGE))


def decode_splits(spec: DecodeSpec, batch: int, nheads: int, nheads_kv: int, seqlen_q: int, seqlen_k: int,
                  sm_count: int, smem_per_sm: int) -> int:
    """decode_split_count for this spec's tiles (memoised there on plain ints: a spec's hash walks
    its nested dataclasses)."""
    t = spec.tiles
    return decode_split_count(decode_units(batch, nheads, nheads_kv, seqlen_q), seqlen_k, t.warps, t.block_n,
                              decode_smem_bytes(spec), sm_count, smem_per_sm)


@functools.lru_cache(maxsize=4096)
def decode_split_count(ctas: int, seqlen_k: int, warps: int, block_n: int, smem: int, sm_count: int,
                       smem_per_sm: int) -> int:
    """num_splits = 0 for `ctas` CTAs per split: the fewest splits that divide the key blocks evenly and whose CTAs keep at
    least 90% of the GPU's CTA slots busy in their last wave, with at least 4 key blocks per warp
    in each split (fewer makes the pipeline's ramp and the merge cost more than they hide); the
    best fill when none qualifies. Slots: 8 warps per SM (one CTA of 8 warps, or two of 4 where
    two fit its shared memory), enough to keep the bytes in flight and to hide a paged cache's
    block-table reads. Measured on the H200 (GQA 32/8, d128): with 4-warp CTAs, 8 x 32k in pages
    of 16, 2 splits (4 warps per SM) 2.93 TB/s, 4 splits 3.72; 1 x 128k contiguous, 15 splits
    3.17, 16 splits 3.54 (even splits)."""
    blocks = -(-seqlen_k // block_n)
    most = max(1, min(256, seqlen_k // (4 * warps * block_n)))
    per_sm = max(1, min(smem_per_sm // (smem + 1024), 8 // warps))
    slots = sm_count * per_sm

    def fill(s):  # share of the slots busy over the waves of ctas * s CTAs
        n = ctas * s
        return n / (-(-n // slots) * slots)

    return next((s for s in range(1, most + 1) if blocks % s == 0 and fill(s) >= 0.9),
                max(range(1, most + 1), key=fill))


#: decode.cu's epochs: a new one per call (its split flags), from a random start below 2^62.
_epochs = itertools.count(int.from_bytes(os.urandom(8), "little") >> 2)


def decode(spec: DecodeSpec, q: Ref, k_cache: Ref, v_cache: Ref, out: Ref, lse: Ref | None, seqlen_k: int,
           seqused: Ref | None, cache_map: CacheMap, option_fields: dict, splits: int, alloc: Alloc,
           stream: int) -> None:
    """q (batch, seqlen_q, nheads, d) over the caches (seqlen_k keys per batch row at most, seqused
    (batch,) int32 of them used, or all) into out and lse: float32 (nheads, batch * seqlen_q), the
    varlen kernels' layout, or None. The keys are split into `splits` parts, which the last split
    of each block of rows to finish merges. Scratch with more than one split: (splits, nheads *
    batch * seqlen_q, D) and (splits, nheads * batch * seqlen_q) fp32 and a uint64 flag per split
    and row block (kernels_cu/decode.cu step 4) from alloc."""
    batch, seqlen_q, nheads, head_dim = q.shape
    fields = attention_fields(spec, q, k_cache, v_cache, option_fields)
    os_ = out.strides
    fields.update(cache_map.fields())
    fields.update(seqlen_k=seqlen_k, o=out.ptr, lse=0 if lse is None else lse.ptr, o_batch_stride=os_[0],
                  o_row_stride=os_[1], o_head_stride=os_[2], seqused_k=0 if seqused is None else seqused.ptr,
                  num_splits=splits, part_cols=spec.head_dim)
    grid = decode_grid(spec, batch, nheads, k_cache.shape[2], seqlen_q, splits)
    owner = None
    if splits > 1:
        rows = batch * nheads * seqlen_q
        owner, s, _ = _scratch(alloc, {"o_part": ((splits, rows, spec.head_dim), "float32"),
                                       "lse_part": ((splits, rows), "float32"),
                                       "split_flags": ((grid[1] * grid[2], splits, 2), "int32")})  # uint64 as 2 words
        fields.update(o_part=s["o_part"].ptr, lse_part=s["lse_part"].ptr, split_flags=s["split_flags"].ptr,
                      epoch=next(_epochs))
    run(spec, q.device, grid, (spec.threads, 1, 1), decode_smem_bytes(spec), params.DECODE, fields, stream)
    del owner  # the scratch's frees are stream-ordered: the kernels above finish first
