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
