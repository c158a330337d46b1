"""cuflash bench: FLOP and byte formulas."""
import pytest

from cuflash.bench import configs


def point(s=1024, causal=False, mode="fwd", b=2, h=16, d=128, sk=None, hkv=None, dtype="bf16"):
    return configs.Point(dtype, d, s, s if sk is None else sk, b, h, h if hkv is None else hkv, causal, mode)


def test_forward_flops_non_causal():
    p = point(s=1024)
    assert configs.forward_flops(p) == 4 * 2 * 16 * 1024 * 1024 * 128
    assert configs.work(p)["amount"] == configs.forward_flops(p)
    assert configs.work(p)["anchor_amount"] == configs.forward_flops(p)


@pytest.mark.parametrize("s", [1, 7, 512, 8192])
def test_causal_counts_exact_pairs(s):
    p = point(s=s, causal=True)
    assert configs.visible_pairs(s, s, True) == s * (s + 1) // 2
    assert configs.forward_flops(p) == 4 * 2 * 16 * 128 * (s * (s + 1) // 2)
    # the anchors' s^2 / 2 differs by the diagonal only: O(s), not O(s^2)
    diff = configs.forward_flops(p) - configs.anchor_forward_flops(p)
    assert diff == pytest.approx(4 * 2 * 16 * 128 * s / 2)


def test_causal_is_bottom_right_aligned():
    # 3 queries, 5 keys: rows see keys 0..2, 0..3, 0..4
    assert configs.visible_pairs(3, 5, True) == 3 + 4 + 5
    # more queries than keys: the first rows see nothing
    assert configs.visible_pairs(5, 3, True) == 0 + 0 + 1 + 2 + 3
    assert configs.visible_pairs(3, 5, False) == 15


@pytest.mark.parametrize("mode, factor", [("fwd", 1.0), ("bwd", 2.5), ("fwd+bwd", 3.5)])
def test_mode_factors(mode, factor):
    base = configs.forward_flops(point(causal=True))
    w = configs.work(point(causal=True, mode=mode))
    assert w["unit"] == "flop"
    assert w["amount"] == pytest.approx(factor * base)
    assert w["anchor_amount"] == pytest.approx(factor * configs.anchor_forward_flops(point(causal=True)))
    assert "4 * batch * nheads" in w["formula"] and "2.5" in w["formula"]


def test_io_bytes_counts_q_k_v_out_once_with_gqa():
    p = point(s=1000, sk=3000, b=2, h=8, hkv=2, d=64, dtype="fp16")
    q_or_out = 2 * 1000 * 8 * 64 * 2
    k_or_v = 2 * 3000 * 2 * 64 * 2
    assert configs.io_bytes(p) == 2 * q_or_out + 2 * k_or_v


def test_rate_units():
    # 1e12 FLOPs in 1 ms = 1000 TFLOP/s
    assert configs.rate(1e12, 1.0) == pytest.approx(1000.0)
    assert configs.RATE_UNITS == {"flop": "TFLOP/s", "byte": "TB/s"}


def test_anchor_number_is_reproduced():
    # anchors: sdpa-flash fwd, b 32, h 32, s 512, d 64, non-causal: 0.26077 ms -> 263.5 TFLOP/s
    p = point(s=512, b=32, h=32, d=64)
    assert configs.rate(configs.work(p)["amount"], 0.26076799631118774) == pytest.approx(263.527, rel=1e-4)


def window_point(s=1024, window=(-1, -1), causal=False, sk=None, mode="fwd"):
    return configs.Point("bf16", 128, s, s if sk is None else sk, 2, 16, 16, causal, mode, window=window)


@pytest.mark.parametrize("sq, sk, causal, window", [
    (64, 64, False, (8, 0)), (64, 64, False, (8, 3)), (64, 64, True, (8, 3)), (64, 64, False, (-1, 5)),
    (64, 64, False, (0, 0)), (40, 100, False, (7, 2)), (100, 40, True, (10, -1)), (33, 17, False, (-1, -1)),
])
def test_window_counts_exactly_the_visible_pairs(sq, sk, causal, window):
    from cuflash.reference import visible_mask
    p = window_point(sq, window, causal, sk)
    pairs = int(visible_mask(sq, sk, causal, window).sum())
    assert configs.visible_pairs(sq, sk, causal, window) == pairs
    assert configs.work(p)["visible_pairs"] == pairs
    assert configs.forward_flops(p) == 4 * 2 * 16 * 128 * pairs


def test_window_256_0_over_16k():
    s, w = 16384, 256
    pairs = sum(min(i, w) + 1 for i in range(s))           # row i sees keys max(0, i - 256)..i
    assert pairs == (w + 1) * s - w * (w + 1) // 2
    for causal in (False, True):                           # causal changes nothing with right = 0
        p = window_point(s, (w, 0), causal, mode="bwd")
        assert configs.work(p)["amount"] == 2.5 * 4 * 2 * 16 * 128 * pairs
    # about 64x fewer than the full square
    assert configs.forward_flops(window_point(s)) / configs.forward_flops(window_point(s, (w, 0))) > 60


def test_window_has_no_anchor_count_and_other_variants_cost_no_flops():
    w = configs.work(window_point(4096, (256, 0), mode="fwd+bwd"))
    assert w["anchor_amount"] is None and "window" in w["formula"]
    plain = configs.work(window_point(4096, causal=True))
    other = configs.work(configs.Point("bf16", 128, 4096, 4096, 2, 16, 16, True, "fwd", softcap=30.0, alibi=True,
                                       sink=True))
    assert other["amount"] == plain["amount"] and other["anchor_amount"] == plain["anchor_amount"]


def test_variant_inputs():
    import numpy
    slopes = configs.alibi_slopes(8)
    assert slopes.dtype == numpy.float32 and slopes.shape == (8,)
    assert slopes.tolist() == [2.0 ** -(i + 1) for i in range(8)]      # 2^(-8 (h + 1) / 8)
    assert (configs.alibi_slopes(12) > 0).all() and configs.alibi_slopes(12)[-1] == 2.0 ** -8
    sink = configs.sink_logits(16)
    assert sink.dtype == numpy.float32 and sink.shape == (16,) and len(set(sink.tolist())) == 16
    assert (configs.sink_logits(16) == sink).all()                      # fixed seed
