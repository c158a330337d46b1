// bwd_sm90_ws.cu: exact attention backward, the warp-specialised Hopper path
// (sm_90a: a producer warpgroup loads and reduces dQ, two consumer warpgroups
// run only wgmma and the elementwise recompute; FlashAttention-3's schedule).
//
// Computes what bwd_sm90.cu computes (FlashAttention-2, Algorithm 2, P
// recomputed from the forward's lse), with the same parameters, preprocess
// (bwd_prepare.cu) and conversions (bwd_convert.cu). For one (batch b, query
// head h, kv head h_kv) and a block of Bc = 128 keys, with Q, dO: (Sq, d),
// K_j, V_j: (Bc, d):
//   dV_j = sum_i P_ij^T dO_i,  dK_j = scale * sum_i dS_ij^T Q_i,  dQ_i += scale * dS_ij K_j
// (bwd_sm90.cu's header has P, dP and dS; score modifier, mask, sink and dropout
// as there, through the same helpers).
//
// Warpgroups (128 threads each): warpgroup 0 is the producer, warpgroups 1 and
// 2 the consumers, consumer c owning keys 64c..64c+63 of the block. The query
// blocks i that see a key of the block (mask.cuh query_blocks) are visited in
// ascending order; the u-th of them lives in slot u % STAGES (pipeline.cuh).
//   Producer (setmaxnreg down to PRODUCER_REGS):
//     warps 0-1 (loaders; warp 0 K_j, Q_i, L2_i, warp 1 V_j, dO_i, D_i): cp.async
//       K_j, V_j once; then per query block Q_i, dO_i (Br x D each, swizzled,
//       copy.cuh), L2_i and D_i into the block's slot as soon as the consumers
//       freed it; each copy signals the slot's full barrier when it lands. Or
//       (p.tma: tensor maps of q, k, v, dout, cuflash/tma.py; dense batches) thread
//       0 alone issues TMA copies of the tiles and bulk copies of L2_i and D_i.
//       Varlen with maps: the loaders copy all but Q_i, dO_i of a block inside its
//       sequence, which warp 3 loads by TMA.
//     warp 2 (dQ writer): per query block, once the consumers have put
//       scale * dS_i K_j (Br x D, fp32) into the dQ buffer, adds it to
//       dq_accum with a bulk reduction (cp.reduce.async.bulk .add.f32, performed
//       at L2; dq_accum is laid out (batch, head, row, DQ_ROW), so a block's rows are
//       one contiguous range), and frees the buffer when the reductions have read it.
//       Varlen: the rows of a sequence's last block past its end are the next
//       sequence's first rows (or spare rows after the last sequence); their dQ
//       is exactly zero (their Q and dO load as zeros and lse_log2 = +inf, so P
//       and dS are 0), and adding zero changes no bit of a sum, so that block
//       too is one reduction.
//       Deterministic: in a fixed key-block order (mask.cuh dq_key_block; held by this warp
//       alone, so the consumers never wait for other CTAs).
//     warp 3: with an additive bias, per query block its Br x Bc tile (queries x
//       this CTA's keys) into a ring of BIAS_STAGES tiles (bias_tile.cuh), as soon
//       as the consumers freed the stage; varlen with maps, its lane 0 loads Q_i and
//       dO_i of each block inside the sequence by TMA (a box past the end would read
//       the next sequence's rows); otherwise nothing.
//   Consumers (setmaxnreg up to CONSUMER_REGS), per query block i:
//     S^T = K Q^T, dP^T = V dO^T (64 keys x Br per consumer); modifier (a bias
//     from its staged tile by ldmatrix.trans, then freeing the stage), mask;
//     P^T and dS^T in registers (softmax.cuh); dS^T -> shared memory;
//     dV += P^T dO (A = P^T from registers); dK += dS^T Q; dQ_i (Br x D/2 per
//     consumer, columns c*D/2..) = dS K over the Bc keys, which reads both
//     consumers' dS^T; free the slot; put scale * dQ_i in a dQ buffer once the
//     writer freed it. Two schedules (CUFLASH_PINGPONG):
//     lockstep (d = 128): a block at a time, the consumers meeting at a named
//       barrier once both stored dS^T (two dS^T buffers, one dQ buffer);
//     ping-pong (d = 64): the consumers take turns to issue; in turn u a consumer
//       issues S^T, dP^T of block u, dV, dK of block u - 1 and dQ of block u - 2,
//       then recomputes block u while those and the other consumer's products
//       run (four dS^T buffers, two dQ buffers, three slots; the loop says why).
//     Either way the consumers' fp32 stores of dQ fall on distinct banks: the
//     ping-pong dQ buffers and dq_accum hold row r's 8-column group c at c ^ 8 (r % 8)
//     (DQ_SWIZZLE), the lockstep ones rows of D + 8 floats (DQ_ROW).
//   Epilogue: dK *= scale; dK, dV staged through sK / sV (16-bit) or, under
//     GQA, fp32 per query head into dk_accum / dv_accum (bwd_convert.cu sums).
//
// Compile-time constants (cuflash/specs.py BwdSm90Spec with stages > 0):
// CUFLASH_DTYPE, CUFLASH_HEAD_DIM D (64 or 128; columns >= the run-time d are
// zero-filled and never stored), CUFLASH_BLOCK_N Bc = 128, CUFLASH_STAGES,
// CUFLASH_PINGPONG, CUFLASH_DQ_PAD (8 lockstep, 0 ping-pong), CUFLASH_DETERMINISTIC, and
// the features CUFLASH_MASK, CUFLASH_SOFTCAP, CUFLASH_ALIBI, CUFLASH_SINK, CUFLASH_DROPOUT,
// CUFLASH_VARLEN (seqinfo.cuh).
// Br = 64, 384 threads. CUFLASH_BIAS (16 only, dense, without softcap) with CUFLASH_BIAS_STAGES;
// a float32, varlen or softcapped bias runs on bwd_sm90.cu, as does D = 256 (its split of the columns).
// Memory: nothing of size seqlen_q x seqlen_k. Constraints: as bwd.cu; the
// dq_accum rows (D fp32) are 16-byte aligned and DQ_ROW floats apart, with m_blocks * Br
// rows per (batch, head), or for varlen total_q + Br rows per head (cuflash/launch.py
// allocates them so).
// Shared memory (cuflash/launch.py bwd_smem_bytes): 2 Bc D (K, V) + 2 STAGES Br D
// (Q, dO) + DS_BUFFERS Bc Br (dS^T) 16-bit elements, DQ_BUFFERS Br DQ_ROW fp32 (dQ),
// 8 STAGES Br bytes (L2, D), with a bias BIAS_STAGES Br Bc 16-bit elements, 4 bytes
// per consumer thread with a sink, 8 bytes per mbarrier (1 + 2 DQ_BUFFERS + 2 STAGES,
// with a bias 2 BIAS_STAGES more), 8 bytes for the dQ turns and 1 KB alignment slack.
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/copy.cuh"
#include "common/wgmma.cuh"
#include "common/pipeline.cuh"
#include "common/atomic.cuh"
#include "common/seqinfo.cuh"
#include "common/mask.cuh"
#include "common/score_mod.cuh"
#include "common/softmax.cuh"
#include "common/epilogue.cuh"
#include "common/bias_tile.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BM = 64;                 // Br: queries per step
constexpr int BN = CUFLASH_BLOCK_N;    // Bc: keys per CTA
constexpr int STAGES = CUFLASH_STAGES;
constexpr bool DETERMINISTIC = CUFLASH_DETERMINISTIC;
constexpr bool PINGPONG = CUFLASH_PINGPONG;      // the consumers' schedule (top of the file)
constexpr int DS_BUFFERS = PINGPONG ? 4 : 2;     // dS^T buffers (why four: the ping-pong loop)
constexpr int DQ_BUFFERS = PINGPONG ? 2 : 1;     // fp32 dQ blocks handed to the writer
constexpr int THREADS = 384;
constexpr int CONSUMERS = 256;         // threads of the two consumer warpgroups
constexpr int LOADERS = 64;            // producer warps 0-1
constexpr int DQ_WARP = 2;             // the producer's warp that reduces dQ
constexpr int DQ_COLS = D / 2;         // dQ columns per consumer
constexpr int AW = CUFLASH_SWIZZLE_ATOM;  // swizzle atom (specs.py BwdSm90Spec.swizzle_atom): each consumer's half of a tile starts on one
static_assert(DQ_COLS % AW == 0 && (AW == 64 || AW == 32), "a consumer's columns start on a swizzle atom");
constexpr int NT = BM / 8;             // n8 tiles of S^T per warp (queries)
constexpr int DT = D / 8;              // n8 tiles of dK, dV per warp
static_assert(D == 64 || D == 128, "head dims of this kernel (d = 256 runs on bwd_sm90.cu)");
static_assert(BN == 128 && STAGES >= 2, "64 keys per consumer warpgroup; a ring of at least two slots");
static_assert(!PINGPONG || STAGES >= 3, "ping-pong holds a block's slot until the next step's products: three slots");
// An additive bias (16-bit, dense, no softcap: softcap's derivative reads the bias again) is staged
// per query block in shared memory by producer warp 3 (bias_tile.cuh); others run on bwd_sm90.cu
// (BwdSm90Spec.tiles).
static_assert(!BIAS || (CUFLASH_BIAS == 16 && !CUFLASH_VARLEN && !SOFTCAP), "a dense 16-bit bias without softcap");
#ifndef CUFLASH_BIAS_STAGES
#define CUFLASH_BIAS_STAGES 0
#endif
// Bias tiles (BM queries x BN keys) in flight (BwdSm90Spec.bias_stages): two where shared memory
// holds them (ping-pong, d = 64), else one, which the consumers free early in a block's recompute.
constexpr int BIAS_STAGES = BIAS ? CUFLASH_BIAS_STAGES : 1;  // 1 without a bias: never used, never 0
static_assert(!BIAS || BIAS_STAGES >= 1, "a bias needs its ring");
using Bias = BiasTile<BM, BN>;
constexpr u32 BIAS_BYTES = BIAS ? Bias::BYTES : 0;
constexpr int BIAS_WARP = 3;  // the producer's warp that copies the bias
constexpr int VARLEN_TMA_WARP = 3;  // varlen (which has no bias here): the warp that loads Q, dO by TMA

// Register split (from 168 each at launch): the consumers hold dK and dV of 64
// keys x D (2 D fp32 per thread) beside S^T, dP^T and dQ; 40 is what the
// producer's roles need without spilling (its loaders each hold one tile's pointers).
constexpr int PRODUCER_REGS = 40;
constexpr int CONSUMER_REGS = 232;
static_assert(register_split_fits<THREADS, PRODUCER_REGS, CONSUMER_REGS>(), "register split");
// The warpgroup index made warp-uniform (platform.cuh warp_uniform) at d64 only. Measured (H100,
// bench/NOTES.md v39): d64 1.6-2.7% faster at 2k; d128 even (its step loop 782 -> 734 instructions), and
// there its causal varlen kernels spill 16 bytes with it.
constexpr bool UNIFORM_WG = D <= 64;
// Dropout's keep words drawn by the ping-pong consumers while S^T and dP^T run
// (Dropout::draw_t, softmax_backward_t's `drawn`; bench/NOTES.md dr3): not beside softcap
// and the sink, where the words held through the products spilled (4-8 bytes, NVRTC 13.5).
constexpr bool KEEP_DRAWN_AHEAD = DROPOUT && !(SOFTCAP && SINK);

constexpr u32 KV_BYTES = BN * D * 2, QD_BYTES = BM * D * 2, DST_BYTES = BN * BM * 2;
// The fp32 dQ block, in the dQ buffer and in dq_accum alike (one bulk reduction copies it):
// rows of DQ_ROW floats. The consumers' float2 stores of rows g = 0..7, D floats apart, would
// fall on one bank group (an 8-way conflict, ncu). Two cures, by spec (specs.py BwdSm90Spec):
// - ping-pong: row r holds its 8-column group c at c ^ 8 (r % 8) (DQ_SWIZZLE; params.cuh
//   BwdConvertParams.src_swizzled undoes it), rows of D floats;
// - lockstep: rows of D + 8 floats (CUFLASH_DQ_PAD; the pad columns are never written, and
//   what the reduction adds to them is never read), so row g's stores start at bank 8g:
//   each half-warp's 16 stores on 32 distinct banks. The lockstep d = 128 consumers have no
//   register for the swizzle (4 bytes spilled); padded dq_accum rows at d = 64 measured 1%
//   slower than swizzled ones (12% more bytes reduced).
constexpr int DQ_SWIZZLE = PINGPONG ? 8 : 0;
constexpr int DQ_ROW = D + CUFLASH_DQ_PAD;
constexpr u32 DQ_BYTES = BM * DQ_ROW * 4;
static_assert(D % 64 == 0, "the dQ swizzle permutes columns within 64");
static_assert(CUFLASH_DQ_PAD == (PINGPONG ? 0 : 8), "one cure for the dQ stores' conflicts: padded or swizzled rows");
static_assert(KV_BYTES % 1024 == 0 && QD_BYTES % 1024 == 0 && DST_BYTES % 1024 == 0, "1024-byte aligned tiles");

// Named barriers over the 256 consumer threads.
constexpr int BAR_DS = 1;        // lockstep: both consumers' dS^T stored
constexpr int BAR_EPILOGUE = 2;  // epilogue staging
constexpr int BAR_TURN = 3;      // ping-pong: consumer c's turn to issue is barrier BAR_TURN + c

extern "C" __global__ void __launch_bounds__(THREADS, 1) cuflash_bwd_sm90(const __grid_constant__ BwdTmaParams p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u32 base;  // shared-window address of smem
    unsigned char* smem = smem_aligned_1024(smem_raw, base);
    const u32 sK = base;                        // (BN, D)
    const u32 sV = sK + KV_BYTES;               // (BN, D)
    const u32 sQ0 = sV + KV_BYTES;              // STAGES slots of Q (BM, D)
    const u32 sdO0 = sQ0 + STAGES * QD_BYTES;   // STAGES slots of dO (BM, D)
    const u32 sdSt0 = sdO0 + STAGES * QD_BYTES;      // [DS_BUFFERS] (BN keys, BM queries), queries contiguous
    const u32 sdQ0 = sdSt0 + DS_BUFFERS * DST_BYTES;  // [DQ_BUFFERS] (BM, DQ_ROW) fp32
    const u32 sB0 = sdQ0 + DQ_BUFFERS * DQ_BYTES;     // BIAS: [BIAS_STAGES] (BM queries, BN keys), bias_tile.cuh
    float* sLse2 = reinterpret_cast<float*>(smem + (sB0 + BIAS_STAGES * BIAS_BYTES - base));  // [STAGES][BM]
    float* sDelta = sLse2 + STAGES * BM;                                                   // [STAGES][BM]
    float* sSinkPart = sDelta + STAGES * BM;  // [CONSUMERS] (SINK) softmax.cuh sink_log2
    int* sTurn = reinterpret_cast<int*>(sSinkPart + (SINK ? CONSUMERS : 0));  // [2] DETERMINISTIC: dQ turn of each dQ buffer's block
    const u32 bars = smem_addr(sTurn + 2);  // mbarriers, 8 bytes each
    // kv_full, then dq_full and dq_empty per dQ buffer, then qdo_full and qdo_empty per slot.
    const u32 kv_full = bars;
    auto dq_full = [&](int b) { return bars + 8u * (1 + b); };
    auto dq_empty = [&](int b) { return bars + 8u * (1 + DQ_BUFFERS + b); };
    auto qdo_full = [&](int s) { return bars + 8u * (1 + 2 * DQ_BUFFERS + s); };
    auto qdo_empty = [&](int s) { return bars + 8u * (1 + 2 * DQ_BUFFERS + STAGES + s); };
    // BIAS: then b_full and b_empty per bias stage; block u's tile is in stage u % BIAS_STAGES.
    auto b_full = [&](int s) { return bars + 8u * (1 + 2 * DQ_BUFFERS + 2 * STAGES + s); };
    auto b_empty = [&](int s) { return bars + 8u * (1 + 2 * DQ_BUFFERS + 2 * STAGES + BIAS_STAGES + s); };
    auto sB = [&](int s) { return sB0 + (u32)s * BIAS_BYTES; };
    auto sQ = [&](int s) { return sQ0 + (u32)s * QD_BYTES; };
    auto sdO = [&](int s) { return sdO0 + (u32)s * QD_BYTES; };
    auto sdSt = [&](int u) { return sdSt0 + (u32)(u % DS_BUFFERS) * DST_BYTES; };
    auto sdQ = [&](int u) { return sdQ0 + (u32)(u % DQ_BUFFERS) * DQ_BYTES; };

    const int tid = threadIdx.x, lane = tid % 32;
    const int wg = warp_uniform<UNIFORM_WG>(tid / 128), warp_in_wg = warp_uniform<UNIFORM_WG>((tid / 32) % 4);
    const int n_block = dq_key_block<DETERMINISTIC>();  // mask.cuh
    const int key0 = n_block * BN;
    const SeqInfo si(p, blockIdx.z, blockIdx.y);
    if (key_block_past_end<SINK>(p, si, key0)) return;  // varlen: a key block no query sees
    // Query blocks [m_begin, m_begin + count) hold every query that sees a key of
    // this block; when none does (seqlen_q = 0, or a window that misses it) dK =
    // dV = 0 are written. (The consumers build their own Visibility: little stays
    // live into the producer's 40 registers.)
    int m_begin, count;
    {
        const int2 query_blocks = Visibility(p, si).query_blocks<BM>(key0, BN);
        m_begin = query_blocks.x, count = query_blocks.y - query_blocks.x;
    }

    // TMA loads. Dense: thread 0 alone issues them. Varlen: a box past a sequence's end would read
    // the next one's rows where cp.async reads zeros (which keep P and dS exactly 0 there; a
    // non-finite value in the next sequence would reach dV and dK through 0 * inf). So the loaders
    // copy K, V, the statistics and a sequence's last, partial block with cp.async, and with tensor
    // maps (p.tma) the TMA warp (VARLEN_TMA_WARP) loads Q and dO of each block inside the sequence,
    // one more arrival on every full phase of a slot.
    const bool tma = !CUFLASH_VARLEN && p.tma;
    const bool varlen_tma = CUFLASH_VARLEN && p.tma;
    // Arrivals that a full barrier's phase needs.
    const u32 loaders = tma ? 1 : LOADERS, slot_loaders = loaders + (varlen_tma ? 1 : 0);
    // Varlen with maps: Q and dO of the block at row0 by TMA (VARLEN_TMA_WARP), not by the loaders.
    auto qdo_by_tma = [&](int row0) { return varlen_tma && row0 + BM <= si.seqlen_q; };

    if (tid == 0) {
        mbar_init(kv_full, loaders);
        for (int b = 0; b < DQ_BUFFERS; ++b) {
            mbar_init(dq_full(b), CONSUMERS);
            mbar_init(dq_empty(b), 32);
        }
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(qdo_full(s), slot_loaders);
            mbar_init(qdo_empty(s), CONSUMERS);
        }
        for (int s = 0; s < (BIAS ? BIAS_STAGES : 0); ++s) {
            mbar_init(b_full(s), 32);  // the bias warp's threads
            mbar_init(b_empty(s), CONSUMERS);
        }
        mbar_init_fence();
    }
    // The barriers are initialised before any thread arrives on or waits for one.
    __syncthreads();

    if (wg == 0) {
        // ---- Producer.
        setmaxnreg_dec<PRODUCER_REGS>();
        const int warp = tid / 32;
        if (tma && warp < 2) {
            // One thread issues every copy: K and V once, then per block Q and dO by their tensor
            // maps and L2 and D (padded rows: whole) as plain bulk copies, arriving once on a full
            // barrier with the bytes to come.
            if (tid == 0 && count > 0) {
                mbar_arrive_expect_tx(kv_full, 2 * KV_BYTES);
                tma_load_tile<BN, D, AW>(sK, p.tma_k, key0, si.h_kv, si.b, kv_full);
                tma_load_tile<BN, D, AW>(sV, p.tma_v, key0, si.h_kv, si.b, kv_full);
                const float* lse2 = p.lse_log2 + si.bwd_stat_row0(p);
                const float* delta = p.delta + si.bwd_stat_row0(p);
#pragma unroll 1
                for (int u = 0; u < count; ++u) {
                    const int s = u % STAGES, row0 = (m_begin + u) * BM;
                    const u32 full = qdo_full(s);
                    mbar_wait(qdo_empty(s), ((u / STAGES) & 1) ^ 1);
                    mbar_arrive_expect_tx(full, 2 * QD_BYTES + 2 * BM * 4);
                    tma_load_tile<BM, D, AW>(sQ(s), p.tma_q, row0, si.h, si.b, full);
                    tma_load_tile<BM, D, AW>(sdO(s), p.tma_do, row0, si.h, si.b, full);
                    bulk_load(smem_addr(sLse2 + s * BM), lse2 + row0, BM * 4, full);
                    bulk_load(smem_addr(sDelta + s * BM), delta + row0, BM * 4, full);
                }
            }
            // No wait before leaving: the consumers wait for these copies, and the CTA lives on with them.
        } else if (warp < 2 && count > 0) {
            // Warp 0 loads K, then Q and L2 of each block; warp 1 V, then dO and D.
            const bool second = warp == 1;
            const u16 *q, *k, *v;
            si.qkv_rows(p, q, k, v);
            const u16* rows = second ? si.dout_rows<u16>(p) : q;
            const i64 row_stride = second ? p.do_row_stride : p.q_row_stride;
            const float* stat = (second ? p.delta : p.lse_log2) + si.bwd_stat_row0(p);
            const u32 s_rows = second ? sdO0 : sQ0;
            const u32 s_stat = smem_addr(second ? sDelta : sLse2);
            load_tile_swizzled<BN, D, 32, AW, true>(second ? sV : sK, second ? v : k,
                                                     second ? p.v_row_stride : p.k_row_stride, key0, si.seqlen_k,
                                                     p.head_dim, lane);
            cp_async_arrive(kv_full);
#pragma unroll 1
            for (int u = 0; u < count; ++u) {
                const int s = u % STAGES, row0 = (m_begin + u) * BM;
                mbar_wait(qdo_empty(s), ((u / STAGES) & 1) ^ 1);
                if (!qdo_by_tma(row0))
                    load_tile_swizzled<BM, D, 32, AW, true>(s_rows + (u32)s * QD_BYTES, rows, row_stride, row0,
                                                             si.seqlen_q, p.head_dim, lane);
                // L2 and D are padded to m_blocks * Br rows by bwd_prepare: read whole.
                if (lane < BM / 4) cp_async_16(s_stat + (u32)((s * BM + lane * 4) * 4), stat + row0 + lane * 4, true);
                cp_async_arrive(qdo_full(s));
            }
            // Leave only after this thread's copies landed: they belong to no commit
            // group yet (the mbarriers track them), so close one and wait for it.
            cp_async_commit();
            cp_async_wait<0>();
        } else if (warp == DQ_WARP) {
            float* dq_accum = si.dq_accum_rows(p);
#pragma unroll 1
            for (int u = 0; u < count; ++u) {
                const int m = m_begin + u, row0 = m * BM, buf = u % DQ_BUFFERS;
                mbar_wait(dq_full(buf), (u / DQ_BUFFERS) & 1);
                // Deterministic: this CTA's turn among those that add to block m (sTurn[buf]).
                int* turn = DETERMINISTIC ? p.dq_semaphore + si.row_stat(p.nheads, p.m_blocks) + m : nullptr;
                if (DETERMINISTIC) warp_turn_wait(turn, sTurn[buf]);
                if (lane == 0) {
                    // dq_accum is (batch, head, rows, DQ_ROW) here (launch.py): the block is
                    // BM * DQ_ROW contiguous floats, padding rows included (varlen: see the top
                    // of the file).
                    bulk_reduce_add_f32(dq_accum + (i64)row0 * p.dqa_row_stride, sdQ(u), DQ_BYTES);
                }
                bulk_commit();
                if (DETERMINISTIC) {
                    bulk_wait_all<false>();  // the sums are in memory before the next CTA's turn
                    warp_turn_pass(turn);
                } else {
                    bulk_wait_all<true>();  // the buffer has been read
                }
                mbar_arrive(dq_empty(buf));
            }
            // The reductions complete before the kernel does.
            bulk_wait_all<false>();
        } else if (CUFLASH_VARLEN && warp == VARLEN_TMA_WARP) {
            // Varlen with tensor maps (their rows every sequence's, as one batch): Q and dO of each
            // block inside the sequence by TMA, the loaders' cp.async for the last, partial one.
            if (varlen_tma && lane == 0) {
#pragma unroll 1
                for (int u = 0; u < count; ++u) {
                    const int s = u % STAGES, row0 = (m_begin + u) * BM;
                    const u32 full = qdo_full(s);
                    mbar_wait(qdo_empty(s), ((u / STAGES) & 1) ^ 1);
                    if (qdo_by_tma(row0)) {
                        mbar_arrive_expect_tx(full, 2 * QD_BYTES);
                        tma_load_tile<BM, D, AW>(sQ(s), p.tma_q, si.q_start + row0, si.h, 0, full);
                        tma_load_tile<BM, D, AW>(sdO(s), p.tma_do, si.q_start + row0, si.h, 0, full);
                    } else {
                        mbar_arrive(full);
                    }
                }
            }
        } else if (BIAS && warp == BIAS_WARP) {
            // Block u's bias tile (its queries x this CTA's keys) once the consumers freed the stage.
#pragma unroll 1
            for (int u = 0; u < count; ++u) {
                const int s = u % BIAS_STAGES;
                mbar_wait(b_empty(s), ((u / BIAS_STAGES) & 1) ^ 1);
                if (Bias::template copy<32>(sB(s), p, si, (m_begin + u) * BM, key0, lane)) cp_async_arrive(b_full(s));
                else mbar_arrive(b_full(s));
            }
            cp_async_commit();  // as the loaders: leave once this thread's copies landed
            cp_async_wait<0>();
        }
        return;
    }

    // ---- Consumers.
    setmaxnreg_inc<CONSUMER_REGS>();
    const int c = wg - 1, ctid = tid - 128;       // consumer index, thread within the consumers
    const int warp_key0 = c * 64 + warp_in_wg * 16;  // first key of this warp within the block
    const Visibility vis(p, si);
    const ScoreMod mod(p, si);
    const Dropout drop(p, si.b, si.h, SeedReadOnce{});  // used under CUFLASH_DROPOUT only
    const BiasGrad dbias(p, si);        // used under CUFLASH_BIAS only
    // BIAS: this lane's ldmatrix.trans address in a staged bias tile and the step to its next 16 queries.
    const bool one_row = BIAS && p.bias_row_stride == 0;
    const u32 bias_lane = BIAS ? Bias::lane_offset_t(warp_key0, lane, one_row) : 0u;
    const float sink2 = sink_log2(p, si);

    float acc_dk[DT][4], acc_dv[DT][4];
    zero_acc(as_tile(acc_dk));
    zero_acc(as_tile(acc_dv));
    if (SINK) sSinkPart[ctid] = 0.f;  // this thread's slot: no other thread reads it before the epilogue's barrier
    if (count > 0) mbar_wait(kv_full, 0);

    // The steps of a query block u (slot u % STAGES, row0 its first query), shared
    // by both schedules below. Tile addresses go through opaque() (wgmma.cuh).
    auto row0_of = [&](int u) { return (m_begin + u) * BM; };
    // S^T = K Q^T and dP^T = V dO^T: this warpgroup's 64 keys x BM queries.
    auto issue_scores = [&](float (&acc_s)[1][NT][4], float (&acc_dp)[1][NT][4], int u) {
        const int s = u % STAGES;
        issue_keys_by_queries<BN, BM, D, AW, false>(acc_s[0], opaque(sK), c * 64, opaque(sQ(s)));
        issue_keys_by_queries<BN, BM, D, AW, false>(acc_dp[0], opaque(sV), c * 64, opaque(sdO(s)));
    };
    // Modifier, mask (boundary blocks), then P^T and dS^T in place (acc_s becomes
    // P^T, acc_dp dS^T; softmax.cuh). Element (nt, 2hh+j): key warp_key0 + hh*8 + g,
    // query nt*8 + 2t + j. dS^T goes to shared memory, 16-bit swizzled [key][query],
    // where dK and dQ read it.
    // keep: dropout's keep words of the tile, drawn ahead (Dropout::draw_t), or nullptr.
    auto recompute = [&](float (&acc_s)[1][NT][4], float (&acc_dp)[1][NT][4], int u, const u32 (*keep)[NT / 2]) {
        const int s = u % STAGES, row0 = row0_of(u);
        if (ScoreMod::ACTIVE) mod.apply<true, true>(acc_s, key0 + warp_key0, row0, lane);
        if (BIAS) {  // after ALiBi, before the mask (a masked score stays -inf)
            const int bs = u % BIAS_STAGES;
            mbar_wait(b_full(bs), (u / BIAS_STAGES) & 1);
            Bias::add_t(acc_s[0], sB(bs), bias_lane, Bias::row_step_t(one_row), mod.inv_scale);
            mbar_arrive(b_empty(bs));  // the tile is in registers: the bias warp may copy the next block's
        }
        if (vis.needs_mask(row0, BM, key0, BN)) vis.apply<true>(acc_s, key0 + warp_key0, row0, lane);
        const float sink_part = softmax_backward_t<true>(acc_s, acc_dp, sLse2 + s * BM, sDelta + s * BM, p.scale_log2,
                                                   mod, drop, dbias, sink2, key0 + warp_key0, row0, lane, keep);
        if (SINK) sSinkPart[ctid] += sink_part;
        store_keys_by_queries<BN, BM>(smem + (sdSt(u) - base), acc_dp[0], warp_key0, lane);
    };
    // dV += P^T dO: (64 keys x D) per warpgroup over BM queries; A = P^T from
    // registers (k-step kk = queries 16kk..16kk+15), B = dO read transposed.
    auto issue_dv = [&](const u32 (&pt)[BM / 16][4], int u) {
        issue_keys_by_cols<BM, D, AW, D>(acc_dv, pt, opaque(sdO(u % STAGES)));
    };
    // dK += dS^T Q: A = this warpgroup's 64 rows of dS^T (K-major), B = Q read transposed.
    auto issue_dk = [&](int u) {
        issue_keys_by_cols<BN, BM, D, AW, D>(acc_dk, opaque(sdSt(u)), c * 64, opaque(sQ(u % STAGES)));
    };
    // dQ_i[:, c*DQ_COLS ..] = dS K over the BN keys: M = BM queries (A = dS, read
    // transposed from both warpgroups' dS^T), N = DQ_COLS (B = K read transposed).
    auto issue_dq = [&](float (&acc_dq)[DQ_COLS / 8][4], int u) {
        issue_queries_by_cols<BN, BM, D, AW, DQ_COLS>(acc_dq, opaque(sdSt(u)), opaque(sK), c * DQ_COLS);
    };
    // scale * dQ of block u -> its dQ buffer once the writer's reductions of the
    // block before in that buffer have read it, then hand it to the writer.
    auto put_dq = [&](const float (&acc_dq)[DQ_COLS / 8][4], int u) {
        const int buf = u % DQ_BUFFERS;
        mbar_wait(dq_empty(buf), ((u / DQ_BUFFERS) & 1) ^ 1);
        // Ping-pong: dq_accum's rows are swizzled (DQ_SWIZZLE; lockstep 0, rows padded instead);
        // the block's first row in dq_accum is q_start + row0.
        const int row0 = row0_of(u);
        store_dq_rows<DQ_COLS, DQ_ROW, DQ_SWIZZLE>(reinterpret_cast<float*>(smem + (sdQ(u) - base)), acc_dq, p.scale,
                                                   warp_in_wg * 16, c * DQ_COLS, si.q_start + row0, lane);
        // Deterministic: the CTAs of this (head, batch) that see query block m are
        // the key blocks of its range, so this CTA adds as number n_block - first
        // (bwd.cu explains why the turns cannot deadlock). The writer reads it
        // after dq_full, which this arrival completes.
        if (DETERMINISTIC && ctid == 0) sTurn[buf] = vis.dq_turn<BN>(row0, BM, n_block);
        // The bulk reductions read the buffer through the async proxy.
        fence_proxy_async();
        mbar_arrive(dq_full(buf));
    };
    // Q, dO, L2, D of block u have landed; after cp.async (generic-proxy writes) the fence makes
    // them visible to wgmma (TMA's writes are the async proxy's own).
    auto wait_block = [&](int u) {
        mbar_wait(qdo_full(u % STAGES), (u / STAGES) & 1);
        if (!tma) fence_proxy_async();
    };

    if (!PINGPONG) {
        // Lockstep (d = 128, whose registers hold one block's S^T, dP^T and dQ at a time):
        // per block, both consumers' dS^T meet at a named barrier before dK and dQ.
#pragma unroll 1
        for (int u = 0; u < count; ++u) {
            wait_block(u);
            float acc_s[1][NT][4], acc_dp[1][NT][4];
            wgmma_fence();
            issue_scores(acc_s, acc_dp, u);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(acc_s[0]);
            fence_regs(acc_dp[0]);
            recompute(acc_s, acc_dp, u, nullptr);
            u32 pt[BM / 16][4];
            pack_a_fragments(acc_s[0], pt);
            fence_regs(acc_dv);
            wgmma_fence();
            issue_dv(pt, u);
            wgmma_commit();
            // Both warpgroups' dS^T is in shared memory (and visible to wgmma) before
            // dK and dQ read it. It also means the other warpgroup finished the
            // previous step (its wait below), so dS^T buffer u+1 is free to write.
            fence_proxy_async();
            named_sync(BAR_DS, CONSUMERS);
            fence_regs(acc_dk);
            wgmma_fence();
            issue_dk(u);
            wgmma_commit();
            float acc_dq[DQ_COLS / 8][4];
            issue_dq(acc_dq, u);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(pt);  // operands of the dV product: alive until it completed
            fence_regs(acc_dq);
            fence_regs(acc_dv);
            fence_regs(acc_dk);
            mbar_arrive(qdo_empty(u % STAGES));  // Q, dO, L2 and D of the slot read
            put_dq(acc_dq, u);
        }
    } else if (count > 0) {
        // Ping-pong (d = 64). Step u issues, in this consumer's turn, S^T and dP^T of
        // block u, then dV and dK of block u - 1 and dQ of block u - 2; it recomputes
        // P^T_u and dS^T_u while those run (its own products and then the other
        // consumer's, which take their turn in between), then hands dQ_{u-2} over.
        // The turns alternate 0, 1, 0, 1, ... (consumer 0's first needs no wait; its
        // last sync meets consumer 1's last pass), so one consumer's recompute falls
        // under the other's products, and they order the shared dS^T: the other
        // consumer stored dS^T_{u-2} before its turn u - 1, which precedes this turn u
        // (consumer 1 also has consumer 0's dS^T_{u-1}; consumer 0 does not have
        // consumer 1's, hence dQ two steps late). A dS^T buffer is rewritten at step
        // u + 4: consumer 0's turn u + 4 follows consumer 1's turn u + 3, so consumer 1
        // finished step u + 2 and with it dQ_u, the last product reading the buffer
        // (consumer 1's own step u + 4 follows consumer 0's, further still): four buffers.
        // A slot of Q, dO, L2, D is freed once dV_u and dK_u completed (step u + 1).
        int turn = 0;
        auto take_turn = [&]() {
            if (!(c == 0 && turn == 0)) named_sync(BAR_TURN + c, CONSUMERS);
        };
        auto pass_turn = [&]() {
            named_arrive(BAR_TURN + (c ^ 1), CONSUMERS);
            ++turn;
        };
        u32 pt[BM / 16][4];  // P^T of block u - 1: the A operand of its dV product
        // One step. `scores` (block u exists) is a constant at each of the two call
        // sites below, so the inlined last two steps are a copy of their own (NVRTC
        // takes no generic lambdas): ptxas serialises every wgmma of the kernel when
        // S^T and dP^T are issued under a run-time condition and read later (C7515;
        // tests/compile checks for it); the conditions on dV, dK and dQ cost nothing.
        auto step = [&](const bool scores, int u) {
            const bool grads = u >= 1 && u <= count, dq = u >= 2;
            if (scores) wait_block(u);
            // Own dS^T_{u-1} (and P^T_{u-1}) complete before the products read them: the
            // turn's barrier spans all of this warpgroup's threads, each fenced its stores.
            take_turn();
            float acc_s[1][NT][4], acc_dp[1][NT][4], acc_dq[DQ_COLS / 8][4];
            fence_regs(acc_dv);
            fence_regs(acc_dk);
            wgmma_fence();
            if (scores) issue_scores(acc_s, acc_dp, u);
            wgmma_commit();
            if (grads) {
                issue_dv(pt, u - 1);
                issue_dk(u - 1);
            }
            if (dq) issue_dq(acc_dq, u - 2);
            wgmma_commit();
            pass_turn();
            if (scores) {
                // Dropout's keep bits drawn while S^T_u and dP^T_u run (Dropout::draw_t).
                u32 keep[1][NT / 2];
                if (KEEP_DRAWN_AHEAD) drop.draw_t(keep, key0 + warp_key0, row0_of(u), lane);
                wgmma_wait<1>();  // S^T_u, dP^T_u
                fence_regs(acc_s[0]);
                fence_regs(acc_dp[0]);
                recompute(acc_s, acc_dp, u, KEEP_DRAWN_AHEAD ? keep : nullptr);
            }
            wgmma_wait<0>();
            fence_regs(pt);  // operands of the dV product: alive until it completed
            fence_regs(acc_dq);
            fence_regs(acc_dv);
            fence_regs(acc_dk);
            if (grads) mbar_arrive(qdo_empty((u - 1) % STAGES));  // Q, dO, L2 and D of block u - 1 read
            if (scores) {
                pack_a_fragments(acc_s[0], pt);
                fence_proxy_async();  // dS^T_u visible to the async proxy before this consumer's next turn
            }
            if (dq) put_dq(acc_dq, u - 2);
        };
#pragma unroll 1
        for (int u = 0; u < count; ++u) step(true, u);
#pragma unroll 1
        for (int u = count; u < count + 2; ++u) step(false, u);
        if (c == 0) named_sync(BAR_TURN, CONSUMERS);  // consumer 1's last pass
    }

    // Epilogue: dK = scale * acc_dk, dV = acc_dv. Both warpgroups are past their
    // last product reading sK/sV before they are reused to stage dK and dV.
    named_sync(BAR_EPILOGUE, CONSUMERS);
    // dsink's part of this CTA (softmax.cuh sink_log2): sLse2 is free (every
    // slot was consumed), and its reads precede the barrier above.
    if (SINK)
        group_sum_store<CONSUMERS>(sSinkPart[ctid], sLse2, p.dsink_part + cta_slot(), ctid,
                                   [] { named_sync(BAR_EPILOGUE, CONSUMERS); });
    const float dk_scale[1][2] = {{p.scale, p.scale}}, dv_scale[1][2] = {{1.f, 1.f}};

    if (p.dk_accum == nullptr) {
        // dK -> sK, dV -> sV as 16-bit swizzled [key][d], then 16-byte stores of whole rows.
        auto swizzled = [](int r, int col) { return swizzled_offset<BN, D, AW>(r, col); };
        unsigned char* sK_bytes = smem + (sK - base);
        unsigned char* sV_bytes = smem + (sV - base);
        stage_tile(sK_bytes, swizzled, as_tile(acc_dk), dk_scale, warp_key0, 0, lane);
        stage_tile(sV_bytes, swizzled, as_tile(acc_dv), dv_scale, warp_key0, 0, lane);
        // The 16-byte reads below cover rows other warps wrote.
        named_sync(BAR_EPILOGUE, CONSUMERS);
        u16* dk = si.key_rows(static_cast<u16*>(p.dk), p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
        u16* dv = si.key_rows(static_cast<u16*>(p.dv), p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
        store_staged_rows<BN, D>(dk, p.dk_row_stride, sK_bytes, swizzled, key0, si.seqlen_k, p.head_dim, ctid,
                                 CONSUMERS);
        store_staged_rows<BN, D>(dv, p.dv_row_stride, sV_bytes, swizzled, key0, si.seqlen_k, p.head_dim, ctid,
                                 CONSUMERS);
    } else {
        // GQA: fp32 per query head; bwd_convert.cu adds the group in a fixed order.
        float* dka = si.key_rows_of_query_head(p.dk_accum, p.dka_batch_stride, p.dka_row_stride, p.dka_head_stride);
        float* dva = si.key_rows_of_query_head(p.dv_accum, p.dka_batch_stride, p.dka_row_stride, p.dka_head_stride);
        write_f32_tile<false>(dka, p.dka_row_stride, as_tile(acc_dk), p.scale, key0 + warp_key0, 0, si.seqlen_k,
                              p.head_dim, lane);
        write_f32_tile<false>(dva, p.dka_row_stride, as_tile(acc_dv), 1.f, key0 + warp_key0, 0, si.seqlen_k,
                              p.head_dim, lane);
    }
}
