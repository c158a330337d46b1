// merge.cuh: the exact merge of attention results over disjoint key sets
// (DESIGN 3, merge_attention_states), as the decode kernels use it: a CTA's
// warps, then the split-KV parts (merged by the last split of each row block).
//
// Parts k = 0..n-1 of one query row each hold O_k (normalised over their own
// keys) and lse_k = ln(sum of exp(logits) over their keys), -inf when they saw
// no key. With an optional sink logit (-inf when none) that joins the
// denominator without a value:
//   top   = max(sink, max_k lse_k)
//   total = exp(sink - top) + sum_k exp(lse_k - top)
//   lse   = top + ln(total),   out = sum_k (exp(lse_k - top) / total) O_k.
// Taking every exponent relative to top keeps them <= 0 (no overflow). When
// every part and the sink are -inf, top = -inf and top - top would be NaN:
// then weight() is 0 for every part (out = 0) and lse = -inf, as a row that
// sees no key gets.
#pragma once
#include "platform.cuh"
#include "numeric.cuh"

// LANES lanes of a warp may share the parts (every one of them constructs
// the weights, lane = 0 .. LANES - 1): lane l reads parts l, l + LANES, ...
// and shuffles reduce the max and the sum (in a fixed order: the same result
// on every run), so a long list of parts costs one round of loads, not n.
template <int LANES = 1>
struct MergeWeights {
    static_assert(LANES >= 1 && LANES <= 32 && (LANES & (LANES - 1)) == 0, "a power of two of a warp's lanes");
    float top;        // the largest lse (or the sink); -inf when all are
    float inv_total;  // 1 / total; 0 when top = -inf
    float lse;

    // lse_at(k) gives part k's lse; sink is the sink's logit or -inf.
    template <class LseAt>
    CUFLASH_DEVICE MergeWeights(int n, LseAt lse_at, float sink, int lane = 0) {
        top = sink;
        for (int k = lane; k < n; k += LANES) top = fmaxf(top, lse_at(k));
#pragma unroll
        for (int x = LANES / 2; x >= 1; x /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, x));
        if (top == -INFINITY) {
            inv_total = 0.f;
            lse = -INFINITY;
            return;
        }
        float total = 0.f;
        for (int k = lane; k < n; k += LANES) total += fast_exp2((lse_at(k) - top) * LOG2E);
#pragma unroll
        for (int x = LANES / 2; x >= 1; x /= 2) total += __shfl_xor_sync(0xffffffffu, total, x);
        total += fast_exp2((sink - top) * LOG2E);
        inv_total = 1.f / total;
        lse = top + fast_log2(total) * LN2;
    }

    // The weight of a part whose lse is `lse_k` (0 for -inf parts, and for all when top = -inf).
    CUFLASH_DEVICE float weight(float lse_k) const {
        return top == -INFINITY ? 0.f : fast_exp2((lse_k - top) * LOG2E) * inv_total;
    }
};

// One query row merged by a warp from n parts (the split-KV decode's, decode.cu):
// part k's lse at lse_at(k) and its fp32 O row at o_at(k) (head_dim values,
// 16-byte aligned), with the sink (or -inf); out gets the row in 16 bits, 4
// columns per lane per round, 4 parts' loads in flight at a time (8 spilled
// the former combine kernel on sm_120 under NVRTC 12.9). Returns the merged lse. The parts come from
// other CTAs of the running grid: loads go through L2 (ld.global.cg), never
// through this SM's L1, which is not coherent with them.
template <class LseAt, class OAt>
CUFLASH_DEVICE float merge_parts_row(int n, LseAt lse_at, OAt o_at, float sink, u16* out, int head_dim, int lane) {
    const MergeWeights<32> mw(n, lse_at, sink, lane);
    for (int col = lane * 4; col < head_dim; col += 128) {
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
        for (int k = 0; k < n; ++k) {
            const float w = mw.weight(lse_at(k));
            const float4 x = __ldcg(reinterpret_cast<const float4*>(o_at(k) + col));
            o.x += w * x.x;
            o.y += w * x.y;
            o.z += w * x.z;
            o.w += w * x.w;
        }
        *reinterpret_cast<uint2*>(out + col) = make_uint2(pack_float2(o.x, o.y), pack_float2(o.z, o.w));
    }
    return mw.lse;
}
