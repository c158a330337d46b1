"""Property test of argument validation (issue: bad inputs): for generated combinations of
shapes, dtypes, strides, alignment, devices and option values, validation on Refs (what every
front end calls before any launch) either accepts the call, and then everything the kernels
rely on holds, or raises TypeError / ValueError naming an argument. Nothing else escapes."""
from __future__ import annotations

import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cuflash import api, support  # noqa: E402
from cuflash.launch import Ref  # noqa: E402

NAMES = ("q", "k", "v", "softmax_scale", "window_size", "softcap", "alibi_slopes", "learnable_sink", "head dim",
         "nheads", "batch")
DTYPES = st.sampled_from(["float16", "bfloat16", "float32", "int32", "float64"])
dims = st.integers(min_value=0, max_value=300)


@st.composite
def arrays(draw, ndim=None, dtype=None):
    nd = draw(st.integers(3, 5)) if ndim is None else ndim
    shape = tuple(draw(dims) for _ in range(nd))
    contiguous, acc = [], 1
    for n in reversed(shape):
        contiguous.insert(0, acc)
        acc *= max(n, 1)
    strides = tuple(draw(st.one_of(st.just(s), st.integers(-4096, 1 << 20))) for s in contiguous)
    ptr = draw(st.sampled_from([1 << 20, (1 << 20) + 8, (1 << 20) + 2, 1 << 33]))
    return Ref(ptr, shape, strides, draw(DTYPES) if dtype is None else dtype, draw(st.sampled_from([0, 0, 0, 1])))


@st.composite
def qkv(draw):
    """Mostly near-valid triples (so the checks after the first ones are reached too)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(arrays()), draw(arrays()), draw(arrays())
    b, sq, sk = draw(dims), draw(dims), draw(dims)
    hkv = draw(st.sampled_from([1, 2, 4, 8, 1, 2, 4, 8, 0]))
    h = hkv * draw(st.integers(1, 8)) + draw(st.sampled_from([0] * 9 + [1]))
    d = draw(st.sampled_from([8, 64, 72, 128, 200, 256, 8, 64, 72, 128, 200, 256, 264, 60]))
    dtype = draw(st.sampled_from(["float16", "bfloat16"] * 4 + ["float32"]))

    def dense(shape, dt):
        strides, acc = [], 1
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= max(n, 1)
        return Ref(1 << 20, shape, tuple(strides), dt, 0)

    q = dense((b, sq, h, d), dtype)
    if draw(st.integers(0, 9)) == 0:  # a misaligned start
        q = q._replace(ptr=q.ptr + 8)
    return (q, dense((b, sk, hkv, d), draw(st.sampled_from([dtype] * 9 + ["float16"]))),
            dense((b, sk, hkv, d), dtype))


def _weighted(draw, valid, invalid, invalid_one_in=6):
    """A draw from `valid` most of the time, from `invalid` one time in `invalid_one_in`."""
    return draw(invalid if draw(st.integers(0, invalid_one_in - 1)) == 0 else valid)


@st.composite
def calls(draw):
    """(q, k, v, options, alibi_slopes, learnable_sink): mostly valid calls with one thing off."""
    q, k, v = draw(qkv())
    nheads = q.shape[2] if len(q.shape) == 4 else 1
    batch = q.shape[0] if q.shape else 1
    opts = {
        "softmax_scale": _weighted(draw, st.one_of(st.none(), st.floats(1e-3, 10.0)),
                                   st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 0))),
        "causal": draw(st.booleans()),
        "window_size": _weighted(draw, st.one_of(st.just((-1, -1)), st.tuples(st.integers(-1, 5000),
                                                                              st.integers(-1, 5000))),
                                 st.one_of(st.tuples(st.integers(-9, -2), st.integers(-3, 9)), st.just((1.5, 0)),
                                           st.just((1, 2, 3)), st.just(7), st.lists(st.integers(-2, 9), max_size=3))),
        "softcap": _weighted(draw, st.one_of(st.just(0.0), st.floats(0.0, 100.0)),
                             st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just("x"), st.just(None))),
    }

    def vector(shapes):
        def ref(shape, dtype="float32"):
            return Ref(1 << 20, shape, tuple([1] * len(shape)) if len(shape) == 1 else (shape[1], 1), dtype, 0)
        valid = st.sampled_from([ref(sh) for sh in shapes])
        invalid = st.one_of(arrays(ndim=1), arrays(ndim=2), st.sampled_from([ref(sh, "float16") for sh in shapes]))
        return draw(st.one_of(st.none(), st.none(), st.none(), valid if draw(st.integers(0, 3)) else invalid))

    alibi = vector([(nheads,), (batch, nheads)])
    sink = vector([(nheads,)])
    return q, k, v, opts, alibi, sink


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=calls())
def test_validation_accepts_or_names_the_argument(monkeypatch_device, call):
    q, k, v, opts, alibi, sink = call
    try:
        name = api.validate_qkv(q, k, v)
        o = api.options(q, opts["softmax_scale"], opts["causal"], opts["window_size"], opts["softcap"], alibi, sink)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        assert any(n in message for n in NAMES), message
        return
    # accepted: every promise the kernels rely on holds
    batch, _, nheads, head_dim = q.shape
    assert name in ("fp16", "bf16", "fp32") and k.dtype == v.dtype == q.dtype
    assert k.shape == v.shape and k.shape[0] == batch and k.shape[3] == head_dim
    assert k.shape[2] > 0 and nheads % k.shape[2] == 0
    assert head_dim % 8 == 0 and 0 < head_dim <= support.HEAD_DIM_MAX
    for x in (q, k, v):
        if 0 not in x.shape:
            unit = 4 if x.dtype == "float32" else 8  # elements per 16 bytes
            assert x.strides[-1] == 1 and x.ptr % 16 == 0 and all(s % unit == 0 for s in x.strides[:-1])
    assert k.device == v.device == q.device
    assert math.isfinite(o.scale) and o.scale > 0 and math.isfinite(o.softcap) and o.softcap >= 0
    assert all(isinstance(w, int) and w >= -1 for w in o.window)
    if alibi is not None:
        assert alibi.dtype == "float32" and alibi.shape in ((nheads,), (batch, nheads))
    if sink is not None:
        assert sink.shape == (nheads,)


@pytest.fixture
def monkeypatch_device(monkeypatch):
    """The one check that asks the GPU, stubbed (the same for every generated input)."""
    monkeypatch.setattr(api, "_check_device", lambda device: None)


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 50), max_size=8), shift=st.integers(-2, 2), swap=st.booleans(),
       extra_rows=st.integers(-1, 1), max_slack=st.integers(-2, 2))
def test_sequence_length_checks_accept_exactly_the_valid_offsets(lengths, shift, swap, extra_rows, max_slack):
    """cu_seqlens is accepted iff it starts at 0, never decreases, ends at the row count and no
    sequence is longer than max_seqlen; otherwise the error names the argument."""
    import numpy as np

    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cu[0] += shift
    if swap and len(cu) > 2:
        cu[1], cu[2] = cu[2], cu[1]
    total = int(np.cumsum(lengths)[-1]) + extra_rows if lengths else extra_rows
    longest = max(lengths, default=0)
    max_seqlen = longest + max_slack
    diffs = np.diff(cu)
    valid = (cu[0] == 0 and (diffs >= 0).all() and cu[-1] == total
             and (int(diffs.max()) if len(diffs) else 0) <= max_seqlen)
    try:
        got = api.check_sequence_lengths(cu, "cu_seqlens_k", total, max_seqlen, "max_seqlen_k")
    except ValueError as exc:
        assert not valid, exc
        assert "cu_seqlens_k" in str(exc) or "max_seqlen_k" in str(exc)
    else:
        assert valid and got.tolist() == diffs.tolist()
