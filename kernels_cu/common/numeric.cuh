// numeric.cuh: the element type, 16-bit float conversions and fast exp2, in inline PTX.
//
// fp16 and bf16 values are stored as u16 and moved in pairs as u32 (the
// register layout mma.sync expects); float32 inputs (CUFLASH_FP32) are stored
// as float. CUFLASH_DTYPE picks the element type.
#pragma once
#include "platform.cuh"

#if CUFLASH_DTYPE == CUFLASH_FP32
typedef float elem_t;
#else
typedef u16 elem_t;
#endif
constexpr bool FP32 = CUFLASH_DTYPE == CUFLASH_FP32;
constexpr int ELEM_BYTES = sizeof(elem_t);
// Elements per 16-byte chunk: one cp.async, one vector store, the padding of a
// shared-memory row (copy.cuh).
constexpr int CHUNK = 16 / ELEM_BYTES;

// The two logarithm constants of the exp2-domain softmax: log2(e) and ln(2).
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.69314718055994531f;

// Two floats -> one u32 holding {lo, hi} as 16-bit values, round to nearest
// even. PTX puts the first source operand in the upper half. (A float32
// kernel has no 16-bit values; it gets bf16 here, used by nothing.)
CUFLASH_DEVICE u32 pack_float2(float lo, float hi) {
    u32 r;
#if CUFLASH_DTYPE == CUFLASH_FP16
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

// 2^x with the SFU (ex2.approx, flushed denormals): exact enough for softmax
// probabilities, and ex2(-inf) = +0, which the masking relies on.
CUFLASH_DEVICE float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// 2^x on the FMA pipe instead of the SFU (x < 128): x = j + f with j = round(x) (adding
// 1.5 * 2^23 leaves j in the low bits of r), 2^f on [-1/2, 1/2] by a degree-3 polynomial (relative
// error 1.0e-4, fitted for the relative error; a bf16 P is rounded by up to 2^-9), and j added into
// the exponent field. x is clamped at -127, where f = 0 and p = 1 exactly, so the result is +0
// there: a masked score (-inf) gives +0, as ex2.approx.ftz does; (-127, -126) gives a denormal.
CUFLASH_DEVICE float exp2_fma(float x) {
    const float xc = fmaxf(x, -127.f);
    const float r = xc + 12582912.f;
    const float f = xc - (r - 12582912.f);
    const float p = fmaf(fmaf(fmaf(0.05500893f, f, 0.24221098f), f, 0.6932829f), f, 1.f);
    return __uint_as_float(__float_as_uint(p) + (__float_as_uint(r) << 23));
}

CUFLASH_DEVICE float fast_log2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// One u32 holding {lo, hi} 16-bit values -> two floats, exactly (the inverse
// of pack_float2 for representable values). bf16 is the upper half of an fp32
// bit pattern, so it widens with shifts; fp16 goes through cvt.
CUFLASH_DEVICE float2 unpack_float2(u32 v) {
#if CUFLASH_DTYPE != CUFLASH_FP16
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
#else
    float lo, hi;
    asm("{\n .reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n}\n"
        : "=f"(lo), "=f"(hi)
        : "r"(v));
    return make_float2(lo, hi);
#endif
}

// Two adjacent elements (a lane's pair of fragment columns) stored at dst in
// the element type: one u32 of 16-bit values or one float2.
CUFLASH_DEVICE void store_pair(void* dst, float lo, float hi) {
    if constexpr (FP32) *reinterpret_cast<float2*>(dst) = make_float2(lo, hi);
    else *reinterpret_cast<u32*>(dst) = pack_float2(lo, hi);
}

// One 16-byte chunk of elements (CHUNK of them) -> floats x[0 .. CHUNK).
CUFLASH_DEVICE void unpack_chunk(const uint4& c, float (&x)[CHUNK]) {
    const u32 w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#if CUFLASH_DTYPE == CUFLASH_FP32
        x[i] = __uint_as_float(w[i]);
#else
        const float2 f = unpack_float2(w[i]);
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
#endif
    }
}

// CHUNK floats -> one 16-byte chunk of elements (round to nearest even).
CUFLASH_DEVICE uint4 pack_chunk(const float (&x)[CHUNK]) {
    u32 w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#if CUFLASH_DTYPE == CUFLASH_FP32
        w[i] = __float_as_uint(x[i]);
#else
        w[i] = pack_float2(x[2 * i], x[2 * i + 1]);
#endif
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}
