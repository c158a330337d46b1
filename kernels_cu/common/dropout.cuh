// dropout.cuh: the dropout keep-mask from absolute coordinates (DESIGN 3 and 4a).
//
// Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011: "Parallel random numbers: as
// easy as 1, 2, 3") keyed by the seed, counted by where an entry is, so the
// forward, the backward, return_attn_probs and cuflash.reference
// (dropout_keep_mask, the NumPy twin of this file) draw the same mask whatever
// the kernel family or tile shape:
//   one call per group of eight entries {i, i + 8} x {j, j + 1, j + 8, j + 9}
//     (query i with i % 16 < 8, key j even with j % 16 < 8, of one sequence),
//   counter = (i, j, b * nheads + h, offset), key = (seed % 2^32, seed / 2^32),
//   entry (i + di, j + dj) reads the 16 bits of output word 2 [di = 8] + [dj >= 8]
//   (the low half for an even key, the high half for an odd one) and is kept
//   when they are >= threshold = floor(p * 2^16).
// An mma.sync / wgmma accumulator fragment gives lane 4g + t rows g, g + 8 of a
// 16-row block and columns 2t, 2t + 1 of each 8-column tile (fragment.cuh):
// - queries as rows (the forward's S): across n8 tiles 2u, 2u + 1 a lane holds
//   exactly the group (g, 2t): one call per eight entries;
// - keys as rows (the backward's S^T): a lane holds keys g, g + 8 and queries
//   2t, 2t + 1, 2t + 8, 2t + 9, half of groups (2t, g & ~1) and (2t + 1, g & ~1);
//   lane g ^ 1 (lane ^ 4) holds their other halves. Each lane computes the group
//   of query 2t + (g & 1) and the pair swaps them with one shuffle: again one
//   call per eight entries.
//
// In the kernels (CUFLASH_DROPOUT): Dropout holds a (b, h)'s Philox key and
// counter word, and keep_pair() draws the bits of two n8 tiles. The forward
// zeroes the dropped entries of P after the softmax (l keeps the undropped sum)
// and divides O by 1 - p in the epilogue; the backward scales dP by
// keep / (1 - p) before dS = P (dP - D) and uses P keep / (1 - p) for dV
// (softmax.cuh softmax_backward_t).
#pragma once
#include "platform.cuh"

constexpr bool DROPOUT = CUFLASH_DROPOUT != 0;
// CUFLASH_DROPOUT 2: the seed words are in device memory (params.cuh dropout_rng).
constexpr bool DROPOUT_SEED_IN_MEMORY = CUFLASH_DROPOUT == 2;

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

// The keep bits of the group whose low corner is (query i, key j), i % 16 < 8,
// j even and j % 16 < 8, of (b, h) (bh = b * nheads + h): bit 2 w + half for
// the entry that reads half `half` of output word w (see above).
CUFLASH_DEVICE u32 dropout_keep_group(PhiloxKey key, u32 offset, u32 threshold, int bh, int i, int j) {
    const uint4 r = philox4x32_10(make_uint4((u32)i, (u32)j, (u32)bh, offset), key);
    const u32 words[4] = {r.x, r.y, r.z, r.w};
    u32 bits = 0u;
#pragma unroll
    for (int w = 0; w < 4; ++w)
        bits |= (u32)((words[w] & 0xFFFFu) >= threshold) << (2 * w) |
                (u32)((words[w] >> 16) >= threshold) << (2 * w + 1);
    return bits;
}

// The dropout of one (batch b, query head h): the run-time values of
// params.cuh (CUFLASH_ATTENTION_FIELDS dropout_*).
struct Dropout {
    PhiloxKey key;
    u32 offset, threshold;
    int bh;          // b * nheads + h: the counter's third word
    float scale;     // 1 / (1 - p)
    const u32* rng;  // DROPOUT_SEED_IN_MEMORY: (seed_lo, seed_hi, offset), read instead of key and offset

    template <class Params>
    CUFLASH_DEVICE Dropout(const Params& p, int b, int h)
        : key{p.dropout_seed_lo, p.dropout_seed_hi}, offset(p.dropout_offset), threshold(p.dropout_threshold),
          bh(b * p.nheads + h), scale(p.dropout_scale), rng(p.dropout_rng) {}

    // The keep bits of n8 tiles 2u and 2u + 1 of an accumulator tile
    // x[MT][NT][4] (fragment.cuh) whose element (mt, nt, 2h+j) is at row
    // row0 + mt*16 + h*8 + g, column col0 + nt*8 + 2t + j; rows are queries (S)
    // or keys (KEYS_AS_ROWS: S^T), row0 and col0 multiples of 16. Element
    // (mt, 2u + a, e) is bit (mt * 2 + a) * 4 + e (kept()). Called by whole warps
    // (the keys-as-rows case shuffles).
    template <bool KEYS_AS_ROWS, int MT>
    CUFLASH_DEVICE u32 keep_pair(int row0, int col0, int u, int lane) const {
        static_assert(MT <= 4, "the bits of one pair of n8 tiles fit one word");
        const int g = lane / 4, t = lane % 4;
        // This lane's groups, 8 bits per m16 tile. One call at a time (no
        // unrolling): each holds ~10 registers through its 10 rounds, and the
        // main loops run near their register limit.
        u32 groups = 0u;
        // A seed in device memory is read here, at each use, not held by the object: words
        // loaded once would hold three registers through the main loop (key and offset are
        // parameters, which the compiler re-reads from constant memory).
        PhiloxKey k = key;
        u32 off = offset;
        if (DROPOUT_SEED_IN_MEMORY) k = PhiloxKey{__ldg(rng), __ldg(rng + 1)}, off = __ldg(rng + 2);
#pragma unroll 1
        for (int mt = 0; mt < MT; ++mt) {
            const int row = row0 + mt * 16 + g, col = col0 + u * 16 + 2 * t;
            const u32 bits = KEYS_AS_ROWS ? dropout_keep_group(k, off, threshold, bh, col + (g & 1), row & ~1)
                                          : dropout_keep_group(k, off, threshold, bh, row, col);
            groups |= bits << (8 * mt);
        }
        // With keys as rows, the partner lane g ^ 1 computed the group of query 2t + 1 - (g & 1).
        const u32 partner = KEYS_AS_ROWS ? __shfl_xor_sync(0xffffffffu, groups, 4) : 0u;
        const int half = g & 1;  // keys as rows: this lane's keys g, g + 8 are its groups' even or odd ones
        u32 out = 0u;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        // Element (mt, 2u + a, 2h + j) reads group bit 2 word + half:
                        //   queries as rows: query + 8h, key + 8a + j: word 2h + a, half j;
                        //   keys as rows: key + 8h, query 2t + j + 8a: the group of query
                        //   2t + j (this lane's when j == g & 1), word 2a + h, half g & 1.
                        const u32 src = !KEYS_AS_ROWS || j == half ? groups : partner;
                        const int bit = KEYS_AS_ROWS ? 2 * (2 * a + h) + half : 2 * (2 * h + a) + j;
                        out |= ((src >> (8 * mt + bit)) & 1u) << ((mt * 2 + a) * 4 + 2 * h + j);
                    }
        return out;
    }
    static CUFLASH_DEVICE bool kept(u32 bits, int mt, int a, int e) { return (bits >> ((mt * 2 + a) * 4 + e)) & 1u; }

    // The forward's P (queries as rows) after the softmax: dropped entries 0
    // (the epilogue divides O by 1 - p, scale_rows). Applying the Philox words
    // straight to the tile instead of through keep_pair's bits measured the
    // same on the H200 (309 vs 311 TFLOP/s, d128): the 10 rounds are the cost.
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
