"""cuflash.jax without a GPU: argument checks at trace time (each error naming its
argument), output and gradient shapes (jax.eval_shape), and the plumbing of the
callbacks and the custom VJP (bias and dbias plans, dropout seed words read through
the params' dropout_rng pointer, the KV cache updated in place under donation), run
on JAX's CPU backend with the kernel launches replaced by the NumPy reference
(cuflash.reference) reading and writing the buffers through their pointers. Skipped
where JAX is not installed (except the checks that `import cuflash` never imports JAX).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np
import pytest

from cuflash import api, launch, reference, testing

REPO = Path(__file__).resolve().parents[2]
HAVE_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(not HAVE_JAX, reason="JAX is not installed")


def test_import_cuflash_does_not_import_jax():
    code = "import sys, cuflash, cuflash.api, cuflash.launch; assert 'jax' not in sys.modules, 'jax imported'"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(HAVE_JAX, reason="JAX is installed")
def test_missing_jax_is_a_clear_import_error():
    with pytest.raises(ImportError, match=r"cuflash\.jax needs JAX"):
        importlib.import_module("cuflash.jax")


# ---------------------------------------------------------------- with JAX

if HAVE_JAX:
    import jax
    import jax.numpy as jnp

    import cuflash.jax as cj


@pytest.fixture
def no_gpu(monkeypatch):
    """Trace-time checks without a GPU: device 0, any compute capability."""
    monkeypatch.setattr(cj, "_device_ordinal", lambda q: 0)
    monkeypatch.setattr(api, "_check_device", lambda device: None)


def sds(shape, dtype="float16"):
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


Q, KV = (2, 5, 4, 64), (2, 7, 2, 64)


def shapes(**options):
    """jax.eval_shape of attention on (Q, KV, KV) fp16 with options (arrays as ShapeDtypeStructs)."""
    arrays = {n: options.pop(n) for n in ("alibi_slopes", "learnable_sink") if n in options}
    return jax.eval_shape(lambda q, k, v, a: cj.attention(q, k, v, **a, **options), sds(Q), sds(KV), sds(KV), arrays)


# ---- each bad argument raises before anything runs, naming itself

F16, BF16, F32 = "float16", "bfloat16", "float32"
BAD_ARRAYS = [
    # ((shape, dtype) of q, k, v), error, message
    (((Q, F32), (KV, F16), (KV, F16)), TypeError, r"k has dtype float16 but q has float32"),
    (((Q, F16), (KV, BF16), (KV, F16)), TypeError, r"k has dtype bfloat16"),
    (((Q, F16), (KV, F16), ((2, 9, 2, 64), F16)), ValueError, r"v must have the shape of k"),
    ((((5, 4, 64), F16), (KV, F16), (KV, F16)), ValueError, r"q must have 4 dims"),
    (((Q, F16), ((2, 7, 3, 64), F16), ((2, 7, 3, 64), F16)), ValueError,
     r"nheads of q \(4\) must be a multiple of nheads of k/v \(3\)"),
    ((((2, 5, 4, 12), F16), ((2, 7, 2, 12), F16), ((2, 7, 2, 12), F16)), ValueError, r"head dim"),
    ((((3, 5, 4, 64), F16), (KV, F16), (KV, F16)), ValueError, r"batch sizes differ"),
]


@needs_jax
@pytest.mark.parametrize("qkv, error, match", BAD_ARRAYS, ids=lambda x: None)
def test_bad_q_k_v_are_named(no_gpu, qkv, error, match):
    with pytest.raises(error, match=match):
        jax.eval_shape(cj.attention, *(sds(*x) for x in qkv))


BAD_OPTIONS = [
    # array options as (shape, dtype)
    ({"learnable_sink": ((3,), "float32")}, ValueError, r"learnable_sink must have shape \(nheads,\)"),
    ({"learnable_sink": ((4,), "float16")}, TypeError, r"learnable_sink must be float32"),
    ({"alibi_slopes": ((3, 4), "float32")}, ValueError, r"alibi_slopes must have shape"),
    ({"window_size": (-2, 0)}, ValueError, r"window_size entries must be >= -1"),
    ({"window_size": (1, 2, 3)}, ValueError, r"window_size must be a pair"),
    ({"softcap": -1.0}, ValueError, r"softcap must be"),
    ({"softmax_scale": 0.0}, ValueError, r"softmax_scale must be a finite positive number"),
]


@needs_jax
@pytest.mark.parametrize("options, error, match", BAD_OPTIONS, ids=lambda x: None)
def test_bad_options_are_named(no_gpu, options, error, match):
    options = dict(options)
    arrays = {n: sds(*options.pop(n)) for n in ("alibi_slopes", "learnable_sink") if n in options}
    with pytest.raises(error, match=match):
        shapes(**options, **arrays)


@needs_jax
def test_traced_option_is_refused_under_jit(no_gpu):
    q = jnp.zeros(Q, jnp.float16)
    k = jnp.zeros(KV, jnp.float16)
    with pytest.raises(TypeError, match=r"softmax_scale must be a Python value known at trace time"):
        jax.jit(lambda q, k, s: cj.attention(q, k, k, softmax_scale=s))(q, k, 0.5)


@needs_jax
def test_non_array_input_is_named(no_gpu):
    with pytest.raises(TypeError, match=r"k must be a JAX array, got list"):
        cj.attention(jnp.zeros(Q, jnp.float16), [[1.0]], jnp.zeros(KV, jnp.float16))


@needs_jax
def test_bad_input_raises_under_jit_before_running(no_gpu):
    f = jax.jit(lambda q, k, v: cj.attention(q, k, v, causal=True))
    with pytest.raises(ValueError, match=r"v must have the shape of k"):
        f.lower(sds(Q), sds(KV), sds((2, 8, 2, 64)))


# ---- shapes of outputs and gradients


@needs_jax
def test_output_shapes(no_gpu):
    assert shapes(causal=True) == sds(Q)
    out, lse = shapes(return_lse=True, window_size=(3, 0))
    assert out == sds(Q) and lse == sds((2, 4, 5), "float32")


@needs_jax
def test_gradient_shapes_with_sink_and_alibi(no_gpu):
    def loss(q, k, v, sink, slopes):
        out, lse = cj.attention(q, k, v, learnable_sink=sink, alibi_slopes=slopes, return_lse=True)
        return out.astype(jnp.float32).sum() + lse.sum()

    grads = jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), sds(Q), sds(KV), sds(KV),
                           sds((4,), "float32"), sds((2, 4), "float32"))
    assert grads == (sds(Q), sds(KV), sds(KV), sds((4,), "float32"), sds((2, 4), "float32"))


# ---- the plumbing, on JAX's CPU backend with the reference in place of the kernels


def host_view(ref):
    """A NumPy array over a Ref's (host) memory, with its strides (0 on a broadcast dim)."""
    dtype = np.dtype(ref.dtype)
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype)
    extent = 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides))
    flat = np.frombuffer((ctypes.c_char * (extent * dtype.itemsize)).from_address(ref.ptr), dtype=dtype)
    return np.lib.stride_tricks.as_strided(flat, ref.shape, tuple(s * dtype.itemsize for s in ref.strides))


def seed_of(words):
    """(seed, offset) of the dropout words (seed_lo, seed_hi, offset)."""
    lo, hi, offset = (int(x) for x in np.asarray(words))
    return lo | hi << 32, offset


def reference_options(opts, q=None, k=None, mask_shape=None):
    """The reference's keywords for the Options a fake kernel gets; q, k: the Refs (batch, seqlen,
    heads, dim) that size the dropout mask, read from the words the params' dropout_rng points to;
    mask_shape: (batch, nheads, seqlen_q, seqlen_k) of that mask instead (varlen: the longest lengths)."""
    ropts = {"softmax_scale": opts.scale, "window_size": opts.window, "softcap": opts.softcap}
    if opts.alibi_slopes is not None:
        ropts["alibi_slopes"] = host_view(opts.alibi_slopes)
    if opts.learnable_sink is not None:
        ropts["learnable_sink"] = host_view(opts.learnable_sink)
    if opts.bias is not None:
        ropts["bias"] = host_view(opts.bias)  # (batch|1, nheads|1, seqlen_q|1, seqlen_k), stride 0 where 1
    if opts.dropout is not None:
        fields = opts.fields
        assert fields["dropout_rng"] and opts.features.dropout == 2, "dropout without the seed words in memory"
        seed, offset = seed_of(host_view(launch.Ref(fields["dropout_rng"], (3,), (1,), "uint32", 0)))
        if mask_shape is None:
            mask_shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        ropts["dropout_p"] = opts.dropout.p
        ropts["dropout_mask"] = reference.dropout_keep_mask(seed, offset, *mask_shape, opts.dropout.p)
    return ropts


def fake_forward(q, k, v, out, lse, opts, stream):
    o, l = reference.attention_forward(host_view(q), host_view(k), host_view(v), **reference_options(opts, q, k))
    host_view(out)[...] = o.astype(host_view(out).dtype)
    if lse is not None:
        host_view(lse)[...] = l


def fake_backward(dout, q, k, v, out, lse, dq, dk, dv, opts, deterministic, dlse, alloc, stream, dbias_fields=None):
    """The reference's dq, dk, dv; dbias into the buffer of dbias_fields laid out as api.dbias_plan
    says (the buffer must arrive zeroed: the kernels add into it); with a sink returns a SinkPart
    the way launch.backward does (a 1-D scratch with the parts at an offset, here one "CTA" per
    (batch, head): sum_i P_sink,i rowsum(dout * out)_i), from which the adapter computes dsink."""
    ropts = reference_options(opts, q, k)
    full = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if "bias" in ropts:
        ropts["bias"] = np.broadcast_to(ropts["bias"], full)  # dbias as dS of every (b, h, i, j)
    grads = reference.attention_backward(host_view(dout), host_view(q), host_view(k), host_view(v),
                                         dlse=None if dlse is None else host_view(dlse), **ropts)
    for ref, g in zip((dq, dk, dv), grads[:3]):
        host_view(ref)[...] = g.astype(host_view(ref).dtype)
    if dbias_fields is not None:
        plan = api.dbias_plan(opts.bias.shape, full, deterministic)
        FAKE_STATE["plans"].append(plan)
        assert (plan.strides, plan.atomic, plan.f32) == (
            tuple(dbias_fields[f"dbias_{n}_stride"] for n in ("batch", "head", "row")),
            bool(dbias_fields["dbias_atomic"]), bool(dbias_fields["dbias_f32"]))
        dtype = "float32" if plan.f32 else opts.bias.dtype
        view = host_view(launch.Ref(dbias_fields["dbias"], plan.shape, row_major(plan.shape), dtype, 0))
        assert not view.astype(np.float32).any(), "the dbias buffer was not cleared"
        ds = grads[3]
        for axis in range(3):
            if plan.shape[axis] == 1:
                ds = ds.sum(axis=axis, keepdims=True)
        view[...] = ds.astype(view.dtype)
    if opts.learnable_sink is None:
        return None
    rows = np.einsum("bqhd,bqhd->bhq", host_view(dout).astype(np.float32), host_view(out).astype(np.float32))
    p_sink = np.exp(host_view(opts.learnable_sink)[None, :, None] - host_view(lse))
    parts = (p_sink * rows).sum(axis=2, keepdims=True)
    scratch = np.concatenate([np.zeros(5, np.float32), parts.ravel().astype(np.float32)])
    return launch.SinkPart(scratch, 5, parts.shape)


def row_major(shape):
    """Row-major strides in elements."""
    return tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))


FAKE_STATE: dict = {"plans": []}  # the dbias plans the fake backward saw (fake_kernels clears it)


def rows_view(ref):
    """A varlen Ref (batch, total, heads, dim) with batch stride 0 as its (total, heads, dim) array."""
    return host_view(ref._replace(shape=ref.shape[1:], strides=ref.strides[1:]))


def int32_view(ptr, n):
    return np.frombuffer((ctypes.c_char * (4 * n)).from_address(ptr), dtype=np.int32) if n else np.zeros(0, np.int32)


def varlen_inputs(ref, sequences):
    batch = ref.shape[0]
    cu_q, cu_k = (int32_view(sequences[n], batch + 1) for n in ("cu_seqlens_q", "cu_seqlens_k"))
    used = int32_view(sequences["seqused_k"], batch) if sequences["seqused_k"] else None
    return cu_q, cu_k, used


def varlen_mask_shape(q, cu_q, cu_k):
    """(batch, nheads, longest seqlen_q, longest seqlen_k): a varlen dropout mask's shape
    (reference.attention_forward_varlen reads sequence b's part of it)."""
    longest = [int(np.diff(cu).max(initial=0)) for cu in (cu_q, cu_k)]
    return (len(cu_q) - 1, q.shape[2], *longest)


def fake_varlen_forward(q, k, v, out, lse, opts, sequences, max_seqlen_q, stream):
    cu_q, cu_k, used = varlen_inputs(q, sequences)
    o, l = reference.attention_forward_varlen(rows_view(q), rows_view(k), rows_view(v), cu_q, cu_k, seqused_k=used,
                                              **reference_options(opts, mask_shape=varlen_mask_shape(q, cu_q, cu_k)))
    rows_view(out)[...] = o.astype(rows_view(out).dtype)
    if lse is not None:
        host_view(lse)[...] = l


def fake_varlen_backward(dout, q, k, v, out, lse, dq, dk, dv, opts, deterministic, dlse, alloc, stream, sequences,
                         max_seqlen_q, max_seqlen_k):
    """The reference's gradients; with a sink a SinkPart of one "CTA" per head (as fake_backward)."""
    cu_q, cu_k, used = varlen_inputs(q, sequences)
    grads = reference.attention_backward_varlen(rows_view(dout), rows_view(q), rows_view(k), rows_view(v), cu_q,
                                                cu_k, seqused_k=used, dlse=None if dlse is None else host_view(dlse),
                                                **reference_options(opts, mask_shape=varlen_mask_shape(q, cu_q, cu_k)))
    for ref, g in zip((dq, dk, dv), grads[:3]):
        view = rows_view(ref)
        keep = np.ones(len(view), bool) if used is None or view.shape[0] == rows_view(q).shape[0] else None
        if keep is None:  # like the kernels: keys past seqused_k are left alone
            keep = np.zeros(len(view), bool)
            for b, n in enumerate(used):
                keep[cu_k[b]: cu_k[b] + n] = True
        view[keep] = g[keep].astype(view.dtype)
    if opts.learnable_sink is None:
        return None
    rows = np.einsum("qhd,qhd->hq", rows_view(dout).astype(np.float32), rows_view(out).astype(np.float32))
    p_sink = np.exp(host_view(opts.learnable_sink)[:, None] - host_view(lse))
    parts = (p_sink * rows).sum(axis=1).reshape(1, -1, 1).astype(np.float32)
    return launch.SinkPart(np.concatenate([np.zeros(3, np.float32), parts.ravel()]), 3, parts.shape)


def fake_run_kvcache(q, k_cache, v_cache, k, v, lengths, used, out, lse_rows, opts, cache, num_splits, alloc, offsets,
                     stream, rotary=None):
    """reference.attention_with_kvcache on the buffers: the caches updated in place, seqused, out and
    lse rows (nheads, batch * seqlen_q)."""
    m = cache.cache_map
    extra = {n: host_view(r) for n, r in (("block_table", m.block_table), ("cache_batch_idx", m.cache_batch_idx),
                                           ("cache_leftpad", m.cache_leftpad)) if r is not None}
    if rotary is not None:
        extra.update(rotary_cos=host_view(rotary[0]), rotary_sin=host_view(rotary[1]), rotary_interleaved=rotary[2])
    kc, vc, filled = host_view(k_cache), host_view(v_cache), host_view(lengths).copy()
    new = (None, None) if k is None else (host_view(k), host_view(v))
    FAKE_STATE["kvcache"] = dict(num_splits=num_splits, cache_ptrs=(k_cache.ptr, v_cache.ptr))
    o, l, kn, vn = reference.attention_with_kvcache(host_view(q), kc.copy(), vc.copy(), *new, cache_seqlens=filled,
                                                    **extra, **reference_options(opts))
    kc[...], vc[...] = kn, vn
    if used is not None:
        host_view(used)[...] = np.minimum(filled + k.shape[1], cache.seqlen)
    host_view(out)[...] = o.astype(host_view(out).dtype)
    if lse_rows is not None:
        host_view(lse_rows)[...] = l.transpose(1, 0, 2).reshape(lse_rows.shape)


@pytest.fixture
def fake_kernels(no_gpu, monkeypatch):
    """The callbacks run on JAX's CPU backend, launching the NumPy reference."""
    monkeypatch.setattr(cj, "_stream", lambda ctx: 0)
    monkeypatch.setattr(cj, "_cupy_stream", lambda stream, device: contextlib.nullcontext())
    monkeypatch.setattr(api, "device_scope", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cj, "REPLAY_PLANS", False)  # the stand-ins read the pointers they are given
    monkeypatch.setattr(api, "run_forward", fake_forward)
    monkeypatch.setattr(api, "run_backward", fake_backward)
    monkeypatch.setattr(api, "run_varlen_forward", fake_varlen_forward)
    monkeypatch.setattr(api, "run_varlen_backward", fake_varlen_backward)
    monkeypatch.setattr(api, "run_kvcache", fake_run_kvcache)
    monkeypatch.setattr(cj, "_device_view", host_view)
    FAKE_STATE.clear()
    FAKE_STATE["plans"] = []
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def cpu_inputs(dtype="fp16"):
    host = testing.random_qkv(2, 5, 7, 4, 2, 64, dtype)
    return host, tuple(jnp.asarray(x) for x in host)


def assert_close(name, got, want, tol):
    """max|got - want| <= tol * max(1, max|want|) (got is rounded to fp16; finite where want is)."""
    allowed = tol * max(1.0, float(np.abs(want[np.isfinite(want)]).max(initial=0.0)))
    err = testing.max_abs_err(np.asarray(got), want)
    assert err <= allowed, f"{name}: max error {err:.3e} > {allowed:.1e}"


@needs_jax
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_forward_and_gradients_reach_the_right_buffers(fake_kernels, mode):
    host, (q, k, v) = cpu_inputs()
    dout_h = testing.random_like(host[0])
    dout = jnp.asarray(dout_h).astype(jnp.float32)
    opts = {"causal": True, "window_size": (3, -1)}

    def loss(q, k, v):
        return jnp.sum(cj.attention(q, k, v, **opts).astype(jnp.float32) * dout)

    fwd = lambda q, k, v: cj.attention(q, k, v, return_lse=True, **opts)  # noqa: E731
    grad = jax.grad(loss, argnums=(0, 1, 2))
    if mode == "jit":
        fwd, grad = jax.jit(fwd), jax.jit(grad)
    out, lse = fwd(q, k, v)
    o64, l64 = reference.attention_forward(*host, **opts)
    assert_close("out", out, o64, 2e-3)
    assert_close("lse", lse, l64, 1e-5)
    for name, got, want in zip(("dq", "dk", "dv"), grad(q, k, v), reference.attention_backward(dout_h, *host, **opts)):
        assert got.dtype == jnp.float16
        assert_close(name, got, want, 4e-3)


@needs_jax
def test_lse_cotangent_reaches_the_backward(fake_kernels):
    host, (q, k, v) = cpu_inputs()
    dlse_h = np.random.default_rng().standard_normal((2, 4, 5)).astype(np.float32)

    @jax.jit
    def grads(q, k, v):
        loss = lambda q, k, v: jnp.sum(cj.attention(q, k, v, return_lse=True)[1] * dlse_h)  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    zeros = np.zeros(host[0].shape, np.float32)
    want = reference.attention_backward(zeros, *host, dlse=dlse_h)
    for name, got, w in zip(("dq", "dk", "dv"), grads(q, k, v), want):
        assert_close(name, got, w, 4e-3)


@needs_jax
def test_vmap_runs_one_call_per_element(fake_kernels):
    host, (q, k, v) = cpu_inputs()
    qs, ks, vs = jnp.stack([q, -q]), jnp.stack([k, k]), jnp.stack([v, 2 * v])
    out = jax.jit(jax.vmap(lambda q, k, v: cj.attention(q, k, v, causal=True)))(qs, ks, vs)
    assert out.shape == (2, *q.shape)
    for i in range(2):
        assert np.array_equal(np.asarray(out[i]), np.asarray(cj.attention(qs[i], ks[i], vs[i], causal=True)))


@needs_jax
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_sink_gradient_and_zero_alibi_gradient(fake_kernels, mode):
    host, (q, k, v) = cpu_inputs()
    sink_h = np.array([-1.0, 0.5, 2.0, 4.0], np.float32)
    slopes_h = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)
    dout_h = testing.random_like(host[0])
    dlse_h = np.random.default_rng().standard_normal((2, 4, 5)).astype(np.float32)
    dout = jnp.asarray(dout_h).astype(jnp.float32)

    def loss(q, k, v, sink, slopes):
        out, lse = cj.attention(q, k, v, causal=True, learnable_sink=sink, alibi_slopes=slopes, return_lse=True)
        return jnp.sum(out.astype(jnp.float32) * dout) + jnp.sum(lse * dlse_h)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4))
    if mode == "jit":
        grad = jax.jit(grad)
    dq, dk, dv, dsink, dslopes = grad(q, k, v, jnp.asarray(sink_h), jnp.asarray(slopes_h))
    want = reference.attention_backward(dout_h, *host, causal=True, learnable_sink=sink_h, alibi_slopes=slopes_h,
                                        dlse=dlse_h)
    for name, got, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want[:3]):
        assert_close(name, got, w, 4e-3)
    assert dsink.shape == (4,) and dsink.dtype == jnp.float32
    assert_close("dsink", dsink, want[4], 1e-2)
    assert dslopes.shape == (4,) and not np.asarray(dslopes).any()


# ---- variable-length batches


def packed_inputs(lengths_q=(3, 0, 5), lengths_k=(4, 2, 6), nheads=4, nheads_kv=2):
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lengths_q, lengths_k))
    q, k, v = testing.random_qkv(1, int(cu_q[-1]), int(cu_k[-1]), nheads, nheads_kv, 64, "fp16")
    host = (q[0], k[0], v[0])
    return host, tuple(jnp.asarray(x) for x in host), cu_q, cu_k


@needs_jax
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_varlen_forward_and_gradients(fake_kernels, mode):
    host, (q, k, v), cu_q, cu_k = packed_inputs()
    sink_h = np.array([-1.0, 0.5, 2.0, 4.0], np.float32)
    dout_h = testing.random_like(host[0])
    dlse_h = np.random.default_rng().standard_normal((4, host[0].shape[0])).astype(np.float32)
    opts = {"causal": True}

    def run(q, k, v, cu_q, cu_k, sink):
        return cj.attention_varlen(q, k, v, cu_q, cu_k, 5, 6, learnable_sink=sink, return_lse=True, **opts)

    def loss(q, k, v, sink, cu_q, cu_k):
        out, lse = run(q, k, v, cu_q, cu_k, sink)
        return jnp.sum(out.astype(jnp.float32) * dout_h) + jnp.sum(lse * dlse_h)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    if mode == "jit":
        run, grad = jax.jit(run), jax.jit(grad)
    args = (jnp.asarray(cu_q), jnp.asarray(cu_k))
    out, lse = run(q, k, v, *args, jnp.asarray(sink_h))
    o64, l64 = reference.attention_forward_varlen(*host, cu_q, cu_k, learnable_sink=sink_h, **opts)
    assert out.shape == host[0].shape and lse.shape == (4, host[0].shape[0])
    assert_close("out", out, o64, 2e-3)
    assert_close("lse", lse, l64, 1e-5)
    want = reference.attention_backward_varlen(dout_h, *host, cu_q, cu_k, learnable_sink=sink_h, dlse=dlse_h, **opts)
    got = grad(q, k, v, jnp.asarray(sink_h), *args)
    for name, g, w in zip(("dq", "dk", "dv", "dsink"), got, want):
        assert_close(name, g, w, 1e-2 if name == "dsink" else 4e-3)


@needs_jax
@pytest.mark.parametrize("nheads_kv", [4, 2], ids=["mha", "gqa"])
def test_varlen_seqused_k_clears_the_unused_keys(fake_kernels, nheads_kv):
    host, (q, k, v), cu_q, cu_k = packed_inputs(nheads_kv=nheads_kv)
    used = np.array([2, 1, 6], np.int32)
    dout_h = testing.random_like(host[0])

    def loss(q, k, v):
        out = cj.attention_varlen(q, k, v, jnp.asarray(cu_q), jnp.asarray(cu_k), 5, 6, seqused_k=jnp.asarray(used))
        return jnp.sum(out.astype(jnp.float32) * dout_h)

    dq, dk, dv = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    want = reference.attention_backward_varlen(dout_h, *host, cu_q, cu_k, seqused_k=used)
    for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
        assert_close(name, g, w, 4e-3)
    assert not np.asarray(dk)[cu_k[0] + 2: cu_k[1]].any()


@needs_jax
@pytest.mark.parametrize("change, error, match", [
    (dict(cu_seqlens_q=np.array([0, 3, 2, 8], np.int32)), ValueError, r"cu_seqlens_q"),
    (dict(cu_seqlens_k=np.array([0, 4, 6], np.int32)), ValueError, r"cu_seqlens_k must have shape \(4,\)"),
    (dict(cu_seqlens_q=np.array([0, 3, 3, 8], np.float32)), TypeError, r"cu_seqlens_q must be int32"),
    (dict(max_seqlen_q=-1), ValueError, r"max_seqlen_q must be an int >= 0"),
    (dict(max_seqlen_q=4), ValueError, r"max_seqlen_q"),
    (dict(seqused_k=np.array([5, 0, 1], np.int32)), ValueError, r"seqused_k\[0\]"),
], ids=lambda x: None)
def test_varlen_bad_input_is_named(no_gpu, change, error, match):
    host, (q, k, v), cu_q, cu_k = packed_inputs()
    args = {**dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=5, max_seqlen_k=6), **change}
    arrays = {n: jnp.asarray(args.pop(n)) for n in ("cu_seqlens_q", "cu_seqlens_k", "seqused_k") if n in args}
    with pytest.raises(error, match=match):
        cj.attention_varlen(q, k, v, arrays.pop("cu_seqlens_q"), arrays.pop("cu_seqlens_k"), args["max_seqlen_q"],
                            args["max_seqlen_k"], **arrays)


# ---- additive bias


def random_bias(shape, dtype):
    return (np.random.default_rng().standard_normal(shape) * 2).astype(testing.resolve_dtype(dtype))


BIAS_CASES = {
    # name: (bias shape for q (2, 5, 4, 64), k (2, 7, 2, 64), bias dtype); bf16 beside fp16 q: widened
    "full": ((2, 4, 5, 7), "fp16"),
    "heads": ((1, 4, 5, 7), "fp32"),
    "per_key": ((2, 1, 1, 7), "bf16"),
    "keys_1d": ((7,), "fp16"),
    "rows_3d": ((4, 5, 7), "bf16"),
}


@needs_jax
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("case", list(BIAS_CASES))
def test_bias_forward_and_gradient(fake_kernels, case, mode, deterministic):
    shape, dtype = BIAS_CASES[case]
    host, (q, k, v) = cpu_inputs()
    bias_h = random_bias(shape, dtype)
    dout_h = testing.random_like(host[0])
    opts = {"causal": True, "deterministic": deterministic}

    def fwd(q, k, v, bias):
        return cj.attention(q, k, v, bias=bias, return_lse=True, **opts)

    def loss(q, k, v, bias):
        return jnp.sum(cj.attention(q, k, v, bias=bias, **opts).astype(jnp.float32) * dout_h)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    if mode == "jit":
        fwd, grad = jax.jit(fwd), jax.jit(grad)
    out, lse = fwd(q, k, v, jnp.asarray(bias_h))
    o64, l64 = reference.attention_forward(*host, causal=True, bias=bias_h)
    assert_close("out", out, o64, 2e-3)
    assert_close("lse", lse, l64, 1e-5)
    got = grad(q, k, v, jnp.asarray(bias_h))
    want = reference.attention_backward(dout_h, *host, causal=True, bias=bias_h)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert g.shape == w.shape, name
        assert_close(name, g, w, 1e-2 if name == "dbias" else 4e-3)
    assert got[3].dtype == bias_h.dtype, "dbias comes back in the bias's dtype"
    (plan,) = FAKE_STATE["plans"]
    broadcast = len(shape) < 4 or 1 in shape[:3]
    assert bool(plan.sum_axes) == (deterministic and broadcast), plan  # deterministic: expanded, then summed


@needs_jax
def test_bias_requires_grad_false_gives_zeros_without_computing(fake_kernels):
    host, (q, k, v) = cpu_inputs()
    bias = jnp.asarray(random_bias((1, 4, 5, 7), "fp32"))

    def loss(q, bias):
        return jnp.sum(cj.attention(q, k, v, bias=bias, bias_requires_grad=False).astype(jnp.float32))

    dq, dbias = jax.jit(jax.grad(loss, argnums=(0, 1)))(q, bias)
    assert dbias.shape == bias.shape and not np.asarray(dbias).any()
    assert FAKE_STATE["plans"] == [], "the backward computed dbias"
    want = reference.attention_backward(np.ones(host[0].shape, np.float32), *host, bias=np.asarray(bias))[0]
    assert_close("dq", dq, want, 4e-3)


@needs_jax
def test_bias_gradient_shapes_and_dtypes(no_gpu):
    def grads(bias_shape, bias_dtype, **options):
        def loss(q, k, v, bias):
            return cj.attention(q, k, v, bias=bias, **options).astype(jnp.float32).sum()

        return jax.eval_shape(jax.grad(loss, argnums=(0, 3)), sds(Q), sds(KV), sds(KV), sds(bias_shape, bias_dtype))

    assert grads((2, 1, 5, 7), "bfloat16") == (sds(Q), sds((2, 1, 5, 7), "bfloat16"))  # widened, then back
    assert grads((7,), "float32", deterministic=True) == (sds(Q), sds((7,), "float32"))
    assert grads((4, 5, 7), "float16", bias_requires_grad=False) == (sds(Q), sds((4, 5, 7), "float16"))


BAD_BIAS = [
    ((2, 4, 5, 6), F32, ValueError, r"bias of shape \(2, 4, 5, 6\) does not broadcast"),
    ((3, 4, 5, 7), F32, ValueError, r"does not broadcast to \(batch, nheads, seqlen_q, seqlen_k\)"),
    ((1, 1, 1, 1, 7), F32, ValueError, r"bias must have 1 to 4 dims"),
    ((5, 7), "int32", TypeError, r"bias must be float16, bfloat16 or float32, got int32"),
]


@needs_jax
@pytest.mark.parametrize("shape, dtype, error, match", BAD_BIAS, ids=lambda x: None)
def test_bad_bias_is_named(no_gpu, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        jax.eval_shape(lambda q, k, v, b: cj.attention(q, k, v, bias=b), sds(Q), sds(KV), sds(KV), sds(shape, dtype))


# ---- dropout


@needs_jax
def test_seed_words():
    def words(seed):
        return [int(x) for x in np.asarray(cj.seed_words(seed))]

    assert words(2**40 + 5) == [5, 2**8, 0]
    assert words((7, 3)) == [7, 0, 3]
    key = jax.random.key(11)
    assert words(key) == [int(x) for x in jax.random.bits(key, (3,), jnp.uint32)]
    assert words(jax.random.PRNGKey(11)) == words(key)  # a legacy key draws the same bits
    assert words(np.array([1, 2, 3], np.uint32)) == [1, 2, 3]
    assert cj.seed_words(jnp.zeros(3, jnp.uint32)).dtype == jnp.uint32
    for bad, error, match in ((np.zeros(3, np.int32), TypeError, r"seed must be a JAX PRNG key.*int32 \(3,\)"),
                              (jax.random.split(key), ValueError, r"seed must be one PRNG key"),
                              (1.5, TypeError, r"seed must be a JAX PRNG key"),
                              (True, TypeError, r"seed must be a JAX PRNG key"),
                              (-1, ValueError, r"seed must be in \[0, "),
                              ((1, 2**32), ValueError, r"seed's offset must be in")):
        with pytest.raises(error, match=match):
            cj.seed_words(bad)


SEEDS = {
    "key": lambda: jax.random.key(3),
    "legacy_key": lambda: jax.random.PRNGKey(4),
    "words": lambda: jnp.asarray(np.array([5, 6, 7], np.uint32)),
    "int": lambda: (2**40 + 9, 3),
}


@needs_jax
@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("kind", list(SEEDS))
def test_dropout_uses_the_seed_words_forward_and_backward(fake_kernels, kind, mode):
    host, (q, k, v) = cpu_inputs()
    seed, p = SEEDS[kind](), 0.3
    mask = reference.dropout_keep_mask(*seed_of(cj.seed_words(seed)), 2, 4, 5, 7, p)
    assert 0 < mask.mean() < 1
    dout_h = testing.random_like(host[0])
    array_seed = not isinstance(seed, tuple)  # an int seed is a Python value: closed over

    def fwd(q, k, v, s):
        return cj.attention(q, k, v, dropout_p=p, seed=s if array_seed else seed, return_lse=True)

    def loss(q, k, v, s):
        return jnp.sum(fwd(q, k, v, s)[0].astype(jnp.float32) * dout_h)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    if mode == "jit":
        fwd, grad = jax.jit(fwd), jax.jit(grad)
    s = seed if array_seed else None
    out, lse = fwd(q, k, v, s)
    o64, l64 = reference.attention_forward(*host, dropout_p=p, dropout_mask=mask)
    assert_close("out", out, o64, 2e-3)
    assert_close("lse", lse, l64, 1e-5)
    want = reference.attention_backward(dout_h, *host, dropout_p=p, dropout_mask=mask)
    for name, g, w in zip(("dq", "dk", "dv"), grad(q, k, v, s), want):
        assert_close(name, g, w, 4e-3)


@needs_jax
def test_a_traced_key_changes_the_mask_without_recompiling(fake_kernels):
    _, (q, k, v) = cpu_inputs()
    f = jax.jit(lambda q, k, v, key: cj.attention(q, k, v, dropout_p=0.5, seed=key))
    a, b = f(q, k, v, jax.random.key(1)), f(q, k, v, jax.random.key(2))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(a), np.asarray(f(q, k, v, jax.random.key(1))))
    assert f._cache_size() == 1


@needs_jax
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_varlen_dropout_uses_each_sequences_own_coordinates(fake_kernels, mode):
    # Sequence b reads the mask of batch row b at its own query and key positions (as
    # cuflash.attention_varlen), forward and backward, with a traced key.
    host, (q, k, v), cu_q, cu_k = packed_inputs()
    p, key = 0.3, jax.random.key(5)
    mask = reference.dropout_keep_mask(*seed_of(cj.seed_words(key)), 3, 4, 5, 6, p)
    dout_h = testing.random_like(host[0])
    cus = (jnp.asarray(cu_q), jnp.asarray(cu_k))

    def fwd(q, k, v, key):
        return cj.attention_varlen(q, k, v, *cus, 5, 6, causal=True, dropout_p=p, seed=key, return_lse=True)

    def loss(q, k, v, key):
        return jnp.sum(fwd(q, k, v, key)[0].astype(jnp.float32) * dout_h)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    if mode == "jit":
        fwd, grad = jax.jit(fwd), jax.jit(grad)
    out, lse = fwd(q, k, v, key)
    opts = dict(causal=True, dropout_p=p, dropout_mask=mask)
    o64, l64 = reference.attention_forward_varlen(*host, cu_q, cu_k, **opts)
    assert_close("out", out, o64, 2e-3)
    assert_close("lse", lse, l64, 1e-5)
    plain = reference.attention_forward_varlen(*host, cu_q, cu_k, causal=True)[0]
    assert np.abs(np.asarray(out, np.float32) - plain).max() > 0.1, "the mask dropped nothing"
    want = reference.attention_backward_varlen(dout_h, *host, cu_q, cu_k, **opts)
    for name, g, w in zip(("dq", "dk", "dv"), grad(q, k, v, key), want):
        assert_close(name, g, w, 4e-3)


BAD_DROPOUT = [
    ({"dropout_p": 1.0, "seed": 1}, ValueError, r"dropout_p must be in \[0, 1\)"),
    ({"dropout_p": "x", "seed": 1}, TypeError, r"dropout_p must be a number"),
    ({"dropout_p": 0.1}, ValueError, r"dropout_p > 0 needs seed"),
    ({"dropout_p": 0.1, "seed": 0.5}, TypeError, r"seed must be a JAX PRNG key"),
    ({"dropout_p": 0.1, "seed": np.zeros(4, np.uint32)}, TypeError, r"seed must be .*uint32 \(4,\)"),
]


@needs_jax
@pytest.mark.parametrize("options, error, match", BAD_DROPOUT, ids=lambda x: None)
def test_bad_dropout_is_named(no_gpu, options, error, match):
    with pytest.raises(error, match=match):
        shapes(**options)


@needs_jax
@pytest.mark.parametrize("options, error, match", BAD_DROPOUT, ids=lambda x: None)
def test_varlen_bad_dropout_is_named(no_gpu, options, error, match):
    _, (q, k, v), cu_q, cu_k = packed_inputs()
    with pytest.raises(error, match=match):
        cj.attention_varlen(q, k, v, jnp.asarray(cu_q), jnp.asarray(cu_k), 5, 6, **options)


@needs_jax
def test_traced_dropout_p_is_refused(no_gpu):
    with pytest.raises(TypeError, match=r"dropout_p must be a Python value known at trace time"):
        jax.eval_shape(lambda q, p: cj.attention(q, q, q, dropout_p=p, seed=1), sds(Q), sds((), "float32"))


@needs_jax
def test_dropout_gradient_shapes(no_gpu):
    def loss(q, k, v, key):
        return cj.attention(q, k, v, dropout_p=0.1, seed=key, causal=True).astype(jnp.float32).sum()

    key = jax.eval_shape(lambda: jax.random.key(0))
    assert jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), sds(Q), sds(KV), sds(KV), key) == (sds(Q), sds(KV),
                                                                                                 sds(KV))


# ---- attention over a KV cache


def as_pages(cache, page_size, order):
    """A contiguous cache (batch, seqlen, ...) as pages (num_pages, page_size, ...) in `order`, and the
    int32 block table (batch, pages per row) that reads it back."""
    batch, seqlen = cache.shape[:2]
    per_row = -(-seqlen // page_size)
    padded = np.zeros((batch, per_row * page_size, *cache.shape[2:]), cache.dtype)
    padded[:, :seqlen] = cache
    pages = np.zeros((len(order), page_size, *cache.shape[2:]), cache.dtype)
    pages[order[:batch * per_row]] = padded.reshape(batch * per_row, page_size, *cache.shape[2:])
    return pages, order[:batch * per_row].reshape(batch, per_row).astype(np.int32)


def kvcache_case(case):
    """(q, k_cache, v_cache, k, v, cache_seqlens, options) as NumPy arrays for a case: q (2, 3, 4, 64),
    caches of 12 keys per row, 2 kv heads."""
    rng = np.random.default_rng()
    q, kc, vc = testing.random_qkv(2, 3, 12, 4, 2, 64, "fp16")
    _, k, v = testing.random_qkv(2, 3, 3, 4, 2, 64, "fp16")
    lengths = np.array([0, 7], np.int32)
    opts = {"causal": True}
    if case == "int_length":
        lengths = 10  # rows past the end are dropped
    elif case == "paged":
        order = rng.permutation(8)
        (kc, table), (vc, _) = as_pages(kc, 4, order), as_pages(vc, 4, order)
        opts["block_table"] = table
    elif case == "everything":
        idx = np.array([2, 0], np.int32)
        kc, vc = (np.concatenate([x, x[:1]])[[1, 2, 0]] for x in (kc, vc))  # 3 cache rows, batch reads 2 and 0
        angles = np.outer(np.arange(12), 1.0 / 10000 ** (np.arange(16) / 16))
        opts.update(cache_batch_idx=idx, cache_leftpad=np.array([0, 2], np.int32), window_size=(5, 0),
                    rotary_cos=np.cos(angles).astype(np.float16), rotary_sin=np.sin(angles).astype(np.float16),
                    rotary_interleaved=False, alibi_slopes=np.array([[0.5, 0.25, 0.1, 0.05]] * 2, np.float32),
                    learnable_sink=np.array([-1.0, 0.0, 1.0, 2.0], np.float32), softcap=20.0, num_splits=3)
    elif case == "no_append":
        k = v = None
    return q, kc, vc, k, v, lengths, opts


KV_CASES = ["append", "int_length", "paged", "everything", "no_append"]


@needs_jax
@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("case", KV_CASES)
def test_kvcache_matches_reference(fake_kernels, case, mode):
    q, kc, vc, k, v, lengths, opts = kvcache_case(case)
    arrays = {n: jnp.asarray(x) for n, x in opts.items() if isinstance(x, np.ndarray)}
    static = {n: x for n, x in opts.items() if n not in arrays}
    if isinstance(lengths, int):  # a Python int is a static option
        static["cache_seqlens"] = lengths
    else:
        arrays["cache_seqlens"] = jnp.asarray(lengths)

    def run(q, kc, vc, k, v, arrays):
        return cj.attention_with_kvcache(q, kc, vc, k, v, return_lse=True, **arrays, **static)

    if mode == "jit":
        run = jax.jit(run)
    out, lse, kc2, vc2 = run(*(None if x is None else jnp.asarray(x) for x in (q, kc, vc, k, v)), arrays)
    ropts = {n: x for n, x in opts.items() if n != "num_splits"}
    r = reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lengths, **ropts)
    assert out.shape == q.shape and lse.shape == (2, 4, 3) and kc2.shape == kc.shape
    assert_close("out", out, r[0], 2e-3)
    assert_close("lse", lse, r[1], 1e-5)
    for name, got, want in (("k_cache", kc2, r[2]), ("v_cache", vc2, r[3])):
        assert np.array_equal(np.asarray(got).view(np.uint16), want.view(np.uint16)), name
    assert FAKE_STATE["kvcache"]["num_splits"] == opts.get("num_splits", 0)
    if case == "no_append":
        assert kc2 is not None and np.array_equal(np.asarray(kc2), kc)


@needs_jax
def test_kvcache_append_is_in_place_under_donation(fake_kernels):
    q, kc, vc, k, v, lengths, _ = kvcache_case("append")
    q, kc, vc, k, v, lengths = (jnp.asarray(x) for x in (q, kc, vc, k, v, lengths))
    step = jax.jit(lambda q, kc, vc, k, v, n: cj.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=n),
                   donate_argnums=(1, 2))
    before = np.asarray(kc).copy()
    pointers = (kc.unsafe_buffer_pointer(), vc.unsafe_buffer_pointer())
    out, kc2, vc2 = step(q, kc, vc, k, v, lengths)
    assert (kc2.unsafe_buffer_pointer(), vc2.unsafe_buffer_pointer()) == pointers, "the caches were copied"
    assert FAKE_STATE["kvcache"]["cache_ptrs"] == pointers
    assert kc.is_deleted() and vc.is_deleted()
    assert not np.array_equal(np.asarray(kc2), before)
    # without donation the inputs stay as they were: XLA copies them first
    kc3 = jnp.asarray(before)
    _, kc4, _ = jax.jit(lambda *a: cj.attention_with_kvcache(*a[:5], cache_seqlens=a[5]))(q, kc3, vc2, k, v, lengths)
    assert np.array_equal(np.asarray(kc3), before) and not np.array_equal(np.asarray(kc4), before)


BAD_KVCACHE = [
    # (change to the "append" case, error, message)
    ({"v": None}, ValueError, r"k and v come together"),
    ({"cache_seqlens": 13}, ValueError, r"cache_seqlens \(13\) must be in \[0, 12\]"),
    ({"cache_seqlens": np.zeros(3, np.int32)}, ValueError, r"cache_seqlens must be an int or a contiguous int32"),
    ({"k": np.zeros((2, 3, 3, 64), np.float16)}, ValueError, r"k must have shape \(batch, seqlen_new"),
    ({"block_table": np.zeros((2, 3), np.float32)}, ValueError, r"block_table must be an int32 array"),
    ({"block_table": np.full((2, 3), 5, np.int32)}, ValueError, r"block_table entries must be in \[0, 2\)"),
    ({"cache_batch_idx": np.array([0, 2], np.int32)}, ValueError, r"cache_batch_idx entries must be in \[0, 2\)"),
    ({"rotary_cos": np.zeros((12, 8), np.float16)}, ValueError, r"rotary_cos and rotary_sin come together"),
    ({"num_splits": -1}, ValueError, r"num_splits must be an int >= 0"),
    ({"learnable_sink": np.zeros(3, np.float32)}, ValueError, r"learnable_sink must have shape \(nheads,\)"),
    ({"window_size": (-3, 0)}, ValueError, r"window_size entries must be >= -1"),
]


@needs_jax
@pytest.mark.parametrize("change, error, match", BAD_KVCACHE, ids=lambda x: None)
def test_bad_kvcache_input_is_named(fake_kernels, change, error, match):
    q, kc, vc, k, v, lengths, opts = kvcache_case("append")
    args = {**dict(q=q, k_cache=kc, v_cache=vc, k=k, v=v, cache_seqlens=lengths), **opts, **change}
    args = {n: jnp.asarray(x) if isinstance(x, np.ndarray) else x for n, x in args.items()}
    with pytest.raises(error, match=match):
        cj.attention_with_kvcache(**args)
    assert "kvcache" not in FAKE_STATE, "a refused call ran"


@needs_jax
def test_kvcache_index_checks_are_skipped_under_jit_and_options_must_be_static(no_gpu):
    q, kc, vc, k, v, lengths, _ = kvcache_case("append")
    table = jnp.full((2, 3), 5, jnp.int32)  # out of range: only an eager call can see it
    f = jax.jit(lambda q, kc, vc, t: cj.attention_with_kvcache(q, kc, vc, block_table=t, cache_seqlens=3))
    pages = jnp.zeros((2, 4, 2, 64), jnp.float16)
    f.lower(jnp.asarray(q), pages, pages, table)
    with pytest.raises(ValueError, match=r"block_table entries must be in \[0, 2\)"):
        cj.attention_with_kvcache(jnp.asarray(q), pages, pages, block_table=table, cache_seqlens=3)
    with pytest.raises(TypeError, match=r"num_splits must be a Python value known at trace time"):
        jax.eval_shape(lambda q, kc, n: cj.attention_with_kvcache(q, kc, kc, cache_seqlens=1, num_splits=n),
                       sds(q.shape), sds(kc.shape), sds((), "int32"))


@needs_jax
def test_kvcache_shapes(no_gpu):
    def run(**options):
        return jax.eval_shape(lambda q, kc, k, n: cj.attention_with_kvcache(q, kc, kc, k, k, cache_seqlens=n,
                                                                            **options),
                              sds((2, 3, 4, 64)), sds((2, 12, 2, 64)), sds((2, 3, 2, 64)), sds((2,), "int32"))

    assert run() == (sds((2, 3, 4, 64)), sds((2, 12, 2, 64)), sds((2, 12, 2, 64)))
    out, lse, kc, vc = run(return_lse=True, causal=True)
    assert lse == sds((2, 4, 3), "float32") and kc == vc == sds((2, 12, 2, 64))


@needs_jax
def test_vmap_with_bias_dropout_and_a_kvcache(fake_kernels):
    """Under vmap each element is its own call: its own bias, key and caches (one launch each)."""
    _, (q, k, v) = cpu_inputs()
    bias = jnp.stack([jnp.zeros((4, 5, 7), jnp.float32), jnp.ones((4, 5, 7), jnp.float32)])
    keys = jax.random.split(jax.random.key(0), 2)

    def f(q, b, key):
        return cj.attention(q, k, v, bias=b, dropout_p=0.2, seed=key)

    def loss(q, b, key):
        return f(q, b, key).astype(jnp.float32).sum()

    out = jax.jit(jax.vmap(f))(jnp.stack([q, -q]), bias, keys)
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(jnp.stack([q, -q]), bias, keys)
    for i, qi in enumerate((q, -q)):
        assert np.array_equal(np.asarray(out[i]), np.asarray(f(qi, bias[i], keys[i])))
        for a, b in zip(grads, jax.grad(loss, argnums=(0, 1))(qi, bias[i], keys[i])):
            assert np.array_equal(np.asarray(a[i]), np.asarray(b))
    qh, kc, vc, kn, vn, lengths, _ = kvcache_case("append")
    run = lambda *a: cj.attention_with_kvcache(*a[:5], cache_seqlens=a[5])  # noqa: E731
    stacked = [jnp.stack([jnp.asarray(x)] * 2) for x in (qh, kc, vc, kn, vn, lengths)]
    out, kc2, vc2 = jax.jit(jax.vmap(run))(*stacked)
    one = run(*(jnp.asarray(x) for x in (qh, kc, vc, kn, vn, lengths)))
    for a, b in zip((out, kc2, vc2), one):
        assert np.array_equal(np.asarray(a[1]), np.asarray(b))
