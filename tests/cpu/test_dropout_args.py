"""Dropout's arguments without a GPU: dropout_p and seed are validated (each error names its
argument), the kernels' run-time fields carry the seed, offset, threshold and scale that
reference.dropout_keep_mask uses, and the switch selects dropout kernels where a family has them."""
from __future__ import annotations

import numpy as np
import pytest

from cuflash import api, reference, support
from cuflash.specs import Features
from cuflash.launch import Ref


def ref(shape, dtype="bfloat16"):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.insert(0, acc)
        acc *= n
    return Ref(1 << 20, tuple(shape), tuple(strides), dtype, 0)


@pytest.mark.parametrize("p, seed, expect", [
    (0.1, 7, (0.1, 7, 0)),
    (0.5, (2**64 - 1, 2**32 - 1), (0.5, 2**64 - 1, 2**32 - 1)),
    (np.float32(0.25), np.int64(3), (0.25, 3, 0)),
])
def test_valid_dropout(p, seed, expect):
    assert tuple(api.dropout_options(p, seed)) == pytest.approx(expect)


def test_no_dropout_is_none_and_ignores_the_seed():
    assert api.dropout_options(0.0, None) is None
    assert api.dropout_options(0, 5) is None


def test_a_forward_without_seed_draws_a_fresh_one_and_the_backward_refuses():
    a, b = api.dropout_options(0.1, None), api.dropout_options(0.1, None)
    assert 0 <= a.seed < 2**64 and a.offset == 0 and a.seed != b.seed
    with pytest.raises(ValueError, match="forward's seed"):
        api.dropout_options(0.1, None, backward=True)


@pytest.mark.parametrize("p, seed, exc, match", [
    (1.0, 1, ValueError, r"dropout_p must be in \[0, 1\)"),
    (-0.1, 1, ValueError, r"dropout_p must be in \[0, 1\)"),
    (float("nan"), 1, ValueError, "dropout_p"),
    (float("inf"), 1, ValueError, "dropout_p"),
    ("0.1", 1, TypeError, "dropout_p must be a number"),
    (True, 1, TypeError, "dropout_p must be a number"),
    (0.1, 1.5, TypeError, "seed must be an int"),
    (0.1, "7", TypeError, "seed must be an int"),
    (0.1, True, TypeError, "seed must be an int"),
    (0.1, -1, ValueError, "seed must be in"),
    (0.1, 2**64, ValueError, "seed must be in"),
    (0.1, (1, 2**32), ValueError, "offset must be in"),
    (0.1, (1, -1), ValueError, "offset must be in"),
    (0.1, (1, 2.0), TypeError, "seed must be an int"),
    (0.1, (1, 2, 3), TypeError, "seed must be an int"),
])
def test_bad_dropout_is_refused(p, seed, exc, match):
    with pytest.raises(exc, match=match):
        api.dropout_options(p, seed)


def test_fields_carry_the_mask_parameters():
    q = ref((2, 16, 8, 64))
    seed = 0x0123456789ABCDEF
    o = api.with_dropout(api.options(q, None, True, (-1, -1), 0.0), api.dropout_options(0.2, (seed, 9)))
    assert o.features == Features("causal", dropout=True)
    f = o.fields
    assert (f["dropout_seed_lo"], f["dropout_seed_hi"], f["dropout_offset"]) == (0x89ABCDEF, 0x01234567, 9)
    assert f["dropout_threshold"] == reference.dropout_threshold(0.2) == round(0.2 * 256)
    assert f["dropout_scale"] == pytest.approx(1 / 0.8)
    plain = api.options(q, None, True, (-1, -1), 0.0)
    assert api.with_dropout(plain, None) is plain and not plain.features.dropout
    assert not any(k.startswith("dropout") for k in plain.fields)


def test_every_attention_family_has_dropout_but_the_decode():
    for family in support.FAMILIES:
        assert ("dropout" in family.modifiers) == (family.direction != "decode"), family.name
    f = Features(dropout=True)
    assert support.select(support.Problem("fwd", "bf16", 128, f)).features.dropout
    assert support.select(support.Problem("bwd", "bf16", 128, f)).features.dropout
    assert "dropout" in support.select(support.Problem("fwd", "bf16", 128, f)).name
    with pytest.raises(ValueError, match="decode has no dropout"):
        support.select(support.Problem("decode", "bf16", 128, f))
