"""What a benchmark run measures: the points of a sweep, the modes, and the work formulas.

Pure Python and NumPy (no CuPy, torch or JAX), so the CPU tests cover all of it.

A *point* is one problem shape plus one mode (and the run's attention variant:
sliding window, softcap, ALiBi, sink; see Point).  A *mode* says what is timed
(forward, backward, both; later decode) and how its work is counted: FLOPs for
the compute-bound modes (judged against the matmul ceiling), bytes for a
bandwidth-bound mode such as decode (judged against the copy ceiling).  How
each library builds its inputs and what it calls for a mode lives beside that
library (``runner.py`` for cuflash, ``peers.py`` for the others), keyed by the
mode's name.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy

#: Element sizes of the benchmarked dtypes (names as in cuflash.specs.DTYPES).
DTYPE_BYTES = {"fp16": 2, "bf16": 2}
_DTYPE_ALIASES = {"fp16": "fp16", "float16": "fp16", "half": "fp16", "bf16": "bf16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Mode:
    name: str
    unit: str            # "flop" (rate in TFLOP/s) or "byte" (rate in TB/s)
    flop_factor: float   # work as a multiple of the forward FLOPs (flop modes)
    ceiling: str         # which measured ceiling the rate is compared with: "matmul" or "copy"
    description: str


#: Backward is 2.5x the forward FLOPs (two matmuls forward, five backward), as
#: flash-attn reports it; fwd+bwd is the sum.
MODES = {
    "fwd": Mode("fwd", "flop", 1.0, "matmul", "forward (out and lse)"),
    "bwd": Mode("bwd", "flop", 2.5, "matmul", "backward alone (after one forward)"),
    "fwd+bwd": Mode("fwd+bwd", "flop", 3.5, "matmul", "forward then backward"),
}

RATE_UNITS = {"flop": "TFLOP/s", "byte": "TB/s"}


#: Attention variants beyond the causal flag, in label order.  A peer lists the ones it can compute
#: (peers.Peer.features); a point that uses another one skips that peer.  "varlen": the batch's
#: sequences have their own lengths (varlen_lengths), packed along the rows (cuflash.attention_varlen).
VARIANT_FEATURES = ("window", "softcap", "alibi", "sink", "varlen")


@dataclass(frozen=True)
class Point:
    """One benchmark problem: q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_kv, headdim).

    The variant (same meaning as cuflash.attention's options): ``window`` = window_size (left, right),
    -1 unbounded, bottom-right aligned, right forced to 0 by causal; ``softcap`` > 0; ``alibi``: the
    slopes of :func:`alibi_slopes`; ``sink``: the learnable sink logits of :func:`sink_logits`;
    ``varlen``: the batch's sequences have the lengths :func:`varlen_lengths` (the longest is seqlen),
    packed along the rows (needs seqlen_q == seqlen_k).
    """

    dtype: str
    headdim: int
    seqlen_q: int
    seqlen_k: int
    batch: int
    nheads: int
    nheads_kv: int
    causal: bool
    mode: str
    window: tuple = (-1, -1)
    softcap: float = 0.0
    alibi: bool = False
    sink: bool = False
    varlen: bool = False

    @property
    def features(self) -> frozenset:
        """The names (of VARIANT_FEATURES) of the variant features this point uses."""
        on = {"window": tuple(self.window) != (-1, -1), "softcap": self.softcap > 0,
              "alibi": self.alibi, "sink": self.sink, "varlen": self.varlen}
        return frozenset(name for name, used in on.items() if used)

    @property
    def lengths(self) -> tuple:
        """Each sequence's length: seqlen_q for every one of a dense batch, varlen_lengths for varlen."""
        return varlen_lengths(self.seqlen_q, self.batch) if self.varlen else (self.seqlen_q,) * self.batch

    @property
    def mask_window(self) -> tuple:
        """(left, right) of the visible band as cuflash applies it: -1 unbounded, right 0 when causal."""
        left, right = self.window
        return left, 0 if self.causal else right

    @property
    def variant(self) -> str:
        """Short name of the variant, '' for plain attention: e.g. 'window(256,0)+softcap30+alibi+sink'."""
        names = {"window": f"window({self.window[0]},{self.window[1]})", "softcap": f"softcap{self.softcap:g}",
                 "alibi": "alibi", "sink": "sink", "varlen": "varlen"}
        return "+".join(names[f] for f in VARIANT_FEATURES if f in self.features)

    @property
    def label(self) -> str:
        s = f"s{self.seqlen_q}" if self.seqlen_q == self.seqlen_k else f"s{self.seqlen_q}x{self.seqlen_k}"
        gqa = f" h{self.nheads}/{self.nheads_kv}" if self.nheads_kv != self.nheads else ""
        variant = f" {self.variant}" if self.variant else ""
        return (f"{self.dtype} d{self.headdim} {s} b{self.batch}{gqa} {'causal' if self.causal else 'full'}"
                f"{variant} {self.mode}")

    def shape_key(self) -> tuple:
        """Everything but the mode: points with the same key share inputs."""
        d = asdict(self)
        d.pop("mode")
        return tuple(d.values())

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sweep:
    """The grid a run expands to (every combination, in this nesting order)."""

    dtypes: list
    headdims: list
    seqlens: list
    causals: list
    modes: list
    batch: int | None = None          # fixed batch, or
    total_tokens: int = 16384         # batch = total_tokens // seqlen (at least 1)
    nheads: int | None = None         # fixed nheads, or
    hidden: int = 2048                # nheads = hidden // headdim
    nheads_kv: int | None = None      # default: nheads (no GQA)
    window: tuple = (-1, -1)          # the variant, the same for every point (see Point)
    softcap: float = 0.0
    alibi: bool = False
    sink: bool = False
    varlen: bool = False

    def points(self) -> list[Point]:
        pts = []
        for dtype, d, s, causal, mode in itertools.product(
                self.dtypes, self.headdims, self.seqlens, self.causals, self.modes):
            batch = self.batch if self.batch is not None else max(1, self.total_tokens // s)
            if self.nheads is not None:
                nheads = self.nheads
            else:
                nheads = self.hidden // d
                if nheads < 1 or self.hidden % d:
                    raise ValueError(f"--hidden {self.hidden} is not a multiple of head dim {d}; "
                                     f"pick a hidden size divisible by every --headdim, or give --nheads")
            nheads_kv = self.nheads_kv if self.nheads_kv is not None else nheads
            if nheads_kv < 1 or nheads % nheads_kv:
                raise ValueError(f"--nheads-kv {nheads_kv} does not divide nheads {nheads} (head dim {d}); "
                                 f"pick a divisor of every nheads in the sweep")
            pts.append(Point(dtype, d, s, s, batch, nheads, nheads_kv, causal, mode,
                             window=tuple(self.window), softcap=self.softcap, alibi=self.alibi, sink=self.sink,
                             varlen=self.varlen))
        return pts


#: The anchors' sweep (../shared/anchors/README.md): bf16 and fp16, head dims 64/128/256,
#: seqlen 512..16k, causal and not, 16k tokens, hidden 2048, forward and backward.
PRESETS = {
    "standard": dict(dtypes=["bf16", "fp16"], headdims=[64, 128, 256],
                     seqlens=[512, 1024, 2048, 4096, 8192, 16384], causals=[False, True],
                     modes=["fwd", "bwd"], total_tokens=16384, hidden=2048),
}

#: A handful of points for a smoke run.
QUICK = dict(dtypes=["bf16"], headdims=[64, 128], seqlens=[1024, 4096], causals=[False, True],
             modes=["fwd", "bwd"], total_tokens=16384, hidden=2048)

#: Used for whatever neither the command line nor a preset sets.
DEFAULTS = dict(dtypes=["bf16"], headdims=[128], seqlens=[1024, 2048, 4096, 8192], causals=[False],
                modes=["fwd"], total_tokens=16384, hidden=2048)


# --------------------------------------------------------------------------
# Parsing helpers for the command line
# --------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """'512' -> 512, '8k' / '8K' -> 8192 (k = 1024), '1m' -> 1048576."""
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1024
    elif t.endswith("m"):
        t, mult = t[:-1], 1024 * 1024
    try:
        value = int(t) * mult
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use an integer, optionally with k = 1024, e.g. 512 or 8k)") from None
    if value < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def parse_list(text: str, item=str) -> list:
    """Comma-separated list; empty items are ignored; duplicates dropped, order kept."""
    out = []
    for part in text.split(","):
        if part.strip():
            value = item(part.strip())
            if value not in out:
                out.append(value)
    if not out:
        raise ValueError(f"empty list: {text!r}")
    return out


def parse_dtype(text: str) -> str:
    name = _DTYPE_ALIASES.get(text.strip().lower())
    if name is None:
        raise ValueError(f"unknown dtype {text!r}; use bf16 or fp16")
    return name


def parse_mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(f"unknown mode {text!r}; choose from {', '.join(MODES)}")
    return text


def parse_causal(text: str) -> list[bool]:
    t = text.strip().lower()
    choices = {"true": [True], "1": [True], "yes": [True], "false": [False], "0": [False], "no": [False],
               "both": [False, True]}
    if t not in choices:
        raise ValueError(f"--causal takes true, false or both, got {text!r}")
    return choices[t]


def parse_window(text: str) -> tuple[int, int]:
    """'256,0' -> (256, 0): window_size (left, right), each an integer >= -1 (-1 = unbounded)."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        left, right = (int(x) for x in parts)
    except ValueError:
        raise ValueError(f"--window takes LEFT,RIGHT (two integers, -1 = unbounded), e.g. 256,0; got {text!r}") \
            from None
    if left < -1 or right < -1:
        raise ValueError(f"--window sizes must be >= -1 (-1 = unbounded), got {text!r}")
    return left, right


def parse_softcap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--softcap takes a number > 0 (e.g. 30), got {text!r}") from None
    if not (0 < value < float("inf")):
        raise ValueError(f"--softcap must be a finite number > 0, got {text!r}")
    return value


# --------------------------------------------------------------------------
# Variant inputs (the same values for cuflash, its reference check and the peers)
# --------------------------------------------------------------------------

def alibi_slopes(nheads: int) -> numpy.ndarray:
    """float32 (nheads,): the ALiBi paper's geometric slopes 2^(-8 (h + 1) / nheads), all in (0, 1]."""
    return numpy.exp2(-8.0 * numpy.arange(1, nheads + 1) / nheads).astype(numpy.float32)


def varlen_lengths(seqlen: int, batch: int) -> tuple:
    """The sequence lengths of a varlen point: from seqlen down to seqlen / 4 in equal steps (one
    sequence: seqlen), so the batch holds about 5/8 of its padded tokens, as a packed training batch
    of mixed documents might."""
    if batch == 1:
        return (seqlen,)
    return tuple(max(1, round(seqlen * (1 - 0.75 * b / (batch - 1)))) for b in range(batch))


def sink_logits(nheads: int, seed: int = 2) -> numpy.ndarray:
    """float32 (nheads,): learnable sink logits, standard normal (the scale of the scores of normal inputs)."""
    return numpy.random.default_rng(seed).standard_normal(nheads, dtype=numpy.float32)


# --------------------------------------------------------------------------
# Work formulas
# --------------------------------------------------------------------------

def visible_pairs(seqlen_q: int, seqlen_k: int, causal: bool, window=(-1, -1)) -> int:
    """Exact number of (query, key) pairs attended (bottom-right aligned causal mask and sliding window)."""
    from cuflash.reference import count_visible_pairs
    return count_visible_pairs(seqlen_q, seqlen_k, causal, tuple(window))


FLOP_FORMULA = ("forward = 4 * batch * nheads * visible_pairs * headdim, visible_pairs counted exactly "
                "(seqlen_q * seqlen_k without a mask; s * (s + 1) / 2 for causal with seqlen_q = seqlen_k = s; "
                "the pairs inside the window for a sliding window); softcap, ALiBi and sinks add no FLOPs; "
                "varlen: the sum over the sequences of their own visible pairs (no padding counted); "
                "bwd = 2.5 * forward; fwd+bwd = 3.5 * forward")
ANCHOR_FLOP_FORMULA = ("4 * batch * nheads * seqlen_q * seqlen_k * headdim, halved when causal (the anchors' count; "
                       "none with a sliding window)")


def point_pairs(p: Point) -> int:
    """Visible (query, key) pairs of one head over the whole batch (per sequence for varlen)."""
    if p.varlen:
        return sum(visible_pairs(n, n, p.causal, p.window) for n in p.lengths)
    return p.batch * visible_pairs(p.seqlen_q, p.seqlen_k, p.causal, p.window)


def forward_flops(p: Point) -> int:
    return 4 * p.nheads * point_pairs(p) * p.headdim


def anchor_forward_flops(p: Point) -> float | None:
    if "window" in p.features or p.varlen:
        return None
    full = 4 * p.batch * p.nheads * p.seqlen_q * p.seqlen_k * p.headdim
    return full / 2 if p.causal else float(full)


def io_bytes(p: Point) -> int:
    """Least bytes a forward must move: read q, k, v and write out once."""
    e = DTYPE_BYTES[p.dtype]
    if p.varlen:
        tokens = sum(p.lengths)
        return e * p.headdim * (2 * tokens * p.nheads + 2 * tokens * p.nheads_kv)
    return e * p.headdim * (2 * p.batch * p.seqlen_q * p.nheads + 2 * p.batch * p.seqlen_k * p.nheads_kv)


def work(p: Point) -> dict:
    """The work of a point, in the mode's unit, with the formula that gave it."""
    mode = MODES[p.mode]
    if mode.unit == "flop":
        anchor = anchor_forward_flops(p)
        return {
            "unit": "flop",
            "amount": mode.flop_factor * forward_flops(p),
            "formula": FLOP_FORMULA,
            # per sequence; for varlen (sequences of their own lengths) summed over them
            "visible_pairs": point_pairs(p) if p.varlen else visible_pairs(p.seqlen_q, p.seqlen_k, p.causal,
                                                                            p.window),
            "anchor_amount": None if anchor is None else mode.flop_factor * anchor,
            "anchor_formula": ANCHOR_FLOP_FORMULA,
            "io_bytes": io_bytes(p),
        }
    raise NotImplementedError(f"mode {p.mode!r} counts {mode.unit}s; add its byte formula here")


def rate(amount: float, ms: float) -> float:
    """Work per second in units of 1e12: TFLOP/s for flops, TB/s for bytes."""
    return amount / (ms * 1e-3) / 1e12
