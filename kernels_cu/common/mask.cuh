// mask.cuh: which keys a query sees, and the block ranges that rule implies
// (DESIGN 3 and 4a).
//
// One rule, aligned to the bottom-right corner (flash-attn 2.1+): with
// off = seqlen_k - seqlen_q, query i sees key j iff
//     0 <= j < seqlen_k  and  i + off - left <= j <= i + off + right.
// CUFLASH_MASK picks left and right at compile time:
//   CUFLASH_MASK_NONE   left = right = unbounded (only j < seqlen_k masks);
//   CUFLASH_MASK_CAUSAL left unbounded, right = 0;
//   CUFLASH_MASK_LOCAL  p.window_left / p.window_right (the host passes an
//                       unbounded side, -1 in the API, as UNBOUNDED).
// "Unbounded" is UNBOUNDED (2^30): i + off +- 2^30 cannot overflow for
// sequences below 2^30 rows, and no key index reaches it. Taking the window
// straight from the params lets the compiler re-read it from the constant
// bank instead of holding it in registers through the main loop.
//
// The block ranges follow from the rule: key blocks that a query block needs
// (forward), query blocks that see a key block (backward), and whether a
// block pair needs the element mask at all. A block pair is in one range iff
// it is in the other: both are the pairs that hold some visible (i, j), so
// the forward, the backward and the deterministic dQ turns agree.
#pragma once
#include "platform.cuh"
#include "fragment.cuh"
#include "seqinfo.cuh"

#define CUFLASH_MASK_NONE 0
#define CUFLASH_MASK_CAUSAL 1
#define CUFLASH_MASK_LOCAL 2

constexpr int UNBOUNDED = 1 << 30;
// Which sides of the band can bind, known at compile time so that the plain
// kernels compute no bound they do not have.
constexpr bool LEFT_BOUNDED = CUFLASH_MASK == CUFLASH_MASK_LOCAL;
constexpr bool RIGHT_BOUNDED = CUFLASH_MASK != CUFLASH_MASK_NONE;

// Integer division rounding down / up, for numerators of either sign (b > 0).
CUFLASH_DEVICE int floor_div(int a, int b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }
CUFLASH_DEVICE int ceil_div(int a, int b) { return -floor_div(-a, b); }

// The order of the deterministic backward's dQ turns. Under a causal or local
// mask, from the last key block to the first: a key block's query range starts
// a block later than that of the key block before it, so the higher one reaches
// each query block a step earlier and has added when the lower one comes (in
// ascending order every CTA waited a step for each one before it: the causal
// deterministic backward took 1.8-2x the time, bench/NOTES.md b4). Without a
// mask every key block starts at the first query block and ascending order is
// kept (descending measured 6% slower at d64). The backward kernels dispatch
// key blocks in the order of the turns (dq_key_block), so a CTA waits only for
// CTAs of lower linear block index, which the hardware dispatched before it
// (resident or finished): the turns cannot deadlock. float32 kernels keep the
// ascending order: the reversed key block held one more register and spilled
// the d128 causal one on sm_90 (NVRTC 12.9).
constexpr bool DQ_TURNS_DESCEND = RIGHT_BOUNDED && CUFLASH_DTYPE != CUFLASH_FP32;

// The key block of a backward CTA: blockIdx.x, counted from the last when the
// dQ sums take turns in descending order.
template <bool DETERMINISTIC>
CUFLASH_DEVICE int dq_key_block() {
    return DETERMINISTIC && DQ_TURNS_DESCEND ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
}

struct Visibility {
    int seqlen_q, seqlen_k;
    int off;          // seqlen_k - seqlen_q: the diagonal of the bottom-right alignment
    int left, right;  // window sizes, UNBOUNDED where there is no limit

    template <class Params>
    CUFLASH_DEVICE Visibility(const Params& p, const SeqInfo& si)
        : seqlen_q(si.seqlen_q), seqlen_k(si.seqlen_k), off(si.seqlen_k - si.seqlen_q) {
#if CUFLASH_MASK == CUFLASH_MASK_LOCAL
        left = p.window_left;
        right = p.window_right;
#elif CUFLASH_MASK == CUFLASH_MASK_CAUSAL
        left = UNBOUNDED;
        right = 0;
#else
        left = right = UNBOUNDED;
#endif
    }

    CUFLASH_DEVICE bool visible(int i, int j) const {
        const int d = j - i - off;  // signed distance from the diagonal
        return j < seqlen_k && d >= -left && d <= right;
    }

    // The deterministic backward's turn (atomic.cuh) of key block n_block among
    // the key blocks that add to the dQ of query rows [row0, row0 + rows)
    // (dq_key_block: the order).
    template <int BN>
    CUFLASH_DEVICE int dq_turn(int row0, int rows, int n_block) const {
        const int2 range = key_blocks<BN>(row0, rows);
        return DQ_TURNS_DESCEND ? range.y - 1 - n_block : n_block - range.x;
    }

    // Key blocks [x, y) of BN keys that hold every key some query in
    // [row0, row0 + rows) sees (rows past seqlen_q do not count); x >= y when none.
    template <int BN>
    CUFLASH_DEVICE int2 key_blocks(int row0, int rows) const {
        const int last_row = min(row0 + rows, seqlen_q) - 1;
        const int j_min = LEFT_BOUNDED ? max(0, row0 + off - left) : 0;
        const int j_max = RIGHT_BOUNDED ? min(seqlen_k - 1, last_row + off + right) : seqlen_k - 1;
        if (j_max < j_min) return make_int2(0, 0);
        return make_int2(j_min / BN, j_max / BN + 1);
    }

    // Query blocks [x, y) of BM rows holding every query that sees a key in
    // [key0, key0 + keys) (keys past seqlen_k do not count); x >= y when none.
    template <int BM>
    CUFLASH_DEVICE int2 query_blocks(int key0, int keys) const {
        const int last_key = min(key0 + keys, seqlen_k) - 1;
        const int i_min = RIGHT_BOUNDED ? max(0, key0 - off - right) : 0;
        const int i_max = LEFT_BOUNDED ? min(seqlen_q - 1, last_key - off + left) : seqlen_q - 1;
        if (i_max < i_min) return make_int2(0, 0);
        return make_int2(i_min / BM, i_max / BM + 1);
    }

    // Which block pairs need the element mask: those where some pair (i, j) is
    // hidden (the block crosses seqlen_k, or an edge of the band). For the
    // forward's loop over the key blocks of BN keys for rows [row0, row0 + rows):
    // key block n needs the element mask iff
    // n <= x (the last row cannot see its first key) or n >= y (it crosses
    // seqlen_k, or the first row cannot see its last key). Two integers live
    // through the loop instead of the rule's five.
    template <int BN>
    CUFLASH_DEVICE int2 masked_key_blocks(int row0, int rows) const {
        const int first_visible_of_last_row = row0 + rows - 1 + off - left;
        const int first_hidden_of_first_row = row0 + off + right + 1;
        return make_int2(LEFT_BOUNDED ? ceil_div(first_visible_of_last_row, BN) - 1 : -1,
                         RIGHT_BOUNDED ? min(seqlen_k / BN, floor_div(first_hidden_of_first_row, BN)) : seqlen_k / BN);
    }

    // The same for the backward's loop over query blocks, evaluated per block
    // (no state held through the loop, whose registers are the tightest):
    // rows [row0, row0 + rows) x keys [key0, key0 + keys) need the element
    // mask iff the keys cross seqlen_k, or the first row cannot see the last
    // key, or the last row cannot see the first key.
    CUFLASH_DEVICE bool needs_mask(int row0, int rows, int key0, int keys) const {
        return key0 + keys > seqlen_k || (RIGHT_BOUNDED && key0 + keys - 1 - row0 - off > right) ||
               (LEFT_BOUNDED && key0 - (row0 + rows - 1) - off < -left);
    }

    // Hidden scores of a tile (fragment.cuh layout) set to -inf. Queries past
    // seqlen_q are left alone: the forward never stores them and the backward
    // gives them P = 0 through their lse.
    template <bool KEYS_AS_ROWS, int MT, int NT>
    CUFLASH_DEVICE void apply(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        for_each_score<KEYS_AS_ROWS>(s, row0, col0, lane, [&](float& x, int i, int j) {
            // The backward tests only the sides of the band that exist (known at
            // compile time); the forward tests both. The results are equal; the
            // choice is ptxas's register allocation at 255 registers, measured:
            // each other combination spills a few bytes in some plain kernel.
            const int d = j - i - off;
            const bool hidden = KEYS_AS_ROWS ? j >= seqlen_k || (LEFT_BOUNDED && d < -left) || (RIGHT_BOUNDED && d > right)
                                             : !visible(i, j);
            if (hidden) x = -INFINITY;
        });
    }

    // apply's result for S (queries as rows) in fewer instructions, for the
    // warp-specialised forward: row i sees keys [i + off - left, min(seqlen_k,
    // i + off + right + 1)); taken relative to this lane's first column col0 + 2t,
    // the bounds are two integers per row and each element is one compare of its
    // constant column offset nt * 8 + j against them. apply's per-element key and
    // distance (five instructions, with temporaries) spilled the persistent causal
    // consumers at 160 registers (d64, 192-row tiles: 100 bytes, NVRTC 12.9 and 13.0).
    template <int MT, int NT>
    CUFLASH_DEVICE void apply_rows(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        const int first_col = col0 + 2 * (lane % 4);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = row0 + mt * 16 + h * 8 + lane / 4;
                // Column offsets c of this lane: hidden when c >= end or c < begin.
                const int end = (RIGHT_BOUNDED ? min(seqlen_k, i + off + right + 1) : seqlen_k) - first_col;
                const int begin = LEFT_BOUNDED ? i + off - left - first_col : 0;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int c = nt * 8 + j;
                        if (c >= end || (LEFT_BOUNDED && c < begin)) s[mt][nt][2 * h + j] = -INFINITY;
                    }
            }
    }
};
