"""Launch geometry per kernel family, derived from the spec's tile constants."""
from __future__ import annotations

from .specs import FwdSpec

#: CUDA limit on gridDim.y and gridDim.z.
MAX_GRID_YZ = 65535


def fwd_smem_bytes(spec: FwdSpec) -> int:
    """Dynamic shared memory of kernels_cu/fwd.cu: Q (Br rows) + K + V (Bc rows each), pitch D + 8."""
    t = spec.tiles
    return (t.block_m + 2 * t.block_n) * (spec.head_dim + 8) * 2


def fwd_grid(spec: FwdSpec, batch: int, nheads: int, seqlen_q: int) -> tuple[int, int, int]:
    """One CTA per (query block, head, batch); blockIdx.x fastest so CTAs of one head share K/V in L2."""
    return (-(-seqlen_q // spec.tiles.block_m), nheads, batch)


def fwd_block(spec: FwdSpec) -> tuple[int, int, int]:
    return (spec.threads, 1, 1)
