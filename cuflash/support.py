"""What cuflash supports, declared once as data.

The validation in api.py and the test grids in tests/ both read these tables,
so a capability is added in one place.
"""
from __future__ import annotations

from .specs import (
    BWD_SM90_HEAD_DIMS,
    BWD_TILES,
    DTYPES,
    FWD_SM90_LONG_TILES,
    FWD_SM90_TILES,
    FWD_TILES,
    BwdConvertSpec,
    BwdPrepareSpec,
    BwdSm90Spec,
    BwdSpec,
    FwdSm90Spec,
    FwdSpec,
    head_dim_bucket,
)

#: Input dtypes by name (numpy dtypes resolved in api.py).
SUPPORTED_DTYPES = tuple(DTYPES)
#: Head dims: multiples of HEAD_DIM_MULTIPLE up to HEAD_DIM_MAX (16-byte rows).
HEAD_DIM_MULTIPLE = 8
HEAD_DIM_MAX = 256
#: Oldest GPU: compute capability 8.0 (mma.sync m16n8k16 with bf16, cp.async, ldmatrix).
MIN_COMPUTE_CAPABILITY = (8, 0)
#: Archs `cuflash compile` and the compile tests build for by default.
COMPILE_ARCHS = ("sm_80", "sm_90a")

#: Options of cuflash.attention and when they land; a non-default value of one
#: that is not implemented yet raises NotImplementedError naming it.
NOT_YET_IMPLEMENTED = {
    "window_size": (-1, -1),
    "softcap": 0.0,
    "alibi_slopes": None,
    "bias": None,
    "dropout_p": 0.0,
}


def supported_head_dims() -> list[int]:
    return list(range(HEAD_DIM_MULTIPLE, HEAD_DIM_MAX + 1, HEAD_DIM_MULTIPLE))


def fwd_spec(
    dtype: str, head_dim: int, causal: bool, seqlen_q: int, compute_capability: tuple[int, int], sm90: bool = True
):
    """The forward kernel for a problem on a GPU: the Hopper (wgmma) kernel on
    compute capability 9.0 unless ``sm90`` is False, else the portable one."""
    if sm90 and tuple(compute_capability) in FwdSm90Spec.compute_capabilities:
        return FwdSm90Spec.for_problem(dtype, head_dim, causal, seqlen_q)
    return FwdSpec.for_problem(dtype, head_dim, causal)


def bwd_spec(
    dtype: str,
    head_dim: int,
    causal: bool,
    deterministic: bool,
    compute_capability: tuple[int, int],
    sm90: bool = True,
):
    """The backward's main kernel for a problem on a GPU: the Hopper (wgmma)
    kernel on compute capability 9.0 for the head dims it has, unless ``sm90``
    is False; else the portable one."""
    d = head_dim_bucket(head_dim)
    if sm90 and tuple(compute_capability) in BwdSm90Spec.compute_capabilities and d in BWD_SM90_HEAD_DIMS:
        return BwdSm90Spec(dtype, d, bool(causal), bool(deterministic))
    return BwdSpec.for_problem(dtype, head_dim, causal, deterministic)


def declared_specs() -> list:
    """Every kernel specialisation cuflash may launch (what `cuflash compile` builds):
    the forward (portable, then Hopper), then the backward (its main kernel,
    portable then Hopper, prepare and convert). A spec with ``compute_capabilities`` is built only
    for those GPUs (cuflash.compile.cache.builds_for)."""
    fwd = [
        FwdSpec(dtype, d, causal, FWD_TILES[d])
        for dtype in SUPPORTED_DTYPES
        for d in sorted(FWD_TILES)
        for causal in (False, True)
    ]
    fwd += [
        FwdSm90Spec(dtype, d, causal, tiles[d])
        for tiles in (FWD_SM90_TILES, FWD_SM90_LONG_TILES)
        for dtype in SUPPORTED_DTYPES
        for d in sorted(tiles)
        for causal in (False, True)
    ]
    bwd = [
        BwdSpec(dtype, d, causal, deterministic, BWD_TILES[d])
        for dtype in SUPPORTED_DTYPES
        for d in sorted(BWD_TILES)
        for causal in (False, True)
        for deterministic in (False, True)
    ]
    bwd += [
        BwdSm90Spec(dtype, d, causal, deterministic)
        for dtype in SUPPORTED_DTYPES
        for d in BWD_SM90_HEAD_DIMS
        for causal in (False, True)
        for deterministic in (False, True)
    ]
    helpers = [spec for dtype in SUPPORTED_DTYPES for spec in (BwdPrepareSpec(dtype), BwdConvertSpec(dtype))]
    return fwd + bwd + helpers
