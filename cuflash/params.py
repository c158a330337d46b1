"""Kernel parameter structs, mirrored from kernels_cu/common/params.cuh.

Each struct is a NumPy structured dtype with C layout (align=True); a value of
it is passed by value to the kernel as a single argument. tests/compile checks
field offsets and size against the CUDA side by compiling static_asserts.
"""
from __future__ import annotations

import numpy as np

_PTR = np.uint64
_I64 = np.int64
_I32 = np.int32
_F32 = np.float32
_U32 = np.uint32

#: The head shared by FwdParams and BwdParams (CUFLASH_ATTENTION_FIELDS in params.cuh).
ATTENTION_FIELDS = [
    ("q", _PTR), ("k", _PTR), ("v", _PTR), ("alibi_slopes", _PTR), ("sink", _PTR), ("bias", _PTR),
    ("dropout_rng", _PTR),
    ("q_batch_stride", _I64), ("q_row_stride", _I64), ("q_head_stride", _I64),
    ("k_batch_stride", _I64), ("k_row_stride", _I64), ("k_head_stride", _I64),
    ("v_batch_stride", _I64), ("v_row_stride", _I64), ("v_head_stride", _I64),
    ("alibi_batch_stride", _I64),
    ("bias_batch_stride", _I64), ("bias_head_stride", _I64), ("bias_row_stride", _I64),
    ("batch", _I32), ("nheads", _I32), ("nheads_kv", _I32),
    ("seqlen_q", _I32), ("seqlen_k", _I32),
    ("head_dim", _I32),
    ("scale", _F32), ("scale_log2", _F32),
    ("window_left", _I32), ("window_right", _I32),
    ("softcap_in", _F32), ("softcap_out", _F32),
    ("dropout_seed_lo", _U32), ("dropout_seed_hi", _U32), ("dropout_offset", _U32),
    ("dropout_threshold", _U32), ("dropout_scale", _F32),
]

#: Variable-length batches (CUFLASH_SEQUENCE_FIELDS in params.cuh), appended after a struct's own fields.
SEQUENCE_FIELDS = [
    ("cu_seqlens_q", _PTR), ("cu_seqlens_k", _PTR), ("seqused_k", _PTR),
    ("total_q", _I32), ("total_k", _I32),
]

#: TMA tensor maps (params.cuh TmaMap): 128 opaque bytes on 128-byte boundaries, written by
#: cuflash/tma.py after the other fields are packed (Packer.put_map). NumPy holds each as 16 uint64.
TENSOR_MAP_BYTES = 128
TENSOR_MAP_FIELDS = ("tma_q", "tma_k", "tma_v", "tma_o", "tma_bias", "tma_do")


def _with_tensor_maps(fields: list, maps: tuple) -> np.dtype:
    """The C layout of `fields` followed by the tensor maps `maps`, each aligned to 128 bytes (so is
    the struct, as alignas(128) makes it in CUDA)."""
    base = np.dtype(fields, align=True)
    names = list(base.names)
    formats = [base.fields[n][0] for n in names]
    offsets = [base.fields[n][1] for n in names]
    end = base.itemsize
    for name in maps:
        end = -(-end // TENSOR_MAP_BYTES) * TENSOR_MAP_BYTES
        names.append(name)
        formats.append(np.dtype((np.uint64, (TENSOR_MAP_BYTES // 8,))))
        offsets.append(end)
        end += TENSOR_MAP_BYTES
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": end})


FWD_PARAMS = _with_tensor_maps(
    ATTENTION_FIELDS
    + [
        ("o", _PTR), ("lse", _PTR),
        ("o_batch_stride", _I64), ("o_row_stride", _I64), ("o_head_stride", _I64),
    ]
    + SEQUENCE_FIELDS
    + [("tma", _I32)],
    ("tma_q", "tma_k", "tma_v", "tma_o", "tma_bias"),
)

BWD_PREPARE_PARAMS = np.dtype(
    [
        ("o", _PTR), ("dout", _PTR), ("lse", _PTR),
        ("lse_log2", _PTR), ("delta", _PTR), ("dq_accum", _PTR), ("dq_semaphore", _PTR), ("dlse", _PTR),
        ("o_batch_stride", _I64), ("o_row_stride", _I64), ("o_head_stride", _I64),
        ("do_batch_stride", _I64), ("do_row_stride", _I64), ("do_head_stride", _I64),
        ("lse_batch_stride", _I64), ("lse_head_stride", _I64), ("lse_row_stride", _I64),
        ("dqa_batch_stride", _I64), ("dqa_row_stride", _I64), ("dqa_head_stride", _I64),
        ("dlse_batch_stride", _I64), ("dlse_head_stride", _I64), ("dlse_row_stride", _I64),
        ("batch", _I32), ("nheads", _I32),
        ("seqlen_q", _I32), ("seqlen_q_rounded", _I32),
        ("head_dim", _I32),
        ("dq_accum_cols", _I32),
        ("block_m", _I32),
        ("m_blocks", _I32),
    ]
    + SEQUENCE_FIELDS,
    align=True,
)

BWD_FIELDS = (
    ATTENTION_FIELDS
    + [
        ("dout", _PTR), ("lse_log2", _PTR), ("delta", _PTR), ("dq_accum", _PTR),
        ("dk", _PTR), ("dv", _PTR), ("dk_accum", _PTR), ("dv_accum", _PTR), ("dq_semaphore", _PTR),
        ("do_batch_stride", _I64), ("do_row_stride", _I64), ("do_head_stride", _I64),
        ("dqa_batch_stride", _I64), ("dqa_row_stride", _I64), ("dqa_head_stride", _I64),
        ("dk_batch_stride", _I64), ("dk_row_stride", _I64), ("dk_head_stride", _I64),
        ("dv_batch_stride", _I64), ("dv_row_stride", _I64), ("dv_head_stride", _I64),
        ("dka_batch_stride", _I64), ("dka_row_stride", _I64), ("dka_head_stride", _I64),
        ("seqlen_q_rounded", _I32), ("m_blocks", _I32), ("dsink_part", _PTR),
        ("dbias", _PTR), ("dbias_batch_stride", _I64), ("dbias_head_stride", _I64), ("dbias_row_stride", _I64),
        ("dbias_atomic", _I32), ("dbias_f32", _I32),
    ]
    + SEQUENCE_FIELDS
)
BWD_PARAMS = np.dtype(BWD_FIELDS, align=True)
#: params.cuh BwdTmaParams (bwd_sm90_ws.cu's parameter): BwdParams, `tma`, then the maps from the
#: next 128-byte boundary (the C struct derives from BwdParams, whose fields end on its size, so
#: `tma` follows the last one as NumPy places it; tests/compile/test_params_layout.py checks).
BWD_TMA_PARAMS = _with_tensor_maps(BWD_FIELDS + [("tma", _I32)], ("tma_q", "tma_k", "tma_v", "tma_do"))

BWD_CONVERT_PARAMS = np.dtype(
    [
        ("src", _PTR), ("dst", _PTR),
        ("src_batch_stride", _I64), ("src_row_stride", _I64), ("src_head_stride", _I64),
        ("dst_batch_stride", _I64), ("dst_row_stride", _I64), ("dst_head_stride", _I64),
        ("batch", _I32), ("seqlen", _I32), ("nheads", _I32), ("group", _I32),
        ("head_dim", _I32),
        ("src_swizzled", _I32),
    ],
    align=True,
)

#: Where a KV cache's keys live (CUFLASH_CACHE_MAP_FIELDS in params.cuh).
CACHE_MAP_FIELDS = [
    ("cache_batch_idx", _PTR), ("block_table", _PTR), ("block_table_batch_stride", _I64), ("cache_leftpad", _PTR),
    ("page_size", _I32), ("num_pages", _I32),
]

KV_APPEND_PARAMS = np.dtype(
    [
        ("k", _PTR), ("v", _PTR), ("k_cache", _PTR), ("v_cache", _PTR), ("cache_seqlens", _PTR), ("seqused", _PTR),
        ("k_batch_stride", _I64), ("k_row_stride", _I64), ("k_head_stride", _I64),
        ("v_batch_stride", _I64), ("v_row_stride", _I64), ("v_head_stride", _I64),
        ("kc_batch_stride", _I64), ("kc_row_stride", _I64), ("kc_head_stride", _I64),
        ("vc_batch_stride", _I64), ("vc_row_stride", _I64), ("vc_head_stride", _I64),
        ("seqlen_new", _I32), ("seqlen_cache", _I32), ("nheads_kv", _I32), ("head_dim", _I32),
    ]
    + CACHE_MAP_FIELDS
    + [
        ("q", _PTR), ("q_rot", _PTR), ("rotary_cos", _PTR), ("rotary_sin", _PTR),
        ("q_batch_stride", _I64), ("q_row_stride", _I64), ("q_head_stride", _I64),
        ("seqlen_q", _I32), ("nheads", _I32), ("seqlen_ro", _I32), ("rotary_dim", _I32),
        ("rotary_interleaved", _I32), ("q_positions_step", _I32),
    ],
    align=True,
)

DECODE_PARAMS = np.dtype(
    ATTENTION_FIELDS
    + [
        ("o", _PTR), ("lse", _PTR),
        ("o_batch_stride", _I64), ("o_row_stride", _I64), ("o_head_stride", _I64),
        ("o_part", _PTR), ("lse_part", _PTR), ("split_flags", _PTR), ("seqused_k", _PTR), ("epoch", _I64),
        ("num_splits", _I32), ("part_cols", _I32),
    ]
    + CACHE_MAP_FIELDS,
    align=True,
)

#: C struct name for each dtype (used by the layout test).
STRUCTS = {
    "FwdParams": FWD_PARAMS,
    "BwdPrepareParams": BWD_PREPARE_PARAMS,
    "BwdParams": BWD_PARAMS,
    "BwdTmaParams": BWD_TMA_PARAMS,
    "BwdConvertParams": BWD_CONVERT_PARAMS,
    "KvAppendParams": KV_APPEND_PARAMS,
    "DecodeParams": DECODE_PARAMS,
}


def pack(dtype: np.dtype, values: tuple) -> np.void:
    """One struct value from a tuple in field order, its padding bytes zero."""
    value = np.zeros((), dtype=dtype)
    value[()] = values
    return value[()]


def pack_named(dtype: np.dtype, fields: dict) -> np.void:
    """One struct value from {field name: value}; fields left out are 0 (null pointers,
    zero strides). A name the struct does not have is an error, so a typo cannot
    silently leave a field at 0."""
    unknown = fields.keys() - set(dtype.names)
    if unknown:
        raise KeyError(f"{sorted(unknown)} are not fields of this params struct")
    return pack(dtype, tuple(fields.get(name, 0) for name in dtype.names))


_STRUCT_CODES = {np.dtype(_PTR): "Q", np.dtype(_I64): "q", np.dtype(_I32): "i", np.dtype(_F32): "f",
                 np.dtype(_U32): "I"}


class Packer:
    """Packs one params struct by field name into a reused buffer, for the launch path.

    One ``struct.pack_into`` from a format derived from the NumPy dtype (explicit
    padding, little endian), with the values gathered by a C-level ``map`` over
    the field names: ~3 µs where building a NumPy record costs ~10. ``pack``
    returns the address of ``argv``, the ``void**`` array that ``cuLaunchKernel``
    reads: one pointer, to the buffer. The driver copies the arguments during the
    launch call, so the buffer is reused at once; one buffer per thread keeps
    concurrent launches apart.
    """

    def __init__(self, dtype: np.dtype):
        import struct
        import threading

        self.dtype = dtype
        self.names = tuple(sorted(dtype.names, key=lambda n: dtype.fields[n][1]))
        self._nameset = frozenset(self.names)
        # Tensor maps are packed as zero bytes here and written by put_map.
        self.maps = {n: dtype.fields[n][1] for n in self.names if n in TENSOR_MAP_FIELDS}
        self._zeros = tuple(b"" if n in self.maps else 0 for n in self.names)
        self.pointers = tuple(n for n in self.names if dtype.fields[n][0] == np.dtype(_PTR))
        fmt, pos = "<", 0
        for name in self.names:
            sub, offset = dtype.fields[name][:2]
            fmt += "x" * (offset - pos) + (f"{TENSOR_MAP_BYTES}s" if name in self.maps else _STRUCT_CODES[sub])
            pos = offset + sub.itemsize
        fmt += "x" * (dtype.itemsize - pos)
        self._struct = struct.Struct(fmt)
        assert self._struct.size == dtype.itemsize
        self._local = threading.local()

    def buffers(self):
        loc = self._local
        try:
            return loc.buf, loc.argv_address
        except AttributeError:
            import ctypes

            loc.buf = bytearray(self._struct.size)  # never resized, so its address is fixed
            loc.view = (ctypes.c_char * len(loc.buf)).from_buffer(loc.buf)
            loc.argv = (ctypes.c_void_p * 1)(ctypes.addressof(loc.view))
            loc.argv_address = ctypes.addressof(loc.argv)
            return loc.buf, loc.argv_address

    def pack(self, fields: dict) -> int:
        """Pack {field: value} (missing fields 0) into this thread's buffer; returns the
        address of the kernel-argument array for cuLaunchKernel."""
        if not fields.keys() <= self._nameset:
            raise KeyError(f"{sorted(fields.keys() - self._nameset)} are not fields of this params struct")
        buf, argv_address = self.buffers()
        self._struct.pack_into(buf, 0, *map(fields.get, self.names, self._zeros))
        return argv_address

    def put_map(self, name: str, encoded: bytes) -> None:
        """Write an encoded tensor map (TENSOR_MAP_BYTES) into this thread's buffer, after pack()."""
        at = self.maps[name]
        self._local.buf[at:at + TENSOR_MAP_BYTES] = encoded

    def template(self, fields: dict, slot_of) -> tuple[bytes, tuple]:
        """(packed bytes, pointer slots) for launch.record: each nonzero pointer field is replaced
        by 0 in the bytes and listed as (its byte offset, *slot_of(value))."""
        slots, values = [], dict(fields)
        for name in self.pointers:
            where = slot_of(fields.get(name, 0))
            if where is not None:
                values[name] = 0
                slots.append((self.dtype.fields[name][1], *where))
        return self.to_bytes(values), tuple(slots)

    def to_bytes(self, fields: dict) -> bytes:
        """The packed struct as bytes (tests compare it with pack_named)."""
        self.pack(fields)
        return bytes(self._local.buf)


FWD = Packer(FWD_PARAMS)
BWD_PREPARE = Packer(BWD_PREPARE_PARAMS)
BWD = Packer(BWD_PARAMS)
BWD_TMA = Packer(BWD_TMA_PARAMS)
BWD_CONVERT = Packer(BWD_CONVERT_PARAMS)
KV_APPEND = Packer(KV_APPEND_PARAMS)
DECODE = Packer(DECODE_PARAMS)
