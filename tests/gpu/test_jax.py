"""cuflash.jax on the GPU: forward, lse and gradients against the float64 reference
(the accuracy rule of cuflash.testing), eagerly and under jax.jit; against
jax.nn.dot_product_attention; deterministic gradients; vmap; bad input named at
trace time. Skipped without JAX's CUDA backend.
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # CuPy (the backward's scratch) shares the GPU

import numpy as np
import pytest

from cuflash import reference, testing

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

try:
    _GPU = jax.default_backend() == "gpu"
except RuntimeError:  # pragma: no cover
    _GPU = False
if not _GPU:
    pytest.skip("JAX has no CUDA backend here", allow_module_level=True)

import cuflash.jax as cj  # noqa: E402

MODES = ["eager", "jit"]


def host_inputs(dtype, seqlens, *, nheads=4, ratio=1, head_dim=128, batch=2):
    """Fresh random q, k, v as NumPy arrays (bf16 as ml_dtypes.bfloat16)."""
    return testing.random_qkv(batch, *seqlens, nheads, nheads // ratio, head_dim, dtype)


def sink_logits(nheads):
    """float32 (nheads,) from negligible to dominant for rows of a few hundred keys."""
    rng = np.random.default_rng()
    return rng.permutation(np.linspace(-3.0, 8.0, nheads) + rng.uniform(-0.5, 0.5, nheads)).astype(np.float32)


def alibi(nheads):
    return (2.0 ** (-8.0 * np.arange(1, nheads + 1) / nheads)).astype(np.float32)


class Failures:
    """Applies the accuracy rule to several outputs and fails once, naming all that are off."""

    def __init__(self, label):
        self.label, self.messages = label, []

    def rule(self, name, got, ref64, ref_lowp, dtype, kind):
        try:
            testing.check_accuracy(f"{name} {self.label}", np.asarray(got), ref64, ref_lowp, dtype, kind=kind)
        except AssertionError as e:
            self.messages.append(str(e))

    def done(self):
        if self.messages:
            raise AssertionError(f"{len(self.messages)} output(s) off:\n" + "\n".join(self.messages))


def run_case(dtype, seqlens, *, nheads, ratio, static, arrays, mode, label):
    """cuflash.jax forward (with lse) and jax.grad of sum(out * dout) checked against both references.
    static: Python options; arrays: {"learnable_sink" / "alibi_slopes": NumPy float32}."""
    host = host_inputs(dtype, seqlens, nheads=nheads, ratio=ratio)
    q, k, v = (jnp.asarray(x) for x in host)
    dout_h = testing.random_like(host[0])
    dout = jnp.asarray(dout_h).astype(jnp.float32)
    extra = {n: jnp.asarray(a) for n, a in arrays.items()}

    def forward(q, k, v, extra):
        return cj.attention(q, k, v, return_lse=True, **static, **extra)

    def loss(q, k, v, extra):
        return jnp.sum(cj.attention(q, k, v, **static, **extra).astype(jnp.float32) * dout)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    if mode == "jit":
        forward, grad = jax.jit(forward), jax.jit(grad)
    out, lse = forward(q, k, v, extra)
    dq, dk, dv, dextra = grad(q, k, v, extra)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == jnp.float32

    ropts = {**static, **arrays}
    checks = Failures(label)
    f64 = reference.attention_forward(*host, precision="float64", **ropts)
    flp = reference.attention_forward(*host, precision="lowp", **ropts)
    checks.rule("out", out, f64[0], flp[0], dtype, "fwd")
    checks.rule("lse", lse, f64[1], flp[1], dtype, "fwd")
    b64 = reference.attention_backward(dout_h, *host, precision="float64", **ropts)
    blp = reference.attention_backward(dout_h, *host, precision="lowp", **ropts)
    for name, got, x64, xlp in zip(("dq", "dk", "dv"), (dq, dk, dv), b64[:3], blp[:3]):
        assert got.shape == x64.shape and got.dtype == q.dtype, name
        checks.rule(name, got, x64, xlp, dtype, "bwd")
    if "learnable_sink" in arrays:
        dsink = dextra["learnable_sink"]
        assert dsink.shape == (nheads,) and dsink.dtype == jnp.float32
        checks.rule("dsink", dsink, b64[4], blp[4], dtype, "bwd")
    if "alibi_slopes" in arrays:
        assert not np.asarray(dextra["alibi_slopes"]).any(), "alibi_slopes must get a zero gradient"
    checks.done()


CASES = {
    # name: (dtype, seqlens, nheads, ratio, static options, array options)
    "plain": ("fp16", (113, 203), 4, 1, {}, lambda h: {}),
    # seqlen_q > seqlen_k: the first 90 queries see no key (out 0, lse -inf, zero gradients)
    "causal_gqa4": ("bf16", (203, 113), 8, 4, {"causal": True}, lambda h: {}),
    "window_softcap": ("fp16", (113, 203), 4, 1,
                       {"window_size": (32, 16), "softcap": 30.0, "softmax_scale": 6.0 / math.sqrt(128)},
                       lambda h: {}),
    "sink_alibi_causal": ("bf16", (113, 203), 4, 2, {"causal": True},
                          lambda h: {"learnable_sink": sink_logits(h), "alibi_slopes": alibi(h)}),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, mode):
    dtype, seqlens, nheads, ratio, static, arrays = CASES[case]
    run_case(dtype, seqlens, nheads=nheads, ratio=ratio, static=static, arrays=arrays(nheads), mode=mode,
             label=f"{case} {mode}")


def test_lse_gradient_with_sink():
    """A loss that reads lse as well: dlse reaches the kernels (and dsink), under jit."""
    dtype, nheads = "bf16", 4
    host = host_inputs(dtype, (113, 203), nheads=nheads)
    q, k, v = (jnp.asarray(x) for x in host)
    sink_h = sink_logits(nheads)
    dout_h = testing.random_like(host[0])
    dlse_h = np.random.default_rng().standard_normal((2, nheads, 113)).astype(np.float32)
    dout, dlse = jnp.asarray(dout_h).astype(jnp.float32), jnp.asarray(dlse_h)

    def loss(q, k, v, sink):
        out, lse = cj.attention(q, k, v, learnable_sink=sink, return_lse=True)
        return jnp.sum(out.astype(jnp.float32) * dout) + jnp.sum(lse * dlse)

    dq, dk, dv, dsink = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, jnp.asarray(sink_h))
    ropts = {"learnable_sink": sink_h, "dlse": dlse_h}
    b64 = reference.attention_backward(dout_h, *host, precision="float64", **ropts)
    blp = reference.attention_backward(dout_h, *host, precision="lowp", **ropts)
    checks = Failures("dlse+sink jit")
    for name, got, x64, xlp in zip(("dq", "dk", "dv"), (dq, dk, dv), b64[:3], blp[:3]):
        checks.rule(name, got, x64, xlp, dtype, "bwd")
    checks.rule("dsink", dsink, b64[4], blp[4], dtype, "bwd")
    checks.done()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_matches_jax_dot_product_attention(dtype):
    """Plain causal GQA against jax.nn.dot_product_attention (XLA), out and gradients:
    |ours - jax| <= |ours - ref64| + |jax - ref64| with |ours - ref64| bounded by the accuracy rule."""
    host = host_inputs(dtype, (256, 256), nheads=8, ratio=2)
    q, k, v = (jnp.asarray(x) for x in host)
    dout_h = testing.random_like(host[0])
    dout = jnp.asarray(dout_h).astype(jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * dout)

    ours = lambda q, k, v: cj.attention(q, k, v, causal=True)  # noqa: E731
    theirs = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    got = [jax.jit(ours)(q, k, v), *jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)]
    want = [jax.jit(theirs)(q, k, v), *jax.jit(jax.grad(loss(theirs), argnums=(0, 1, 2)))(q, k, v)]
    got, want = [np.asarray(x) for x in got], [np.asarray(x) for x in want]
    f64, flp = (reference.attention_forward(*host, causal=True, precision=p)[0] for p in ("float64", "lowp"))
    b64 = reference.attention_backward(dout_h, *host, causal=True, precision="float64")[:3]
    blp = reference.attention_backward(dout_h, *host, causal=True, precision="lowp")[:3]
    failures = []
    for name, a, b, r64, rlp, kind in zip(("out", "dq", "dk", "dv"), got, want, [f64, *b64], [flp, *blp],
                                          ("fwd", "bwd", "bwd", "bwd")):
        floor = testing.FLOORS[(kind, dtype)]
        lowp_err = testing.max_abs_err(rlp, r64)
        jax_err = testing.max_abs_err(b, r64)
        diff = testing.max_abs_err(a, b)
        allowed = 2 * lowp_err + floor + jax_err
        if not diff <= allowed:
            failures.append(f"{name}: max|cuflash - jax| {diff:.3e} > {allowed:.3e} (jax vs ref64 {jax_err:.3e})")
    assert not failures, "\n".join(failures)


def test_deterministic_gradients_are_bitwise_reproducible():
    host = host_inputs("bf16", (203, 203), nheads=8, ratio=4)
    q, k, v = (jnp.asarray(x) for x in host)
    dout = jnp.asarray(testing.random_like(host[0])).astype(jnp.float32)

    @jax.jit
    def grads(q, k, v):
        loss = lambda q, k, v: jnp.sum(  # noqa: E731
            cj.attention(q, k, v, causal=True, deterministic=True).astype(jnp.float32) * dout)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    first, second = grads(q, k, v), grads(q, k, v)
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert np.isfinite(np.asarray(a, np.float32)).all(), f"{name} is not finite"
        a, b = np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16)
        assert np.array_equal(a, b), f"{name} differs between two runs with deterministic=True"


def test_vmap_loops_over_the_mapped_axis():
    """vmap (one launch per element) equals separate calls, forward and gradients."""
    host = [host_inputs("fp16", (64, 96), batch=1) for _ in range(3)]
    q, k, v = (jnp.stack([jnp.asarray(h[i]) for h in host]) for i in range(3))  # (3, 1, seqlen, heads, dim)

    def loss(q, k, v):
        return jnp.sum(cj.attention(q, k, v, deterministic=True).astype(jnp.float32) ** 2)

    out = jax.jit(jax.vmap(cj.attention))(q, k, v)
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(q, k, v)
    for i in range(3):
        assert np.array_equal(np.asarray(out[i]), np.asarray(cj.attention(q[i], k[i], v[i])))
        one = jax.grad(loss, argnums=(0, 1, 2))(q[i], k[i], v[i])
        for name, a, b in zip(("dq", "dk", "dv"), grads, one):
            assert np.array_equal(np.asarray(a[i]), np.asarray(b)), f"{name}[{i}] under vmap differs"


BAD = {
    "q_float32": (lambda q, k, v: (q.astype(jnp.float32), k, v, {}), TypeError, r"q has dtype float32"),
    "sink_shape": (lambda q, k, v: (q, k, v, {"learnable_sink": jnp.zeros((3,), jnp.float32)}), ValueError,
                   r"learnable_sink must have shape \(nheads,\)"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_input_raises_naming_the_argument(bad, mode):
    make, error, match = BAD[bad]
    q, k, v = (jnp.asarray(x) for x in host_inputs("fp16", (16, 16)))
    q, k, v, extra = make(q, k, v)
    fn = lambda q, k, v, extra: cj.attention(q, k, v, **extra)  # noqa: E731
    if mode == "jit":
        fn = jax.jit(fn)
    with pytest.raises(error, match=match):
        fn(q, k, v, extra)


@pytest.mark.parametrize("mode", MODES)
def test_varlen_matches_reference(mode):
    # Packed sequences (an empty one, GQA 4/2, causal, a sink and dlse): out, lse and every gradient
    # under the accuracy rule against the float64 reference per sequence (issue 11).
    lengths_q, lengths_k = [37, 0, 1, 200], [64, 5, 1, 150]
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lengths_q, lengths_k))
    q, k, v = testing.random_qkv(1, int(cu_q[-1]), int(cu_k[-1]), 4, 2, 64, "bf16")
    host = (q[0], k[0], v[0])
    sink = sink_logits(4)
    dout = testing.random_like(host[0])
    dlse = np.random.default_rng().standard_normal((4, host[0].shape[0])).astype(np.float32)
    dout_j = jnp.asarray(dout).astype(jnp.float32)

    def run(q, k, v, sink, cu_q, cu_k):
        return cj.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True,
                                   learnable_sink=sink, return_lse=True)

    def loss(q, k, v, sink, cu_q, cu_k):
        out, lse = run(q, k, v, sink, cu_q, cu_k)
        return jnp.sum(out.astype(jnp.float32) * dout_j) + jnp.sum(lse * dlse)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    if mode == "jit":
        run, grad = jax.jit(run), jax.jit(grad)
    args = [jnp.asarray(x) for x in (*host, sink, cu_q, cu_k)]
    out, lse = run(*args)
    grads = grad(*args)
    checks = Failures(f"varlen {mode}")
    f64 = reference.attention_forward_varlen(*host, cu_q, cu_k, causal=True, learnable_sink=sink)
    flp = reference.attention_forward_varlen(*host, cu_q, cu_k, causal=True, learnable_sink=sink, precision="lowp")
    checks.rule("out", out, f64[0], flp[0], "bf16", "fwd")
    checks.rule("lse", lse, f64[1], flp[1], "bf16", "fwd")
    opts = dict(causal=True, learnable_sink=sink, dlse=dlse)
    b64 = reference.attention_backward_varlen(dout, *host, cu_q, cu_k, **opts)
    blp = reference.attention_backward_varlen(dout, *host, cu_q, cu_k, precision="lowp", **opts)
    for name, got, x64, xlp in zip(("dq", "dk", "dv", "dsink"), grads, b64, blp):
        checks.rule(name, got, x64, xlp, "bf16", "bwd")
    checks.done()
