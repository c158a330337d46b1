// decode_combine.cu: the split-KV decode's parts merged into out and lse
// (decode.cu, cuflash.attention_with_kvcache with more than one split).
//
// For every query row R = (h, b, i) of (nheads, batch, seqlen_q):
//   out[b, i, h, :] = sum_s w_s O_s[R, :],   lse[R] = ln(exp(sink_h) + sum_s exp(lse_s[R]))
// with w_s = exp(lse_s[R] - lse[R]) (merge.cuh; the learnable sink, when
// given, joins the denominator here, once). O_s: o_part (splits, rows,
// part_cols) fp32, each part normalised over its split's keys; lse_s:
// lse_part (splits, rows), -inf for a split that saw no key of the row.
//
// Steps: one warp per row: its lanes share the splits' lse for the weights
// (merge.cuh), then each lane sums 4 columns over the splits, 4 splits' loads
// in flight at a time (8 spilled on sm_120 under NVRTC 12.9). Grid
// (ceil(rows / WARPS)); compile-time constant CUFLASH_DTYPE only.
// Constraints: head_dim % 8 == 0, out rows 8-byte aligned (cuflash/api.py).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/merge.cuh"

constexpr int WARPS = 4;

extern "C" __global__ void __launch_bounds__(WARPS * 32) cuflash_decode_combine(const DecodeCombineParams p) {
    const int lane = threadIdx.x % 32;
    const i64 rows = (i64)p.nheads * p.batch * p.seqlen_q;
    const i64 row = (i64)blockIdx.x * WARPS + threadIdx.x / 32;
    if (row >= rows) return;
    const int i = (int)(row % p.seqlen_q), b = (int)(row / p.seqlen_q % p.batch), h = (int)(row / p.seqlen_q / p.batch);
    const float sink = p.sink != nullptr ? p.sink[h] : -INFINITY;
    const MergeWeights<32> mw(p.num_splits, [&](int s) { return p.lse_part[s * rows + row]; }, sink, lane);
    u16* out = static_cast<u16*>(p.o) + b * p.o_batch_stride + (i64)i * p.o_row_stride + h * p.o_head_stride;
    for (int col = lane * 4; col < p.head_dim; col += 128) {
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
        for (int s = 0; s < p.num_splits; ++s) {
            const float w = mw.weight(p.lse_part[s * rows + row]);
            const float4 x = *reinterpret_cast<const float4*>(p.o_part + (s * rows + row) * p.part_cols + col);
            o.x += w * x.x;
            o.y += w * x.y;
            o.z += w * x.z;
            o.w += w * x.w;
        }
        *reinterpret_cast<uint2*>(out + col) = make_uint2(pack_float2(o.x, o.y), pack_float2(o.z, o.w));
    }
    if (lane == 0 && p.lse != nullptr) p.lse[row] = mw.lse;
}
