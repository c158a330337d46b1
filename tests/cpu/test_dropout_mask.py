"""The dropout keep-mask of cuflash.reference (issue 10's foundation): Philox4x32 (7 rounds for the
mask, 10 as a check of the round loop) against the Random123 reference's known answers, and the
mask's rules (DESIGN 3): a function of (seed, offset) and absolute (batch, head, query, key) only,
keep rate 1 - round(256 p) / 256, one Philox call per group {i, i + 1, i + 8, i + 9} x {j, j + 1,
j + 8, j + 9}, a random byte per entry. kernels_cu/common/dropout.cuh is its CUDA twin
(tests/compile/test_dropout_header.py compiles it, tests/gpu/test_dropout_mask.py compares them)."""
from __future__ import annotations

import numpy as np
import pytest

from cuflash import reference

# Random123's kat_vectors for philox4x32 with 7 rounds (the mask's) and 10: rounds, counter, key, output.
KNOWN_ANSWERS = [
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("rounds, counter, key, want", KNOWN_ANSWERS)
def test_philox_known_answers(rounds, counter, key, want):
    assert tuple(int(x) for x in reference.philox4x32(counter, key, rounds)) == want


def test_the_mask_draws_seven_rounds():
    assert reference.PHILOX_ROUNDS == 7
    counter, key = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)
    assert tuple(int(x) for x in reference.philox4x32(counter, key)) == KNOWN_ANSWERS[2][3]


def test_philox_broadcasts_over_counters():
    seven = [a for a in KNOWN_ANSWERS if a[0] == 7]
    counters = np.array([c for _, c, _, _ in seven], np.uint32)
    keys = np.array([k for _, _, k, _ in seven], np.uint32)
    assert np.array_equal(reference.philox4x32(counters, keys), np.array([w for _, _, _, w in seven]))


def test_each_entry_follows_its_group_rule():
    seed, offset, p = 0x1234_5678_9ABC, 77, 0.37
    mask = reference.dropout_keep_mask(seed, offset, 2, 3, 45, 70, p)
    rng = np.random.default_rng(0)
    for _ in range(300):
        b, h, i, j = (int(rng.integers(n)) for n in (2, 3, 45, 70))
        low_i = (i - 8 * ((i % 16) >= 8)) & ~1
        low_j = (j - 8 * ((j % 16) >= 8)) & ~1
        out = reference.philox4x32((low_i, low_j, b * 3 + h, offset), (seed & 0xFFFFFFFF, seed >> 32))
        word = (i - low_i) % 2 + 2 * (i - low_i >= 8)
        byte = (j - low_j) % 2 + 2 * (j - low_j >= 8)
        bits = (int(out[word]) >> (8 * byte)) & 0xFF
        assert mask[b, h, i, j] == (bits >= reference.dropout_threshold(p))


def test_the_group_layout_covers_sixteen_entries_once():
    offsets = (0, 1, 8, 9)
    assert sorted((di, dj) for di, dj, _, _ in reference.DROPOUT_GROUP) == [(di, dj) for di in offsets for dj in offsets]
    assert sorted((w, b) for _, _, w, b in reference.DROPOUT_GROUP) == [(w, b) for w in range(4) for b in range(4)]


def test_keep_rate_and_the_extremes():
    mask = reference.dropout_keep_mask(3, 0, 2, 4, 256, 256, 0.25)
    n = mask.size
    assert abs(mask.mean() - 0.75) < 5 * np.sqrt(0.25 * 0.75 / n)
    assert reference.dropout_keep_mask(3, 0, 1, 2, 40, 50, 0.0).all()
    # p rounded to the nearest 1/256: 0.1 -> 26/256, 0.5 -> 128/256, at most 255/256
    assert reference.dropout_threshold(0.0) == 0 and reference.dropout_threshold(0.5) == 128
    assert reference.dropout_threshold(0.1) == 26 and reference.dropout_rate(0.1) == 26 / 256
    assert reference.dropout_threshold(1 / 1024) == 0 and reference.dropout_threshold(0.999999999) == 0xFF
    for p in (0.01, 0.1, 0.17, 0.5, 0.9):
        assert abs(reference.dropout_rate(p) - p) <= 1 / 512


def test_mask_depends_on_position_seed_and_offset_only():
    big = reference.dropout_keep_mask(9, 4, 2, 2, 100, 90, 0.5)
    small = reference.dropout_keep_mask(9, 4, 2, 2, 37, 61, 0.5)
    assert np.array_equal(big[:, :, :37, :61], small)          # the same entries whatever the sizes
    assert np.array_equal(big, reference.dropout_keep_mask(9, 4, 2, 2, 100, 90, 0.5))
    assert not np.array_equal(big, reference.dropout_keep_mask(10, 4, 2, 2, 100, 90, 0.5))
    assert not np.array_equal(big, reference.dropout_keep_mask(9, 5, 2, 2, 100, 90, 0.5))
    assert not np.array_equal(big[0, 0], big[0, 1]) and not np.array_equal(big[0, 0], big[1, 0])
