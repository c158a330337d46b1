// bwd_sm90.cu: exact attention backward, the Hopper path (sm_90a: wgmma with
// operands in swizzled shared memory, TMA or cp.async loads, fp32 accumulators).
//
// Computes what bwd.cu computes (FlashAttention-2, Algorithm 2, P recomputed
// from the forward's lse), with the same parameters, preprocess (bwd_prepare.cu)
// and conversions (bwd_convert.cu). For one (batch b, query head h, kv head
// h_kv) and a block of Bc keys, with Q, dO: (Sq, d), K_j, V_j: (Bc, d):
//   dV_j = sum_i P_ij^T dO_i,  dK_j = scale * sum_i dS_ij^T Q_i,  dQ_i += scale * dS_ij K_j
// where S_ij = mod(Q_i K_j^T) (score_mod.cuh; masked, mask.cuh),
// P_ij = exp2(S_ij * scale * log2(e) - L2_i), dP_ij = dO_i V_j^T,
// dS_ij = P_ij ∘ (dP_ij - D_i) ∘ mod' (L2_i = lse_i * log2(e) and
// D_i = rowsum(dO_i ∘ O_i) (- dlse_i) from bwd_prepare.cu); with a learnable
// sink, the CTA's part of dsink as bwd.cu says.
//
// Steps: one CTA per (key block, head, batch); two warpgroups, warpgroup w
// owning keys 64w..64w+63 of the block (Bc = 128), Br = 64 queries per step.
// (SPLIT_D, d = 256: Bc = 64 keys shared by both warpgroups, which own queries
// wg*Br/2.. of S^T and dP^T and columns wg*D/2.. of dK and dV; see "SPLIT_D"
// below for how step 2 differs.)
//   1. K_j, V_j (once) and Q, dO, L2, D of the first query block that sees a
//      key of j, into swizzled shared memory: with p.tma (dense calls whose
//      tensor maps the host encoded, cuflash/tma.py) thread 0 issues one TMA
//      box per swizzle atom and plain bulk copies of L2 and D, arriving on the
//      buffer's mbarrier with the bytes to come; else every thread copies with
//      cp.async (copy.cuh).
//   2. For each query block i that sees a key of j (mask.cuh query_blocks; only
//      blocks crossing an edge of the band or seqlen_k are masked), Q/dO
//      double-buffered:
//        wait for block i; warp 0 adds the dQ block of step i-1, staged in
//        the other buffer, to dq_accum (one bulk reduction);
//        S^T = K Q^T, dP^T = V dO^T     per warpgroup 64 keys x Br, A and B K-major;
//        score modifier, mask; P^T = exp2(S^T * scale_log2 - L2),
//        dS^T = P^T ∘ (dP^T - D) ∘ mod' in registers (softmax.cuh);
//        dS^T -> shared memory (16-bit, [key][query], swizzled);
//        once the bulk reduction has read the other buffer, start copying block
//        i+1 into it;
//        dV += P^T dO, dK += dS^T Q      A = P^T from registers, dS^T from shared
//                                        memory; B = dO / Q read transposed;
//        dQ_i (Br x D/2, columns w*D/2..) = dS K over all Bc keys: A = dS read
//        transposed from dS^T, B = K read transposed; scale * dQ_i staged in
//        block i's Q/dO buffer as fp32 rows of dq_accum (see "dQ" below;
//        CUFLASH_DETERMINISTIC: added in a fixed key-block order, mask.cuh dq_key_block).
//   3. dK *= scale; write dK, dV (16-bit, staged through shared memory) or, under
//      GQA, fp32 per query head into dk_accum/dv_accum (bwd_convert.cu sums).
// Every product is held transposed (keys as the M dimension of wgmma), so dV
// takes P^T straight from registers (dS^T goes through shared memory anyway,
// for dQ; reading it there for dK too keeps d = 128 within the registers).
//
// Compile-time constants (cuflash/specs.py BwdSm90Spec): CUFLASH_DTYPE,
// CUFLASH_HEAD_DIM D (64, 128 or 256; the actual d <= D is a run-time value,
// columns >= d are zero-filled and never stored), CUFLASH_BLOCK_N Bc (128, or
// 64 for SPLIT_D), CUFLASH_DETERMINISTIC, and the features CUFLASH_MASK,
// CUFLASH_SOFTCAP, CUFLASH_ALIBI, CUFLASH_BIAS (and dbias), CUFLASH_SINK, CUFLASH_DROPOUT, CUFLASH_VARLEN
// (seqinfo.cuh). Br = 64, 256 threads.
// Memory: nothing of size seqlen_q x seqlen_k; S, P, dP, dS exist only as
// (Bc x Br) tiles. Constraints: as bwd.cu.
// Shared memory: 2 Bc D (K, V) + 4 Br D (Q and dO, two buffers; each buffer's
// Q and dO also hold a Br x D fp32 dQ block at the end of its step) + Bc Br (dS^T;
// twice under SPLIT_D, for P^T) 16-bit elements, 16 Br bytes (L2, D), 4 bytes
// per thread with a sink, two mbarriers (16 bytes) and 1 KB alignment slack
// (launch.py).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/copy.cuh"
#include "common/wgmma.cuh"
#include "common/seqinfo.cuh"
#include "common/mask.cuh"
#include "common/score_mod.cuh"
#include "common/softmax.cuh"
#include "common/epilogue.cuh"
#include "common/atomic.cuh"
#include "common/pipeline.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BM = 64;                 // Br: queries per step
constexpr int BN = CUFLASH_BLOCK_N;    // Bc: keys per CTA
constexpr bool DETERMINISTIC = CUFLASH_DETERMINISTIC;
constexpr int THREADS = 256;
// SPLIT_D (D = 256): dK and dV of 64 keys x D do not fit one warpgroup's
// registers, so both warpgroups own the same Bc = 64 keys and split the
// columns of dK, dV (and dQ) in halves. In step 2 each warpgroup computes S^T
// and dP^T on its half of the Br queries (wgmma N = Br/2), forms P^T and dS^T
// there and stores both (16-bit); then each takes both from shared memory for
// its halves of dV and dK. Otherwise (D <= 128) each warpgroup owns 64 of
// Bc = 128 keys, all Br queries of S^T and dP^T and all D columns of dK, dV.
constexpr bool SPLIT_D = D > 128;
constexpr int KV_COLS = SPLIT_D ? D / 2 : D;  // dK, dV columns per warpgroup
constexpr int DQ_COLS = D / 2;                // dQ columns per warpgroup
constexpr int NQ = SPLIT_D ? BM / 2 : BM;     // queries of S^T and dP^T per warpgroup
// K, V, Q, dO tiles use swizzle atoms of DQ_COLS or 64 columns, so that each
// warpgroup's half of a tile starts on an atom (a whole column block).
constexpr int AW = DQ_COLS % 64 == 0 ? 64 : 32;
constexpr int NT = NQ / 8;        // n8 tiles of S^T per warp (queries)
constexpr int DT = KV_COLS / 8;   // n8 tiles of dK, dV per warp
static_assert(D == 64 || D == 128 || D == 256, "head dim bucket of this kernel");
static_assert(BN == (SPLIT_D ? 64 : 128), "keys per CTA: 64 per warpgroup, or 64 shared (SPLIT_D)");

constexpr u32 KV_BYTES = BN * D * 2, QD_BYTES = BM * D * 2, DST_BYTES = BN * BM * 2;
// dQ leaves through shared memory: once both warpgroups' products of step i
// are done, each thread puts its part of scale * dQ_i into the step's Q/dO
// buffer (Q then dO, contiguous: Br x D fp32 fills both), laid out as the Br
// rows of dq_accum (launch.py: (batch, head, rows, D), or (head, total_q + Br,
// D) for varlen), row r holding its 8-column group c at c ^ (r % 8), r counted
// in dq_accum: the stores are free of bank conflicts and bwd_convert.cu undoes
// the swizzle (BwdSm90Spec.swizzled_dq_accum). After the next barrier warp 0
// adds the block with one bulk reduction (pipeline.cuh), which must have read
// it before block i+2 is loaded there. Rows past seqlen_q add exact zeros (Q
// and dO load as zeros, L2 = +inf there: P = dS = 0), columns past head_dim
// too (K's are zero); whole-block reductions instead of per-element ones from
// registers took the warps' load/store queue off the critical path.
constexpr u32 DQ_BYTES = BM * D * 4;
constexpr int DQ_SWIZZLE = 8;
static_assert(DQ_BYTES == 2 * QD_BYTES && D % 64 == 0, "a dQ block fills one Q/dO buffer; the swizzle stays within 64 columns");
// The exchange region: dS^T (16-bit); under SPLIT_D also P^T (16-bit).
constexpr u32 XCHG_BYTES = SPLIT_D ? 2 * DST_BYTES : DST_BYTES;
static_assert(KV_BYTES % 1024 == 0 && QD_BYTES % 1024 == 0 && DST_BYTES % 1024 == 0, "1024-byte aligned tiles");

extern "C" __global__ void __launch_bounds__(THREADS, 1) cuflash_bwd_sm90(const __grid_constant__ BwdTmaParams p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u32 base;  // shared-window address of smem
    unsigned char* smem = smem_aligned_1024(smem_raw, base);
    const u32 sK = base;                  // (BN, D)
    const u32 sV = sK + KV_BYTES;         // (BN, D)
    const u32 sQdO = sV + KV_BYTES;       // [2] {Q (BM, D), dO (BM, D)}, or the buffer's fp32 dQ block (BM, D)
    auto sQ = [&](int buf) { return sQdO + (u32)buf * DQ_BYTES; };
    auto sdO = [&](int buf) { return sQdO + (u32)buf * DQ_BYTES + QD_BYTES; };
    const u32 sdSt = sQdO + 2 * DQ_BYTES;  // (BN keys, BM queries), queries contiguous
    const u32 sPt = sdSt + DST_BYTES;     // SPLIT_D: P^T, as dS^T
    float* sLse2 = reinterpret_cast<float*>(smem + (sdSt + XCHG_BYTES - base));  // [2][BM]
    float* sDelta = sLse2 + 2 * BM;                                             // [2][BM]
    const u32 full0 = smem_addr(sDelta + 2 * BM);  // [2] mbarriers: Q/dO buffer b's TMA copies have landed
    auto full = [&](int buf) { return full0 + 8u * (u32)buf; };
    float* sSinkPart = sDelta + 2 * BM + 4;  // [THREADS] (SINK) softmax.cuh sink_log2
    const u32 sLse2_addr = smem_addr(sLse2), sDelta_addr = smem_addr(sDelta);

    const int tid = threadIdx.x, lane = tid % 32;
    const int wg = tid / 128, warp_in_wg = (tid / 32) % 4;
    const int n_block = dq_key_block<DETERMINISTIC>();  // mask.cuh
    const int key0 = n_block * BN;
    const int warp_key0 = (SPLIT_D ? 0 : wg * 64) + warp_in_wg * 16;  // first key of this warp within the block
    const int kv_col0 = SPLIT_D ? wg * KV_COLS : 0;                    // first dK/dV column of this warpgroup
    const int q_off = SPLIT_D ? wg * NQ : 0;                           // first query of this warpgroup's S^T
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

    // TMA loads (never varlen: past a sequence's end a box would read the next one's rows, where
    // cp.async reads zeros). Buffer b's barrier completes a phase per block loaded into it.
    const bool tma = !CUFLASH_VARLEN && p.tma;
    if (tma && tid == 0) {
        mbar_init(full(0), 1);
        mbar_init(full(1), 1);
        mbar_init_fence();
    }
    // The barriers are initialised before thread 0 arrives on one or any thread waits.
    if (tma) __syncthreads();

    // Thread 0: block m's Q and dO by their tensor maps and its L2 and D (padded by bwd_prepare to
    // m_blocks * Br rows: whole) as plain bulk copies into buffer buf, arriving on its barrier once
    // with every byte to come (`extra`: K and V, copied with the first block).
    auto tma_query_block = [&](int m, int buf, u32 extra) {
        mbar_arrive_expect_tx(full(buf), 2 * QD_BYTES + 2 * BM * 4 + extra);
        tma_load_tile<BM, D, AW>(sQ(buf), p.tma_q, m * BM, si.h, si.b, full(buf));
        tma_load_tile<BM, D, AW>(sdO(buf), p.tma_do, m * BM, si.h, si.b, full(buf));
        bulk_load(sLse2_addr + (u32)(buf * BM * 4), rows.lse2 + (i64)m * BM, BM * 4, full(buf));
        bulk_load(sDelta_addr + (u32)(buf * BM * 4), rows.delta + (i64)m * BM, BM * 4, full(buf));
    };
    auto load_query_block = [&](int m, int buf) {
        if (tma) {
            if (tid == 0) tma_query_block(m, buf, 0);
            return;
        }
        load_tile_swizzled<BM, D, THREADS, AW>(sQ(buf), rows.q, p.q_row_stride, m * BM, si.seqlen_q, p.head_dim, tid);
        load_tile_swizzled<BM, D, THREADS, AW>(sdO(buf), rows.dout, p.do_row_stride, m * BM, si.seqlen_q, p.head_dim,
                                               tid);
        // L2 and D are padded to m_blocks * Br rows by bwd_prepare: read whole.
        if (tid < BM / 4) {
            cp_async_16(sLse2_addr + (u32)((buf * BM + tid * 4) * 4), rows.lse2 + (i64)m * BM + tid * 4, true);
            cp_async_16(sDelta_addr + (u32)((buf * BM + tid * 4) * 4), rows.delta + (i64)m * BM + tid * 4, true);
        }
    };

    // Warp 0: the bulk reduction of dQ block m, staged in buffer buf (see "dQ"
    // above), after the barrier that followed the staging. Deterministic: in
    // this CTA's turn among the key blocks that add to block m (mask.cuh
    // dq_key_block: the order, and why it cannot deadlock); the turn passes
    // once the sums are in memory (dq_done).
    auto add_dq = [&](int m, int buf) {
        if (DETERMINISTIC) warp_turn_wait(p.dq_semaphore + si.row_stat(p.nheads, p.m_blocks) + m,
                                          vis.dq_turn<BN>(m * BM, BM, n_block));
        if (lane == 0) bulk_reduce_add_f32(rows.dq_accum + (i64)(m * BM) * p.dqa_row_stride, sQ(buf), DQ_BYTES);
        bulk_commit();
    };
    // Warp 0: the reduction of block m has read its buffer (deterministic: has
    // completed, and the turn is passed on).
    auto dq_done = [&](int m) {
        if (DETERMINISTIC) {
            bulk_wait_all<false>();
            warp_turn_pass(p.dq_semaphore + si.row_stat(p.nheads, p.m_blocks) + m);
        } else {
            bulk_wait_all<true>();
        }
    };

    float acc_dk[DT][4], acc_dv[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dk[dt][e] = acc_dv[dt][e] = 0.f;
    if (SINK) sSinkPart[tid] = 0.f;  // this thread's slot: no other thread reads it before the epilogue's barrier

    // When no query sees a key of this block (seqlen_q = 0, or a window that
    // misses it) the loop is empty and dK = dV = 0 are written.
    if (m_begin < m_end && tma) {
        if (tid == 0) {
            tma_query_block(m_begin, 0, 2 * KV_BYTES);
            tma_load_tile<BN, D, AW>(sK, p.tma_k, key0, si.h_kv, si.b, full(0));
            tma_load_tile<BN, D, AW>(sV, p.tma_v, key0, si.h_kv, si.b, full(0));
        }
    } else if (m_begin < m_end) {
        load_tile_swizzled<BN, D, THREADS, AW>(sK, rows.k, p.k_row_stride, key0, si.seqlen_k, p.head_dim, tid);
        load_tile_swizzled<BN, D, THREADS, AW>(sV, rows.v, p.v_row_stride, key0, si.seqlen_k, p.head_dim, tid);
        load_query_block(m_begin, 0);
        cp_async_commit();
    }

    for (int m = m_begin; m < m_end; ++m) {
        const int buf = (m - m_begin) & 1;
        const int row0 = m * BM;
        // Block m (and the first time K, V) has landed: TMA's copies once the
        // buffer's barrier completes their phase (async-proxy writes, which
        // wgmma reads without a fence); cp.async's for this thread, the fence
        // making them visible to wgmma and the barrier publishing every
        // thread's (a bias's prefetched tile is a cp.async group either way).
        // The barrier also guarantees that every warpgroup finished step m-1
        // (its products read sdSt) and staged its part of dQ_{m-1} in buffer
        // buf ^ 1 (each thread fenced its stores for the async proxy).
        if (tma) mbar_wait(full(buf), ((m - m_begin) >> 1) & 1);
        cp_async_wait<0>();
        if (!tma) fence_proxy_async();
        __syncthreads();
        if (warp_in_wg == 0 && wg == 0 && m > m_begin) add_dq(m - 1, buf ^ 1);
        const u32 q_buf = sQ(buf), do_buf = sdO(buf);
        // Tile addresses for this step's descriptors (wgmma.cuh opaque).
        const u32 sK_ = opaque(sK), sV_ = opaque(sV), sdSt_ = opaque(sdSt);

        const u32 sPt_ = opaque(sPt);
        const bool need_mask = vis.needs_mask(row0, BM, key0, BN);

        // S^T = K Q^T and dP^T = V dO^T: this warpgroup's 64 keys (rows
        // wg*64.., or the Bc = 64 under SPLIT_D) x its NQ queries (q_off..), the
        // S^T product onto the bias (score_mod.cuh BIAS_IN_ACC; written before
        // the wgmma_fence), else overwriting it. One committed group.
        float acc_s[1][NT][4], acc_dp[1][NT][4];
        if (ScoreMod::BIAS_IN_ACC) mod.init<true>(acc_s, key0 + warp_key0, row0 + q_off, lane);
        wgmma_fence();
        issue_keys_by_queries<BN, BM, D, AW, ScoreMod::BIAS_IN_ACC, NQ>(acc_s[0], sK_, SPLIT_D ? 0 : wg * 64, q_buf,
                                                                       q_off);
        issue_keys_by_queries<BN, BM, D, AW, false, NQ>(acc_dp[0], sV_, SPLIT_D ? 0 : wg * 64, do_buf, q_off);
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(acc_s[0]);
        fence_regs(acc_dp[0]);
        // Score modifier, mask (boundary blocks), then P^T and dS^T in place
        // (acc_s becomes P^T, acc_dp dS^T; softmax.cuh). Element (nt, 2hh+j):
        // key warp_key0 + hh*8 + g, query q_off + nt*8 + 2t + j.
        if (ScoreMod::ACTIVE) mod.apply<true>(acc_s, key0 + warp_key0, row0 + q_off, lane);
        if (need_mask) vis.apply<true>(acc_s, key0 + warp_key0, row0 + q_off, lane);
        const float sink_part =
            softmax_backward_t<true>(acc_s, acc_dp, sLse2 + buf * BM + q_off, sDelta + buf * BM + q_off, p.scale_log2, mod,
                               drop, dbias, sink_log2(p, si), key0 + warp_key0, row0 + q_off, lane);
        if (SINK) sSinkPart[tid] += sink_part;
        // This warp's rows of a (64 keys x NQ queries) tile -> shared memory,
        // 16-bit, swizzled [key][query], queries q_off...
        auto store_keys_by_queries = [&](u32 tile, const float (&x)[1][NT][4]) {
            ::store_keys_by_queries<BN, BM, NQ>(smem + (tile - base), x[0], warp_key0, lane, q_off);
        };
        // Block m+1 into buffer buf ^ 1, after the barrier by which warp 0's
        // reduction of dQ_{m-1} has read it (dq_done before the barrier).
        auto load_next = [&]() {
            if (m + 1 < m_end) {
                load_query_block(m + 1, buf ^ 1);
                cp_async_commit();
                mod.prefetch<BM, BN, THREADS>((m + 1) * BM, key0, tid);  // the bias of block m+1 (score_mod.cuh)
            }
        };
        // dQ_i[:, wg*DQ_COLS ..] = dS K over the BN keys: M = BM queries (A = dS,
        // read transposed from dS^T), N = DQ_COLS (B = K read transposed).
        float acc_dq[DQ_COLS / 8][4];
        auto issue_dq = [&]() {
            issue_queries_by_cols<BN, BM, D, AW, DQ_COLS>(acc_dq, sdSt_, sK_, wg * DQ_COLS);
            wgmma_commit();
        };

        if constexpr (!SPLIT_D) {
            // P^T as A fragments (k-step kk = queries 16kk..16kk+15 = n8 tiles
            // 2kk, 2kk+1); dS^T into shared memory, where dK and dQ read it.
            u32 pt[NQ / 16][4];  // NQ = BM here
            pack_a_fragments(acc_s[0], pt);
            store_keys_by_queries(sdSt, acc_dp);

            // dV += P^T dO: (64 keys x D) per warpgroup, over BM queries; B = dO read transposed.
            fence_regs(acc_dv);
            wgmma_fence();
            issue_keys_by_cols<NQ, D, AW, KV_COLS>(acc_dv, pt, do_buf);
            wgmma_commit();

            // dS^T of both warpgroups is in shared memory (and visible to wgmma)
            // before dK and dQ read it.
            fence_proxy_async();
            if (warp_in_wg == 0 && wg == 0 && m > m_begin) dq_done(m - 1);
            __syncthreads();
            load_next();

            // dK += dS^T Q: A = this warpgroup's 64 rows of dS^T (K-major: queries
            // contiguous), B = Q read transposed.
            fence_regs(acc_dk);
            wgmma_fence();
            issue_keys_by_cols<BN, BM, D, AW, KV_COLS>(acc_dk, sdSt_, wg * 64, q_buf);
            wgmma_commit();
            issue_dq();
            wgmma_wait<0>();
            fence_regs(pt);  // operands of the dV product: alive until it completed
        } else {
            // P^T and dS^T of this warpgroup's queries -> shared memory; then
            // both (all Br queries, both warpgroups' halves) are there and
            // visible to wgmma before either warpgroup's products read them.
            store_keys_by_queries(sPt, acc_s);
            store_keys_by_queries(sdSt, acc_dp);
            fence_proxy_async();
            if (warp_in_wg == 0 && wg == 0 && m > m_begin) dq_done(m - 1);
            __syncthreads();
            load_next();

            // dV[:, kv_col0..] += P^T dO and dK[:, kv_col0..] += dS^T Q over BM
            // queries: A from shared memory (K-major), B = dO / Q read transposed.
            fence_regs(acc_dv);
            fence_regs(acc_dk);
            wgmma_fence();
            issue_keys_by_cols<BN, BM, D, AW, KV_COLS>(acc_dv, sPt_, 0, do_buf, kv_col0);
            issue_keys_by_cols<BN, BM, D, AW, KV_COLS>(acc_dk, sdSt_, 0, q_buf, kv_col0);
            wgmma_commit();
            issue_dq();
            wgmma_wait<0>();
        }
        fence_regs(acc_dq);
        fence_regs(acc_dv);
        fence_regs(acc_dk);

        // Both warpgroups' products of step m have read Q and dO of buffer buf.
        __syncthreads();
        // scale * dQ_m -> buffer buf (see "dQ" above): this warp's 16 rows,
        // this warpgroup's DQ_COLS columns; the block's first row in dq_accum is
        // si.q_start + row0.
        store_dq_rows<DQ_COLS, D, DQ_SWIZZLE>(reinterpret_cast<float*>(smem + (sQ(buf) - base)), acc_dq, p.scale,
                                              warp_in_wg * 16, wg * DQ_COLS, si.q_start + row0, lane);
        // The bulk reduction reads the block through the async proxy.
        fence_proxy_async();
    }

    // 3. Epilogue: dK = scale * acc_dk, dV = acc_dv. Every warpgroup is past
    // its last product reading sK/sV before they are reused to stage dK and dV,
    // and has staged its part of the last dQ block, which warp 0 adds.
    __syncthreads();
    if (warp_in_wg == 0 && wg == 0 && m_begin < m_end) {
        add_dq(m_end - 1, (m_end - 1 - m_begin) & 1);
        if (DETERMINISTIC) dq_done(m_end - 1);
    }
    // dsink's part of this CTA (softmax.cuh sink_log2): sLse2 is free, its last
    // read precedes the barrier above.
    if (SINK) block_sum_store<THREADS>(sSinkPart[tid], sLse2, p.dsink_part + cta_slot());
    const float dk_scale[1][2] = {{p.scale, p.scale}}, dv_scale[1][2] = {{1.f, 1.f}};

    if (p.dk_accum == nullptr) {
        // dK -> sK, dV -> sV as 16-bit swizzled [key][d], then 16-byte stores of whole rows.
        auto swizzled = [](int r, int col) { return swizzled_offset<BN, D, AW>(r, col); };
        unsigned char* sK_bytes = smem + (sK - base);
        unsigned char* sV_bytes = smem + (sV - base);
        stage_tile(sK_bytes, swizzled, as_tile(acc_dk), dk_scale, warp_key0, kv_col0, lane);
        stage_tile(sV_bytes, swizzled, as_tile(acc_dv), dv_scale, warp_key0, kv_col0, lane);
        // The 16-byte reads below cover rows other warps wrote.
        __syncthreads();
        u16* dk = si.key_rows(static_cast<u16*>(p.dk), p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
        u16* dv = si.key_rows(static_cast<u16*>(p.dv), p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
        store_staged_rows<BN, D>(dk, p.dk_row_stride, sK_bytes, swizzled, key0, si.seqlen_k, p.head_dim, tid, THREADS);
        store_staged_rows<BN, D>(dv, p.dv_row_stride, sV_bytes, swizzled, key0, si.seqlen_k, p.head_dim, tid, THREADS);
    } else {
        // GQA: fp32 per query head; bwd_convert.cu adds the group in a fixed order.
        float* dka = si.key_rows_of_query_head(p.dk_accum, p.dka_batch_stride, p.dka_row_stride, p.dka_head_stride);
        float* dva = si.key_rows_of_query_head(p.dv_accum, p.dka_batch_stride, p.dka_row_stride, p.dka_head_stride);
        write_f32_tile<false>(dka, p.dka_row_stride, as_tile(acc_dk), p.scale, key0 + warp_key0, kv_col0, si.seqlen_k,
                              p.head_dim, lane);
        write_f32_tile<false>(dva, p.dka_row_stride, as_tile(acc_dv), 1.f, key0 + warp_key0, kv_col0, si.seqlen_k,
                              p.head_dim, lane);
    }
    // Warp 0's last bulk reduction completes before the kernel does.
    if (warp_in_wg == 0 && wg == 0) bulk_wait_all<false>();
}
