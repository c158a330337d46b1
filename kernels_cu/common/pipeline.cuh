// pipeline.cuh: the pieces of a warp-specialised Hopper kernel (sm_90):
// mbarriers that hand shared-memory slots between a producer warpgroup and
// consumer warpgroups, named barriers that order the consumers' tensor-core
// work, bulk reductions into global memory, and setmaxnreg (sm_90a) to move
// registers from producer to consumers.
//
// A slot ring of STAGES slots has two mbarriers per slot:
//   full[s]:  the producer's copies into slot s have landed. Initialised with
//             the producer's thread count; each producer thread's arrival is
//             triggered by the hardware once its cp.async copies so far are
//             complete (cp_async_arrive), so the producer never waits for data.
//   empty[s]: every consumer thread is done reading slot s (its wgmmas that
//             read it have completed). Initialised with the consumer count.
// The u-th use of a slot (u = i / STAGES for the i-th block) is phase u of
// both barriers: consumers wait for full's phase parity u & 1; the producer
// waits for empty's parity (u & 1) ^ 1, which a fresh barrier reports as
// complete, so the first round through the ring does not wait.
// With TMA (tma_load_tile) one producer thread fills a slot: full[s] then counts
// that one arrival (mbar_arrive_expect_tx) and the bytes the copies deliver.
#pragma once
#include "platform.cuh"
#include "params.cuh"  // TmaMap
#include "copy.cuh"    // SwizzleFor

// One 8-byte mbarrier in shared memory, by its shared-window address.
CUFLASH_DEVICE void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Make the initialised barriers visible before any thread uses them (with the
// CTA barrier that follows).
CUFLASH_DEVICE void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

// One arrival (release: this thread's earlier shared-memory accesses happen
// before the phase completes).
CUFLASH_DEVICE void mbar_arrive(u32 bar) {
    asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}

// An arrival triggered once every cp.async this thread issued so far has
// completed. noinc: the arrival is one of the count given at init (the
// pending count is not raised first).
CUFLASH_DEVICE void cp_async_arrive(u32 bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// One arrival that also raises the phase's expected transaction bytes by `bytes`:
// the phase completes once its arrivals are in and TMA copies signalling this
// barrier (complete_tx) have delivered that many bytes.
CUFLASH_DEVICE void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar),
                 "r"(bytes)
                 : "memory");
}

// Block until the phase of the given parity has completed (acquire: what the
// arriving threads wrote before their arrivals is visible afterwards).
CUFLASH_DEVICE void mbar_wait(u32 bar, u32 parity) {
    // The label is local to the braces' PTX scope, so every inlined copy may use it.
    asm volatile(
        "{\n"
        " .reg .pred done;\n"
        " WAIT:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        " @!done bra WAIT;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

// Named barriers (ids 1..15; 0 is __syncthreads) over `threads` threads:
// sync waits until `threads` threads arrived (this one included); arrive
// counts this thread without waiting.
CUFLASH_DEVICE void named_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
CUFLASH_DEVICE void named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// A register split is possible when the registers the producer warpgroup
// gives back cover those the consumers ask for: setmaxnreg.inc waits until the
// CTA's released registers suffice (not the SM's unallocated ones), so a split
// that needs more hangs the consumers for ever (measured: 48/232 with 384
// threads). THREADS threads start with 65536 / THREADS registers, rounded down
// to the allocation unit of 8.
template <int THREADS, int PRODUCER_REGS, int CONSUMER_REGS>
__host__ __device__ constexpr bool register_split_fits() {
    constexpr int launch = (65536 / THREADS) / 8 * 8;
    return PRODUCER_REGS <= launch && CONSUMER_REGS >= launch &&
           128 * (launch - PRODUCER_REGS) >= (THREADS - 128) * (CONSUMER_REGS - launch);
}

// Bulk copies (the async proxy's copy unit, sm_90), here the reduction of a
// shared-memory range into global memory; each thread waits for its own groups.
// dst[0 .. bytes) += src[0 .. bytes) (fp32), performed by the bulk-copy unit at
// L2; src in shared memory. 16-byte aligned addresses, bytes % 16 == 0.
CUFLASH_DEVICE void bulk_reduce_add_f32(float* dst, u32 src, u32 bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
                 "r"(bytes)
                 : "memory");
}
CUFLASH_DEVICE void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Wait until this thread's bulk groups have read their source (READ) or completed.
template <bool READ>
CUFLASH_DEVICE void bulk_wait_all() {
    if (READ) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    else asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// TMA (sm_90): rows [row0, row0 + ROWS) of head h, batch b of the tensor that
// `map` describes ((d, seqlen, heads, batch), cuflash/tma.py) into a swizzled
// ROWS x D tile at `smem` (copy.cuh SwizzleFor: D / AW column blocks of ROWS x AW,
// each one box of the map, which carries the same swizzle), signalling `bar`
// with the ROWS * D * 2 bytes. Rows >= seqlen and columns >= d arrive as zeros.
// The writes are the async proxy's, which wgmma reads without a proxy fence.
// `map` lies in the kernel's __grid_constant__ parameter: its generic address is
// what the instruction takes. Issued by one thread. col0: the tile's first column
// (a bias tile's first key; 0 for Q, K, V rows).
template <int ROWS, int D, int AW = SwizzleFor<D>::AW>
CUFLASH_DEVICE void tma_load_tile(u32 smem, const TmaMap& map, int row0, int h, int b, u32 bar, int col0 = 0) {
    using S = SwizzleFor<D, AW>;
    const u64 desc = reinterpret_cast<u64>(&map);
#pragma unroll
    for (int cb = 0; cb < D / S::AW; ++cb)
        asm volatile(
            "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
            " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem + (u32)(cb * ROWS * S::ROW_BYTES)),
            "l"(desc), "r"(col0 + cb * S::AW), "r"(row0), "r"(h), "r"(b), "r"(bar)
            : "memory");
}

// TMA (sm_90), the other way: the rows of a swizzled TILE_ROWS x D tile at
// `smem` (tma_load_tile's layout) from tile row r0 on (a multiple of 8), as
// many as the box of `map` has (AW columns by R rows), into rows
// [row0, row0 + R) of head h, batch b of the tensor `map` describes; rows >=
// seqlen and columns >= d are not written. The rows were written through the
// generic proxy: each writer fences (fence_proxy_async) and the writers sync
// before one thread issues this and then commits the group (bulk_commit); the
// rows may be written again once that thread's bulk_wait_all<true> returns.
template <int TILE_ROWS, int D, int AW = SwizzleFor<D>::AW>
CUFLASH_DEVICE void tma_store_rows(u32 smem, int r0, const TmaMap& map, int row0, int h, int b) {
    using S = SwizzleFor<D, AW>;
    const u64 desc = reinterpret_cast<u64>(&map);
#pragma unroll
    for (int cb = 0; cb < D / S::AW; ++cb)
        asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(desc),
                     "r"(smem + (u32)((cb * TILE_ROWS + r0) * S::ROW_BYTES)), "r"(cb * S::AW), "r"(row0), "r"(h), "r"(b)
                     : "memory");
}

// A plain bulk copy (sm_90) of `bytes` contiguous global bytes into shared memory,
// signalling `bar` with them: 16-byte aligned addresses, bytes % 16 == 0. Issued by one thread.
CUFLASH_DEVICE void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

// Registers per thread of the executing warpgroup, from here on (every thread
// of the warpgroup executes it). ptxas allocates the code that follows within
// the new count; the decrease must come first, so the increase finds the
// registers free in the SM's pool.
template <int REGS>
CUFLASH_DEVICE void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
}
template <int REGS>
CUFLASH_DEVICE void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
}
