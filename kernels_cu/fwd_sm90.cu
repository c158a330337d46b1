// fwd_sm90.cu: exact attention forward, the Hopper path without a producer
// warpgroup (sm_90a: wgmma with operands in shared memory, cp.async loads by
// every thread, fp32 accumulators). The warp-specialised fwd_sm90_ws.cu is the
// default; this kernel runs the tiles it cannot (cuflash/specs.py
// FwdSm90Tiles.with_features: a float32 or varlen additive bias; the narrow
// sliding-window tiles of two CTAs per SM).
//
// Computes the same as fwd.cu, for one (batch b, query head h) and a block of
// Br query rows:
//   S = mod(Q K^T) (score_mod.cuh), P = softmax(S * softmax_scale) (masked,
//   mask.cuh; the learnable sink in the denominator), O = P V,
//   lse = log(exp(sink) + sum_j exp(S_ij * softmax_scale))  (natural log)
// with FlashAttention-2's online softmax (softmax.cuh); S and P never leave
// registers.
//
// Steps (one CTA per (query block, head, batch); WGS warpgroups of 128
// threads, warpgroup w owning query rows 64w..64w+63 of the block):
//   1. cp.async Q (Br x D) and the last visible K, V blocks (Bc x D each) into
//      swizzled shared memory (copy.cuh); K[j] and V[j] live in slot j % 2.
//      S[last] = Q K[last]^T and its softmax.
//   2. For the visible key blocks n = last .. first (descending, so the causal
//      diagonal's masked blocks come first; a sliding window's band only):
//        wait for K[n-1], V[n]; start copying K[n-2], V[n-1] into the free slots;
//        issue S[n-1] = Q K[n-1]^T  one wgmma m64 n=Bc k16 per 16 columns of d;
//        issue O += P[n] V[n]       one wgmma m64 n=D k16 per 16 keys, A = P
//                                   from registers, B = V read transposed;
//        wait for S[n-1]; score modifier; mask (only blocks that cross
//        seqlen_k or an edge of the band), online softmax -> P[n-1], correction factor;
//        wait for P[n] V[n]; rescale O; pack P[n-1] to 16 bits.
//      The softmax of block n-1 runs while the tensor cores compute P[n] V[n]
//      (FlashAttention-3's intra-warpgroup overlap), and the copies of the next
//      blocks overlap a whole step.
//   3. O /= l (l with the sink), stage O through this warpgroup's rows of the
//      Q buffer, store with 16-byte writes (epilogue.cuh); write lse.
//
// Compile-time constants (cuflash/specs.py FwdSm90Spec): CUFLASH_DTYPE,
// CUFLASH_HEAD_DIM D (multiple of 32; the actual d <= D is a run-time value,
// columns >= d are zero-filled and never stored), CUFLASH_BLOCK_M Br (64 per
// warpgroup), CUFLASH_BLOCK_N Bc (multiple of 32), CUFLASH_CTAS_PER_SM, and the
// features CUFLASH_MASK, CUFLASH_SOFTCAP, CUFLASH_ALIBI, CUFLASH_BIAS, CUFLASH_SINK, CUFLASH_DROPOUT,
// CUFLASH_VARLEN (seqinfo.cuh).
// Constraints: as fwd.cu (d % 8 == 0, 16-byte aligned rows, softmax_scale > 0).
// Shared memory: (Br + 4 Bc) * D * 2 bytes plus 1 KB of alignment slack (cuflash/launch.py).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/copy.cuh"
#include "common/wgmma.cuh"
#include "common/softmax.cuh"
#include "common/seqinfo.cuh"
#include "common/mask.cuh"
#include "common/score_mod.cuh"
#include "common/epilogue.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BM = CUFLASH_BLOCK_M;
constexpr int BN = CUFLASH_BLOCK_N;
constexpr int CTAS_PER_SM = CUFLASH_CTAS_PER_SM;  // occupancy target: caps registers per thread
constexpr int WGS = BM / 64;
constexpr int THREADS = WGS * 128;
constexpr int NT = BN / 8;  // n8 tiles of S per warp
constexpr int DT = D / 8;   // n8 tiles of O per warp
static_assert(BM % 64 == 0 && BN % 32 == 0 && D % 32 == 0, "tile shape");

constexpr u32 Q_BYTES = BM * D * 2;
constexpr u32 KV_BYTES = BN * D * 2;
static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0, "swizzled tiles start on 1024-byte boundaries");

extern "C" __global__ void __launch_bounds__(THREADS, CTAS_PER_SM) cuflash_fwd_sm90(const FwdParams p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u32 smem_base;  // shared-window address of smem
    unsigned char* smem = smem_aligned_1024(smem_raw, smem_base);
    const u32 sQ = smem_base;               // (BM, D)
    const u32 sK0 = sQ + Q_BYTES;           // two slots of (K (BN, D), V (BN, D))

    const int tid = threadIdx.x, lane = tid % 32;
    const int wg = tid / 128, warp_in_wg = (tid / 32) % 4;
    // Heaviest query blocks first: under a causal mask the last blocks see the most keys.
    const int m_block = gridDim.x - 1 - blockIdx.x;
    const int row0 = m_block * BM;
    const SeqInfo si(p, blockIdx.z, blockIdx.y);
    // A varlen grid covers the longest sequence: a block past the end of a shorter
    // one has nothing to do (the whole CTA leaves before any barrier).
    if (si.past_end(row0)) return;
    const Visibility vis(p, si);
    const ScoreMod mod(p, si);
    const Dropout drop(p, si.b, si.h, SeedReadOnce{});  // used under CUFLASH_DROPOUT only

    const u16 *q, *k, *v;
    si.qkv_rows(p, q, k, v);
    u16* o = si.out_rows<u16>(p);
    float* lse_rows = p.lse == nullptr ? nullptr : p.lse + si.lse_row0(p);

    // Key blocks [first, last] hold every key some row of this block may see.
    const int2 key_blocks = vis.key_blocks<BN>(row0, BM);
    const int first = key_blocks.x, last = key_blocks.y - 1;
    const int2 masked = vis.masked_key_blocks<BN>(row0, BM);  // blocks that need the element mask

    if (first > last) {
        // No row of this block sees any key: output 0 and lse = -inf (or the sink).
        store_empty_rows<BM, D, THREADS>(o, p.o_row_stride, lse_rows, sink_logit(p, si), row0,
                                         si.seqlen_q, p.head_dim, tid);
        return;
    }
    const int warp_row0 = wg * 64 + warp_in_wg * 16;  // first row of this warp within the block

    // Slot of key block j: K[j] in sK(j % 2), V[j] in sV(j % 2).
    auto sK = [&](int j) { return sK0 + (u32)(j & 1) * 2 * KV_BYTES; };
    auto sV = [&](int j) { return sK0 + (u32)(j & 1) * 2 * KV_BYTES + KV_BYTES; };
    auto load_k = [&](int j) {
        load_tile_swizzled<BN, D, THREADS>(sK(j), k, p.k_row_stride, j * BN, si.seqlen_k, p.head_dim, tid);
    };
    auto load_v = [&](int j) {
        load_tile_swizzled<BN, D, THREADS>(sV(j), v, p.v_row_stride, j * BN, si.seqlen_k, p.head_dim, tid);
    };

    // 1. Group 1: Q and K[last]; group 2: V[last] and K[last-1].
    load_tile_swizzled<BM, D, THREADS>(sQ, q, p.q_row_stride, row0, si.seqlen_q, p.head_dim, tid);
    load_k(last);
    cp_async_commit();
    load_v(last);
    if (last > first) {
        load_k(last - 1);
        mod.prefetch<BM, BN, THREADS>(row0, (last - 1) * BN, tid);  // the bias of block last-1 (score_mod.cuh)
    }
    cp_async_commit();

    float acc_o[DT][4];
    zero_acc(as_tile(acc_o));

    OnlineSoftmax<1> softmax;
    softmax.init();
    float acc_s[1][NT][4];
    u32 pa[BN / 16][4];  // P of the block whose P V is issued next, as A fragments

    // S = Q K[j]^T (64 x BN per warpgroup) is issued; the first k-step overwrites acc_s
    // (so the compiler knows its old value is dead), or adds onto the bias that
    // init_s(j) loaded before (score_mod.cuh BIAS_IN_ACC).
    auto init_s = [&](int j) {
        if (ScoreMod::BIAS_IN_ACC) mod.init<false>(acc_s, row0 + warp_row0, j * BN, lane);
    };
    auto issue_s = [&](int j) {
        const u32 q_tile = opaque(sQ);  // descriptors computed here, not held across the loop (wgmma.cuh)
        wgmma_fence();
        wgmma_ss<BN, 0, 0, ScoreMod::BIAS_IN_ACC>(acc_s[0], desc_k_major<BM, D>(q_tile, wg * 64, 0),
                                                  desc_k_major<BN, D>(sK(j), 0, 0));
#pragma unroll
        for (int ks = 1; ks < D / 16; ++ks)
            wgmma_ss<BN, 0, 0, true>(acc_s[0], desc_k_major<BM, D>(q_tile, wg * 64, ks),
                                     desc_k_major<BN, D>(sK(j), 0, ks));
        wgmma_commit();
    };
    // Mask and fold S of block j into the softmax state: acc_s becomes P (fp32)
    // and corr the factor that rescales O; returns whether O needs it (a constant:
    // never under SOFTMAX_FIXED, softmax.cuh).
    auto softmax_s = [&](int j, float (&corr)[1][2]) {
        if (ScoreMod::ACTIVE) mod.apply<false>(acc_s, row0 + warp_row0, j * BN, lane);
        if (j <= masked.x || j >= masked.y) vis.apply<false>(acc_s, row0 + warp_row0, j * BN, lane);
        const bool rescale = softmax.update(acc_s, p.scale_log2, corr);
        return rescale;
    };
    // P of block j (16 bits) as the A fragments of P V; dropout clears the dropped
    // entries of the packed P, after the row sums (l stays the undropped sum).
    auto pack_block = [&](int j) {
        softmax.pack_p(acc_s[0], pa);
        if (DROPOUT) drop.drop_packed<false>(pa, row0 + warp_row0, j * BN, lane);
    };

    // S[last] and its softmax before the loop (O is still 0: no rescale).
    init_s(last);
    cp_async_wait<1>();
    fence_proxy_async();  // Q, K[last] -> visible to wgmma ...
    __syncthreads();      // ... for every thread's copies
    {
        issue_s(last);
        wgmma_wait<0>();
        fence_regs(acc_s[0]);
        float corr[1][2];
        softmax_s(last, corr);
        pack_block(last);
    }

    // Copies are waited for (this thread), made visible to wgmma (proxy fence)
    // and published (barrier). The barrier also guarantees that every
    // warpgroup finished the products that read the slots the next copies
    // overwrite.
    auto sync_copies = [&]() {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
    };
    // O += P[j] V[j], 16 keys per k-step.
    auto issue_o = [&](int j) { issue_pv<BN, D>(acc_o, pa, sV(j)); };

    // 2. Step n: O += P[n] V[n] runs on the tensor cores while the softmax of
    // S[n-1] = Q K[n-1]^T (issued just before it) runs on the other units.
    // Every step issues both products, so the compiler can tell which one
    // each wait retires (a conditional commit would make it serialize them).
    for (int n = last; n > first; --n) {
        init_s(n - 1);  // acc_s is free (P[n] is in pa): the bias loads run during the wait below
        sync_copies();  // K[n-1], V[n] landed; S[n] (read K[n]) and P[n+1] V[n+1] done
        if (n - 2 >= first) {
            load_k(n - 2);
            mod.prefetch<BM, BN, THREADS>(row0, (n - 2) * BN, tid);  // the bias of block n-2, as K[n-2]
        }
        load_v(n - 1);
        cp_async_commit();

        issue_s(n - 1);
        issue_o(n);
        wgmma_wait<1>();  // S[n-1] is complete; P[n] V[n] may still run
        fence_regs(acc_s[0]);
        float corr[1][2];
        const bool rescale = softmax_s(n - 1, corr);
        wgmma_wait<0>();
        // pa was an operand of the product that just completed: only now may it change.
        fence_regs(acc_o);
        fence_regs(pa);
        if (rescale) scale_rows(acc_o, corr[0][0], corr[0][1]);
        pack_block(n - 1);
    }
    sync_copies();  // V[first] landed
    issue_o(first);
    wgmma_wait<0>();
    fence_regs(acc_o);

    // 3. Epilogue.
    float inv_l[1][2], lse[1][2];
    softmax.finalize<SINK>(p.scale_log2, inv_l, lse, sink_logit(p, si));
    drop.scale_rows(inv_l);  // O / (1 - p) under dropout

    // This warpgroup's 64 rows of sQ were read only by its own wgmmas, all
    // complete (waited above) in every warp once all 128 threads pass here.
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
    auto swizzled = [](int r, int col) { return swizzled_offset<BM, D>(r, col); };
    stage_tile(smem, swizzled, as_tile(acc_o), inv_l, warp_row0, 0, lane);
    // The 16-byte stores below read rows that other lanes of this warp wrote.
    __syncwarp();
    auto warp_rows = [&](int r, int col) { return swizzled_offset<BM, D>(warp_row0 + r, col); };
    store_staged_rows<16, D>(o, p.o_row_stride, smem, warp_rows, row0 + warp_row0, si.seqlen_q, p.head_dim, lane, 32);
    store_lse(lse_rows, lse, row0 + warp_row0, si.seqlen_q, lane);
}
