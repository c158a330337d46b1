"""cuflash.jax on the GPU: forward, lse and gradients against the float64 reference
(the accuracy rule of cuflash.testing), eagerly and under jax.jit, with the additive bias
(dbias in the bias's shape and dtype), dropout (the reference given the keep-mask that
reference.dropout_keep_mask rebuilds from the seed words the kernels read) and the KV cache
(out and lse by the rule, the caches bitwise; in place under donation); against
jax.nn.dot_product_attention; deterministic gradients; vmap; bad input named at trace time.
Skipped without JAX's CUDA backend.
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


def random_bias(shape, dtype):
    return (np.random.default_rng().standard_normal(shape) * 2).astype(testing.resolve_dtype(dtype))


def fresh_key():
    return jax.random.key(int(np.random.default_rng().integers(2**31)))


def keep_mask(seed, batch, nheads, seqlen_q, seqlen_k, p):
    """The keep-mask of the seed words the kernels read (cj.seed_words), rebuilt on the host."""
    lo, hi, offset = (int(x) for x in np.asarray(cj.seed_words(seed)))
    return reference.dropout_keep_mask(lo | hi << 32, offset, batch, nheads, seqlen_q, seqlen_k, p)


#: Options of cuflash.jax.attention that the reference does not take.
NOT_REFERENCE = ("deterministic", "bias_requires_grad")


def run_case(dtype, seqlens, *, nheads, ratio, static, arrays, mode, label):
    """cuflash.jax forward (with lse) and jax.grad of sum(out * dout) checked against both references.
    static: Python options (with dropout_p, a fresh key is the seed); arrays: {"learnable_sink" /
    "alibi_slopes" / "bias": NumPy}."""
    host = host_inputs(dtype, seqlens, nheads=nheads, ratio=ratio)
    q, k, v = (jnp.asarray(x) for x in host)
    dout_h = testing.random_like(host[0])
    dout = jnp.asarray(dout_h).astype(jnp.float32)
    extra = {n: jnp.asarray(a) for n, a in arrays.items()}
    seed = fresh_key() if static.get("dropout_p") else None

    def forward(q, k, v, extra, seed):
        return cj.attention(q, k, v, return_lse=True, seed=seed, **static, **extra)

    def loss(q, k, v, extra, seed):
        return jnp.sum(cj.attention(q, k, v, seed=seed, **static, **extra).astype(jnp.float32) * dout)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    if mode == "jit":
        forward, grad = jax.jit(forward), jax.jit(grad)
    out, lse = forward(q, k, v, extra, seed)
    dq, dk, dv, dextra = grad(q, k, v, extra, seed)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == jnp.float32

    ropts = {**{n: x for n, x in static.items() if n not in NOT_REFERENCE}, **arrays}
    if seed is not None:
        ropts["dropout_mask"] = keep_mask(seed, q.shape[0], nheads, *seqlens, static["dropout_p"])
    checks = testing.AccuracyChecks(label)
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
    if "bias" in arrays:
        dbias, bias = dextra["bias"], arrays["bias"]
        assert dbias.shape == bias.shape and dbias.dtype == bias.dtype, (dbias.shape, dbias.dtype)
        if static.get("bias_requires_grad", True):
            checks.rule("dbias", dbias, b64[3], blp[3], dtype, "bwd")
        else:
            assert not np.asarray(dbias).any(), "bias_requires_grad=False must give a zero gradient"
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
    # bias: each entry one writer (stored in the bias's dtype), broadcast (float32 atomics), the other
    # 16-bit dtype than q (widened to float32 in the program, dbias back in fp16), deterministic
    # (an expanded buffer summed by XLA), 1-D per key, and without its gradient
    "bias_full_causal": ("bf16", (113, 203), 4, 1, {"causal": True}, lambda h: {"bias": random_bias((2, h, 113, 203),
                                                                                                    "bf16")}),
    "bias_heads_fp32_gqa": ("fp16", (203, 113), 8, 4, {"causal": True},
                            lambda h: {"bias": random_bias((1, h, 203, 113), "fp32")}),
    "bias_per_key_widened": ("bf16", (113, 203), 4, 2, {}, lambda h: {"bias": random_bias((2, 1, 1, 203), "fp16")}),
    "bias_rows_deterministic": ("bf16", (113, 203), 4, 1, {"deterministic": True, "window_size": (48, 0)},
                                lambda h: {"bias": random_bias((h, 113, 203), "bf16")}),
    "bias_keys_softcap_sink": ("fp16", (113, 203), 4, 1, {"softcap": 20.0},
                               lambda h: {"bias": random_bias((203,), "fp16"), "learnable_sink": sink_logits(h)}),
    "bias_no_grad": ("bf16", (113, 203), 4, 1, {"bias_requires_grad": False},
                     lambda h: {"bias": random_bias((2, 1, 113, 203), "bf16")}),
    # dropout, a fresh key as seed: alone, with GQA and a window, with a bias, a sink and ALiBi
    "dropout_causal": ("bf16", (113, 203), 4, 1, {"causal": True, "dropout_p": 0.17}, lambda h: {}),
    "dropout_gqa_window": ("fp16", (203, 113), 8, 4, {"window_size": (48, 0), "dropout_p": 0.3}, lambda h: {}),
    "dropout_bias_sink_alibi": ("bf16", (113, 203), 4, 2, {"causal": True, "dropout_p": 0.2, "deterministic": True},
                                lambda h: {"bias": random_bias((2, 1, 113, 203), "bf16"),
                                           "learnable_sink": sink_logits(h), "alibi_slopes": alibi(h)}),
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
    checks = testing.AccuracyChecks("dlse+sink jit")
    for name, got, x64, xlp in zip(("dq", "dk", "dv"), (dq, dk, dv), b64[:3], blp[:3]):
        checks.rule(name, got, x64, xlp, dtype, "bwd")
    checks.rule("dsink", dsink, b64[4], blp[4], dtype, "bwd")
    checks.done()


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
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


@pytest.mark.parametrize("extra", ["plain", "bias_dropout"])
def test_deterministic_gradients_are_bitwise_reproducible(extra):
    # bias_dropout: a per-key bias (an expanded float32 dbias buffer summed by XLA) and dropout
    host = host_inputs("bf16", (203, 203), nheads=8, ratio=4)
    q, k, v = (jnp.asarray(x) for x in host)
    dout = jnp.asarray(testing.random_like(host[0])).astype(jnp.float32)
    bias = jnp.asarray(random_bias((2, 1, 1, 203), "bf16"))
    options = {} if extra == "plain" else {"dropout_p": 0.25, "seed": fresh_key()}

    @jax.jit
    def grads(q, k, v, bias):
        def loss(q, k, v, bias):
            b = None if extra == "plain" else bias
            out = cj.attention(q, k, v, causal=True, deterministic=True, bias=b, **options)
            return jnp.sum(out.astype(jnp.float32) * dout)

        return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)

    first, second = grads(q, k, v, bias), grads(q, k, v, bias)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), first, second):
        assert np.isfinite(np.asarray(a, np.float32)).all(), f"{name} is not finite"
        a, b = np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16)
        assert np.array_equal(a, b), f"{name} differs between two runs with deterministic=True"


@pytest.mark.parametrize("mode", MODES)
def test_dropout_seed_forms_and_fresh_masks(mode):
    """Every seed form gives the mask reference.dropout_keep_mask rebuilds from its words; one
    jitted function draws a new mask from each key (no recompilation), the same one from the
    same key."""
    host = host_inputs("bf16", (64, 96), nheads=4)
    q, k, v = (jnp.asarray(x) for x in host)
    p = 0.3
    seeds = {"key": fresh_key(), "legacy_key": jax.random.PRNGKey(7),
             "words": jnp.asarray(np.array([12345, 678, 9], np.uint32)), "int": (2**40 + 3, 5)}
    checks = testing.AccuracyChecks(f"dropout seeds {mode}")
    for name, seed in seeds.items():
        def run(q, k, v, s):
            return cj.attention(q, k, v, dropout_p=p, seed=seed if isinstance(seed, tuple) else s)

        if mode == "jit":
            run = jax.jit(run)
        out = run(q, k, v, None if isinstance(seed, tuple) else seed)
        mask = keep_mask(seed, 2, 4, 64, 96, p)
        ref = [reference.attention_forward(*host, dropout_p=p, dropout_mask=mask, precision=x)[0]
               for x in ("float64", "lowp")]
        checks.rule(f"out ({name})", out, *ref, "bf16", "fwd")
    checks.done()
    step = jax.jit(lambda q, k, v, key: cj.attention(q, k, v, dropout_p=p, seed=key))
    keys = jax.random.split(fresh_key(), 2)
    a, b, again = step(q, k, v, keys[0]), step(q, k, v, keys[1]), step(q, k, v, keys[0])
    assert not np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16)), "two keys, one mask"
    assert np.array_equal(np.asarray(a).view(np.uint16), np.asarray(again).view(np.uint16)), "one key, two masks"
    assert step._cache_size() == 1


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
    "q_int32": (lambda q, k, v: (q.astype(jnp.int32), k, v, {}), TypeError, r"q has dtype int32"),
    "sink_shape": (lambda q, k, v: (q, k, v, {"learnable_sink": jnp.zeros((3,), jnp.float32)}), ValueError,
                   r"learnable_sink must have shape \(nheads,\)"),
    "bias_shape": (lambda q, k, v: (q, k, v, {"bias": jnp.zeros((2, 4, 16, 15), jnp.float32)}), ValueError,
                   r"bias of shape \(2, 4, 16, 15\) does not broadcast"),
    "bias_dtype": (lambda q, k, v: (q, k, v, {"bias": jnp.zeros((16,), jnp.int32)}), TypeError,
                   r"bias must be float16, bfloat16 or float32"),
    "dropout_without_seed": (lambda q, k, v: (q, k, v, {"dropout_p": 0.1}), ValueError, r"dropout_p > 0 needs seed"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_input_raises_naming_the_argument(bad, mode):
    make, error, match = BAD[bad]
    q, k, v = (jnp.asarray(x) for x in host_inputs("fp16", (16, 16)))
    q, k, v, extra = make(q, k, v)
    static = {n: x for n, x in extra.items() if not isinstance(x, jax.Array)}  # Python options: closed over
    arrays = {n: x for n, x in extra.items() if n not in static}
    fn = lambda q, k, v, arrays: cj.attention(q, k, v, **arrays, **static)  # noqa: E731
    if mode == "jit":
        fn = jax.jit(fn)
    with pytest.raises(error, match=match):
        fn(q, k, v, arrays)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2], ids=["plain", "dropout"])
@pytest.mark.parametrize("mode", MODES)
def test_varlen_matches_reference(mode, dropout_p):
    # Packed sequences (an empty one, GQA 4/2, causal, a sink and dlse): out, lse and every gradient
    # under the accuracy rule against the float64 reference per sequence (issue 11); with dropout, a
    # fresh key as seed and the mask of each sequence's own coordinates (batch row b, positions from
    # its start: reference.dropout_keep_mask with the longest lengths).
    lengths_q, lengths_k = [37, 0, 1, 200], [64, 5, 1, 150]
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lengths_q, lengths_k))
    q, k, v = testing.random_qkv(1, int(cu_q[-1]), int(cu_k[-1]), 4, 2, 64, "bf16")
    host = (q[0], k[0], v[0])
    sink = sink_logits(4)
    dout = testing.random_like(host[0])
    dlse = np.random.default_rng().standard_normal((4, host[0].shape[0])).astype(np.float32)
    dout_j = jnp.asarray(dout).astype(jnp.float32)
    seed = fresh_key() if dropout_p else None
    ropts = dict(causal=True, learnable_sink=sink)
    if dropout_p:
        ropts.update(dropout_p=dropout_p, dropout_mask=keep_mask(seed, 4, 4, max(lengths_q), max(lengths_k), dropout_p))

    def run(q, k, v, sink, cu_q, cu_k, seed):
        return cj.attention_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True,
                                   learnable_sink=sink, dropout_p=dropout_p, seed=seed, return_lse=True)

    def loss(q, k, v, sink, cu_q, cu_k, seed):
        out, lse = run(q, k, v, sink, cu_q, cu_k, seed)
        return jnp.sum(out.astype(jnp.float32) * dout_j) + jnp.sum(lse * dlse)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    if mode == "jit":
        run, grad = jax.jit(run), jax.jit(grad)
    args = [jnp.asarray(x) for x in (*host, sink, cu_q, cu_k)] + [seed]
    out, lse = run(*args)
    grads = grad(*args)
    checks = testing.AccuracyChecks(f"varlen {mode} dropout {dropout_p}")
    f64 = reference.attention_forward_varlen(*host, cu_q, cu_k, **ropts)
    flp = reference.attention_forward_varlen(*host, cu_q, cu_k, precision="lowp", **ropts)
    checks.rule("out", out, f64[0], flp[0], "bf16", "fwd")
    checks.rule("lse", lse, f64[1], flp[1], "bf16", "fwd")
    opts = dict(ropts, dlse=dlse)
    b64 = reference.attention_backward_varlen(dout, *host, cu_q, cu_k, **opts)
    blp = reference.attention_backward_varlen(dout, *host, cu_q, cu_k, precision="lowp", **opts)
    for name, got, x64, xlp in zip(("dq", "dk", "dv", "dsink"), grads, b64, blp):
        checks.rule(name, got, x64, xlp, "bf16", "bwd")
    checks.done()


# ---------------------------------------------------------------- attention over a KV cache


def paged(cache, page_size, order):
    """A contiguous cache (batch, seqlen, ...) as pages (len(order), page_size, ...) placed in
    `order` (the spare pages hold NaN), and the int32 block table (batch, pages per row)."""
    batch, seqlen = cache.shape[:2]
    per_row = -(-seqlen // page_size)
    padded = np.full((batch, per_row * page_size, *cache.shape[2:]), np.nan, cache.dtype)
    padded[:, :seqlen] = cache
    pages = np.full((len(order), page_size, *cache.shape[2:]), np.nan, cache.dtype)
    used = order[:batch * per_row]
    pages[used] = padded.reshape(batch * per_row, page_size, *cache.shape[2:])
    return pages, used.reshape(batch, per_row).astype(np.int32)


def kv_case(*, batch=3, seqlen_q=1, seqlen_cache=300, seqlen_new=1, nheads=8, nheads_kv=2, d=128, dtype="bf16",
            cache_seqlens=(0, 137, 299), page_size=None, cache_rows=None, rotary_dim=0, leftpad=None):
    """NumPy inputs of one KV-cache call, as tests/gpu/test_kvcache.py builds them: slots past each
    row's filled keys and before its left padding hold NaN (they must not reach the output);
    page_size: shuffled pages and a block table; cache_rows: that many cache rows read through a
    random cache_batch_idx; rotary_dim: rotary tables. Returns (q, k_cache, v_cache, k, v, the array
    options)."""
    rng = np.random.default_rng()
    q, kc, vc = testing.random_qkv(batch, seqlen_q, seqlen_cache, nheads, nheads_kv, d, dtype)
    k = v = None
    if seqlen_new:
        _, k, v = testing.random_qkv(batch, seqlen_q, seqlen_new, nheads, nheads_kv, d, dtype)
    filled = np.broadcast_to(np.asarray(cache_seqlens), (batch,))
    extra = {}
    for b in range(batch):
        for x in (kc, vc):
            x[b, max(filled[b], 0):] = np.nan
            if leftpad is not None:
                x[b, :leftpad[b]] = np.nan
    if leftpad is not None:
        extra["cache_leftpad"] = np.asarray(leftpad, np.int32)
    if rotary_dim:
        capacity = seqlen_cache if page_size is None else -(-seqlen_cache // page_size) * page_size
        angles = np.outer(np.arange(capacity), 1.0 / 10000 ** (np.arange(rotary_dim // 2) / (rotary_dim // 2)))
        dt = testing.resolve_dtype(dtype)
        extra["rotary_cos"], extra["rotary_sin"] = np.cos(angles).astype(dt), np.sin(angles).astype(dt)
    if page_size is not None:
        order = rng.permutation(batch * -(-seqlen_cache // page_size) + 2)
        (kc, table), (vc, _) = paged(kc, page_size, order), paged(vc, page_size, order)
        extra["block_table"] = table
    if cache_rows is not None:
        idx = rng.permutation(cache_rows)[:batch].astype(np.int32)
        rows = [np.full((cache_rows, *x.shape[1:]), np.nan, x.dtype) for x in (kc, vc)]
        rows[0][idx], rows[1][idx] = kc, vc
        kc, vc = rows
        extra["cache_batch_idx"] = idx
    return q, kc, vc, k, v, extra


KV_CASES = {
    # name: (kv_case arguments, Python options, array options (nheads 8, batch 3), cache_seqlens an array)
    "decode": (dict(), {"causal": True}, {}, True),
    "chunk_past_the_end_int_length": (dict(seqlen_q=4, seqlen_new=5, cache_seqlens=297), {"causal": True}, {}, False),
    "no_append": (dict(seqlen_q=7, seqlen_new=0), {}, {}, True),
    "paged": (dict(seqlen_q=5, seqlen_new=5, seqlen_cache=700, cache_seqlens=(0, 333, 695), page_size=16),
              {"causal": True}, {}, True),
    "cache_batch_idx": (dict(seqlen_q=3, seqlen_new=3, cache_rows=7, dtype="fp16"), {"causal": True}, {}, True),
    "rotary_pages_leftpad": (dict(seqlen_q=2, seqlen_new=2, rotary_dim=128, page_size=16, leftpad=(0, 20, 100),
                                  cache_seqlens=(5, 137, 290)),
                             {"causal": True, "rotary_interleaved": False, "num_splits": 3}, {}, True),
    "modifiers_splits": (dict(seqlen_q=2, seqlen_new=2, seqlen_cache=1200, cache_seqlens=(3, 600, 1190),
                              page_size=16),
                         {"causal": True, "window_size": (300, 0), "softcap": 20.0, "num_splits": 5},
                         {"alibi_slopes": np.linspace(0.05, 0.5, 24, dtype=np.float32).reshape(3, 8),
                          "learnable_sink": np.linspace(-1.0, 3.0, 8, dtype=np.float32)}, True),
    # 100 queries x 4 heads per kv head: over a contiguous cache, the varlen prefill kernels
    "prefill_chunk": (dict(seqlen_q=100, seqlen_new=100, seqlen_cache=600, cache_seqlens=(0, 137, 400)),
                      {"causal": True}, {}, True),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(KV_CASES))
def test_kvcache_matches_reference(case, mode):
    """out and lse by the accuracy rule against reference.attention_with_kvcache, the returned caches
    bitwise (the appended rows and nothing else changed, NaN slots included)."""
    shape, static, arrays, as_array = KV_CASES[case]
    q, kc, vc, k, v, extra = kv_case(**shape)
    extra.update(arrays)
    lengths = shape.get("cache_seqlens", (0, 137, 299))
    args = {n: jnp.asarray(x) for n, x in extra.items()}
    options = dict(static)
    if as_array:
        args["cache_seqlens"] = jnp.asarray(np.asarray(lengths, np.int32))
    else:
        options["cache_seqlens"] = lengths  # a Python int: static

    def run(q, kc, vc, k, v, args):
        return cj.attention_with_kvcache(q, kc, vc, k, v, return_lse=True, **args, **options)

    if mode == "jit":
        run = jax.jit(run)
    out, lse, kc2, vc2 = run(*(None if x is None else jnp.asarray(x) for x in (q, kc, vc, k, v)), args)
    ropts = {n: x for n, x in static.items() if n != "num_splits"}
    r64, rlp = (reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lengths, precision=p, **extra, **ropts)
                for p in ("float64", "lowp"))
    dtype = shape.get("dtype", "bf16")
    checks = testing.AccuracyChecks(f"kvcache {case} {mode}")
    checks.rule("out", out, r64[0], rlp[0], dtype, "fwd")
    checks.rule("lse", lse, r64[1], rlp[1], dtype, "fwd")
    checks.done()
    assert out.shape == q.shape and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    for name, got, want in (("k_cache", kc2, r64[2]), ("v_cache", vc2, r64[3])):
        assert np.array_equal(np.asarray(got).view(np.uint16), want.view(np.uint16)), f"{name} after the append"


def test_kvcache_append_is_in_place_under_donation():
    """A jitted decode step that donates the caches writes into their buffers (same pointers,
    step after step); an undonated call leaves its input caches as they were."""
    q, kc, vc, k, v, _ = kv_case(dtype="fp16")
    lengths = np.array([0, 137, 298], np.int32)
    step = jax.jit(lambda q, kc, vc, k, v, n: cj.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=n, causal=True),
                   donate_argnums=(1, 2))
    kc_j, vc_j = jnp.asarray(kc), jnp.asarray(vc)
    pointers = (kc_j.unsafe_buffer_pointer(), vc_j.unsafe_buffer_pointer())
    out, kc_j2, vc_j2 = step(jnp.asarray(q), kc_j, vc_j, jnp.asarray(k), jnp.asarray(v), jnp.asarray(lengths))
    assert (kc_j2.unsafe_buffer_pointer(), vc_j2.unsafe_buffer_pointer()) == pointers, "the caches were copied"
    assert kc_j.is_deleted() and vc_j.is_deleted()
    r64, rlp = (reference.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lengths, causal=True, precision=p)
                for p in ("float64", "lowp"))
    testing.check_accuracy("out", out, r64[0], rlp[0], "fp16", "fwd")
    for name, got, want in (("k_cache", kc_j2, r64[2]), ("v_cache", vc_j2, r64[3])):
        assert np.array_equal(np.asarray(got).view(np.uint16), want.view(np.uint16)), name
    # the next step appends after the first: the same buffers again
    _, k2, v2 = testing.random_qkv(3, 1, 1, 8, 2, 128, "fp16")
    out2, kc_j3, vc_j3 = step(jnp.asarray(q), kc_j2, vc_j2, jnp.asarray(k2), jnp.asarray(v2), jnp.asarray(lengths + 1))
    assert (kc_j3.unsafe_buffer_pointer(), vc_j3.unsafe_buffer_pointer()) == pointers
    r2 = reference.attention_with_kvcache(q, r64[2], r64[3], k2, v2, cache_seqlens=lengths + 1, causal=True)
    assert np.array_equal(np.asarray(kc_j3).view(np.uint16), r2[2].view(np.uint16)), "k_cache after two steps"
    # undonated (eager): XLA copies the caches, the inputs are unchanged
    kc_in = jnp.asarray(kc)
    _, kc_out, _ = cj.attention_with_kvcache(jnp.asarray(q), kc_in, jnp.asarray(vc), jnp.asarray(k), jnp.asarray(v),
                                             cache_seqlens=jnp.asarray(lengths))
    assert kc_out.unsafe_buffer_pointer() != kc_in.unsafe_buffer_pointer()
    assert np.array_equal(np.asarray(kc_in).view(np.uint16), kc.view(np.uint16)), "an undonated cache was written"
    assert np.array_equal(np.asarray(kc_out).view(np.uint16), r64[2].view(np.uint16))


def test_kvcache_indices_checked_eagerly_and_clamped_under_jit():
    q, kc, vc = (jnp.asarray(x) for x in testing.random_qkv(2, 1, 64, 4, 2, 64, "bf16"))
    table = jnp.full((2, 4), 5, jnp.int32)  # pages 0 and 1 exist
    with pytest.raises(ValueError, match=r"block_table entries must be in \[0, 2\)"):
        cj.attention_with_kvcache(q, kc, vc, block_table=table, cache_seqlens=3)
    with pytest.raises(ValueError, match=r"cache_batch_idx entries must be in \[0, 2\)"):
        cj.attention_with_kvcache(q, kc, vc, cache_batch_idx=jnp.asarray([0, 2], jnp.int32), cache_seqlens=3)
    run = jax.jit(lambda q, kc, vc, t: cj.attention_with_kvcache(q, kc, vc, block_table=t, cache_seqlens=3)[0])
    assert np.isfinite(np.asarray(run(q, kc, vc, table), np.float32)).all()  # a clamped page: finite, wrong
    with pytest.raises(ValueError, match=r"cache_seqlens \(65\) must be in \[0, 64\]"):
        cj.attention_with_kvcache(q, kc, vc, cache_seqlens=65)
