// softmax.cuh: the online softmax of FlashAttention-2 (Dao 2023, Alg. 1) on
// mma.sync C fragments, in the exp2 domain.
//
// A warp holds a score tile S (MT*16 rows x NT*8 keys) as s[MT][NT][4]; lane
// 4g+t owns rows g and g+8 of each m-tile (elements 0,1 and 2,3). The state
// per owned row is
//   m: running max of the raw scores s = q.k seen so far (-inf before any visible key)
//   l: this lane's share of sum_j exp2(s_j*c - m*c), c = softmax_scale*log2(e);
//      the four lanes of a quad each sum their own columns, and finalize()
//      adds the shares (the rescale factors are equal across the quad).
// Folding the scale into one FFMA per element (s*c - m*c) needs c > 0; the
// Python layer rejects softmax_scale <= 0.
#pragma once
#include "numeric.cuh"

CUFLASH_DEVICE float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

CUFLASH_DEVICE float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <int MT>
struct OnlineSoftmax {
    float m[MT][2];
    float l[MT][2];

    CUFLASH_DEVICE void init() {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                m[mt][h] = -INFINITY;
                l[mt][h] = 0.f;
            }
    }

    // Fold one block of masked scores s[MT][NT][4] into the state: s becomes
    // P = exp2(s*c - m_new*c) in place, and corr[mt][h] = exp2(m_old*c - m_new*c)
    // is the factor by which the caller must rescale its O rows.
    template <int NT>
    CUFLASH_DEVICE void update(float (&s)[MT][NT][4], float c, float (&corr)[MT][2]) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = m[mt][h];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
                mx = quad_max(mx);
                // A row with no visible key so far keeps m = -inf. Subtracting
                // -inf would give NaN (-inf - -inf), so use offset 0 instead:
                // every exp2(-inf - 0) is then 0 and corr is 0 (l and O are 0).
                float offset = (mx == -INFINITY) ? 0.f : mx * c;
                corr[mt][h] = fast_exp2(m[mt][h] * c - offset);
                m[mt][h] = mx;
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        float p = fast_exp2(fmaf(s[mt][nt][2 * h + j], c, -offset));
                        s[mt][nt][2 * h + j] = p;
                        sum += p;
                    }
                l[mt][h] = l[mt][h] * corr[mt][h] + sum;
            }
    }

    // Row sums across the quad; inv_l = 1/l and lse = ln(sum_j exp(s_j*scale)).
    // A row that saw no visible key has l = 0: inv_l = 0 makes its output 0
    // (not NaN) and its lse is -inf, as the API promises.
    CUFLASH_DEVICE void finalize(float c, float (&inv_l)[MT][2], float (&lse)[MT][2]) {
        const float ln2 = 0.69314718055994531f;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float total = quad_sum(l[mt][h]);
                bool empty = total == 0.f;
                inv_l[mt][h] = empty ? 0.f : 1.f / total;
                lse[mt][h] = empty ? -INFINITY : (m[mt][h] * c + fast_log2(total)) * ln2;
            }
    }
};
