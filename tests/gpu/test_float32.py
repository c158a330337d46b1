"""float32 inputs (issue 11): the portable kernels' 3xTF32 path (kernels_cu/common/mma.cuh) on
every GPU, against the float64 reference with float32's accuracy floors (testing.FLOORS: a
plain-TF32 product, ~1e-3 off, fails them). The dtype grids of test_forward, test_backward,
test_variants, test_varlen, test_bias, test_dropout, test_torch and test_jax include fp32; this
file adds what is float32's own: rows that are 16 bytes but not 8 elements apart, packed inputs,
the deterministic backward's bits, and the error beside plain float32 arithmetic's."""
from __future__ import annotations

import numpy as np
import pytest

import cuflash
from cuflash import reference, testing

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu  # float32 has one kernel family: no kernel_path


def check_forward_and_backward(q, k, v, deterministic=False, **opts):
    out, lse = cuflash.attention(q, k, v, return_lse=True, **opts)
    dout = testing.random_like(q)
    grads = cuflash.attention_backward(dout, q, k, v, out, lse, deterministic=deterministic, **opts)
    host = [testing.to_numpy(x) for x in (q, k, v)]
    f64 = reference.attention_forward(*host, precision="float64", **opts)
    flp = reference.attention_forward(*host, precision="lowp", **opts)
    testing.check_accuracy("out", out, f64[0], flp[0], "fp32", "fwd")
    testing.check_accuracy("lse", lse, f64[1], flp[1], "fp32", "fwd")
    hdo = testing.to_numpy(dout)
    b64 = reference.attention_backward(hdo, *host, precision="float64", **opts)
    blp = reference.attention_backward(hdo, *host, precision="lowp", **opts)
    for name, got, x64, xlp in zip(("dq", "dk", "dv"), grads, b64, blp):
        testing.check_accuracy(name, got, x64, xlp, "fp32", "bwd")
    return out, grads


def test_rows_16_bytes_apart_are_read_in_place():
    """Heads 68 floats apart (272 bytes: a multiple of 16 bytes, not of 8 elements)."""
    base = testing.random_qkv(2, 150, 230, 4, 4, 68, "fp32", xp=cp)
    q, k, v = (x[..., :64] for x in base)
    assert q.strides[2] == 68 * 4 and not q.flags.c_contiguous
    check_forward_and_backward(q, k, v, causal=True)


def test_qkvpacked_equals_unpacked():
    q, k, v = testing.random_qkv(2, 97, 97, 4, 4, 64, "fp32", xp=cp)
    qkv = cp.ascontiguousarray(cp.stack([q, k, v], axis=2))
    out, lse = cuflash.attention_qkvpacked(qkv, causal=True, return_lse=True)
    ref, ref_lse = cuflash.attention(q, k, v, causal=True, return_lse=True)
    assert cp.array_equal(out, ref) and cp.array_equal(lse, ref_lse)
    dout = testing.random_like(out)
    dqkv = cuflash.attention_qkvpacked_backward(dout, qkv, out, lse, causal=True, deterministic=True)
    want = cuflash.attention_backward(dout, q, k, v, ref, ref_lse, causal=True, deterministic=True)
    for i, w in enumerate(want):
        assert cp.array_equal(dqkv[:, :, i], w), i


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_deterministic_backward_repeats_its_bits_with_gqa(head_dim):
    q, k, v = testing.random_qkv(2, 300, 333, 8, 2, head_dim, "fp32", xp=cp)
    out, grads = check_forward_and_backward(q, k, v, causal=True, deterministic=True)
    lse = cuflash.attention(q, k, v, causal=True, return_lse=True)[1]
    dout = testing.random_like(q)
    first = cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=True)
    for _ in range(3):
        again = cuflash.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=True)
        assert all(cp.array_equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("seqlen", [512, 2048])
def test_error_is_float32_class(seqlen):
    """The forward's error against float64 is float32's kind (the 3xTF32 products keep ~21 of
    float32's 24 bits), not TF32's (~1e-3 of |out|): under 1e-5 of |out| and under 1% of the
    error of the same inputs in bf16. Plain float32's error is printed beside it."""
    q, k, v = testing.random_qkv(1, seqlen, seqlen, 4, 4, 128, "fp32", xp=cp)
    out = cuflash.attention(q, k, v, causal=True)
    host = [testing.to_numpy(x) for x in (q, k, v)]
    r64 = reference.attention_forward(*host, causal=True, precision="float64")[0]
    plain = testing.max_abs_err(reference.attention_forward(*host, causal=True, precision="lowp")[0], r64)
    bf16 = [testing.to_numpy(x).astype(testing.resolve_dtype("bf16")) for x in (q, k, v)]
    half = testing.max_abs_err(reference.attention_forward(*bf16, causal=True, precision="lowp")[0], r64)
    ours = testing.max_abs_err(out, r64)
    print(f"seqlen {seqlen}: cuflash fp32 {ours:.2e}, plain fp32 {plain:.2e}, bf16 {half:.2e}")
    assert ours < 1e-5 * float(np.abs(r64).max()), ours
    assert ours < 0.01 * half, (ours, half)
