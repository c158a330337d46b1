// fwd.cu: exact attention forward, the portable path (sm_80+: cp.async,
// ldmatrix, mma.sync with fp32 accumulators; float32 inputs as 3xTF32, mma.cuh).
//
// Computes, for one (batch b, query head h) and a block of Br query rows,
//   S = Q K^T            Q: (Br, d) rows of q[b, :, h, :], K: (Sk, d) of k[b, :, h_kv, :]
//   S = mod(S)           softcap, ALiBi, additive bias (score_mod.cuh), when compiled in
//   P = softmax(S * softmax_scale) over keys, masked (mask.cuh: causal or a
//                        sliding window), with the learnable sink in the denominator
//   O = P V              V: (Sk, d), O: (Br, d) -> o[b, :, h, :]
//   lse = log(exp(sink) + sum_j exp(S_ij * softmax_scale))   -> lse[b, h, :] (natural log)
// with h_kv = h / (nheads / nheads_kv) (GQA/MQA, seqinfo.cuh) and
// FlashAttention-2's one-pass online softmax (softmax.cuh): S and P never
// leave registers.
//
// Steps (one CTA per (query block, head, batch); WARPS warps, each owning
// ROWS_PER_WARP = Br / WARPS consecutive query rows):
//   1. cp.async Q (Br x D) and the last visible K block (Bc x D) into shared memory.
//   2. For the key blocks n = last .. first that the mask leaves visible
//      (descending, so the causal diagonal's masked blocks come first; blocks
//      outside a sliding window's band are never visited):
//        wait K[n]; start loading V[n];  S = Q K[n]^T (mma.cuh load_a / load_b2 + mma);
//        score modifier; mask (only blocks that cross seqlen_k or an edge of the band);
//        online softmax: P, rescale O;
//        wait V[n]; start loading K[n-1]; O += P V[n] (V read transposed: load_b2_t).
//      The copy of one operand overlaps the matrix product of the other.
//   3. O /= l (l with the sink), stage O through this warp's rows of the Q
//      buffer, store with 16-byte writes (epilogue.cuh); write lse.
//
// Compile-time constants (rendered from cuflash/specs.py FwdSpec):
//   CUFLASH_DTYPE (fp16 | bf16 | fp32), CUFLASH_HEAD_DIM D (multiple of 32, the
//   actual d <= D is a run-time value; columns >= d are zero-filled and never
//   stored), CUFLASH_BLOCK_M Br, CUFLASH_BLOCK_N Bc, CUFLASH_WARPS, and the
//   features: CUFLASH_MASK (mask.cuh), CUFLASH_SOFTCAP, CUFLASH_ALIBI, CUFLASH_BIAS, CUFLASH_SINK, CUFLASH_DROPOUT,
//   CUFLASH_VARLEN (variable-length batch: per-sequence rows and lengths, seqinfo.cuh).
// Constraints: d % 8 == 0; q, k, v, o 16-byte aligned with strides that are
// multiples of 16 bytes (checked in cuflash/api.py); softmax_scale > 0.
// Shared memory: (Br (D + CHUNK) + 2 Bc Dk) * ELEM_BYTES bytes, CHUNK = 16 / ELEM_BYTES, Dk = D for
// swizzled K and V (16-bit, D % 64 == 0), else D + CHUNK (cuflash/launch.py fwd_smem_bytes).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/copy.cuh"
#include "common/mma.cuh"
#include "common/softmax.cuh"
#include "common/seqinfo.cuh"
#include "common/mask.cuh"
#include "common/score_mod.cuh"
#include "common/epilogue.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BM = CUFLASH_BLOCK_M;
constexpr int BN = CUFLASH_BLOCK_N;
constexpr int WARPS = CUFLASH_WARPS;
constexpr int THREADS = WARPS * 32;
constexpr int ROWS_PER_WARP = BM / WARPS;
constexpr int MT = ROWS_PER_WARP / 16;  // m16 tiles per warp
constexpr int NT = BN / 8;              // n8 tiles of S per warp
constexpr int DT = D / 8;               // n8 tiles of O per warp
constexpr int PITCH = D + CHUNK;        // shared-memory row pitch in elements (copy.cuh)
// K and V, streamed through the main loop, in swizzled rows of D where D % 64
// == 0 with 16-bit inputs (copy.cuh streamed_swizzled); Q stays padded.
constexpr bool KV_SWIZZLE = streamed_swizzled<D>();
constexpr int KV_PITCH = streamed_pitch<D>();
// K's step addresses laundered (mma.cuh SwizzledB LAUNDER) under NVRTC 13.1 and
// later, not under 12.x or 13.0: the d128 tile at 254-255 registers spilled 20
// bytes for sm_90 under NVRTC 13.1-13.5 without it, and with it 8 bytes under
// 12.9 and 8-20 bytes for sm_86/89/90 under 13.0 (laundering V as well, or V
// alone, spilled 44-156 bytes under 12.9 and 13.5).
constexpr bool K_LAUNDER = __CUDACC_VER_MAJOR__ > 13 || (__CUDACC_VER_MAJOR__ == 13 && __CUDACC_VER_MINOR__ >= 1);
// Keep this warp's Q fragments (MT x D/16 k-steps x 4 registers) in registers
// after the first block instead of re-reading them with ldmatrix every block:
// a third less shared-memory traffic in S = Q K^T, for MT*D/4 more registers
// (16-bit only: float32 fragments are four times as large).
constexpr bool Q_IN_REGS = CUFLASH_Q_IN_REGS;
static_assert(ROWS_PER_WARP % 16 == 0 && BN % 16 == 0 && D % 32 == 0, "tile shape");
static_assert(!(Q_IN_REGS && FP32), "float32 keeps Q in shared memory");
// float32 rounding of the tensor cores' truncating sums (mma.cuh ROUND_*): O
// rounds each key block's part (O sums over every key block; a biased d64 case
// was 1.1x over float32's accuracy floor without it). D > 128 has no registers
// for O's temporaries (its tiles spilled 8-64 bytes) and keeps O's plain sum;
// nor has S for per-k-step temporaries (ROUND_STEP spilled 4-132 bytes at every
// D), so S keeps its truncated sum: at d256, and with large biased or softcapped
// scores, lse comes out 1.1-1.3x over float32's floor (issue 11's note).
constexpr int PV_ROUND = D <= 128 ? ROUND_PASS : ROUND_NONE;

extern "C" __global__ void __launch_bounds__(THREADS, 1) cuflash_fwd(const FwdParams p) {
    extern __shared__ __align__(128) u16 smem[];  // 128: the swizzled tiles rely on it (copy.cuh chunk_offset)
    elem_t* sQ = reinterpret_cast<elem_t*>(smem);  // (BM, PITCH)
    elem_t* sK = sQ + BM * PITCH;                   // (BN, KV_PITCH)
    elem_t* sV = sK + BN * KV_PITCH;                // (BN, KV_PITCH)

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    // Heaviest query blocks first: under a causal mask the last blocks see the most keys.
    const int m_block = gridDim.x - 1 - blockIdx.x;
    const int row0 = m_block * BM;
    const SeqInfo si(p, blockIdx.z, blockIdx.y);
    // A varlen grid covers the longest sequence: a block past the end of a shorter
    // one has nothing to do (the whole CTA leaves before any barrier).
    if (si.past_end(row0)) return;
    const Visibility vis(p, si);
    const ScoreMod mod(p, si);
    const Dropout drop(p, si.b, si.h);  // used under CUFLASH_DROPOUT only

    const elem_t *q, *k, *v;
    si.qkv_rows(p, q, k, v);
    // Where the block's outputs go (found again after the main loop under varlen: below).
    elem_t* o = si.out_rows<elem_t>(p);
    float* lse_rows = p.lse == nullptr ? nullptr : p.lse + si.lse_row0(p);

    // Key blocks [n_begin, n_end) hold every key some row of this block may see.
    const int2 key_blocks = vis.key_blocks<BN>(row0, BM);
    const int n_begin = key_blocks.x, n_end = key_blocks.y;
    const int2 masked = vis.masked_key_blocks<BN>(row0, BM);  // blocks that need the element mask

    const int warp_row0 = warp * ROWS_PER_WARP;  // first row of this warp within the block

    if (n_begin >= n_end) {
        // No row of this block sees any key: output 0 and lse = -inf (or the sink).
        store_empty_rows<BM, D, THREADS>(o, p.o_row_stride, lse_rows, sink_logit(p, si), row0,
                                         si.seqlen_q, p.head_dim, tid);
        return;
    }

    const u32 sQ_addr = smem_addr(sQ), sK_addr = smem_addr(sK), sV_addr = smem_addr(sV);

    // 1. Q and the first (highest) K block, one cp.async group.
    load_tile_async<BM, D, THREADS>(sQ_addr, q, p.q_row_stride, row0, si.seqlen_q, p.head_dim, tid);
    load_tile_async<BN, D, THREADS, KV_SWIZZLE>(sK_addr, k, p.k_row_stride, (n_end - 1) * BN, si.seqlen_k,
                                                p.head_dim, tid);
    cp_async_commit();

    float acc_o[MT][DT][4];
    zero_acc(acc_o);

    OnlineSoftmax<MT> softmax;
    softmax.init();

    // This lane's operands within a tile (mma.cuh layouts):
    //   Q (A operand, stored [query][d]) and K (B operand of S, stored [key][d]);
    //   V (B operand of O, stored [key][d] = [k][n]: read transposed).
    const u32 q_lane = ldsm_offset_a<PITCH>(lane) + (u32)(warp_row0 * PITCH * ELEM_BYTES);
    const auto k_b = [&] {
        if constexpr (KV_SWIZZLE) return swizzled_b<false, true, D, K_LAUNDER>(sK_addr, 0, 0, lane);
        else return sK_addr + ldsm_offset_b<PITCH>(lane);
    }();
    const auto v_b = [&] {
        if constexpr (KV_SWIZZLE) return swizzled_b<true, true, D>(sV_addr, 0, 0, lane);
        else return sV_addr + ldsm_offset_b_t<PITCH>(lane);
    }();

    FragA qa[Q_IN_REGS ? MT : 1][Q_IN_REGS ? D / KSTEP : 1];

    for (int n = n_end - 1; n >= n_begin; --n) {
        // K[n] (and Q) have landed for this thread; the barrier makes every
        // thread's copies visible and also guarantees all warps finished
        // reading V[n+1] in the previous step, so V[n] may overwrite it.
        cp_async_wait<0>();
        __syncthreads();
        load_tile_async<BN, D, THREADS, KV_SWIZZLE>(sV_addr, v, p.v_row_stride, n * BN, si.seqlen_k, p.head_dim, tid);
        cp_async_commit();

        if (Q_IN_REGS && n == n_end - 1) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int ks = 0; ks < (Q_IN_REGS ? D / KSTEP : 0); ++ks)
                    load_a(qa[mt][ks], sQ_addr + q_lane + (mt * 16 * PITCH + ks * KSTEP) * ELEM_BYTES);
        }

        // S = Q K[n]^T: (ROWS_PER_WARP x BN) per warp, onto 0 or the bias (score_mod.cuh init).
        float acc_s[MT][NT][4];
        mod.init<false>(acc_s, row0 + warp_row0, n * BN, lane);
#pragma unroll
        for (int ks = 0; ks < D / KSTEP; ++ks) {
            FragA a[MT];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if constexpr (Q_IN_REGS) a[mt] = qa[mt][ks];
                else load_a(a[mt], sQ_addr + q_lane + (mt * 16 * PITCH + ks * KSTEP) * ELEM_BYTES);
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                FragB bk[2];
                load_b_step<KV_PITCH, false>(bk, k_b, np, ks);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma(acc_s[mt][2 * np], a[mt], bk[0]);
                    mma(acc_s[mt][2 * np + 1], a[mt], bk[1]);
                }
            }
        }

        if (ScoreMod::ACTIVE) mod.apply<false>(acc_s, row0 + warp_row0, n * BN, lane);
        if (n <= masked.x || n >= masked.y) vis.apply<false>(acc_s, row0 + warp_row0, n * BN, lane);

        float corr[MT][2];
        const bool rescale = softmax.update(acc_s, p.scale_log2, corr);  // never under SOFTMAX_FIXED
        // Dropout on P after its row sums: l stays the undropped sum (16-bit: on the packed P below).
        if (DROPOUT && FP32) drop.drop(acc_s, row0 + warp_row0, n * BN, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
            if (rescale) scale_rows(acc_o[mt], corr[mt][0], corr[mt][1]);

        // P as the A operand of P V (mma.cuh RegA: 16-bit, packed now, which frees acc_s early).
        RegA<MT, BN> pa;
        softmax.pack_p(acc_s, pa);
#if CUFLASH_DTYPE != CUFLASH_FP32
        if (DROPOUT)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) drop.drop_packed<true>(pa.r[mt], row0 + warp_row0 + mt * 16, n * BN, lane);
#endif

        // V[n] has landed; the barrier also guarantees all warps finished
        // reading K[n], so K[n-1] may overwrite it.
        cp_async_wait<0>();
        __syncthreads();
        if (n > n_begin) {
            load_tile_async<BN, D, THREADS, KV_SWIZZLE>(sK_addr, k, p.k_row_stride, (n - 1) * BN, si.seqlen_k,
                                                        p.head_dim, tid);
            cp_async_commit();
            mod.prefetch<BM, BN, THREADS>(row0, (n - 1) * BN, tid);  // the bias of block n-1 (score_mod.cuh)
        }

        // O += P V[n], KSTEP keys per k-step (PV_ROUND: float32 rounds each key block's part into O).
        auto p_frag = [&](FragA& a, int mt, int kk) { pa.get(a, mt, kk); };
        auto v_frag = [&](FragB (&b)[2], int dp, int kk) { load_b_step<KV_PITCH, true>(b, v_b, dp, kk); };
        warp_product<MT, DT, BN / KSTEP, BN / KSTEP, PV_ROUND>(acc_o, p_frag, v_frag);
    }

    // 3. Epilogue. Under varlen the block's rows are found again from a laundered batch
    // index: held across the main loop, the sequence's offsets spilled the sm_80 build
    // (d128: 64-88 bytes under NVRTC 12.9).
    const SeqInfo so = CUFLASH_VARLEN ? SeqInfo(p, (int)opaque((u32)blockIdx.z), blockIdx.y) : si;
    if (CUFLASH_VARLEN) {
        o = so.out_rows<elem_t>(p);
        lse_rows = p.lse == nullptr ? nullptr : p.lse + so.lse_row0(p);
    }
    float inv_l[MT][2], lse[MT][2];
    softmax.finalize<SINK>(p.scale_log2, inv_l, lse, sink_logit(p, si));
    drop.scale_rows(inv_l);  // O / (1 - p) under dropout

    // This warp's rows of sQ are read only by this warp; wait until all its
    // lanes are past their last ldmatrix of Q before overwriting them with O.
    __syncwarp();
    unsigned char* sO = reinterpret_cast<unsigned char*>(sQ + warp_row0 * PITCH);  // this warp's rows
    auto pitched = [](int r, int col) { return (r * PITCH + col) * ELEM_BYTES; };
    stage_tile(sO, pitched, acc_o, inv_l, 0, 0, lane);
    // The 16-byte stores below read rows other lanes of this warp wrote.
    __syncwarp();
    store_staged_rows<ROWS_PER_WARP, D>(o, p.o_row_stride, sO, pitched, row0 + warp_row0, so.seqlen_q, p.head_dim,
                                        lane, 32);
    store_lse(lse_rows, lse, row0 + warp_row0, so.seqlen_q, lane);
}
