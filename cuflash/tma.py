"""TMA tensor maps for the Hopper kernels' loads and the forward's O stores (kernels_cu/fwd_sm90_ws.cu,
bwd_sm90_ws.cu, bwd_sm90.cu).

A tensor map is the 128-byte descriptor that `cp.async.bulk.tensor` reads: a tensor's
address, sizes and strides, and the box one copy moves into shared memory, with the
swizzle wgmma reads. The driver encodes it on the host (cuTensorMapEncodeTiled); it is
reached here through ctypes in the driver library every CUDA program already loads, so
no package is added. The kernel takes the maps in its parameter struct (FwdParams tma_q,
tma_k, tma_v, tma_o): one copy instruction moves a whole box, where cp.async took 16 bytes and
about ten address instructions per copy; the forward's consumers store O through tma_o the same
way (boxes of 64 rows, dense calls).

A (batch, seqlen, heads, d) 16-bit array is mapped as 4 dimensions, innermost first
(d, seqlen, heads, batch), and copied in boxes of (AW columns, rows, 1, 1): AW is the
swizzle atom of copy.cuh SwizzleFor (64 columns, 128-byte rows: SWIZZLE_128B; else 32,
64-byte rows: SWIZZLE_64B), so a box lands exactly as load_tile_swizzled's rows do, and
columns >= d and rows >= seqlen arrive as zeros. TMA needs a 16-byte aligned address
and strides that are positive multiples of 16 bytes below 2^40; arrays it cannot map
(a reversed view, odd strides) take the kernel's cp.async path, as do calls of little work
(MIN_FLOP), a varlen sequence's last partial block, the varlen backward's K and V (one block per CTA)
and its bwd_sm90.cu kernels, and everything when CUFLASH_TMA=0 or the driver has no encoder.
"""
from __future__ import annotations

import ctypes
import functools
import sys
import threading
from typing import NamedTuple

from .params import TENSOR_MAP_BYTES as MAP_BYTES

# cuda.h enums (CUtensorMapDataType, ...Interleave, ...Swizzle, ...L2promotion, ...FloatOOBfill).
_UINT16 = 1
_INTERLEAVE_NONE = 0
_SWIZZLE = {32: 2, 64: 3}  # atom columns (16-bit) -> CU_TENSOR_MAP_SWIZZLE_64B / _128B
_L2_PROMOTION_256B = 3
_OOB_FILL_ZEROS = 0  # CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: out-of-bounds elements read as 0

_MAX_STRIDE = 1 << 40

#: Calls below this many forward FLOPs (4 b h s_q s_k d, ~30 µs of tensor work on an H200) keep
#: cp.async. TMA saves the kernel 1-8% (bench/NOTES.md v17), at most ~2 µs there, while the host pays
#: ~7 µs per map for arrays at new addresses (~0.5 µs at addresses seen before): small calls, whose
#: time is the host's, would lose.
MIN_FLOP = 1 << 34


class TensorMap(NamedTuple):
    """Everything of a map but its address (so one description serves every call of a plan)."""

    dims: tuple  # elements, innermost first: (d, seqlen, heads, batch)
    strides: tuple  # bytes between consecutive indices of dims 1..3
    box: tuple  # (atom columns, rows, 1, 1)


def atom_columns(head_dim_bucket: int) -> int:
    """The swizzle atom's columns for a compiled head dim D (copy.cuh SwizzleFor<D>::AW)."""
    return 64 if head_dim_bucket % 64 == 0 else 32


def tile_map(shape: tuple, strides: tuple, ptr: int, box_rows: int, atom: int) -> TensorMap | None:
    """The map of a (batch, seqlen, heads, d) 16-bit array (strides in elements) whose tiles are
    box_rows rows of swizzle atoms of `atom` columns (atom_columns, or the kernel's own choice), or
    None when TMA cannot address it (the kernel then copies with cp.async)."""
    if ptr % 16 or not 0 < box_rows <= 256:
        return None
    batch, seqlen, heads, d = shape
    if strides[3] != 1 and d > 1:
        return None
    sizes = (seqlen, heads, batch)
    byte_strides = []
    packed = d * 2  # what a unit dim's stride is replaced by (it is never stepped over)
    for n, s in zip(sizes, (strides[1], strides[2], strides[0])):
        s = packed if n == 1 else s * 2
        if s <= 0 or s % 16 or s >= _MAX_STRIDE:
            return None
        byte_strides.append(s)
        packed = s * n
    return TensorMap((d, seqlen, heads, batch), tuple(byte_strides), (atom, box_rows, 1, 1))


@functools.lru_cache(maxsize=None)
def _encoder():
    """cuTensorMapEncodeTiled from the driver library, or None where there is none."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
        fn = lib.cuTensorMapEncodeTiled
    except (OSError, AttributeError):
        return None
    lib.cuInit(0)  # the encoder answers CUDA_ERROR_NOT_INITIALIZED in a process that has not initialised the driver
    u32, u64p, u32p = ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, u32, ctypes.c_void_p, u64p, u64p, u32p, u32p,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    """Whether tensor maps can be encoded here (the driver has the encoder)."""
    return _encoder() is not None


@functools.lru_cache(maxsize=256)
def _arguments(m: TensorMap) -> tuple:
    return ((ctypes.c_uint64 * 4)(*m.dims), (ctypes.c_uint64 * 3)(*m.strides), (ctypes.c_uint32 * 4)(*m.box),
            (ctypes.c_uint32 * 4)(1, 1, 1, 1), _SWIZZLE[m.box[0]])


_local = threading.local()


def _scratch_at() -> int:
    """A 128-byte aligned buffer of this thread for the driver to encode into (CUtensorMap's alignment)."""
    try:
        return _local.at
    except AttributeError:
        _local.buf = ctypes.create_string_buffer(2 * MAP_BYTES)
        _local.at = (ctypes.addressof(_local.buf) + MAP_BYTES - 1) // MAP_BYTES * MAP_BYTES
        return _local.at


# Encoded maps by (description, address): a training loop's arrays come back at the same
# addresses, and a lookup costs less than the driver call. Emptied when it grows past the cap.
_encoded: dict = {}
_ENCODED_CAP = 4096


def encode(m: TensorMap, ptr: int) -> bytes:
    """The 128 bytes of map m at address ptr."""
    key = (m, ptr)
    hit = _encoded.get(key)
    if hit is not None:
        return hit
    dims, strides, box, element_strides, swizzle = _arguments(m)
    at = _scratch_at()
    rc = _encoder()(at, _UINT16, 4, ptr, dims, strides, box, element_strides, _INTERLEAVE_NONE, swizzle,
                    _L2_PROMOTION_256B, _OOB_FILL_ZEROS)
    if rc != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed (CUresult {rc}) for {m} at {ptr:#x}; "
                           "set CUFLASH_TMA=0 to load with cp.async instead, and report this")
    out = ctypes.string_at(at, MAP_BYTES)
    if len(_encoded) >= _ENCODED_CAP:
        _encoded.clear()
    _encoded[key] = out
    return out
