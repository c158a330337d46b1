// params.cuh: the kernel parameter structs, passed by value.
//
// Each struct is mirrored field by field by a NumPy structured dtype in
// cuflash/params.py (align=True, i.e. C layout), packed by field name with
// zero defaults. tests/compile checks that every offset and the size agree by
// compiling loads of each field generated from the Python side. Strides are in
// elements; all offsets are computed in 64-bit so tensors above 2^31 elements
// are addressed correctly.
#pragma once
#include "platform.cuh"

// The head that the forward and the backward share (DESIGN 4b): the inputs,
// the problem's sizes and every run-time value of a feature. A field added
// here is added once more in cuflash/params.py (ATTENTION_FIELDS), nowhere else.
//   window_left/right: the sliding window (mask.cuh), read only when CUFLASH_MASK
//     is local; an unbounded side is UNBOUNDED = 2^30 (the API's -1).
//   softcap_in = softmax_scale / softcap, softcap_out = softcap / softmax_scale
//     (score_mod.cuh works on raw scores q.k).
//   alibi_slopes: float32 slope of (b, h) at b * alibi_batch_stride + h (stride
//     0 for slopes shared by the batch); read only under CUFLASH_ALIBI.
//   sink: float32 (nheads,) learnable sink logits; read only under CUFLASH_SINK.
//   dropout_*: the Philox key (seed), counter word (offset), threshold byte
//     round(p * 256) and scale 1 / (1 - p) of dropout.cuh; read only under CUFLASH_DROPOUT.
//     dropout_rng: the words (seed_lo, seed_hi, offset) in device memory, read instead
//     of those three fields under CUFLASH_DROPOUT 2 (a seed that a traced JAX program
//     makes on the device).
//   bias: the additive bias, element (b, h, i, j) at b * bias_batch_stride + h *
//     bias_head_stride + i * bias_row_stride + j (strides 0 on a broadcast dim),
//     in the input dtype or float32 (CUFLASH_BIAS 16 / 32);
//     read only under CUFLASH_BIAS (score_mod.cuh).
#define CUFLASH_ATTENTION_FIELDS                                \
    const void* q; /* (batch, seqlen_q, nheads, head_dim) */    \
    const void* k; /* (batch, seqlen_k, nheads_kv, head_dim) */ \
    const void* v; /* (batch, seqlen_k, nheads_kv, head_dim) */ \
    const float* alibi_slopes;                                  \
    const float* sink;                                          \
    const void* bias;                                           \
    const u32* dropout_rng; /* (3,), CUFLASH_DROPOUT 2 */       \
    i64 q_batch_stride, q_row_stride, q_head_stride;            \
    i64 k_batch_stride, k_row_stride, k_head_stride;            \
    i64 v_batch_stride, v_row_stride, v_head_stride;            \
    i64 alibi_batch_stride;                                     \
    i64 bias_batch_stride, bias_head_stride;                    \
    i64 bias_row_stride;                                        \
    int batch, nheads, nheads_kv;                               \
    int seqlen_q, seqlen_k;                                     \
    int head_dim; /* actual d <= CUFLASH_HEAD_DIM, % 8 == 0 */  \
    float scale;      /* softmax_scale */                       \
    float scale_log2; /* softmax_scale * log2(e) */             \
    int window_left, window_right;                              \
    float softcap_in, softcap_out;                              \
    u32 dropout_seed_lo, dropout_seed_hi, dropout_offset;       \
    u32 dropout_threshold;                                      \
    float dropout_scale;

// Variable-length batches (cuflash.attention_varlen; read only when CUFLASH_VARLEN
// is 1, seqinfo.cuh): sequence b holds rows [cu_seqlens_q[b], cu_seqlens_q[b + 1])
// of q and o (then (total_q, nheads, head_dim) with batch stride 0) and rows
// [cu_seqlens_k[b], cu_seqlens_k[b + 1]) of k and v (total_k rows), of which it
// uses the first seqused_k[b] when seqused_k is not null. lse is then (nheads,
// total_q). seqinfo.cuh clamps every range to these totals and to the grid's
// longest sequence (p.seqlen_q, p.seqlen_k), so no cu_seqlens can move an
// access out of bounds.
// Appended after a struct's own fields, so the dense fields keep their offsets.
// A field added here is added once more in cuflash/params.py (SEQUENCE_FIELDS).
#define CUFLASH_SEQUENCE_FIELDS                                        \
    const int* cu_seqlens_q; /* (batch + 1,) int32, or null (dense) */ \
    const int* cu_seqlens_k; /* (batch + 1,) int32 */                  \
    const int* seqused_k;    /* (batch,) int32, or null */             \
    int total_q;             /* rows of q in a varlen call */          \
    int total_k;             /* rows of k and v */

// A TMA tensor map (the driver's CUtensorMap: 128 opaque bytes that cuflash/tma.py
// encodes on the host), read by cp.async.bulk.tensor from the kernel's
// __grid_constant__ parameter (pipeline.cuh tma_load_tile).
struct alignas(128) TmaMap {
    u64 opaque[16];
};

struct FwdParams {
    CUFLASH_ATTENTION_FIELDS
    void* o;         // (batch, seqlen_q, nheads, head_dim); varlen: (total_q, nheads, head_dim)
    float* lse;      // (batch, nheads, seqlen_q) contiguous, or null when not asked for; varlen: (nheads, total_q)
    i64 o_batch_stride, o_row_stride, o_head_stride;
    CUFLASH_SEQUENCE_FIELDS
    // fwd_sm90_ws.cu only: bit 0 set when the host encoded tensor maps of q, k, v and o
    // (16-bit tensors whose strides TMA can address: cuflash/tma.py), and the producer loads
    // with TMA instead of cp.async, the consumers store O with it; bit 1 also when it encoded
    // tma_bias (a dense 16-bit bias with query rows, CUFLASH_BIAS: bias_tile.cuh load); 0
    // otherwise (the maps are then all zero).
    int tma;
    TmaMap tma_q, tma_k, tma_v;  // (head_dim, seqlen, heads, batch) boxes of one swizzle atom's columns
    TmaMap tma_o;                // the same, boxes of 64 rows (one consumer warpgroup's)
    TmaMap tma_bias;             // (seqlen_k, seqlen_q, heads, batch), 1 on a broadcast dim: boxes of 64 keys x Br rows
};

// kernels_cu/bwd_prepare.cu: delta, lse in the exp2 domain, zeroed dQ accumulator.
struct BwdPrepareParams {
    const void* o;       // (batch, seqlen_q, nheads, head_dim): the forward's output
    const void* dout;    // (batch, seqlen_q, nheads, head_dim): gradient of the output
    const float* lse;    // (batch, nheads, seqlen_q): the forward's lse, natural log, any strides
    float* lse_log2;     // (batch, nheads, seqlen_q_rounded) contiguous: lse * log2(e); +inf where lse = -inf and for padding rows
    float* delta;        // (batch, nheads, seqlen_q_rounded) contiguous: rowsum(dO * O); 0 for padding rows
    float* dq_accum;     // (batch, rows, nheads, dq_accum_cols) fp32 by its strides (BwdParams), zeroed here
    int* dq_semaphore;   // (batch, nheads, m_blocks) zeroed here, or null (not deterministic)
    const float* dlse;   // (batch, nheads, seqlen_q), any strides, or null: delta -= dlse
    i64 o_batch_stride, o_row_stride, o_head_stride;
    i64 do_batch_stride, do_row_stride, do_head_stride;
    i64 lse_batch_stride, lse_head_stride, lse_row_stride;
    i64 dqa_batch_stride, dqa_row_stride, dqa_head_stride;
    i64 dlse_batch_stride, dlse_head_stride, dlse_row_stride;
    int batch, nheads;
    int seqlen_q, seqlen_q_rounded;  // rounded = m_blocks * block_m of the backward kernel
    int head_dim;
    int dq_accum_cols;   // columns of dq_accum to zero (the backward's compile-time D)
    int block_m;         // Br of the backward kernel: the rows one semaphore guards
    int m_blocks;        // seqlen_q_rounded / block_m
    // Varlen (CUFLASH_VARLEN): sequence b's rows start at cu_seqlens_q[b] in o, dout,
    // lse, dlse and dq_accum (batch strides 0); lse_log2, delta and the semaphores keep
    // their (batch, nheads, rounded) layout, seqlen_q being the longest sequence.
    CUFLASH_SEQUENCE_FIELDS
};

// kernels_cu/bwd.cu: one CTA per (key block, query head, batch).
struct BwdParams {
    CUFLASH_ATTENTION_FIELDS
    const void* dout;    // (batch, seqlen_q, nheads, head_dim)
    const float* lse_log2;  // from bwd_prepare, (batch, nheads, seqlen_q_rounded)
    const float* delta;     // from bwd_prepare, (batch, nheads, seqlen_q_rounded)
    float* dq_accum;     // (batch, rows, nheads, D) fp32 by its strides, each head's rows contiguous and whole
                         // Br-row blocks (rows: seqlen_q_rounded, varlen total_q + Br; launch.py), zeroed;
                         // receives scale * dS K
    void* dk;            // (batch, seqlen_k, nheads_kv, head_dim) outputs, written when dk_accum is null
    void* dv;
    float* dk_accum;     // (batch, seqlen_k, nheads, head_dim) fp32 per query head (GQA), or null
    float* dv_accum;     //   same layout as dk_accum; the group sum is bwd_convert's
    int* dq_semaphore;   // (batch, nheads, m_blocks) zeroed turn counters (deterministic only)
    i64 do_batch_stride, do_row_stride, do_head_stride;
    i64 dqa_batch_stride, dqa_row_stride, dqa_head_stride;
    i64 dk_batch_stride, dk_row_stride, dk_head_stride;
    i64 dv_batch_stride, dv_row_stride, dv_head_stride;
    i64 dka_batch_stride, dka_row_stride, dka_head_stride;  // of dk_accum and dv_accum
    int seqlen_q_rounded, m_blocks;  // m_blocks * Br
    float* dsink_part;   // (batch, nheads, key blocks): each CTA's sum_i P_sink,i sum_j P_ij dP_ij (CUFLASH_SINK)
    // CUFLASH_BIAS: the bias's gradient (score_mod.cuh BiasGrad), or null: key stride 1, row
    // stride 0 to sum over queries, batch / head strides 0 to sum over those; dbias_atomic:
    // accumulate with atomics (entries shared by several (b, h, i)) in float32, else store, in
    // float32 when dbias_f32, else in the bias's own type.
    void* dbias;
    i64 dbias_batch_stride, dbias_head_stride, dbias_row_stride;
    int dbias_atomic, dbias_f32;
    CUFLASH_SEQUENCE_FIELDS          // varlen: q, dout, dq_accum by query row, k, v, dk, dv, dk_accum by key row
};

// bwd_sm90_ws.cu's parameter: BwdParams, then `tma` (1 when the host encoded the tensor maps
// of q, k, v and dout: dense 16-bit tensors TMA can address, cuflash/tma.py; the producer then
// loads with TMA instead of cp.async; 0 otherwise, the maps all zero) and the maps, boxes of one
// swizzle atom's columns (BwdSm90Spec.swizzle_atom). They stay out of BwdParams: with them (1152
// bytes instead of 512, 128-byte aligned) ptxas spilled 8 bytes in two portable backwards for
// sm_90 that never read them (d128 causal m64n128, d160 m32n64; NVRTC 12.9 and 13.0). BwdParams
// is trivial, so `tma` lies at sizeof(BwdParams) and the maps from the next 128-byte boundary.
struct BwdTmaParams : BwdParams {
    int tma;
    TmaMap tma_q, tma_k, tma_v, tma_do;
};

// Where a KV cache's keys live (kvcache.cuh CacheMap): contiguous (block_table
// null) with an optional batch-row -> cache-row map, or paged. Shared by
// KvAppendParams and DecodeParams; added once more in cuflash/params.py
// (CACHE_MAP_FIELDS).
#define CUFLASH_CACHE_MAP_FIELDS                                                      \
    const int* cache_batch_idx; /* (batch,) int32 cache row of batch row b, or null */ \
    const int* block_table;     /* (batch, max_pages) int32, or null (contiguous) */   \
    i64 block_table_batch_stride;                                                     \
    const int* cache_leftpad;   /* (batch,) int32 first key of each row, or null: 0 */ \
    int page_size;              /* keys per page (paged) */                           \
    int num_pages;              /* the cache's first dim: pages, or cache rows */

// kernels_cu/kvcache_append.cu: k, v (batch, seqlen_new, nheads_kv, head_dim) into
// the caches (kvcache.cuh) at key cache_seqlens[b] of batch row b.
struct KvAppendParams {
    const void* k;
    const void* v;
    void* k_cache;
    void* v_cache;
    const int* cache_seqlens;  // (batch,) int32: each row's filled length before the append
    int* seqused;              // (batch,) int32, written: min(cache_seqlens + seqlen_new, seqlen_cache)
    i64 k_batch_stride, k_row_stride, k_head_stride;
    i64 v_batch_stride, v_row_stride, v_head_stride;
    i64 kc_batch_stride, kc_row_stride, kc_head_stride;  // of the cache's (first dim, row, head)
    i64 vc_batch_stride, vc_row_stride, vc_head_stride;
    int seqlen_new, seqlen_cache, nheads_kv, head_dim;  // seqlen_cache: keys per batch row (paged: max_pages * page_size)
    CUFLASH_CACHE_MAP_FIELDS
    // Rotary (rotary.cuh; rotary_dim 0: none): the new keys rotated on their way into the
    // cache, and q (batch, seqlen_q, nheads, head_dim) into q_rot (the same shape, contiguous).
    const void* q;
    void* q_rot;
    const void* rotary_cos;  // (seqlen_ro, rotary_dim / 2) contiguous, the cache's dtype
    const void* rotary_sin;
    i64 q_batch_stride, q_row_stride, q_head_stride;
    int seqlen_q, nheads, seqlen_ro, rotary_dim;
    int rotary_interleaved;  // 1: GPT-J pairs (2i, 2i + 1); 0: GPT-NeoX pairs (i, i + rotary_dim / 2)
    int q_positions_step;    // 1: query i at the row's length + i (causal, local); 0: every query at the length
};

// kernels_cu/decode.cu: q (batch, seqlen_q, nheads, head_dim) over the caches k, v
// (contiguous (cache rows, seqlen_k, nheads_kv, d) or paged (num_pages, page_size,
// nheads_kv, d); seqlen_k = keys per batch row the cache can hold), split-KV.
struct DecodeParams {
    CUFLASH_ATTENTION_FIELDS
    void* o;             // (batch, seqlen_q, nheads, head_dim), written when num_splits == 1
    float* lse;          // (nheads, batch * seqlen_q) contiguous (the varlen layout), or null; num_splits == 1
    i64 o_batch_stride, o_row_stride, o_head_stride;
    float* o_part;       // (num_splits, nheads * batch * seqlen_q, part_cols) fp32 (num_splits > 1)
    float* lse_part;     // (num_splits, nheads * batch * seqlen_q) fp32 (num_splits > 1)
    u64* split_flags;    // (batch * nheads_kv * ceil(seqlen_q * group / 16), num_splits) (num_splits > 1)
    const int* seqused_k;  // (batch,) int32 keys of each batch row (clamped to seqlen_k), or null: seqlen_k
    u64 epoch;           // new for every call (num_splits > 1; decode.cu step 4)
    int num_splits, part_cols;
    CUFLASH_CACHE_MAP_FIELDS
};

// kernels_cu/bwd_convert.cu: dst[b, s, h, :] = sum_{j < group} src[b, s, h * group + j, :].
struct BwdConvertParams {
    const float* src;    // fp32 accumulator, (batch, seqlen, nheads * group, >= head_dim)
    void* dst;           // (batch, seqlen, nheads, head_dim) in the input dtype
    i64 src_batch_stride, src_row_stride, src_head_stride;
    i64 dst_batch_stride, dst_row_stride, dst_head_stride;
    int batch, seqlen, nheads, group;
    int head_dim;
    int src_swizzled;    // 1: src row s holds its 8-column group c at c ^ 8 (s % 8) (bwd_sm90.cu, bwd_sm90_ws.cu DQ_SWIZZLE)
};
