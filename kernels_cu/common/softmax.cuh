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
//
// CUFLASH_SOFTMAX_FIXED (a bf16 forward whose only score modifier is a folded
// softcap of at most ~51.3; cuflash/specs.py fixed_offset): such scores are
// bounded, s' = tanh(.) in [-1, 1] and c = softcap * log2(e) = C
// (score_mod.cuh SOFTCAP_FOLDED), so every row can take
// one constant offset M = min(C, FIXED_OFFSET_FLOOR - C) instead of its running
// max: P = exp2(s'*c - M) lies in [2^-124, 2^24] (fp32's and bf16's normal
// range, 2^-126..2^127, with l and O, sums of at most 2^31 such terms, far
// below overflow), and no block rescales O. So the max, its quad shuffles, corr
// and O's rescale (D/2 multiplies per thread and block) all go, and m is
// unused. fp16 P (normal from 2^-14 only) would lose the small terms, so fp16
// keeps the running max.
// Under the fixed offset l sums P as rounded to bf16 for P V, not P itself.
// A running max makes a row's largest P exactly 1, so the term that dominates a
// row of few visible keys (the first rows of a causal mask, a window's edge)
// enters O without rounding; at a fixed offset it is rounded like every other
// (relative error up to 2^-9), and out = sum_j bf16(P_j) v_j / sum_j P_j would
// carry that error in full (a row of one key: out = v (1 + e)), as would the
// backward's D = rowsum(dO o out). Normalised by the rounded sum the weights
// bf16(P_j) / sum_k bf16(P_k) add up to 1 again (one key: out = v), and the
// lse (from the same sum) stays what the backward's P = exp(s - lse) needs.
// So update() leaves l alone there, and the kernel packs P with pack_p, which
// adds the row sums of the packed P V operand: one integer operation per score
// to widen the halves back to floats. Dropout (which changes P before it is packed)
// keeps the running max (specs.fixed_offset). Measured (bench/NOTES.md s5):
// with the unrounded sum the bf16 softcap-5 causal dK error reached 3.3x the
// plain computation's (the rule allows 2), against 1.2x with a running max.
#pragma once
#include "numeric.cuh"
#include "fragment.cuh"  // pack_a_fragments
#include "score_mod.cuh"
#include "dropout.cuh"

#ifndef CUFLASH_SOFTMAX_FIXED
#define CUFLASH_SOFTMAX_FIXED 0
#endif
constexpr bool SOFTMAX_FIXED = CUFLASH_SOFTMAX_FIXED;
static_assert(!SOFTMAX_FIXED || (CUFLASH_DTYPE == CUFLASH_BF16 && ScoreMod::SOFTCAP_FOLDED && !DROPOUT),
              "a fixed softmax offset needs bf16 scores bounded by a folded softcap alone, without dropout");
// P's least exponent (-C - M >= -FIXED_OFFSET_FLOOR, 2 above bf16's and fp32's least normal
// exponent, so tanh.approx's error of 2^-11 cannot push it below) and, for C above
// FIXED_OFFSET_FLOOR / 2, its greatest (C - M = 2C - FIXED_OFFSET_FLOOR <= 24 at the largest C,
// cuflash/specs.py FIXED_OFFSET_LOG2_MAX = 74).
constexpr float FIXED_OFFSET_FLOOR = 124.f;

CUFLASH_DEVICE float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

CUFLASH_DEVICE float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// CUFLASH_EXP2_FMA_OF_8 (FwdSm90Spec.exp2_fma_of_8, bench/NOTES.md v33): that many of every 8
// exponentials of a row run on the FMA pipe (numeric.cuh exp2_fma) instead of the SFU, which a
// softcap's tanh shares.
#ifndef CUFLASH_EXP2_FMA_OF_8
#define CUFLASH_EXP2_FMA_OF_8 0
#endif

// SUMS_FROM_PV (fwd_sm90_ws.cu SUMS_BY_MMA): the kernel takes each row's sum of P from its P V
// product, which multiplies P by a column of ones beside V (the sum of P as rounded to 16 bits,
// in fp32, rescaled with O), and hands it over with take_sums before finalize: update() and
// pack_p() then add nothing to l, and l holds whole rows, not a lane's share.
template <int MT, bool SUMS_FROM_PV = false>
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

    // The exponent offset of a row whose running max is m: m*c rounded up, so
    // that fmaf(s, c, -offset) <= 0 for every s <= m. Rounded to nearest, its
    // error (half an ulp: 64 at |m*c| = 1e9, reached by fp16 inputs of
    // magnitude 1e4) would enter the exponent and exp2(+64) would overflow P.
    // -inf stays -inf.
    static CUFLASH_DEVICE float offset_of(float m, float c) { return __fmul_ru(m, c); }
    // SOFTMAX_FIXED's offset M of every row, for c = C.
    static CUFLASH_DEVICE float fixed_offset(float c) { return fminf(c, FIXED_OFFSET_FLOOR - c); }
    // The offset that row (mt, h) has accumulated l and O at.
    CUFLASH_DEVICE float offset(int mt, int h, float c) const {
        return SOFTMAX_FIXED ? fixed_offset(c) : offset_of(m[mt][h], c);
    }

    // Fold one block of masked scores s[MT][NT][4] into the state: s becomes
    // P = exp2(s*c - offset(m_new)) in place, and corr[mt][h] =
    // exp2(offset(m_old) - offset(m_new)) is the factor by which the caller must
    // rescale its O rows. Returns whether it must (always, unless LAZY; never
    // under SOFTMAX_FIXED, where corr is 1).
    //
    // LAZY (conditional rescaling, as FlashAttention-4 does): while the new max
    // of every row of the warp lies within LAZY_LOG2 of the offset the row has
    // accumulated at, the rows keep that offset (m stays the old max), corr is 1
    // and the call returns false, so the caller skips the O rescale (D/2 fp32
    // multiplies per thread and block for a 64-row warpgroup tile). P is then at
    // most 2^LAZY_LOG2 = 256: within fp16's range when packed for P V, l and O
    // far from fp32's. finalize() and the lse see the same offset, so the result
    // is the same function. A row that saw no visible key yet (m = -inf; its l
    // and O are 0) takes the new max either way. The test is on the rounded-up
    // offsets themselves, not (m_new - m_old) c: at |m c| ~ 1e9 their rounding
    // alone is 64. The decision is warp-uniform (__all_sync), so the caller's
    // branch around the rescale does not diverge.
    static constexpr float LAZY_LOG2 = 8.f;

    template <bool LAZY = false, int NT>
    CUFLASH_DEVICE bool update(float (&s)[MT][NT][4], float c, float (&corr)[MT][2]) {
        if constexpr (SOFTMAX_FIXED) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    corr[mt][h] = 1.f;
                    exponentiate(s, mt, h, c, fixed_offset(c));  // l: pack_p, once P is packed
                }
            return false;
        } else if constexpr (LAZY) {
            return update_lazy(s, c, corr);
        } else {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const float mx = row_max(s, mt, h);
                    // A row with no visible key so far keeps m = -inf. Subtracting
                    // -inf would give NaN (-inf - -inf), so use offset 0 instead:
                    // every exp2(-inf - 0) is then 0 and corr is 0 (l and O are 0).
                    const float offset = (mx == -INFINITY) ? 0.f : offset_of(mx, c);
                    corr[mt][h] = fast_exp2(offset_of(m[mt][h], c) - offset);
                    m[mt][h] = mx;
                    const float sum = exponentiate(s, mt, h, c, offset);
                    if (!SUMS_FROM_PV) l[mt][h] = l[mt][h] * corr[mt][h] + sum;
                }
            return true;
        }
    }

    // The running max of row (mt, h) with this block's scores, across the quad.
    template <int NT>
    CUFLASH_DEVICE float row_max(const float (&s)[MT][NT][4], int mt, int h) const {
        float mx = m[mt][h];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
        return quad_max(mx);
    }

    // Row (mt, h) of s becomes P = exp2(s*c - offset); returns this lane's share of its sum.
    template <int NT>
    static CUFLASH_DEVICE float exponentiate(float (&s)[MT][NT][4], int mt, int h, float c, float offset) {
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const float x = fmaf(s[mt][nt][2 * h + j], c, -offset);
                const bool on_fma = (2 * nt + j) % 8 < CUFLASH_EXP2_FMA_OF_8;
                const float p = on_fma ? exp2_fma(x) : fast_exp2(x);
                s[mt][nt][2 * h + j] = p;
                sum += p;
            }
        return sum;
    }

    // P (fp32, after update) packed to 16 bits as the A operand of P V, and under
    // SOFTMAX_FIXED (above) its rows' sums as packed added to l. One m-tile's
    // fragments (fragment.cuh pack_a_fragments; the Hopper kernels' warps, MT = 1):
    template <int NT>
    CUFLASH_DEVICE void pack_p(const float (&p)[NT][4], u32 (&a)[NT / 2][4]) {
        static_assert(MT == 1, "one m-tile per warp");
        pack_a_fragments(p, a);
        add_rounded(0, a);
    }
    // or every m-tile into an operand held as mma.cuh RegA<MT, K> (16-bit: r[MT][K / 16][4]).
    template <int NT, class PackedA>
    CUFLASH_DEVICE void pack_p(const float (&p)[MT][NT][4], PackedA& pa) {
        pa.set(p);
        if constexpr (SOFTMAX_FIXED && !SUMS_FROM_PV) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) add_rounded(mt, pa.r[mt]);
        }
    }

    // SOFTMAX_FIXED: l += the row sums of m-tile mt's A fragments a (k-step kk holds row g in
    // a[kk][0] and a[kk][2], row g + 8 in a[kk][1] and a[kk][3]: pack_a_fragments, mma.cuh
    // a_from_c). No-op under a running max.
    template <int KS>
    CUFLASH_DEVICE void add_rounded(int mt, const u32 (&a)[KS][4]) {
        if constexpr (SOFTMAX_FIXED && !SUMS_FROM_PV) {
            float sum[2] = {0.f, 0.f};
#pragma unroll
            for (int kk = 0; kk < KS; ++kk)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 r = unpack_float2(a[kk][e]);
                    sum[e & 1] += r.x;
                    sum[e & 1] += r.y;
                }
            l[mt][0] += sum[0];
            l[mt][1] += sum[1];
        }
    }

    template <int NT>
    CUFLASH_DEVICE bool update_lazy(float (&s)[MT][NT][4], float c, float (&corr)[MT][2]) {
        float mx[MT][2];
        bool fits = true;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                mx[mt][h] = row_max(s, mt, h);
                fits = fits && (m[mt][h] == -INFINITY ||
                                offset_of(mx[mt][h], c) - offset_of(m[mt][h], c) <= LAZY_LOG2);
            }
        const bool rescale = !__all_sync(0xffffffffu, fits);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float m_new = rescale || m[mt][h] == -INFINITY ? mx[mt][h] : m[mt][h];
                const float offset = (m_new == -INFINITY) ? 0.f : offset_of(m_new, c);  // as in update
                corr[mt][h] = rescale ? fast_exp2(offset_of(m[mt][h], c) - offset) : 1.f;
                m[mt][h] = m_new;
                const float sum = exponentiate(s, mt, h, c, offset);
                if (!SUMS_FROM_PV) l[mt][h] = rescale ? l[mt][h] * corr[mt][h] + sum : l[mt][h] + sum;
            }
        return rescale;
    }

    // SUMS_FROM_PV: the rows' sums from the extra n8 tile of the P V accumulator x (every column
    // of it holds the row's sum: lane 4g+t has row g in x[0][0], row g + 8 in x[0][2]).
    CUFLASH_DEVICE void take_sums(const float (&x)[1][4]) {
        static_assert(SUMS_FROM_PV && MT == 1, "the sums of one m-tile from P V");
        l[0][0] = x[0][0];
        l[0][1] = x[0][2];
    }

    // Row sums across the quad; inv_l = 1/l and lse = ln(sum_j exp(s_j*scale)).
    // A row that saw no visible key has l = 0: inv_l = 0 makes its output 0
    // (not NaN) and its lse is -inf, as the API promises.
    // With a learnable sink (SINK; sink = its logit, natural log) the sink joins
    // each denominator but has no value (DESIGN 3):
    //   lse = ln(exp(sink) + sum_j exp(s_j*scale)), out = sum_j exp(s_j*scale - lse) v_j.
    // The sum is taken at offset M = max(m*c, sink2), so neither a large sink
    // nor large scores overflow; O was accumulated at offset mc = offset_of(m),
    // hence inv_l = exp2(mc - M) / total. A row that saw no key gets out 0, lse = sink.
    template <bool SINK = false>
    CUFLASH_DEVICE void finalize(float c, float (&inv_l)[MT][2], float (&lse)[MT][2], float sink = 0.f) {
        const float sink2 = sink * LOG2E;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float total = SUMS_FROM_PV ? l[mt][h] : quad_sum(l[mt][h]);
                bool empty = total == 0.f;
                if constexpr (SINK) {
                    // m = -inf only when empty: use sink2 as the offset then (no -inf - -inf).
                    const float mc = empty ? sink2 : offset(mt, h, c);
                    // A sink of -inf on a row with no key: offset 0, so total = 0 and lse = -inf (no NaN).
                    const float top = fmaxf(mc, sink2) == -INFINITY ? 0.f : fmaxf(mc, sink2);
                    const float rescale = fast_exp2(mc - top);
                    total = total * rescale + fast_exp2(sink2 - top);
                    inv_l[mt][h] = empty ? 0.f : rescale / total;
                    lse[mt][h] = (top + fast_log2(total)) * LN2;
                } else {
                    inv_l[mt][h] = empty ? 0.f : 1.f / total;
                    lse[mt][h] = empty ? -INFINITY : (offset(mt, h, c) + fast_log2(total)) * LN2;
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

// The sink's logit for the forward's epilogue: the lse of a row that sees no key
// (-inf without a sink). The kernels call it where it is used, so that no
// register holds it through the main loop.
template <class Params>
CUFLASH_DEVICE float sink_logit(const Params& p, const SeqInfo& si) {
    return SINK ? p.sink[si.h] : -INFINITY;
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
// drawn: the tile's keep words under DROPOUT, drawn ahead by the caller
// (Dropout::draw_t), or nullptr to draw them here, a pair of n8 tiles at a time.
// DROP_FACTOR (the Hopper kernels): keep / (1 - p) as one factor per entry, one
// instruction fewer an entry than selecting the dP and P products apart, with a
// register more live (the portable backward, at its limit, spilled with it).
// No NaN can arise: L2 is finite or +inf (never -inf, bwd_prepare), so the
// exponent is finite or -inf (masked S = -inf, or L2 = +inf for a row that
// sees no key / a padding row), and exp2(-inf) = 0 makes P and then dS
// exactly 0 there (dP, D and mod' are finite); likewise P_sink = 0 for
// L2 = +inf or a sink of -inf (sink2 - L2 is never inf - inf: L2 > -inf).
template <bool DROP_FACTOR, int MT, int NT>
CUFLASH_DEVICE float softmax_backward_t(float (&s)[MT][NT][4], float (&dp)[MT][NT][4], const float* lse2,
                                        const float* delta, float c, const ScoreMod& mod, const Dropout& drop,
                                        const BiasGrad& dbias, float sink2, int key0, int query0, int lane,
                                        const u32 (*drawn)[NT / 2] = nullptr) {
    const int g = lane / 4, t = lane % 4;
    float sink_part = 0.f;
    const bool dbias_entries = dbias.active() && !dbias.sums_queries();
    const bool dbias_keys = dbias.active() && dbias.sums_queries();
    float key_sum[MT][2];  // dbias_keys: this thread's sum over its queries, per key row
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) key_sum[mt][0] = key_sum[mt][1] = 0.f;
    constexpr int PAIRS = Dropout::pairs<NT>();
    u32 keep[MT][PAIRS] = {};  // keep bits of n8 pairs (dropout.cuh keep_bits), from n8 tile nt & ~(2 PAIRS - 1) on
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const float2 l2 = *reinterpret_cast<const float2*>(lse2 + nt * 8 + 2 * t);
        const float2 dd = *reinterpret_cast<const float2*>(delta + nt * 8 + 2 * t);
        float pdp0 = 0.f, pdp1 = 0.f;  // sum over this thread's keys of P dP, queries 2t and 2t + 1
        if (DROPOUT && !drawn && nt % (2 * PAIRS) == 0)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) drop.keep_bits<true, PAIRS>(key0 + mt * 16, query0, nt / 2, lane, keep[mt]);
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
                const u32 word = drawn ? drawn[mt][nt / 2] : keep[mt][nt / 2 % PAIRS];
                const bool keep0 = Dropout::kept(word, nt % 2, h, 0);
                const bool keep1 = Dropout::kept(word, nt % 2, h, 1);
                // Z / (1 - p) per entry. DROP_FACTOR: selected once, then multiplied into dP (the
                // product fuses with dS's - D) and into P; dP and P are finite, so a dropped entry
                // gives 0 as a select of each product does, the other form's (bench/NOTES.md dr7).
                const float z0 = DROP_FACTOR && keep0 ? drop.scale : 0.f, z1 = DROP_FACTOR && keep1 ? drop.scale : 0.f;
                if (DROPOUT) {
                    dp0 = DROP_FACTOR ? dp0 * z0 : (keep0 ? dp0 * drop.scale : 0.f);
                    dp1 = DROP_FACTOR ? dp1 * z1 : (keep1 ? dp1 * drop.scale : 0.f);
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
                    s0 = DROP_FACTOR ? p0 * z0 : (keep0 ? p0 * drop.scale : 0.f);
                    s1 = DROP_FACTOR ? p1 * z1 : (keep1 ? p1 * drop.scale : 0.f);
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
