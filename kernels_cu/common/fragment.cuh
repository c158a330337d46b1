// fragment.cuh: where each element of an accumulator tile sits.
//
// mma.sync m16n8 C fragments and wgmma accumulators share one layout per warp:
// a tile x[MT][NT][4] covers MT*16 rows x NT*8 columns, and lane 4g+t holds
// element (mt, nt, 2h+j) at row row0 + mt*16 + h*8 + g, column col0 + nt*8 + 2t + j,
// where row0/col0 are the tile's origin for g = t = 0. The forward's S has
// queries as rows and keys as columns; the backward's S^T the other way round.
#pragma once
#include "platform.cuh"

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

// f(x, row, col) for every element x of the tile (x by reference).
template <int MT, int NT, class F>
CUFLASH_DEVICE void for_each_element(float (&x)[MT][NT][4], int row0, int col0, int lane, F&& f) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + mt * 16 + h * 8 + g;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int j = 0; j < 2; ++j) f(x[mt][nt][2 * h + j], row, col0 + nt * 8 + 2 * t + j);
        }
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
