// platform.cuh: what every kernel source includes first.
//
// cuflash kernels are compiled by NVRTC, which has no host headers. The
// kernels therefore use only built-in types and inline PTX: no <cstdint>, no
// cuda_fp16.h / cuda_bf16.h (fp16/bf16 values travel as 16-bit integers and
// are converted with PTX `cvt`, see numeric.cuh). A host compiler (nvcc, for
// experiments in kernels_cu/dev) sees the same definitions.
#pragma once

#define CUFLASH_DEVICE __device__ __forceinline__

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;
typedef unsigned long long u64;

// Element types selected by CUFLASH_DTYPE (rendered from the Python spec).
#define CUFLASH_FP16 0
#define CUFLASH_BF16 1
#define CUFLASH_FP32 2  // float32 inputs: the portable kernels' 3xTF32 path (mma.cuh)

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// x, unknown to the compiler from here on. Addresses or descriptors derived
// from a laundered tile address inside a loop are computed where they are
// used, instead of being hoisted out of the loop and held in registers each
// (wgmma.cuh descriptors, mma.cuh swizzled operands).
CUFLASH_DEVICE u32 opaque(u32 x) {
    asm volatile("" : "+r"(x));
    return x;
}

// x as lane 0 of the warp holds it, when ON: for a value that is equal across the warp (a warp or
// warpgroup index from threadIdx) but that ptxas cannot prove so. Then branches on it stay uniform
// and the addresses built from it (barriers, ring slots, descriptors) live in uniform registers;
// from threadIdx directly ptxas treats them as per-thread (vector address arithmetic and R2UR in
// every step, bench/NOTES.md v39). Every lane of the warp must call it. A kernel passes ON = false
// where it measured slower.
template <bool ON = true>
CUFLASH_DEVICE int warp_uniform(int x) { return ON ? __shfl_sync(0xffffffffu, x, 0) : x; }
