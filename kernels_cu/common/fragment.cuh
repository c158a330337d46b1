// fragment.cuh: where each element of an accumulator tile sits.
//
// mma.sync m16n8 C fragments and wgmma accumulators share one layout per warp:
// a tile x[MT][NT][4] covers MT*16 rows x NT*8 columns, and lane 4g+t holds
// element (mt, nt, 2h+j) at row row0 + mt*16 + h*8 + g, column col0 + nt*8 + 2t + j,
// where row0/col0 are the tile's origin for g = t = 0. The forward's S has
// queries as rows and keys as columns; the backward's S^T the other way round.
#pragma once
#include "platform.cuh"
#include "numeric.cuh"  // pack_float2

// Zero a tile (an accumulator before its first product).
template <int MT, int NT>
CUFLASH_DEVICE void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
}

// f(mt, nt, h, row, col) for every pair of adjacent elements of a tile: elements
// 2h and 2h + 1 of x[mt][nt] at (row, col) and (row, col + 1), the unit a lane
// stores as one u32 of 16-bit values or one float2. Indices rather than
// elements, so a caller can read other arrays at the pair too (stage_tile's row
// factors).
template <int MT, int NT, class F>
CUFLASH_DEVICE void for_each_pair(int row0, int col0, int lane, F&& f) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + mt * 16 + h * 8 + g;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) f(mt, nt, h, row, col0 + nt * 8 + 2 * t);
        }
}

// f(x, row, col) for every element x of the tile (x by reference).
template <int MT, int NT, class F>
CUFLASH_DEVICE void for_each_element(float (&x)[MT][NT][4], int row0, int col0, int lane, F&& f) {
    for_each_pair<MT, NT>(row0, col0, lane, [&](int mt, int nt, int h, int row, int col) {
#pragma unroll
        for (int j = 0; j < 2; ++j) f(x[mt][nt][2 * h + j], row, col + j);
    });
}

// The same over a score tile in (query, key) terms: f(x, i, j) with i the query
// and j the key, for S (KEYS_AS_ROWS = false) or S^T (true).
template <bool KEYS_AS_ROWS, int MT, int NT, class F>
CUFLASH_DEVICE void for_each_score(float (&s)[MT][NT][4], int row0, int col0, int lane, F&& f) {
    for_each_element(s, row0, col0, lane, [&](float& x, int row, int col) {
        if constexpr (KEYS_AS_ROWS) f(x, col, row);
        else f(x, row, col);
    });
}

// A warpgroup's wgmma accumulator x[N][4] (one m64 tile: 16 rows per warp)
// viewed as the one-m16 tile x[1][N][4] that the helpers above take.
template <int N>
CUFLASH_DEVICE float (&as_tile(float (&x)[N][4]))[1][N][4] {
    return reinterpret_cast<float(&)[1][N][4]>(x);
}

// Rows of a 16-row tile x[NT][4] times their factors: c0 for row g (elements
// 0, 1), c1 for row g + 8 (elements 2, 3); the online softmax's rescale of O.
template <int NT>
CUFLASH_DEVICE void scale_rows(float (&x)[NT][4], float c0, float c1) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        x[nt][0] *= c0;
        x[nt][1] *= c0;
        x[nt][2] *= c1;
        x[nt][3] *= c1;
    }
}

// A 16-row tile x[NT][4] (P or dS, fp32) rounded to 16 bits as the A
// fragments of the next product: n8 tiles 2kk and 2kk + 1 form k-step kk.
template <int NT>
CUFLASH_DEVICE void pack_a_fragments(const float (&x)[NT][4], u32 (&a)[NT / 2][4]) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
        a[kk][0] = pack_float2(x[2 * kk][0], x[2 * kk][1]);
        a[kk][1] = pack_float2(x[2 * kk][2], x[2 * kk][3]);
        a[kk][2] = pack_float2(x[2 * kk + 1][0], x[2 * kk + 1][1]);
        a[kk][3] = pack_float2(x[2 * kk + 1][2], x[2 * kk + 1][3]);
    }
}
