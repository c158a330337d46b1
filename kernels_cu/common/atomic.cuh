// atomic.cuh: fp32 reductions into global memory, and an ordered-turn
// semaphore for reproducible (deterministic) accumulation.
#pragma once
#include "platform.cuh"

// *addr += a, *(addr + 1) += b, as reductions performed at L2 (no value
// returned). addr must be 8-byte aligned. sm_90 has a vector form (one
// instruction for both words); older GPUs issue two scalar reductions.
CUFLASH_DEVICE void red_add_f32x2(float* addr, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(addr), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(addr, a);
    atomicAdd(addr + 1, b);
#endif
}

// Ordered turns between CTAs: a counter in global memory (zeroed before the
// launch) says whose turn it is. A CTA calls turn_wait(counter, me) before its
// critical section and turn_pass(counter) after it; the CTA with me = k enters
// after the CTAs 0..k-1 have each passed once, so the writes of the critical
// sections happen in the order 0, 1, 2, ... on every run.
//
// All threads of the CTA must call both (they contain __syncthreads).

// Poll (acquire loads) until *counter == me: the calling thread's view of
// the earlier turns' writes.
CUFLASH_DEVICE void poll_turn(const int* counter, int me) {
    int seen;
    while (true) {
        asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
        if (seen == me) break;
        asm volatile("nanosleep.u32 32;\n");  // back off: fewer L2 polls while the earlier CTAs work
    }
}

// Wait until *counter == me. One thread polls; the barrier then orders every
// thread's following memory operations after the turn.
CUFLASH_DEVICE void turn_wait(const int* counter, int me) {
    if (threadIdx.x == 0) poll_turn(counter, me);
    // Holds every thread of the CTA until its turn has come.
    __syncthreads();
}

// Pass the turn on. Each thread's fence makes its own critical-section writes
// (including reductions) visible at GPU scope before the barrier; the barrier
// ensures all threads have done so before one thread increments the counter.
CUFLASH_DEVICE void turn_pass(int* counter) {
    __threadfence();
    // Every thread's writes are fenced before the counter moves.
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(counter, 1);
}

// The same turns held by one warp alone (the others of the CTA go on), for
// sums written by the bulk-copy unit (the async proxy: cp.reduce.async.bulk).
// Every lane of the warp calls both; the lanes' own bulk groups have completed
// (cp.async.bulk.wait_group 0) before turn_pass.
CUFLASH_DEVICE void warp_turn_wait(const int* counter, int me) {
    if (threadIdx.x % 32 == 0) poll_turn(counter, me);
    // Holds every lane until the turn has come; the proxy fence then orders the
    // lane's bulk reductions after the earlier CTAs' sums it acquired.
    __syncwarp();
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

CUFLASH_DEVICE void warp_turn_pass(int* counter) {
    // The lane's completed bulk reductions, ordered before its generic-proxy
    // fence, are visible at GPU scope before the counter moves.
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    __threadfence();
    // Every lane has fenced its sums before lane 0 passes the turn.
    __syncwarp();
    if (threadIdx.x % 32 == 0) atomicAdd(counter, 1);
}
