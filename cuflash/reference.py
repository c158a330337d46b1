"""Reference attention, forward and backward: the one oracle for every test.

Everything here is *array-module generic*: pass NumPy arrays and the work is
done by NumPy, pass CuPy arrays and it is done by CuPy on the GPU (so the
benchmark can check a large problem in float64 without a trip to the host).
Only operations common to both modules are used, and CuPy is never imported
by this module: if a CuPy array exists, CuPy is already in ``sys.modules``.

Layout (flash-attn's)::

    q     (batch, seqlen_q, nheads,    headdim)
    k     (batch, seqlen_k, nheads_kv, headdim)
    v     (batch, seqlen_k, nheads_kv, headdim_v)      headdim_v is normally headdim
    out   (batch, seqlen_q, nheads,    headdim_v)
    lse   (batch, nheads, seqlen_q)                     natural log

``nheads % nheads_kv == 0`` and query head ``h`` reads kv head
``h // (nheads // nheads_kv)`` (grouped-query attention).

Semantics, in this order (DESIGN.md section 3)::

    s  = (q . k) * softmax_scale                      default scale 1/sqrt(headdim)
    s  = softcap * tanh(s / softcap)                  when softcap > 0
    s += -slope[b, h] * |i + seqlen_k - seqlen_q - j|  when alibi_slopes is given
    s += bias[b, h, i, j]                             when bias is given (broadcast)
    s  = -inf where key j is not visible from query i (causal / sliding window)
    lse = log(sum_j exp(s_j))                         without a learnable sink
    lse = log(exp(sink[h]) + sum_j exp(s_j))          with learnable_sink (nheads,)
    P  = exp(s - lse)                                 (softmax over keys; the sink
                                                       joins the denominator only)
    Pd = P * keep_mask / (1 - dropout_p)              when a dropout mask is given
    out = Pd @ v

A fully masked row has ``out = 0``, ``lse = -inf`` and zero gradients (never
NaN); with a learnable sink it has ``out = 0`` and ``lse = sink[h]``.

Backward (:func:`attention_backward`), per row, with dP = dO @ v^T (times the
dropout keep-mask and 1/(1 - dropout_p))::

    delta = rowsum(P * dP) - dlse                     (= rowsum(dO * O) - dlse;
                                                       dlse is 0 when not given)
    dS    = P * (dP - delta)                          gradient w.r.t. s (then through
                                                       softcap's tanh for dq, dk)
    dsink[h] = -sum_{batch, rows} exp(sink[h] - lse) * delta

``dlse`` (batch, nheads, seqlen_q) is the gradient of a loss that also reads
lse.  ``attention_backward`` returns ``(dq, dk, dv, dbias)``, and
``(dq, dk, dv, dbias, dsink)`` when a learnable sink is given.

Precision
---------
``precision="float64"`` upcasts every input to float64: this is the oracle.
Results are float64.

``precision="lowp"`` is "the same computation done plainly in the input
dtype", the way a straightforward fp16/bf16 PyTorch implementation does it.
It only serves to measure how much error the input dtype itself causes (the
accuracy rule in :mod:`cuflash.testing`).  Conventions:

* inputs are kept in their dtype (q, k, v, dout and bias are rounded to the
  dtype of q, which they should already have);
* each matmul accumulates in float32 and its result is rounded to the input
  dtype: scores (after scale, softcap, ALiBi and bias, applied in float32 to
  the float32 product), P @ V, dO @ V^T, dS @ K (dq);
* softmax (and lse) is computed in float32 from the rounded scores; P is
  rounded to the input dtype before P @ V (and after dropout scaling again);
* dS = P * (dP - rowsum(P * dP)) is computed in float32 and rounded (also after
  the softcap chain rule); dk, dv (a sum over query rows and over the query
  heads of a GQA group) and dbias are accumulated in float32 and rounded once;
* the learnable sink, like the ALiBi slopes, stays in the compute dtype
  (float32) and is not rounded; so does dlse. The sink column's dS
  (-exp(sink - lse) * delta per row) is rounded like every other dS entry and
  summed over rows in float32 into dsink (float32, not rounded again);
* **results are returned as float32 arrays whose values are exactly
  representable in the input dtype** (``round_to`` was applied), which keeps
  bf16 out of CuPy arithmetic entirely.  lse is float32 (as flash-attn's).
  For float32 inputs lowp is plain float32 arithmetic; for float64 inputs it
  is float64 arithmetic.

Memory is bounded: the work is done in chunks of (one batch, a range of heads,
a range of query rows) of at most ``_CHUNK_ELEMENTS`` score elements each, so
seqlens of many thousands are fine.
"""

from __future__ import annotations

import math
import sys

import numpy

__all__ = [
    "array_module",
    "round_to",
    "visible_mask",
    "count_visible_pairs",
    "attention_forward",
    "attention_backward",
]

# Upper bound on the number of score elements (heads x rows x keys) handled at
# once; every temporary of a chunk has at most this many elements.
_CHUNK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------
# Array-module and dtype helpers
# --------------------------------------------------------------------------

def array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    CuPy is not imported here: a CuPy array can only exist once CuPy has been
    imported, so looking in ``sys.modules`` is enough and keeps this module
    importable (and fast) with NumPy alone.
    """
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return numpy
    for a in arrays:
        if a is not None and cupy.get_array_module(a) is cupy:
            return cupy
    return numpy


def _is_bf16(dtype):
    return numpy.dtype(dtype).name == "bfloat16"


def _storage_dtype(dtype):
    """Normalise a dtype accepted by lowp; raise for anything else."""
    dt = numpy.dtype(dtype)
    if _is_bf16(dt) or dt in (numpy.dtype(numpy.float16), numpy.dtype(numpy.float32),
                              numpy.dtype(numpy.float64)):
        return dt
    raise ValueError(f"unsupported floating dtype {dt!r} (float16, bfloat16, float32, float64)")


def _upcast(x, dtype, xp):
    """Return ``x`` converted exactly to float32 or float64 (``dtype``).

    bfloat16 is widened through its bit pattern (bf16 bits are the upper 16
    bits of a float32), so no bf16 arithmetic support is needed in NumPy or
    CuPy.
    """
    x = xp.asarray(x)
    if _is_bf16(x.dtype):
        bits = x.view(xp.uint16).astype(xp.uint32) << xp.uint32(16)
        return bits.view(xp.float32).astype(dtype)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"expected a real floating array, got dtype {x.dtype}")
    return x.astype(dtype)


def round_to(x, dtype):
    """Round float32 values to the nearest value of ``dtype`` (ties to even).

    Args:
        x: float32 array (NumPy or CuPy), any shape.  float64 input is first
           converted to float32 (bf16 path) or rounded directly (fp16 path).
        dtype: float16, bfloat16 (``ml_dtypes.bfloat16``), float32 or float64.

    Returns:
        An array of the same shape whose values are exactly representable in
        ``dtype``, held as float32 (or float64 for ``dtype=float64``).

    bfloat16 rounding is done on the float32 bit pattern with unsigned integer
    operations, so it works the same in NumPy and CuPy: add ``0x7FFF`` plus the
    lowest kept bit (round half to even), then clear the low 16 bits.  Overflow
    carries into the exponent and gives inf, as a real conversion does.
    """
    xp = array_module(x)
    dt = _storage_dtype(dtype)
    if dt == numpy.float64:
        return x.astype(xp.float64)
    if dt == numpy.float32:
        return x.astype(xp.float32)
    if dt == numpy.float16:
        return x.astype(xp.float16).astype(xp.float32)
    # bfloat16
    x32 = x.astype(xp.float32)  # astype copies: a fresh contiguous array we may view
    bits = x32.view(xp.uint32)
    lsb = (bits >> xp.uint32(16)) & xp.uint32(1)
    rounded = ((bits + (xp.uint32(0x7FFF) + lsb)) & xp.uint32(0xFFFF0000)).view(xp.float32)
    # NaN: the integer trick could turn a NaN payload into inf (or wrap the
    # sign), so NaN inputs are passed through unchanged.
    return xp.where(xp.isnan(x32), x32, rounded)


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------

def _window(causal, window_size):
    """Return (left, right) with -1 meaning unbounded; causal forces right = 0."""
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"window_size must be a pair of ints, got {window_size!r}") from None
    left = -1 if left < 0 else left
    right = -1 if right < 0 else right
    if causal:
        right = 0
    return left, right


def _relative_positions(r0, r1, seqlen_q, seqlen_k, xp):
    """(r1 - r0, seqlen_k) int64 array ``j - (i + seqlen_k - seqlen_q)`` for rows i in [r0, r1).

    Zero on the bottom-right-aligned diagonal, negative for keys in the past.
    """
    i = xp.arange(r0, r1, dtype=xp.int64)[:, None]
    j = xp.arange(seqlen_k, dtype=xp.int64)[None, :]
    return j - (i + (seqlen_k - seqlen_q))


def _visible_from_rel(rel, left, right):
    """Bool array of rel's shape, or None when every key is visible."""
    vis = None
    if left >= 0:
        vis = rel >= -left
    if right >= 0:
        r = rel <= right
        vis = r if vis is None else (vis & r)
    return vis


def visible_mask(seqlen_q, seqlen_k, causal=False, window_size=(-1, -1), xp=numpy):
    """Bool array (seqlen_q, seqlen_k): True where query i sees key j.

    Bottom-right aligned: i sees j iff
    ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``,
    where a negative left/right is unbounded and ``causal`` means right = 0
    (left as given).
    """
    left, right = _window(causal, window_size)
    rel = _relative_positions(0, seqlen_q, seqlen_q, seqlen_k, xp)
    vis = _visible_from_rel(rel, left, right)
    if vis is None:
        return xp.ones((seqlen_q, seqlen_k), dtype=bool)
    return vis


def count_visible_pairs(seqlen_q, seqlen_k, causal=False, window_size=(-1, -1)):
    """Exact number of visible (query, key) pairs, as a Python int.

    O(seqlen_q) time and memory (no seqlen_q x seqlen_k matrix); used for FLOP
    counts.  Same rule as :func:`visible_mask`.
    """
    left, right = _window(causal, window_size)
    if seqlen_q <= 0 or seqlen_k <= 0:
        return 0
    diag = numpy.arange(seqlen_q, dtype=numpy.int64) + (seqlen_k - seqlen_q)
    lo = numpy.maximum(diag - left, 0) if left >= 0 else numpy.zeros_like(diag)
    hi = numpy.minimum(diag + right, seqlen_k - 1) if right >= 0 else numpy.full_like(diag, seqlen_k - 1)
    return int(numpy.maximum(hi - lo + 1, 0).sum())


# --------------------------------------------------------------------------
# Argument checking and set-up shared by forward and backward
# --------------------------------------------------------------------------

class _Problem:
    """Validated inputs, converted to the compute dtype, plus the options."""

    def __init__(self, q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes,
                 bias, dropout_p, dropout_mask, precision, dout=None, learnable_sink=None, dlse=None):
        xp = array_module(q, k, v, dout, bias, alibi_slopes, dropout_mask, learnable_sink, dlse)
        self.xp = xp
        q, k, v = xp.asarray(q), xp.asarray(k), xp.asarray(v)
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise ValueError("q, k, v must be 4-D (batch, seqlen, nheads, headdim); "
                             f"got {q.shape}, {k.shape}, {v.shape}")
        b, sq, h, d = q.shape
        bk, sk, hkv, dk = k.shape
        if bk != b or v.shape[:3] != k.shape[:3] or dk != d:
            raise ValueError(f"incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
        if hkv == 0 or h % hkv != 0:
            raise ValueError(f"nheads ({h}) must be a multiple of nheads_kv ({hkv})")
        self.batch, self.seqlen_q, self.nheads, self.headdim = b, sq, h, d
        self.seqlen_k, self.nheads_kv, self.headdim_v = sk, hkv, v.shape[3]
        self.group = h // hkv

        # Precision: compute dtype (cdt) and the rounding applied after each step.
        if precision == "float64":
            self.cdt = xp.float64
            self.store = None
        elif precision == "lowp":
            store = _storage_dtype(q.dtype)
            for name, x in (("k", k), ("v", v), ("dout", dout)):
                if x is not None and numpy.dtype(x.dtype) != store:
                    raise ValueError(f"lowp needs one dtype: q is {store}, {name} is {x.dtype}")
            self.cdt = xp.float64 if store == numpy.float64 else xp.float32
            self.store = None if store in (numpy.float32, numpy.float64) else store
        else:
            raise ValueError(f"precision must be 'float64' or 'lowp', got {precision!r}")

        self.q = self.rnd(_upcast(q, self.cdt, xp))
        self.k = self.rnd(_upcast(k, self.cdt, xp))
        self.v = self.rnd(_upcast(v, self.cdt, xp))
        self.dout = None
        if dout is not None:
            dout = xp.asarray(dout)
            if dout.shape != (b, sq, h, self.headdim_v):
                raise ValueError(f"dout shape {dout.shape} != out shape {(b, sq, h, self.headdim_v)}")
            self.dout = self.rnd(_upcast(dout, self.cdt, xp))

        self.scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)
        self.left, self.right = _window(causal, window_size)
        self.softcap = float(softcap)
        if self.softcap < 0:
            raise ValueError("softcap must be >= 0")

        # ALiBi slopes: kept in the compute dtype (flash-attn takes float32
        # slopes, so lowp does not round them to the input dtype).
        self.alibi = None
        if alibi_slopes is not None:
            a = _upcast(alibi_slopes, self.cdt, xp)
            if a.shape == (h,):
                a = xp.broadcast_to(a[None, :], (b, h))
            elif a.shape != (b, h):
                raise ValueError(f"alibi_slopes must have shape ({h},) or ({b}, {h}), got {a.shape}")
            self.alibi = a

        # Learnable sink: one logit per query head, kept in the compute dtype
        # (float32 in lowp, like the ALiBi slopes).
        self.sink = None
        if learnable_sink is not None:
            sink = _upcast(learnable_sink, self.cdt, xp)
            if sink.shape != (h,):
                raise ValueError(f"learnable_sink must have shape ({h},), got {sink.shape}")
            self.sink = sink

        # dlse: gradient of the loss w.r.t. lse (backward only), compute dtype.
        self.dlse = None
        if dlse is not None:
            d_lse = _upcast(dlse, self.cdt, xp)
            if d_lse.shape != (b, h, sq):
                raise ValueError(f"dlse must have shape {(b, h, sq)} (like lse), got {d_lse.shape}")
            self.dlse = d_lse

        # Bias: a 4-D view with each dim either 1 or full.
        self.bias_shape = None
        self.bias4 = None
        if bias is not None:
            bias = xp.asarray(bias)
            self.bias_shape = tuple(bias.shape)
            self.bias4 = self.rnd(_upcast(self._as4d(bias, "bias"), self.cdt, xp))

        # Dropout.
        self.dropout_p = float(dropout_p)
        if not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
        self.mask4 = None
        if dropout_mask is not None:
            m = xp.asarray(dropout_mask)
            if m.dtype != bool:
                m = m != 0
            self.mask4 = self._as4d(m, "dropout_mask")
        elif self.dropout_p > 0:
            raise ValueError("dropout_p > 0 needs dropout_mask (bool keep-mask of shape "
                             "(batch, nheads, seqlen_q, seqlen_k)); the reference does not draw one")
        self.drop_scale = 1.0 / (1.0 - self.dropout_p)

    def _as4d(self, x, name):
        """View x as 4-D, each dim 1 or equal to (batch, nheads, seqlen_q, seqlen_k)."""
        full = (self.batch, self.nheads, self.seqlen_q, self.seqlen_k)
        if x.ndim > 4:
            raise ValueError(f"{name} has more than 4 dims: {x.shape}")
        x4 = x.reshape((1,) * (4 - x.ndim) + tuple(x.shape))
        for n, f in zip(x4.shape, full):
            if n not in (1, f):
                raise ValueError(f"{name} shape {x.shape} does not broadcast to {full}")
        return x4

    def rnd(self, x):
        """Round to the storage dtype in lowp mode; identity otherwise."""
        if self.store is None:
            return x
        return round_to(x, self.store)

    def chunks(self):
        """Yield (b, h0, h1, r0, r1): chunks of at most _CHUNK_ELEMENTS scores."""
        sq, sk, h = self.seqlen_q, max(self.seqlen_k, 1), self.nheads
        if sq == 0 or h == 0:  # nothing to compute (and a chunk size of 0 would be a range step of 0)
            return
        limit = _CHUNK_ELEMENTS
        if h * sq * sk <= limit:
            hc, rc = h, sq
        elif sq * sk <= limit:
            hc, rc = limit // (sq * sk), sq
        else:
            hc, rc = 1, max(1, limit // sk)
        for b in range(self.batch):
            for h0 in range(0, h, hc):
                for r0 in range(0, sq, rc):
                    yield b, h0, min(h0 + hc, h), r0, min(r0 + rc, sq)

    @staticmethod
    def slice4(x4, b, h0, h1, r0, r1):
        """Chunk of a 4-D broadcastable array: (hc|1, rc|1, seqlen_k|1)."""
        bi = b if x4.shape[0] > 1 else 0
        hs = slice(h0, h1) if x4.shape[1] > 1 else slice(0, 1)
        rs = slice(r0, r1) if x4.shape[2] > 1 else slice(0, 1)
        return x4[bi, hs, rs, :]

    def kv_heads(self, x, b, h0, h1):
        """(h1 - h0, seqlen_k, hd): k or v of batch b repeated for query heads [h0, h1)."""
        g = self.group
        kv0, kv1 = h0 // g, (h1 - 1) // g + 1
        rep = self.xp.repeat(x[b, :, kv0:kv1], g, axis=1)  # (seqlen_k, (kv1 - kv0) * g, hd)
        return rep[:, h0 - kv0 * g:h1 - kv0 * g].transpose(1, 0, 2)

    def forward_chunk(self, b, h0, h1, r0, r1):
        """Forward for one chunk; returns a dict of (hc, rc, ...) arrays."""
        xp = self.xp
        qb = self.q[b, r0:r1, h0:h1].transpose(1, 0, 2)        # (hc, rc, d)
        kb = self.kv_heads(self.k, b, h0, h1)                   # (hc, sk, d)
        vb = self.kv_heads(self.v, b, h0, h1)                   # (hc, sk, dv)

        s = xp.matmul(qb, kb.transpose(0, 2, 1)) * self.scale   # (hc, rc, sk), fp32 accumulate in lowp
        tanh = None
        if self.softcap > 0:
            tanh = xp.tanh(s / self.softcap)
            s = self.softcap * tanh
        rel = _relative_positions(r0, r1, self.seqlen_q, self.seqlen_k, xp)  # (rc, sk)
        if self.alibi is not None:
            slopes = self.alibi[b, h0:h1][:, None, None]
            s = s - slopes * xp.abs(rel).astype(self.cdt)[None]
        if self.bias4 is not None:
            s = s + self.slice4(self.bias4, b, h0, h1, r0, r1)
        s = self.rnd(s)
        vis = _visible_from_rel(rel, self.left, self.right)
        if vis is not None:
            s = xp.where(vis[None], s, -xp.inf)

        # Softmax with the row max subtracted (stable for large scores).  A
        # learnable sink joins the max (offset max(m, sink)) and the
        # denominator, but not the numerators.
        m = s.max(axis=-1, keepdims=True)
        sink = None
        if self.sink is not None:
            sink = self.sink[h0:h1][:, None, None]                # (hc, 1, 1)
            m = xp.maximum(m, sink)
        # A fully masked row has max -inf; subtracting it would give
        # -inf - (-inf) = NaN, so use 0 there (exp(-inf - 0) = 0).
        m_safe = xp.where(m == -xp.inf, 0.0, m).astype(self.cdt)
        e = xp.exp(s - m_safe)
        l = e.sum(axis=-1, keepdims=True)
        if sink is not None:
            l = l + xp.exp(sink - m_safe)
        # A fully masked row (without a sink) sums to 0: divide by 1 instead
        # (P = 0 there) and report lse = -inf without evaluating log(0).
        nonempty = l > 0
        l_safe = xp.where(nonempty, l, 1.0).astype(self.cdt)
        p = e / l_safe
        lse = xp.where(nonempty, m_safe + xp.log(l_safe), -xp.inf)[..., 0].astype(self.cdt)
        p = self.rnd(p)
        if self.mask4 is not None:
            keep = self.slice4(self.mask4, b, h0, h1, r0, r1)
            pd = self.rnd(xp.where(keep, p * self.drop_scale, 0.0).astype(self.cdt))
        else:
            pd = p
        out = self.rnd(xp.matmul(pd, vb))                        # (hc, rc, dv)
        return dict(qb=qb, kb=kb, vb=vb, tanh=tanh, p=p, pd=pd, out=out, lse=lse)


def _empty_keys_forward(pr):
    """seqlen_k == 0: every row is fully masked (out 0, lse -inf, or lse = sink)."""
    xp = pr.xp
    out = xp.zeros((pr.batch, pr.seqlen_q, pr.nheads, pr.headdim_v), dtype=pr.cdt)
    if pr.sink is not None:
        lse = xp.broadcast_to(pr.sink[None, :, None], (pr.batch, pr.nheads, pr.seqlen_q)).astype(pr.cdt)
    else:
        lse = xp.full((pr.batch, pr.nheads, pr.seqlen_q), -xp.inf, dtype=pr.cdt)
    return out, lse


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------

def attention_forward(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                      alibi_slopes=None, bias=None, learnable_sink=None, dropout_p=0.0, dropout_mask=None,
                      precision="float64"):
    """Reference attention forward.

    Args:
        q: (batch, seqlen_q, nheads, headdim); k: (batch, seqlen_k, nheads_kv, headdim);
           v: (batch, seqlen_k, nheads_kv, headdim_v).  NumPy or CuPy; any float dtype
           (bf16 as ``ml_dtypes.bfloat16``).
        softmax_scale: defaults to 1/sqrt(headdim).
        causal, window_size: bottom-right aligned masks, see :func:`visible_mask`.
        softcap: > 0 applies ``softcap * tanh(s / softcap)`` to the scaled scores.
        alibi_slopes: (nheads,) or (batch, nheads).
        bias: broadcastable to (batch, nheads, seqlen_q, seqlen_k), added to the scores.
        learnable_sink: (nheads,) float array (normally float32), or None.  One
           logit per query head that joins every row's softmax denominator but
           has no value: ``lse = log(exp(sink[h]) + sum_j exp(s_j))``,
           ``out = sum_j exp(s_j - lse) v_j``.  A row that sees no key gets
           out = 0 and lse = sink[h].  Kept in the compute dtype (not rounded
           in "lowp").
        dropout_p: dropout probability; when > 0, ``dropout_mask`` is required.
        dropout_mask: bool keep-mask broadcastable to (batch, nheads, seqlen_q, seqlen_k);
           kept probabilities are scaled by 1/(1 - dropout_p).
        precision: "float64" (oracle) or "lowp" (see the module docstring).

    Returns:
        out: (batch, seqlen_q, nheads, headdim_v); lse: (batch, nheads, seqlen_q),
        natural log of the sum of exp of the masked scores (before dropout),
        plus exp(sink) with a learnable sink.  float64 for "float64"; float32
        for "lowp" (values representable in the input dtype for out).
    """
    pr = _Problem(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes, bias,
                  dropout_p, dropout_mask, precision, learnable_sink=learnable_sink)
    if pr.seqlen_k == 0:
        return _empty_keys_forward(pr)
    xp = pr.xp
    out = xp.zeros((pr.batch, pr.seqlen_q, pr.nheads, pr.headdim_v), dtype=pr.cdt)
    lse = xp.zeros((pr.batch, pr.nheads, pr.seqlen_q), dtype=pr.cdt)
    for b, h0, h1, r0, r1 in pr.chunks():
        f = pr.forward_chunk(b, h0, h1, r0, r1)
        out[b, r0:r1, h0:h1] = f["out"].transpose(1, 0, 2)
        lse[b, h0:h1, r0:r1] = f["lse"]
    return out, lse


def attention_probs(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, bias=None, learnable_sink=None, dropout_p=0.0, dropout_mask=None,
                    precision="float64"):
    """The attention probabilities P (batch, nheads, seqlen_q, seqlen_k) of :func:`attention_forward`
    (same arguments), with the entries that dropout_mask drops negated: flash-attn 2.x's
    ``return_attn_probs`` convention (an entry of P = 0 stays 0). For tests at small sizes."""
    pr = _Problem(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes, bias,
                  dropout_p, dropout_mask, precision, learnable_sink=learnable_sink)
    xp = pr.xp
    probs = xp.zeros((pr.batch, pr.nheads, pr.seqlen_q, pr.seqlen_k), dtype=pr.cdt)
    if pr.seqlen_k == 0:
        return probs
    for b, h0, h1, r0, r1 in pr.chunks():
        p = pr.forward_chunk(b, h0, h1, r0, r1)["p"]
        if pr.mask4 is not None:
            p = xp.where(pr.slice4(pr.mask4, b, h0, h1, r0, r1), p, -p)
        probs[b, h0:h1, r0:r1] = p
    return probs


def _sequences(cu_seqlens_q, cu_seqlens_k, seqused_k, alibi_slopes):
    """(query rows, key rows, ALiBi slopes) of each sequence of a varlen batch: slices of the
    packed rows (the keys cut to seqused_k when given) and the sequence's slopes."""
    cu_q, cu_k = (numpy.asarray(to_host(c)).astype(numpy.int64) for c in (cu_seqlens_q, cu_seqlens_k))
    used = None if seqused_k is None else numpy.asarray(to_host(seqused_k)).astype(numpy.int64)
    per_sequence = alibi_slopes is not None and numpy.ndim(alibi_slopes) == 2
    for b in range(len(cu_q) - 1):
        keys = slice(cu_k[b], cu_k[b + 1] if used is None else cu_k[b] + used[b])
        yield slice(cu_q[b], cu_q[b + 1]), keys, alibi_slopes[b] if per_sequence else alibi_slopes


def attention_forward_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, seqused_k=None, alibi_slopes=None,
                             dropout_mask=None, precision="float64", **options):
    """Reference forward of a variable-length batch: each sequence on its own (causal and
    windows aligned per sequence), through :func:`attention_forward`.

    q: (total_q, nheads, headdim); k, v: (total_k, nheads_kv, headdim); cu_seqlens_q/k:
    (batch + 1,) integer row offsets; seqused_k: (batch,) keys used per sequence or None;
    alibi_slopes: (nheads,) or (batch, nheads); dropout_mask: (batch, nheads, longest seqlen_q,
    longest seqlen_k), sequence b reading [b, :, :its queries, :its keys] (the kernels' coordinates;
    dropout_keep_mask with the longest lengths); other options as attention_forward.
    Returns out (total_q, nheads, headdim) and lse (nheads, total_q).
    """
    xp = array_module(q)
    outs, lses = [], []
    for b, (kq, kk, slopes) in enumerate(_sequences(cu_seqlens_q, cu_seqlens_k, seqused_k, alibi_slopes)):
        out, lse = attention_forward(q[None, kq], k[None, kk], v[None, kk], alibi_slopes=slopes,
                                     dropout_mask=_sequence_mask(dropout_mask, b, kq, kk),
                                     precision=precision, **options)
        outs.append(out[0])
        lses.append(lse[0])
    if not outs:
        dt = xp.float64 if precision == "float64" else xp.float32
        return xp.zeros((0,) + tuple(q.shape[1:]), dtype=dt), xp.zeros((q.shape[1], 0), dtype=dt)
    return xp.concatenate(outs, axis=0), xp.concatenate(lses, axis=1)


def _sequence_mask(mask, b, rows_q: slice, rows_k: slice):
    """Sequence b's part (1, nheads, its queries, its keys) of a varlen dropout mask, or None."""
    if mask is None:
        return None
    return mask[b:b + 1, :, :rows_q.stop - rows_q.start, :rows_k.stop - rows_k.start]


def attention_backward_varlen(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, *, seqused_k=None, alibi_slopes=None,
                              learnable_sink=None, dlse=None, dropout_mask=None, precision="float64", **options):
    """Reference backward of a variable-length batch, sequence by sequence through
    :func:`attention_backward`. dout like q (total_q, nheads, headdim); dlse (nheads, total_q)
    or None; dropout_mask as attention_forward_varlen. Returns (dq, dk, dv) like q, k, v (keys past
    seqused_k get zero gradients) and,
    with a learnable sink, dsink summed over the sequences: (dq, dk, dv, dsink)."""
    xp = array_module(q)
    dt = xp.float64 if precision == "float64" else xp.float32
    dq = xp.zeros(q.shape, dtype=dt)
    dk = xp.zeros(k.shape, dtype=dt)
    dv = xp.zeros(v.shape, dtype=dt)
    dsink = None if learnable_sink is None else xp.zeros(learnable_sink.shape, dtype=dt)
    for b, (kq, kk, slopes) in enumerate(_sequences(cu_seqlens_q, cu_seqlens_k, seqused_k, alibi_slopes)):
        grads = attention_backward(dout[None, kq], q[None, kq], k[None, kk], v[None, kk], alibi_slopes=slopes,
                                   learnable_sink=learnable_sink, precision=precision,
                                   dropout_mask=_sequence_mask(dropout_mask, b, kq, kk),
                                   dlse=None if dlse is None else dlse[None, :, kq], **options)
        dq[kq], dk[kk], dv[kk] = grads[0][0], grads[1][0], grads[2][0]
        if dsink is not None:
            dsink += grads[4]
    return (dq, dk, dv) if dsink is None else (dq, dk, dv, dsink)


def to_host(x):
    """A NumPy view or copy of a NumPy or CuPy array."""
    return x.get() if hasattr(x, "get") and not isinstance(x, numpy.ndarray) else x


def attention_backward(dout, q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                       alibi_slopes=None, bias=None, learnable_sink=None, dropout_p=0.0, dropout_mask=None,
                       dlse=None, precision="float64"):
    """Reference attention backward: the exact gradient of ``sum(out * dout) + sum(lse * dlse)``.

    Args:
        dout: (batch, seqlen_q, nheads, headdim_v), the gradient of the output.
        q, k, v and options: as :func:`attention_forward` (the forward is recomputed),
           including ``learnable_sink``.
        dlse: (batch, nheads, seqlen_q) or None: the gradient of the loss with
           respect to lse (a loss that reads lse as well as out).  It subtracts
           from each row's ``delta = rowsum(P * dP)`` (= rowsum(dO * O)), so
           ``dS = P * (dP - delta + dlse)``.  Rows with lse = -inf (no key, no
           sink) have P = 0 and contribute nothing.  Kept in the compute dtype.

    Returns:
        ``(dq, dk, dv, dbias)`` when ``learnable_sink`` is None, else
        ``(dq, dk, dv, dbias, dsink)``: dq like q, dk like k, dv like v (summed
        over the query heads of each GQA group); dbias with bias's shape
        (summed over its broadcast dims), or None when bias is None; dsink of
        shape (nheads,), ``dsink[h] = -sum_{batch, rows} exp(sink[h] - lse) *
        (delta - dlse)``, in the compute dtype (float64 for "float64", float32
        for "lowp" from fp16/bf16/fp32 inputs; not rounded).  Differentiates
        through softcap's tanh and the dropout mask; ALiBi has no gradient.
        Rows that are fully masked get zero dq (and contribute nothing to dk,
        dv, dbias).  dq, dk, dv, dbias: float64 for "float64"; float32 with
        values representable in the input dtype for "lowp".
    """
    pr = _Problem(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes, bias,
                  dropout_p, dropout_mask, precision, dout=dout, learnable_sink=learnable_sink, dlse=dlse)
    xp = pr.xp
    dq = xp.zeros((pr.batch, pr.seqlen_q, pr.nheads, pr.headdim), dtype=pr.cdt)
    dk = xp.zeros((pr.batch, pr.seqlen_k, pr.nheads_kv, pr.headdim), dtype=pr.cdt)
    dv = xp.zeros((pr.batch, pr.seqlen_k, pr.nheads_kv, pr.headdim_v), dtype=pr.cdt)
    dbias4 = None if pr.bias4 is None else xp.zeros(pr.bias4.shape, dtype=pr.cdt)
    dsink = None if pr.sink is None else xp.zeros((pr.nheads,), dtype=pr.cdt)
    g = pr.group

    if pr.seqlen_k == 0 and dsink is not None and pr.dlse is not None:
        # No keys: P = 0, delta = 0, lse = sink, so exp(sink - lse) = 1 and
        # dsink[h] = sum over batch and rows of dlse.
        dsink += pr.dlse.sum(axis=(0, 2))

    for b, h0, h1, r0, r1 in (pr.chunks() if pr.seqlen_k > 0 else ()):
        f = pr.forward_chunk(b, h0, h1, r0, r1)
        p, pd = f["p"], f["pd"]
        dob = pr.dout[b, r0:r1, h0:h1].transpose(1, 0, 2)               # (hc, rc, dv)

        dv_c = xp.matmul(pd.transpose(0, 2, 1), dob)                     # (hc, sk, dv)
        dp = pr.rnd(xp.matmul(dob, f["vb"].transpose(0, 2, 1)))          # (hc, rc, sk): d(out)/d(Pd)
        if pr.mask4 is not None:
            keep = pr.slice4(pr.mask4, b, h0, h1, r0, r1)
            dp = xp.where(keep, dp * pr.drop_scale, 0.0).astype(pr.cdt)  # d/dP
        # Softmax backward.  Masked keys have P = 0 so dS = 0 there; a fully
        # masked row has P = 0 everywhere, hence zero gradients.
        delta = (p * dp).sum(axis=-1, keepdims=True)                     # (hc, rc, 1)
        if pr.dlse is not None:
            # d(lse)/d(s_j) = P_j: the lse term adds dlse * P_j to dS_j.
            delta = delta - pr.dlse[b, h0:h1, r0:r1][..., None]
        if dsink is not None:
            # d(out)/d(sink) = -P_sink * out and d(lse)/d(sink) = P_sink,
            # with P_sink = exp(sink - lse).  lse >= sink, so lse = -inf only
            # for a sink of -inf (same as no sink): P_sink = 0 there, not NaN.
            lse_c = f["lse"]
            lse_c = xp.where(lse_c == -xp.inf, 0.0, lse_c).astype(pr.cdt)
            p_sink = xp.exp(pr.sink[h0:h1][:, None] - lse_c)              # (hc, rc)
            # -P_sink * delta is the sink column's dS: rounded like every other
            # dS entry (lowp), then summed over rows in the compute dtype.
            dsink[h0:h1] -= pr.rnd(p_sink * delta[..., 0]).sum(axis=1)
        ds = pr.rnd(p * (dp - delta))                                    # d/d(score after bias)
        if dbias4 is not None:
            red = ds
            for axis, n in ((0, dbias4.shape[1]), (1, dbias4.shape[2]), (2, dbias4.shape[3])):
                if n == 1:
                    red = red.sum(axis=axis, keepdims=True)
            bi = b if dbias4.shape[0] > 1 else 0
            hs = slice(h0, h1) if dbias4.shape[1] > 1 else slice(0, 1)
            rs = slice(r0, r1) if dbias4.shape[2] > 1 else slice(0, 1)
            dbias4[bi, hs, rs, :] += red
        if f["tanh"] is not None:
            ds = pr.rnd(ds * (1.0 - f["tanh"] * f["tanh"]))               # through softcap * tanh(s / softcap)
        dq_c = pr.rnd(xp.matmul(ds, f["kb"]) * pr.scale)                 # (hc, rc, d), complete for these rows
        dk_c = xp.matmul(ds.transpose(0, 2, 1), f["qb"]) * pr.scale       # (hc, sk, d), partial
        dq[b, r0:r1, h0:h1] = dq_c.transpose(1, 0, 2)

        # GQA: add the contribution of each query head to its kv head.
        for kh in range(h0 // g, (h1 - 1) // g + 1):
            lo, hi = max(h0, kh * g) - h0, min(h1, (kh + 1) * g) - h0
            dk[b, :, kh] += dk_c[lo:hi].sum(axis=0)
            dv[b, :, kh] += dv_c[lo:hi].sum(axis=0)

    dk, dv = pr.rnd(dk), pr.rnd(dv)
    dbias = None
    if dbias4 is not None:
        dbias = pr.rnd(dbias4).reshape(pr.bias_shape)
    if dsink is not None:
        return dq, dk, dv, dbias, dsink
    return dq, dk, dv, dbias


def rotary(x, cos, sin, positions, interleaved=True):
    """Rotary embedding as kernels_cu/common/rotary.cuh applies it: x (n, heads, d) in its dtype,
    row r at position positions[r] (clamped to the table); cos, sin (seqlen_ro, R / 2), R =
    rotary_dim. Pairs (2i, 2i + 1) when interleaved, else (i, i + R / 2), of the first R
    columns: y0 = x0 cos - x1 sin, y1 = x0 sin + x1 cos, each product and sum rounded in
    float32, then to x's dtype; columns >= R unchanged."""
    half = cos.shape[1]
    pos = numpy.clip(numpy.asarray(positions, dtype=numpy.int64), 0, cos.shape[0] - 1)
    c = numpy.asarray(cos)[pos].astype(numpy.float32)[:, None, :]
    s = numpy.asarray(sin)[pos].astype(numpy.float32)[:, None, :]
    xf = numpy.asarray(x).astype(numpy.float32)
    first, second = (slice(0, 2 * half, 2), slice(1, 2 * half, 2)) if interleaved else (
        slice(0, half), slice(half, 2 * half))
    x0, x1 = xf[..., first], xf[..., second]
    out = numpy.array(x, copy=True)
    out[..., first] = (x0 * c - x1 * s).astype(out.dtype)
    out[..., second] = (x0 * s + x1 * c).astype(out.dtype)
    return out


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, cache_batch_idx=None,
                           block_table=None, cache_leftpad=None, rotary_cos=None, rotary_sin=None,
                           rotary_interleaved=True, alibi_slopes=None, precision="float64", **options):
    """Reference of cuflash.attention_with_kvcache: k, v (batch, seqlen_new, nheads_kv, headdim)
    written into copies of the caches from key cache_seqlens[b] of batch row b on (keys past the
    row's capacity dropped), then each batch row's queries attend over its first
    min(cache_seqlens[b] + seqlen_new, capacity) keys through :func:`attention_forward` (causal
    and windows aligned to the end of those keys). The caches are contiguous (batch, seqlen_cache,
    ...), or (cache rows, seqlen_cache, ...) read through cache_batch_idx (batch,), or paged
    (num_pages, page_size, ...) with block_table (batch, max_pages): key j of row b is row
    j % page_size of page block_table[b, j // page_size]. cache_seqlens: int or (batch,) ints
    (default: the whole capacity). cache_leftpad (batch,): row b's keys start at that cache key.
    rotary_cos / rotary_sin (with k, v): :func:`rotary` of the new keys at positions
    cache_seqlens[b] - leftpad + i and of q at the same positions under a causal or local mask,
    else all at cache_seqlens[b] - leftpad. alibi_slopes: (nheads,) or (batch, nheads).
    Returns (out, lse, k_cache_new, v_cache_new)."""
    xp = array_module(q, k_cache, v_cache)
    batch = q.shape[0]
    k_new, v_new = k_cache.copy(), v_cache.copy()
    if block_table is not None:
        page_size = k_cache.shape[1]
        capacity = block_table.shape[1] * page_size

        def slots(b, keys):  # (first-dim index, row) of keys `keys` of batch row b
            keys = numpy.asarray(keys, dtype=numpy.int64)
            return numpy.asarray(block_table[b])[keys // page_size], keys % page_size
    else:
        capacity = k_cache.shape[1]

        def slots(b, keys):
            row = b if cache_batch_idx is None else int(cache_batch_idx[b])
            keys = numpy.asarray(keys, dtype=numpy.int64)
            return numpy.full(keys.shape, row), keys

    seqlens = [capacity] * batch if cache_seqlens is None else (
        [int(cache_seqlens)] * batch if numpy.ndim(cache_seqlens) == 0 else [int(x) for x in cache_seqlens])
    appended = 0 if k is None else k.shape[1]
    windowed = options.get("causal") or tuple(options.get("window_size", (-1, -1))) != (-1, -1)
    outs, lses = [], []
    for b in range(batch):
        start = max(seqlens[b], 0)
        first = 0 if cache_leftpad is None else min(max(int(cache_leftpad[b]), 0), capacity)
        qb = q[b:b + 1]
        if k is not None:
            n = max(0, min(appended, capacity - start))
            pages, rows = slots(b, range(start, start + n))
            kb = k[b, :n]
            if rotary_cos is not None:
                kb = rotary(kb, rotary_cos, rotary_sin, start - first + numpy.arange(n), rotary_interleaved)
                step = 1 if windowed else 0
                qb = rotary(q[b], rotary_cos, rotary_sin, start - first + step * numpy.arange(q.shape[1]),
                            rotary_interleaved)[None]
            k_new[pages, rows] = kb
            v_new[pages, rows] = v[b, :n]
        used = min(start + appended, capacity)
        pages, rows = slots(b, range(min(first, used), used))
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes[b] if numpy.ndim(alibi_slopes) == 2 else alibi_slopes
        out, lse = attention_forward(qb, k_new[pages, rows][None], v_new[pages, rows][None],
                                     alibi_slopes=slopes, precision=precision, **options)
        outs.append(out)
        lses.append(lse)
    if not batch:
        out, lse = attention_forward(q, k_cache[:0], v_cache[:0], precision=precision, **options)
        return out, lse, k_new, v_new
    return xp.concatenate(outs), xp.concatenate(lses), k_new, v_new


# ---------------------------------------------------------------- dropout: the keep-mask


_PHILOX_M0, _PHILOX_M1 = numpy.uint64(0xD2511F53), numpy.uint64(0xCD9E8D57)
_PHILOX_W0, _PHILOX_W1 = numpy.uint32(0x9E3779B9), numpy.uint32(0xBB67AE85)


#: Philox rounds per call of the dropout mask: seven, as flash-attn 2.x draws, which Salmon et al. report
#: passing TestU01's BigCrush (kernels_cu/common/dropout.cuh PHILOX_ROUNDS).
PHILOX_ROUNDS = 7


def philox4x32(counter, key, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 with `rounds` rounds (Salmon et al. 2011) on NumPy arrays: counter (..., 4) and key
    (..., 2) uint32 (broadcast together) -> (..., 4) uint32. With the default rounds, the same
    function as kernels_cu/common/dropout.cuh."""
    c = [numpy.asarray(counter, numpy.uint32)[..., n].astype(numpy.uint64) for n in range(4)]
    k0, k1 = (numpy.asarray(key, numpy.uint32)[..., n] for n in range(2))
    mask = numpy.uint64(0xFFFFFFFF)
    with numpy.errstate(over="ignore"):  # the key's uint32 additions wrap, as in CUDA
        for round_ in range(rounds):
            if round_:
                k0, k1 = k0 + _PHILOX_W0, k1 + _PHILOX_W1
            p0, p1 = _PHILOX_M0 * c[0], _PHILOX_M1 * c[2]
            c = [(p1 >> numpy.uint64(32)) ^ c[1] ^ k0.astype(numpy.uint64), p1 & mask,
                 (p0 >> numpy.uint64(32)) ^ c[3] ^ k1.astype(numpy.uint64), p0 & mask]
    return numpy.stack([x.astype(numpy.uint32) for x in c], axis=-1)


def dropout_threshold(dropout_p: float) -> int:
    """The byte value below which a random byte drops its entry: p * 256 rounded to the nearest
    integer (at most 255), so an entry is dropped with probability threshold / 256, within 1/512 of
    p (flash-attn 2.x also draws one byte per entry); kept entries are scaled by 1 / (1 - p)."""
    return min(int(math.floor(dropout_p * 256.0 + 0.5)), 0xFF)


def dropout_rate(dropout_p: float) -> float:
    """The probability with which the kernels drop an entry for dropout_p: threshold / 256."""
    return dropout_threshold(dropout_p) / 256.0


#: Where entry (query i + di, key j + dj) of a group takes its random byte: byte
#: [dj odd] + 2 [dj >= 8] of Philox output word [di odd] + 2 [di >= 8].
DROPOUT_GROUP = tuple((di, dj, di % 2 + 2 * (di >= 8), dj % 2 + 2 * (dj >= 8))
                      for di in (0, 1, 8, 9) for dj in (0, 1, 8, 9))


def dropout_keep_mask(seed: int, offset: int, batch: int, nheads: int, seqlen_q: int, seqlen_k: int,
                      dropout_p: float):
    """The keep-mask (batch, nheads, seqlen_q, seqlen_k) bool that cuflash's kernels draw for
    dropout_p with (seed, offset), from absolute coordinates only (DESIGN 3).

    One Philox4x32-7 call per group of sixteen entries {i, i + 1, i + 8, i + 9} x {j, j + 1,
    j + 8, j + 9} (query i and key j even, i % 16 < 8, j % 16 < 8): counter (i, j, b * nheads + h,
    offset), key (seed % 2^32, seed // 2^32); each entry keeps when its byte (DROPOUT_GROUP) is >=
    dropout_threshold(p). The group is square, so an mma fragment holds half of it with queries
    as rows (the forward) and with keys as rows (the backward) alike: two lanes hold its halves,
    each computes one group and they swap halves (kernels_cu/common/dropout.cuh)."""
    sq16, sk16 = -(-seqlen_q // 16) * 16, -(-seqlen_k // 16) * 16
    lows_q = numpy.arange(sq16).reshape(-1, 16)[:, :8:2].reshape(-1)   # even i with i % 16 < 8
    lows_k = numpy.arange(sk16).reshape(-1, 16)[:, :8:2].reshape(-1)   # even j with j % 16 < 8
    bh = numpy.arange(batch * nheads)
    ctr = numpy.zeros((len(bh), len(lows_q), len(lows_k), 4), numpy.uint32)
    ctr[..., 0] = lows_q[None, :, None]
    ctr[..., 1] = lows_k[None, None, :]
    ctr[..., 2] = bh[:, None, None]
    ctr[..., 3] = offset & 0xFFFFFFFF
    key = numpy.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], numpy.uint32)
    words = philox4x32(ctr, key)                                         # (bh, nq, nk, 4)
    threshold = dropout_threshold(dropout_p)
    mask = numpy.empty((len(bh), sq16, sk16), bool)
    for di, dj, word, byte in DROPOUT_GROUP:
        bits = (words[..., word] >> numpy.uint32(8 * byte)) & numpy.uint32(0xFF)
        mask[:, (lows_q + di)[:, None], (lows_k + dj)[None, :]] = bits >= threshold
    return mask.reshape(batch, nheads, sq16, sk16)[:, :, :seqlen_q, :seqlen_k]
