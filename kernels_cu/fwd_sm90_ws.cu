// fwd_sm90_ws.cu: exact attention forward, the warp-specialised Hopper path
// (sm_90a: a producer warpgroup fills a ring of K/V slots, consumer
// warpgroups run only wgmma and the softmax; FlashAttention-3's schedule).
//
// Computes the same as fwd_sm90.cu, for one (batch b, query head h) and a
// block of Br query rows:
//   S = mod(Q K^T) (score_mod.cuh), P = softmax(S * softmax_scale) (masked,
//   mask.cuh; the learnable sink in the denominator), O = P V,
//   lse = log(exp(sink) + sum_j exp(S_ij * softmax_scale))  (natural log)
// with FlashAttention-2's online softmax (softmax.cuh); S and P never leave
// registers.
//
// Warpgroups (128 threads each): warpgroup 0 is the producer, warpgroups
// 1..WGS the consumers, consumer c owning query rows 64c..64c+63 of the block.
// The visible key blocks are visited in descending order, last .. first (the
// causal diagonal's masked blocks first; a sliding window's band only); the
// i-th of them, j = last - i, lives in slot i % STAGES (pipeline.cuh).
//   Producer (setmaxnreg down to PRODUCER_REGS): cp.async Q (Br x D) once,
//     then for each block K[j] and V[j] (Bc x D each, swizzled, copy.cuh) into
//     its slot as soon as the consumers freed it; each copy signals the slot's
//     full barrier when it lands.
//   Consumers (setmaxnreg up to CONSUMER_REGS), as fwd_sm90.cu's main loop:
//     S[last] = Q K[last]^T and its softmax; then per step n = last .. first+1:
//       issue S[n-1] = Q K[n-1]^T and O += P[n] V[n]; wait for S[n-1], free
//       K[n-1]'s slot; modifier, mask, online softmax -> P[n-1], while P[n] V[n]
//       runs (intra-warpgroup overlap); wait for it, free V[n]'s slot; rescale
//       O; pack P[n-1] to 16 bits. Last: O += P[first] V[first].
//     Ping-pong: the consumers take turns (named barriers, in ring order) to
//     issue their products, so one warpgroup's softmax runs while the tensor
//     cores work on the next one's products.
//   Epilogue per consumer: O /= l (l with the sink), staged through its rows of
//     the Q buffer, 16-byte stores (epilogue.cuh); lse.
//
// Compile-time constants (cuflash/specs.py FwdSm90Spec with stages > 0):
// CUFLASH_DTYPE, CUFLASH_HEAD_DIM D (multiple of 32; columns >= the run-time d
// are zero-filled and never stored), CUFLASH_BLOCK_M Br (64 per consumer
// warpgroup), CUFLASH_BLOCK_N Bc (multiple of 32), CUFLASH_STAGES, and the
// features CUFLASH_MASK, CUFLASH_SOFTCAP, CUFLASH_ALIBI, CUFLASH_SINK,
// CUFLASH_DROPOUT, CUFLASH_VARLEN (seqinfo.cuh). No additive bias: its loads do
// not fit the consumers' registers, and fwd_sm90.cu runs it (FwdSm90Tiles.with_features).
// Constraints: as fwd.cu (d % 8 == 0, 16-byte aligned rows, softmax_scale > 0).
// Shared memory: (Br + 2 STAGES Bc) * D * 2 bytes, 8 bytes per mbarrier
// (1 + 4 STAGES), plus 1 KB of alignment slack (cuflash/launch.py).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/copy.cuh"
#include "common/wgmma.cuh"
#include "common/pipeline.cuh"
#include "common/softmax.cuh"
#include "common/seqinfo.cuh"
#include "common/mask.cuh"
#include "common/score_mod.cuh"
#include "common/epilogue.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BM = CUFLASH_BLOCK_M;
constexpr int BN = CUFLASH_BLOCK_N;
constexpr int STAGES = CUFLASH_STAGES;
constexpr int WGS = BM / 64;  // consumer warpgroups
constexpr int THREADS = (WGS + 1) * 128;
constexpr int NT = BN / 8;  // n8 tiles of S per warp
constexpr int DT = D / 8;   // n8 tiles of O per warp
static_assert(BM % 64 == 0 && BN % 32 == 0 && D % 32 == 0 && STAGES >= 2, "tile shape");
static_assert(WGS >= 1 && WGS <= 3, "one to three consumer warpgroups");
static_assert(!BIAS, "an additive bias runs on fwd_sm90.cu");

// Register split (65536 per SM, one CTA): the producer needs few, the consumers' accumulators many.
constexpr int PRODUCER_REGS = WGS == 3 ? 32 : 56;
constexpr int CONSUMER_REGS = WGS == 3 ? 160 : WGS == 2 ? 224 : 240;
static_assert(register_split_fits<THREADS, PRODUCER_REGS, CONSUMER_REGS>(), "register split");

constexpr u32 Q_BYTES = BM * D * 2;
constexpr u32 KV_BYTES = BN * D * 2;
static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0, "swizzled tiles start on 1024-byte boundaries");

// Named barriers: 1 + c is consumer c's own (epilogue), 1 + WGS + c its turn to issue products.
constexpr int BAR_EPILOGUE = 1, BAR_TURN = 1 + WGS;

extern "C" __global__ void __launch_bounds__(THREADS, 1) cuflash_fwd_sm90(const FwdParams p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    // Swizzled tiles need 1024-byte aligned addresses (launch.py adds the slack).
    const u32 smem_base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    unsigned char* smem = smem_raw + (smem_base - smem_addr(smem_raw));
    const u32 sQ = smem_base;                     // (BM, D)
    const u32 sK0 = sQ + Q_BYTES;                 // STAGES slots of K (BN, D)
    const u32 sV0 = sK0 + STAGES * KV_BYTES;      // STAGES slots of V (BN, D)
    const u32 bars = sV0 + STAGES * KV_BYTES;     // mbarriers, 8 bytes each
    const u32 q_full = bars;
    auto k_full = [&](int s) { return bars + 8u * (1 + s); };
    auto v_full = [&](int s) { return bars + 8u * (1 + STAGES + s); };
    auto k_empty = [&](int s) { return bars + 8u * (1 + 2 * STAGES + s); };
    auto v_empty = [&](int s) { return bars + 8u * (1 + 3 * STAGES + s); };
    auto sK = [&](int s) { return sK0 + (u32)s * KV_BYTES; };
    auto sV = [&](int s) { return sV0 + (u32)s * KV_BYTES; };

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
    auto sink = [&]() { return SINK ? p.sink[si.h] : -INFINITY; };
    float* lse_rows = p.lse == nullptr ? nullptr : p.lse + si.lse_row0(p);
    u16* o = si.query_rows(static_cast<u16*>(p.o), p.o_batch_stride, p.o_row_stride, p.o_head_stride);

    // Key blocks [first, last] hold every key some row of this block may see.
    const int2 key_blocks = vis.key_blocks<BN>(row0, BM);
    const int first = key_blocks.x, last = key_blocks.y - 1;
    if (first > last) {
        // No row of this block sees any key: output 0 and lse = -inf (or the sink).
        store_empty_rows<BM, D, THREADS>(o, p.o_row_stride, lse_rows, sink(), row0, si.seqlen_q, p.head_dim, tid);
        return;
    }
    const int count = last - first + 1;  // blocks to visit

    if (tid == 0) {
        mbar_init(q_full, 128);
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(k_full(s), 128);
            mbar_init(v_full(s), 128);
            mbar_init(k_empty(s), 128 * WGS);
            mbar_init(v_empty(s), 128 * WGS);
        }
        mbar_init_fence();
    }
    // The barriers are initialised before any thread arrives on or waits for one.
    __syncthreads();

    if (wg == 0) {
        // ---- Producer.
        setmaxnreg_dec<PRODUCER_REGS>();
        const u16 *q, *k, *v;
        si.qkv_rows(p, q, k, v);
        load_tile_swizzled<BM, D, 128>(sQ, q, p.q_row_stride, row0, si.seqlen_q, p.head_dim, tid);
        cp_async_arrive(q_full);
#pragma unroll 1
        for (int i = 0; i < count; ++i) {
            const int j = last - i, s = i % STAGES;
            const u32 free_parity = ((i / STAGES) & 1) ^ 1;
            mbar_wait(k_empty(s), free_parity);
            load_tile_swizzled<BN, D, 128>(sK(s), k, p.k_row_stride, j * BN, si.seqlen_k, p.head_dim, tid);
            cp_async_arrive(k_full(s));
            mbar_wait(v_empty(s), free_parity);
            load_tile_swizzled<BN, D, 128>(sV(s), v, p.v_row_stride, j * BN, si.seqlen_k, p.head_dim, tid);
            cp_async_arrive(v_full(s));
        }
        // Leave only after this thread's copies landed: they belong to no commit
        // group yet (the mbarriers track them), so close one and wait for it.
        cp_async_commit();
        cp_async_wait<0>();
        return;
    }

    // ---- Consumers.
    setmaxnreg_inc<CONSUMER_REGS>();
    const int c = wg - 1;                            // consumer index
    const int warp_row0 = c * 64 + warp_in_wg * 16;  // first row of this warp within the block
    const ScoreMod mod(p, si);
    const Dropout drop(p, si.b, si.h);  // used under CUFLASH_DROPOUT only
    const int2 masked = vis.masked_key_blocks<BN>(row0, BM);  // blocks that need the element mask

    // Turns: consumer c issues its products after consumer c - 1 issued its own
    // (the ring wraps), so their softmaxes fall between each other's products.
    // Every consumer issues count + 1 times. Consumer 0's first turn needs no
    // wait and the last consumer's last turn passes to nobody, so every sync
    // below meets exactly one arrival.
    int turn = 0;
    auto take_turn = [&]() {
        if (WGS > 1 && !(c == 0 && turn == 0)) named_sync(BAR_TURN + c, 256);
    };
    auto pass_turn = [&]() {
        if (WGS > 1 && !(c == WGS - 1 && turn == count)) named_arrive(BAR_TURN + (c + 1) % WGS, 256);
        ++turn;
    };
    // Data in slot s (phase of block i) has landed, visible to this thread's wgmmas.
    auto wait_full = [&](u32 bar, int i) {
        mbar_wait(bar, (i / STAGES) & 1);
        fence_proxy_async();  // the copies were generic-proxy writes; wgmma reads through the async proxy
    };

    float acc_o[DT][4];
    zero_acc(as_tile(acc_o));

    OnlineSoftmax<1> softmax;
    softmax.init();
    float acc_s[1][NT][4];
    u32 pa[BN / 16][4];  // P of the block whose P V is issued next, as A fragments

    // S = Q K^T (64 x BN per warpgroup) into acc_s, K from slot s; the first k-step
    // overwrites acc_s. Descriptors computed here from laundered addresses, not held
    // across the loop (wgmma.cuh opaque).
    auto issue_s = [&](int s) { issue_qk<BM, BN, D, false>(acc_s[0], opaque(sQ), c * 64, opaque(sK(s))); };
    // O += P V (16 keys per k-step), V from slot s.
    auto issue_o = [&](int s) { issue_pv<BN, D>(acc_o, pa, opaque(sV(s))); };
    // Mask and fold S of block j into the softmax state: acc_s becomes P (fp32)
    // and corr the factor that rescales O.
    auto softmax_s = [&](int j, float (&corr)[1][2]) {
        if (ScoreMod::ACTIVE) mod.apply<false>(acc_s, row0 + warp_row0, j * BN, lane);
        if (j <= masked.x || j >= masked.y) vis.apply<false>(acc_s, row0 + warp_row0, j * BN, lane);
        softmax.update(acc_s, p.scale_log2, corr);
        // Dropout on P after its row sums: l stays the undropped sum.
        if (DROPOUT) drop.drop(acc_s, row0 + warp_row0, j * BN, lane);
    };

    // S[last] (block 0 of the visit, slot 0) and its softmax (O is still 0: no rescale).
    mbar_wait(q_full, 0);
    wait_full(k_full(0), 0);
    {
        take_turn();
        issue_s(0);
        pass_turn();
        wgmma_wait<0>();
        fence_regs(acc_s[0]);
        mbar_arrive(k_empty(0));
        float corr[1][2];
        softmax_s(last, corr);
        pack_a_fragments(acc_s[0], pa);  // P (16 bits) as the A fragments of P V
    }

    // Step n (block n is visit i = last - n in slot i % STAGES, block n - 1 visit i + 1).
#pragma unroll 1
    for (int n = last; n > first; --n) {
        const int i = last - n, s_v = i % STAGES, s_k = (i + 1) % STAGES;
        wait_full(k_full(s_k), i + 1);
        wait_full(v_full(s_v), i);
        take_turn();
        issue_s(s_k);
        issue_o(s_v);
        pass_turn();
        wgmma_wait<1>();  // S[n-1] is complete; P[n] V[n] may still run
        fence_regs(acc_s[0]);
        mbar_arrive(k_empty(s_k));  // K[n-1] read
        float corr[1][2];
        softmax_s(n - 1, corr);
        wgmma_wait<0>();
        // pa was an operand of the product that just completed: only now may it change.
        fence_regs(acc_o);
        fence_regs(pa);
        mbar_arrive(v_empty(s_v));  // V[n] read
        scale_rows(acc_o, corr[0][0], corr[0][1]);
        pack_a_fragments(acc_s[0], pa);
    }
    {
        const int i = count - 1;  // V[first]
        wait_full(v_full(i % STAGES), i);
        take_turn();
        issue_o(i % STAGES);
        pass_turn();
        wgmma_wait<0>();
        fence_regs(acc_o);
    }

    // Epilogue.
    float inv_l[1][2], lse[1][2];
    softmax.finalize<SINK>(p.scale_log2, inv_l, lse, sink());
    drop.scale_rows(inv_l);  // O / (1 - p) under dropout

    // This warpgroup's 64 rows of sQ were read only by its own wgmmas, all
    // complete (waited above) in every warp once all 128 threads pass here.
    named_sync(BAR_EPILOGUE + c, 128);
    auto swizzled = [](int r, int col) { return swizzled_offset<BM, D>(r, col); };
    stage_tile(smem, swizzled, as_tile(acc_o), inv_l, warp_row0, 0, lane);
    // The 16-byte stores below read rows that other lanes of this warp wrote.
    __syncwarp();
    auto warp_rows = [&](int r, int col) { return swizzled_offset<BM, D>(warp_row0 + r, col); };
    store_staged_rows<16, D>(o, p.o_row_stride, smem, warp_rows, row0 + warp_row0, si.seqlen_q, p.head_dim, lane, 32);
    store_lse(lse_rows, lse, row0 + warp_row0, si.seqlen_q, lane);
}
