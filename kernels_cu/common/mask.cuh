// mask.cuh: set to -inf the scores of keys a query must not see.
//
// Query i (0-based, global) sees key j iff j < seqlen_k and, when causal,
// j <= i + seqlen_k - seqlen_q (bottom-right aligned, as flash-attn 2.1+).
// Scores are mma.sync C fragments s[MT][NT][4] (see mma.cuh): for lane 4g+t,
// element (mt, nt, 2h+j) is query row0 + mt*16 + h*8 + g and key
// col0 + nt*8 + 2t + j, where the caller passes row0/col0 for g = t = 0.
#pragma once
#include "platform.cuh"

template <bool CAUSAL, int MT, int NT>
CUFLASH_DEVICE void mask_scores(float (&s)[MT][NT][4], int row0, int col0, int lane, int seqlen_q,
                                int seqlen_k) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int row = row0 + mt * 16 + h * 8 + g;
            // First key this row may not see.
            int limit = CAUSAL ? min(seqlen_k, row + 1 + seqlen_k - seqlen_q) : seqlen_k;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int j = 0; j < 2; ++j)
                    if (col0 + nt * 8 + 2 * t + j >= limit) s[mt][nt][2 * h + j] = -INFINITY;
        }
}

// The same rule on a transposed score tile S^T (keys as rows, queries as
// columns), as the backward computes it: element (mt, nt, 2h+j) of lane 4g+t
// is key key0 + mt*16 + h*8 + g and query query0 + nt*8 + 2t + j. Key j is
// visible from query i iff j < seqlen_k and, when causal,
// i >= j - (seqlen_k - seqlen_q) (the first query that sees key j).
// Queries >= seqlen_q are not masked here: the caller gives them P = 0.
template <bool CAUSAL, int MT, int NT>
CUFLASH_DEVICE void mask_scores_t(float (&s)[MT][NT][4], int key0, int query0, int lane, int seqlen_q,
                                  int seqlen_k) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int key = key0 + mt * 16 + h * 8 + g;
            // First query that may see this key; past seqlen_k no query does.
            int first = key >= seqlen_k ? 0x7fffffff : (CAUSAL ? key - (seqlen_k - seqlen_q) : -0x7fffffff);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int j = 0; j < 2; ++j)
                    if (query0 + nt * 8 + 2 * t + j < first) s[mt][nt][2 * h + j] = -INFINITY;
        }
}
