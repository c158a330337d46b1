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

FWD_PARAMS = np.dtype(
    [
        ("q", _PTR), ("k", _PTR), ("v", _PTR), ("o", _PTR), ("lse", _PTR),
        ("q_batch_stride", _I64), ("q_row_stride", _I64), ("q_head_stride", _I64),
        ("k_batch_stride", _I64), ("k_row_stride", _I64), ("k_head_stride", _I64),
        ("v_batch_stride", _I64), ("v_row_stride", _I64), ("v_head_stride", _I64),
        ("o_batch_stride", _I64), ("o_row_stride", _I64), ("o_head_stride", _I64),
        ("batch", _I32), ("nheads", _I32), ("nheads_kv", _I32),
        ("seqlen_q", _I32), ("seqlen_k", _I32),
        ("head_dim", _I32),
        ("scale_log2", _F32),
        ("pad_", _I32),
    ],
    align=True,
)

BWD_PREPARE_PARAMS = np.dtype(
    [
        ("o", _PTR), ("dout", _PTR), ("lse", _PTR),
        ("lse_log2", _PTR), ("delta", _PTR), ("dq_accum", _PTR), ("dq_semaphore", _PTR),
        ("o_batch_stride", _I64), ("o_row_stride", _I64), ("o_head_stride", _I64),
        ("do_batch_stride", _I64), ("do_row_stride", _I64), ("do_head_stride", _I64),
        ("lse_batch_stride", _I64), ("lse_head_stride", _I64), ("lse_row_stride", _I64),
        ("dqa_batch_stride", _I64), ("dqa_row_stride", _I64), ("dqa_head_stride", _I64),
        ("batch", _I32), ("nheads", _I32),
        ("seqlen_q", _I32), ("seqlen_q_rounded", _I32),
        ("head_dim", _I32),
        ("dq_accum_cols", _I32),
        ("block_m", _I32),
        ("m_blocks", _I32),
    ],
    align=True,
)

BWD_PARAMS = np.dtype(
    [
        ("q", _PTR), ("k", _PTR), ("v", _PTR), ("dout", _PTR),
        ("lse_log2", _PTR), ("delta", _PTR), ("dq_accum", _PTR),
        ("dk", _PTR), ("dv", _PTR), ("dk_accum", _PTR), ("dv_accum", _PTR), ("dq_semaphore", _PTR),
        ("q_batch_stride", _I64), ("q_row_stride", _I64), ("q_head_stride", _I64),
        ("k_batch_stride", _I64), ("k_row_stride", _I64), ("k_head_stride", _I64),
        ("v_batch_stride", _I64), ("v_row_stride", _I64), ("v_head_stride", _I64),
        ("do_batch_stride", _I64), ("do_row_stride", _I64), ("do_head_stride", _I64),
        ("dqa_batch_stride", _I64), ("dqa_row_stride", _I64), ("dqa_head_stride", _I64),
        ("dk_batch_stride", _I64), ("dk_row_stride", _I64), ("dk_head_stride", _I64),
        ("dv_batch_stride", _I64), ("dv_row_stride", _I64), ("dv_head_stride", _I64),
        ("dka_batch_stride", _I64), ("dka_row_stride", _I64), ("dka_head_stride", _I64),
        ("batch", _I32), ("nheads", _I32), ("nheads_kv", _I32),
        ("seqlen_q", _I32), ("seqlen_k", _I32),
        ("seqlen_q_rounded", _I32), ("m_blocks", _I32),
        ("head_dim", _I32),
        ("scale", _F32),
        ("scale_log2", _F32),
    ],
    align=True,
)

BWD_CONVERT_PARAMS = np.dtype(
    [
        ("src", _PTR), ("dst", _PTR),
        ("src_batch_stride", _I64), ("src_row_stride", _I64), ("src_head_stride", _I64),
        ("dst_batch_stride", _I64), ("dst_row_stride", _I64), ("dst_head_stride", _I64),
        ("batch", _I32), ("seqlen", _I32), ("nheads", _I32), ("group", _I32),
        ("head_dim", _I32),
        ("pad_", _I32),
    ],
    align=True,
)

#: C struct name for each dtype (used by the layout test).
STRUCTS = {
    "FwdParams": FWD_PARAMS,
    "BwdPrepareParams": BWD_PREPARE_PARAMS,
    "BwdParams": BWD_PARAMS,
    "BwdConvertParams": BWD_CONVERT_PARAMS,
}


def pack(dtype: np.dtype, values: tuple) -> np.void:
    """One struct value from a tuple in field order (the fast path: one NumPy call)."""
    return np.array(values, dtype=dtype)[()]
