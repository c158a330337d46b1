// bias_tile.cuh: the additive bias staged in shared memory by a producer, one
// tile per block of the main loop (fwd_sm90_ws.cu, bwd_sm90_ws.cu: their
// consumers have no registers to spare for the bias's global addresses and
// loads, which score_mod.cuh ScoreMod::bias_tile gives every thread; DESIGN 3,
// score_mod.cuh for what B is).
//
// Tile: B[b, h] rows [row0, row0 + ROWS) x keys [col0, col0 + KEYS) as a
// swizzled ROWS x KEYS tile of 16-bit elements (the kernel's dtype: CUFLASH_BIAS
// == 16) in copy.cuh's layout with 64-key atoms: KEYS / 64 column blocks of ROWS
// rows of 128 bytes, the 16-byte chunk c of row r of a block at chunk c ^ (r % 8)
// (KEYS % 64 == 0). That is what one TMA box of 64 keys x ROWS rows with the 128B
// swizzle writes, so a tile arrives by TMA (load) or by copy alike. Entries
// outside (seqlen_q, seqlen_k) are 0: the mask removes keys past seqlen_k, and
// rows past seqlen_q are never stored. A per-key bias (row stride 0: every query
// reads the same row) stages row 0 alone, and every lane reads it.
//
// Producer, by TMA (load; the forward, a dense call whose bias TMA can address,
// cuflash/launch.py fwd_tensor_maps): one thread, KEYS / 64 boxes of the bias's
// map (keys, queries, heads, batch), signalling the tile's bytes on an mbarrier.
// Otherwise (copy): THREADS threads, each one fixed chunk column of every
// ROW_STEP-th row, so the source advances by a constant (and, where ROW_STEP % 8
// == 0, the destination too: the swizzle stays the same). Where the bias allows
// (16-byte aligned rows: the (b, h) slice's start and the row stride) by
// cp.async, a chunk cut by seqlen_k reading only its keys; otherwise element by
// element into registers and one 16-byte store. The caller signals the arrival
// accordingly (cp_async_arrive, or mbar_arrive after the stores).
//
// Consumers (add): a warp's 16 rows of S (the wgmma / mma m16n8 accumulator
// layout, fragment.cuh: rows g and g + 8, keys 2t and 2t + 1 of each n8 tile)
// are exactly the registers of ldmatrix's 8x8 matrices of 16-bit pairs: one
// ldmatrix.x4 per two n8 tiles, the swizzle putting the 8 rows each matrix
// reads on 8 distinct bank groups. S += B / scale, one FFMA per score. The
// backward's S^T (add_t: keys as rows g and g + 8, queries 2t and 2t + 1 as
// columns) is the same with ldmatrix.trans, whose 8x8 matrices of 8 queries x 8
// keys arrive transposed. A one-row tile (a per-key bias) has rows g and g + 8
// add the same keys: add_row loads them with one ldmatrix.x4 per four n8 tiles, 8
// lanes at one address, and widens each key pair once for both rows.
#pragma once
#include "platform.cuh"
#include "numeric.cuh"    // unpack_float2
#include "copy.cuh"       // cp_async_16_bytes, st_shared_16, swizzled_offset
#include "mma.cuh"        // ldmatrix_x4
#include "pipeline.cuh"   // tma_load_tile
#include "score_mod.cuh"  // BiasT, bias_slice

template <int ROWS, int KEYS>
struct BiasTile {
    static_assert(!BIAS || (CUFLASH_BIAS == 16 && sizeof(BiasT) == 2), "a 16-bit bias in the kernel's dtype");
    static_assert(!BIAS || (KEYS % 64 == 0 && ROWS % 16 == 0), "rows of whole 8-chunk swizzle atoms");
    static constexpr int CHUNKS = KEYS / 8;          // 16-byte chunks per row
    static constexpr int ROW_BYTES = 128;            // a row of one 64-key column block
    static constexpr int BLOCK_BYTES = ROWS * 128;   // a column block
    static constexpr u32 BYTES = ROWS * KEYS * 2;

    // Byte offset of chunk c of row r (copy.cuh swizzled_offset with 64-key atoms).
    static CUFLASH_DEVICE u32 chunk_offset(int r, int c) { return swizzled_offset<ROWS, KEYS, 64>(r, c * 8); }

    // TMA (one thread): the tile of (row0, col0) of B[b, h] by p's bias map (p.tma_bias, whose head
    // and batch index is 0 on a broadcast dim: stride 0), signalling `bar` with BYTES (the caller
    // expects them). Formed from p and si at each call, as copy's addresses are.
    template <class Params>
    static CUFLASH_DEVICE void load(u32 smem, const Params& p, const SeqInfo& si, int row0, int col0, u32 bar) {
        tma_load_tile<ROWS, KEYS, 64>(smem, p.tma_bias, row0, p.bias_head_stride ? si.h : 0,
                                      p.bias_batch_stride ? si.b : 0, bar, col0);
    }

    // Copy the tile of (row0, col0) of B[b, h] (p's bias; si: b, h and the sequence lengths) into
    // smem; returns whether this thread's copies were cp.async (else plain stores). Everything is
    // formed here from p (constant memory) and si, so nothing of it stays live in the producer's
    // few registers between calls.
    template <int THREADS, class Params>
    static CUFLASH_DEVICE bool copy(u32 smem, const Params& p, const SeqInfo& si, int row0, int col0, int tid) {
        constexpr int ROW_STEP = THREADS / CHUNKS;
        static_assert(!BIAS || (THREADS % CHUNKS == 0 && ROW_STEP > 0), "a chunk column per thread");
        const BiasT* bias = bias_slice(p, si);
        const i64 rs = p.bias_row_stride;
        const int rows = rs == 0 ? 1 : ROWS;
        const int r0 = tid / CHUNKS, c = tid % CHUNKS, j = col0 + c * 8;
        const BiasT* src = bias + (i64)(row0 + r0) * rs + j;
        u32 dst = smem + chunk_offset(r0, c);
        // Row r's chunk (dst advanced by whole rows keeps the swizzle only where ROW_STEP % 8 == 0).
        auto at = [&](int r) { return ROW_STEP % 8 == 0 ? dst : smem + chunk_offset(r, c); };
        const int keys = si.seqlen_k - j;  // keys of this chunk inside the row (<= 0: none, >= 8: all)
        const bool aligned = reinterpret_cast<u64>(bias) % 16 == 0 && rs % 8 == 0;
        if (aligned) {
            const int bytes = keys <= 0 ? 0 : keys >= 8 ? 16 : 2 * keys;
#pragma unroll 1
            for (int r = r0; r < rows; r += ROW_STEP, src += ROW_STEP * rs, dst += ROW_STEP * ROW_BYTES) {
                const int n = row0 + r < si.seqlen_q ? bytes : 0;
                cp_async_16_bytes(at(r), n ? src : bias, n);  // n = 0 reads nothing, but takes a valid address
            }
        } else {
#pragma unroll 1
            for (int r = r0; r < rows; r += ROW_STEP, src += ROW_STEP * rs, dst += ROW_STEP * ROW_BYTES) {
                const int n = row0 + r < si.seqlen_q ? keys : 0;
                u32 w[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const u32 lo = 2 * e < n ? (u32)__ldg(src + 2 * e) : 0u;
                    const u32 hi = 2 * e + 1 < n ? (u32)__ldg(src + 2 * e + 1) : 0u;
                    w[e] = lo | (hi << 16);
                }
                st_shared_16(at(r), w[0], w[1], w[2], w[3]);
            }
        }
        return aligned;
    }

    // This lane's ldmatrix address in a tile's first column block, as a byte offset for the
    // warp whose 16 rows start at warp_row0 (0 for a one-row tile). Lane l gives row l % 8 of
    // matrix l / 8: matrices (rows 0-7, chunk 2i), (rows 8-15, 2i), (0-7, 2i + 1), (8-15,
    // 2i + 1) for n8 tiles 2i and 2i + 1. Rows are 128 bytes, so bits 4-6 hold chunk
    // (l / 16) ^ (r % 8), and chunk 2i + (l / 16) of the row (2i % 8 < 7) is at offset ^
    // ((2i % 8) << 4) in column block 2i / 8.
    // ROW_ADD: a one-row tile is read by add_row, whose matrix l / 8 is chunk l / 8 of row 0
    // (unswizzled), four n8 tiles at a time.
    template <bool ROW_ADD = false>
    static CUFLASH_DEVICE u32 lane_offset(int warp_row0, int lane, bool one_row) {
        if (ROW_ADD && one_row) return (u32)(((lane >> 3) & 3) << 4);
        const int r = one_row ? 0 : warp_row0 + ((lane >> 3) & 1) * 8 + (lane & 7);
        return (u32)(r * ROW_BYTES + ((((lane >> 4) ^ r) & 7) << 4));
    }

    // The backward's S^T: this lane's ldmatrix.trans address for the warp whose 16 keys start at
    // key0 of the tile (a multiple of 16), queries 0-15 (the next 16 are row_step_t on). Lane l gives
    // row (query) l % 8 of matrix l / 8: matrices (queries 0-7, keys 0-7), (0-7, 8-15), (8-15, 0-7),
    // (8-15, 8-15); a query pair 16 rows on keeps the row's swizzle.
    static CUFLASH_DEVICE u32 lane_offset_t(int key0, int lane, bool one_row) {
        const int r = one_row ? 0 : (lane >> 4) * 8 + (lane & 7);
        return chunk_offset(r, key0 / 8 + ((lane >> 3) & 1));
    }
    static CUFLASH_DEVICE u32 row_step_t(bool one_row) { return one_row ? 0u : (u32)(16 * ROW_BYTES); }

    // s += B^T / scale for the warp's 16 keys (rows) x NT n8 tiles of queries of S^T.
    template <int NT>
    static CUFLASH_DEVICE void add_t(float (&s)[NT][4], u32 smem, u32 lane_off, u32 row_step, float inv_scale) {
        static_assert(NT * 8 <= ROWS && NT % 2 == 0, "S^T spans the tile's queries, 16 at a time");
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            u32 b[4];
            ldmatrix_x4_trans(b, smem + lane_off + (u32)(nt / 2) * row_step);
#pragma unroll
            for (int m = 0; m < 4; ++m) {  // matrix m: query n8 tile nt + m / 2, keys g (m even) or g + 8
                const float2 f = unpack_float2(b[m]);
                float* x = &s[nt + m / 2][2 * (m % 2)];
                x[0] = fmaf(f.x, inv_scale, x[0]);
                x[1] = fmaf(f.y, inv_scale, x[1]);
            }
        }
    }

    // s += B / scale for the warp's 16 rows of a one-row tile (a per-key bias: rows g and g + 8 add
    // the same keys): one ldmatrix.x4 per four n8 tiles, each pair of keys widened once for both
    // rows (add's form would load and widen every pair twice, as if the rows differed).
    template <int NT>
    static CUFLASH_DEVICE void add_row(float (&s)[NT][4], u32 smem, u32 lane_off, float inv_scale) {
        static_assert(!BIAS || (NT == CHUNKS && NT % 4 == 0), "S spans the tile's keys, four n8 tiles at a time");
#pragma unroll
        for (int nt = 0; nt < NT; nt += 4) {
            u32 b[4];
            ldmatrix_x4(b, smem + (u32)((nt / 8) * BLOCK_BYTES + ((nt % 8) << 4)) + lane_off);
#pragma unroll
            for (int m = 0; m < 4; ++m) {  // matrix m: n8 tile nt + m, keys 2t and 2t + 1 of row 0
                const float2 f = unpack_float2(b[m]);
                float* x = s[nt + m];
                x[0] = fmaf(f.x, inv_scale, x[0]);
                x[1] = fmaf(f.y, inv_scale, x[1]);
                x[2] = fmaf(f.x, inv_scale, x[2]);
                x[3] = fmaf(f.y, inv_scale, x[3]);
            }
        }
    }

    // s += B / scale for the warp's 16 rows of the tile at smem (S: NT n8 tiles of keys).
    template <int NT>
    static CUFLASH_DEVICE void add(float (&s)[NT][4], u32 smem, u32 lane_off, float inv_scale) {
        static_assert(NT == CHUNKS, "S spans the tile's keys");
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            u32 b[4];
            ldmatrix_x4(b, smem + (u32)((nt / 8) * BLOCK_BYTES) + (lane_off ^ (u32)((nt % 8) << 4)));
#pragma unroll
            for (int m = 0; m < 4; ++m) {  // matrix m: n8 tile nt + m / 2, rows g (m even) or g + 8
                const float2 f = unpack_float2(b[m]);
                float* x = &s[nt + m / 2][2 * (m % 2)];
                x[0] = fmaf(f.x, inv_scale, x[0]);
                x[1] = fmaf(f.y, inv_scale, x[1]);
            }
        }
    }
};
