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
//
// In the kernels (CUFLASH_DROPOUT): Dropout holds a (b, h)'s Philox key and
// counter word, and keep_mask() draws the bits of one accumulator tile. The
// forward zeroes the dropped entries of P after the softmax (l keeps the
// undropped sum) and divides O by 1 - p in the epilogue; the backward scales
// dP by keep / (1 - p) before dS = P (dP - D) and uses P keep / (1 - p) for
// dV (softmax.cuh softmax_backward_t).
#pragma once
#include "platform.cuh"

constexpr bool DROPOUT = CUFLASH_DROPOUT;

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

// The dropout of one (batch b, query head h): the run-time values of
// params.cuh (CUFLASH_ATTENTION_FIELDS dropout_*).
struct Dropout {
    PhiloxKey key;
    u32 offset, threshold;
    int bh;       // b * nheads + h: the counter's third word
    float scale;  // 1 / (1 - p)

    template <class Params>
    CUFLASH_DEVICE Dropout(const Params& p, int b, int h)
        : key{p.dropout_seed_lo, p.dropout_seed_hi}, offset(p.dropout_offset), threshold(p.dropout_threshold),
          bh(b * p.nheads + h), scale(p.dropout_scale) {}

    // The keep bits of n8 tiles 2u and 2u + 1 of an accumulator tile
    // x[MT][NT][4] (fragment.cuh) whose element (mt, nt, 2h+j) is at row
    // row0 + mt*16 + h*8 + g, column col0 + nt*8 + 2t + j; rows are queries (S)
    // or keys (KEYS_AS_ROWS: S^T). row0 and col0 are multiples of 16, so this
    // lane's groups {i, i + 8} x {j, j + 8} there are (mt, j): one Philox call
    // each. Element (mt, 2u + a, e) is bit (mt * 2 + a) * 4 + e (kept()).
    template <bool KEYS_AS_ROWS, int MT>
    CUFLASH_DEVICE u32 keep_pair(int row0, int col0, int u, int lane) const {
        static_assert(MT <= 4, "the bits of one pair of n8 tiles fit one word");
        const int g = lane / 4, t = lane % 4;
        u32 bits = 0u;
        // One call at a time (no unrolling): each holds ~10 registers through
        // its 10 rounds, and the main loops run near their register limit.
#pragma unroll 1
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll 1
            for (int j = 0; j < 2; ++j) {
                const int row = row0 + mt * 16 + g, col = col0 + u * 16 + 2 * t + j;
                const u32 group = KEYS_AS_ROWS ? dropout_keep_group(key, offset, threshold, bh, col, row)
                                               : dropout_keep_group(key, offset, threshold, bh, row, col);
                // Element (mt, 2u + a, 2h + j) is at row + 8h, column + 8a; the
                // group's output n = 2 [query + 8] + [key + 8].
#pragma unroll
                for (int a = 0; a < 2; ++a)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int n = KEYS_AS_ROWS ? 2 * a + h : 2 * h + a;
                        bits |= ((group >> n) & 1u) << ((mt * 2 + a) * 4 + 2 * h + j);
                    }
            }
        return bits;
    }
    static CUFLASH_DEVICE bool kept(u32 bits, int mt, int a, int e) { return (bits >> ((mt * 2 + a) * 4 + e)) & 1u; }

    // The forward's P (queries as rows) after the softmax: dropped entries 0
    // (the epilogue divides O by 1 - p, scale_rows).
    template <int MT, int NT>
    CUFLASH_DEVICE void drop(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        static_assert(NT % 2 == 0, "a group spans two adjacent n8 tiles");
#pragma unroll
        for (int u = 0; u < NT / 2; ++u) {
            const u32 bits = keep_pair<false, MT>(row0, col0, u, lane);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int a = 0; a < 2; ++a)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (!kept(bits, mt, a, e)) s[mt][2 * u + a][e] = 0.f;
        }
    }

    // O's row factors 1/l of the forward's epilogue, times 1 / (1 - p) (a no-op without CUFLASH_DROPOUT).
    template <int MT>
    CUFLASH_DEVICE void scale_rows(float (&inv_l)[MT][2]) const {
        if (!DROPOUT) return;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) inv_l[mt][0] *= scale, inv_l[mt][1] *= scale;
    }
};
