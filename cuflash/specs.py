"""Kernel specialisations: one frozen dataclass names one compiled kernel.

A spec is everything that is a compile-time constant of a kernel (dtype, padded
head dim, tile shape, and the features: mask kind and score modifiers). Its
``name`` is readable and unique, and ``defines()`` turns it into the
``#define`` lines that are prepended to the kernel's source file. Everything
that varies per call (sequence lengths, strides, the exact head dim, the scale,
window sizes, softcap value, slopes and sink pointers) goes into the params
struct instead (DESIGN 4b).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from . import tma

#: Head dims are padded up to a multiple of this for the compile-time tile
#: width; the exact head dim is a run-time parameter (extra columns are
#: zero-filled on load and never stored).
HEAD_DIM_BUCKET = 32

#: dtype name -> C macro value (kernels_cu/common/platform.cuh CUFLASH_FP16 ...)
DTYPES = {"fp16": 0, "bf16": 1, "fp32": 2}
#: Bytes per element of each dtype.
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
#: The dtypes of the 16-bit-only kernels: the Hopper families, the decode and its helpers.
HALF_DTYPES = ("fp16", "bf16")


def head_dim_bucket(head_dim: int) -> int:
    """Compile-time head dim D for an actual head dim d (d <= D, D % 32 == 0)."""
    return -(-head_dim // HEAD_DIM_BUCKET) * HEAD_DIM_BUCKET


#: Mask kinds (kernels_cu/common/mask.cuh CUFLASH_MASK_*): "none" sees every
#: key, "causal" is a window (unbounded, 0), "local" a sliding window whose
#: sizes are run-time values.
MASKS = {"none": 0, "causal": 1, "local": 2}
#: The score modifiers, the sink, dropout and the bias: compile-time switches whose values are run-time.
MODIFIERS = ("softcap", "alibi", "sink", "dropout", "bias")
#: Bias element types (Features.bias, kernels_cu/common/score_mod.cuh CUFLASH_BIAS): 16 is the
#: kernel's own dtype, 32 float32; the tag word of each.
BIAS_WORDS = {16: "bias", 32: "bias32"}
#: Dropout kinds (Features.dropout, kernels_cu/common/dropout.cuh CUFLASH_DROPOUT): 1 reads the seed
#: from the params, 2 from device memory (params.cuh dropout_rng: a seed a traced JAX program makes
#: on the device); the tag word of each.
DROPOUT_WORDS = {1: "dropout", 2: "dropoutmem"}


@dataclass(frozen=True)
class Features:
    """The compile-time feature switches of an attention kernel (DESIGN 4b).

    mask: "none" | "causal" | "local"; softcap, alibi: score modifiers
    (kernels_cu/common/score_mod.cuh); sink: a learnable sink logit in the
    forward's softmax (the backward's P comes from the sink-inclusive lse; its
    switch there adds each CTA's exact part of dsink, softmax.cuh SinkDot); dropout:
    the Philox keep-mask on P (kernels_cu/common/dropout.cuh), 0 none, 1 or 2 (DROPOUT_WORDS: where
    the seed is read); bias: an additive
    bias read tile by tile (score_mod.cuh), 0 none, 16 in the kernel's dtype, 32
    float32 (the backward computes its gradient when given a buffer, a run-time
    choice); varlen: sequences of their own lengths packed along the rows (seqinfo.cuh)."""

    mask: str = "none"
    softcap: bool = False
    alibi: bool = False
    sink: bool = False
    dropout: int = 0
    bias: int = 0
    varlen: bool = False  # a variable-length batch (cu_seqlens): per-sequence rows and lengths

    @property
    def softcap_alone(self) -> bool:
        """A softcap and no other score modifier (AttentionSpec.softcap_folded)."""
        return self.softcap and not self.alibi and not self.bias

    def __post_init__(self):
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {sorted(MASKS)}, got {self.mask!r}")
        if self.dropout not in (0, *DROPOUT_WORDS):
            raise ValueError(f"dropout must be 0 (none), 1 (seed in the params) or 2 (seed in device memory), "
                             f"got {self.dropout!r}")
        if self.bias not in (0, *BIAS_WORDS):
            raise ValueError(f"bias must be 0 (none), 16 (the kernel's dtype) or 32 (float32), got {self.bias!r}")

    @classmethod
    def parse(cls, text: str) -> "Features":
        """Features from a comma list such as "window,softcap" (`cuflash compile --features`):
        causal | window (or local) | softcap | alibi | sink | dropout | dropoutmem (the seed in device
        memory) | bias (in the kernel's dtype) | bias32 (float32) | varlen; empty = plain."""
        words = [w.strip() for w in text.split(",") if w.strip()]
        known = {"causal", "window", "local", "varlen", *MODIFIERS, *BIAS_WORDS.values(), *DROPOUT_WORDS.values()}
        unknown = [w for w in words if w not in known]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; choose from {sorted(known)}")
        if "causal" in words and ({"window", "local"} & set(words)):
            raise ValueError("causal and window are two mask kinds; a window with right = 0 is causal + window")
        mask = "local" if {"window", "local"} & set(words) else "causal" if "causal" in words else "none"
        bias = next((bits for bits, word in BIAS_WORDS.items() if word in words), 0)
        dropout = next((kind for kind, word in DROPOUT_WORDS.items() if word in words), 0)
        switches = {m: m in words for m in MODIFIERS if m not in ("bias", "dropout")}
        return cls(mask, **switches, dropout=dropout, bias=bias, varlen="varlen" in words)

    @property
    def causal(self) -> bool:
        return self.mask == "causal"

    @property
    def tag(self) -> str:
        """Readable part of a kernel name: full | causal | local, then each modifier."""
        mask = "full" if self.mask == "none" else self.mask
        named = {"bias": BIAS_WORDS.get(self.bias), "dropout": DROPOUT_WORDS.get(self.dropout)}
        words = [named.get(m) or m for m in MODIFIERS if getattr(self, m)]
        return "_".join([mask] + words + (["varlen"] if self.varlen else []))

    def defines(self) -> dict[str, int]:
        return {
            "CUFLASH_MASK": MASKS[self.mask],
            "CUFLASH_SOFTCAP": int(self.softcap),
            "CUFLASH_ALIBI": int(self.alibi),
            "CUFLASH_SINK": int(self.sink),
            "CUFLASH_DROPOUT": int(self.dropout),
            "CUFLASH_BIAS": self.bias,
            "CUFLASH_VARLEN": int(self.varlen),
        }


PLAIN = Features()
CAUSAL = Features("causal")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")


def _check_dtype_and_head_dim(dtype: str, head_dim: int) -> None:
    _check_dtype(dtype)
    if head_dim % HEAD_DIM_BUCKET or not 0 < head_dim <= 256:
        raise ValueError(f"head_dim must be a multiple of {HEAD_DIM_BUCKET} in (0, 256], got {head_dim}")


@dataclass(frozen=True)
class KernelSpec:
    """What every spec has: a dtype, a source file and entry point, a readable
    name and the defines rendered into the source (cuflash/compile/source.py)."""

    dtype: str  # "fp16" | "bf16" | "fp32"

    source = ""
    entry = ""
    #: The compile test fails if ptxas reports any spill for this kernel.
    allow_spills = False

    def __post_init__(self):
        _check_dtype(self.dtype)

    @property
    def name(self) -> str:
        """The entry point without its cuflash_ prefix, then the dtype (the helper kernels' names;
        the attention kernels add their tiles and features)."""
        return f"{self.entry.removeprefix('cuflash_')}_{self.dtype}"

    def defines(self) -> dict[str, int]:
        return {"CUFLASH_DTYPE": DTYPES[self.dtype]}


@dataclass(frozen=True)
class AttentionSpec(KernelSpec):
    """A main attention kernel: a compile-time head dim D and its features."""

    head_dim: int  # compile-time D, a multiple of HEAD_DIM_BUCKET, <= 256
    features: Features

    def __post_init__(self):
        _check_dtype_and_head_dim(self.dtype, self.head_dim)

    @property
    def softcap_folded(self) -> bool:
        """A softcap alone kept as tanh(softcap_in s), softcap_out riding on the exp2 multiply
        (kernels_cu/common/score_mod.cuh SOFTCAP_FOLDED; launch.attention_fields passes scale_log2 =
        softcap * log2(e)). Only where it measured faster (bench/NOTES.md s2): FwdSm90Spec and
        BwdSm90Spec say where."""
        return False

    def defines(self) -> dict[str, int]:
        return {**super().defines(), "CUFLASH_HEAD_DIM": self.head_dim, **self.features.defines(),
                "CUFLASH_SOFTCAP_FOLDED": int(self.softcap_folded)}


@dataclass(frozen=True)
class FwdTiles:
    """Tile shape of the forward kernel.

    block_m: rows of Q per CTA (Br); block_n: rows of K/V per main-loop step
    (Bc); warps: warps per CTA, each owning block_m / warps query rows.
    """

    block_m: int
    block_n: int
    warps: int
    q_in_regs: bool = False  # keep Q's mma fragments in registers across key blocks

    @property
    def rows_per_warp(self) -> int:
        return self.block_m // self.warps


# Tile shape per compile-time head dim D (see bench/NOTES.md for how each was
# chosen). Each entry compiles without spills for sm_80 and sm_90a
# (tests/compile); rows_per_warp is 16 or 32.
FWD_TILES = {
    32: FwdTiles(128, 64, 4, q_in_regs=True),
    64: FwdTiles(128, 64, 4, q_in_regs=True),
    96: FwdTiles(128, 64, 4),
    128: FwdTiles(128, 64, 4),
    160: FwdTiles(128, 128, 8),
    192: FwdTiles(128, 128, 8),
    224: FwdTiles(64, 64, 4),
    256: FwdTiles(64, 64, 4),
}


#: Forward tiles for float32 inputs (the 3xTF32 path, kernels_cu/common/mma.cuh), per
#: compile-time D, best first: rows are twice as wide, and float32 fragments twice the
#: registers, so Q stays in shared memory and the tiles are smaller. Shared memory in bytes
#: beside each; every D has a tile within 99 KB. Timed on the H200 with bench/tune_fwd.py --dtype
#: fp32 (d128, 8k: 128x64x8 48.8 TFLOP/s, 128x32x8 44.9, 64x64x4 40.9; SDPA efficient 44.5).
FWD_TILES_FP32 = {
    32: [FwdTiles(128, 64, 4)],                     # 36864
    64: [FwdTiles(128, 64, 4)],                     # 69632
    96: [FwdTiles(128, 64, 8), FwdTiles(64, 64, 4)],   # 102400, 76800
    128: [FwdTiles(128, 64, 8), FwdTiles(128, 32, 8)],  # 135168, 101376
    160: [FwdTiles(64, 32, 4)],                     # 83968
    192: [FwdTiles(64, 32, 4)],                     # 100352
    224: [FwdTiles(64, 32, 4), FwdTiles(32, 32, 2)],  # 116736, 87552
    256: [FwdTiles(64, 32, 4), FwdTiles(32, 32, 2)],  # 133120, 99840
}


#: Forward tiles for GPUs with less shared memory per block (as BWD_TILES_SMALLER_SMEM):
#: the 128 x 128 tiles of D = 160 and 192 need 126 / 150 KB, more than 99 KB.
FWD_TILES_SMALLER_SMEM = {
    160: [(160, FwdTiles(64, 64, 4))],  # 64512
    192: [(192, FwdTiles(64, 64, 4))],  # 74752
}


@dataclass(frozen=True)
class FwdSpec(AttentionSpec):
    """The portable (mma.sync) forward kernel in kernels_cu/fwd.cu."""

    tiles: FwdTiles
    #: bf16 scores bounded by a softcap alone (fixed_offset()): the softmax at one constant offset,
    #: no running max and no rescale of O, as FwdSm90Spec.fixed_offset (bench/NOTES.md s4).
    fixed_offset: bool = False

    source = "fwd.cu"
    entry = "cuflash_fwd"

    @property
    def softcap_folded(self) -> bool:
        # the portable kernels keep softcap_out's multiply (not measured folded), but the fixed offset
        # needs it folded (its offset comes from the exp2 multiply)
        return self.fixed_offset

    def __post_init__(self):
        super().__post_init__()
        t = self.tiles
        if t.rows_per_warp not in (16, 32) or t.block_m != t.rows_per_warp * t.warps:
            raise ValueError(f"block_m / warps must be 16 or 32, got {t}")
        if t.block_n % 16:
            raise ValueError(f"block_n must be a multiple of 16, got {t.block_n}")
        if self.fixed_offset and not fixed_offset(self.dtype, self.features, 1.0):
            raise ValueError("fixed_offset needs bf16 scores bounded by a softcap alone, without dropout")

    @classmethod
    def for_problem(cls, dtype: str, head_dim: int, features: Features = PLAIN) -> "FwdSpec":
        d = head_dim_bucket(head_dim)
        return cls(dtype, d, features, FWD_TILES[d])

    @property
    def threads(self) -> int:
        return 32 * self.tiles.warps

    @property
    def name(self) -> str:
        t = self.tiles
        q = "q" if t.q_in_regs else ""
        fixed = "f" if self.fixed_offset else ""  # the softmax at a fixed offset
        return f"fwd_{self.dtype}_d{self.head_dim}_{self.features.tag}_m{t.block_m}n{t.block_n}w{t.warps}{q}{fixed}"

    def defines(self) -> dict[str, int]:
        t = self.tiles
        return {
            **super().defines(),
            "CUFLASH_BLOCK_M": t.block_m,
            "CUFLASH_BLOCK_N": t.block_n,
            "CUFLASH_WARPS": t.warps,
            "CUFLASH_Q_IN_REGS": int(t.q_in_regs),
            "CUFLASH_SOFTMAX_FIXED": int(self.fixed_offset),
        }


@dataclass(frozen=True)
class FwdSm90Tiles:
    """Tile shape of the Hopper forward: block_m query rows per CTA (64 per
    warpgroup), block_n keys per main-loop step; ctas_per_sm > 1 caps the
    registers (65536 / (threads * ctas_per_sm)) so that many CTAs fit on an SM.
    stages > 0 selects the warp-specialised kernel (kernels_cu/fwd_sm90_ws.cu: a
    producer warpgroup beside the block_m / 64 consumers, a ring of `stages` K/V
    slots); 0 the kernel whose warpgroups all load and compute (fwd_sm90.cu)."""

    block_m: int
    block_n: int
    ctas_per_sm: int = 1
    stages: int = 0

    @property
    def warpgroups(self) -> int:
        """Warpgroups that compute (the producer of the warp-specialised kernel not counted)."""
        return self.block_m // 64

    def with_features(self, features: "Features", head_dim: int) -> "FwdSm90Tiles":
        """These tiles for a feature set, where the features' registers do not fit them
        (each measured by a spill under NVRTC 12.9, bench/NOTES.md v8):
        - a bias: the warp-specialised kernel stages a 16-bit dense one in shared memory
          (kernels_cu/common/bias_tile.cuh), at 128 rows and key blocks rounded down to a
          multiple of 64 (whole swizzle atoms; a ring of bias tiles beside K/V's fits 227 KB);
          a float32 or varlen bias, whose global addresses and loads spilled the consumers
          (224 registers, 8-84 bytes), runs on the kernel without a producer, at those
          tiles and one CTA per SM;
        - ALiBi, the sink or dropout beside three consumer warpgroups (160 registers each)
          spilled 8-116 bytes: two consumer warpgroups (128 rows) instead;
        - dropout's Philox rounds in a register-capped tile (ctas_per_sm > 1) spilled 76 bytes:
          one CTA per SM;
        - ALiBi beside key blocks wider than 64 from d160 on (the 80- and 96-key tiles) spilled
          8-104 bytes with a window, dropout or softcap + sink (d160 96 keys, d256 80 keys):
          64 keys, the tiles it had before;
        - a window beside dropout at d256 (80 keys) spilled 96 bytes under NVRTC 12.9, 13.0 and
          13.5 (not measured on a GPU; bench/NOTES.md g6): 64 keys, as with ALiBi."""
        t = self
        if features.bias and t.stages:
            staged = features.bias == 16 and not features.varlen
            t = replace(t, block_m=min(t.block_m, 128), block_n=t.block_n // 64 * 64, stages=t.stages if staged else 0)
        wide_keys_spill = ((features.alibi and head_dim >= 160)
                           or (features.dropout and features.mask == "local" and head_dim >= 256))
        if wide_keys_spill and t.stages and t.block_n > 64:
            t = replace(t, block_n=64)
        if (features.alibi or features.sink or features.dropout) and t.stages and t.block_m > 128:
            t = replace(t, block_m=128)
        if features.dropout or features.bias:
            t = replace(t, ctas_per_sm=1)
        return t


#: Head dims (buckets) whose warp-specialised forward runs on a persistent grid
#: (FwdSm90Spec.persistent). Not 224 and 256: the tile loop's state spilled the consumers
#: (48-184 bytes, NVRTC 12.9). Not 96: measured 4% slower than one CTA per tile from 2k on,
#: causal or not (H200 bf16, 2k / 8k: 430 / 458 against 449 / 477 TFLOP/s non-causal; only 1k
#: gained, 1-7%), where d128, d160 and d192 gain 3-13% at 1k-2k (bench/NOTES.md v11).
FWD_SM90_PERSISTENT_HEAD_DIMS = (32, 64, 128, 160, 192)

#: A varlen batch on the warp-specialised forward's persistent grid: the most sequences whose
#: tiles it lists in shared memory (kernels_cu/fwd_sm90_ws.cu TileList: 8 bytes each), and the
#: longest sequence (max_seqlen_q) for which it walks that list; other batches run one CTA per
#: tile of the grid's numbering (FwdSm90Spec.lists_tiles). Against one CTA per tile (H200 bf16
#: d128, 16k tokens of equal lengths, TFLOP/s, same session): 512 rows 433 / 393, causal 275 /
#: 244; 1k 542 / 514, 398 / 362; 4k 657 / 656, 597 / 569; but 16k 612 / 623, causal 636 / 689
#: (bench/NOTES.md v19). 8k walks the list as the dense call's persistent grid does up to
#: FWD_SM90_PERSISTENT_ROWS (H100, d128 ms, 4096 / 8192 rows: 1.670-1.709 / 1.624-1.681, causal
#: 0.885-0.886 / 0.854-0.857; v35). Where the kernel takes the rows' sums from P V (sums_by_mma),
#: its list holds only as many sequences as fit beside two Q buffers and the ones (d128: 240;
#: FwdSm90Spec.listed_seqs).
FWD_SM90_LISTED_SEQS = 512
FWD_SM90_LISTED_ROWS = 8192

#: A dense forward without a band (no mask or causal) of more query rows than this takes the
#: warp-specialised kernel built for one CTA per tile (FwdSm90Spec.long_rows) where it would run on
#: the persistent grid, at the head dims FWD_SM90_LONG_ROWS_HEAD_DIMS (measured; d32, d160 and d192
#: were not). H200 bf16 16k tokens, TFLOP/s, persistent grid / one CTA per tile
#: (bench/NOTES.md v21): 4k d64 causal 440 / 422, d128 causal 621 / 588; 8k d64 484 / 489,
#: non-causal 540 / 553, d128 causal 662 / 647, non-causal 693 / 699; 16k d64 causal 510 / 524,
#: non-causal 542 / 564, d128 causal 665 / 706, non-causal 696 / 707.
FWD_SM90_PERSISTENT_ROWS = 8192
FWD_SM90_LONG_ROWS_HEAD_DIMS = (64, 128)

#: wgmma N values besides the multiples of 32 that kernels_cu/common/wgmma.cuh issues (its
#: operand lists; S = Q K^T of the warp-specialised forward, key blocks of Bc = N).
WGMMA_EXTRA_N = (80, 112, 144, 176)

#: Shared memory one block may opt in to on compute capability 9.0 (227 KB; support.SMEM_LIMITS).
SM90_SMEM_PER_BLOCK = 232448

# Tile shape per compile-time head dim D of the Hopper forward (bench/NOTES.md v8, v14):
# the warp-specialised kernel (kernels_cu/fwd_sm90_ws.cu, two K/V stages)
# everywhere, one tile whatever the query length (128x128s2 wins at every
# length at d128, where v7's 192x64 won from 2k rows). Key blocks of 80 (one of
# WGMMA_EXTRA_N) and 96 from d160 on: against 128 x 64, d160 128x96 +4-10%,
# d192 128x80 +2-6%, d256 128x80 +1-14% (H200 bf16, 1k-16k); d224 stays (mixed),
# and d96 / d128 keep 128 x 128 (128 x 144 / 160 mixed).
FWD_SM90_TILES = {
    32: FwdSm90Tiles(192, 128, stages=2),
    64: FwdSm90Tiles(192, 128, stages=2),
    96: FwdSm90Tiles(128, 128, stages=2),
    128: FwdSm90Tiles(128, 128, stages=2),
    160: FwdSm90Tiles(128, 96, stages=2),
    192: FwdSm90Tiles(128, 80, stages=2),
    224: FwdSm90Tiles(128, 64, stages=2),
    256: FwdSm90Tiles(128, 80, stages=2),
}
# A sliding window of at most FWD_SM90_NARROW_BAND keys per query (left + right + 1) is nearly
# bound by memory: 64-row tiles, two CTAs per SM, visit less of the rectangle around the band. On
# the H200 (bf16, 16k, bench/tune_fwd.py --window): (128, 0) 0.161 -> 0.127 ms, (256, 0) 0.204 ->
# 0.173 ms at d128 and 0.203 -> 0.173 at d64 against the tiles of the kernel without a producer.
# Against the warp-specialised kernel's 128 x 128 (cuflash bench, d128, 2026-12-01): (128, 0) 0.129
# narrow / 0.138 ms, (256, 0) 0.173 / 0.163 ms; 128 x 64 tiles with a producer 0.144-0.146 / 0.175-0.177.
# Per head dim (bucket) the band up to which the narrow tiles run: at d64 they stay ahead at (256, 0)
# (0.173 against 0.272 ms for the warp-specialised 192 x 128, and 0.178 on the persistent grid). Not at
# d128 since the warp-specialised kernel runs short bands on its persistent grid (below): (128, 0) 0.113
# against 0.130 ms narrow, (256, 0) 0.144 against 0.162 (bench/NOTES.md v13).
FWD_SM90_NARROW_BAND = {64: 512}
FWD_SM90_NARROW_TILES = {
    64: FwdSm90Tiles(64, 64, ctas_per_sm=2),
}
# A band of at most FWD_SM90_PERSISTENT_BAND keys per query runs the warp-specialised kernel on its
# persistent grid (FwdSm90Spec.short_band): its tiles see a few key blocks each, and the grid hides the
# per-tile start. A wider band's ramp (the first query blocks see fewer keys) unbalances the static
# round-robin: H200 bf16 16k, one CTA per tile against persistent (ms): (1024, 0) d64 0.448 / 0.419, d128
# 0.318 / 0.309; (4096, 0) d64 1.103 / 1.128, d128 0.857 / 0.962 (bench/NOTES.md v13).
FWD_SM90_PERSISTENT_BAND = 1025

#: Head dims (buckets) whose warp-specialised forward takes the rows' sums of P from its P V product
#: (FwdSm90Spec.sums_by_mma: V followed by a column block of ones, N = D + 8), where it has no dropout,
#: no bias and no varlen tile list (bench/NOTES.md v32: softcap 30 +2-7.5%, plain even to +1%, H100). Not
#: d64: its kernels of three consumer warpgroups spilled 8-16 bytes with the sums' registers, and its
#: fixed-offset softcap kernels, which did not, measured 0-1% slower.
FWD_SM90_SUMS_BY_MMA_HEAD_DIMS = (128,)

#: Of every 8 exponentials of a row, how many the warp-specialised Hopper forward takes on the FMA pipe
#: (kernels_cu/common/numeric.cuh exp2_fma) in its softmax at a fixed offset (FwdSm90Spec.exp2_fma_of_8),
#: where a softcap's tanh and the exp2 share the SFU (bench/NOTES.md v33, H100s, bf16, softcap 30, k = 2
#: against none over five alternated rounds in two sessions: d64 8k -3.3 to -3.9% non-causal, -6.3 to -6.4%
#: causal; d128 2k -1.6% / even, 8k -0.5% / -0.4% on the medians; k = 4 and 6 slower), up to
#: FWD_SM90_EXP2_FMA_HEAD_DIM: above it each score's tensor work hides the SFU's (d256's softcap costs 2-3%).
FWD_SM90_EXP2_FMA_OF_8 = 2
FWD_SM90_EXP2_FMA_HEAD_DIM = 128

#: Head dims (buckets) above which a per-key bias (row stride 0) takes a warp-specialised forward of its
#: own (FwdSm90Spec.bias_per_key). At d <= 64 the bias's one kernel chooses between the two adds at run
#: time (FwdSm90Spec.bias_row_branch): a kernel per add measured 2-6% slower there, per-key and full bias
#: alike (H100, bf16 8k), and at d128 the per-key kernel +1-9% (bench/NOTES.md v30, v31).
FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM = 64
# A causal forward of at most FWD_SM90_SHORT_CAUSAL[head dim] query rows takes FWD_SM90_SHORT_CAUSAL_TILES:
# at d64 the 192-row tiles cross the diagonal in three key blocks of 128, which at short lengths is much
# of the work. H200 bf16 16k tokens, TFLOP/s 192 x 128 / 128 x 128 (bench/tune_fwd.py, two runs): 512
# 150 / 203, 1k 253-258 / 276-278, 2k 324-333 / 340-341, 4k 414 / 383; non-causal 1k 395 / 367
# (bench/NOTES.md v15). At d256 (one Q buffer, otherwise one CTA per tile) a short causal call runs
# 128 x 64 tiles on the persistent grid (FwdSm90Spec.short_causal): 128 x 80 one CTA per tile / 128 x 64
# persistent, TFLOP/s: 512 288 / 296, 1k 420 / 431, 2k 540 / 552, 4k 629 / 638, 8k 690 / 656, 16k 773 /
# 699 (bench/NOTES.md v22).
FWD_SM90_SHORT_CAUSAL = {64: 2048, 256: 4096}
FWD_SM90_SHORT_CAUSAL_TILES = {64: FwdSm90Tiles(128, 128, stages=2), 256: FwdSm90Tiles(128, 64, stages=2)}


#: A bf16 forward whose only score modifier is a softcap with softcap * log2(e) at most this takes the
#: softmax at one fixed offset (FwdSm90Spec.fixed_offset; kernels_cu/common/softmax.cuh SOFTMAX_FIXED and
#: its FIXED_OFFSET_FLOOR): its scores are bounded, so no running max and no rescale of O. Up to softcap
#: ~51.3 (Gemma 2's 50 included) P stays within [2^-124, 2^24].
FIXED_OFFSET_LOG2_MAX = 74.0
#: log2(e): the kernels' exp2 multiply is softmax_scale * LOG2E (api.Options.fields).
LOG2E = 1.4426950408889634


def fixed_offset(dtype: str, features: "Features", softcap: float) -> bool:
    """Whether a forward of these features and softcap value (0: none) takes FwdSm90Spec.fixed_offset:
    bf16 (fp16's P would lose the small terms), a softcap and no ALiBi or bias (unbounded terms), and
    softcap * log2(e) <= FIXED_OFFSET_LOG2_MAX. Not with dropout: the row sums are taken from P as
    packed for P V (softmax.cuh pack_p), which dropout has changed by then."""
    return (dtype == "bf16" and features.softcap_alone and not features.dropout
            and 0 < softcap * LOG2E <= FIXED_OFFSET_LOG2_MAX)


def long_rows(features: "Features", head_dim: int, seqlen_q: int) -> bool:
    """Whether a forward of seqlen_q query rows takes FwdSm90Spec.long_rows: dense, no mask or
    causal, more than FWD_SM90_PERSISTENT_ROWS rows, a head dim of FWD_SM90_LONG_ROWS_HEAD_DIMS."""
    return (not features.varlen and features.mask in ("none", "causal") and seqlen_q > FWD_SM90_PERSISTENT_ROWS
            and head_dim_bucket(head_dim) in FWD_SM90_LONG_ROWS_HEAD_DIMS)


def short_causal(features: "Features", head_dim: int, seqlen_q: int) -> bool:
    """Whether a forward of seqlen_q query rows (varlen: the longest; 0 when unknown) takes
    FWD_SM90_SHORT_CAUSAL_TILES: causal, and at most FWD_SM90_SHORT_CAUSAL[head dim] rows."""
    return features.mask == "causal" and 0 < seqlen_q <= FWD_SM90_SHORT_CAUSAL.get(head_dim_bucket(head_dim), 0)


@dataclass(frozen=True)
class FwdSm90Spec(AttentionSpec):
    """The Hopper (sm_90a, wgmma) forward kernel in kernels_cu/fwd_sm90.cu."""

    tiles: FwdSm90Tiles
    #: A local mask of at most FWD_SM90_PERSISTENT_BAND keys per query (for_problem): on the
    #: warp-specialised kernel, the persistent grid.
    short_band: bool = False
    #: A dense call of more than FWD_SM90_PERSISTENT_ROWS query rows (for_problem): one CTA per
    #: tile where the kernel would otherwise run on the persistent grid.
    long_rows: bool = False
    #: A causal call of few query rows (for_problem, short_causal()) at a head dim whose kernels run
    #: one CTA per tile: its FWD_SM90_SHORT_CAUSAL_TILES on the persistent grid (d256).
    short_causal: bool = False
    #: bf16 scores bounded by a softcap alone (for_problem, fixed_offset()): the softmax at one
    #: constant offset, no running max and no rescale of O (bench/NOTES.md s4).
    fixed_offset: bool = False
    #: A staged 16-bit bias of one row per (batch, head) (row stride 0: a per-key bias; for_problem),
    #: above FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM: the kernel adds it with bias_tile.cuh add_row alone.
    bias_per_key: bool = False

    @property
    def softcap_folded(self) -> bool:
        # d64 measured 8% slower folded (bench/NOTES.md s2), but the fixed offset needs it (C = c)
        return self.features.softcap_alone and (self.head_dim > 64 or self.fixed_offset)

    entry = "cuflash_fwd_sm90"
    #: wgmma exists only in sm_90a code, which runs only on compute capability 9.0.
    arch_suffix = "a"
    compute_capabilities = ((9, 0),)

    def __post_init__(self):
        super().__post_init__()
        t = self.tiles
        if t.block_m % 64 or not 64 <= t.block_m <= 256:
            raise ValueError(f"block_m must be 64, 128, 192 or 256, got {t}")
        # wgmma's N (wgmma.cuh wgmma_ss): a multiple of 32, or on the warp-specialised kernel one of WGMMA_EXTRA_N.
        n_ok = t.block_n % 32 == 0 or (t.stages and t.block_n in WGMMA_EXTRA_N)
        if not n_ok or not 32 <= t.block_n <= 256:
            raise ValueError(f"block_n must be a multiple of 32 in [32, 256] (with stages, or one of "
                             f"{WGMMA_EXTRA_N}), got {t}")
        if t.ctas_per_sm not in (1, 2, 3, 4):
            raise ValueError(f"ctas_per_sm must be 1 to 4, got {t}")
        if t.stages and (t.stages < 2 or t.ctas_per_sm != 1 or t.block_m > 192):
            raise ValueError(f"a warp-specialised tile has 2 or more stages, one CTA per SM and at most "
                             f"three consumer warpgroups, got {t}")
        if t.stages and self.features.bias and (self.features.bias != 16 or self.features.varlen or t.block_n % 64):
            raise ValueError(f"the warp-specialised kernel stages a dense 16-bit bias in key blocks of a multiple "
                             f"of 64 (kernels_cu/common/bias_tile.cuh), got {t} with {self.features}")
        if self.short_band and self.features.mask != "local":
            raise ValueError("short_band is a property of a local mask")
        if self.long_rows and (self.features.varlen or self.features.mask not in ("none", "causal")):
            raise ValueError("long_rows is a property of a dense call without a band")
        if self.short_causal and (self.features.mask != "causal" or self.long_rows):
            raise ValueError("short_causal is a property of a causal call of few rows")
        if self.fixed_offset and not fixed_offset(self.dtype, self.features, 1.0):
            raise ValueError("fixed_offset needs bf16 scores bounded by a softcap alone, without dropout")
        if self.bias_per_key and not (self.stages_bias and self.head_dim > FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM):
            raise ValueError("bias_per_key is a property of a bias the warp-specialised kernel stages, "
                             f"above d = {FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM}")

    @property
    def stages_bias(self) -> bool:
        """The warp-specialised kernel stages this spec's bias in shared memory (bias_tile.cuh)."""
        return bool(self.features.bias and self.tiles.stages)

    @property
    def bias_row_branch(self) -> bool:
        """The kernel's staged bias is added by add_row where its row stride is 0 (a per-key bias) and
        by add otherwise, a run-time branch: at head dims up to FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM, where
        no per-key kernel of its own (bias_per_key) is declared."""
        return self.stages_bias and not self.bias_per_key and self.head_dim <= FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM

    @property
    def source(self) -> str:
        return "fwd_sm90_ws.cu" if self.tiles.stages else "fwd_sm90.cu"

    @classmethod
    def for_problem(cls, dtype: str, head_dim: int, features: Features = PLAIN, band: int = 0,
                    short: bool = False, long: bool = False, fixed: bool = False,
                    per_key: bool = False) -> "FwdSm90Spec":
        """band: keys per query of a local mask bounded on both sides (left + right + 1; 0 when a
        side is unbounded): up to FWD_SM90_NARROW_BAND[head dim] the narrow tiles, else up to
        FWD_SM90_PERSISTENT_BAND the persistent grid where the tiles have one. short: the call's
        query rows are few enough for FWD_SM90_SHORT_CAUSAL_TILES (short_causal()). long: many
        enough for one CTA per tile (long_rows()). fixed: the softmax at a fixed offset
        (fixed_offset()). per_key: the bias has one row per (batch, head) (bias_per_key, where
        the kernel stages it and the head dim is above FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM)."""
        d = head_dim_bucket(head_dim)
        band = band if features.mask == "local" else 0
        tiles = FWD_SM90_TILES[d]
        if 0 < band <= FWD_SM90_NARROW_BAND.get(d, 0):
            tiles = FWD_SM90_NARROW_TILES[d]
        if short:
            tiles = FWD_SM90_SHORT_CAUSAL_TILES[d]
        spec = cls(dtype, d, features, tiles.with_features(features, d), fixed_offset=fixed)
        if per_key and spec.stages_bias and d > FWD_SM90_BIAS_ROW_BRANCH_HEAD_DIM:
            spec = replace(spec, bias_per_key=True)
        if 0 < band <= FWD_SM90_PERSISTENT_BAND and replace(spec, short_band=True).persistent:
            spec = replace(spec, short_band=True)
            if spec.tiles.warpgroups == 3:
                # three consumer warpgroups (d32, d64) on the persistent band grid: d64's spilled 4
                # bytes with the fixed offset's folded softcap (NVRTC 12.9), so they keep the running max
                spec = replace(spec, fixed_offset=False)
        if short and d not in FWD_SM90_PERSISTENT_HEAD_DIMS:
            # Short tiles at a head dim off the persistent grid were measured on it only (d256): where
            # a feature keeps the kernel off it (ALiBi, dropout), the call keeps the head dim's tiles.
            spec = replace(spec, short_causal=True)
            if not spec.persistent:
                return cls.for_problem(dtype, d, features, band, long=long, fixed=fixed, per_key=per_key)
        if long and spec.persistent:
            spec = replace(spec, long_rows=True)
        return spec

    @property
    def threads(self) -> int:
        return 128 * (self.tiles.warpgroups + (1 if self.tiles.stages else 0))

    @property
    def q_buffers(self) -> int:
        """Q buffers of the warp-specialised kernel: on a persistent grid two where they fit Hopper's
        227 KB beside the K/V ring (the producer loads the next tile's Q while the consumers finish
        this one), else one."""
        return 2 if self.persistent and self.ws_smem_bytes(2) <= SM90_SMEM_PER_BLOCK else 1

    def ws_smem_bytes(self, q_buffers: int, listed_seqs: int | None = None) -> int:
        """Dynamic shared memory of kernels_cu/fwd_sm90_ws.cu with `q_buffers` Q buffers: those and
        t.stages stages of K and V (swizzled rows of D), 1 KB so the kernel can align the tiles to
        1024 bytes, its mbarriers (2 per Q buffer + 4 per stage, 8 bytes each), with a bias t.stages
        bias tiles (block_m x block_n, 16-bit) and 2 mbarriers per stage, with sums_by_mma the ones
        after each V slot, and on a varlen persistent grid its tile list (`listed_seqs`, by default
        the spec's)."""
        t = self.tiles
        if listed_seqs is None:
            listed_seqs = self.listed_seqs
        bias = self.features.bias == 16  # a ring of 16-bit bias tiles (block_m, block_n) and its 2 barriers a slot
        ones = t.stages * t.block_n * 128 if self.sums_by_mma else 0  # a column block of ones after each V slot
        return ((q_buffers * t.block_m + 2 * t.stages * t.block_n) * self.head_dim * 2 + 1024 + ones
                + 8 * (2 * q_buffers + (6 if bias else 4) * t.stages)
                + (t.stages * t.block_m * t.block_n * 2 if bias else 0)
                + 8 * (listed_seqs + 1 if listed_seqs else 0))

    @property
    def sums_by_mma(self) -> bool:
        """The warp-specialised kernel takes each row's sum of P from its P V product, whose B
        operand is V followed by 8 columns of ones (N = D + 8), instead of adding P per score:
        at FWD_SM90_SUMS_BY_MMA_HEAD_DIMS, without dropout (l sums P before the drop) or a bias
        (its staged tiles leave no room for the ones). Varlen too, with a shorter tile list
        (listed_seqs), so that a batch of equal lengths gives the dense call's bits."""
        return (bool(self.tiles.stages) and self.head_dim in FWD_SM90_SUMS_BY_MMA_HEAD_DIMS
                and not self.features.dropout and not self.features.bias)

    @property
    def exp2_fma_of_8(self) -> int:
        """How many of every 8 exponentials of a row the warp-specialised kernel takes on the FMA pipe
        instead of the SFU: FWD_SM90_EXP2_FMA_OF_8 in the softmax at a fixed offset (a softcap's tanh
        beside every exp2 on the SFU) up to FWD_SM90_EXP2_FMA_HEAD_DIM, else 0 (elsewhere the step is
        issue-bound as much as SFU-bound, or the products hide the SFU)."""
        shared_sfu = self.fixed_offset and self.head_dim <= FWD_SM90_EXP2_FMA_HEAD_DIM
        return FWD_SM90_EXP2_FMA_OF_8 if shared_sfu and self.tiles.stages else 0

    @cached_property
    def listed_seqs(self) -> int:
        """The most sequences of a varlen batch whose tiles the persistent grid walks from a list:
        FWD_SM90_LISTED_SEQS, or with the ones of sums_by_mma as many as fit beside two Q buffers
        (a multiple of 16; d128: 240); 0 off the varlen persistent grid. Computed once per spec
        (each launch asks for it, fwd_grid)."""
        if not (self.persistent and self.features.varlen):
            return 0
        if not self.sums_by_mma:
            return FWD_SM90_LISTED_SEQS
        room = (SM90_SMEM_PER_BLOCK - self.ws_smem_bytes(2, listed_seqs=0)) // 8 - 1  # 8 (seqs + 1) bytes
        return min(FWD_SM90_LISTED_SEQS, room // 16 * 16)

    def lists_tiles(self, batch: int, seqlen_q: int) -> bool:
        """Whether a varlen batch of `batch` sequences, the longest seqlen_q rows, walks the tile
        list (kernels_cu/fwd_sm90_ws.cu TileList.listed: the same test)."""
        return bool(self.listed_seqs) and batch <= self.listed_seqs and seqlen_q <= FWD_SM90_LISTED_ROWS

    @property
    def persistent(self) -> bool:
        """The warp-specialised kernel on a persistent grid (one CTA per SM walking the tiles, so a
        tile's Q load and first K/V blocks overlap the previous tile's last products and epilogue):
        where a static round-robin of the tiles keeps the CTAs equally busy: no mask (every tile does
        the same work), causal (tiles dealt in pairs of equal work: `paired`) and a short band (only
        a few tiles at the start of a row see fewer keys: `short_band`), each also varlen (the grid
        walks a list of the sequences' tiles, not the rectangle of max_seqlen_q rows each:
        `listed_seqs`). Wider windows' tiles differ in work, and the hardware's dispatch of one CTA
        per tile balances them. Only for FWD_SM90_PERSISTENT_HEAD_DIMS (measured) and the short
        causal tiles of the others (short_causal: d256). Not with ALiBi or dropout: their per-tile
        state beside the tile loop's spilled the consumers (d128 ALiBi: 84 bytes, NVRTC 12.9 and 13.5).
        Causal on three consumer warpgroups (192 rows, 160 registers each) spilled 100 bytes until
        the element mask took two bounds per row (mask.cuh Visibility.apply_rows; bench/NOTES.md v12).
        A bias keeps it where the producer's K/V copies roll beside the bias's (kv_rolled): at d160 and
        d192 the unrolled ones spilled its 56 registers (28-40 bytes, NVRTC 12.9)."""
        f, t = self.features, self.tiles
        return (bool(t.stages) and not self.long_rows and (f.mask in ("none", "causal") or self.short_band)
                and not f.alibi and not f.dropout and (not f.bias or self.kv_rolled)
                and (self.head_dim in FWD_SM90_PERSISTENT_HEAD_DIMS or self.short_causal))

    @property
    def kv_rolled(self) -> bool:
        """The warp-specialised producer's K/V copies by cp.async in a rolled loop (CUFLASH_KV_ROLLED):
        beside a bias, where its 128 threads cover block_n rows in whole rounds of 128 / (head_dim / 8)
        rows (not d96, d160, d192)."""
        return bool(self.features.bias) and self.tiles.block_n % (128 // (self.head_dim // 8)) == 0

    @property
    def paired(self) -> bool:
        """A persistent causal grid deals each head's tiles in pairs, its k-th heaviest query block
        with its k-th lightest (kernels_cu/fwd_sm90_ws.cu for_each_tile): one work unit per pair."""
        return self.persistent and self.features.mask == "causal"

    @property
    def name(self) -> str:
        t = self.tiles
        occupancy = f"c{t.ctas_per_sm}" if t.ctas_per_sm > 1 else ""
        ws = f"s{t.stages}" if t.stages else ""
        band = "p" if self.short_band or self.short_causal else ""  # persistent where the mask or head dim is not
        rows = "l" if self.long_rows else ""  # a long call, one CTA per tile
        fixed = "f" if self.fixed_offset else ""  # the softmax at a fixed offset
        key = "k" if self.bias_per_key else ""  # a per-key bias
        return (f"fwd90_{self.dtype}_d{self.head_dim}_{self.features.tag}_m{t.block_m}n{t.block_n}"
                f"{occupancy}{ws}{band}{rows}{fixed}{key}")

    def defines(self) -> dict[str, int]:
        t = self.tiles
        return {
            **super().defines(),
            "CUFLASH_BLOCK_M": t.block_m,
            "CUFLASH_BLOCK_N": t.block_n,
            "CUFLASH_CTAS_PER_SM": t.ctas_per_sm,
            "CUFLASH_SOFTMAX_FIXED": int(self.fixed_offset),
            "CUFLASH_BIAS_PER_KEY": int(self.bias_per_key),
            "CUFLASH_BIAS_ROW_BRANCH": int(self.bias_row_branch),
            "CUFLASH_SUMS_BY_MMA": int(self.sums_by_mma),
            "CUFLASH_EXP2_FMA_OF_8": self.exp2_fma_of_8,
            **({"CUFLASH_STAGES": t.stages, "CUFLASH_Q_BUFFERS": self.q_buffers,
                "CUFLASH_PERSISTENT": int(self.persistent), **({"CUFLASH_KV_ROLLED": 1} if self.kv_rolled else {}),
                **({"CUFLASH_LISTED_SEQS": self.listed_seqs, "CUFLASH_LISTED_ROWS": FWD_SM90_LISTED_ROWS}
                   if self.listed_seqs else {})} if t.stages else {}),
        }


# ---------------------------------------------------------------- backward


@dataclass(frozen=True)
class BwdTiles:
    """Tile shape and warp layouts of the backward kernel (kernels_cu/bwd.cu).

    block_m: query rows per step (Br); block_n: keys per CTA (Bc); warps per CTA.
    Each of the three products has its own warp grid:
      sdp_warps_n: warps along keys for S^T = K Q^T and dP^T = V dO^T (Bc x Br);
                   the other warps / sdp_warps_n split the Br queries.
      dkv_warps_n: warps along keys for dK and dV (Bc x D); the rest split D.
      dq_warps_m:  warps along queries for dQ (Br x D); the rest split D.
    dq_pass_dims: a warp computes its dQ tile in passes of this many columns
      (0: one pass), which bounds the live accumulator registers at large D.
    k_unroll: k16 steps per unrolled loop body of the products read from shared
      memory (0: fully unrolled). Full unrolling lets ptxas hoist ldmatrix
      loads far ahead, which exhausts the 255 registers at some shapes.
    k_ahead: in those rolled loops, load the next k-step's fragments before the
      current step's products (mma.cuh warp_product AHEAD; needs k_unroll > 0).
      Measured: d64's 128x128 tile +1.4-4% on the H100 and H200, d256's 64x64
      -0.5-1.2% (bench/NOTES.md pb2).
    dq_tested: dQ added with a bounds test per row and n8 tile (epilogue.cuh
      write_f32_tile with its tests) instead of whole blocks at constant offsets, for the
      tiles whose straight-line adds spill at 255 registers (float32 inputs always:
      BwdSpec.dq_tested; bench/NOTES.md pb1).
    Every warp tile must be a multiple of 16 in both dims. When sdp_warps_n ==
    dkv_warps_n == warps, each warp owns whole rows of P^T and dS^T and feeds
    them to dV/dK from registers (p_in_regs).
    """

    block_m: int
    block_n: int
    warps: int
    sdp_warps_n: int
    dkv_warps_n: int
    dq_warps_m: int
    dq_pass_dims: int = 0
    k_unroll: int = 0
    dq_tested: bool = False
    k_ahead: bool = False

    @property
    def p_in_regs(self) -> bool:
        return self.sdp_warps_n == self.warps and self.dkv_warps_n == self.warps

    def check(self, head_dim: int) -> None:
        """ValueError unless every warp tile is whole and a multiple of 16 for compile-time D = head_dim."""
        w = self.warps
        grids = {"sdp_warps_n": self.sdp_warps_n, "dkv_warps_n": self.dkv_warps_n, "dq_warps_m": self.dq_warps_m}
        for name, n in grids.items():
            if n <= 0 or w % n:
                raise ValueError(f"{name}={n} must divide warps={w}")
        tiles = {
            "S^T keys": (self.block_n, self.sdp_warps_n),
            "S^T queries": (self.block_m, w // self.sdp_warps_n),
            "dK/dV keys": (self.block_n, self.dkv_warps_n),
            "dK/dV dims": (head_dim, w // self.dkv_warps_n),
            "dQ queries": (self.block_m, self.dq_warps_m),
            "dQ dims": (head_dim, w // self.dq_warps_m),
        }
        for name, (extent, parts) in tiles.items():
            if extent % parts or (extent // parts) % 16:
                raise ValueError(f"{name}: {extent} split {parts} ways is not a multiple of 16 ({self})")
        if self.k_unroll < 0:
            raise ValueError(f"k_unroll must be >= 0 (0: full), got {self.k_unroll}")
        if self.k_ahead and not self.k_unroll:
            raise ValueError(f"k_ahead loads ahead in rolled k loops: it needs k_unroll > 0 ({self})")
        dims = self.dq_dims(head_dim)
        if self.dq_pass_dims and (self.dq_pass_dims % 16 or dims % self.dq_pass_dims):
            raise ValueError(f"dq_pass_dims={self.dq_pass_dims} must be a multiple of 16 dividing {dims} ({self})")

    def dq_dims(self, head_dim: int) -> int:
        """Columns of dQ per warp."""
        return head_dim // (self.warps // self.dq_warps_m)


# Tile shape per compile-time head dim D: FlashAttention-2's sm80 choices
# (d<=64: 128x128, d96/128: 64x128, d>128: 64x64; 8 warps; its per-product warp
# layouts). Each entry compiles without spills for sm_80 and sm_90a in every
# variant (fp16/bf16, causal or not, deterministic or not; tests/compile): 233-255
# registers. D = 224 and 256 unroll the k loops by 2 (full unrolling spills
# there). Shared memory 130-217 KB (launch.bwd_smem_bytes): fits Hopper's 227 KB; GPUs
# with less (A100 163 KB, RTX-class 99 KB) take BWD_TILES_SMALLER_SMEM where these do not fit.
# bench/tune_bwd.py times the alternatives against SDPA's flash backward.
BWD_TILES = {
    32: BwdTiles(128, 128, 8, 4, 4, 4, k_unroll=2),
    64: BwdTiles(128, 128, 8, 4, 4, 4, k_unroll=2, k_ahead=True),
    96: BwdTiles(64, 128, 8, 4, 4, 4),
    128: BwdTiles(64, 128, 8, 4, 4, 2, dq_tested=True),  # whole-block dQ adds spilled 12 B under NVRTC 13.5
    160: BwdTiles(64, 64, 8, 2, 4, 4),
    192: BwdTiles(64, 64, 8, 2, 2, 2),
    224: BwdTiles(64, 64, 8, 2, 4, 4, k_unroll=2),
    256: BwdTiles(64, 64, 8, 2, 2, 2, k_unroll=2),
}


#: Backward tiles for GPUs with less shared memory per block than Hopper's 227 KB
#: (A100: 163 KB; RTX 3090 / 4090 / 5090-class: 99 KB), best first, as (compile-time D,
#: tiles): a head dim whose own bucket has no tile that fits runs in a larger bucket (the
#: actual d is a run-time value). Each entry compiles without spills for sm_80 in bf16 and
#: fp16, causal or not, deterministic or not (tests/compile); shared memory in bytes beside
#: it (launch.bwd_smem_bytes; a bias adds up to 1 KB). Head dims above 160 have no portable backward within 99 KB.
BWD_TILES_SMALLER_SMEM = {
    32: [(32, BwdTiles(64, 128, 8, 4, 4, 4, k_unroll=2))],    # 78848
    64: [(64, BwdTiles(64, 128, 8, 4, 4, 4, k_unroll=2)),     # 107520
         (64, BwdTiles(64, 64, 8, 2, 4, 4, k_unroll=2))],     # 70656
    96: [(96, BwdTiles(64, 64, 8, 2, 4, 4, k_unroll=2))],     # 99328
    128: [(128, BwdTiles(64, 64, 8, 2, 4, 4, k_unroll=2)),    # 119808
          (128, BwdTiles(32, 64, 4, 4, 4, 2, k_unroll=2))],   # 73216
    160: [(160, BwdTiles(32, 64, 4, 4, 4, 2, k_unroll=2))],   # 91648
    192: [(192, BwdTiles(32, 64, 8, 4, 4, 2, k_unroll=2))],   # 111104
    224: [(256, BwdTiles(32, 64, 8, 4, 4, 2, k_unroll=2))],   # 143872 (no 8-warp tile of D = 224 fits)
    256: [(256, BwdTiles(32, 64, 8, 4, 4, 2, k_unroll=2))],   # 143872
}


#: Backward tiles for float32 inputs per compile-time D, best first (Hopper's 227 KB, then
#: A100's 163 KB, then 99 KB GPUs). Up to D = 128 every warp owns whole key rows (P^T and
#: dS^T feed dV and dK from registers); above, dK/dV split d across warps and P^T goes
#: through shared memory. D >= 160 fits no 99 KB GPU, D >= 224 no A100. Every entry compiles
#: without spills for sm_80 and sm_90a (the 4-warp 32 x 64 tiles of D = 96 and 128 spilled
#: 4-32 bytes, hence the 16-row ones).
BWD_TILES_FP32 = {
    32: [BwdTiles(32, 64, 4, 4, 4, 2, k_unroll=2)],                       # 46592
    64: [BwdTiles(32, 64, 4, 4, 4, 2, k_unroll=2)],                       # 79360
    96: [BwdTiles(16, 32, 2, 2, 2, 1, k_unroll=2)],                       # 54016
    128: [BwdTiles(32, 128, 8, 8, 8, 2, k_unroll=2), BwdTiles(16, 64, 4, 4, 4, 1, k_unroll=2),  # 221696, 106752
          BwdTiles(16, 32, 2, 2, 2, 1, 32, k_unroll=2)],                                     # 70400
    160: [BwdTiles(32, 32, 4, 2, 2, 2, k_unroll=2)],      # 135680
    192: [BwdTiles(32, 32, 4, 2, 2, 2, 32, k_unroll=2)],  # 160256
    224: [BwdTiles(32, 32, 4, 2, 2, 2, 16, k_unroll=2)],  # 184832
    256: [BwdTiles(32, 32, 4, 2, 2, 2, 16, k_unroll=1)],  # 209408 (32-column dQ passes spilled 4-8 B under NVRTC 13.5)
}


#: Portable tile lists that replace the ones above on one arch class, keyed by compute capability
#: major, then (direction, dtype kind "16-bit" or "fp32", head dim bucket), as (compile-time D,
#: tiles), best first (support.portable_candidates; cache.builds_for builds each list for its own
#: arch class only). Compile-only choices, not yet timed on such a GPU:
#: 10 (B200 / B300, sm_100, 227 KB): ptxas for sm_100 spills the 227 KB 16-bit backward tiles of
#:   d128 (4-60 bytes under NVRTC 12.9 and 13.5) and d192 (20-24, 12.9), so they take A100's 163 KB
#:   ones; float32's backward spills at d96 (4-8 bytes, 13.5) and at d128 in each listed tile, so d96
#:   unrolls its k loops once and d128 takes a 154 KB tile that A100 would fit too. The 16-bit
#:   backward at d96 and d160 keeps its tile but unrolls its k loops by 2: fully unrolled, sm_100's
#:   ptxas spends 70-107 s on each of those kernels (about 1 s unrolled by 2, and on every other
#:   arch either way), the larger part of a B200 user's first compile and of CI's compile tier.
#:   The 16-bit d256 tile adds dQ with bounds tests there (dq_tested: its whole-block adds spilled
#:   4 bytes under NVRTC 13.0 on sm_100, bench/NOTES.md pb1).
#:   All clean under 12.9, 13.0 and 13.5 (bench/NOTES.md g1, g2, g3, g4).
ARCH_CLASS_TILES = {
    10: {
        ("bwd", "16-bit", 96): [(96, replace(BWD_TILES[96], k_unroll=2))] + BWD_TILES_SMALLER_SMEM[96],
        ("bwd", "16-bit", 128): BWD_TILES_SMALLER_SMEM[128],
        ("bwd", "16-bit", 160): [(160, replace(BWD_TILES[160], k_unroll=2))] + BWD_TILES_SMALLER_SMEM[160],
        ("bwd", "16-bit", 192): BWD_TILES_SMALLER_SMEM[192],
        ("bwd", "16-bit", 256): [(256, replace(BWD_TILES[256], dq_tested=True))] + BWD_TILES_SMALLER_SMEM[256],
        ("bwd", "fp32", 96): [(96, replace(t, k_unroll=1)) for t in BWD_TILES_FP32[96]],
        ("bwd", "fp32", 128): [(128, BwdTiles(32, 64, 4, 2, 2, 2, 32, k_unroll=2))],  # 154112
    },
}


@dataclass(frozen=True)
class BwdSpec(AttentionSpec):
    """The portable (mma.sync) backward kernel in kernels_cu/bwd.cu."""

    deterministic: bool  # dQ added in key-block order (bitwise reproducible)
    tiles: BwdTiles
    swizzled_dq_accum = False  # its columns in order (BwdSm90Spec.swizzled_dq_accum)
    dq_accum_pad = 0  # its rows D floats apart (BwdSm90Spec.dq_accum_pad)

    source = "bwd.cu"
    entry = "cuflash_bwd"

    def __post_init__(self):
        super().__post_init__()
        self.tiles.check(self.head_dim)

    @classmethod
    def for_problem(cls, dtype: str, head_dim: int, features: Features = PLAIN, deterministic: bool = False) -> "BwdSpec":
        d = head_dim_bucket(head_dim)
        return cls(dtype, d, features, bool(deterministic), BWD_TILES[d])

    @property
    def threads(self) -> int:
        return 32 * self.tiles.warps

    @property
    def name(self) -> str:
        t = self.tiles
        det = "_det" if self.deterministic else ""
        passes = f"p{t.dq_pass_dims}" if t.dq_pass_dims else ""
        return (f"bwd_{self.dtype}_d{self.head_dim}_{self.features.tag}{det}_m{t.block_m}n{t.block_n}w{t.warps}"
                f"s{t.sdp_warps_n}k{t.dkv_warps_n}q{t.dq_warps_m}{passes}u{t.k_unroll}{'a' if t.k_ahead else ''}"
                f"{'t' if t.dq_tested else ''}")

    @property
    def dq_tested(self) -> bool:
        """dQ added with bounds tests (BwdTiles.dq_tested): the tile says so, or float32 inputs, whose
        Hopper-sized tiles spilled 4-28 bytes with whole-block adds (bench/NOTES.md pb1)."""
        return self.tiles.dq_tested or self.dtype == "fp32"

    def defines(self) -> dict[str, int]:
        t = self.tiles
        return {
            **super().defines(),
            "CUFLASH_BLOCK_M": t.block_m,
            "CUFLASH_BLOCK_N": t.block_n,
            "CUFLASH_WARPS": t.warps,
            "CUFLASH_SDP_WARPS_N": t.sdp_warps_n,
            "CUFLASH_DKV_WARPS_N": t.dkv_warps_n,
            "CUFLASH_DQ_WARPS_M": t.dq_warps_m,
            "CUFLASH_DQ_PASS_DIMS": t.dq_pass_dims or t.dq_dims(self.head_dim),
            "CUFLASH_K_UNROLL": t.k_unroll,
            "CUFLASH_K_AHEAD": int(t.k_ahead),
            "CUFLASH_DQ_TESTED": int(self.dq_tested),
            "CUFLASH_DETERMINISTIC": int(self.deterministic),
        }


@dataclass(frozen=True)
class BwdSm90Tiles:
    """Tile shape of the Hopper backward: block_m queries per step, block_n
    keys per CTA (64 per warpgroup; 64 shared by both warpgroups when
    split_d, where they split the columns of dK and dV instead). stages > 0
    selects the warp-specialised kernel (kernels_cu/bwd_sm90_ws.cu: a producer
    warpgroup beside two consumers, a ring of `stages` Q/dO slots); 0 the
    kernel whose warpgroups all load and compute (bwd_sm90.cu). pingpong: the
    warp-specialised consumers take turns, one recomputing P^T and dS^T while the
    other's products run (four dS^T buffers, two dQ buffers, three slots; bench/NOTES.md
    b5); otherwise they meet at a barrier every block."""

    block_m: int
    block_n: int
    warps: int = 8
    stages: int = 0
    pingpong: bool = False

    @property
    def split_d(self) -> bool:
        return self.block_n == 64

    @property
    def buffers(self) -> tuple[int, int]:
        """(dS^T buffers, fp32 dQ buffers) of the warp-specialised kernel (its DS_BUFFERS, DQ_BUFFERS)."""
        return (4, 2) if self.pingpong else (2, 1)


#: Compile-time head dims the Hopper backward has (d <= 128: each warpgroup
#: holds dK and dV of 64 keys x D; d = 256: half the columns); other head
#: dims use the portable backward.
BWD_SM90_HEAD_DIMS = (64, 128, 256)


@dataclass(frozen=True)
class BwdSm90Spec(AttentionSpec):
    """The Hopper (sm_90a, wgmma) backward: kernels_cu/bwd_sm90_ws.cu (warp-specialised)
    for head dims 64 and 128, kernels_cu/bwd_sm90.cu for d = 256 (it splits the columns
    of dK and dV between the warpgroups, which the warp-specialised consumers do not) and
    where a feature's registers do not fit the warp-specialised consumers (`tiles`)."""

    deterministic: bool

    @property
    def softcap_folded(self) -> bool:
        return self.features.softcap_alone

    entry = "cuflash_bwd_sm90"
    arch_suffix = "a"
    compute_capabilities = ((9, 0),)

    def __post_init__(self):
        super().__post_init__()
        if self.head_dim not in BWD_SM90_HEAD_DIMS:
            raise ValueError(f"the Hopper backward has head dims {BWD_SM90_HEAD_DIMS}, got {self.head_dim}")

    @property
    def tiles(self) -> BwdSm90Tiles:
        if self.head_dim > 128:
            return BwdSm90Tiles(64, 64)
        # The warp-specialised consumers have 232 registers: a bias's loads from global memory, and
        # dropout's Philox rounds beside d = 128's accumulators, spilled there (NVRTC 12.9). At d = 64 a
        # 16-bit dense bias without softcap is staged in shared memory instead (bias_stages). At d = 128
        # the lockstep consumers still spill with it (24-92 bytes, NVRTC 12.9): dbias's writes from
        # registers, not the staged loads (without dbias's writes they compile clean). A float32 or varlen
        # bias, or one beside softcap (whose derivative reads the bias again), keeps bwd_sm90.cu too.
        f = self.features
        staged_bias = f.bias == 16 and not f.varlen and not f.softcap and self.head_dim == 64
        if (f.bias and not staged_bias) or (f.dropout and self.head_dim == 128):
            return BwdSm90Tiles(64, 128)
        if self.head_dim == 64:
            return BwdSm90Tiles(64, 128, warps=12, stages=3, pingpong=True)
        return BwdSm90Tiles(64, 128, warps=12, stages=2)

    @property
    def source(self) -> str:
        return "bwd_sm90_ws.cu" if self.tiles.stages else "bwd_sm90.cu"

    @property
    def bias_stages(self) -> int:
        """Bias tiles (64 queries x 128 keys, 16-bit) in flight in bwd_sm90_ws.cu (CUFLASH_BIAS_STAGES):
        two beside the ping-pong consumers (d64, 227 KB holds them; the kernel also takes one, which the
        consumers free early in a block's recompute, for tiles where two would not fit); 0 without a
        staged bias."""
        return 2 if self.tiles.stages and self.features.bias else 0

    @property
    def swizzle_atom(self) -> int:
        """Columns of the swizzle atom of the kernel's tiles (bwd_sm90_ws.cu: CUFLASH_SWIZZLE_ATOM;
        bwd_sm90.cu computes the same AW): each warpgroup's half of D (its dQ columns) starts on an
        atom, so 64 where D / 2 is a multiple of 64 (d128, d256), else 32 (d64). TMA boxes are one
        atom wide (cuflash/tma.py)."""
        return tma.atom_columns(self.head_dim // 2)

    @property
    def swizzled_dq_accum(self) -> bool:
        """dq_accum's row r holds its 8-column group c at c ^ 8 (r % 8) (DQ_SWIZZLE: dQ stored to
        shared memory free of bank conflicts, by bwd_sm90_ws.cu's ping-pong consumers and by
        bwd_sm90.cu); the lockstep consumers pad the rows instead (dq_accum_pad)."""
        return self.tiles.pingpong or not self.tiles.stages

    @property
    def dq_accum_pad(self) -> int:
        """Floats after the D of each dq_accum row: the lockstep consumers' dQ buffer has rows of
        D + 8 floats, which the bulk reductions copy verbatim into dq_accum (bwd_sm90_ws.cu
        DQ_ROW: their dQ stores free of bank conflicts without the swizzle's register)."""
        return 8 if self.tiles.stages and not self.tiles.pingpong else 0

    @property
    def threads(self) -> int:
        return 32 * self.tiles.warps

    @property
    def name(self) -> str:
        det = "_det" if self.deterministic else ""
        ws = f"_s{self.tiles.stages}{'p' if self.tiles.pingpong else ''}" if self.tiles.stages else ""
        return f"bwd90_{self.dtype}_d{self.head_dim}_{self.features.tag}{det}{ws}"

    def defines(self) -> dict[str, int]:
        t = self.tiles
        return {
            **super().defines(),
            "CUFLASH_BLOCK_N": t.block_n,
            "CUFLASH_DETERMINISTIC": int(self.deterministic),
            **({"CUFLASH_STAGES": t.stages, "CUFLASH_PINGPONG": int(t.pingpong), "CUFLASH_DQ_PAD": self.dq_accum_pad,
                "CUFLASH_SWIZZLE_ATOM": self.swizzle_atom} if t.stages else {}),
            **({"CUFLASH_BIAS_STAGES": self.bias_stages} if self.bias_stages else {}),
        }


@dataclass(frozen=True)
class BwdPrepareSpec(KernelSpec):
    """kernels_cu/bwd_prepare.cu: delta = rowsum(dO * O) (- dlse), lse in the exp2 domain, zeroed dQ accumulator."""

    source = "bwd_prepare.cu"
    entry = "cuflash_bwd_prepare"
    threads = 256
    rows_per_cta = 64  # PREP_ROWS in the kernel
    varlen: bool = False  # rows of each sequence from cu_seqlens_q

    @property
    def name(self) -> str:
        return super().name + ("_varlen" if self.varlen else "")

    def defines(self) -> dict:
        return {**super().defines(), "CUFLASH_VARLEN": int(self.varlen)}


@dataclass(frozen=True)
class BwdConvertSpec(KernelSpec):
    """kernels_cu/bwd_convert.cu: fp32 accumulators (summed over a GQA group) -> the input dtype."""

    source = "bwd_convert.cu"
    entry = "cuflash_bwd_convert"
    threads = 256


@dataclass(frozen=True)
class KvAppendSpec(KernelSpec):
    """kernels_cu/kvcache_append.cu: new k, v written into a KV cache at each row's position."""

    source = "kvcache_append.cu"
    entry = "cuflash_kvcache_append"
    threads = 256


@dataclass(frozen=True)
class DecodeTiles:
    """Tile shape of the split-KV decode (kernels_cu/decode.cu): 16 folded query rows per CTA;
    each of `warps` warps streams key blocks of `block_n` keys through its own ring of
    `stages` shared-memory K/V buffers."""

    block_n: int
    warps: int
    stages: int


#: Decode tiles per compile-time head dim, best first; launch.decode_smem_bytes decides which fit
#: a GPU: for D <= 128 twelve warps with two stages on H100/H200 (197 KB at D = 128), four with
#: three on A100 (100 KB), four with two on 99 KB GPUs. Measured on the H200 (GQA 32/8, d128,
#: TB/s of K+V read at 64 x 8k / 8 x 32k / 1 x 128k contiguous, 8 x 32k in pages of 16 and of 1;
#: kernels_cu/dev/decode_tune.py, swizzled rings): 12 warps x 2 stages 4.26 / 4.07 / 3.68 / 3.93
#: / 3.79, 8 x 3 4.27 / 4.05 / 3.70 / 3.84 / 3.18, 4 x 3 (two CTAs per SM) 4.29 / 4.07 / 3.60 /
#: 3.95 / 3.30; fewer warps per SM with more stages, and block_n 32, were slower. A warp's
#: blocks are latency-bound: what counts is warps per SM, not bytes in flight. (d > 128: twelve
#: warps spill at 168 registers.)
DECODE_TILES = {
    d: [DecodeTiles(16, 12, 2), DecodeTiles(16, 8, 3), DecodeTiles(16, 4, 3), DecodeTiles(16, 4, 2)] if d <= 128
    else [DecodeTiles(16, 4, 2), DecodeTiles(16, 2, 2)]
    for d in range(HEAD_DIM_BUCKET, 257, HEAD_DIM_BUCKET)
}

#: Decode tiles first for calls of at least as many CTAs per split (batch x kv heads x blocks of 16
#: folded rows) as the GPU has SMs (support.Problem.many_units): two 4-warp CTAs per SM, so that one
#: CTA's prologue and merge overlap the other's streaming. Measured on the H200 (cuflash bench --mode
#: decode, twice each, TB/s, 12 x 2 against 4 x 3): 64 x 2k 3.58-3.59 / 3.86-3.89, 32 x 8k 4.19-4.20 /
#: 4.21-4.22, 64 x 8k 4.37 / 4.37-4.39; with fewer rows 12 x 2 stays ahead (8 x 32k 4.22-4.23 / 4.16-4.17,
#: 1 x 128k 3.84-3.86 / 3.76-3.77), and over pages of one key (64 x 8k 3.92 / 3.37: launch.
#: DECODE_MANY_UNITS_MIN_PAGE).
DECODE_TILES_MANY_UNITS = {d: [DecodeTiles(16, 4, 3)] for d in DECODE_TILES if d <= 128}


@dataclass(frozen=True)
class DecodeSpec(AttentionSpec):
    """The split-KV decode kernel over a KV cache (kernels_cu/decode.cu): every mask kind and
    modifier, contiguous or paged caches (a run-time choice); no varlen switch (each batch
    row's key count comes from seqused_k)."""

    tiles: DecodeTiles

    source = "decode.cu"
    entry = "cuflash_decode"

    def __post_init__(self):
        super().__post_init__()
        if self.features.varlen:
            raise ValueError("the decode kernel takes each row's key count from seqused_k, not cu_seqlens")
        if self.tiles.block_n % 16 or self.tiles.stages < 2:
            raise ValueError(f"decode tiles need block_n % 16 == 0 and stages >= 2, got {self.tiles}")

    @property
    def threads(self) -> int:
        return 32 * self.tiles.warps

    @property
    def name(self) -> str:
        t = self.tiles
        return f"decode_{self.dtype}_d{self.head_dim}_{self.features.tag}_n{t.block_n}w{t.warps}s{t.stages}"

    def defines(self) -> dict[str, int]:
        t = self.tiles
        return {**super().defines(), "CUFLASH_BLOCK_N": t.block_n, "CUFLASH_WARPS": t.warps,
                "CUFLASH_STAGES": t.stages}
