"""cuflash.testing helpers (CPU only, NumPy arrays)."""

import ml_dtypes
import numpy as np
import pytest

from cuflash import testing as T
from cuflash.reference import attention_backward, attention_forward

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]


# --------------------------------------------------------------------------
# dtypes and conversion
# --------------------------------------------------------------------------

def test_resolve_dtype_and_names():
    assert T.resolve_dtype("fp16") == np.float16
    assert T.resolve_dtype("bf16") == BF16 and T.resolve_dtype("bfloat16") == BF16
    assert T.resolve_dtype("fp32") == np.float32 and T.resolve_dtype("FP32") == np.float32
    assert T.resolve_dtype(np.float16) == np.float16
    assert T.resolve_dtype(ml_dtypes.bfloat16) == BF16
    assert T.resolve_dtype(np.dtype(np.float32)) == np.float32
    for name in ("fp16", "bf16", "fp32", "fp64"):
        assert T.dtype_name(T.resolve_dtype(name)) == name
    with pytest.raises(ValueError):
        T.resolve_dtype("fp8")
    with pytest.raises(ValueError):
        T.dtype_name(np.int32)


def test_to_numpy_and_to_float64():
    x = np.array([1.5, -2.25, 3.0], dtype=BF16)
    assert T.to_numpy(x).dtype == BF16
    f = T.to_float64(x)
    assert f.dtype == np.float64
    np.testing.assert_array_equal(f, [1.5, -2.25, 3.0])


# --------------------------------------------------------------------------
# random inputs
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32", np.float16, ml_dtypes.bfloat16])
def test_random_qkv_shapes_dtypes_nonzero(dtype):
    q, k, v = T.random_qkv(2, 33, 65, 8, 2, 40, dtype, seed=0)
    dt = T.resolve_dtype(dtype)
    assert q.shape == (2, 33, 8, 40) and k.shape == (2, 65, 2, 40) and v.shape == (2, 65, 2, 40)
    for x in (q, k, v):
        assert x.dtype == dt and x.flags.c_contiguous
        f = x.astype(np.float64)
        assert (f != 0).all() and np.isfinite(f).all()
        assert 0.8 < f.std() < 1.2 and abs(f.mean()) < 0.1
    assert not np.array_equal(q[:, :, :2].astype(np.float64), k[:, :33].astype(np.float64))  # independent draws


def test_random_qkv_seeding():
    a = T.random_qkv(1, 8, 8, 2, 2, 16, "bf16", seed=1)
    b = T.random_qkv(1, 8, 8, 2, 2, 16, "bf16", seed=1)
    c = T.random_qkv(1, 8, 8, 2, 2, 16, "bf16")
    d = T.random_qkv(1, 8, 8, 2, 2, 16, "bf16")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16))
    assert not np.array_equal(c[0].view(np.uint16), d[0].view(np.uint16))  # fresh each run
    with pytest.raises(ValueError):
        T.random_qkv(1, 8, 8, 3, 2, 16, "fp16")


def test_random_qkv_magnitudes_bounded_away_from_zero():
    # 1M normals: about 800 would fall below 2**-10 without the nudge, and
    # some of those would round to 0 in low precision
    for dtype in ("fp16", "bf16"):
        q, _, _ = T.random_qkv(1, 256, 1, 32, 1, 128, dtype, seed=2)
        assert np.abs(q.astype(np.float64)).min() >= 2.0 ** -10


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_like(dtype):
    x = np.zeros((3, 4, 5), dtype=dtype)
    y = T.random_like(x, seed=3)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y.astype(np.float64) != 0).all()


# --------------------------------------------------------------------------
# poison and strided views
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_poison_fills_nan_in_place(dtype):
    x = np.ones((4, 6), dtype=dtype)
    y = T.poison(x)
    assert y is x
    assert np.isnan(x.astype(np.float64)).all()
    # also through a non-contiguous view: only the viewed elements change
    z = np.ones((4, 6), dtype=dtype)
    T.poison(z[:, ::2])
    f = z.astype(np.float64)
    assert np.isnan(f[:, ::2]).all() and (f[:, 1::2] == 1).all()


def test_poison_rejects_integers():
    with pytest.raises(TypeError):
        T.poison(np.zeros(3, np.int32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (1, 7, 1, 40), (6, 4, 24)])
def test_strided_view_same_values_not_contiguous(dtype, shape):
    x = T.random_like(np.empty(shape, dtype=dtype), seed=4)
    y = T.strided_view(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y.astype(np.float64), x.astype(np.float64))
    assert not y.flags.c_contiguous
    assert y.strides[-1] == y.itemsize            # last dim contiguous
    assert y.strides != x.strides
    # the padding next to each row is NaN, so a stride-ignoring read shows up
    base = y.base
    while base.base is not None:
        base = base.base
    assert np.isnan(base.astype(np.float64)).sum() == base.size - x.size


def test_strided_view_without_padding_is_still_non_contiguous():
    x = T.random_like(np.empty((2, 5, 3, 8), np.float16), seed=5)
    y = T.strided_view(x, pad_last=0)
    assert not y.flags.c_contiguous
    np.testing.assert_array_equal(y, x)


def test_strided_view_does_not_change_attention():
    q, k, v = T.random_qkv(2, 9, 11, 4, 2, 16, "fp32", seed=6)
    a = attention_forward(q, k, v, causal=True)
    b = attention_forward(T.strided_view(q), T.strided_view(k), T.strided_view(v), causal=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------
# max_abs_err and check_accuracy
# --------------------------------------------------------------------------

def test_max_abs_err_handles_infinities():
    assert T.max_abs_err(np.array([1.0, -np.inf]), np.array([1.5, -np.inf])) == 0.5
    assert T.max_abs_err(np.array([1.0, -np.inf]), np.array([1.0, 0.0])) == np.inf
    assert T.max_abs_err(np.array([np.inf]), np.array([-np.inf])) == np.inf
    assert np.isnan(T.max_abs_err(np.array([np.nan, 1.0]), np.array([0.0, 1.0])))
    assert T.max_abs_err(np.zeros(0), np.zeros(0)) == 0.0
    assert T.max_abs_err(np.array([1, 2], np.float16), np.array([1, 2.5])) == 0.5


def test_floors_table_complete_and_small():
    for kind in ("fwd", "bwd"):
        for name in ("fp16", "bf16", "fp32"):
            assert 0 < T.FLOORS[(kind, name)] < 1e-2
    for name in ("fp16", "bf16", "fp32"):
        assert T.FLOORS[("bwd", name)] >= T.FLOORS[("fwd", name)]


def _refs(dtype, seed=7, **kw):
    q, k, v = T.random_qkv(2, 37, 53, 4, 2, 32, dtype, seed=seed)
    ref64 = attention_forward(q, k, v, **kw)
    lowp = attention_forward(q, k, v, precision="lowp", **kw)
    return (q, k, v), ref64, lowp


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_check_accuracy_passes_for_lowp_and_exact(dtype):
    _, (o64, l64), (ol, ll) = _refs(dtype, causal=True)
    r = T.check_accuracy("out", ol, o64, ol, dtype)              # the lowp result itself passes
    assert r["err"] <= r["allowed"] and r["floor"] == T.FLOORS[("fwd", dtype)]
    T.check_accuracy("out", o64, o64, ol, dtype)                 # exact passes
    T.check_accuracy("lse", ll, l64, ll, dtype)
    # output stored in the input dtype (what a kernel returns) is accepted too
    T.check_accuracy("out", ol.astype(T.resolve_dtype(dtype)), o64, ol, dtype)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_check_accuracy_fails_on_too_large_error(dtype):
    _, (o64, _), (ol, _) = _refs(dtype)
    lowp_err = np.abs(ol - o64).max()
    allowed = 2 * lowp_err + T.FLOORS[("fwd", dtype)]
    bad = o64.copy()
    bad[1, 5, 2, 7] += 1.01 * allowed
    with pytest.raises(AssertionError, match=r"out.*max error.*allowed.*\(1, 5, 2, 7\)"):
        T.check_accuracy("out", bad, o64, ol, dtype)
    just_ok = o64.copy()
    just_ok[1, 5, 2, 7] += 0.99 * allowed
    T.check_accuracy("out", just_ok, o64, ol, dtype)


def test_check_accuracy_floor_applies_when_lowp_exact():
    ref = np.linspace(-1, 1, 50)
    out = ref + 0.9e-3
    T.check_accuracy("x", out, ref, ref, "bf16")                # within bf16 fwd floor 1e-3
    with pytest.raises(AssertionError):
        T.check_accuracy("x", out, ref, ref, "fp16")            # beyond fp16 fwd floor 1e-4
    T.check_accuracy("x", ref + 4e-3, ref, ref, "bf16", kind="bwd")
    with pytest.raises(AssertionError):
        T.check_accuracy("x", ref + 4e-3, ref, ref, "bf16", kind="fwd")


def test_check_accuracy_nan_always_fails():
    ref = np.ones((3, 4))
    out = ref.copy()
    out[2, 1] = np.nan
    with pytest.raises(AssertionError, match=r"NaN.*\(2, 1\)"):
        T.check_accuracy("out", out, ref, ref + 100.0, "fp16")   # even with a huge allowance
    poisoned = T.poison(np.empty((3, 4), np.float16))           # an unwritten output fails
    with pytest.raises(AssertionError, match="NaN"):
        T.check_accuracy("out", poisoned, ref, ref, "fp16")


def test_check_accuracy_infinities():
    ref = np.array([[-np.inf, 0.5], [1.0, -np.inf]])
    T.check_accuracy("lse", ref.copy(), ref, ref, "fp32")        # matching -inf is fine
    out = ref.copy()
    out[0, 0] = -60.0                                            # finite where ref is -inf
    with pytest.raises(AssertionError, match=r"non-finite.*\(0, 0\)"):
        T.check_accuracy("lse", out, ref, ref, "fp32")
    out = ref.copy()
    out[0, 1] = np.inf                                           # inf where ref is finite
    with pytest.raises(AssertionError, match="non-finite"):
        T.check_accuracy("lse", out, ref, ref, "fp32")
    lowp = ref.copy()
    lowp[1, 0] = np.inf                                          # lowp reference overflowed
    with pytest.raises(AssertionError, match="low-precision"):
        T.check_accuracy("lse", ref, ref, lowp, "fp32")


def test_check_accuracy_shape_mismatch():
    with pytest.raises(AssertionError, match="shape"):
        T.check_accuracy("out", np.zeros((2, 3)), np.zeros((3, 2)), np.zeros((3, 2)), "fp16")


def test_check_accuracy_backward_end_to_end():
    (q, k, v), _, _ = _refs("bf16", seed=8)
    dout = T.random_like(q, seed=9)
    g64 = attention_backward(dout, q, k, v, causal=True)
    gl = attention_backward(dout, q, k, v, causal=True, precision="lowp")
    for name, a, b in zip(("dq", "dk", "dv"), gl, g64):
        T.check_accuracy(name, a, b, a, "bf16", kind="bwd")
    bad = g64[1].copy()
    bad[0, 3, 1, 4] += 1.0                                      # a gross error in dk
    with pytest.raises(AssertionError, match="dk"):
        T.check_accuracy("dk", bad, g64[1], gl[1], "bf16", kind="bwd")


def test_accuracy_checks_report_every_output_that_is_off_at_done():
    ref = np.linspace(-1.0, 1.0, 16)
    lowp = ref + 1e-3
    checks = T.AccuracyChecks("(case 7)")
    checks.rule("good", ref + 1e-3, ref, lowp, "bf16", "fwd")
    checks.rule("bad", ref + 1.0, ref, lowp, "bf16", "fwd")
    checks.rule("worse", ref - 2.0, ref, lowp, "bf16", "bwd")
    with pytest.raises(AssertionError, match=r"2 output\(s\) off") as info:
        checks.done()
    text = str(info.value)
    assert "bad (case 7): max error" in text and "worse (case 7): max error" in text and "good" not in text
    T.AccuracyChecks().done()  # nothing checked, nothing off
