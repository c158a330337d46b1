"""Launch geometry per kernel family, derived from the spec's tile constants."""
from __future__ import annotations

from .specs import BwdConvertSpec, BwdPrepareSpec, BwdSm90Spec, BwdSpec, FwdSm90Spec, FwdSpec

#: CUDA limit on gridDim.y and gridDim.z.
MAX_GRID_YZ = 65535


def fwd_smem_bytes(spec: FwdSpec | FwdSm90Spec) -> int:
    """Dynamic shared memory of the forward.

    kernels_cu/fwd.cu: Q (Br rows) + K + V (Bc rows each), pitch D + 8.
    kernels_cu/fwd_sm90.cu: Q (Br rows) + two stages of K and V (Bc rows each),
    swizzled rows of D, plus 1 KB so the kernel can align the tiles to 1024 bytes.
    """
    t = spec.tiles
    if isinstance(spec, FwdSm90Spec):
        return (t.block_m + 4 * t.block_n) * spec.head_dim * 2 + 1024
    return (t.block_m + 2 * t.block_n) * (spec.head_dim + 8) * 2


def fwd_grid(spec: FwdSpec | FwdSm90Spec, batch: int, nheads: int, seqlen_q: int) -> tuple[int, int, int]:
    """One CTA per (query block, head, batch); blockIdx.x fastest so CTAs of one head share K/V in L2."""
    return (-(-seqlen_q // spec.tiles.block_m), nheads, batch)


def fwd_block(spec: FwdSpec | FwdSm90Spec) -> tuple[int, int, int]:
    return (spec.threads, 1, 1)


# ---------------------------------------------------------------- backward


def bwd_smem_bytes(spec: BwdSpec | BwdSm90Spec) -> int:
    """Dynamic shared memory of the backward's main kernel.

    kernels_cu/bwd.cu: L2 and D (fp32, two buffers of Br), K and V (Bc rows), Q
    and dO (two buffers of Br rows each), pitch D + 8; dS^T (Bc rows, pitch Br + 8)
    and P^T unless it stays in registers (16-bit).
    kernels_cu/bwd_sm90.cu: K, V (Bc rows), Q, dO (two buffers of Br rows), swizzled
    rows of D; dS^T (Bc x Br, 16-bit; with split_d also P^T); L2 and D (two
    buffers of Br); 1 KB alignment slack.
    """
    t = spec.tiles
    if isinstance(spec, BwdSm90Spec):
        exchange = (2 if t.split_d else 1) * 2 * t.block_n * t.block_m
        return 2 * (2 * t.block_n + 4 * t.block_m) * spec.head_dim + exchange + 16 * t.block_m + 1024
    pitch, pitch_t = spec.head_dim + 8, t.block_m + 8
    transposed = 1 if t.p_in_regs else 2
    return 4 * 4 * t.block_m + 2 * (2 * t.block_n + 4 * t.block_m) * pitch + transposed * 2 * t.block_n * pitch_t


def bwd_m_blocks(spec: BwdSpec | BwdSm90Spec, seqlen_q: int) -> int:
    """Query blocks of Br rows; lse_log2 and delta are padded to m_blocks * Br rows."""
    return -(-seqlen_q // spec.tiles.block_m)


def bwd_grid(spec: BwdSpec | BwdSm90Spec, batch: int, nheads: int, seqlen_k: int) -> tuple[int, int, int]:
    """One CTA per (key block, query head, batch). blockIdx.x (the key block) is
    fastest: the deterministic mode relies on CTAs of one (head, batch) being
    dispatched in key-block order, and under a causal mask the low key blocks
    (seen by the most queries) start first."""
    return (-(-seqlen_k // spec.tiles.block_n), nheads, batch)


def bwd_block(spec: BwdSpec | BwdSm90Spec) -> tuple[int, int, int]:
    return (spec.threads, 1, 1)


def bwd_prepare_grid(spec: BwdPrepareSpec, batch: int, nheads: int, seqlen_q_rounded: int) -> tuple[int, int, int]:
    """One CTA per (rows_per_cta rows of the padded query range, head, batch)."""
    return (-(-seqlen_q_rounded // spec.rows_per_cta), nheads, batch)


def bwd_convert_grid(spec: BwdConvertSpec, batch: int, seqlen: int, nheads: int, head_dim: int) -> tuple[int, int, int]:
    """One thread per 8 columns of one (row, head) of the output; blockIdx.y is the batch."""
    chunks = seqlen * nheads * (head_dim // 8)
    return (-(-chunks // spec.threads), batch, 1)

