// epilogue.cuh: how results leave a kernel (DESIGN 4a): rows that see no key,
// lse, tiles of the element type staged through shared memory for 16-byte
// stores, fp32 rows (GQA dK/dV per query head) and fp32 reductions (dQ).
//
// Accumulator tiles use the fragment.cuh layout; a lane's two adjacent
// columns (2t, 2t+1) travel together (one u32 of 16-bit values or one float2).
#pragma once
#include "platform.cuh"
#include "numeric.cuh"
#include "atomic.cuh"
#include "fragment.cuh"  // for_each_pair

// Rows [row0, row0 + ROWS) of a query block that sees no key at all:
// out = 0 and lse = empty_lse (-inf, or the sink's logit; DESIGN 3).
// o points at row 0 of this (b, h); lse at row 0 of its lse row, or null.
template <int ROWS, int D, int THREADS>
CUFLASH_DEVICE void store_empty_rows(elem_t* o, i64 o_row_stride, float* lse, float empty_lse, int row0,
                                     int seqlen_q, int head_dim, int tid) {
    for (int c = tid; c < ROWS * (D / CHUNK); c += THREADS) {
        const int r = c / (D / CHUNK), col = (c % (D / CHUNK)) * CHUNK;
        if (row0 + r < seqlen_q && col < head_dim)
            *reinterpret_cast<uint4*>(o + (i64)(row0 + r) * o_row_stride + col) = make_uint4(0, 0, 0, 0);
    }
    if (lse != nullptr)
        for (int r = tid; r < ROWS; r += THREADS)
            if (row0 + r < seqlen_q) lse[row0 + r] = empty_lse;
}

// lse of the rows a warp owns (row0 = the warp's first row, fragment layout);
// lanes with t == 0 hold each row's value.
template <int MT>
CUFLASH_DEVICE void store_lse(float* lse, const float (&val)[MT][2], int row0, int seqlen_q, int lane) {
    const int g = lane / 4, t = lane % 4;
    if (lse == nullptr || t != 0) return;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + mt * 16 + h * 8 + g;
            if (row < seqlen_q) lse[row] = val[mt][h];
        }
}

// x * row_scale in the element type into a shared-memory tile: the pair at
// (row, col) goes to smem + offset(row, col) (bytes; the caller's layout:
// pitched or swizzled). row/col are relative to the tile (row0, col0 of the
// warp's fragment within it).
template <int MT, int NT, class Offset>
CUFLASH_DEVICE void stage_tile(unsigned char* smem, Offset offset, const float (&x)[MT][NT][4],
                               const float (&row_scale)[MT][2], int row0, int col0, int lane) {
    for_each_pair<MT, NT>(row0, col0, lane, [&](int mt, int nt, int h, int row, int col) {
        const float c = row_scale[mt][h];
        store_pair(smem + offset(row, col), x[mt][nt][2 * h] * c, x[mt][nt][2 * h + 1] * c);
    });
}

// ROWS staged rows (elements, read at smem + offset(r, col)) -> global rows
// row0 + r of dst, 16 bytes per access, worker w of `workers` threads; rows at
// or past `limit` and columns at or past head_dim are not stored.
template <int ROWS, int D, class Offset>
CUFLASH_DEVICE void store_staged_rows(elem_t* dst, i64 row_stride, const unsigned char* smem, Offset offset, int row0,
                                      int limit, int head_dim, int worker, int workers) {
    for (int c = worker; c < ROWS * (D / CHUNK); c += workers) {
        const int r = c / (D / CHUNK), col = (c % (D / CHUNK)) * CHUNK;
        if (row0 + r < limit && col < head_dim)
            *reinterpret_cast<uint4*>(dst + (i64)(row0 + r) * row_stride + col) =
                *reinterpret_cast<const uint4*>(smem + offset(r, col));
    }
}

// scale * fp32 pairs of a tile -> global rows (row0, col0: the fragment's
// origin in dst's rows and columns); rows >= limit and columns >= head_dim
// skipped (d % 8 == 0: whole n8 tiles). ADD = true adds with reductions at L2
// (dQ); false stores (GQA dK/dV per query head).
// BLOCK_ROW > 0 (the portable backward's dQ, bwd.cu): dst's rows are whole query
// blocks BLOCK_ROW = D floats apart (cuflash/launch.py), rows past seqlen_q and
// columns past head_dim receiving exact zeros, so every row and column of the
// tile is added, without tests, at one lane address plus constants. With the
// tests ptxas rebuilt the 64-bit address inside each one: half the d256
// kernel's instructions (bench/NOTES.md pb1). Tiles whose straight-line adds
// spill at 255 registers keep the tests (specs.BwdTiles.dq_tested).
template <bool ADD, int BLOCK_ROW = 0, int MT, int NT>
CUFLASH_DEVICE void write_f32_tile(float* dst, i64 row_stride, const float (&x)[MT][NT][4], float scale, int row0,
                                   int col0, int limit, int head_dim, int lane) {
    constexpr bool TESTED = BLOCK_ROW == 0;
    static_assert(TESTED || ADD, "untested whole blocks are dQ's adds");
    const int g = lane / 4, t = lane % 4;
    float* at = dst + (i64)(row0 + g) * BLOCK_ROW + col0 + 2 * t;  // untested: row g of the tile
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + mt * 16 + h * 8 + g;
            if (TESTED && row >= limit) continue;
            float* dst_row = TESTED ? dst + (i64)row * row_stride + col0 + 2 * t : at + (mt * 16 + h * 8) * BLOCK_ROW;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                if (TESTED && col0 + nt * 8 >= head_dim) continue;
                const float a = x[mt][nt][2 * h] * scale, b = x[mt][nt][2 * h + 1] * scale;
                if (ADD) red_add_f32x2(dst_row + nt * 8, a, b);
                else *reinterpret_cast<float2*>(dst_row + nt * 8) = make_float2(a, b);
            }
        }
}

// scale * a warp's dQ fragment (its rows warp_row0 + g, + 8 of a block;
// columns col0 + nt*8 + 2t, COLS of them) -> the block in shared memory as fp32
// rows ROW floats apart, as the bulk reduction copies it into dq_accum
// (bwd_sm90.cu, bwd_sm90_ws.cu). SWIZZLE = 8: row r of dq_accum holds its
// 8-column group c at c ^ (r % 8) (bwd_convert.cu src_swizzled undoes it), r
// = accum_row0 + the row (warp_row0 is a multiple of 8, so r % 8 follows g);
// the XOR stays in bits 3-5, disjoint from col0's when col0 is a multiple of
// 64. SWIZZLE = 0: columns in order.
template <int COLS, int ROW, int SWIZZLE>
CUFLASH_DEVICE void store_dq_rows(float* block, const float (&acc)[COLS / 8][4], float scale, int warp_row0,
                                  int col0, int accum_row0, int lane) {
    const int g = lane / 4, t = lane % 4;
    const int cols = col0 ^ (SWIZZLE * ((accum_row0 + g) & 7));
    float* rows = block + (warp_row0 + g) * ROW + 2 * t;
#pragma unroll
    for (int nt = 0; nt < COLS / 8; ++nt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
            *reinterpret_cast<float2*>(rows + hh * 8 * ROW + (cols ^ (nt * 8))) =
                make_float2(acc[nt][2 * hh] * scale, acc[nt][2 * hh + 1] * scale);
}

// The sum of one float per thread over a group of THREADS threads (worker =
// 0 .. THREADS-1 within it), stored by worker 0 at *dst in a fixed order (warp
// shuffles, then the warps' sums in warp order), so it is the same on every
// run. `scratch`: THREADS / 32 floats of shared memory that no thread reads or
// writes meanwhile; `sync()` a barrier over the group (the group's warps are
// whole). Every thread of the group must call it.
template <int THREADS, class Sync>
CUFLASH_DEVICE void group_sum_store(float x, float* scratch, float* dst, u32 worker, Sync sync) {
#pragma unroll
    for (int lanes = 16; lanes >= 1; lanes /= 2) x += __shfl_xor_sync(0xffffffffu, x, lanes);
    if (worker % 32 == 0) scratch[worker / 32] = x;
    // Every warp's sum is in shared memory before worker 0 adds them.
    sync();
    if (worker == 0) {
        float total = 0.f;
        for (int w = 0; w < THREADS / 32; ++w) total += scratch[w];
        *dst = total;
    }
}

// group_sum_store over the whole CTA.
template <int THREADS>
CUFLASH_DEVICE void block_sum_store(float x, float* scratch, float* dst) {
    group_sum_store<THREADS>(x, scratch, dst, threadIdx.x, [] { __syncthreads(); });
}

// This CTA's slot in a (gridDim.z, gridDim.y, gridDim.x) array of per-CTA values.
CUFLASH_DEVICE i64 cta_slot() {
    return ((i64)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
}

// The backwards' key block past the end of its sequence: a varlen grid covers the
// longest key sequence, and a key block past the end of a shorter one owns no
// dK/dV rows and no query sees it (no dQ turn waits for it). True for such a
// block, whose part of dsink (0, WITH_SINK) is then stored; the whole CTA must
// leave before any barrier.
template <bool WITH_SINK, class Params, class Seq>
CUFLASH_DEVICE bool key_block_past_end(const Params& p, const Seq& si, int key0) {
    if (!si.past_end_of_keys(key0)) return false;
    if (WITH_SINK && threadIdx.x == 0) p.dsink_part[cta_slot()] = 0.f;
    return true;
}
