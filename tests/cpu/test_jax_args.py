"""cuflash.jax without a GPU: argument checks at trace time (each error naming its
argument), output and gradient shapes (jax.eval_shape), and the plumbing of the
callbacks and the custom VJP, run on JAX's CPU backend with the kernel launches
replaced by the NumPy reference (cuflash.reference) reading and writing the
buffers through their pointers. Skipped where JAX is not installed (except the
checks that `import cuflash` never imports JAX).
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
    (((Q, F32), (KV, F32), (KV, F32)), TypeError, r"q has dtype float32"),
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
    """A NumPy array over a Ref's (host) memory."""
    dtype = testing.resolve_dtype(ref.dtype)
    n = int(np.prod(ref.shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ref.ptr), dtype=dtype).reshape(ref.shape)


def reference_options(opts):
    ropts = {"softmax_scale": opts.scale, "window_size": opts.window, "softcap": opts.softcap}
    if opts.alibi_slopes is not None:
        ropts["alibi_slopes"] = host_view(opts.alibi_slopes)
    if opts.learnable_sink is not None:
        ropts["learnable_sink"] = host_view(opts.learnable_sink)
    return ropts


def fake_forward(q, k, v, out, lse, opts, stream):
    o, l = reference.attention_forward(host_view(q), host_view(k), host_view(v), **reference_options(opts))
    host_view(out)[...] = o.astype(host_view(out).dtype)
    if lse is not None:
        host_view(lse)[...] = l


def fake_backward(dout, q, k, v, out, lse, dq, dk, dv, opts, deterministic, dlse, alloc, stream):
    """The reference's dq, dk, dv; with a sink returns a SinkPart the way launch.backward does (a
    1-D scratch with the parts at an offset, here one "CTA" per (batch, head): sum_i P_sink,i
    rowsum(dout * out)_i), from which the adapter computes dsink."""
    grads = reference.attention_backward(host_view(dout), host_view(q), host_view(k), host_view(v),
                                         dlse=None if dlse is None else host_view(dlse), **reference_options(opts))
    for ref, g in zip((dq, dk, dv), grads[:3]):
        host_view(ref)[...] = g.astype(host_view(ref).dtype)
    if opts.learnable_sink is None:
        return None
    rows = np.einsum("bqhd,bqhd->bhq", host_view(dout).astype(np.float32), host_view(out).astype(np.float32))
    p_sink = np.exp(host_view(opts.learnable_sink)[None, :, None] - host_view(lse))
    parts = (p_sink * rows).sum(axis=2, keepdims=True)
    scratch = np.concatenate([np.zeros(5, np.float32), parts.ravel().astype(np.float32)])
    return launch.SinkPart(scratch, 5, parts.shape)


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


def fake_varlen_forward(q, k, v, out, lse, opts, sequences, max_seqlen_q, stream):
    cu_q, cu_k, used = varlen_inputs(q, sequences)
    o, l = reference.attention_forward_varlen(rows_view(q), rows_view(k), rows_view(v), cu_q, cu_k, seqused_k=used,
                                              **reference_options(opts))
    rows_view(out)[...] = o.astype(rows_view(out).dtype)
    if lse is not None:
        host_view(lse)[...] = l


def fake_varlen_backward(dout, q, k, v, out, lse, dq, dk, dv, opts, deterministic, dlse, alloc, stream, sequences,
                         max_seqlen_q, max_seqlen_k):
    """The reference's gradients; with a sink a SinkPart of one "CTA" per head (as fake_backward)."""
    cu_q, cu_k, used = varlen_inputs(q, sequences)
    grads = reference.attention_backward_varlen(rows_view(dout), rows_view(q), rows_view(k), rows_view(v), cu_q,
                                                cu_k, seqused_k=used, dlse=None if dlse is None else host_view(dlse),
                                                **reference_options(opts))
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


@pytest.fixture
def fake_kernels(no_gpu, monkeypatch):
    """The callbacks run on JAX's CPU backend, launching the NumPy reference."""
    monkeypatch.setattr(cj, "_stream", lambda ctx: 0)
    monkeypatch.setattr(cj, "_cupy_stream", lambda stream, device: contextlib.nullcontext())
    monkeypatch.setattr(api, "device_scope", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(api, "run_forward", fake_forward)
    monkeypatch.setattr(api, "run_backward", fake_backward)
    monkeypatch.setattr(api, "run_varlen_forward", fake_varlen_forward)
    monkeypatch.setattr(api, "run_varlen_backward", fake_varlen_backward)
    monkeypatch.setattr(cj, "_device_view", host_view)
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
def test_varlen_seqused_k_clears_the_unused_keys(fake_kernels):
    host, (q, k, v), cu_q, cu_k = packed_inputs(nheads_kv=4)
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


@needs_jax
def test_varlen_seqused_backward_under_gqa_is_refused_at_trace_time(no_gpu):
    host, (q, k, v), cu_q, cu_k = packed_inputs()

    def loss(q):
        return jnp.sum(cj.attention_varlen(q, k, v, jnp.asarray(cu_q), jnp.asarray(cu_k), 5, 6,
                                           seqused_k=jnp.asarray(np.array([1, 1, 1], np.int32))).astype(jnp.float32))

    with pytest.raises(NotImplementedError, match="seqused_k in the backward with GQA"):
        jax.eval_shape(jax.grad(loss), q)
