// bwd.cu: exact attention backward, the portable path (sm_80+: cp.async,
// ldmatrix, mma.sync with fp32 accumulators; float32 inputs as 3xTF32, mma.cuh). FlashAttention-2
// (Dao 2023), Algorithm 2, with P recomputed from the forward's lse.
//
// For one (batch b, query head h, kv head h_kv = h / (nheads / nheads_kv)) and
// a block of Bc keys j, with Q, dO: (Sq, d) rows of q, dout[b, :, h, :] and
// K_j, V_j: (Bc, d) rows of k, v[b, :, h_kv, :], the CTA computes
//   dV_j = sum_i P_ij^T dO_i                      (Bc, d)
//   dK_j = scale * sum_i dS_ij^T Q_i              (Bc, d)
// and adds to dQ_i (fp32, global) for every query block i:
//   dQ_i += scale * dS_ij K_j                     (Br, d)
// where, for query block i (Br rows) and this key block:
//   S_ij  = mod(Q_i K_j^T)                        (Br, Bc), softcap / ALiBi / bias (score_mod.cuh), masked
//   P_ij  = exp(S_ij * scale - L_i) = exp2(S_ij * scale * log2(e) - L_i * log2(e))
//   dP_ij = dO_i V_j^T                            (Br, Bc)
//   dS_ij = P_ij ∘ (dP_ij - D_i) ∘ mod'           D_i = rowsum(dO_i ∘ O_i) (- dlse_i), bwd_prepare.cu
// A learnable sink (CUFLASH_SINK) is in L_i already; the CTA also sums
//   sum_i P_sink,i sum_j P_ij dP_ij   (P_sink,i = exp(sink_h - L_i))
// over its tiles in fp32 into dsink_part[b, h, j] (softmax.cuh sink_log2),
// from which the host forms dsink exactly.
// L_i (natural-log lse) and D_i come from bwd_prepare.cu, which stores
// L_i * log2(e) (+inf for rows that see no key, so their P row is exactly 0).
// Every product is held transposed, keys as rows: S^T = K Q^T (Bc, Br), so
// that dV = P^T dO and dK = dS^T Q need no transpose of P^T / dS^T.
//
// Steps: one CTA per (key block, head, batch); WARPS warps.
//   1. cp.async K_j, V_j (once) and Q, dO, L, D of the first query block that sees a key of j.
//   2. For each query block i that sees a key of j (mask.cuh query_blocks: under
//      a causal mask or a window the others are skipped; only blocks crossing
//      an edge of the band or seqlen_k are masked):
//        wait for block i; start loading block i+1 into the other buffer (double buffering);
//        S^T = K Q^T, dP^T = V dO^T (warps tile keys x queries: SDP_WARPS_N along keys);
//        score modifier, mask; P^T = exp2(S^T * scale_log2 - L2),
//        dS^T = P^T ∘ (dP^T - D) ∘ mod' (softmax.cuh softmax_backward_t);
//        dS^T (and P^T unless P stays in registers) -> shared memory, in the element type;
//        dV += P^T dO, dK += dS^T Q (warps tile keys x d: DKV_WARPS_N along keys);
//        dQ_i += scale * dS K (warps tile queries x d: DQ_WARPS_M along queries, in
//        passes of DQ_PASS_DIMS columns): fp32 reductions into dq_accum, whole
//        rows and columns (its rows past seqlen_q are padding or, varlen, the next
//        sequence's, and receive exact zeros: their Q and dO load as zeros and
//        lse_log2 = +inf, so P and dS are 0; K's columns past d are zero; with
//        DQ_TESTED they are skipped all the same, epilogue.cuh write_f32_tile); with
//        CUFLASH_DETERMINISTIC the CTAs of one (head, batch) add to query block i
//        in a fixed key-block order (atomic.cuh turns, mask.cuh dq_key_block), so the
//        sums are reproducible.
//        (epilogue.cuh write_f32_tile)
//   3. dK *= scale; write dK, dV: to dk/dv in the input dtype (staged through
//      shared memory for 16-byte stores), or fp32 per query head into
//      dk_accum/dv_accum under GQA (bwd_convert.cu sums the group).
// When P_IN_REGS (every warp owns whole key rows of S^T and of dK/dV: both
// SDP_WARPS_N and DKV_WARPS_N equal WARPS) P^T and dS^T feed dV and dK straight
// from registers (mma_rs) and only dS^T goes through shared memory, for dQ.
//
// Compile-time constants (rendered from cuflash/specs.py BwdSpec):
//   CUFLASH_DTYPE (fp16 | bf16 | fp32), CUFLASH_HEAD_DIM D (multiple of 32; the actual
//   d <= D is a run-time value, columns >= d are zero-filled and never stored),
//   CUFLASH_BLOCK_M Br, CUFLASH_BLOCK_N Bc, CUFLASH_WARPS, CUFLASH_SDP_WARPS_N,
//   CUFLASH_DKV_WARPS_N, CUFLASH_DQ_WARPS_M, CUFLASH_DQ_PASS_DIMS, CUFLASH_K_UNROLL, CUFLASH_K_AHEAD,
//   CUFLASH_DQ_TESTED,
//   CUFLASH_DETERMINISTIC, and the features CUFLASH_MASK, CUFLASH_SOFTCAP, CUFLASH_ALIBI,
//   CUFLASH_BIAS (dB = P ∘ (dP - D) into dbias when asked, softmax.cuh), CUFLASH_SINK, CUFLASH_DROPOUT,
//   CUFLASH_VARLEN (per-sequence rows and lengths, seqinfo.cuh; key blocks past a sequence exit).
// Memory per CTA: nothing of size seqlen_q x seqlen_k exists anywhere; S, P, dP
// and dS live only as (Bc x Br) tiles in registers and shared memory.
// Constraints: d % 8 == 0; q, k, v, dout, dk, dv 16-byte aligned with strides
// that are multiples of 16 bytes (cuflash/api.py); softmax_scale > 0;
// lse_log2 / delta padded to m_blocks * Br rows (bwd_prepare.cu); dq_accum rows D
// floats apart, each sequence's zeroed up to a multiple of Br rows (launch.py, bwd_prepare.cu).
// Shared memory: 16 Br + E 2 Bc (D + C) + E 4 Br Dq + E Bc (Br + C) (x2
// without P_IN_REGS) bytes, E = ELEM_BYTES, C = CHUNK = 16 / E, Dq = D for
// swizzled Q and dO (16-bit, D % 64 == 0), else D + C; + 4 per thread with a
// sink (cuflash/launch.py bwd_smem_bytes).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/copy.cuh"
#include "common/mma.cuh"
#include "common/seqinfo.cuh"
#include "common/mask.cuh"
#include "common/score_mod.cuh"
#include "common/softmax.cuh"
#include "common/epilogue.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BM = CUFLASH_BLOCK_M;  // Br: query rows per step
constexpr int BN = CUFLASH_BLOCK_N;  // Bc: keys per CTA
constexpr int WARPS = CUFLASH_WARPS;
// k-steps per unrolled loop body of each product from shared memory (mma.cuh
// mma_ss; 0 = fully unrolled).
constexpr int K_UNROLL = CUFLASH_K_UNROLL > 0 ? CUFLASH_K_UNROLL : 1024;
// The next k-step's fragments loaded ahead in those loops (mma.cuh warp_product AHEAD).
constexpr bool K_AHEAD = CUFLASH_K_AHEAD;
constexpr bool DETERMINISTIC = CUFLASH_DETERMINISTIC;
// dQ's adds test rows and columns (specs.BwdTiles.dq_tested: where whole-block adds spill).
constexpr bool DQ_TESTED = CUFLASH_DQ_TESTED;
constexpr int THREADS = WARPS * 32;

// S^T and dP^T (Bc x Br): SDP_WN warps along keys x (WARPS / SDP_WN) along queries.
constexpr int SDP_WN = CUFLASH_SDP_WARPS_N;
constexpr int S_KEYS = BN / SDP_WN, S_QUERIES = BM / (WARPS / SDP_WN);
constexpr int S_MT = S_KEYS / 16, S_NT = S_QUERIES / 8;
// dK and dV (Bc x D): DKV_WN warps along keys x (WARPS / DKV_WN) along d.
constexpr int DKV_WN = CUFLASH_DKV_WARPS_N;
constexpr int KV_KEYS = BN / DKV_WN, KV_DIMS = D / (WARPS / DKV_WN);
constexpr int KV_MT = KV_KEYS / 16, KV_NT = KV_DIMS / 8;
// dQ (Br x D): DQ_WM warps along queries x (WARPS / DQ_WM) along d.
constexpr int DQ_WM = CUFLASH_DQ_WARPS_M;
constexpr int DQ_ROWS = BM / DQ_WM, DQ_DIMS = D / (WARPS / DQ_WM);
constexpr int DQ_MT = DQ_ROWS / 16, DQ_NT = DQ_DIMS / 8;
constexpr int DQ_PASS_NT = CUFLASH_DQ_PASS_DIMS / 8, DQ_PASSES = DQ_NT / DQ_PASS_NT;

// P^T and dS^T stay in registers for dV and dK when each warp owns whole key
// rows of both S^T and dK/dV (a preprocessor switch: the two paths use
// operands of different shapes).
#if CUFLASH_SDP_WARPS_N == CUFLASH_WARPS && CUFLASH_DKV_WARPS_N == CUFLASH_WARPS
#define CUFLASH_P_IN_REGS 1
#else
#define CUFLASH_P_IN_REGS 0
#endif
constexpr bool P_IN_REGS = CUFLASH_P_IN_REGS;
constexpr int PITCH = D + CHUNK;     // rows of K, V (and Q, dO unless swizzled) in shared memory (copy.cuh)
constexpr int PITCH_T = BM + CHUNK;  // rows of P^T, dS^T: an odd number of 16-byte chunks
// Q and dO, streamed through the main loop, in swizzled rows of D where D % 64
// == 0 with 16-bit inputs (copy.cuh streamed_swizzled).
constexpr bool Q_SWIZZLE = streamed_swizzled<D>();
constexpr int Q_PITCH = streamed_pitch<D>();

static_assert(D % 32 == 0 && BM % 16 == 0 && BN % 16 == 0 && BM <= 4 * THREADS, "tile shape");
static_assert(WARPS % SDP_WN == 0 && WARPS % DKV_WN == 0 && WARPS % DQ_WM == 0, "warp grids");
static_assert(S_KEYS % 16 == 0 && S_QUERIES % 16 == 0, "S^T warp tile: m16 keys, pairs of n8 queries");
static_assert(KV_KEYS % 16 == 0 && KV_DIMS % 16 == 0, "dK/dV warp tile: m16 keys, pairs of n8 dims");
static_assert(DQ_ROWS % 16 == 0 && DQ_DIMS % 16 == 0, "dQ warp tile: m16 queries, pairs of n8 dims");
static_assert(DQ_PASS_NT % 2 == 0 && DQ_NT % DQ_PASS_NT == 0, "dQ passes: whole pairs of n8 tiles");

extern "C" __global__ void __launch_bounds__(THREADS, 1) cuflash_bwd(const BwdParams p) {
    extern __shared__ __align__(128) u16 smem[];  // 128: the swizzled tiles rely on it (copy.cuh chunk_offset)
    float* sLse2 = reinterpret_cast<float*>(smem);  // [2][Br]  L_i * log2(e) of the two query buffers
    float* sDelta = sLse2 + 2 * BM;                 // [2][Br]  D_i
    elem_t* sK = reinterpret_cast<elem_t*>(sDelta + 2 * BM);  // [Bc][PITCH]
    elem_t* sV = sK + BN * PITCH;                             // [Bc][PITCH]
    elem_t* sQ = sV + BN * PITCH;                             // [2][Br][Q_PITCH]
    elem_t* sdO = sQ + 2 * BM * Q_PITCH;                      // [2][Br][Q_PITCH]
    elem_t* sPt = sdO + 2 * BM * Q_PITCH;                     // [Bc][PITCH_T] P^T (absent when P_IN_REGS)
    elem_t* sdSt = sPt + (P_IN_REGS ? 0 : BN * PITCH_T);      // [Bc][PITCH_T] dS^T
    float* sSinkPart = reinterpret_cast<float*>(sdSt + BN * PITCH_T);  // [THREADS] (SINK) softmax.cuh sink_log2

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int n_block = dq_key_block<DETERMINISTIC>();  // mask.cuh
    const int key0 = n_block * BN;
    const SeqInfo si(p, blockIdx.z, blockIdx.y);
    if (key_block_past_end<SINK>(p, si, key0)) return;  // varlen: a key block no query sees
    const Visibility vis(p, si);
    const ScoreMod mod(p, si);
    const Dropout drop(p, si.b, si.h);  // used under CUFLASH_DROPOUT only
    const BiasGrad dbias(p, si);        // used under CUFLASH_BIAS only

    const BwdRows rows(p, si);

    // Query blocks [m_begin, m_end) hold every query that sees a key of this block.
    const int2 query_blocks = vis.query_blocks<BM>(key0, BN);
    const int m_begin = query_blocks.x, m_end = query_blocks.y;

    // Warp tile origins within the block.
    const int s_key0 = (warp % SDP_WN) * S_KEYS, s_q0 = (warp / SDP_WN) * S_QUERIES;
    const int kv_key0 = (warp % DKV_WN) * KV_KEYS, kv_d0 = (warp / DKV_WN) * KV_DIMS;
    const int dq_q0 = (warp % DQ_WM) * DQ_ROWS, dq_d0 = (warp / DQ_WM) * DQ_DIMS;

    const u32 sLse2_addr = smem_addr(sLse2), sDelta_addr = smem_addr(sDelta);
    const u32 sK_addr = smem_addr(sK), sV_addr = smem_addr(sV);
    const u32 sQ_addr = smem_addr(sQ), sdO_addr = smem_addr(sdO);
    const u32 sPt_addr = smem_addr(sPt), sdSt_addr = smem_addr(sdSt);

    // This lane's shared addresses (mma.cuh), at the warp's tile origins:
    //   S^T = K Q^T:   A = K [key][d],  B = Q^T from Q [query][d] (stored [n][k])
    const u32 s_a = ldsm_offset_a<PITCH>(lane) + (u32)(s_key0 * PITCH * ELEM_BYTES);
    const u32 s_b_lane = ldsm_offset_b<PITCH>(lane) + (u32)(s_q0 * PITCH * ELEM_BYTES);  // padded rows
    auto s_b = [&](u32 tile) {  // of a Q or dO buffer
        if constexpr (Q_SWIZZLE) return swizzled_b<false, true, D, true>(tile, s_q0, 0, lane);
        else return tile + s_b_lane;
    };
    //   dV = P^T dO:   A = P^T [key][query], B = dO [query][d] (stored [k][n], transposed)
    //   (float32: A in the paired k order of the transposed B, mma.cuh)
    const u32 kv_a = ldsm_offset_a<PITCH_T, true>(lane) + (u32)(kv_key0 * PITCH_T * ELEM_BYTES);
    const u32 kv_b_lane = ldsm_offset_b_t<PITCH>(lane) + (u32)(kv_d0 * ELEM_BYTES);  // padded rows
    auto kv_b = [&](u32 tile) {  // of a Q or dO buffer
        if constexpr (Q_SWIZZLE) return swizzled_b<true, KV_DIMS % 64 == 0, D, true>(tile, 0, kv_d0 / 8, lane);
        else return tile + kv_b_lane;
    };
    //   dQ = dS K:     A = dS from dS^T [key][query] (stored [k][m]), B = K [key][d] (both transposed)
    const u32 dq_a = sdSt_addr + ldsm_offset_a_t<PITCH_T>(lane) + (u32)(dq_q0 * ELEM_BYTES);
    const u32 dq_b = sK_addr + ldsm_offset_b_t<PITCH>(lane) + (u32)(dq_d0 * ELEM_BYTES);

    // Q_i, dO_i, L_i, D_i of query block m into buffer `buf` (rows >= seqlen_q
    // zero-filled; L and D are padded by bwd_prepare, so they are read whole).
    auto load_query_block = [&](int m, int buf) {
        load_tile_async<BM, D, THREADS, Q_SWIZZLE>(sQ_addr + (u32)(buf * BM * Q_PITCH * ELEM_BYTES), rows.q,
                                                   p.q_row_stride, m * BM, si.seqlen_q, p.head_dim, tid);
        load_tile_async<BM, D, THREADS, Q_SWIZZLE>(sdO_addr + (u32)(buf * BM * Q_PITCH * ELEM_BYTES), rows.dout,
                                                   p.do_row_stride, m * BM, si.seqlen_q, p.head_dim, tid);
        // Br floats each = Br / 4 16-byte chunks (Br <= 4 * THREADS).
        if (tid < BM / 4) {
            cp_async_16(sLse2_addr + (u32)((buf * BM + tid * 4) * 4), rows.lse2 + (i64)m * BM + tid * 4, true);
            cp_async_16(sDelta_addr + (u32)((buf * BM + tid * 4) * 4), rows.delta + (i64)m * BM + tid * 4, true);
        }
    };

    float acc_dk[KV_MT][KV_NT][4], acc_dv[KV_MT][KV_NT][4];
    zero_acc(acc_dk);
    zero_acc(acc_dv);
    if (SINK) sSinkPart[tid] = 0.f;  // this thread's slot: no other thread reads it before the epilogue's barrier

    // When no query sees a key of this block (seqlen_q = 0, or a window that
    // misses it) the loop is empty and dK = dV = 0 are written.
    if (m_begin < m_end) {
        // 1. K_j, V_j and the first query block, one cp.async group.
        load_tile_async<BN, D, THREADS>(sK_addr, rows.k, p.k_row_stride, key0, si.seqlen_k, p.head_dim, tid);
        load_tile_async<BN, D, THREADS>(sV_addr, rows.v, p.v_row_stride, key0, si.seqlen_k, p.head_dim, tid);
        load_query_block(m_begin, 0);
        cp_async_commit();
    }

    for (int m = m_begin; m < m_end; ++m) {
        const int buf = (m - m_begin) & 1;
        const int row0 = m * BM;
        // Block m (and, the first time, K and V) has landed for this thread; the
        // barrier makes every thread's copies visible, and guarantees that all
        // warps are done with step m-1: its buffer (buf ^ 1) and sPt/sdSt may be
        // overwritten from here on.
        cp_async_wait<0>();
        __syncthreads();
        if (m + 1 < m_end) {
            load_query_block(m + 1, buf ^ 1);
            cp_async_commit();
            mod.prefetch<BM, BN, THREADS>((m + 1) * BM, key0, tid);  // the bias of block m+1 (score_mod.cuh)
        }
        const u32 sQ_buf = sQ_addr + (u32)(buf * BM * Q_PITCH * ELEM_BYTES);
        const u32 sdO_buf = sdO_addr + (u32)(buf * BM * Q_PITCH * ELEM_BYTES);

        // S^T = K Q^T and dP^T = V dO^T: (S_KEYS x S_QUERIES) per warp, reduced over D.
        float acc_s[S_MT][S_NT][4], acc_dp[S_MT][S_NT][4];
        mod.init<true>(acc_s, key0 + s_key0, row0 + s_q0, lane);  // 0, or the bias (score_mod.cuh)
        zero_acc(acc_dp);
        mma_ss<S_MT, S_NT, D, PITCH, false, Q_PITCH, false, K_UNROLL, ROUND_NONE, K_AHEAD>(acc_s, sK_addr + s_a,
                                                                                           s_b(sQ_buf));
        // (float32: dP rounded every k-step, as D is subtracted from it: mma.cuh ROUND_STEP)
        mma_ss<S_MT, S_NT, D, PITCH, false, Q_PITCH, false, K_UNROLL, ROUND_STEP, K_AHEAD>(acc_dp, sV_addr + s_a,
                                                                                           s_b(sdO_buf));

        // Score modifier, then the mask (only blocks that cross seqlen_k or an
        // edge of the band need it), then P^T and dS^T in place.
        if (ScoreMod::ACTIVE) mod.apply<true>(acc_s, key0 + s_key0, row0 + s_q0, lane);
        if (vis.needs_mask(row0, BM, key0, BN)) vis.apply<true>(acc_s, key0 + s_key0, row0 + s_q0, lane);
        const float sink_part = softmax_backward_t<false>(acc_s, acc_dp, sLse2 + buf * BM + s_q0, sDelta + buf * BM + s_q0,
                                                   p.scale_log2, mod, drop, dbias, sink_log2(p, si), key0 + s_key0,
                                                   row0 + s_q0, lane);
        if (SINK) sSinkPart[tid] += sink_part;

        // dS^T (and P^T) -> shared memory as elements [key][query]; a lane's two
        // adjacent queries make one store (16-bit: one u32, rows (Br+8)*2 bytes
        // apart put the 8 rows g of a store on distinct banks; float32: one float2).
        // Its own loop rather than fragment.cuh for_each_pair, which recomputes g and t
        // here: that spilled the d160 causal m32n64 kernels for sm_120 (bench/NOTES.md pb4).
#pragma unroll
        for (int mt = 0; mt < S_MT; ++mt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int row = s_key0 + mt * 16 + hh * 8 + g;
#pragma unroll
                for (int nt = 0; nt < S_NT; ++nt) {
                    const int col = s_q0 + nt * 8 + 2 * t;
                    store_pair(sdSt + row * PITCH_T + col, acc_dp[mt][nt][2 * hh], acc_dp[mt][nt][2 * hh + 1]);
#if !CUFLASH_P_IN_REGS
                    store_pair(sPt + row * PITCH_T + col, acc_s[mt][nt][2 * hh], acc_s[mt][nt][2 * hh + 1]);
#endif
                }
            }

        // dV += P^T dO_i and dK += dS^T Q_i: (KV_KEYS x KV_DIMS) per warp, reduced over Br.
#if CUFLASH_P_IN_REGS
        // This warp's S^T rows are exactly its dK/dV rows, over all Br queries.
        // (float32: dK and dV sum over every query block, each block's part rounded: mma.cuh ROUND_PASS)
        mma_rs<KV_MT, KV_NT, BM, Q_PITCH, true, ROUND_PASS>(acc_dv, acc_s, kv_b(sdO_buf));
        mma_rs<KV_MT, KV_NT, BM, Q_PITCH, true, ROUND_PASS>(acc_dk, acc_dp, kv_b(sQ_buf));
        // dS^T of every warp is in shared memory before dQ reads it.
        __syncthreads();
#else
        // P^T and dS^T of every warp are in shared memory before dV and dK read them.
        __syncthreads();
        mma_ss<KV_MT, KV_NT, BM, PITCH_T, false, Q_PITCH, true, K_UNROLL, ROUND_PASS, K_AHEAD>(acc_dv, sPt_addr + kv_a,
                                                                                               kv_b(sdO_buf));
        mma_ss<KV_MT, KV_NT, BM, PITCH_T, false, Q_PITCH, true, K_UNROLL, ROUND_PASS, K_AHEAD>(acc_dk, sdSt_addr + kv_a,
                                                                                               kv_b(sQ_buf));
#endif

        // dQ_i += scale * dS K_j: (DQ_ROWS x DQ_DIMS) per warp, reduced over Bc keys,
        // in DQ_PASSES passes of DQ_PASS_NT n8 tiles (bounds the live accumulators).
        //
        // Deterministic: the CTAs of this (head, batch) that see query block m are
        // the key blocks of its range (mask.cuh key_blocks, the same pairs as
        // query_blocks above); this CTA adds as number dq_turn and waits until
        // that many have added (mask.cuh dq_key_block: the order, and why it
        // cannot deadlock).
        int* turn = DETERMINISTIC ? p.dq_semaphore + si.row_stat(p.nheads, p.m_blocks) + m : nullptr;
#pragma unroll
        for (int pass = 0; pass < DQ_PASSES; ++pass) {
            float acc_dq[DQ_MT][DQ_PASS_NT][4];
            zero_acc(acc_dq);
            mma_ss<DQ_MT, DQ_PASS_NT, BN, PITCH_T, true, PITCH, true, K_UNROLL, ROUND_NONE, K_AHEAD>(
                acc_dq, dq_a, dq_b + (u32)(pass * DQ_PASS_NT * 8 * ELEM_BYTES));
            if (DETERMINISTIC && pass == 0) turn_wait(turn, vis.dq_turn<BN>(row0, BM, n_block));
            write_f32_tile<true, DQ_TESTED ? 0 : D>(rows.dq_accum, p.dqa_row_stride, acc_dq, p.scale, row0 + dq_q0,
                                                    dq_d0 + pass * DQ_PASS_NT * 8, si.seqlen_q, p.head_dim, lane);
        }
        if (DETERMINISTIC) turn_pass(turn);
    }

    // 3. Epilogue: dK = scale * acc_dk, dV = acc_dv. Every warp is past its
    // last read of sK/sV (the final S^T, dP^T and dQ products) before they are
    // reused to stage dK and dV.
    __syncthreads();
    // dsink's part of this CTA (softmax.cuh sink_log2): sLse2 is free, its last
    // read precedes the barrier above.
    if (SINK) block_sum_store<THREADS>(sSinkPart[tid], sLse2, p.dsink_part + cta_slot());
    float dk_scale[KV_MT][2], dv_scale[KV_MT][2];
#pragma unroll
    for (int mt = 0; mt < KV_MT; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) dk_scale[mt][hh] = p.scale, dv_scale[mt][hh] = 1.f;

    if (p.dk_accum == nullptr) {
        // dK -> sK, dV -> sV as elements [key][d], then 16-byte stores of whole rows.
        auto pitched = [](int r, int col) { return (r * PITCH + col) * ELEM_BYTES; };
        unsigned char* sK_bytes = reinterpret_cast<unsigned char*>(sK);
        unsigned char* sV_bytes = reinterpret_cast<unsigned char*>(sV);
        stage_tile(sK_bytes, pitched, acc_dk, dk_scale, kv_key0, kv_d0, lane);
        stage_tile(sV_bytes, pitched, acc_dv, dv_scale, kv_key0, kv_d0, lane);
        // The 16-byte reads below cover rows and columns other warps wrote.
        __syncthreads();
        elem_t* dk = si.key_rows(static_cast<elem_t*>(p.dk), p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
        elem_t* dv = si.key_rows(static_cast<elem_t*>(p.dv), p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
        store_staged_rows<BN, D>(dk, p.dk_row_stride, sK_bytes, pitched, key0, si.seqlen_k, p.head_dim, tid, THREADS);
        store_staged_rows<BN, D>(dv, p.dv_row_stride, sV_bytes, pitched, key0, si.seqlen_k, p.head_dim, tid, THREADS);
    } else {
        // GQA: fp32 per query head; bwd_convert.cu adds the group in a fixed order.
        float* dka = si.key_rows_of_query_head(p.dk_accum, p.dka_batch_stride, p.dka_row_stride, p.dka_head_stride);
        float* dva = si.key_rows_of_query_head(p.dv_accum, p.dka_batch_stride, p.dka_row_stride, p.dka_head_stride);
        write_f32_tile<false>(dka, p.dka_row_stride, acc_dk, p.scale, key0 + kv_key0, kv_d0, si.seqlen_k, p.head_dim,
                              lane);
        write_f32_tile<false>(dva, p.dka_row_stride, acc_dv, 1.f, key0 + kv_key0, kv_d0, si.seqlen_k, p.head_dim, lane);
    }
}
