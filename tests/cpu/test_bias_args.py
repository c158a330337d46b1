"""The bias's validation and dbias's buffer plan, on Refs (no GPU needed)."""
import pytest

from cuflash import api
from cuflash.launch import Ref
from cuflash.specs import Features

Q = Ref(0, (2, 16, 4, 64), (4096, 256, 64, 1), "bfloat16", 0)  # batch 2, seqlen_q 16, 4 heads
K = Ref(0, (2, 24, 2, 64), (3072, 128, 64, 1), "bfloat16", 0)  # seqlen_k 24


def contiguous(shape, dtype="bfloat16", device=0):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return Ref(4096, tuple(shape), tuple(reversed(strides)), dtype, device)


def check(ref, converted=None):
    copies = []

    def convert(x, dtype):
        copies.append(dtype)
        return converted if converted is not None else contiguous(x.shape, dtype or x.dtype)

    return api.check_bias(ref, Q, K, lambda r: r, convert), copies


@pytest.mark.parametrize("shape, shape4, strides4", [
    ((2, 4, 16, 24), (2, 4, 16, 24), (1536, 384, 24)),
    ((1, 4, 16, 24), (1, 4, 16, 24), (0, 384, 24)),
    ((2, 1, 1, 24), (2, 1, 1, 24), (24, 0, 0)),
    ((24,), (1, 1, 1, 24), (0, 0, 0)),
    ((16, 24), (1, 1, 16, 24), (0, 0, 24)),
    ((4, 16, 24), (1, 4, 16, 24), (0, 384, 24)),
])
def test_broadcast_shapes_become_zero_strides(shape, shape4, strides4):
    bias, copies = check(contiguous(shape))
    assert bias.ref.shape == shape4 and bias.ref.strides[:3] == strides4 and bias.ref.strides[3] == 1
    assert bias.bits == 16 and bias.shape == shape and bias.dtype == "bfloat16" and not copies


def test_float32_is_read_as_is_and_the_other_16_bit_dtype_is_widened():
    bias, copies = check(contiguous((16, 24), "float32"))
    assert bias.bits == 32 and not copies
    bias, copies = check(contiguous((16, 24), "float16"))
    assert copies == ["float32"] and bias.bits == 32 and bias.dtype == "float16"


def test_keys_not_contiguous_are_copied():
    bias, copies = check(Ref(0, (16, 24), (1, 16), "bfloat16", 0))
    assert copies == [None] and bias.ref.strides == (0, 0, 24, 1)


@pytest.mark.parametrize("shape, exc, text", [
    ((2, 4, 16, 23), ValueError, "does not broadcast"),
    ((3, 4, 16, 24), ValueError, "does not broadcast"),
    ((2, 4, 16, 1), ValueError, "last dim must be seqlen_k"),
    ((1, 2, 4, 16, 24), ValueError, "1 to 4 dims"),
])
def test_bad_shapes_are_refused(shape, exc, text):
    with pytest.raises(exc, match=text):
        check(contiguous(shape))


def test_bad_dtype_and_device_are_refused():
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        check(contiguous((24,), "int32"))
    with pytest.raises(ValueError, match="bias is on GPU 1 but q is on GPU 0"):
        check(contiguous((24,), device=1))


def test_with_bias_sets_the_switch_and_the_fields():
    bias, _ = check(contiguous((1, 4, 16, 24), "float32"))
    opts = api.with_bias(api.options(Q), bias)
    assert opts.features == Features(bias=32)
    f = opts.fields
    assert f["bias"] == 4096 and (f["bias_batch_stride"], f["bias_head_stride"], f["bias_row_stride"]) == (0, 384, 24)
    assert api.with_bias(opts, None) is opts


FULL = (2, 4, 16, 24)


@pytest.mark.parametrize("shape4, deterministic, buffer, strides, atomic, axes", [
    ((2, 4, 16, 24), False, (2, 4, 16, 24), (1536, 384, 24), False, ()),
    ((2, 4, 16, 24), True, (2, 4, 16, 24), (1536, 384, 24), False, ()),
    ((1, 4, 16, 24), False, (1, 4, 16, 24), (0, 384, 24), True, ()),
    ((1, 4, 16, 24), True, (2, 4, 16, 24), (1536, 384, 24), False, (0,)),
    ((2, 1, 1, 24), False, (2, 1, 1, 24), (24, 0, 0), True, ()),
    ((2, 1, 1, 24), True, (2, 4, 16, 24), (1536, 384, 24), False, (1, 2)),
    ((1, 1, 1, 24), False, (1, 1, 1, 24), (0, 0, 0), True, ()),
])
def test_dbias_plan(shape4, deterministic, buffer, strides, atomic, axes):
    plan = api.dbias_plan(shape4, FULL, deterministic)
    assert (plan.shape, plan.strides, plan.atomic, plan.sum_axes) == (buffer, strides, atomic, axes)
    assert plan.f32 == (atomic or bool(axes))  # one store per entry: in the bias's own dtype


def test_dbias_plan_one_query_keeps_a_row_stride():
    # A row stride of 0 tells the kernel to sum over queries (with atomics); one query has nothing to sum.
    plan = api.dbias_plan((1, 1, 1, 24), (1, 1, 1, 24), False)
    assert plan.strides[2] == 24 and not plan.atomic


def test_features_words_and_tags():
    assert Features.parse("causal,bias") == Features("causal", bias=16)
    assert Features.parse("bias32,softcap") == Features(softcap=True, bias=32)
    assert Features(bias=16).tag == "full_bias" and Features("local", bias=32).tag == "local_bias32"
    assert Features(bias=32).defines()["CUFLASH_BIAS"] == 32
    with pytest.raises(ValueError, match="bias must be 0"):
        Features(bias=8)


def test_bench_bias_shapes():
    from cuflash.bench import configs

    assert configs.parse_bias(" b, h,s,s") == "b,h,s,s" and configs.parse_bias("") == ""
    for bad in ("b,h,s", "h,b,s,s", "b,h,s,1", "2,h,s,s"):
        with pytest.raises(ValueError, match="--bias takes"):
            configs.parse_bias(bad)
    p = configs.Point("bf16", 128, 512, 1024, 2, 16, 16, False, "fwd", bias="b,1,1,s")
    assert p.bias_shape == (2, 1, 1, 1024) and "bias" in p.features and p.variant == "bias(b,1,1,s)"
    assert configs.Point("bf16", 128, 512, 1024, 2, 16, 16, False, "fwd", bias="1,h,s,s").bias_shape == (1, 16, 512,
                                                                                                         1024)


def test_dbias_buffer_allocates_what_the_plan_says_and_fills_the_fields():
    import numpy as np

    made = []

    def zeros(shape, name):
        import ml_dtypes

        made.append((shape, name))
        return np.zeros(shape, dtype=ml_dtypes.bfloat16 if name == "bfloat16" else name)

    def ref_of(x):
        return Ref(1234, x.shape, x.strides, x.dtype.name, 0)

    shared, _ = check(contiguous((1, 4, 16, 24)))  # shared by the batch: float32 atomics
    plan, buffer, fields = api.dbias_buffer(shared, Q, K, False, zeros, ref_of)
    assert made == [((1, 4, 16, 24), "float32")] and buffer.shape == plan.shape
    assert fields == {"dbias": 1234, "dbias_batch_stride": 0, "dbias_head_stride": 384, "dbias_row_stride": 24,
                      "dbias_atomic": 1, "dbias_f32": 1}
    full, _ = check(contiguous((2, 4, 16, 24)))  # one writer per entry: stored in the bias's own dtype
    plan, _, fields = api.dbias_buffer(full, Q, K, False, zeros, ref_of)
    assert made[-1] == ((2, 4, 16, 24), "bfloat16") and fields["dbias_atomic"] == fields["dbias_f32"] == 0
