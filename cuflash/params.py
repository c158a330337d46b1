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

#: C struct name for each dtype (used by the layout test).
STRUCTS = {"FwdParams": FWD_PARAMS}


def pack(dtype: np.dtype, values: tuple) -> np.void:
    """One struct value from a tuple in field order (the fast path: one NumPy call)."""
    return np.array(values, dtype=dtype)[()]
