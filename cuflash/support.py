"""What cuflash supports, declared once as data.

The validation in api.py and the test grids in tests/ both read these tables,
so a capability is added in one place.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .specs import (
    ARCH_CLASS_TILES,
    BWD_SM90_HEAD_DIMS,
    BWD_TILES,
    BWD_TILES_FP32,
    BWD_TILES_SMALLER_SMEM,
    BwdConvertSpec,
    BwdPrepareSpec,
    BwdSm90Spec,
    BwdSpec,
    CAUSAL,
    DECODE_TILES,
    DECODE_TILES_MANY_UNITS,
    DTYPES,
    DecodeSpec,
    FWD_SM90_PERSISTENT_BAND,
    FWD_SM90_PERSISTENT_ROWS,
    FWD_SM90_TILES,
    FWD_TILES,
    FWD_TILES_FP32,
    FWD_TILES_SMALLER_SMEM,
    Features,
    FwdSm90Spec,
    FwdSpec,
    HALF_DTYPES,
    KvAppendSpec,
    MASKS,
    MODIFIERS,
    PLAIN,
    SM90_SMEM_PER_BLOCK,
    fixed_offset,
    head_dim_bucket,
    long_rows,
    short_causal,
)

#: Input dtypes by name (numpy dtypes resolved in api.py).
SUPPORTED_DTYPES = tuple(DTYPES)
#: The dtypes `cuflash compile` builds by default; float32 kernels compile on first use
#: or with `cuflash compile --dtypes fp32`.
DEFAULT_DTYPES = HALF_DTYPES
#: Head dims: multiples of HEAD_DIM_MULTIPLE up to HEAD_DIM_MAX (16-byte rows).
HEAD_DIM_MULTIPLE = 8
HEAD_DIM_MAX = 256
#: Oldest GPU: compute capability 8.0 (mma.sync m16n8k16 with bf16, cp.async, ldmatrix).
MIN_COMPUTE_CAPABILITY = (8, 0)

#: Shared memory one block may opt in to, in bytes, per compute capability (CUDA C++
#: Programming Guide, technical specifications): the portable kernels' tiles are chosen
#: to fit it (api.py asks the device itself; this table serves `cuflash compile` and the tests).
SMEM_LIMITS = {
    (8, 0): 166912, (8, 7): 166912,                  # A100, A30, Orin: 163 KB
    (8, 6): 101376, (8, 9): 101376,                  # RTX 30xx/40xx, A10, L4, L40: 99 KB
    (9, 0): SM90_SMEM_PER_BLOCK, (10, 0): 232448, (10, 3): 232448,  # H100/H200, B200/B300: 227 KB
    (12, 0): 101376, (12, 1): 101376,                # RTX 50xx, DGX Spark: 99 KB
}
#: The least of them: what an unknown GPU is assumed to have.
SMEM_LIMIT_MIN = min(SMEM_LIMITS.values())
#: Archs `cuflash compile` and the compile tests build for by default.
COMPILE_ARCHS = ("sm_80", "sm_90a")

@dataclass(frozen=True)
class Family:
    """One kernel family: its spec class, where it runs and what it can do."""

    name: str
    spec: type
    direction: str  # "fwd" | "bwd" | "decode"
    compute_capabilities: tuple | None  # None: every GPU from MIN_COMPUTE_CAPABILITY
    head_dims: tuple  # compile-time head dims it has
    masks: tuple = tuple(MASKS)
    modifiers: tuple = MODIFIERS
    deterministic: bool = False  # has a bitwise reproducible mode
    varlen: bool = False  # has variable-length batches (cu_seqlens)
    dtypes: tuple = SUPPORTED_DTYPES  # input dtypes it has (float32: the portable 3xTF32 path)


#: The capability table (DESIGN 4b): validation, kernel selection, `cuflash
#: compile` and the test grids all read it. Listed best first: select() takes
#: the first family of a direction that runs on the GPU and supports the problem.
FAMILIES = (
    Family("fwd_sm90", FwdSm90Spec, "fwd", ((9, 0),), tuple(sorted(FWD_SM90_TILES)), varlen=True,
           dtypes=HALF_DTYPES),
    Family("fwd", FwdSpec, "fwd", None, tuple(sorted(FWD_TILES)), varlen=True),
    Family("bwd_sm90", BwdSm90Spec, "bwd", ((9, 0),), BWD_SM90_HEAD_DIMS, deterministic=True, varlen=True,
           dtypes=HALF_DTYPES),
    Family("bwd", BwdSpec, "bwd", None, tuple(sorted(BWD_TILES)), deterministic=True, varlen=True),
    Family("decode", DecodeSpec, "decode", None, tuple(sorted(DECODE_TILES)),
           modifiers=("softcap", "alibi", "sink"), dtypes=HALF_DTYPES),
)


@dataclass(frozen=True)
class Problem:
    """What kernel selection needs to know of a call (hashable: selection is memoised)."""

    direction: str  # "fwd" | "bwd" | "decode"
    dtype: str
    head_dim: int  # the actual head dim d
    features: Features = PLAIN
    compute_capability: tuple = (9, 0)
    band: int = 0  # keys per query of a local mask bounded on both sides, else 0 (FwdSm90Spec.for_problem)
    short_causal: bool = False  # a causal forward of few query rows (specs.short_causal)
    long_rows: bool = False  # a dense forward of many query rows (specs.long_rows)
    fixed_offset: bool = False  # bf16 scores bounded by a softcap alone (specs.fixed_offset)
    bias_per_key: bool = False  # a bias of one row per (batch, head): row stride 0 (FwdSm90Spec.bias_per_key)
    deterministic: bool = False
    sm90: bool = True  # False: CUFLASH_DISABLE_SM90=1
    smem_limit: int = SMEM_LIMITS[(9, 0)]  # shared memory per block the GPU allows (or the device's own)
    many_units: bool = False  # a decode of at least as many CTAs per split as SMs (specs.DECODE_TILES_MANY_UNITS)


def family_reasons(family: Family, problem: Problem) -> list[str]:
    """Why `family` cannot run `problem` (empty: it can)."""
    reasons = []
    if family.direction != problem.direction:
        reasons.append(f"{family.name} is a {family.direction} kernel")
    if family.compute_capabilities is not None:
        if tuple(problem.compute_capability) not in family.compute_capabilities:
            reasons.append(f"{family.name} runs on compute capability {family.compute_capabilities}")
        elif not problem.sm90:
            reasons.append(f"{family.name} is disabled (CUFLASH_DISABLE_SM90=1)")
    if problem.dtype not in family.dtypes:
        reasons.append(f"{family.name} has dtypes {family.dtypes}, not {problem.dtype}")
    if head_dim_bucket(problem.head_dim) not in family.head_dims:
        reasons.append(f"{family.name} has head dims {family.head_dims}, not {problem.head_dim}")
    f = problem.features
    if f.mask not in family.masks:
        reasons.append(f"{family.name} has no {f.mask} mask")
    reasons += [f"{family.name} has no {m}" for m in MODIFIERS if getattr(f, m) and m not in family.modifiers]
    if f.varlen and not family.varlen:
        reasons.append(f"{family.name} has no variable-length batches")
    if problem.deterministic and not family.deterministic:
        reasons.append(f"{family.name} has no deterministic mode")
    if not reasons and family.spec in (FwdSpec, BwdSpec, DecodeSpec) and _spec_for(family, problem) is None:
        reasons.append(f"{family.name} has no tiles for head dim {problem.head_dim} within this GPU's "
                       f"{problem.smem_limit} bytes of shared memory per block (a smaller head dim runs)")
    return reasons


def not_supported_reasons(problem: Problem) -> list[str]:
    """Why no family can run `problem` (empty: one can): each family's reasons."""
    per_family = [family_reasons(f, problem) for f in FAMILIES if f.direction == problem.direction]
    if any(not r for r in per_family):
        return []
    return [r for rs in per_family for r in rs]


@functools.lru_cache(maxsize=None)
def select(problem: Problem):
    """The spec of the best family that runs `problem`: the Hopper kernels on
    compute capability 9.0 where they have the head dim and features, else the
    portable ones. ValueError (with every reason) when none can. Memoised: a
    call pays for the selection once per distinct problem (DESIGN 4c)."""
    for family in FAMILIES:
        if family.direction == problem.direction and not family_reasons(family, problem):
            return _spec_for(family, problem)
    raise ValueError("no cuflash kernel for this problem: " + "; ".join(not_supported_reasons(problem)))


def _spec_for(family: Family, problem: Problem):
    d = head_dim_bucket(problem.head_dim)
    f = problem.features
    if family.spec is FwdSm90Spec:
        return FwdSm90Spec.for_problem(problem.dtype, d, f, problem.band, problem.short_causal, problem.long_rows,
                                       problem.fixed_offset, problem.bias_per_key)
    if family.spec is BwdSm90Spec:
        return BwdSm90Spec(problem.dtype, d, f, bool(problem.deterministic))
    fitting = [s for s in portable_candidates(family, problem.dtype, d, f, problem.deterministic, problem.many_units,
                                              problem.compute_capability, problem.fixed_offset)
               if smem_bytes(s) <= problem.smem_limit]
    return fitting[0] if fitting else None


def portable_candidates(family: Family, dtype: str, d: int, features: Features, deterministic: bool = False,
                        many_units: bool = False, compute_capability: tuple | None = None,
                        fixed: bool = False) -> list:
    """The portable family's specs for compile-time head dim d, best first: the large-memory
    tiles, then those for GPUs with less shared memory (specs.*_TILES_SMALLER_SMEM); for a decode
    of many units, specs.DECODE_TILES_MANY_UNITS first (all of them are in DECODE_TILES). A GPU
    whose arch class has its own list (specs.ARCH_CLASS_TILES) gets that one instead. fixed: the
    forward's softmax at a fixed offset (specs.fixed_offset)."""
    if family.spec is DecodeSpec:
        first = DECODE_TILES_MANY_UNITS.get(d, []) if many_units else []
        return [DecodeSpec(dtype, d, features, t) for t in first + [t for t in DECODE_TILES[d] if t not in first]]
    kind = "fp32" if dtype == "fp32" else "16-bit"
    tiles = ARCH_CLASS_TILES.get(compute_capability[0] if compute_capability else None, {}).get(
        (family.direction, kind, d))
    if family.spec is FwdSpec:
        if tiles is None:
            tiles = ([(d, t) for t in FWD_TILES_FP32[d]] if dtype == "fp32"
                     else [(d, FWD_TILES[d])] + FWD_TILES_SMALLER_SMEM.get(d, []))
        return [FwdSpec(dtype, dd, features, t, fixed) for dd, t in tiles]
    if tiles is None:
        tiles = ([(d, t) for t in BWD_TILES_FP32[d]] if dtype == "fp32"
                 else [(d, BWD_TILES[d])] + BWD_TILES_SMALLER_SMEM.get(d, []))
    return [BwdSpec(dtype, dd, features, bool(deterministic), t) for dd, t in tiles]


def offered_on(spec, compute_capability: tuple) -> bool:
    """Whether selection can pick `spec` on a GPU of this compute capability as far as its arch class
    goes: a portable forward or backward spec is among its family's candidates there (ARCH_CLASS_TILES
    replaces some lists per class); other specs, yes. (Shared memory is cache.builds_for's test.)"""
    if type(spec) not in (FwdSpec, BwdSpec):
        return True
    family = next(f for f in FAMILIES if f.spec is type(spec))
    deterministic = getattr(spec, "deterministic", False)
    return any(spec in portable_candidates(family, spec.dtype, d, spec.features, deterministic,
                                           compute_capability=tuple(compute_capability),
                                           fixed=getattr(spec, "fixed_offset", False))
               for d in family.head_dims if d <= spec.head_dim)


def smem_bytes(spec) -> int:
    from .launch import dynamic_smem_bytes

    return dynamic_smem_bytes(spec)


def supported_head_dims() -> list[int]:
    return list(range(HEAD_DIM_MULTIPLE, HEAD_DIM_MAX + 1, HEAD_DIM_MULTIPLE))


def fwd_spec(dtype: str, head_dim: int, features: Features, compute_capability, sm90: bool = True,
             smem_limit: int | None = None, band: int = 0, seqlen_q: int = 0, softcap: float = 0.0,
             bias_per_key: bool = False):
    """The forward kernel for a problem on a GPU (select() for direction "fwd").
    band: keys per query of a sliding window bounded on both sides (api.Options.band), else 0.
    seqlen_q: query rows (varlen: max_seqlen_q), 0 when unknown; only whether a causal call's rows
    are few enough for FwdSm90Spec's short tiles, or many enough for its long_rows, reaches the
    (memoised) selection. softcap: its value (0: none); only whether it bounds the scores enough for
    FwdSm90Spec.fixed_offset reaches the selection. bias_per_key: the bias has one row per (batch,
    head) (its row stride is 0)."""
    cc = tuple(compute_capability)
    limit = smem_limit if smem_limit is not None else SMEM_LIMITS.get(cc, SMEM_LIMIT_MIN)
    short = short_causal(features, head_dim, seqlen_q)
    return _fwd_spec(dtype, head_dim, features, cc, sm90, limit, int(band), short,
                     long_rows(features, head_dim, seqlen_q), fixed_offset(dtype, features, softcap),
                     bool(bias_per_key and features.bias))


@functools.lru_cache(maxsize=None)
def _fwd_spec(dtype, head_dim, features, compute_capability, sm90, smem_limit, band, short, long, fixed, per_key):
    return select(Problem("fwd", dtype, head_dim, features, compute_capability, sm90=sm90,
                          smem_limit=smem_limit, band=band, short_causal=short, long_rows=long, fixed_offset=fixed,
                          bias_per_key=per_key))


@functools.lru_cache(maxsize=None)
def bwd_spec(dtype: str, head_dim: int, features: Features, deterministic: bool, compute_capability, sm90: bool = True,
             smem_limit: int | None = None):
    """The backward's main kernel for a problem on a GPU (select() for direction "bwd"); memoised on
    its arguments, so a call costs one dict lookup (DESIGN 4c). smem_limit: the GPU's shared memory
    per block (default: SMEM_LIMITS of its compute capability)."""
    cc = tuple(compute_capability)
    limit = smem_limit if smem_limit is not None else SMEM_LIMITS.get(cc, SMEM_LIMIT_MIN)
    return select(
        Problem("bwd", dtype, head_dim, features, cc, deterministic=bool(deterministic), sm90=sm90,
                smem_limit=limit)
    )


@functools.lru_cache(maxsize=None)
def decode_spec(dtype: str, head_dim: int, features: Features, compute_capability, smem_limit: int | None = None,
                many_units: bool = False):
    """The split-KV decode kernel for a problem on a GPU (select() for direction "decode"), memoised.
    many_units: the call has at least as many CTAs per split as the GPU has SMs."""
    cc = tuple(compute_capability)
    limit = smem_limit if smem_limit is not None else SMEM_LIMITS.get(cc, SMEM_LIMIT_MIN)
    return select(Problem("decode", dtype, head_dim, features, cc, smem_limit=limit, many_units=many_units))


#: A compute capability per arch class with its own tile lists, and None for the default lists.
ARCH_CLASS_CCS = (None, *((major, 0) for major in ARCH_CLASS_TILES))


def family_specs(family: Family, features: Features, dtypes=SUPPORTED_DTYPES) -> list:
    """Every spec of a family for one feature set: each of its dtypes among `dtypes` and head dim
    (and for the Hopper forward each tile table; for the backward both modes; for the portable
    families the lists of every arch class)."""
    out = []
    for dtype in (dt for dt in dtypes if dt in family.dtypes):
        for d in family.head_dims:
            if family.spec is DecodeSpec:
                out += portable_candidates(family, dtype, d, features)
            elif family.spec is FwdSpec:
                for cc in ARCH_CLASS_CCS:
                    for fixed in sorted({False, fixed_offset(dtype, features, 1.0)}):
                        out += [s for s in portable_candidates(family, dtype, d, features, compute_capability=cc,
                                                               fixed=fixed) if s not in out]
            elif family.spec is FwdSm90Spec:
                # A local mask's bands: wide, the narrowest, and the widest that runs persistent;
                # a causal mask's long and short query lengths; a dense call's many query rows.
                bands = (0, 1, FWD_SM90_PERSISTENT_BAND) if features.mask == "local" else (0,)
                shorts = {False, short_causal(features, d, 1)}
                longs = {False, long_rows(features, d, FWD_SM90_PERSISTENT_ROWS + 1)}
                # a softcap's two softmaxes: at a fixed offset (bf16, a softcap of at most ~51) or not
                fixeds = {False, fixed_offset(dtype, features, 1.0)}
                # a staged bias's two adds: per key (one row) or not
                per_keys = {False, bool(features.bias)}
                for spec in (FwdSm90Spec.for_problem(dtype, d, features, band, short, long, fixed, per_key)
                             for band in bands for short in sorted(shorts) for long in sorted(longs)
                             for fixed in sorted(fixeds) for per_key in sorted(per_keys) if not (short and long)):
                    if spec not in out:
                        out.append(spec)
            elif family.spec is BwdSpec:
                for det in (False, True):
                    for cc in ARCH_CLASS_CCS:
                        out += [s for s in portable_candidates(family, dtype, d, features, det, compute_capability=cc)
                                if s not in out]
            else:
                for det in (False, True):
                    out.append(_spec_for(family, Problem("bwd", dtype, d, features, deterministic=det)))
    return out


#: Feature sets `cuflash compile` builds by default: the plain mask kinds,
#: which is today's set. Others compile on first use or with --features.
DEFAULT_FEATURE_SETS = (PLAIN, CAUSAL)


def declared_specs(feature_sets=DEFAULT_FEATURE_SETS, dtypes=DEFAULT_DTYPES) -> list:
    """Every kernel specialisation `cuflash compile` builds for these feature
    sets and dtypes: the forward (Hopper, then portable), then the backward (Hopper, then
    portable), then its prepare and
    convert kernels. A spec with ``compute_capabilities`` is built only for
    those GPUs (cuflash.compile.cache.builds_for)."""
    specs, seen = [], set()
    for family in FAMILIES:
        for features in feature_sets:
            if features.varlen and not family.varlen:
                continue  # the family has no variable-length kernels (yet)
            if any(getattr(features, m) and m not in family.modifiers for m in MODIFIERS):
                continue  # nor this modifier (the decode has no dropout)
            for spec in family_specs(family, features, dtypes):
                if spec.name not in seen:
                    seen.add(spec.name)
                    specs.append(spec)
    varlen = [True] if any(f.varlen for f in feature_sets) else []
    helpers = [spec for dtype in dtypes
               for spec in (BwdPrepareSpec(dtype), *(BwdPrepareSpec(dtype, v) for v in varlen), BwdConvertSpec(dtype),
                            *((KvAppendSpec(dtype),) if dtype in HALF_DTYPES else ()))]
    return specs + helpers
