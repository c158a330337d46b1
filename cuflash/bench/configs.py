"""What a benchmark run measures: the points of a sweep, the modes, and the work formulas.

Pure Python and NumPy (no CuPy, torch or JAX), so the CPU tests cover all of it.

A *point* is one problem shape plus one mode (and the run's attention variant:
sliding window, softcap, ALiBi, sink; see Point).  A *mode* says what is timed
(forward, backward, both, decode) and how its work is counted: FLOPs for the
compute-bound modes (judged against the matmul ceiling), the K+V bytes read for
decode, which is bandwidth-bound (judged against the copy ceiling).  Decode
points have a grid of their own (:func:`decode_points`): (batch, cache length)
pairs and cache layouts (contiguous, or paged with a page size).  How
each library builds its inputs and what it calls for a mode lives beside that
library (``runner.py`` for cuflash, ``peers.py`` for the others), keyed by the
mode's name.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy

from ..specs import DTYPE_BYTES  # element sizes of the benchmarked dtypes (cuflash.specs.DTYPES names)

_DTYPE_ALIASES = {"fp16": "fp16", "float16": "fp16", "half": "fp16", "bf16": "bf16", "bfloat16": "bf16",
                  "fp32": "fp32", "float32": "fp32", "float": "fp32"}


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
    "decode": Mode("decode", "byte", 0.0, "copy",
                   "one query per sequence over a full KV cache (cuflash.attention_with_kvcache)"),
}

RATE_UNITS = {"flop": "TFLOP/s", "byte": "TB/s"}


#: Attention variants beyond the causal flag, in label order.  A peer lists the ones it can compute
#: (peers.Peer.features); a point that uses another one skips that peer.  "varlen": the batch's
#: sequences have their own lengths (varlen_lengths), packed along the rows (cuflash.attention_varlen).
VARIANT_FEATURES = ("window", "softcap", "alibi", "sink", "dropout", "bias", "varlen")

#: The length mixes of a varlen point (Point.varlen; varlen_lengths says how each is drawn).
VARLEN_KINDS = ("mix", "steps", "equal")


@dataclass(frozen=True)
class Point:
    """One benchmark problem: q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_kv, headdim).

    The variant (same meaning as cuflash.attention's options): ``window`` = window_size (left, right),
    -1 unbounded, bottom-right aligned, right forced to 0 by causal; ``softcap`` > 0; ``alibi``: the
    slopes of :func:`alibi_slopes`; ``sink``: the learnable sink logits of :func:`sink_logits`;
    ``dropout``: the dropout probability (0: none; the mask from DROPOUT_SEED);
    ``bias``: the additive bias's shape as parse_bias writes it ('' none, e.g. "b,h,s,s",
    "1,h,s,s", "b,1,1,s"; :meth:`bias_shape`), normal values in the input dtype, with its
    gradient in the backward;
    ``varlen``: '' for a dense batch, else a kind of VARLEN_KINDS: the batch's tokens (batch x seqlen)
    as sequences of the lengths :func:`varlen_lengths` draws for that kind (none longer than seqlen),
    packed along the rows (needs seqlen_q == seqlen_k).

    ``page_size`` (decode only): 0 for a contiguous cache (batch, seqlen_k, nheads_kv, headdim), else
    the cache is paged, (num_pages, page_size, nheads_kv, headdim) with a block table.
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
    varlen: str = ""
    page_size: int = 0
    dropout: float = 0.0
    bias: str = ""

    @property
    def features(self) -> frozenset:
        """The names (of VARIANT_FEATURES) of the variant features this point uses."""
        on = {"window": tuple(self.window) != (-1, -1), "softcap": self.softcap > 0,
              "alibi": self.alibi, "sink": self.sink, "dropout": self.dropout > 0, "bias": bool(self.bias),
              "varlen": bool(self.varlen)}
        return frozenset(name for name, used in on.items() if used)

    @property
    def lengths(self) -> tuple:
        """Each sequence's length: seqlen_q for every one of a dense batch, varlen_lengths for varlen."""
        return varlen_lengths(self.varlen, self.seqlen_q, self.batch) if self.varlen else (self.seqlen_q,) * self.batch

    @property
    def mask_window(self) -> tuple:
        """(left, right) of the visible band as cuflash applies it: -1 unbounded, right 0 when causal."""
        left, right = self.window
        return left, 0 if self.causal else right

    @property
    def variant(self) -> str:
        """Short name of the variant, '' for plain attention: e.g. 'window(256,0)+softcap30+alibi+sink'."""
        names = {"window": f"window({self.window[0]},{self.window[1]})", "softcap": f"softcap{self.softcap:g}",
                 "alibi": "alibi", "sink": "sink", "dropout": f"dropout{self.dropout:g}", "bias": f"bias({self.bias})",
                 "varlen": f"varlen-{self.varlen}"}
        return "+".join(names[f] for f in VARIANT_FEATURES if f in self.features)

    @property
    def bias_shape(self) -> tuple:
        """The bias's (batch|1, nheads|1, seqlen_q|1, seqlen_k) shape, () without one."""
        return bias_shape(self.bias, self.batch, self.nheads, self.seqlen_q, self.seqlen_k)

    @property
    def cache(self) -> str:
        """The KV cache's layout as the table shows it: 'contig', or 'paged16' for page size 16."""
        return f"paged{self.page_size}" if self.page_size else "contig"

    @property
    def label(self) -> str:
        s = f"s{self.seqlen_q}" if self.seqlen_q == self.seqlen_k else f"s{self.seqlen_q}x{self.seqlen_k}"
        gqa = f" h{self.nheads}/{self.nheads_kv}" if self.nheads_kv != self.nheads else ""
        variant = f" {self.variant}" if self.variant else ""
        cache = f" {self.cache}" if self.mode == "decode" else ""
        return (f"{self.dtype} d{self.headdim} {s} b{self.batch}{gqa} {'causal' if self.causal else 'full'}"
                f"{variant}{cache} {self.mode}")

    @property
    def num_pages(self) -> int:
        """Pages of a paged cache: ceil(seqlen_k / page_size) per sequence (0 for a contiguous one)."""
        return self.batch * -(-self.seqlen_k // self.page_size) if self.page_size else 0

    def shape_key(self) -> tuple:
        """Everything but the mode: points with the same key share inputs."""
        d = asdict(self)
        d.pop("mode")
        return tuple(d.values())

    def as_dict(self) -> dict:
        return asdict(self)


#: The issue's decode sweep: (batch, cache length) pairs, full caches, GQA 32 query / 8 kv heads.
DECODE_CACHES = [(64, 8192), (8, 32768), (1, 131072)]
#: Cache layouts of a decode sweep: 0 = contiguous, else the page size of a paged cache.
DECODE_PAGE_SIZES = [0, 16, 1]
#: (nheads, nheads_kv) of decode points unless --nheads / --nheads-kv say otherwise.
DECODE_HEADS = (32, 8)


@dataclass
class Sweep:
    """The grid a run expands to (every combination, in this nesting order).

    Decode (``modes == ["decode"]``) has a grid of its own: dtypes x headdims x decode_caches x
    page_sizes (see :meth:`decode_points`); seqlens, causals, batch, total_tokens and hidden are
    not used there.
    """

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
    varlen: str = ""                  # '' or a kind of VARLEN_KINDS
    dropout: float = 0.0
    bias: str = ""
    decode_caches: list = field(default_factory=lambda: list(DECODE_CACHES))     # (batch, seqlen_k) pairs
    page_sizes: list = field(default_factory=lambda: list(DECODE_PAGE_SIZES))    # 0 = contiguous

    def points(self) -> list[Point]:
        if "decode" in self.modes:
            if len(self.modes) > 1:
                raise ValueError("--mode decode has its own shapes (--cache, --page-size) and cannot share a run "
                                 "with fwd/bwd; run them apart (--from-json merges the JSON files)")
            return self.decode_points()
        if self.bias and self.varlen:
            raise ValueError("--bias and --varlen: cuflash.attention_varlen takes no bias; run them apart")
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
                             varlen=self.varlen, dropout=self.dropout, bias=self.bias))
        return pts

    def decode_points(self) -> list[Point]:
        """One query per sequence over full caches: dtypes x headdims x decode_caches x page_sizes
        (the layouts innermost, so a paged row follows its contiguous one). Heads: nheads and
        nheads_kv when given, else DECODE_HEADS (nheads alone: no GQA, as for the other modes)."""
        if True in self.causals:
            raise ValueError("--causal: a decode query is the last position, so the (bottom-right aligned) causal "
                             "mask hides no key of the cache; leave --causal out in decode mode")
        for option, used in (("--window", tuple(self.window) != (-1, -1)), ("--varlen", self.varlen),
                             ("--dropout", self.dropout > 0), ("--bias", bool(self.bias))):
            if used:
                raise ValueError(f"{option} is not available in decode mode (it times every sequence reading "
                                 "its whole cache)")
        nheads = self.nheads if self.nheads is not None else DECODE_HEADS[0]
        nheads_kv = self.nheads_kv if self.nheads_kv is not None else (
            DECODE_HEADS[1] if self.nheads is None else nheads)
        if nheads_kv < 1 or nheads % nheads_kv:
            raise ValueError(f"--nheads-kv {nheads_kv} does not divide nheads {nheads}; pick a divisor")
        pts = []
        for dtype, d, (batch, keys), page_size in itertools.product(
                self.dtypes, self.headdims, self.decode_caches, self.page_sizes):
            pts.append(Point(dtype, d, 1, keys, batch, nheads, nheads_kv, False, "decode",
                             softcap=self.softcap, alibi=self.alibi, sink=self.sink, page_size=page_size))
        return pts


#: The anchors' sweep (../shared/anchors/README.md): bf16 and fp16, head dims 64/128/256,
#: seqlen 512..16k, causal and not, 16k tokens, hidden 2048, forward and backward.
#: With --mode decode: the issue's decode sweep (DECODE_CACHES x DECODE_PAGE_SIZES, bf16, d 128).
PRESETS = {
    "standard": dict(dtypes=["bf16", "fp16"], headdims=[64, 128, 256],
                     seqlens=[512, 1024, 2048, 4096, 8192, 16384], causals=[False, True],
                     modes=["fwd", "bwd"], total_tokens=16384, hidden=2048,
                     decode_caches=DECODE_CACHES, page_sizes=DECODE_PAGE_SIZES),
}

#: A handful of points for a smoke run (with --mode decode: two smaller caches, contiguous and pages of 16).
QUICK = dict(dtypes=["bf16"], headdims=[64, 128], seqlens=[1024, 4096], causals=[False, True],
             modes=["fwd", "bwd"], total_tokens=16384, hidden=2048,
             decode_caches=[(8, 8192), (1, 32768)], page_sizes=[0, 16])

#: Used for whatever neither the command line nor a preset sets.
DEFAULTS = dict(dtypes=["bf16"], headdims=[128], seqlens=[1024, 2048, 4096, 8192], causals=[False],
                modes=["fwd"], total_tokens=16384, hidden=2048,
                decode_caches=DECODE_CACHES, page_sizes=DECODE_PAGE_SIZES)

#: The options that shape the fwd/bwd grid, which decode replaces by --cache and --page-size.
NOT_FOR_DECODE = ("seqlen", "batch", "total_tokens", "hidden")


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
        raise ValueError(f"unknown dtype {text!r}; use bf16, fp16 or fp32")
    return name


def parse_mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(f"unknown mode {text!r}; choose from {', '.join(MODES)}")
    return text


def parse_cache(text: str) -> tuple[int, int]:
    """'64x8k' -> (64, 8192): a decode cache shape BATCHxKEYS (sizes as parse_size)."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2:
        raise ValueError(f"--cache takes BATCHxKEYS, e.g. 64x8k; got {text!r}")
    return parse_size(parts[0]), parse_size(parts[1])


def parse_page_size(text: str) -> int:
    """'16' -> 16; '0' (or 'contig') -> 0, the contiguous cache."""
    t = text.strip().lower()
    if t in ("contig", "contiguous"):
        return 0
    try:
        value = int(t)
    except ValueError:
        raise ValueError(f"not a page size: {text!r} (an integer >= 1, or 0 for the contiguous cache)") from None
    if value < 0:
        raise ValueError(f"page size must be >= 0 (0 = contiguous), got {text!r}")
    return value


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


def parse_dropout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--dropout takes a probability in (0, 1) (e.g. 0.1), got {text!r}") from None
    if not 0 < value < 1:
        raise ValueError(f"--dropout must be in (0, 1), got {text!r}")
    return value


def parse_bias(text: str) -> str:
    """A bias shape for --bias: four comma-separated dims, each its letter (b batch, h heads, s
    queries or keys) or 1, the last one s: "b,h,s,s", "1,h,s,s", "b,1,1,s"; '' is no bias
    (argparse passes the default through here too)."""
    if not text.strip():
        return ""
    words = [w.strip() for w in text.split(",")]
    if len(words) != 4 or words[3] != "s" or any(w not in (name, "1") for w, name in zip(words[:3], "bhs")):
        raise ValueError(f"--bias takes the bias's shape as b|1,h|1,s|1,s (e.g. b,h,s,s or 1,h,s,s or b,1,1,s), "
                         f"got {text!r}")
    return ",".join(words)


def bias_shape(bias: str, batch: int, nheads: int, seqlen_q: int, seqlen_k: int) -> tuple:
    """The shape of a parse_bias text ('' none: ()) for these sizes, e.g. "1,h,s,s" -> (1, nheads,
    seqlen_q, seqlen_k)."""
    if not bias:
        return ()
    full = {"b": batch, "h": nheads, "s": None}
    dims = [full[w] if w != "1" else 1 for w in bias.split(",")]
    return tuple(seqlen_q if i == 2 and d is None else seqlen_k if d is None else d for i, d in enumerate(dims))


#: The seed of every dropout point's mask (cuflash's; the peers draw their own).
DROPOUT_SEED = 2024


# --------------------------------------------------------------------------
# Variant inputs (the same values for cuflash, its reference check and the peers)
# --------------------------------------------------------------------------

def alibi_slopes(nheads: int) -> numpy.ndarray:
    """float32 (nheads,): the ALiBi paper's geometric slopes 2^(-8 (h + 1) / nheads), all in (0, 1]."""
    return numpy.exp2(-8.0 * numpy.arange(1, nheads + 1) / nheads).astype(numpy.float32)


#: The shortest sequence a "mix" draws (the longest is the point's seqlen).
VARLEN_MIX_SHORTEST = 64


def varlen_lengths(kind: str, seqlen: int, batch: int) -> tuple:
    """The sequence lengths of a varlen point whose dense batch is ``batch`` x ``seqlen`` tokens:

    - "mix": documents of a packed training batch: lengths drawn log-uniformly from
      [VARLEN_MIX_SHORTEST, seqlen] (NumPy's default_rng(0), rounded to integers) until they hold the
      batch's tokens; the last one takes what is left, so the lengths sum to batch x seqlen exactly.
      At 16k tokens and seqlen 8k that is 10 sequences of 69 to 5365 tokens.
    - "steps": from seqlen down to seqlen / 4 in equal steps (about 5/8 of the padded tokens).
    - "equal": every sequence seqlen long, the dense batch's own shape (the varlen kernels beside
      the dense ones on the same tokens).
    """
    if kind == "equal" or batch == 1 and kind == "steps":
        return (seqlen,) * batch
    if kind == "steps":
        return tuple(max(1, round(seqlen * (1 - 0.75 * b / (batch - 1)))) for b in range(batch))
    if kind != "mix":
        raise ValueError(f"unknown varlen kind {kind!r}; choose from {', '.join(VARLEN_KINDS)}")
    total, lengths = batch * seqlen, []
    rng = numpy.random.default_rng(0)
    shortest = min(VARLEN_MIX_SHORTEST, seqlen)
    while sum(lengths) < total:
        n = int(round(numpy.exp(rng.uniform(numpy.log(shortest), numpy.log(seqlen)))))
        lengths.append(min(n, total - sum(lengths)))
    return tuple(lengths)


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


KV_BYTE_FORMULA = ("decode: K+V bytes read = 2 * batch * seqlen_k * nheads_kv * headdim * element size (each "
                   "key and value once, whatever the GQA group); q, out and a paged cache's block table are not "
                   "counted (q and out are nheads / (seqlen_k * nheads_kv) of it, the block table 4 bytes per "
                   "page); paged rows count the same bytes as contiguous ones")


def kv_bytes(p: Point) -> int:
    """Bytes of K and V a decode point reads: its whole cache, once."""
    return 2 * p.batch * p.seqlen_k * p.nheads_kv * p.headdim * DTYPE_BYTES[p.dtype]


def device_bytes(p: Point) -> int:
    """About the most GPU memory one point takes. fwd/bwd: inputs, outputs, gradients and a peer's
    copies, about 16 q-sized tensors. Decode: cuflash's cache, a peer's, and the peer's k/v
    expanded to every query head (SDPA backends that refuse enable_gqa)."""
    if p.mode == "decode":
        return kv_bytes(p) * (2 + p.nheads // p.nheads_kv)
    return 16 * DTYPE_BYTES[p.dtype] * p.batch * max(p.seqlen_q, p.seqlen_k) * p.nheads * p.headdim


def work(p: Point) -> dict:
    """The work of a point, in the mode's unit, with the formula that gave it."""
    mode = MODES[p.mode]
    if p.mode == "decode":
        return {
            "unit": "byte",
            "amount": kv_bytes(p),
            "formula": KV_BYTE_FORMULA,
            "visible_pairs": p.seqlen_q * p.seqlen_k,      # per sequence
            "anchor_amount": None,
            "anchor_formula": None,
            "io_bytes": io_bytes(p),
            "flops": forward_flops(p),
        }
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
