// numeric.cuh: 16-bit float conversions and fast exp2, in inline PTX.
//
// fp16 and bf16 values are stored as u16 and moved in pairs as u32 (the
// register layout mma.sync expects). CUFLASH_DTYPE picks the element type.
#pragma once
#include "platform.cuh"

// The two logarithm constants of the exp2-domain softmax: log2(e) and ln(2).
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.69314718055994531f;

// Two floats -> one u32 holding {lo, hi} as 16-bit values, round to nearest
// even. PTX puts the first source operand in the upper half.
CUFLASH_DEVICE u32 pack_float2(float lo, float hi) {
    u32 r;
#if CUFLASH_DTYPE == CUFLASH_BF16
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
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

CUFLASH_DEVICE float fast_log2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// One u32 holding {lo, hi} 16-bit values -> two floats, exactly (the inverse
// of pack_float2 for representable values). bf16 is the upper half of an fp32
// bit pattern, so it widens with shifts; fp16 goes through cvt.
CUFLASH_DEVICE float2 unpack_float2(u32 v) {
#if CUFLASH_DTYPE == CUFLASH_BF16
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
#else
    float lo, hi;
    asm("{\n .reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n}\n"
        : "=f"(lo), "=f"(hi)
        : "r"(v));
    return make_float2(lo, hi);
#endif
}
