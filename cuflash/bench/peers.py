"""Peers: other attention implementations timed on the same points as cuflash.

Each peer is found at run time; one that is not installed (or has no GPU) is
skipped with a one-line note.  A peer that raises for a point gives "-" in
that cell, with the reason kept in the JSON; it never stops the sweep.

Every peer makes its own inputs, in its own framework, in the layout a user
of that framework would have: (batch, seqlen, nheads, headdim) tensors, which
torch SDPA and FlexAttention (that want (batch, nheads, seqlen, headdim)) get
as transposed views.  Values do not affect the speed.

What is timed per mode (same as for cuflash):
  fwd      the forward call;
  bwd      the backward alone: one forward with requires_grad outside the
           timed region, then ``torch.autograd.grad(out, (q, k, v), dout,
           retain_graph=True)`` (JAX: the pullback returned by ``jax.vjp``);
  fwd+bwd  a forward and its backward;
  decode   the forward of one query per sequence over a full, contiguous KV
           cache (PEER_MODES says which peers time it: the SDPA backends,
           with ``enable_gqa`` or, where a backend refuses it, k/v expanded to
           every query head before timing; FlashInfer's batch decode wrapper,
           which reads the contiguous cache as in-order pages).  cuflash's
           paged rows are compared with these contiguous numbers.

Causal masks: cuflash aligns them bottom-right; torch SDPA's ``is_causal`` and
JAX's ``is_causal`` align top-left.  They agree when seqlen_q == seqlen_k (all
the sweeps here); other shapes raise, giving "-".

Variants (--window, --softcap, --alibi, --sink, --dropout): PEER_FEATURES says which
peer computes which; a peer is skipped ("skipped", with the reason) on a point that
uses a feature it lacks.  FlexAttention does the sliding window as a block mask,
softcap and ALiBi as a score_mod; SDPA's backends take dropout_p (their own
Philox).  A bias (--bias) is SDPA's additive attn_mask and a captured buffer of
FlexAttention's score_mod, with its gradient in the backward.  Sinks: no peer.

Varlen (--varlen): FlexAttention attends over the packed tokens, (1, total, nheads,
headdim), with a document mask (a query sees only keys of its own sequence, and the
causal mask or window inside it); "cuflash-padded" is cuflash's own dense call over the
sequences padded to the longest, (nseq, longest, nheads, headdim), the baseline
that a varlen kernel must beat (it times varlen points only).
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import warnings

from . import configs, timing

#: Peer names, in table order (the anchors' names).
PEER_NAMES = ("sdpa-flash", "sdpa-cudnn", "sdpa-eff", "sdpa-math", "flex", "jax-cudnn", "flashinfer",
              "cuflash-padded")

#: The variant features (configs.VARIANT_FEATURES) each peer computes; plain and causal attention: all of them.
PEER_FEATURES = {"flex": frozenset({"window", "softcap", "alibi", "bias", "varlen"}),
                 "sdpa-flash": frozenset({"dropout"}),
                 "cuflash-padded": frozenset({"window", "softcap", "alibi", "sink", "dropout", "varlen"}),
                 "sdpa-cudnn": frozenset({"dropout", "bias"}), "sdpa-eff": frozenset({"dropout", "bias"}),
                 "sdpa-math": frozenset({"dropout", "bias"})}
#: The input dtypes each peer takes; a name not listed here takes only the 16-bit ones. float32:
#: SDPA's efficient backend (3xTF32 tensor-core products, as cuflash) and its math backend
#: (plain float32 matmuls and softmax), and FlexAttention.
PEER_DTYPES = {"sdpa-eff": ("fp16", "bf16", "fp32"), "sdpa-math": ("fp16", "bf16", "fp32"),
               "flex": ("fp16", "bf16", "fp32"), "cuflash-padded": ("fp16", "bf16", "fp32")}

_FLOP_MODES = ("fwd", "bwd", "fwd+bwd")
#: The modes (configs.MODES) each peer times; a name not listed here times every mode.
PEER_MODES = {"sdpa-flash": _FLOP_MODES + ("decode",), "sdpa-cudnn": _FLOP_MODES + ("decode",),
              "sdpa-eff": _FLOP_MODES + ("decode",), "sdpa-math": _FLOP_MODES, "flex": _FLOP_MODES,
              "jax-cudnn": _FLOP_MODES, "cuflash-padded": _FLOP_MODES,
              "flashinfer": ("decode",)}
#: Peers that time varlen points only (on a dense point they would time what cuflash's own row does).
VARLEN_ONLY = frozenset({"cuflash-padded"})

#: Calls per host-clock sample for JAX (see timing.time_host).
JAX_CALLS_PER_SAMPLE = 5

#: Where the torch peers put their tensors.
TORCH_DEVICE = "cuda"


class Peer:
    name = ""
    clock = "cuda-events"    # or "host-clock" (timing.time_host)
    uses_torch = False

    def unavailable(self) -> str | None:
        """None when the peer can run here, else why not (one line)."""
        raise NotImplementedError

    def measure(self, p, *, warmup: int, rep: int) -> dict:
        """Time point ``p``: {"first_call_ms": ..., "samples_ms": [...]}; raises when the peer cannot run it."""
        raise NotImplementedError


def peers_supporting(feature: str) -> list[str]:
    """The peers that compute ``feature`` (those of VARLEN_ONLY for "varlen" alone)."""
    return [name for name in PEER_NAMES if feature in PEER_FEATURES.get(name, ())
            and (feature == "varlen" or name not in VARLEN_ONLY)]


def peer_modes(name: str) -> tuple:
    """The modes peer ``name`` times (every mode for a name PEER_MODES does not list)."""
    return PEER_MODES.get(name, tuple(configs.MODES))


def for_modes(names, modes) -> tuple[list[str], list[str]]:
    """(the peers of ``names`` that time at least one of ``modes``, the others)."""
    kept = [name for name in names if set(peer_modes(name)) & set(modes)]
    return kept, [name for name in names if name not in kept]


def unsupported_reason(name: str, p) -> str | None:
    """None when peer ``name`` computes point ``p``'s mode and variant, else why not (a short line)."""
    if p.mode not in peer_modes(name):
        return f"does not time {p.mode}"
    if p.dtype not in PEER_DTYPES.get(name, ("fp16", "bf16")):
        return f"does not take {p.dtype}"
    if name in VARLEN_ONLY and not p.varlen:
        return "times varlen points only"
    missing = [f for f in configs.VARIANT_FEATURES if f in p.features and f not in PEER_FEATURES.get(name, ())]
    return f"cannot compute {', '.join(missing)}" if missing else None


def _same_lengths_for_causal(p):
    if p.causal and p.seqlen_q != p.seqlen_k:
        raise ValueError("top-left causal mask differs from cuflash's bottom-right one when seqlen_q != seqlen_k")


# --------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------

def _torch_unavailable():
    """Why torch cannot run a peer here (not installed, or no CUDA device), or None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


class _TorchPeer(Peer):
    """Inputs, mode callables and timing shared by the torch peers."""

    uses_torch = True

    def __init__(self, timers):
        self._timers = timers

    def unavailable(self):
        return _torch_unavailable() or self._unavailable_extra()

    def _unavailable_extra(self):
        return None

    def _attention(self, p, gqa):
        """f(q, k, v) -> out on (batch, seqlen, nheads, headdim) tensors; ``gqa``: k and v have
        p.nheads_kv < p.nheads heads."""
        raise NotImplementedError

    def measure(self, p, *, warmup, rep):
        return self._measure(p, warmup=warmup, rep=rep, expand_kv=False)

    def _measure(self, p, *, warmup, rep, expand_kv):
        """``expand_kv``: k and v copied to every query head (repeat_interleave) before timing."""
        import torch
        _same_lengths_for_causal(p)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[p.dtype]
        grad = p.mode in ("bwd", "fwd+bwd")

        batch, seqlen_q, seqlen_k = self._dims(p)

        def rand(seqlen, heads):
            return torch.randn(batch, seqlen, heads, p.headdim, device=TORCH_DEVICE, dtype=dtype,
                               requires_grad=grad)

        try:
            q, k, v = rand(seqlen_q, p.nheads), rand(seqlen_k, p.nheads_kv), rand(seqlen_k, p.nheads_kv)
            if expand_kv:
                k, v = (x.detach().repeat_interleave(p.nheads // p.nheads_kv, dim=2).requires_grad_(grad)
                        for x in (k, v))
            with self._context():
                attn = self._attention(p, gqa=k.shape[2] != p.nheads)
                fn = _torch_mode_fn(torch, p.mode, attn, q, k, v, _bias_tensor(torch, p, dtype, grad))
                timer = self._timers.torch()
                first_ms, _ = timing.first_call_ms(fn, timer.synchronize)
                samples = timer.time(fn, warmup=warmup, rep=rep)
            return {"first_call_ms": first_ms, "samples_ms": samples}
        finally:
            # Drop this frame's tensors before emptying torch's cache, so the memory
            # goes back to the GPU for cuflash and the other peers.
            q = k = v = fn = attn = None  # noqa: F841
            torch.cuda.empty_cache()

    def _context(self):
        return contextlib.nullcontext()

    def _dims(self, p):
        """(batch, seqlen_q, seqlen_k) of the peer's q, k, v: a varlen point's packed tokens are one
        sequence of them (peers that time varlen points attend over it with a document mask)."""
        if p.varlen:
            total = sum(p.lengths)
            return 1, total, total
        return p.batch, p.seqlen_q, p.seqlen_k


def _torch_mode_fn(torch, mode, attn, q, k, v, bias=None):
    """The timed call: attn(q, k, v[, bias]), and in the backward modes the gradients of q, k, v
    (and of the bias when there is one)."""
    extra = () if bias is None else (bias,)
    if mode in ("fwd", "decode"):
        return lambda: attn(q, k, v, *extra)
    dout = torch.randn_like(q)
    if mode == "bwd":
        out = attn(q, k, v, *extra)
        return lambda: torch.autograd.grad(out, (q, k, v, *extra), dout, retain_graph=True)
    if mode == "fwd+bwd":
        return lambda: torch.autograd.grad(attn(q, k, v, *extra), (q, k, v, *extra), dout)
    raise NotImplementedError(f"mode {mode!r} is not implemented for torch peers")


def _bias_tensor(torch, p, dtype, grad):
    """Point p's bias as a torch tensor in (batch|1, heads|1, seqlen_q|1, seqlen_k) (SDPA's and
    Flex's head-major order, which is cuflash's too), or None."""
    if not p.bias:
        return None
    return torch.randn(p.bias_shape, device=TORCH_DEVICE, dtype=dtype, requires_grad=grad)


class SdpaPeer(_TorchPeer):
    """``torch.nn.functional.scaled_dot_product_attention`` restricted to one backend."""

    BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
                "sdpa-eff": "EFFICIENT_ATTENTION", "sdpa-math": "MATH"}

    def __init__(self, name, timers):
        super().__init__(timers)
        self.name = name

    def _unavailable_extra(self):
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401  (torch >= 2.3)
        except ImportError:
            return "this torch has no torch.nn.attention.sdpa_kernel (needs torch >= 2.3)"
        if not hasattr(SDPBackend, self.BACKENDS[self.name]):
            return f"this torch has no SDPBackend.{self.BACKENDS[self.name]}"
        return None

    def _context(self):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(getattr(SDPBackend, self.BACKENDS[self.name]))

    def measure(self, p, *, warmup, rep):
        """As the other torch peers; for a GQA decode point that the backend refuses with
        enable_gqa, again with k/v expanded to every query head (a note in the result says so)."""
        retry = p.mode == "decode" and p.nheads != p.nheads_kv
        try:
            with warnings.catch_warnings():
                if retry:   # torch warns why each backend refused; the note below says it once
                    warnings.simplefilter("ignore", UserWarning)
                return self._measure(p, warmup=warmup, rep=rep, expand_kv=False)
        except RuntimeError as e:
            if not retry:
                raise
            refused = timing.one_line(e)
        measured = self._measure(p, warmup=warmup, rep=rep, expand_kv=True)
        measured["note"] = (f"enable_gqa refused ({refused}); k/v expanded to {p.nheads} heads before timing, "
                            f"so it reads {p.nheads // p.nheads_kv}x the bytes counted")
        return measured

    def _attention(self, p, gqa):
        import torch.nn.functional as F
        options = {"enable_gqa": True} if gqa else {}
        if p.dropout:
            options["dropout_p"] = p.dropout

        def attn(q, k, v, bias=None):
            if bias is not None:
                options["attn_mask"] = bias
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=p.causal, **options)
            return out.transpose(1, 2)
        return attn


class FlexPeer(_TorchPeer):
    """FlexAttention compiled with ``torch.compile(dynamic=False)``: one compile per shape (and per grad mode)."""

    name = "flex"

    def __init__(self, timers):
        super().__init__(timers)
        self._compiled = None

    def _unavailable_extra(self):
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
        except ImportError:
            return "this torch has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
        return None

    def _flex(self):
        if self._compiled is None:
            import torch
            import torch._dynamo
            import torch._functorch.config
            from torch.nn.attention.flex_attention import flex_attention
            # A sweep compiles one graph per shape: lift dynamo's recompile limits
            # (their names changed across versions) so it never falls back to eager.
            for name, value in (("cache_size_limit", 1024), ("recompile_limit", 1024),
                                ("accumulated_cache_size_limit", 4096), ("accumulated_recompile_limit", 4096)):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), value))
            # The timed backward uses retain_graph=True, which compiled graphs with
            # donated buffers refuse.
            if hasattr(torch._functorch.config, "donated_buffer"):
                torch._functorch.config.donated_buffer = False
            self._compiled = torch.compile(flex_attention, dynamic=False)
        return self._compiled

    def _attention(self, p, gqa):
        from torch.nn.attention.flex_attention import create_block_mask
        flex = self._flex()
        mask_mod, score_mod = flex_mods(p, TORCH_DEVICE)
        block_mask = None
        if mask_mod is not None:
            _, seqlen_q, seqlen_k = self._dims(p)
            block_mask = create_block_mask(mask_mod, None, None, seqlen_q, seqlen_k, device=TORCH_DEVICE)

        def attn(q, k, v, bias=None):
            mod = score_mod if bias is None else _with_bias(score_mod, bias)
            out = flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), score_mod=mod,
                       block_mask=block_mask, enable_gqa=gqa)
            return out.transpose(1, 2)
        return attn


def _with_bias(score_mod, bias):
    """A Flex score_mod that adds bias[b|0, h|0, q|0, kv] after score_mod (None: nothing before)."""
    one_b, one_h, one_q = (bias.shape[i] == 1 for i in range(3))

    def mod(score, b, h, q_idx, kv_idx):
        if score_mod is not None:
            score = score_mod(score, b, h, q_idx, kv_idx)
        return score + bias[0 if one_b else b, 0 if one_h else h, 0 if one_q else q_idx, kv_idx]
    return mod


def flex_mods(p, device):
    """FlexAttention's (mask_mod, score_mod) for point ``p``'s causal mask and variant, each None when not needed.

    mask_mod: query i sees key j iff ``i + off - left <= j <= i + off + right`` with
    ``off = seqlen_k - seqlen_q`` (bottom-right aligned, as cuflash; causal is right = 0).
    A varlen point's packed tokens (one sequence of them, queries and keys of the same
    lengths, so off = 0 inside each) add the document mask: j in the same sequence as i.
    score_mod gets the scaled score q.k * scale and applies softcap, then ALiBi
    ``-slope[h] * |i + off - j|``, in cuflash's order.
    """
    import torch
    off = p.seqlen_k - p.seqlen_q
    left, right = p.mask_window
    mask_mod = score_mod = None
    if left >= 0 or right >= 0:
        def mask_mod(b, h, q_idx, kv_idx):
            rel = kv_idx - q_idx - off          # 0 on the bottom-right diagonal, < 0 in the past
            if left < 0:
                return rel <= right
            if right < 0:
                return rel >= -left
            return (rel >= -left) & (rel <= right)
    if p.varlen:
        document = torch.repeat_interleave(torch.arange(len(p.lengths), device=device),
                                           torch.tensor(p.lengths, device=device))
        band = mask_mod

        def mask_mod(b, h, q_idx, kv_idx):
            same = document[q_idx] == document[kv_idx]
            return same if band is None else same & band(b, h, q_idx, kv_idx)

    softcap = p.softcap
    slopes = torch.tensor(configs.alibi_slopes(p.nheads), device=device) if p.alibi else None
    if softcap > 0 or slopes is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            if softcap > 0:
                score = softcap * torch.tanh(score / softcap)
            if slopes is not None:
                score = score - slopes[h] * torch.abs(q_idx + off - kv_idx)
            return score
    return mask_mod, score_mod


# --------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------

class JaxCudnnPeer(Peer):
    """``jax.nn.dot_product_attention(..., implementation="cudnn")`` under ``jax.jit``, layout (B, S, H, D).

    Timed with a host clock (timing.time_host): the L2 is flushed with CuPy and
    the device synchronised before each sample of JAX_CALLS_PER_SAMPLE calls.
    """

    name = "jax-cudnn"
    clock = "host-clock"

    def __init__(self, timers):
        self._timers = timers

    def unavailable(self):
        # Without this JAX reserves 75% of GPU memory when it starts.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        try:
            import jax
        except ImportError:
            return "jax is not installed"
        try:
            jax.devices("gpu")
        except RuntimeError as e:
            return f"JAX has no GPU backend ({timing.one_line(e)}); install jax[cuda12] or jax[cuda13]"
        if not hasattr(jax.nn, "dot_product_attention"):
            return "this JAX has no jax.nn.dot_product_attention (needs jax >= 0.4.31)"
        return None

    def measure(self, p, *, warmup, rep):
        import jax
        import jax.numpy as jnp
        _same_lengths_for_causal(p)
        dtype = {"bf16": jnp.bfloat16, "fp16": jnp.float16}[p.dtype]
        kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(0), 4)
        q = jax.random.normal(kq, (p.batch, p.seqlen_q, p.nheads, p.headdim), dtype)
        k = jax.random.normal(kk, (p.batch, p.seqlen_k, p.nheads_kv, p.headdim), dtype)
        v = jax.random.normal(kv, (p.batch, p.seqlen_k, p.nheads_kv, p.headdim), dtype)
        dout = jax.random.normal(kd, q.shape, dtype)
        attn = functools.partial(jax.nn.dot_product_attention, is_causal=p.causal, implementation="cudnn")

        if p.mode == "fwd":
            f = jax.jit(attn)
            fn = lambda: f(q, k, v)  # noqa: E731
        elif p.mode == "bwd":
            # The pullback of jax.vjp is a pytree (jax.tree_util.Partial holding
            # the residuals), so it can be passed to a jitted function.
            _, pullback = jax.jit(lambda q, k, v: jax.vjp(attn, q, k, v))(q, k, v)
            f = jax.jit(lambda pb, do: pb(do))
            fn = lambda: f(pullback, dout)  # noqa: E731
        elif p.mode == "fwd+bwd":
            f = jax.jit(lambda q, k, v, do: jax.vjp(attn, q, k, v)[1](do))
            fn = lambda: f(q, k, v, dout)  # noqa: E731
        else:
            raise NotImplementedError(f"mode {p.mode!r} is not implemented for {self.name}")

        cupy_t = self._timers.cupy
        first_ms, _ = timing.first_call_ms(lambda: jax.block_until_ready(fn()), cupy_t.synchronize)

        def flush():
            cupy_t.flush()
            cupy_t.synchronize()   # the whole device: JAX's streams too
        samples = timing.time_host(fn, warmup=warmup, rep=rep, flush=flush, block=jax.block_until_ready,
                                   calls=JAX_CALLS_PER_SAMPLE)
        return {"first_call_ms": first_ms, "samples_ms": samples}


# --------------------------------------------------------------------------
# FlashInfer (decode)
# --------------------------------------------------------------------------

class FlashInferPeer(Peer):
    """``flashinfer.BatchDecodeWithPagedKVCacheWrapper`` (plan once, then time ``run``), NHD layout.

    FlashInfer's batch decode reads paged caches only: the contiguous cache
    (batch, seqlen_k, nheads_kv, headdim) is given as in-order pages of PAGE keys
    (page b * pages + i holds keys [i * PAGE, (i + 1) * PAGE) of sequence b), which
    is the same memory.  Both kernels (use_tensor_cores False and True) are timed;
    the faster one is kept and named in the result's note.
    """

    name = "flashinfer"
    uses_torch = True
    PAGE = 16
    WORKSPACE_BYTES = 128 * 1024 * 1024

    def __init__(self, timers):
        self._timers = timers

    def unavailable(self):
        reason = _torch_unavailable()
        if reason:
            return reason
        try:
            import flashinfer
        except ImportError:
            return "flashinfer is not installed"
        wrapper = getattr(flashinfer, "BatchDecodeWithPagedKVCacheWrapper", None)
        if wrapper is None or not hasattr(wrapper, "plan"):
            return "this flashinfer has no BatchDecodeWithPagedKVCacheWrapper.plan (needs flashinfer >= 0.2)"
        return None

    def measure(self, p, *, warmup, rep):
        import flashinfer
        import torch
        if p.mode != "decode":
            raise NotImplementedError(f"mode {p.mode!r} is not implemented for {self.name}")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[p.dtype]
        page = self.PAGE
        pages = -(-p.seqlen_k // page)          # per sequence; the last one may be part full
        timer = self._timers.torch()
        try:
            def i32(x):
                return x.to(device=TORCH_DEVICE, dtype=torch.int32)

            q = torch.randn(p.batch, p.nheads, p.headdim, device=TORCH_DEVICE, dtype=dtype)
            k, v = (torch.randn(p.batch * pages, page, p.nheads_kv, p.headdim, device=TORCH_DEVICE, dtype=dtype)
                    for _ in range(2))
            indptr = i32(torch.arange(p.batch + 1) * pages)
            indices = i32(torch.arange(p.batch * pages))
            last_page_len = i32(torch.full((p.batch,), p.seqlen_k - (pages - 1) * page))
            workspace = torch.zeros(self.WORKSPACE_BYTES, dtype=torch.uint8, device=TORCH_DEVICE)
            found, errors = {}, []
            for tensor_cores in (False, True):
                try:
                    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD",
                                                                           use_tensor_cores=tensor_cores)
                    wrapper.plan(indptr, indices, last_page_len, p.nheads, p.nheads_kv, p.headdim, page,
                                 q_data_type=dtype, kv_data_type=dtype)
                    first_ms, _ = timing.first_call_ms(lambda: wrapper.run(q, (k, v)), timer.synchronize)
                    samples = timer.time(lambda: wrapper.run(q, (k, v)), warmup=warmup, rep=rep)
                    found[tensor_cores] = {"first_call_ms": first_ms, "samples_ms": samples}
                except Exception as e:
                    errors.append(f"use_tensor_cores={tensor_cores}: {timing.one_line(e)}")
            if not found:
                raise RuntimeError("; ".join(errors))
            best = min(found, key=lambda tc: statistics.median(found[tc]["samples_ms"]))
            note = (f"contiguous cache as in-order pages of {page} keys; use_tensor_cores={best}"
                    + (", the faster of False and True" if len(found) == 2 else f" ({'; '.join(errors)})"))
            return {**found[best], "note": note}
        finally:
            q = k = v = workspace = wrapper = None  # noqa: F841
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------
# cuflash's padded dense call (the varlen baseline)
# --------------------------------------------------------------------------

class CuflashPaddedPeer(Peer):
    """cuflash.attention (and attention_backward) over a varlen point's sequences padded to the
    longest: q, k, v (nseq, longest, heads, headdim), the same options (the causal mask and window
    bottom-right in each padded row, so the real tokens' rows differ from varlen's where a sequence
    is shorter: only the time counts here).  Timed with CUDA events like cuflash's own row."""

    name = "cuflash-padded"

    def __init__(self, timers):
        self._timers = timers

    def unavailable(self):
        try:
            import cupy
            import cuflash  # noqa: F401
        except ImportError as e:
            return f"cupy or cuflash cannot be imported ({e})"
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as e:
            return f"CuPy sees no CUDA device ({timing.one_line(e)})"
        return None

    def measure(self, p, *, warmup, rep):
        """cuflash's own row (runner.CuflashBench) of the dense point of the padded sequences."""
        import dataclasses

        from .runner import CuflashBench
        if not p.varlen:
            raise ValueError("cuflash-padded times varlen points only")
        longest = max(p.lengths)
        dense = dataclasses.replace(p, varlen="", batch=len(p.lengths), seqlen_q=longest, seqlen_k=longest)
        bench = CuflashBench(self._timers)
        try:
            measured, _ = bench.measure(dense, warmup=warmup, rep=rep)
        finally:
            bench.release()
        return {**measured, "note": f"{len(p.lengths)} sequences padded to {longest} tokens"}


_FACTORIES = {
    "sdpa-flash": lambda t: SdpaPeer("sdpa-flash", t),
    "sdpa-cudnn": lambda t: SdpaPeer("sdpa-cudnn", t),
    "sdpa-eff": lambda t: SdpaPeer("sdpa-eff", t),
    "sdpa-math": lambda t: SdpaPeer("sdpa-math", t),
    "flex": FlexPeer,
    "jax-cudnn": JaxCudnnPeer,
    "flashinfer": FlashInferPeer,
    "cuflash-padded": CuflashPaddedPeer,
}


def parse_peers(text: str) -> list[str]:
    """'auto' -> every peer; 'none' -> []; else a comma-separated list of PEER_NAMES."""
    t = text.strip().lower()
    if t == "auto":
        return list(PEER_NAMES)
    if t in ("none", ""):
        return []
    names = []
    for part in t.split(","):
        part = part.strip()
        if part not in PEER_NAMES:
            raise ValueError(f"unknown peer {part!r}; choose from auto, none, {', '.join(PEER_NAMES)}")
        if part not in names:
            names.append(part)
    return names


def make_peers(names, timers) -> tuple[list[Peer], list[str]]:
    """The peers of ``names`` that can run here, and a note for each that cannot."""
    peers, notes = [], []
    for name in names:
        peer = _FACTORIES[name](timers)
        try:
            reason = peer.unavailable()
        except Exception as e:  # a broken install must not stop the run
            reason = timing.one_line(e)
        if reason:
            notes.append(f"peer {name} skipped: {reason}")
        else:
            peers.append(peer)
    return peers, notes
