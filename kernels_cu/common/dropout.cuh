// dropout.cuh: the dropout keep-mask from absolute coordinates (DESIGN 3 and 4a).
//
// Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011: "Parallel random numbers: as
// easy as 1, 2, 3") keyed by the seed, counted by where an entry is, so the
// forward, the backward, return_attn_probs and cuflash.reference
// (dropout_keep_mask, the NumPy twin of this file) draw the same mask whatever
// the kernel family or tile shape:
//   one call per group of four entries {i, i + 8} x {j, j + 8}
//     (query i and key j of one sequence with i % 16 < 8 and j % 16 < 8),
//   counter = (i, j, b * nheads + h, offset), key = (seed % 2^32, seed / 2^32),
//   output n = 2 * [query is i + 8] + [key is j + 8] keeps its entry when it is
//   >= threshold = floor(p * 2^32).
// An mma.sync / wgmma accumulator fragment gives each thread rows g, g + 8 of
// a 16-row block and columns 2t, 2t + 1 of each 8-column tile, so across two
// adjacent 8-column tiles it holds whole groups, whether queries or keys are
// its rows: the forward and the backward each make one call per four entries.
#pragma once
#include "platform.cuh"

struct PhiloxKey {
    u32 k0, k1;
};

// Philox4x32-10 of counter c under key k (the Random123 reference's known
// answers hold: tests/cpu/test_dropout_mask.py checks the NumPy twin).
CUFLASH_DEVICE uint4 philox4x32_10(uint4 c, PhiloxKey k) {
    constexpr u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round) k.k0 += W0, k.k1 += W1;
        const u32 hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
        const u32 hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.k0, lo1, hi0 ^ c.w ^ k.k1, lo0);
    }
    return c;
}

// The keep bits of the group whose low corner is (query i, key j), i % 16 < 8
// and j % 16 < 8, of (b, h) (bh = b * nheads + h): bit n for output n above.
CUFLASH_DEVICE u32 dropout_keep_group(PhiloxKey key, u32 offset, u32 threshold, int bh, int i, int j) {
    const uint4 r = philox4x32_10(make_uint4((u32)i, (u32)j, (u32)bh, offset), key);
    return (u32)(r.x >= threshold) | (u32)(r.y >= threshold) << 1 | (u32)(r.z >= threshold) << 2 |
           (u32)(r.w >= threshold) << 3;
}
