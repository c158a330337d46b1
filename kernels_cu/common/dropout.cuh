// dropout.cuh: the dropout keep-mask from absolute coordinates (DESIGN 3 and 4a).
//
// Philox4x32-7 (Salmon, Moraes, Dror, Shaw 2011: "Parallel random numbers: as
// easy as 1, 2, 3"; seven rounds, which the paper reports passing TestU01's
// BigCrush, as flash-attn 2.x draws its dropout) keyed by the seed, counted by
// where an entry is, so the
// forward, the backward, return_attn_probs and cuflash.reference
// (dropout_keep_mask, the NumPy twin of this file) draw the same mask whatever
// the kernel family or tile shape:
//   one call per group of sixteen entries {i, i + 1, i + 8, i + 9} x
//     {j, j + 1, j + 8, j + 9} (query i and key j even, i % 16 < 8 and
//     j % 16 < 8, of one sequence),
//   counter = (i, j, b * nheads + h, offset), key = (seed % 2^32, seed / 2^32),
//   entry (i + di, j + dj) reads byte [dj odd] + 2 [dj >= 8] of output word
//   [di odd] + 2 [di >= 8] and is kept when it is >= threshold = round(p * 256)
//   (a byte per entry, as flash-attn 2.x draws: the Philox rounds, whose
//   32 x 32-bit products run on the slow integer-multiply path, bound the cost).
// An mma.sync / wgmma accumulator fragment gives lane 4g + t rows g, g + 8 of a
// 16-row block and columns 2t, 2t + 1 of each 8-column tile (fragment.cuh), so
// across n8 tiles 2u, 2u + 1 a lane holds half of a group, rows as queries
// (the forward's S) or as keys (the backward's S^T) alike (the group is
// square): rows g, g + 8 of group (g & ~1, 16u + 2t); lane g ^ 1 (lane ^ 4)
// holds the other half. Over n8 pairs u = 2v, 2v + 1 the two lanes need two
// groups: each computes one (one call per sixteen entries) and they swap the
// halves the other needs with one shuffle (keep_bits).
//
// In the kernels (CUFLASH_DROPOUT): Dropout holds a (b, h)'s Philox key and
// counter word; keep_bits() draws the bits of n8 pairs, kept() tests one entry
// of S^T, drop() applies them to S and drop_packed() to a packed P.
// The forward zeroes the dropped entries of P after the softmax (l keeps the
// undropped sum) and divides O by 1 - p in the epilogue; the backward scales
// dP by keep / (1 - p) before dS = P (dP - D) and uses P keep / (1 - p) for dV
// (softmax.cuh softmax_backward_t).
#pragma once
#include "platform.cuh"

constexpr bool DROPOUT = CUFLASH_DROPOUT != 0;
// CUFLASH_DROPOUT 2: the seed words are in device memory (params.cuh dropout_rng).
constexpr bool DROPOUT_SEED_IN_MEMORY = CUFLASH_DROPOUT == 2;

struct PhiloxKey {
    u32 k0, k1;
};

// Philox rounds per call. Each round's two 32 x 32 -> 64-bit products run on the
// slow integer-multiply path and bound the mask's cost (bench/NOTES.md dr1); seven
// rounds against Random123's default ten: bench/NOTES.md dr4.
constexpr int PHILOX_ROUNDS = 7;

// Philox4x32 of counter c under key k, PHILOX_ROUNDS rounds (the Random123
// reference's known answers hold: tests/cpu/test_dropout_mask.py checks the NumPy
// twin, cuflash.reference.philox4x32).
CUFLASH_DEVICE uint4 philox4x32(uint4 c, PhiloxKey k) {
    constexpr u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < PHILOX_ROUNDS; ++round) {
        if (round) k.k0 += W0, k.k1 += W1;
        const u32 hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
        const u32 hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.k0, lo1, hi0 ^ c.w ^ k.k1, lo0);
    }
    return c;
}

// The keep tests of the group whose low corner is (query i, key j) of (b, h)
// (bh = b * nheads + h): word w of the result has bit 8b + 7 set when byte b
// of Philox output word w is >= the threshold byte (its entry is kept); its
// other bits are left as they fall (every reader masks or tests bits 8b + 7
// alone: keep_bits, dropout_keep_group), which saves an and per word. All four
// bytes of a word at once (SWAR): with x a word and T the threshold in every
// byte, d = (x | 0x80..) - (T & 0x7f..) has bit 7 of a byte set when its low
// seven bits are >= T's (the subtraction never borrows across bytes: each byte
// of d is at least 1), and the byte is >= T when its top bit is set and T's is
// not, or both top bits agree and d's is set: the majority of x, d and ~T.
CUFLASH_DEVICE uint4 dropout_keep_words(PhiloxKey key, u32 offset, u32 threshold, int bh, int i, int j) {
    const uint4 r = philox4x32(make_uint4((u32)i, (u32)j, (u32)bh, offset), key);
    const u32 t = __byte_perm(threshold, 0u, 0u);  // the threshold byte in all four bytes
    auto ge = [t](u32 x) {
        const u32 d = (x | 0x80808080u) - (t & 0x7F7F7F7Fu);
        return (x & ~t) | (~(x ^ t) & d);  // bit 7 of each byte; one lop3
    };
    return make_uint4(ge(r.x), ge(r.y), ge(r.z), ge(r.w));
}

// prmt in sign mode: byte n of the result is 0xFF or 0 by the top bit of byte
// sel's nibble n & 7 of {b, a} (bytes 0-3 of a, 4-7 of b; nibble 8 + byte):
// drop_packed's mask of two 16-bit halves from two keep bits.
CUFLASH_DEVICE u32 prmt_sign(u32 a, u32 b, u32 sel) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// The group's sixteen keep bits, entry (i + di, j + dj) at bit 4 word + byte
// (the probe of tests/gpu/test_dropout_mask.py; the kernels use the words).
CUFLASH_DEVICE u32 dropout_keep_group(PhiloxKey key, u32 offset, u32 threshold, int bh, int i, int j) {
    const uint4 r = dropout_keep_words(key, offset, threshold, bh, i, j);
    const u32 words[4] = {r.x, r.y, r.z, r.w};
    u32 bits = 0u;
#pragma unroll
    for (int w = 0; w < 4; ++w)
#pragma unroll
        for (int b = 0; b < 4; ++b) bits |= ((words[w] >> (8 * b + 7)) & 1u) << (4 * w + b);
    return bits;
}

// The dropout of one (batch b, query head h): the run-time values of
// params.cuh (CUFLASH_ATTENTION_FIELDS dropout_*).

// Construction tag: a seed in device memory (DROPOUT_SEED_IN_MEMORY) read once, when the
// Dropout is made (Dropout's second constructor), instead of at each use.
struct SeedReadOnce {};

struct Dropout {
    PhiloxKey key;
    u32 offset, threshold;
    int bh;          // b * nheads + h: the counter's third word
    float scale;     // 1 / (1 - p)
    const u32* rng;  // DROPOUT_SEED_IN_MEMORY: (seed_lo, seed_hi, offset), read instead of key and offset
    bool read_at_use;  // rng read at each use (a literal in each constructor: folded away)

    // A seed in device memory is read at each use (load_key), not held by the object:
    // words loaded once would hold three registers through the main loop (key and offset
    // are parameters, which the compiler re-reads from constant memory). The portable
    // kernels: held, the d128 causal forward spilled for sm_80 (4-24 bytes, NVRTC 12.9).
    template <class Params>
    CUFLASH_DEVICE Dropout(const Params& p, int b, int h)
        : key{p.dropout_seed_lo, p.dropout_seed_hi}, offset(p.dropout_offset), threshold(p.dropout_threshold),
          bh(b * p.nheads + h), scale(p.dropout_scale), rng(p.dropout_rng), read_at_use(true) {}

    // The seed read here, once (the Hopper kernels), by whole warps: each word through
    // redux.sync, whose result ptxas keeps in a uniform register as it keeps the
    // parameters, so the key's per-round sums stay loop-invariant uniform values, as with
    // a seed passed by value (read at each use, the words came in vector registers and the
    // sums were formed every key block: the d64 forward's step 722 -> 743 instructions;
    // read once, 720). The kernels make it outside any lane-dependent branch.
    template <class Params>
    CUFLASH_DEVICE Dropout(const Params& p, int b, int h, SeedReadOnce)
        : Dropout(p, b, h) {
        read_at_use = false;
        if (DROPOUT_SEED_IN_MEMORY) {
            auto uniform = [](u32 x) { return __reduce_or_sync(0xffffffffu, x); };
            key = PhiloxKey{uniform(__ldg(rng)), uniform(__ldg(rng + 1))};
            offset = uniform(__ldg(rng + 2));
        }
    }

    // The Philox key and offset.
    CUFLASH_DEVICE void load_key(PhiloxKey& k, u32& off) const {
        k = key, off = offset;
        if (DROPOUT_SEED_IN_MEMORY && read_at_use) k = PhiloxKey{__ldg(rng), __ldg(rng + 1)}, off = __ldg(rng + 2);
    }

    // dropout_keep_words of the group this lane draws for n8 pairs u0 .. u0 + PAIRS - 1 of an
    // m16 tile whose rows start at row0 and columns at col0 (keep_bits): the group of rows
    // g & ~1 of pair u0 + (g & 1) (PAIRS = 2: the lane pair (g, g ^ 1) draws two groups) or
    // of pair u0 (PAIRS = 1), at column 2t.
    template <bool KEYS_AS_ROWS, int PAIRS>
    CUFLASH_DEVICE uint4 group_words(int row0, int col0, int u0, int lane) const {
        static_assert(PAIRS == 1 || PAIRS == 2, "one or two n8 pairs");
        const int g = lane / 4, t = lane % 4;
        const int row = row0 + (g & ~1), col = col0 + (u0 + (PAIRS == 2 ? g & 1 : 0)) * 16 + 2 * t;
        PhiloxKey k;
        u32 off;
        load_key(k, off);
        return KEYS_AS_ROWS ? dropout_keep_words(k, off, threshold, bh, col, row)
                            : dropout_keep_words(k, off, threshold, bh, row, col);
    }

    // The keep bits of n8 pairs u0 .. u0 + PAIRS - 1 (n8 tiles 2u, 2u + 1) of one
    // m16 tile of an accumulator (fragment.cuh) whose rows start at row0 (queries,
    // or keys when KEYS_AS_ROWS: S^T) and columns at col0, both multiples of 16:
    // x[k] for pair u0 + k (kept(), drop()). PAIRS = 2: the lane pair (g, g ^ 1)
    // computes the groups of pairs u0 + (g & 1) and swaps halves (whole warps);
    // PAIRS = 1: both lanes compute the group of pair u0.
    template <bool KEYS_AS_ROWS, int PAIRS>
    CUFLASH_DEVICE void keep_bits(int row0, int col0, int u0, int lane, u32 (&x)[PAIRS]) const {
        const int h0 = (lane / 4) & 1;
        const uint4 r = group_words<KEYS_AS_ROWS, PAIRS>(row0, col0, u0, lane);
        // Pack the bits of lane g's half (own) and of lane g ^ 1's half (other), so that
        // element (2u + a, 2h + j) of the tile, row g + 8h and column 2t + 8a + j, is
        //   queries as rows: word h0 + 2h, byte j + 2a: bit 8 (j + 2a) + 7 - h;
        //   keys as rows: word j + 2a, byte h0 + 2h: bit 7 - (j + 2a) + 16h.
        // Only the bits named are defined (dropout_keep_words' other bits are not).
        u32 own, other;
        if (!KEYS_AS_ROWS) {
            // Bit 7 of each byte from hi, bits 0-6 from lo shifted (its bit 7 at 6): one lop3 (a select).
            auto join = [](u32 hi, u32 lo) { return (hi & 0x80808080u) | ((lo >> 1) & 0x7F7F7F7Fu); };
            own = join(h0 ? r.y : r.x, h0 ? r.w : r.z);
            other = join(h0 ? r.x : r.y, h0 ? r.z : r.w);
        } else {
            auto bytes = [&r](u32 m) { return (r.x & m) | ((r.y & m) >> 1) | ((r.z & m) >> 2) | ((r.w & m) >> 3); };
            own = bytes(h0 ? 0x80008000u : 0x00800080u) >> (8 * h0);      // bytes h0, h0 + 2 of each word
            other = bytes(h0 ? 0x00800080u : 0x80008000u) >> (8 * (1 - h0));
        }
        if constexpr (PAIRS == 1) {
            x[0] = own;
        } else {
            // The partner's group is pair u0 + 1 - h0; it sends what this lane needs of it.
            const u32 got = __shfl_xor_sync(0xffffffffu, other, 4);
            x[0] = h0 ? got : own;
            x[1] = h0 ? own : got;
        }
    }
    // The keep_bits words of a whole S^T tile (keys as rows: MT m16 tiles of keys x NT n8
    // tiles of queries), x[mt][u] for n8 pair u, drawn ahead of softmax_backward_t (its
    // `drawn`) where the backward has products to hide the Philox rounds under
    // (bwd_sm90_ws.cu's ping-pong: between issuing S^T, dP^T and waiting for them).
    template <int MT, int PAIRS_OF_NT>
    CUFLASH_DEVICE void draw_t(u32 (&x)[MT][PAIRS_OF_NT], int key0, int query0, int lane) const {
        constexpr int NT = 2 * PAIRS_OF_NT, PAIRS = pairs<NT>();
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int u0 = 0; u0 < NT / 2; u0 += PAIRS) {
                u32 w[PAIRS];
                keep_bits<true, PAIRS>(key0 + mt * 16, query0, u0, lane, w);
#pragma unroll
                for (int k = 0; k < PAIRS; ++k) x[mt][u0 + k] = opaque(w[k]);  // drawn here, not sunk past the wait
            }
    }
    // Whether element (2u + a, 2h + j) of an S^T tile (keys as rows: the backward) is
    // kept, x = keep_bits' word of pair u (the forward folds its words, drop()).
    static CUFLASH_DEVICE bool kept(u32 x, int a, int h, int j) { return (x >> (7 - (j + 2 * a) + 16 * h)) & 1u; }
    // keep_bits' PAIRS for a tile of NT n8 tiles: two when its n8 pairs come in twos.
    template <int NT>
    static constexpr CUFLASH_DEVICE int pairs() {
        static_assert(NT % 2 == 0, "a group spans two adjacent n8 tiles");
        return NT % 4 == 0 ? 2 : 1;
    }

    // The forward's P (queries as rows) after the softmax: dropped entries 0
    // (the epilogue divides O by 1 - p, scale_rows); float32 inputs, whose P V
    // operand stays in fp32 (16-bit inputs: drop_packed). With several m16 tiles the
    // tiles' bits are drawn one tile at a time (no unrolling: each call holds ~10
    // registers through its rounds, and the portable main loop runs near its
    // register limit) and packed 8 per tile: keep_bits' bits 8b + 7 - h (byte
    // b = j + 2a) folded to bit 8 mt + 2b + 1 - h.
    template <int MT, int NT>
    CUFLASH_DEVICE void drop(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        constexpr int PAIRS = pairs<NT>();
        static_assert(MT <= 4, "8 bits per m16 tile in a word");
#pragma unroll
        for (int u0 = 0; u0 < NT / 2; u0 += PAIRS) {
            u32 packed[PAIRS] = {};
#pragma unroll 1
            for (int mt = 0; mt < MT; ++mt) {
                u32 x[PAIRS];
                keep_bits<false, PAIRS>(row0 + mt * 16, col0, u0, lane, x);
#pragma unroll
                for (int k = 0; k < PAIRS; ++k) {
                    u32 y = (x[k] & 0xC0C0C0C0u) >> 6;  // bits 8b, 8b + 1
                    y |= y >> 6;                        // bits 0-3 and 16-19
                    packed[k] |= ((y | (y >> 12)) & 0xFFu) << (8 * mt);
                }
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int k = 0; k < PAIRS; ++k)
#pragma unroll
                    for (int a = 0; a < 2; ++a)
#pragma unroll
                        for (int h = 0; h < 2; ++h)
#pragma unroll
                            for (int j = 0; j < 2; ++j)
                                if (!((packed[k] >> (8 * mt + 2 * (j + 2 * a) + 1 - h)) & 1u))
                                    s[mt][2 * (u0 + k) + a][2 * h + j] = 0.f;
        }
    }

    // The forward's P V operand after packing (one m16 tile of queries as rows; the
    // 16-bit forwards call it per m16 tile): the 16-bit halves of dropped entries
    // cleared, one prmt and one and per two entries instead of a test and a select
    // per entry on P in fp32 (drop()).
    // a[kk][r] holds row g + 8h (h = r & 1), columns 16 kk + 8a + 2t + j (a = r >> 1)
    // in half j (fragment.cuh pack_a_fragments): of the group of pair kk, entry
    // (di, dj) = (h0 + 8h, 8a + j), kept when bit 7 of byte j + 2a of its Philox
    // word h0 + 2h is set (dropout_keep_words). prmt's sign mode (selector nibble
    // 8 + byte) spreads that bit over the half: 0xFFFF where kept, 0 where dropped
    // (+0 in fp16 and bf16). The words are not joined (keep_bits): prmt reads each
    // from two sources, the word this lane drew (bytes 0-3) or the one its partner
    // sent (bytes 4-7), chosen by a selector that depends on the lane only, so no
    // select, join or shift per call (two shuffles instead of one; the Hopper d64
    // forward's step 767 -> 723 instructions, bench/NOTES.md dr7).
    // JOINED: keep_bits' joined word of a pair, shifted left by h to bring row half
    // h's bit to the top of its byte: more instructions, fewer words live, for the
    // portable forward at its register limit (the unjoined form spilled 24-64 bytes
    // there, d96 / d128 on every arch, NVRTC 12.9).
    template <bool JOINED, int NK>
    CUFLASH_DEVICE void drop_packed(u32 (&a)[NK][4], int row0, int col0, int lane) const {
        constexpr int PAIRS = pairs<2 * NK>();
        if constexpr (JOINED) {
#pragma unroll
            for (int u0 = 0; u0 < NK; u0 += PAIRS) {
                u32 x[PAIRS];
                keep_bits<false, PAIRS>(row0, col0, u0, lane, x);
#pragma unroll
                for (int kp = 0; kp < PAIRS; ++kp)
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        const u32 sel = r >> 1 ? 0xBBAAu : 0x9988u;  // bytes 2, 3 or 0, 1, sign-spread
                        a[u0 + kp][r] &= prmt_sign(x[kp] << (r & 1), 0u, sel);
                    }
            }
            return;
        }
        const int h0 = (lane / 4) & 1;
#pragma unroll
        for (int u0 = 0; u0 < NK; u0 += PAIRS) {
            // PAIRS = 2: lane pair (g, g ^ 1) draws the groups of pairs u0 + h0 (as keep_bits).
            const uint4 r = group_words<false, PAIRS>(row0, col0, u0, lane);
            const u32 w[4] = {r.x, r.y, r.z, r.w};
            // Row half h of pair u0 + kp reads its word from two sources: src0, drawn by this lane
            // (selector bytes 0-3), or src1 (bytes 4-7). The halves one at a time (fewer words live).
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                u32 src0[PAIRS], src1[PAIRS];
                bool second[PAIRS];
                if constexpr (PAIRS == 2) {
                    // The partner (parity 1 - h0) drew the other pair and needs its word (1 - h0) + 2h.
                    const u32 got = __shfl_xor_sync(0xffffffffu, h0 ? w[2 * h] : w[1 + 2 * h], 4);
                    // Pair u0 + kp was drawn by the lane of parity kp, which reads its own word kp + 2h;
                    // the other lane reads what it was sent.
#pragma unroll
                    for (int kp = 0; kp < 2; ++kp) src0[kp] = w[kp + 2 * h], src1[kp] = got;
                    second[0] = h0 != 0, second[1] = h0 == 0;
                } else {
                    // Both lanes drew pair u0's group: word h0 + 2h.
                    src0[0] = w[2 * h], src1[0] = w[1 + 2 * h], second[0] = h0 != 0;
                }
#pragma unroll
                for (int kp = 0; kp < PAIRS; ++kp)
#pragma unroll
                    for (int ah = 0; ah < 2; ++ah) {
                        // bytes 2, 3 (columns 8-15) or 0, 1 sign-spread, of src0 or of src1
                        const u32 sel = (ah ? 0xBBAAu : 0x9988u) + (second[kp] ? 0x4444u : 0u);
                        a[u0 + kp][2 * ah + h] &= prmt_sign(src0[kp], src1[kp], sel);
                    }
            }
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
