// dev experiment (not compiled by cuflash): common/softmax.cuh with an exact
// softmax offset for fp16 rows whose |m*c| >= 2^27 (KEEP_LO), so that the
// largest P of such a row no longer underflows fp16 (tests/gpu/test_reliability.py
// test_fp16_q_k_of_magnitude_1e4_stay_finite_and_bounded passes with it).
// Measured on the H200 (bench/ab_kernels.sh against common/softmax.cuh, fp16,
// 16 heads, 2k and 8k, two rounds each): the Hopper forward 2.2-5.7% slower
// (d64 0.943-0.949x, d96 0.961-0.971x, d128 0.973-0.978x), the portable d64
// causal 0.938x; NVRTC 13.0 spills 4 bytes in the d96 Hopper tiles. The cost is
// the per-block vote (and the max / exp phase split it forces): about 8
// instructions per row and block against ~32 scores per thread at d64. Kept
// out until a cheaper trigger exists (e.g. a bound on |s| per CTA).
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
#include "score_mod.cuh"
#include "dropout.cuh"

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

    // The exponent offset of a row whose running max is m: hi + lo = m*c.
    // hi is m*c rounded up, so fmaf(s, c, -hi) <= 0 for every s <= m (rounded
    // to nearest, its error would enter the exponent: exp2(+32) overflows P
    // at |m*c| = 1e9, reached by fp16 inputs of magnitude 1e4). Every P of
    // the row is then 2^(m*c - hi) times its exact value, a factor that
    // cancels in O / l and enters lse through hi, consistently.
    // That factor is harmless while P is a bf16 or float32 number, but fp16's
    // smallest normal is 2^-14: once |m*c| >= 2^27 (ulp(hi) >= 16) the row's
    // largest P could underflow in the fp16 P of P V (down to 2^-64 at 1e9:
    // out 0, or a few subnormal P giving several times v). So in fp16 kernels
    // the offset of such an m is exactly m*c: lo = m*c - hi (exact, one FMA)
    // is kept and subtracted in every exponent (EXACT; an infinite m keeps
    // lo = 0, as the FMA would give NaN).
    static constexpr bool KEEP_LO = CUFLASH_DTYPE == CUFLASH_FP16;
    struct Offset {
        float hi, lo;
    };
    template <bool EXACT>
    static CUFLASH_DEVICE Offset offset_of(float m, float c) {
        const float hi = __fmul_ru(m, c);
        if (!EXACT) return {hi, 0.f};
        const bool keep = fabsf(hi) >= 0x1p27f && fabsf(hi) < INFINITY;
        return {hi, keep ? fmaf(m, c, -hi) : 0.f};
    }
    template <bool EXACT>
    static CUFLASH_DEVICE float offset_diff(const Offset& a, const Offset& b) {
        return EXACT ? (a.hi - b.hi) + (a.lo - b.lo) : a.hi - b.hi;
    }
    template <bool EXACT>
    static CUFLASH_DEVICE float offset_value(const Offset& a) {
        return EXACT ? a.hi + a.lo : a.hi;
    }

    // The max of row h of m-tile mt over its running max and this block (a quad's lanes share it).
    template <int NT>
    CUFLASH_DEVICE float row_max(const float (&s)[MT][NT][4], int mt, int h) const {
        float mx = m[mt][h];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
        return quad_max(mx);
    }

    // Fold one block of masked scores s[MT][NT][4] into the state: s becomes
    // P = exp2(s*c - offset(m_new)) in place, and corr[mt][h] =
    // exp2(offset(m_old) - offset(m_new)) is the factor by which the caller must
    // rescale its O rows.
    // fp16 (KEEP_LO) takes every row's max first: while no row of the warp has
    // a finite |hi| >= 2^26 (a vote, so the branch is uniform) every lo is 0
    // and the plain fold runs; the exact one (an FADD more per score) only
    // past that.
    // (An old offset with a lo beside a new one without is no case: m grows, so
    // it would be hi_old <= -2^27 against hi_new > -2^26, and corr = 0 anyway.)
    template <int NT>
    CUFLASH_DEVICE void update(float (&s)[MT][NT][4], float c, float (&corr)[MT][2]) {
        if constexpr (KEEP_LO) {
            float mx[MT][2];
            bool large = false;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    mx[mt][h] = row_max(s, mt, h);
                    const float a = fabsf(__fmul_ru(mx[mt][h], c));
                    large |= a >= 0x1p26f && a < INFINITY;  // an m of -inf (no key yet) needs no lo
                }
            if (__any_sync(0xffffffffu, large))
                fold_rows<NT, true>(s, mx, c, corr);
            else
                fold_rows<NT, false>(s, mx, c, corr);
        } else {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) fold_row<NT, false>(s[mt], mt, h, row_max(s, mt, h), c, corr[mt][h]);
        }
    }

    template <int NT, bool EXACT>
    CUFLASH_DEVICE void fold_rows(float (&s)[MT][NT][4], const float (&mx)[MT][2], float c, float (&corr)[MT][2]) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) fold_row<NT, EXACT>(s[mt], mt, h, mx[mt][h], c, corr[mt][h]);
    }

    // Row h of m-tile mt (scores s[NT][4]) with its new max mx: corr, P in place, l.
    template <int NT, bool EXACT>
    CUFLASH_DEVICE void fold_row(float (&s)[NT][4], int mt, int h, float mx, float c, float& corr) {
        // A row with no visible key so far keeps m = -inf. Subtracting
        // -inf would give NaN (-inf - -inf), so use offset 0 instead:
        // every exp2(-inf - 0) is then 0 and corr is 0 (l and O are 0).
        const Offset cur = (mx == -INFINITY) ? Offset{0.f, 0.f} : offset_of<EXACT>(mx, c);
        corr = fast_exp2(offset_diff<EXACT>(offset_of<EXACT>(m[mt][h], c), cur));
        m[mt][h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const float e = fmaf(s[nt][2 * h + j], c, -cur.hi);
                const float p = fast_exp2(EXACT ? e - cur.lo : e);
                s[nt][2 * h + j] = p;
                sum += p;
            }
        l[mt][h] = l[mt][h] * corr + sum;
    }

    // Row sums across the quad; inv_l = 1/l and lse = ln(sum_j exp(s_j*scale)).
    // A row that saw no visible key has l = 0: inv_l = 0 makes its output 0
    // (not NaN) and its lse is -inf, as the API promises.
    // With a learnable sink (SINK; sink = its logit, natural log) the sink joins
    // each denominator but has no value (DESIGN 3):
    //   lse = ln(exp(sink) + sum_j exp(s_j*scale)), out = sum_j exp(s_j*scale - lse) v_j.
    // The sum is taken at offset M = max(m*c, sink2), so neither a large sink
    // nor large scores overflow; O was accumulated at offset mc = hi + lo of offset_of(m),
    // hence inv_l = exp2(mc - M) / total. A row that saw no key gets out 0, lse = sink.
    template <bool SINK = false>
    CUFLASH_DEVICE void finalize(float c, float (&inv_l)[MT][2], float (&lse)[MT][2], float sink = 0.f) {
        const float sink2 = sink * LOG2E;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float total = quad_sum(l[mt][h]);
                bool empty = total == 0.f;
                if constexpr (SINK) {
                    // m = -inf only when empty: use sink2 as the offset then (no -inf - -inf).
                    const float mc = empty ? sink2 : offset_value<KEEP_LO>(offset_of<KEEP_LO>(m[mt][h], c));
                    // A sink of -inf on a row with no key: offset 0, so total = 0 and lse = -inf (no NaN).
                    const float top = fmaxf(mc, sink2) == -INFINITY ? 0.f : fmaxf(mc, sink2);
                    const float rescale = fast_exp2(mc - top);
                    total = total * rescale + fast_exp2(sink2 - top);
                    inv_l[mt][h] = empty ? 0.f : rescale / total;
                    lse[mt][h] = (top + fast_log2(total)) * LN2;
                } else {
                    inv_l[mt][h] = empty ? 0.f : 1.f / total;
                    lse[mt][h] =
                        empty ? -INFINITY
                              : (offset_value<KEEP_LO>(offset_of<KEEP_LO>(m[mt][h], c)) + fast_log2(total)) * LN2;
                }
            }
    }
};

// dsink's exact part (DESIGN 3: dsink_h = -sum_i P_sink,i (sum_j P_ij dP_ij - dlse_i)):
// with a learnable sink (SINK) the backward sums, over the scores each thread
// recomputes,
//   sum_i P_sink,i sum_j P_ij dP_ij,   P_sink,i = exp(sink_h - L_i) = exp2(sink2 - L2_i),
// in fp32 from P and dP themselves (D_i could not serve: it comes from the
// rounded O). Each thread keeps its running sum in shared memory (no register
// held through the loop), each CTA stores its total (epilogue.cuh
// block_sum_store), and the host adds the CTAs and the dlse term
// (cuflash/api.py dsink).
template <class Params>
CUFLASH_DEVICE float sink_log2(const Params& p, const SeqInfo& si) {
    return SINK ? p.sink[si.h] * LOG2E : 0.f;
}

// The backward's recompute of P and dS (FlashAttention-2, Alg. 2) on a
// transposed tile, keys as rows (fragment.cuh layout): s holds S^T (raw
// scores, already modified and masked) and becomes P^T = exp2(s * c - L2);
// dp holds dP^T = V dO^T and becomes dS^T = P^T ∘ (dP^T - D) ∘ mod'(s), the
// derivative w.r.t. the raw score (score_mod.cuh; 1 without softcap).
// Under DROPOUT (dropout.cuh) the output read Pd = P ∘ keep / (1 - p), so the
// gradient w.r.t. P is dP ∘ keep / (1 - p), which replaces dP above (and in the
// sink's sum; D = rowsum(dO ∘ O) already is sum_j P_ij of it), and s becomes
// Pd^T, the left operand of dV = Pd^T dO.
// Under BIAS with a gradient asked for (score_mod.cuh BiasGrad) each
// dlogit = P ∘ (dP - D), taken before mod', goes to dbias: entry by entry, or
// for a per-key bias summed over the tile's queries first (this thread's, then
// the quad's: one add per key and warp).
// Returns, under SINK, this thread's share of the tile's sum_i P_sink,i sum_j
// P_ij dP_ij with P_sink,i = exp2(sink2 - L2_i) (else 0).
// lse2 and delta point at the tile's first query column in shared memory.
// No NaN can arise: L2 is finite or +inf (never -inf, bwd_prepare), so the
// exponent is finite or -inf (masked S = -inf, or L2 = +inf for a row that
// sees no key / a padding row), and exp2(-inf) = 0 makes P and then dS
// exactly 0 there (dP, D and mod' are finite); likewise P_sink = 0 for
// L2 = +inf or a sink of -inf (sink2 - L2 is never inf - inf: L2 > -inf).
template <int MT, int NT>
CUFLASH_DEVICE float softmax_backward_t(float (&s)[MT][NT][4], float (&dp)[MT][NT][4], const float* lse2,
                                        const float* delta, float c, const ScoreMod& mod, const Dropout& drop,
                                        const BiasGrad& dbias, float sink2, int key0, int query0, int lane) {
    const int g = lane / 4, t = lane % 4;
    float sink_part = 0.f;
    const bool dbias_entries = dbias.active() && !dbias.sums_queries();
    const bool dbias_keys = dbias.active() && dbias.sums_queries();
    float key_sum[MT][2];  // dbias_keys: this thread's sum over its queries, per key row
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) key_sum[mt][0] = key_sum[mt][1] = 0.f;
    u32 keep = 0u;  // keep bits of n8 tiles nt & ~1 and nt | 1 (dropout.cuh keep_pair)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const float2 l2 = *reinterpret_cast<const float2*>(lse2 + nt * 8 + 2 * t);
        const float2 dd = *reinterpret_cast<const float2*>(delta + nt * 8 + 2 * t);
        float pdp0 = 0.f, pdp1 = 0.f;  // sum over this thread's keys of P dP, queries 2t and 2t + 1
        if (DROPOUT && nt % 2 == 0) keep = drop.keep_pair<true, MT>(key0, query0, nt / 2, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int key = key0 + mt * 16 + h * 8 + g, query = query0 + nt * 8 + 2 * t;
                float& s0 = s[mt][nt][2 * h];
                float& s1 = s[mt][nt][2 * h + 1];
                const float p0 = fast_exp2(fmaf(s0, c, -l2.x));
                const float p1 = fast_exp2(fmaf(s1, c, -l2.y));
                float dp0 = dp[mt][nt][2 * h], dp1 = dp[mt][nt][2 * h + 1];
                const bool keep0 = Dropout::kept(keep, mt, nt % 2, 2 * h);
                const bool keep1 = Dropout::kept(keep, mt, nt % 2, 2 * h + 1);
                if (DROPOUT) {
                    dp0 = keep0 ? dp0 * drop.scale : 0.f;
                    dp1 = keep1 ? dp1 * drop.scale : 0.f;
                }
                if (SINK) {
                    pdp0 = fmaf(p0, dp0, pdp0);
                    pdp1 = fmaf(p1, dp1, pdp1);
                }
                float ds0 = p0 * (dp0 - dd.x);
                float ds1 = p1 * (dp1 - dd.y);
                if (BIAS && dbias_keys) key_sum[mt][h] += ds0 + ds1;
                if (BIAS && dbias_entries && key < mod.seqlen_k) {
                    if (query < mod.seqlen_q) dbias.put(ds0, query, key);
                    if (query + 1 < mod.seqlen_q) dbias.put(ds1, query + 1, key);
                }
                if (SOFTCAP) {
                    ds0 *= mod.grad(s0, query, key);
                    ds1 *= mod.grad(s1, query + 1, key);
                }
                s0 = p0;
                s1 = p1;
                if (DROPOUT) {
                    s0 = keep0 ? p0 * drop.scale : 0.f;
                    s1 = keep1 ? p1 * drop.scale : 0.f;
                }
                dp[mt][nt][2 * h] = ds0;
                dp[mt][nt][2 * h + 1] = ds1;
            }
        // times P_sink of queries 2t and 2t + 1
        if (SINK) sink_part += fast_exp2(sink2 - l2.x) * pdp0 + fast_exp2(sink2 - l2.y) * pdp1;
    }
    if (BIAS && dbias_keys) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float sum = quad_sum(key_sum[mt][h]);  // over the quad's queries
                const int key = key0 + mt * 16 + h * 8 + g;
                if (t == 0 && key < mod.seqlen_k) dbias.put(sum, 0, key);
            }
    }
    return sink_part;
}
