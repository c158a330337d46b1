// decode.cu: attention of a few query rows over a KV cache, the keys split
// across CTAs (split-KV, "flash decoding"), contiguous or paged cache
// (cuflash.attention_with_kvcache).
//
// For batch row b and kv head h_kv, the G = nheads / nheads_kv query heads of
// its GQA group and the seqlen_q queries are folded into the M dimension:
// folded row r = i * G + g is query i of head h = h_kv * G + g, so every K/V
// tile read serves the whole group. For one CTA (BM = 16 folded rows, one
// split of the keys) it computes, over the keys j of its split,
//   S = Q K^T            Q: (BM, d) folded rows, K: (keys, d) of the cache (kvcache.cuh)
//   S = mod(S), masked   softcap, ALiBi (score_mod.cuh); causal / window per query i
//                        (mask.cuh, bottom-right over the row's keys: cache keys
//                        cache_leftpad[b] .. seqused_k[b] - 1)
//   O = softmax(S * softmax_scale) V,   lse = ln(sum_j exp(S_ij * softmax_scale))
// With one split the result is final (the learnable sink joins the denominator
// here); with several, each split writes its fp32 part (O normalised over its
// own keys, and lse) and the last split of the rows to finish merges the parts
// (merge.cuh; the sink joins there).
//
// Steps (WARPS warps; each warp owns every WARPS-th key block of BN keys in
// the split, with its own online softmax (softmax.cuh) and its own ring of
// STAGES shared-memory K/V buffers, so no CTA barrier sits in the main loop):
//   1. Q (BM x D, folded rows) into shared memory, one barrier.
//   2. Per warp: cp.async K, V blocks STAGES - 1 ahead; per block
//        S = Q K^T (ldmatrix + mma.sync); modifiers; mask where the block
//        crosses the end of the keys or an edge of the band; online softmax;
//        O += P V.
//   3. Each warp's (O / l, lse) into shared memory; the CTA merges its warps
//      (merge.cuh) and stores out and lse, or the split's fp32 part.
//   4. Several splits: the split that finds the others' parts done (flags
//      holding the call's epoch) merges every split's part into out and lse.
//
// Compile-time constants (cuflash/specs.py DecodeSpec): CUFLASH_DTYPE,
// CUFLASH_HEAD_DIM D, CUFLASH_BLOCK_N BN, CUFLASH_WARPS, CUFLASH_STAGES, and
// the features CUFLASH_MASK, CUFLASH_SOFTCAP, CUFLASH_ALIBI, CUFLASH_SINK.
// Constraints: d % 8 == 0; q, caches, out 16-byte aligned with strides that
// are multiples of 8 elements (cuflash/api.py); softmax_scale > 0.
// Shared memory: max(BM (D + 8) 2 + WARPS STAGES 2 BN RPITCH 2,
//                    WARPS BM (D + 1) 4 + WARPS BM 4) bytes, RPITCH = D when
// D % 64 == 0, else D + 8 (cuflash/launch.py decode_smem_bytes).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/copy.cuh"
#include "common/mma.cuh"
#include "common/softmax.cuh"
#include "common/seqinfo.cuh"
#include "common/mask.cuh"
#include "common/score_mod.cuh"
#include "common/kvcache.cuh"
#include "common/merge.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BN = CUFLASH_BLOCK_N;
constexpr int WARPS = CUFLASH_WARPS;
constexpr int STAGES = CUFLASH_STAGES;
constexpr int THREADS = WARPS * 32;
constexpr int BM = 16;                  // folded query rows per CTA: one m16 tile
constexpr int NT = BN / 8;              // n8 tiles of S
constexpr int DT = D / 8;               // n8 tiles of O
constexpr int PITCH = D + 8;            // shared-memory row pitch in elements (copy.cuh)
constexpr int CHUNKS = D / 8;           // 16-byte chunks per row
constexpr int ROW_STEP = 32 / CHUNKS > 0 ? 32 / CHUNKS : 1;  // rows a warp copies at once
constexpr int MERGE_PITCH = D + 1;      // fp32 row pitch of the warps' parts in step 3
static_assert(BN % 16 == 0 && D % 32 == 0 && STAGES >= 2, "tile shape");
static_assert(CHUNKS <= 32, "a warp copies a row in one round");
// K/V ring rows: swizzled rows of D for D % 64 == 0, else padded to PITCH
// (copy.cuh streamed_swizzled; with padded rows the H200 read the cache 5% slower).
constexpr bool SWIZZLE = streamed_swizzled<D>();
constexpr int RPITCH = streamed_pitch<D>();
static_assert(BM * PITCH * 2 % 128 == 0, "the ring starts 128-byte aligned");

// The explicit minimum of 1 CTA per SM: without it ptxas (NVRTC 12.9, 13.0) held some builds to 64-128
// registers and spilled; with it none spills (cuflash compile).
extern "C" __global__ void __launch_bounds__(THREADS, 1) cuflash_decode(const DecodeParams p) {
    extern __shared__ __align__(128) u16 smem[];  // 128: the swizzled tiles rely on it (copy.cuh chunk_offset)
    u16* sQ = smem;                    // (BM, PITCH)
    u16* sKV = sQ + BM * PITCH;        // per warp, per stage: K (BN, RPITCH) then V (BN, RPITCH)

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int split = blockIdx.x, row0 = blockIdx.y * BM;
    const int b = blockIdx.z / p.nheads_kv, h_kv = blockIdx.z % p.nheads_kv;
    const int group = p.nheads / p.nheads_kv;
    const int rows = p.seqlen_q * group;  // folded rows of this (b, h_kv)

    // The sequence: dense queries; its keys are cache keys pad .. pad + seqlen_k - 1.
    SeqInfo si(p, b, h_kv * group);
    const int pad = si.use_cache_keys(p);
    const int key_end = pad + si.seqlen_k;  // in cache keys
    const Visibility vis(p, si);
    const CacheMap cache(p, b);
    // Folded row -> (query i, head h).
    auto query_of = [&](int r) { return r / group; };
    auto head_of = [&](int r) { return h_kv * group + r % group; };

    // Queries [i0, i1] of this CTA's rows and the key blocks they see, then this split's share.
    const int i0 = query_of(row0), i1 = query_of(min(row0 + BM, rows) - 1);
    const int2 blocks = vis.key_blocks<BN>(i0, i1 - i0 + 1);
    const int per_split = max(0, (blocks.y - blocks.x + p.num_splits - 1) / p.num_splits);
    const int n_begin = blocks.x + split * per_split;
    const int n_end = min(blocks.y, n_begin + per_split);

    // 1. Q: folded row r of the tile is q[b, i, h, :]; rows past `rows` and
    // columns past head_dim are zero (they add nothing and are never stored).
    for (int c = tid; c < BM * CHUNKS; c += THREADS) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        uint4 x = make_uint4(0, 0, 0, 0);
        if (row0 + r < rows && col < p.head_dim)
            x = *reinterpret_cast<const uint4*>(static_cast<const u16*>(p.q) + b * p.q_batch_stride +
                                                (i64)query_of(row0 + r) * p.q_row_stride +
                                                head_of(row0 + r) * p.q_head_stride + col);
        *reinterpret_cast<uint4*>(sQ + r * PITCH + col) = x;
    }
    // Every warp reads all of sQ.
    __syncthreads();

    // 2. This warp's key blocks: n_begin + warp + t * WARPS for t < count.
    const int first = n_begin + warp;
    const int count = first < n_end ? (n_end - first + WARPS - 1) / WARPS : 0;
    u16* ring = sKV + warp * STAGES * 2 * BN * RPITCH;
    const u32 ring_addr = smem_addr(ring);
    const u16* kbase = static_cast<const u16*>(p.k);
    const u16* vbase = static_cast<const u16*>(p.v);
    const int lane_row = lane / CHUNKS, lane_col = (lane % CHUNKS) * 8;
    // When a row's chunks do not fill the warp (CHUNKS = 12, 20, 24, 28), the last lanes copy nothing.
    const bool lane_copies = lane < ROW_STEP * CHUNKS;

    // Block t of this warp into stage t % STAGES: K and V rows of keys
    // key0 .. key0 + BN - 1, each row's cache slot looked up once for both
    // (one division per block: the next row of a lane is ROW_STEP keys on,
    // so its slot steps through the pages). Keys past seqlen_k and columns
    // past head_dim are zero-filled (never read from the cache: unused slots
    // may hold anything, NaN included). Always one commit, so that the wait
    // below counts groups uniformly.
    constexpr int LANE_ROWS = BN / ROW_STEP;  // rows a lane copies per block (ROW_STEP is 1, 2, 4 or 8)
    static_assert(BN % ROW_STEP == 0, "whole rounds of rows");
    auto load = [&](int t) {
        if (t < count && lane_copies) {
            const int key0 = (first + t * WARPS) * BN;
            const int kv_row = (t % STAGES) * 2 * BN + lane_row;  // K's; V's are BN rows on
            if (cache.pages == nullptr && pad + key0 + BN <= key_end && lane_col < p.head_dim) {
                // A block of a contiguous cache inside the used keys (every block of a row but its
                // last): the lane's rows are its first row's address plus multiples of ROW_STEP rows,
                // copied without a slot, a bound or a predicate each (the general path below forms
                // each row's 64-bit address from its slot: ~20 instructions per copy).
                const int j = pad + key0 + lane_row;
                const u16* ks = kbase + CacheMap::at(make_int2(cache.cache_row, j), p.k_batch_stride, p.k_row_stride,
                                                     p.k_head_stride, h_kv) + lane_col;
                const u16* vs = vbase + CacheMap::at(make_int2(cache.cache_row, j), p.v_batch_stride, p.v_row_stride,
                                                     p.v_head_stride, h_kv) + lane_col;
#pragma unroll
                for (int k = 0; k < LANE_ROWS; ++k) {
                    const int r = kv_row + k * ROW_STEP;
                    cp_async_16_full(ring_addr + chunk_offset<RPITCH, SWIZZLE>(r, lane % CHUNKS),
                                     ks + k * ROW_STEP * p.k_row_stride);
                    cp_async_16_full(ring_addr + chunk_offset<RPITCH, SWIZZLE>(r + BN, lane % CHUNKS),
                                     vs + k * ROW_STEP * p.v_row_stride);
                }
                cp_async_commit();
                return;
            }
            // First every row's slot (their block-table reads overlap), then the copies.
            int2 slot[LANE_ROWS];
            bool ok[LANE_ROWS];
            CacheCursor at(cache, pad + key0 + lane_row, key_end);
#pragma unroll
            for (int k = 0; k < LANE_ROWS; ++k) {
                ok[k] = lane_col < p.head_dim && at.j < key_end;
                slot[k] = ok[k] ? at.slot : make_int2(0, 0);
                if (k + 1 < LANE_ROWS) at.advance(cache, ROW_STEP, key_end);
            }
#pragma unroll
            for (int k = 0; k < LANE_ROWS; ++k) {
                const i64 ko = CacheMap::at(slot[k], p.k_batch_stride, p.k_row_stride, p.k_head_stride, h_kv);
                const i64 vo = CacheMap::at(slot[k], p.v_batch_stride, p.v_row_stride, p.v_head_stride, h_kv);
                const int r = kv_row + k * ROW_STEP;
                cp_async_16(ring_addr + chunk_offset<RPITCH, SWIZZLE>(r, lane % CHUNKS), kbase + ko + lane_col, ok[k]);
                cp_async_16(ring_addr + chunk_offset<RPITCH, SWIZZLE>(r + BN, lane % CHUNKS), vbase + vo + lane_col,
                            ok[k]);
            }
        }
        cp_async_commit();
    };

    // The score modifiers of the two rows this lane holds (fragment.cuh: g and
    // g + 8, maybe of two heads with two ALiBi slopes).
    const int g = lane / 4, t4 = lane % 4;
    auto mod_of = [&](int hh) {
        SeqInfo sr = si;
        sr.h = head_of(row0 + hh * 8 + g);
        return ScoreMod(p, sr);
    };
    const ScoreMod mod0 = mod_of(0), mod1 = mod_of(1);

    float acc_o[1][DT][4];
    zero_acc(acc_o);
    OnlineSoftmax<1> softmax;
    softmax.init();

    // Q's A fragments (D / 16 k-steps) stay in registers for the whole loop up
    // to D = 128; beyond, they are read from sQ per block (in registers, d256
    // spilled 28-32 bytes on sm_80).
    constexpr bool Q_IN_REGS = D <= 128;
    const u32 q_addr = smem_addr(sQ) + ldsm_offset_a<PITCH>(lane);
    FragA qf[Q_IN_REGS ? D / KSTEP : 1];
    if constexpr (Q_IN_REGS) {
#pragma unroll
        for (int ks = 0; ks < D / KSTEP; ++ks) load_a(qf[ks], q_addr + (u32)(ks * KSTEP * ELEM_BYTES));
    }
    // K (B of S, stored [key][d]) and V (B of O, stored [key][d] = [k][n]) of
    // the stage whose K rows start at ring row `row0`, for this lane (mma.cuh).
    auto k_b = [&](int row0) {
        if constexpr (SWIZZLE) return swizzled_b<false, true, D>(ring_addr, row0, 0, lane);
        else return ring_addr + (u32)(row0 * PITCH * 2) + ldsm_offset_b<PITCH>(lane);
    };
    auto v_b = [&](int row0) {
        if constexpr (SWIZZLE) return swizzled_b<true, true, D>(ring_addr, row0 + BN, 0, lane);
        else return ring_addr + (u32)((row0 + BN) * PITCH * 2) + ldsm_offset_b_t<PITCH>(lane);
    };

#pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) load(t);

    for (int t = 0; t < count; ++t) {
        // Block t has landed for this lane; the warp barrier makes every lane's
        // copies visible and guarantees all lanes finished block t - 1, whose
        // stage the next load overwrites.
        cp_async_wait<STAGES - 2>();
        __syncwarp();
        load(t + STAGES - 1);

        const int stage_row = (t % STAGES) * 2 * BN;  // K rows, then V rows
        const int key0 = (first + t * WARPS) * BN;

        // S = Q K^T (16 x BN), Q from registers, K from shared memory.
        float acc_s[1][NT][4];
        zero_acc(acc_s);
        warp_product<1, NT, D / KSTEP, D / KSTEP, ROUND_NONE>(
            acc_s,
            [&](FragA& a, int, int ks) {
                if constexpr (Q_IN_REGS) a = qf[ks];
                else load_a(a, q_addr + (u32)(ks * KSTEP * ELEM_BYTES));
            },
            [&](FragB (&b)[2], int np, int ks) { load_b_step<RPITCH, false>(b, k_b(stage_row), np, ks); });

        // Modifiers and mask by folded row: query i = row / G, the row's own head's modifier.
        const bool masked = vis.needs_mask(i0, i1 - i0 + 1, key0, BN);
        auto modify_row = [&](const ScoreMod& mod, int hh) {
            const int i = query_of(row0 + hh * 8 + g);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float& x = acc_s[0][nt][2 * hh + e];
                    const int j = key0 + nt * 8 + 2 * t4 + e;
                    if (ScoreMod::ACTIVE) x = mod(x, i, j);
                    if (masked && !vis.visible(i, j)) x = -INFINITY;
                }
        };
        if (ScoreMod::ACTIVE || masked) {
            modify_row(mod0, 0);
            modify_row(mod1, 1);
        }

        float corr[1][2];
        softmax.update(acc_s, p.scale_log2, corr);
        // Once the running maxima settle (most blocks of a long cache), corr is
        // exactly 1 (exp2(0)) in every row: skip the D / 2 multiplies then.
        if (__any_sync(0xffffffffu, corr[0][0] != 1.f || corr[0][1] != 1.f))
            scale_rows(acc_o[0], corr[0][0], corr[0][1]);

        // O += P V: P in 16 bits straight from the S fragments (mma.cuh), V (keys x d) read transposed.
        mma_rs<1, DT, BN, RPITCH, true>(acc_o, acc_s, v_b(stage_row));
    }

    // 3. This warp's part: O / l and lse (-inf for rows that saw no key here: a
    // warp with no block, or every key masked; inv_l = 0 makes their O 0).
    float inv_l[1][2], lse[1][2];
    softmax.finalize<false>(p.scale_log2, inv_l, lse);

    // The parts overwrite sQ and the rings: wait until no copy is in flight
    // (the trailing groups are empty) and every warp is done reading them.
    cp_async_wait<0>();
    __syncthreads();
    float* sO = reinterpret_cast<float*>(smem);        // (WARPS, BM, MERGE_PITCH)
    float* sL = sO + WARPS * BM * MERGE_PITCH;          // (WARPS, BM)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        float* row = sO + (warp * BM + hh * 8 + g) * MERGE_PITCH;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            row[dt * 8 + 2 * t4] = acc_o[0][dt][2 * hh] * inv_l[0][hh];
            row[dt * 8 + 2 * t4 + 1] = acc_o[0][dt][2 * hh + 1] * inv_l[0][hh];
        }
        if (t4 == 0) sL[warp * BM + hh * 8 + g] = lse[0][hh];
    }
    // Every warp's part is in shared memory before any thread merges a row.
    __syncthreads();

    // Merge the warps, 4 columns per thread. With one split this is the
    // answer (with the sink); with several, the split's part.
    const bool final_ = p.num_splits == 1;
    const i64 all_rows = (i64)p.nheads * p.batch * p.seqlen_q;  // rows of lse's (nheads, batch * seqlen_q)
    // Query i of head h: its index among those rows, and its row of out.
    auto lse_row = [&](int i, int h) { return ((i64)h * p.batch + b) * p.seqlen_q + i; };
    auto out_row = [&](int i, int h) {
        return static_cast<u16*>(p.o) + b * p.o_batch_stride + (i64)i * p.o_row_stride + h * p.o_head_stride;
    };
    for (int c = tid; c < BM * (D / 4); c += THREADS) {
        const int r = c / (D / 4), col = (c % (D / 4)) * 4;
        if (row0 + r >= rows || col >= p.head_dim) continue;
        const int i = query_of(row0 + r), h = head_of(row0 + r);
        const float sink = final_ && SINK ? p.sink[h] : -INFINITY;
        const MergeWeights<> mw(WARPS, [&](int w) { return sL[w * BM + r]; }, sink);
        float o[4] = {0.f, 0.f, 0.f, 0.f};
        for (int w = 0; w < WARPS; ++w) {
            const float wt = mw.weight(sL[w * BM + r]);
#pragma unroll
            for (int e = 0; e < 4; ++e) o[e] += wt * sO[(w * BM + r) * MERGE_PITCH + col + e];
        }
        const i64 row_index = lse_row(i, h);
        if (final_) {
            *reinterpret_cast<uint2*>(out_row(i, h) + col) = make_uint2(pack_float2(o[0], o[1]), pack_float2(o[2], o[3]));
            if (col == 0 && p.lse != nullptr) p.lse[row_index] = mw.lse;
        } else {
            const i64 part_row = split * all_rows + row_index;  // (splits, rows)
            *reinterpret_cast<float4*>(p.o_part + part_row * p.part_cols + col) = make_float4(o[0], o[1], o[2], o[3]);
            if (col == 0) p.lse_part[part_row] = mw.lse;
        }
    }
    if (final_) return;

    // 4. The last split of these rows to finish merges the splits' parts (merge.cuh), so no
    // second kernel runs. A split announces its part by setting its flag to the call's epoch:
    // a 64-bit value new for every call, which nothing else in the scratch equals (it may hold
    // anything, flags of earlier calls included). A split that then finds every flag set
    // merges; two splits finishing together may both do so, writing the same bits. A replayed
    // launch plan or CUDA graph keeps its epoch, so the merging split clears the flags again.
    u64* flags = p.split_flags + ((i64)blockIdx.z * gridDim.y + blockIdx.y) * p.num_splits;
    // Every thread's part stores are visible on the device before thread 0 announces them, and
    // every thread is done with sO and sL: merge_here reuses their first word.
    __threadfence();
    __syncthreads();
    int& merge_here = *reinterpret_cast<int*>(smem);
    if (warp == 0) {
        if (lane == 0) *reinterpret_cast<volatile u64*>(flags + split) = p.epoch;
        // Full fence between the own flag's store and the others' loads: of two splits
        // finishing together, at least one then sees both flags.
        __threadfence();
        bool all = true;
        for (int s = lane; s < p.num_splits; s += 32) all &= *reinterpret_cast<volatile u64*>(flags + s) == p.epoch;
        all = __all_sync(0xffffffffu, all);
        if (lane == 0) merge_here = all;
    }
    // merge_here is set before anyone reads it.
    __syncthreads();
    if (!merge_here) return;
    // The parts the flags announced are read after the flags (merge_parts_row loads through L2).
    __threadfence();
    for (int r = warp; r < BM && row0 + r < rows; r += WARPS) {
        const int i = query_of(row0 + r), h = head_of(row0 + r);
        const i64 row_index = lse_row(i, h);
        const float lse = merge_parts_row(
            p.num_splits, [&](int s) { return __ldcg(p.lse_part + s * all_rows + row_index); },
            [&](int s) { return p.o_part + (s * all_rows + row_index) * p.part_cols; }, SINK ? p.sink[h] : -INFINITY,
            out_row(i, h), p.head_dim, lane);
        if (lane == 0 && p.lse != nullptr) p.lse[row_index] = lse;
    }
    // Every flag was read above; a split still reading them finds its rows complete (and merges
    // them too) or finds some cleared (and leaves them to this one).
    for (int s = tid; s < p.num_splits; s += THREADS) flags[s] = 0;
}
