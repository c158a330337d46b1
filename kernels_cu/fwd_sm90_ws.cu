// fwd_sm90_ws.cu: exact attention forward, the warp-specialised Hopper path
// (sm_90a: a producer warpgroup fills a ring of K/V slots, consumer
// warpgroups run only wgmma and the softmax; FlashAttention-3's schedule).
//
// Computes the same as fwd_sm90.cu, for each tile, one (batch b, query head h)
// and a block of Br query rows:
//   S = mod(Q K^T) (score_mod.cuh), P = softmax(S * softmax_scale) (masked,
//   mask.cuh; the learnable sink in the denominator), O = P V,
//   lse = log(exp(sink) + sum_j exp(S_ij * softmax_scale))  (natural log)
// with FlashAttention-2's online softmax (softmax.cuh); S and P never leave
// registers.
//
// Tiles: numbered along gridDim.x alone (tile_at: query blocks fastest, the last
// first, then heads, then batches); CTA x works on tiles x, x + gridDim.x, ...: one
// tile per CTA, or on a persistent grid (one CTA per SM; cuflash/launch.py fwd_grid)
// many, so that a tile's Q and first K/V blocks load while the consumers finish the
// previous tile (Q_BUFFERS Q buffers; the K/V ring runs on across tiles). A causal
// persistent grid deals a head's tiles in pairs of equal work (for_each_tile); a
// varlen one walks a list of the sequences' own tiles built in shared memory (TileList).
// Warpgroups (128 threads each): warpgroup 0 is the producer, warpgroups
// 1..WGS the consumers, consumer c owning query rows 64c..64c+63 of the block.
// The visible key blocks are visited in descending order, last .. first (the
// causal diagonal's masked blocks first; a sliding window's band only); the
// i-th of them, j = last - i, lives in slot i % STAGES (pipeline.cuh).
//   Producer (setmaxnreg down to PRODUCER_REGS), per tile: Q (Br x D) into its Q
//     buffer once the consumers have freed it, then for each block K[j] and V[j]
//     (Bc x D each, swizzled, copy.cuh) into its slot as soon as the consumers
//     freed it; each copy signals the buffer's full barrier when it lands. One
//     thread issues TMA copies (p.tma: tensor maps of q, k, v, cuflash/tma.py;
//     varlen: but a sequence's last, partial K/V block), or all 128 threads
//     cp.async (arrays TMA cannot address, small calls, CUFLASH_TMA=0). With an
//     additive bias block j's Br x Bc tile of it goes into slot i % STAGES of a
//     ring of bias tiles (bias_tile.cuh), beside K[j]: by TMA from the same thread
//     (p.tma bit 1: a bias with query rows that TMA can address), else copied by
//     all 128 threads.
//   Consumers (setmaxnreg up to CONSUMER_REGS), as fwd_sm90.cu's main loop:
//     S[last] = Q K[last]^T and its softmax; then per step n = last .. first+1
//     (in three loops: the blocks that need the element mask, those that do not,
//     and under a left window the masked ones again):
//       issue S[n-1] = Q K[n-1]^T and O += P[n] V[n] (SUMS_BY_MMA: and l += P[n] 1 in
//       the same product); wait for S[n-1], free
//       K[n-1]'s slot; modifier (the bias from its staged tile, then freeing
//       that slot), mask, online softmax -> P[n-1], while P[n] V[n]
//       runs (intra-warpgroup overlap); wait for it, free V[n]'s slot; rescale
//       O; pack P[n-1] to 16 bits. Last: O += P[first] V[first].
//     Ping-pong: the consumers take turns (named barriers, in ring order) to
//     issue their products, so one warpgroup's softmax runs while the tensor
//     cores work on the next one's products. A consumer whose 64 rows all lie
//     past the sequence's end (IDLE_WALK) issues only S[last], then walks the
//     steps' waits, turns and slot releases without computing.
//   Epilogue per consumer: O /= l (l with the sink), staged through its rows of
//     the tile's Q buffer; dense with TMA one thread stores them as a box of 64 rows
//     (p.tma_o) and frees the buffer once the store has read it; otherwise 16-byte
//     stores (epilogue.cuh) and the buffer is freed at once; lse. With two Q buffers
//     and D <= 64 it runs once the next tile's first product is issued (deferred),
//     else where the tile ends.
//
// Compile-time constants (cuflash/specs.py FwdSm90Spec with stages > 0):
// CUFLASH_DTYPE, CUFLASH_HEAD_DIM D (multiple of 32; columns >= the run-time d
// are zero-filled and never stored), CUFLASH_BLOCK_M Br (64 per consumer
// warpgroup), CUFLASH_BLOCK_N Bc (a multiple of 32, or 80, 112, 144, 176: wgmma.cuh),
// CUFLASH_STAGES, CUFLASH_PERSISTENT (the grid: FwdSm90Spec.persistent), CUFLASH_LISTED_SEQS and
// CUFLASH_LISTED_ROWS (varlen on the persistent grid: the most sequences its tile list holds, the
// longest sequence that walks it), CUFLASH_Q_BUFFERS
// (1 or 2: FwdSm90Spec.q_buffers), and the features CUFLASH_MASK, CUFLASH_SOFTCAP,
// CUFLASH_ALIBI, CUFLASH_SINK, CUFLASH_DROPOUT, CUFLASH_VARLEN (seqinfo.cuh), CUFLASH_BIAS (16 only, dense,
// Bc % 64 == 0: staged in shared memory; a float32 or varlen bias, whose loads from global memory do not
// fit the consumers' registers, runs on fwd_sm90.cu: FwdSm90Tiles.with_features).
// Constraints: as fwd.cu (d % 8 == 0, 16-byte aligned rows, softmax_scale > 0); the
// parameter is __grid_constant__, as TMA reads its tensor maps in place.
// Shared memory: (Q_BUFFERS Br + 2 STAGES Bc) * D * 2 bytes, with a bias STAGES Br * Bc * 2
// more, with the rows' sums from P V (SUMS_BY_MMA) STAGES Bc * 128 more (the ones after each V
// slot), 8 bytes per mbarrier (2 Q_BUFFERS + 4 STAGES, with a bias 2 STAGES more), a varlen
// persistent grid's tile list (8 (LISTED_SEQS + 1) bytes), plus 1 KB of alignment slack
// (cuflash/specs.py FwdSm90Spec.ws_smem_bytes).
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
#include "common/bias_tile.cuh"

constexpr int D = CUFLASH_HEAD_DIM;
constexpr int BM = CUFLASH_BLOCK_M;
constexpr int BN = CUFLASH_BLOCK_N;
constexpr int STAGES = CUFLASH_STAGES;
// Skip O's rescale while no row's max rises past 2^8 (softmax.cuh update<LAZY>): at d256 O is
// 128 fp32 registers per thread, so a skipped rescale saves 128 multiplies per block; measured
// +2-4% at d256 and 1-13% slower at d64 (the warp vote and branch cost more than 32 multiplies;
// bench/NOTES.md v24).
constexpr bool LAZY_RESCALE = D >= 256;
constexpr int Q_BUFFERS = CUFLASH_Q_BUFFERS;
constexpr bool PERSISTENT = CUFLASH_PERSISTENT;
constexpr int WGS = BM / 64;  // consumer warpgroups
constexpr int THREADS = (WGS + 1) * 128;
constexpr int NT = BN / 8;  // n8 tiles of S per warp
constexpr int DT = D / 8;   // n8 tiles of O per warp
static_assert(BM % 64 == 0 && BN % 16 == 0 && D % 32 == 0 && STAGES >= 2, "tile shape");
static_assert(WGS >= 1 && WGS <= 3, "one to three consumer warpgroups");
static_assert(Q_BUFFERS == 1 || Q_BUFFERS == 2, "one or two Q buffers");
// An additive bias (16-bit, dense) is staged tile by tile in shared memory by the producer
// (bias_tile.cuh); a float32 or varlen bias runs on fwd_sm90.cu (FwdSm90Tiles.with_features).
static_assert(!BIAS || (CUFLASH_BIAS == 16 && !CUFLASH_VARLEN && BN % 64 == 0), "a dense 16-bit bias, 64-key atoms");
using Bias = BiasTile<BM, BN>;
// The producer's K/V copies by cp.async in a rolled loop beside a bias (FwdSm90Spec.kv_rolled): unrolled,
// their addresses and the bias copy's spilled the 56-register producer of the persistent grid (16-40
// bytes, NVRTC 12.9).
#ifndef CUFLASH_KV_ROLLED
#define CUFLASH_KV_ROLLED 0
#endif
constexpr bool KV_ROLLED = CUFLASH_KV_ROLLED;
constexpr u32 BIAS_BYTES = BIAS ? Bias::BYTES : 0;
// A per-key bias (one staged row per (batch, head): row stride 0) is added by Bias::add_row, each
// key pair widened once for a warp's two rows; any other bias by Bias::add. Above d = 64 a per-key
// bias has a kernel of its own (CUFLASH_BIAS_PER_KEY: FwdSm90Spec.bias_per_key) holding add_row
// alone; at d <= 64 one kernel takes either add by a run-time branch on the row stride
// (CUFLASH_BIAS_ROW_BRANCH: FwdSm90Spec.bias_row_branch; measured 2-6% faster there than a kernel
// per add; at d128 the kernel of its own +1-9%: bench/NOTES.md v31).
constexpr bool BIAS_PER_KEY = BIAS && CUFLASH_BIAS_PER_KEY;
constexpr bool BIAS_ROW_BRANCH = BIAS && CUFLASH_BIAS_ROW_BRANCH;
static_assert(!(BIAS_PER_KEY && BIAS_ROW_BRANCH), "a per-key kernel has no branch between the adds");
constexpr bool BIAS_ROW_ADD = BIAS_PER_KEY || BIAS_ROW_BRANCH;
// The rows' sums of P from the P V product (CUFLASH_SUMS_BY_MMA, FwdSm90Spec.sums_by_mma): each V
// slot is followed in shared memory by a column block of ones (BN rows of 128 bytes, written once),
// and P V runs with N = D + 8, so that its last n8 tile (acc_l) sums P as packed, rescaled with O;
// the softmax adds no sums per score (softmax.cuh SUMS_FROM_PV). Not with dropout (l is the sum of P
// before the drop) or a bias (its staged tiles leave no room for the ones at d128); varlen with a tile
// list of as many sequences as fit beside the ones (LISTED_SEQS, FwdSm90Spec.listed_seqs).
#ifndef CUFLASH_SUMS_BY_MMA
#define CUFLASH_SUMS_BY_MMA 0
#endif
constexpr bool SUMS_BY_MMA = CUFLASH_SUMS_BY_MMA;
static_assert(!SUMS_BY_MMA || (D == 128 && !DROPOUT && !BIAS), "sums by the P V product");
constexpr u32 ONES_BYTES = SUMS_BY_MMA ? BN * 128 : 0;  // after each V slot (KV_BYTES below)
// The epilogue of a tile waits until the next tile's first product is issued, so that the
// tensor cores work through it. Measured (bench/NOTES.md v20): +4-7% at d64 causal 512-2k,
// -2-3% at d128 causal 512-1k; it needs a free Q buffer for the next tile.
constexpr bool DEFER_EPILOGUE = Q_BUFFERS == 2 && D <= 64;

// The warpgroup index made warp-uniform (platform.cuh warp_uniform). Measured (H100, bench/NOTES.md
// v39): 1-4% faster at d64 on three consumers and at d128, but 2-6% slower on d <= 64's two-consumer
// tiles (the short causal calls, 512-1k rows), which keep the index from threadIdx.
constexpr bool UNIFORM_WG = !(D <= 64 && WGS == 2);

// Consumer warpgroups whose rows all lie past the sequence's end walk the tile without computing
// (consume's idle). Not where the walk spilled the consumers or serialised their products (NVRTC
// 12.9, with the warpgroup index warp-uniform): three consumer warpgroups (d32, d64, 160 registers)
// with varlen or a softcap, dense masked kernels at d <= 64 (causal, window: SERIAL or 20-28
// bytes), and d256 with dropout (bench/NOTES.md v38, v39); and only where the warpgroup index is
// warp-uniform (v38: the idle test on a per-thread index cost every step 20 instructions).
constexpr bool IDLE_WALK = UNIFORM_WG && !(WGS == 3 && (CUFLASH_VARLEN || SOFTCAP)) && !(DROPOUT && D >= 256) &&
                           !(D <= 64 && CUFLASH_MASK != CUFLASH_MASK_NONE && !CUFLASH_VARLEN);

// Register split (65536 per SM, one CTA): the producer needs few, the consumers' accumulators many.
constexpr int PRODUCER_REGS = WGS == 3 ? 32 : 56;
constexpr int CONSUMER_REGS = WGS == 3 ? 160 : WGS == 2 ? 224 : 240;
static_assert(register_split_fits<THREADS, PRODUCER_REGS, CONSUMER_REGS>(), "register split");

constexpr u32 Q_BYTES = BM * D * 2;
constexpr u32 KV_BYTES = BN * D * 2;
static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0, "swizzled tiles start on 1024-byte boundaries");

// O leaves by TMA (p.tma_o) in dense calls with TMA. Not varlen: there a box could only
// store a sequence's blocks that end inside it, and the two ways of storing side by side
// spilled the d64 consumers (92-96 bytes at 160 registers, NVRTC 12.9); varlen keeps the
// 16-byte stores (bench/NOTES.md v20).
constexpr bool TMA_STORE = !CUFLASH_VARLEN;

// Named barriers: 1 + c is consumer c's own (epilogue), 1 + WGS + c its turn to issue products.
constexpr int BAR_EPILOGUE = 1, BAR_TURN = 1 + WGS;

// Tile t of the grid's numbering: query blocks fastest, the last (under a causal
// mask the heaviest) first, then heads, then batches, as a one-CTA-per-tile grid
// (m_blocks, nheads, batch) would dispatch them: consecutive tiles share a head's K/V in L2.
struct Tile {
    int m_block, h, b;
};
CUFLASH_DEVICE Tile tile_at(int t, int m_blocks, int nheads) {
    const int bh = t / m_blocks;
    return {m_blocks - 1 - (t - bh * m_blocks), bh % nheads, bh / nheads};
}

// Persistent causal grids deal the tiles in pairs: the k-th heaviest query block of a
// head with its k-th lightest (tile_at numbers a head's blocks heaviest first), so that
// every pair holds about the same number of key blocks (m_blocks + 1 when Br = Bc) and
// the CTAs of a static round-robin finish together; the light tile reads a prefix of
// the heavy one's K/V, still in L2. An odd m_blocks leaves the middle block alone.
constexpr bool PAIRED = PERSISTENT && CUFLASH_MASK == CUFLASH_MASK_CAUSAL;

// Work units of the grid (cuflash/launch.py fwd_grid makes one CTA per unit, or one per SM).
CUFLASH_DEVICE int grid_units(int m_blocks, int bh) { return (PAIRED ? (m_blocks + 1) / 2 : m_blocks) * bh; }

// A varlen batch on the persistent grid walks a list of its sequences' own tiles, not the
// grid's numbering: that covers max_seqlen_q rows per sequence, and a static round-robin
// over it would hand the CTAs empty tiles past short sequences' ends while others work. The
// list, in shared memory, is built by each CTA from cu_seqlens_q (build_tile_list) where the
// batch has at most LISTED_SEQS sequences and the longest at most LISTED_ROWS rows (a 16k
// causal sequence ran 8% faster one CTA per tile, cuflash/specs.py FWD_SM90_LISTED_ROWS;
// other batches: the host launches one CTA per tile of the numbering, cuflash/launch.py
// fwd_grid, FwdSm90Spec.lists_tiles). Sequence b's units are units0[b] ..
// units0[b + 1] - 1, nheads runs of units of its blocks[b] query blocks (a unit is a
// tile, or under PAIRED a pair of them).
constexpr bool LISTED = PERSISTENT && CUFLASH_VARLEN;
#ifndef CUFLASH_LISTED_SEQS
#define CUFLASH_LISTED_SEQS 0
#define CUFLASH_LISTED_ROWS 0
#endif
constexpr int LISTED_SEQS = CUFLASH_LISTED_SEQS, LISTED_ROWS = CUFLASH_LISTED_ROWS;
static_assert(!LISTED || LISTED_SEQS > 0, "a varlen persistent grid lists its sequences");

struct TileList {
    int* units0;  // (LISTED_SEQS + 1,): the first unit of each sequence, units0[batch] = every unit
    int* blocks;  // (LISTED_SEQS,): query blocks of each sequence
    bool listed;  // the batch walks the list (else the grid's numbering, one CTA per tile)
};

// Warp 0 fills the list (the caller syncs the CTA after): first every sequence's block
// count (independent loads), then the prefix of its units over the batch, 32 sequences a
// pass (inclusive warp scan, the running total carried in lane 31).
CUFLASH_DEVICE void build_tile_list(const FwdParams& p, const TileList& list, int lane) {
    for (int b = lane; b < p.batch; b += 32) list.blocks[b] = (query_range(p, b).y + BM - 1) / BM;
    __syncwarp();
    int carry = 0;
    for (int b0 = 0; b0 < p.batch; b0 += 32) {
        const int b = b0 + lane;
        const int n = b < p.batch ? list.blocks[b] : 0;
        int units = (PAIRED ? (n + 1) / 2 : n) * p.nheads;
#pragma unroll
        for (int d = 1; d < 32; d *= 2) {
            const int below = __shfl_up_sync(0xffffffffu, units, d);
            if (lane >= d) units += below;
        }
        if (b < p.batch) list.units0[b + 1] = carry + units;
        carry += __shfl_sync(0xffffffffu, units, 31);
    }
    if (lane == 0) list.units0[0] = 0;
}

// The sequence holding unit u of the list: the last b with units0[b] <= u (binary search).
CUFLASH_DEVICE int listed_sequence(const TileList& list, int batch, int u) {
    int lo = 0, hi = batch - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (list.units0[mid] <= u) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// work(t) for this CTA's tiles t (in the grid's numbering, tile_at): blockIdx.x, and on a
// persistent grid those of every gridDim.x-th unit after it (a unit is a tile, or a pair of
// tiles under PAIRED). Dense pairs go in whole rounds (each CTA as many); the tiles of the
// pairs left over are dealt one at a time, heavy ones first, so a last round of a few pairs
// ends after about one heavy tile instead of a pair (a model of d96 at 8k, 10.2 rounds: 706
// key blocks on the busiest CTA instead of 715; bench/NOTES.md v11). A listed varlen batch
// deals its units round-robin, each pair's heavy tile first. One call site, so the
// consumers' main loop is compiled once.
template <class Work>
CUFLASH_DEVICE void for_each_tile(int m_blocks, int nheads, int batch, const TileList& list, Work& work) {
    const int bh = nheads * batch;
    if (!PERSISTENT) {
        work((int)blockIdx.x);
        return;
    }
    if (LISTED) {
        const int units = list.listed ? list.units0[batch] : m_blocks * bh;
#pragma unroll 1
        for (int n = 0;; ++n) {
            const int u = blockIdx.x + (PAIRED && list.listed ? n >> 1 : n) * gridDim.x;
            if (u >= units) break;
            int t = u;
            if (list.listed) {
                const int b = listed_sequence(list, batch, u);
                const int nb = list.blocks[b], per_head = PAIRED ? (nb + 1) / 2 : nb;
                const int local = u - list.units0[b], h = local / per_head, k = local - h * per_head;
                const bool light = PAIRED && (n & 1);
                const int i = light ? nb - 1 - k : k;  // position in the head's heaviest-first order
                if (light && i == k) continue;         // the middle block of an odd count
                t = (b * nheads + h) * m_blocks + m_blocks - nb + i;  // query block nb - 1 - i
            }
            work(t);
        }
        return;
    }
    const int units = grid_units(m_blocks, bh);
    if (!PAIRED) {
#pragma unroll 1
        for (int t = blockIdx.x; t < units; t += gridDim.x) work(t);
        return;
    }
    const int pairs = (m_blocks + 1) / 2;
    const int rounds = units / gridDim.x, left = units - rounds * gridDim.x;  // whole rounds; pairs left
#pragma unroll 1
    for (int n = 0;; ++n) {
        int u;
        bool light;
        if (n < 2 * rounds) {  // n even: a pair's heavy tile, odd: its light one
            u = blockIdx.x + (n >> 1) * gridDim.x;
            light = n & 1;
        } else {  // the j-th tile left over: the heavy tiles of the pairs left, then their light ones
            const int j = blockIdx.x + (n - 2 * rounds) * gridDim.x;
            if (j >= 2 * left) break;
            light = j >= left;
            u = rounds * gridDim.x + (light ? j - left : j);
        }
        const int head = u / pairs, k = u - head * pairs;
        const int i = light ? m_blocks - 1 - k : k;  // position in the head's heaviest-first order
        if (light && i == k) continue;               // the middle block of an odd count
        work(head * m_blocks + i);
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) cuflash_fwd_sm90(const __grid_constant__ FwdParams p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u32 smem_base;  // shared-window address of smem
    unsigned char* smem = smem_aligned_1024(smem_raw, smem_base);
    const u32 sK0 = smem_base + Q_BUFFERS * Q_BYTES;  // Q_BUFFERS buffers of Q (BM, D), then
    const u32 sV0 = sK0 + STAGES * KV_BYTES;          // STAGES slots of K (BN, D), of V (BN, D)
    constexpr u32 V_SLOT = KV_BYTES + ONES_BYTES;     // (SUMS_BY_MMA: each V followed by its ones)
    const u32 sB0 = sV0 + STAGES * V_SLOT;            // BIAS: STAGES slots of the bias (BM, BN)
    const u32 bars = sB0 + STAGES * BIAS_BYTES;       // mbarriers, 8 bytes each, then (LISTED) the tile list
    auto sQ = [&](int qb) { return smem_base + (u32)qb * Q_BYTES; };
    auto q_full = [&](int qb) { return bars + 8u * qb; };
    auto q_empty = [&](int qb) { return bars + 8u * (Q_BUFFERS + qb); };
    auto k_full = [&](int s) { return bars + 8u * (2 * Q_BUFFERS + s); };
    auto v_full = [&](int s) { return bars + 8u * (2 * Q_BUFFERS + STAGES + s); };
    auto k_empty = [&](int s) { return bars + 8u * (2 * Q_BUFFERS + 2 * STAGES + s); };
    auto v_empty = [&](int s) { return bars + 8u * (2 * Q_BUFFERS + 3 * STAGES + s); };
    auto sK = [&](int s) { return sK0 + (u32)s * KV_BYTES; };
    auto sV = [&](int s) { return sV0 + (u32)s * V_SLOT; };
    // BIAS: the bias slots' barriers, as K's (the bias of K[j]'s block shares its slot index).
    auto b_full = [&](int s) { return bars + 8u * (2 * Q_BUFFERS + 4 * STAGES + s); };
    auto b_empty = [&](int s) { return bars + 8u * (2 * Q_BUFFERS + 5 * STAGES + s); };
    auto sB = [&](int s) { return sB0 + (u32)s * BIAS_BYTES; };
    int* const list_words =
        reinterpret_cast<int*>(smem + (bars + 8u * (2 * Q_BUFFERS + (BIAS ? 6 : 4) * STAGES) - smem_base));
    const TileList list{list_words, list_words + LISTED_SEQS + 1, LISTED && p.batch <= LISTED_SEQS && p.seqlen_q <= LISTED_ROWS};

    const int tid = threadIdx.x, lane = tid % 32;
    const int wg = warp_uniform<UNIFORM_WG>(tid / 128), warp_in_wg = warp_uniform<UNIFORM_WG>((tid / 32) % 4);
    // A varlen grid covers the longest sequence (p.seqlen_q).
    const int m_blocks = (p.seqlen_q + BM - 1) / BM;
    // TMA loads. Dense: thread 0 alone issues them (one arrival per full phase). Varlen: a box
    // past a sequence's end would read the next sequence's rows where cp.async reads zeros, and
    // a non-finite value there would reach P V (0 * inf); so a sequence's last, partial K/V
    // block is copied with cp.async by all 128 threads, and every full phase counts 128
    // arrivals: thread 0's with the TMA bytes, the others' plain ones. (Q rows past the end
    // are other sequences' rows, whose outputs are never stored.)
    const bool tma = p.tma;
    const bool tma_alone = !CUFLASH_VARLEN && tma;
    const u32 producers = tma_alone ? 1 : 128;  // arrivals that a full barrier's phase needs
    // The bias by TMA too (the host sets bit 1 only for dense calls with TMA): thread 0 alone.
    const bool tma_bias = BIAS && tma_alone && (p.tma & 2);

    if (tid == 0) {
        for (int qb = 0; qb < Q_BUFFERS; ++qb) {
            mbar_init(q_full(qb), producers);
            mbar_init(q_empty(qb), 128 * WGS);
        }
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(k_full(s), producers);
            mbar_init(v_full(s), producers);
            mbar_init(k_empty(s), 128 * WGS);
            mbar_init(v_empty(s), 128 * WGS);
            if (BIAS) {
                mbar_init(b_full(s), tma_bias ? 1 : 128);  // thread 0's TMA, or every producer thread's part
                mbar_init(b_empty(s), 128 * WGS);
            }
        }
        mbar_init_fence();
    }
    if (LISTED && list.listed && wg == 0 && warp_in_wg == 0) build_tile_list(p, list, lane);
    if (SUMS_BY_MMA) {
        // The ones after each V slot (16-bit 1.0 pairs), read by every P V product; generic-proxy
        // writes that wgmma reads through the async proxy: each thread fences its own.
        const u32 ones = CUFLASH_DTYPE == CUFLASH_BF16 ? 0x3F803F80u : 0x3C003C00u;
        for (int s = 0; s < STAGES; ++s)
            for (u32 off = 16u * tid; off < ONES_BYTES; off += 16u * THREADS)
                st_shared_16(sV(s) + KV_BYTES + off, ones, ones, ones, ones);
        fence_proxy_async();
    }
    // The barriers are initialised before any thread arrives on or waits for one, the tile
    // list is written before any thread reads it, and the ones before any product reads them.
    __syncthreads();

    // Producer and consumers walk the same tiles and skip the same ones (a varlen block
    // past its sequence's end; a block whose rows see no key, whose rows the consumers
    // store), so they agree on each tile's Q buffer (the kq-th tile loaded uses buffer
    // kq % Q_BUFFERS) and each block's ring slot (the g-th block loaded uses slot g % STAGES),
    // and on the phases of both.
    if (wg == 0) {
        // ---- Producer.
        setmaxnreg_dec<PRODUCER_REGS>();
        // Dense with TMA: one thread issues every copy of Q, K and V (and the bias's, tma_bias), arriving
        // once on a full barrier with the bytes to come. Else a bias is copied by all 128 threads
        // (bias_tile.cuh), each arriving on its barrier.
        if (tma_alone && (!BIAS || tma_bias) && tid != 0) return;
        const bool loads_qkv = !tma_alone || tid == 0;
        // The maps' batch index: varlen maps hold every sequence's rows as one batch.
        auto map_batch = [&](const SeqInfo& si) { return CUFLASH_VARLEN ? 0 : si.b; };
        int kq = 0, g = 0;
        auto produce = [&](int t) {
            const Tile tile = tile_at(t, m_blocks, p.nheads);
            const int row0 = tile.m_block * BM;
            const SeqInfo si(p, tile.b, tile.h);
            if (si.past_end(row0)) return;
            const int2 key_blocks = Visibility(p, si).key_blocks<BN>(row0, BM);
            const int first = key_blocks.x, last = key_blocks.y - 1;
            if (first > last) return;
            const u16 *q, *k, *v;
            si.qkv_rows(p, q, k, v);
            const int qb = kq % Q_BUFFERS;
            if (!BIAS || loads_qkv) {
                mbar_wait(q_empty(qb), ((kq / Q_BUFFERS) & 1) ^ 1);
                if (tma) {
                    if (!CUFLASH_VARLEN || tid == 0) {
                        mbar_arrive_expect_tx(q_full(qb), Q_BYTES);
                        tma_load_tile<BM, D>(sQ(qb), p.tma_q, si.q_start + row0, si.h, map_batch(si), q_full(qb));
                    } else {
                        mbar_arrive(q_full(qb));
                    }
                } else {
                    // tid laundered: the Q tile's shared-memory offsets, hoisted out of the tile loop, spilled;
                    // the tested path alone (the K/V blocks' untested one beside it spilled 20-52 bytes).
                    load_tile_swizzled<BM, D, 128, SwizzleFor<D>::AW, false, false>(
                        sQ(qb), q, p.q_row_stride, row0, si.seqlen_q, p.head_dim, (int)opaque((u32)tid));
                    cp_async_arrive(q_full(qb));
                }
            }
            ++kq;
            // One loop for both ways of copying: one per way spilled the cp.async producer at d256 (36 bytes,
            // its hoisted Q-tile offsets), and the test per copy is one uniform branch.
#pragma unroll 1
            for (int j = last; j >= first; --j, ++g) {
                const int s = g % STAGES;
                const u32 free_parity = ((g / STAGES) & 1) ^ 1;
                // Varlen: a block partly past the sequence's end by cp.async (zeros there).
                const bool by_tma = tma && (!CUFLASH_VARLEN || (j + 1) * BN <= si.seqlen_k);
                if (!BIAS || loads_qkv) {
                    mbar_wait(k_empty(s), free_parity);
                    if (by_tma) {
                        if (!CUFLASH_VARLEN || tid == 0) {
                            mbar_arrive_expect_tx(k_full(s), KV_BYTES);
                            tma_load_tile<BN, D>(sK(s), p.tma_k, si.k_start + j * BN, si.h_kv, map_batch(si),
                                                 k_full(s));
                        } else {
                            mbar_arrive(k_full(s));
                        }
                    } else {
                        load_tile_swizzled<BN, D, 128, SwizzleFor<D>::AW, KV_ROLLED>(sK(s), k, p.k_row_stride,
                                                                                      j * BN, si.seqlen_k, p.head_dim, tid);
                        cp_async_arrive(k_full(s));
                    }
                }
                // The bias of block j, beside K[j]: the consumers add it to S[j]. (constexpr: the tile's
                // helpers need Bc % 64 == 0, which only the kernels with a bias are held to.)
                if constexpr (BIAS) {
                    mbar_wait(b_empty(s), free_parity);
                    // tma_bias read again from the parameter: held across the loop, it cost the 56-register
                    // producer a spill at d32 / d64 (NVRTC 13.5).
                    if (tma_alone && (p.tma & 2)) {
                        mbar_arrive_expect_tx(b_full(s), Bias::BYTES);
                        Bias::load(sB(s), p, si, row0, j * BN, b_full(s));
                    } else if (Bias::copy<128>(sB(s), p, si, row0, j * BN, tid)) {
                        cp_async_arrive(b_full(s));
                    } else {
                        mbar_arrive(b_full(s));
                    }
                }
                if (!BIAS || loads_qkv) {
                    mbar_wait(v_empty(s), free_parity);
                    if (by_tma) {
                        if (!CUFLASH_VARLEN || tid == 0) {
                            mbar_arrive_expect_tx(v_full(s), KV_BYTES);
                            tma_load_tile<BN, D>(sV(s), p.tma_v, si.k_start + j * BN, si.h_kv, map_batch(si),
                                                 v_full(s));
                        } else {
                            mbar_arrive(v_full(s));
                        }
                    } else {
                        load_tile_swizzled<BN, D, 128, SwizzleFor<D>::AW, KV_ROLLED>(sV(s), v, p.v_row_stride,
                                                                                      j * BN, si.seqlen_k, p.head_dim, tid);
                        cp_async_arrive(v_full(s));
                    }
                }
            }
        };
        for_each_tile(m_blocks, p.nheads, p.batch, list, produce);
        // Leave only after this thread's cp.async copies landed: they belong to no
        // commit group yet (the mbarriers track them), so close one and wait for it.
        // (TMA copies need no wait: the consumers wait for them, and the CTA lives on.)
        if (!tma_alone || BIAS) {
            cp_async_commit();
            cp_async_wait<0>();
        }
        return;
    }

    // ---- Consumers.
    setmaxnreg_inc<CONSUMER_REGS>();
    const int c = wg - 1;                            // consumer index
    const int warp_row0 = c * 64 + warp_in_wg * 16;  // first row of this warp within the block
    // BIAS: this lane's ldmatrix address in a staged bias tile (a per-key bias stages one row).
    const bool one_row = BIAS_PER_KEY || p.bias_row_stride == 0;
    const u32 bias_lane = BIAS ? Bias::lane_offset<BIAS_ROW_ADD>(warp_row0, lane, one_row) : 0u;

    // Turns: consumer c issues its products after consumer c - 1 issued its own
    // (the ring wraps), so their softmaxes fall between each other's products.
    // Consumer 0's first turn needs no wait; the last consumer's last pass is taken
    // by consumer 0 after its last tile, so every sync meets exactly one arrival.
    int turn = 0;
    auto take_turn = [&]() {
        if (WGS > 1 && !(c == 0 && turn == 0)) named_sync(BAR_TURN + c, 256);
    };
    auto pass_turn = [&]() {
        if (WGS > 1) named_arrive(BAR_TURN + (c + 1) % WGS, 256);
        ++turn;
    };
    // Data of ring position g (slot g % STAGES) has landed, visible to this thread's wgmmas.
    auto wait_full = [&](u32 bar, int g) {
        mbar_wait(bar, (g / STAGES) & 1);
        // cp.async copies are generic-proxy writes, and wgmma reads through the async proxy (TMA's writes are its own).
        if (!tma_alone) fence_proxy_async();
    };

    // A tile's rows of lse (none where the caller wants no lse).
    auto lse_rows = [&](const SeqInfo& si) { return p.lse == nullptr ? nullptr : p.lse + si.lse_row0(p); };

    int kq = 0, g0 = 0;  // tiles and K/V blocks consumed so far

    // O of the last tile consumed waits in acc_o (unscaled) for the epilogue, with that
    // tile (done_t; -1: none), its Q buffer and its rows' 1/l and lse. DEFER_EPILOGUE: it
    // runs in the next tile's consume, once that tile's first product is issued; else
    // where the tile ends.
    float acc_o[DT][4];
    int done_t = -1, done_qb = 0, held_q = -1;
    float done_inv_l[1][2], done_lse[1][2];
    auto epilogue = [&]() {
        if (done_t < 0) return;
        // Where the tile's rows lie is found again from done_t, laundered: held across the
        // main loop, those values spilled (ptxas does not recompute them).
        const Tile at = tile_at((int)opaque((u32)done_t), m_blocks, p.nheads);
        const SeqInfo so(p, at.b, at.h);
        const int orow0 = at.m_block * BM;
        const u32 sQt = sQ(done_qb);
        // This warpgroup's 64 rows of the Q buffer were read only by its own wgmmas, all
        // complete (waited at the tile's end) in every warp once all 128 threads pass here.
        named_sync(BAR_EPILOGUE + c, 128);
        unsigned char* staged = smem + (sQt - smem_base);
        // The lane, laundered: the staging offsets derived from it are the same for every
        // tile, and hoisted out of the tile loop they spilled the consumers (d128 causal).
        const int elane = PERSISTENT ? (int)opaque((u32)lane) : lane;
        auto swizzled = [](int r, int col) { return swizzled_offset<BM, D>(r, col); };
        stage_tile(staged, swizzled, as_tile(acc_o), done_inv_l, warp_row0, 0, elane);
        // Dense with TMA: the warpgroup's 64 rows leave in one box of the map of o (rows
        // past seqlen_q are not written), issued by one thread.
        const bool store_by_tma = TMA_STORE && tma;
        if (store_by_tma) {
            // The staged rows are generic-proxy writes and the bulk copy reads through the
            // async proxy: every thread fences its own, and all 128 have before one issues it.
            fence_proxy_async();
            named_sync(BAR_EPILOGUE + c, 128);
            if (tid % 128 == 0) {
                tma_store_rows<BM, D>(sQt, c * 64, p.tma_o, orow0 + c * 64, so.h, so.b);
                bulk_commit();
            }
        } else {
            // The 16-byte stores below read rows that other lanes of this warp wrote.
            __syncwarp();
            auto warp_rows = [&](int r, int col) { return swizzled_offset<BM, D>(warp_row0 + r, col); };
            store_staged_rows<16, D>(so.out_rows<u16>(p), p.o_row_stride, staged, warp_rows, orow0 + warp_row0,
                                     so.seqlen_q, p.head_dim, elane, 32);
            // A TMA load writes through the async proxy, after this thread's generic-proxy
            // staging: fence them apart.
            if (tma) fence_proxy_async();
        }
        store_lse(lse_rows(so), done_lse, orow0 + warp_row0, so.seqlen_q, elane);
        // This thread is done with the staged rows: the producer may load the next Q into
        // this buffer once every consumer thread arrived. The thread that issued a bulk
        // store arrives once the store has read the rows: where the epilogue ends a tile
        // and two Q buffers take turns, after the next tile's first product is issued
        // (release_q), so that the wait costs the warpgroup nothing.
        if (store_by_tma && tid % 128 == 0) {
            if (!DEFER_EPILOGUE && Q_BUFFERS == 2) {
                held_q = done_qb;
            } else {
                bulk_wait_all<true>();
                mbar_arrive(q_empty(done_qb));
            }
        } else {
            mbar_arrive(q_empty(done_qb));
        }
        done_t = -1;
    };
    // The Q buffer that this thread's bulk store of O may still be reading (-1: none), and
    // its release once the store has read it. (The epilogue's own wait and arrival, where it
    // holds no buffer, written as held_q = done_qb; release_q() spilled d64 causal's
    // three-warpgroup consumers: 4 bytes, NVRTC 12.9.)
    auto release_q = [&]() {
        if (held_q < 0) return;
        bulk_wait_all<true>();
        mbar_arrive(q_empty(held_q));
        held_q = -1;
    };
    auto consume = [&](int t) {
        const Tile tile = tile_at(t, m_blocks, p.nheads);
        const int row0 = tile.m_block * BM;
        const SeqInfo si(p, tile.b, tile.h);
        if (si.past_end(row0)) return;
        const Visibility vis(p, si);

        // Key blocks [first, last] hold every key some row of this block may see.
        const int2 key_blocks = vis.key_blocks<BN>(row0, BM);
        const int first = key_blocks.x, last = key_blocks.y - 1;
        if (first > last) {
            // No row of this block sees any key: output 0 and lse = -inf (or the sink).
            store_empty_rows<BM, D, 128 * WGS>(si.out_rows<u16>(p), p.o_row_stride, lse_rows(si), sink_logit(p, si),
                                               row0, si.seqlen_q, p.head_dim, tid - 128);
            return;
        }
        const int count = last - first + 1;  // blocks to visit
        const int qb = kq % Q_BUFFERS;
        const u32 sQt = sQ(qb);
        const ScoreMod mod(p, si);
        const Dropout drop(p, si.b, si.h, SeedReadOnce{});  // used under CUFLASH_DROPOUT only
        const int2 masked = vis.masked_key_blocks<BN>(row0, BM);  // blocks that need the element mask

        OnlineSoftmax<1, SUMS_BY_MMA> softmax;
        softmax.init();
        float acc_s[1][NT][4];
        float acc_l[1][4];  // SUMS_BY_MMA: the rows' sums of P (every column of the n8 tile)
        u32 pa[BN / 16][4];  // P of the block whose P V is issued next, as A fragments

        // S = Q K^T (64 x BN per warpgroup) into acc_s, K from slot s; the first k-step
        // overwrites acc_s. Descriptors computed here from laundered addresses, not held
        // across the loop (wgmma.cuh opaque).
        auto issue_s = [&](int s) { issue_qk<BM, BN, D, false>(acc_s[0], opaque(sQt), c * 64, opaque(sK(s))); };
        // O += P V (16 keys per k-step), V from slot s.
        auto issue_o = [&](int s) {
            if constexpr (SUMS_BY_MMA) issue_pv_sums<BN, D>(acc_o, acc_l, pa, opaque(sV(s)));
            else issue_pv<BN, D>(acc_o, pa, opaque(sV(s)));
        };
        // Mask and fold S of block j (ring position g) into the softmax state: acc_s becomes P (fp32)
        // and corr the factor that rescales O; returns false when O needs no rescale
        // (the lazy update, LAZY_RESCALE: no row of the warp raised its max by more
        // than 2^8; always under SOFTMAX_FIXED, softmax.cuh).
        auto softmax_s = [&](int j, int g, float (&corr)[1][2], bool masked_block) {
            if (ScoreMod::ACTIVE) mod.apply<false, true>(acc_s, row0 + warp_row0, j * BN, lane);
            if (BIAS) {  // after softcap and ALiBi, before the mask (a masked score stays -inf)
                const int s = g % STAGES;
                mbar_wait(b_full(s), (g / STAGES) & 1);
                if (BIAS_PER_KEY || (BIAS_ROW_BRANCH && p.bias_row_stride == 0))
                    Bias::add_row(acc_s[0], sB(s), bias_lane, mod.inv_scale);
                else Bias::add(acc_s[0], sB(s), bias_lane, mod.inv_scale);
                mbar_arrive(b_empty(s));  // the tile is in registers (the arrival orders the reads before it)
            }
            if (masked_block) vis.apply_rows(acc_s, row0 + warp_row0, j * BN, lane);
            const bool rescale = softmax.template update<LAZY_RESCALE>(acc_s, p.scale_log2, corr);
            return rescale;
        };
        // P of block j (16 bits) as the A fragments of P V; dropout clears the dropped
        // entries of the packed P, after the row sums (l stays the undropped sum).
        auto pack_block = [&](int j) {
            softmax.pack_p(acc_s[0], pa);
            if (DROPOUT) drop.drop_packed<false>(pa, row0 + warp_row0, j * BN, lane);
        };

        // A warpgroup whose 64 rows all lie past the sequence's end (the last block of a
        // sequence that ends inside the tile; IDLE_WALK) computes no softmax and issues no
        // product but the first block's S: it walks the blocks for the barriers alone
        // (idle_step), so the tensor cores serve the other warpgroups. Its O stays 0 and its
        // rows are never stored. (That first S stays unconditional: issued under the test, its
        // accumulators spilled the consumers, 700-1452 bytes at d64 / d128 causal, NVRTC 12.9.)
        const bool idle = IDLE_WALK && row0 + c * 64 >= si.seqlen_q;
        // An idle warpgroup's turn at ring position g's bias slot: waited for and freed unread.
        auto pass_bias = [&](int g) {
            if (BIAS) {
                mbar_wait(b_full(g % STAGES), (g / STAGES) & 1);
                mbar_arrive(b_empty(g % STAGES));
            }
        };

        // S[last] (the tile's first block, ring position g0) and its softmax (O is still 0: no rescale).
        // (The Q buffer is waited for by an idle warpgroup too: its epilogue stages into it.)
        mbar_wait(q_full(qb), (kq / Q_BUFFERS) & 1);
        wait_full(k_full(g0 % STAGES), g0);
        {
            take_turn();
            issue_s(g0 % STAGES);
            pass_turn();
            if (DEFER_EPILOGUE) epilogue();  // the previous tile's O, while S runs
            release_q();                     // the previous tile's Q buffer
            zero_acc(as_tile(acc_o));
            if (SUMS_BY_MMA) zero_acc(as_tile(acc_l));
            wgmma_wait<0>();
            fence_regs(acc_s[0]);
            mbar_arrive(k_empty(g0 % STAGES));
            if (!idle) {
                float corr[1][2];
                softmax_s(last, g0, corr, last <= masked.x || last >= masked.y);  // O is 0: nothing to rescale
                pack_block(last);
            } else {
                pass_bias(g0);
            }
        }

        // Step n (block n is ring position g = g0 + last - n, block n - 1 position g + 1).
        auto step = [&](int n, bool masked_block) {
            const int g = g0 + last - n, s_v = g % STAGES, s_k = (g + 1) % STAGES;
            wait_full(k_full(s_k), g + 1);
            wait_full(v_full(s_v), g);
            take_turn();
            issue_s(s_k);
            issue_o(s_v);
            pass_turn();
            wgmma_wait<1>();  // S[n-1] is complete; P[n] V[n] may still run
            fence_regs(acc_s[0]);
            mbar_arrive(k_empty(s_k));  // K[n-1] read
            float corr[1][2];
            const bool rescale = softmax_s(n - 1, g + 1, corr, masked_block);
            wgmma_wait<0>();
            // pa was an operand of the product that just completed: only now may it change.
            fence_regs(acc_o);
            if (SUMS_BY_MMA) fence_regs(acc_l);
            fence_regs(pa);
            mbar_arrive(v_empty(s_v));  // V[n] read
            if (rescale) {  // a constant unless LAZY_RESCALE
                scale_rows(acc_o, corr[0][0], corr[0][1]);
                if (SUMS_BY_MMA) scale_rows(acc_l, corr[0][0], corr[0][1]);
            }
            pack_block(n - 1);
        };
        // An idle warpgroup's step: step()'s waits, turn and arrivals (in its order), no work.
        auto idle_step = [&](int n) {
            const int g = g0 + last - n, s_v = g % STAGES, s_k = (g + 1) % STAGES;
            wait_full(k_full(s_k), g + 1);
            wait_full(v_full(s_v), g);
            take_turn();
            pass_turn();
            mbar_arrive(k_empty(s_k));
            pass_bias(g + 1);
            mbar_arrive(v_empty(s_v));
        };
        // The blocks that need the element mask are visited first (j >= masked.y: the
        // causal diagonal, seqlen_k's edge) and, under a left window, last (j <= masked.x):
        // three loops, each step inlined with the mask or without, so that the middle
        // loop (most of a long row's blocks) tests nothing per block and holds no mask
        // state (measured 1-2% faster than one loop testing j, d64-d128, bench/NOTES.md v12).
        int n = last;
        if (idle) {
#pragma unroll 1
            for (; n > first; --n) idle_step(n);
        }
#pragma unroll 1
        for (; n > first && n - 1 >= masked.y; --n) step(n, true);
#pragma unroll 1
        for (; n > first && n - 1 > masked.x; --n) step(n, false);
        if (LEFT_BOUNDED) {
#pragma unroll 1
            for (; n > first; --n) step(n, true);
        }
        {
            const int g = g0 + count - 1;  // V[first]
            wait_full(v_full(g % STAGES), g);
            take_turn();
            if (!idle) issue_o(g % STAGES);
            pass_turn();
            wgmma_wait<0>();
            fence_regs(acc_o);
            if (SUMS_BY_MMA) fence_regs(acc_l);
            mbar_arrive(v_empty(g % STAGES));
        }

        // O waits for the epilogue (above). The sink's logit is found again from t,
        // laundered (as the epilogue's rows).
        const Tile at = tile_at((int)opaque((u32)t), m_blocks, p.nheads);
        if constexpr (SUMS_BY_MMA) softmax.take_sums(acc_l);
        softmax.finalize<SINK>(p.scale_log2, done_inv_l, done_lse, sink_logit(p, SeqInfo(p, at.b, at.h)));
        drop.scale_rows(done_inv_l);  // O / (1 - p) under dropout
        done_t = t;
        done_qb = qb;
        if (!DEFER_EPILOGUE) epilogue();
        ++kq;
        g0 += count;
    };
    for_each_tile(m_blocks, p.nheads, p.batch, list, consume);
    if (DEFER_EPILOGUE) epilogue();  // the last tile's O
    release_q();                     // shared memory stays while the last bulk store reads it
    if (WGS > 1 && c == 0 && turn > 0) named_sync(BAR_TURN, 256);  // the last consumer's last pass
}
