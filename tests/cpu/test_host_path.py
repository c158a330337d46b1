"""The host path without a GPU (DESIGN 4c): validation on Refs (what every front end
calls), memoised options, and the struct packer against the NumPy layout."""
from __future__ import annotations

import pytest

from cuflash import api, params
from cuflash.launch import Ref


def ref(shape, dtype="bfloat16", device=0, ptr=1 << 20, strides=None):
    if strides is None:
        strides, acc = [], 1
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
    return Ref(ptr, tuple(shape), tuple(strides), dtype, device)


@pytest.fixture
def no_device(monkeypatch):
    monkeypatch.setattr(api, "_check_device", lambda device: None)


def test_valid_refs_give_the_kernel_dtype(no_device):
    q, k = ref((2, 16, 8, 64)), ref((2, 40, 2, 64))
    assert api.validate_qkv(q, k, k) == "bf16"


def test_float32_rows_need_16_bytes_not_8_elements(no_device):
    """A float32 head whose rows are 68 elements apart (272 bytes) is fine; 66 (264 bytes) is not."""
    q = ref((2, 16, 8, 64), "float32", strides=(16 * 8 * 68, 8 * 68, 68, 1))
    assert api.validate_qkv(q, q, q) == "fp32"
    bad = ref((2, 16, 8, 64), "float32", strides=(16 * 8 * 66, 8 * 66, 66, 1))
    with pytest.raises(ValueError, match="q must start on a 16-byte boundary with strides that are multiples of 16"):
        api.validate_qkv(bad, q, q)


@pytest.mark.parametrize("q, k, v, exc, match", [
    (ref((2, 16, 8, 64), "float64"), ref((2, 40, 2, 64)), ref((2, 40, 2, 64)), TypeError, "q has dtype float64"),
    (ref((2, 16, 8, 64), "float32"), ref((2, 40, 2, 64)), ref((2, 40, 2, 64)), TypeError, "but q has float32"),
    (ref((2, 16, 8, 64)), ref((2, 40, 2, 64), "float16"), ref((2, 40, 2, 64)), TypeError,
     "k has dtype float16 but q has bfloat16"),
    (ref((2, 16, 8, 64)), ref((2, 40, 3, 64)), ref((2, 40, 3, 64)), ValueError, r"nheads of q \(8\)"),
    (ref((2, 16, 8, 64)), ref((1, 40, 2, 64)), ref((1, 40, 2, 64)), ValueError, "batch sizes differ"),
    (ref((2, 16, 8, 64)), ref((2, 40, 2, 64)), ref((2, 39, 2, 64)), ValueError, "v must have the shape of k"),
    (ref((2, 16, 8, 60)), ref((2, 40, 2, 60)), ref((2, 40, 2, 60)), ValueError, "head dim"),
    (ref((16, 8, 64)), ref((2, 40, 2, 64)), ref((2, 40, 2, 64)), ValueError, "q must have 4 dims"),
    (ref((2, 16, 8, 64), strides=(8192, 512, 64, 2)), ref((2, 40, 2, 64)), ref((2, 40, 2, 64)), ValueError,
     "q must be contiguous in its last dimension"),
    (ref((2, 16, 8, 64)), ref((2, 40, 2, 64), ptr=(1 << 20) + 8), ref((2, 40, 2, 64)), ValueError,
     "k must start on a 16-byte boundary"),
    (ref((2, 16, 8, 64)), ref((2, 40, 2, 64), strides=(40 * 2 * 68, 2 * 68, 68, 1)), ref((2, 40, 2, 64)),
     ValueError, "k must start on a 16-byte boundary"),
    (ref((2, 16, 8, 64)), ref((2, 40, 2, 64), device=1), ref((2, 40, 2, 64)), ValueError,
     "k is on GPU 1 but q is on GPU 0"),
])
def test_bad_refs_name_the_argument(q, k, v, exc, match):
    with pytest.raises(exc, match=match):
        api.validate_qkv(q, k, v)


def test_lse_and_like_checks():
    q = ref((2, 16, 8, 64))
    with pytest.raises(ValueError, match="lse must have shape"):
        api.check_lse(ref((2, 16, 8), "float32"), q)
    with pytest.raises(ValueError, match="dlse must have shape"):
        api.check_lse(ref((2, 8, 16), "float16"), q, "dlse")
    api.check_lse(ref((2, 8, 16), "float32", strides=(1, 2, 16)), q)  # any strides
    with pytest.raises(ValueError, match="dout must have q's shape"):
        api.check_like(ref((2, 16, 8, 32)), q, "dout", "q")


def test_options_are_memoised_and_validated():
    q = ref((2, 16, 8, 64))
    a = api.options(q, None, True, (-1, -1), 0.0)
    assert a is api.options(q, None, True, (-1, -1), 0.0)
    assert a.features.mask == "causal" and a.scale == pytest.approx(64 ** -0.5)
    assert api.options(q, None, False, [8, 0], 0.0).features.mask == "local"  # a list window: not memoised
    with pytest.raises(ValueError, match="window_size"):
        api.options(q, None, False, (-2, 0), 0.0)
    with pytest.raises(ValueError, match="softcap"):
        api.options(q, None, False, (-1, -1), -1.0)
    with pytest.raises(ValueError, match="softmax_scale"):
        api.options(q, -1.0, False, (-1, -1), 0.0)
    sink = ref((8,), "float32")
    o = api.options(q, None, False, (-1, -1), 0.0, learnable_sink=sink)
    assert o.features.sink and o.fields["sink"] == sink.ptr
    with pytest.raises(ValueError, match="learnable_sink must have shape"):
        api.options(q, None, False, (-1, -1), 0.0, learnable_sink=ref((4,), "float32"))
    with pytest.raises(TypeError, match="alibi_slopes must be float32"):
        api.options(q, None, False, (-1, -1), 0.0, alibi_slopes=ref((8,), "float16"))


@pytest.mark.parametrize("packer, dtype", [(params.FWD, params.FWD_PARAMS), (params.BWD, params.BWD_PARAMS),
                                           (params.BWD_TMA, params.BWD_TMA_PARAMS),
                                           (params.BWD_PREPARE, params.BWD_PREPARE_PARAMS),
                                           (params.BWD_CONVERT, params.BWD_CONVERT_PARAMS)])
def test_packer_matches_the_numpy_layout(packer, dtype):
    fields = {}
    for i, name in enumerate(dtype.names):
        if name in params.TENSOR_MAP_FIELDS:
            continue  # written by put_map (tests/cpu/test_launch_plans.py, the tensor-map replay test)
        sub = dtype.fields[name][0]
        if sub.kind == "u" and sub.itemsize == 4:
            fields[name] = (i + 1) | 1 << 31  # a uint32 above int32's range
        else:
            fields[name] = (i + 1) * 0.5 if sub.kind == "f" else (-(i + 1) if sub.kind == "i" else (i + 1) << 33)
    assert packer.to_bytes(fields) == params.pack_named(dtype, fields).tobytes()
    assert packer.to_bytes({}) == bytes(dtype.itemsize)
    with pytest.raises(KeyError, match="not fields"):
        packer.pack({"no_such_field": 1})
