// bwd_prepare.cu: the backward's preprocessing (FlashAttention-2, Dao 2023,
// Alg. 2 line 4 and the D_i of eq. in Sec. 3.2), one pass over O and dO.
//
// For every (batch b, head h) and query row i < seqlen_q:
//   delta[b, h, i]    = D_i = rowsum(dO_i ∘ O_i) = sum_c dO[b, i, h, c] * O[b, i, h, c]   (fp32)
//                       minus dlse[b, h, i] when the caller passes dlse (a loss that reads lse)
//   lse_log2[b, h, i] = L_i * log2(e), or +inf when L_i = -inf
//   dq_accum[b, i, h, 0:D] = 0
// and for the padding rows seqlen_q <= i < seqlen_q_rounded (so the backward
// reads whole Br-row blocks without a bounds check):
//   delta = 0, lse_log2 = +inf (and, up to the next multiple of block_m, dq_accum = 0:
//   the backwards add whole blocks of dQ, padding included; for varlen these rows are
//   the next sequence's, or the spare rows after the last).
// With a semaphore buffer (deterministic backward) its counters are zeroed too.
//
// Why +inf: the backward recomputes P_ij = exp2(S_ij * scale * log2(e) - lse_log2_i).
// A row that sees no key has L_i = -inf (the forward's convention) and all its
// S_ij are masked; exp2(x - (-inf)) would be exp2(+inf) = inf, or NaN for a
// masked x = -inf. With +inf every P_ij of the row is exp2(-inf) = 0, so its
// dS row is 0 and it adds nothing to dK, dV or dQ (its dQ row stays 0).
// Padding rows (zero-filled Q and dO) get P = 0 and dS = 0 the same way.
//
// Steps: one CTA per (block of PREP_ROWS rows, head, batch), 256 threads; each
// row is read by 8 lanes, each loading 16-byte chunks (CHUNK elements) of dO and O
// at a stride of 8 chunks, then the 8 partial sums are added with shuffles.
//
// Varlen (CUFLASH_VARLEN = 1): sequence b's rows start at row cu_seqlens_q[b] of o,
// dout, lse, dlse and dq_accum (their batch strides are 0) and it has its own
// seqlen_q (seqinfo.cuh query_range); its rows from its own length up to
// seqlen_q_rounded (of the longest sequence) are padding rows as above.
//
// Compile-time constants: CUFLASH_DTYPE and CUFLASH_VARLEN (the head dim is a run-time value).
// Constraints: head_dim % 8 == 0; o and dout 16-byte aligned with strides that
// are multiples of 16 bytes; dq_accum rows 16-byte aligned, dq_accum_cols % 4 == 0.
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/numeric.cuh"
#include "common/seqinfo.cuh"

constexpr int THREADS = 256;
constexpr int LANES_PER_ROW = 8;
constexpr int ROWS_PER_PASS = THREADS / LANES_PER_ROW;  // 32
constexpr int PREP_ROWS = 64;                           // rows per CTA (cuflash/launch.py)
static_assert(PREP_ROWS % ROWS_PER_PASS == 0, "whole passes");

extern "C" __global__ void __launch_bounds__(THREADS) cuflash_bwd_prepare(const BwdPrepareParams p) {
    const int tid = threadIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int row_begin = blockIdx.x * PREP_ROWS;
    const int sub = tid % LANES_PER_ROW;  // this lane's share of a row

    const int2 rows = query_range(p, b);  // (first row, length) of sequence b
    const int q_start = rows.x, seqlen_q = rows.y;
    const elem_t* o = static_cast<const elem_t*>(p.o) + b * p.o_batch_stride + (i64)q_start * p.o_row_stride +
                      h * p.o_head_stride;
    const elem_t* dout = static_cast<const elem_t*>(p.dout) + b * p.do_batch_stride +
                         (i64)q_start * p.do_row_stride + h * p.do_head_stride;
    const i64 bh = (i64)b * p.nheads + h;

    for (int r = tid / LANES_PER_ROW; r < PREP_ROWS; r += ROWS_PER_PASS) {
        const int row = row_begin + r;
        float dot = 0.f;
        if (row < seqlen_q) {
            const elem_t* o_row = o + (i64)row * p.o_row_stride;
            const elem_t* do_row = dout + (i64)row * p.do_row_stride;
            for (int c = sub * CHUNK; c < p.head_dim; c += LANES_PER_ROW * CHUNK) {
                float a[CHUNK], d[CHUNK];
                unpack_chunk(*reinterpret_cast<const uint4*>(o_row + c), a);
                unpack_chunk(*reinterpret_cast<const uint4*>(do_row + c), d);
#pragma unroll
                for (int e = 0; e < CHUNK; ++e) dot = fmaf(a[e], d[e], dot);
            }
        }
        if (row < (seqlen_q + p.block_m - 1) / p.block_m * p.block_m) {
            // Zero this row's dQ accumulator: 8 lanes x 4 floats per step.
            float* dqa = p.dq_accum + b * p.dqa_batch_stride + (i64)(q_start + row) * p.dqa_row_stride +
                         h * p.dqa_head_stride;
            for (int c = sub * 4; c < p.dq_accum_cols; c += LANES_PER_ROW * 4)
                *reinterpret_cast<float4*>(dqa + c) = make_float4(0.f, 0.f, 0.f, 0.f);
        }
        // Sum over the 8 lanes of this row (aligned groups of 8 in the warp);
        // every lane of the warp takes part, whatever its row.
        dot += __shfl_xor_sync(0xffffffffu, dot, 1);
        dot += __shfl_xor_sync(0xffffffffu, dot, 2);
        dot += __shfl_xor_sync(0xffffffffu, dot, 4);
        if (sub == 0 && row < p.seqlen_q_rounded) {
            float lse2 = INFINITY;  // padding row: P = 0 (see the top of the file)
            if (row < seqlen_q) {
                float lse = p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + (i64)(q_start + row) * p.lse_row_stride];
                // A row that sees no key (lse = -inf): +inf makes its P exactly 0, not inf/NaN.
                lse2 = lse == -INFINITY ? INFINITY : lse * LOG2E;
                // A loss that also reads lse adds dlse_i * P_ij to dS_ij: D_i - dlse_i
                // in place of D_i (DESIGN 3).
                if (p.dlse != nullptr)
                    dot -= p.dlse[b * p.dlse_batch_stride + h * p.dlse_head_stride +
                                  (i64)(q_start + row) * p.dlse_row_stride];
            }
            p.delta[bh * p.seqlen_q_rounded + row] = dot;
            p.lse_log2[bh * p.seqlen_q_rounded + row] = lse2;
        }
    }

    if (p.dq_semaphore != nullptr) {
        // Counters of the backward's query blocks whose first row lies in this CTA's rows.
        const int m_first = (row_begin + p.block_m - 1) / p.block_m;
        for (int m = m_first + tid; m < p.m_blocks && m * p.block_m < row_begin + PREP_ROWS; m += THREADS)
            p.dq_semaphore[bh * p.m_blocks + m] = 0;
    }
}
