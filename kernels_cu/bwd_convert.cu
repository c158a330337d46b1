// bwd_convert.cu: the backward's fp32 accumulators -> gradients in the input dtype.
//
//   dst[b, s, h, c] = sum_{j = 0 .. group-1} src[b, s, h * group + j, c]     (fp32, then rounded once)
//
// for c < head_dim. Used for
//   dQ:     src = dq_accum (batch, seqlen_q, nheads, D), group = 1 (a plain conversion; from
//           the Hopper backwards its columns may be swizzled per row: src_swizzled);
//   dK, dV: src = dk_accum / dv_accum (batch, seqlen_k, nheads, head_dim), one
//           slice per query head, group = nheads / nheads_kv: the GQA sum over
//           the query heads that share a kv head.
// The sum runs in the fixed order j = 0, 1, ..., so the result is bitwise
// reproducible. Nothing else is applied (the backward kernel already scaled).
//
// Steps: one thread per 8 consecutive columns of one (row, head): two 16-byte
// fp32 loads per term, 16 bytes (16-bit) or 32 bytes (float32) stored. Grid (ceil(seqlen * nheads *
// head_dim / 8 / THREADS), batch).
//
// Compile-time constants: CUFLASH_DTYPE. Constraints: head_dim % 8 == 0; src
// rows 16-byte aligned; dst 16-byte aligned with strides that are multiples
// of 16 bytes (checked in cuflash/api.py).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"

constexpr int THREADS = 256;

extern "C" __global__ void __launch_bounds__(THREADS) cuflash_bwd_convert(const BwdConvertParams p) {
    const int b = blockIdx.y;
    const int chunks_per_head = p.head_dim / 8;
    const i64 chunk = (i64)blockIdx.x * THREADS + threadIdx.x;
    if (chunk >= (i64)p.seqlen * p.nheads * chunks_per_head) return;
    const int c = (int)(chunk % chunks_per_head) * 8;
    const i64 rh = chunk / chunks_per_head;  // row * nheads + head
    const int h = (int)(rh % p.nheads);
    const i64 s = rh / p.nheads;

    const int src_c = p.src_swizzled ? c ^ (8 * (int)(s % 8)) : c;  // columns stay within D (a multiple of 64)
    const float* src =
        p.src + b * p.src_batch_stride + s * p.src_row_stride + (i64)h * p.group * p.src_head_stride + src_c;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < p.group; ++j) {
        float4 lo = *reinterpret_cast<const float4*>(src + j * p.src_head_stride);
        float4 hi = *reinterpret_cast<const float4*>(src + j * p.src_head_stride + 4);
        acc[0] += lo.x, acc[1] += lo.y, acc[2] += lo.z, acc[3] += lo.w;
        acc[4] += hi.x, acc[5] += hi.y, acc[6] += hi.z, acc[7] += hi.w;
    }
    elem_t* dst = static_cast<elem_t*>(p.dst) + b * p.dst_batch_stride + s * p.dst_row_stride +
                  h * p.dst_head_stride + c;
    // The 8 columns are 8 / CHUNK 16-byte chunks of the element type.
#pragma unroll
    for (int i = 0; i < 8 / CHUNK; ++i) {
        float x[CHUNK];
#pragma unroll
        for (int e = 0; e < CHUNK; ++e) x[e] = acc[i * CHUNK + e];
        reinterpret_cast<uint4*>(dst)[i] = pack_chunk(x);
    }
}
