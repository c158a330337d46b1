// score_mod.cuh: what modifies a score before the softmax (DESIGN 3 and 4a):
// softcap and ALiBi, at one point of every kernel.
//
// Contract with the online softmax (softmax.cuh). The kernels hold raw scores
// s = q.k and fold softmax_scale into the exp2 multiply c = scale * log2(e).
// A modifier therefore works in raw units: it maps s to s' such that
// scale * s' is the modified logit of DESIGN 3,
//   logit = softcap * tanh(scale * s / softcap) - slope * |i + off - j|,
//   s'    = softcap_out * tanh(softcap_in * s)  - (slope / scale) * |i + off - j|
// with softcap_in = scale / softcap, softcap_out = softcap / scale (params.cuh)
// and off = seqlen_k - seqlen_q. The forward applies it to S after the
// product and before the mask (a masked score must stay -inf, so the mask
// comes after); the backward applies it to S^T the same way and multiplies dS
// by its derivative ds'/ds (grad), which for softcap is 1 - tanh^2 (ALiBi
// adds a constant: derivative 1). With neither CUFLASH_SOFTCAP nor
// CUFLASH_ALIBI compiled in, ACTIVE is false and the kernels skip both calls:
// their instructions are those of the plain fast path.
#pragma once
#include "platform.cuh"
#include "fragment.cuh"
#include "seqinfo.cuh"

constexpr bool SOFTCAP = CUFLASH_SOFTCAP;
constexpr bool ALIBI = CUFLASH_ALIBI;
// The learnable sink is no score modifier (it is a logit without a value,
// softmax.cuh), but its switch lives with theirs.
constexpr bool SINK = CUFLASH_SINK;

// tanh with the SFU (tanh.approx.f32, one instruction, max relative error 2^-11).
CUFLASH_DEVICE float fast_tanh(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

struct ScoreMod {
    static constexpr bool ACTIVE = SOFTCAP || ALIBI;
    float cap_in, cap_out;  // softcap_in, softcap_out (SOFTCAP)
    float slope;            // ALiBi slope of this (b, h) over softmax_scale (ALIBI)
    int off;                // seqlen_k - seqlen_q

    template <class Params>
    CUFLASH_DEVICE ScoreMod(const Params& p, const SeqInfo& si)
        : cap_in(p.softcap_in), cap_out(p.softcap_out), slope(0.f), off(si.seqlen_k - si.seqlen_q) {
        if (ALIBI) slope = p.alibi_slopes[si.b * p.alibi_batch_stride + si.h] / p.scale;
    }

    CUFLASH_DEVICE float alibi(int i, int j) const { return slope * (float)abs(i + off - j); }

    CUFLASH_DEVICE float operator()(float s, int i, int j) const {
        if (SOFTCAP) s = cap_out * fast_tanh(cap_in * s);
        if (ALIBI) s -= alibi(i, j);
        return s;
    }

    // ds'/ds at (i, j), from the modified (and possibly masked) score x = s'.
    // tanh is recovered as t = (x + alibi) * cap_in, clamped to [-1, 1]: a
    // masked x = -inf gives t = -1 and a derivative of 0, never NaN, and its
    // P = 0 already makes dS = 0 there.
    CUFLASH_DEVICE float grad(float x, int i, int j) const {
        if (!SOFTCAP) return 1.f;
        if (ALIBI) x += alibi(i, j);
        const float t = fminf(1.f, fmaxf(-1.f, x * cap_in));
        return 1.f - t * t;
    }

    // s' for every score of a tile (fragment.cuh layout; S or S^T).
    template <bool KEYS_AS_ROWS, int MT, int NT>
    CUFLASH_DEVICE void apply(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        for_each_score<KEYS_AS_ROWS>(s, row0, col0, lane, [&](float& x, int i, int j) { x = (*this)(x, i, j); });
    }
};
