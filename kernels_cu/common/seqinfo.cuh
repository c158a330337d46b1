// seqinfo.cuh: where one (batch b, query head h) lives (DESIGN 4a).
//
// Kernels take their sequence lengths, kv head and row bases from here and
// never read p.seqlen_* themselves, so that variable-length batches change
// this file only. Tensors are (batch, seqlen, heads, dim) with element
// strides; query-side tensors (q, o, dout, dq) are indexed by h, key-side
// ones (k, v, dk, dv) by the kv head h_kv = h / (nheads / nheads_kv) (GQA).
//
// Variable-length batches (CUFLASH_VARLEN = 1, params.cuh SEQUENCE_FIELDS):
// sequence b starts at row q_start = cu_seqlens_q[b] of q (k_start of k, v) in
// tensors whose batch stride is 0, and has its own seqlen_q and seqlen_k
// (seqused_k[b] keys when given), clamped (clamped_rows). Dense kernels compile with both starts the
// constant 0, so their code is what it was without this switch.
#pragma once
#include "platform.cuh"
#include "numeric.cuh"  // elem_t

#ifndef CUFLASH_VARLEN
#define CUFLASH_VARLEN 0
#endif

// Rows [start, start + length) of one sequence from its cumulative offsets
// (cu[b], cu[b + 1]), clamped to the tensor's `total` rows and to `longest`
// (the grid's rows per sequence): whatever the offsets hold, the rows a kernel
// touches lie inside the tensor and inside the scratch laid out for the
// longest sequence (the host checks the offsets where it can; under jax.jit or
// CUDA-graph capture it cannot, and invalid ones then give wrong values, never
// an out-of-bounds access).
CUFLASH_DEVICE int2 clamped_rows(const int* cu, int b, int total, int longest) {
    const int start = min(max(cu[b], 0), total);
    const int end = min(max(cu[b + 1], start), total);
    return make_int2(start, min(end - start, longest));
}

// Sequence b's first query row and its length: (0, p.seqlen_q) for a dense batch,
// from cu_seqlens_q for a varlen one. The one place a kernel reads cu_seqlens_q.
template <class Params>
CUFLASH_DEVICE int2 query_range(const Params& p, int b) {
#if CUFLASH_VARLEN
    return clamped_rows(p.cu_seqlens_q, b, p.total_q, p.seqlen_q);
#else
    return make_int2(0, p.seqlen_q);
#endif
}

struct SeqInfo {
    int b, h, h_kv;
    int seqlen_q, seqlen_k;
    int q_start, k_start;  // first row of the sequence (0 unless varlen)

    template <class Params>
    CUFLASH_DEVICE SeqInfo(const Params& p, int b_, int h_)
        : b(b_), h(h_), h_kv(h_ / (p.nheads / p.nheads_kv)), seqlen_q(p.seqlen_q), seqlen_k(p.seqlen_k),
          q_start(0), k_start(0) {
#if CUFLASH_VARLEN
        const int2 rows = query_range(p, b);
        q_start = rows.x;
        seqlen_q = rows.y;
        const int2 keys = clamped_rows(p.cu_seqlens_k, b, p.total_k, p.seqlen_k);
        k_start = keys.x;
        seqlen_k = p.seqused_k != nullptr ? min(max(p.seqused_k[b], 0), keys.y) : keys.y;
#endif
    }

    // A KV-cache row (decode.cu): its keys are cache keys [pad, used), used =
    // seqused_k[b] (every one of seqlen_k when null) and pad = cache_leftpad[b]
    // (0 when null), each clamped into the cache; seqlen_k becomes used - pad.
    // Returns pad, the row's first cache key.
    template <class Params>
    CUFLASH_DEVICE int use_cache_keys(const Params& p) {
        if (p.seqused_k != nullptr) seqlen_k = min(max(p.seqused_k[b], 0), p.seqlen_k);
        const int pad = p.cache_leftpad != nullptr ? min(max(p.cache_leftpad[b], 0), seqlen_k) : 0;
        seqlen_k -= pad;
        return pad;
    }

    // Row 0 of this (b, h) in a query-side tensor / of (b, h_kv) in a key-side one.
    template <class T>
    CUFLASH_DEVICE T* query_rows(T* base, i64 batch_stride, i64 row_stride, i64 head_stride) const {
        return base + b * batch_stride + (i64)q_start * row_stride + h * head_stride;
    }
    template <class T>
    CUFLASH_DEVICE T* key_rows(T* base, i64 batch_stride, i64 row_stride, i64 head_stride) const {
        return base + b * batch_stride + (i64)k_start * row_stride + h_kv * head_stride;
    }
    // Key row 0 for query head h: the backward's per-query-head dK, dV accumulators (GQA).
    template <class T>
    CUFLASH_DEVICE T* key_rows_of_query_head(T* base, i64 batch_stride, i64 row_stride, i64 head_stride) const {
        return base + b * batch_stride + (i64)k_start * row_stride + h * head_stride;
    }
    // Row 0 of q (head h) and of k, v (head h_kv): the inputs every main kernel reads.
    template <class Params>
    CUFLASH_DEVICE void qkv_rows(const Params& p, const elem_t*& q, const elem_t*& k, const elem_t*& v) const {
        q = query_rows(static_cast<const elem_t*>(p.q), p.q_batch_stride, p.q_row_stride, p.q_head_stride);
        k = key_rows(static_cast<const elem_t*>(p.k), p.k_batch_stride, p.k_row_stride, p.k_head_stride);
        v = key_rows(static_cast<const elem_t*>(p.v), p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    }
    // Index of query row 0 in a (batch, nheads, rows) per-row array (the
    // backward's padded lse_log2 / delta).
    CUFLASH_DEVICE i64 row_stat(int nheads, int rows) const { return ((i64)b * nheads + h) * rows; }
    // The backward's other per-(b, h) inputs and its dQ scratch: row 0 of dout
    // (head h), the index of row 0 in lse_log2 and delta ((batch, nheads,
    // seqlen_q_rounded): padded to whole query blocks by bwd_prepare.cu) and row 0
    // of dq_accum (fp32, head h).
    template <class T, class Params>
    CUFLASH_DEVICE const T* dout_rows(const Params& p) const {
        return query_rows(static_cast<const T*>(p.dout), p.do_batch_stride, p.do_row_stride, p.do_head_stride);
    }
    template <class Params>
    CUFLASH_DEVICE i64 bwd_stat_row0(const Params& p) const { return row_stat(p.nheads, p.seqlen_q_rounded); }
    template <class Params>
    CUFLASH_DEVICE float* dq_accum_rows(const Params& p) const {
        return query_rows(p.dq_accum, p.dqa_batch_stride, p.dqa_row_stride, p.dqa_head_stride);
    }
    // Index of query row 0 in the forward's lse: (batch, nheads, seqlen_q), or
    // (nheads, total_q) for a varlen batch.
    template <class Params>
    CUFLASH_DEVICE i64 lse_row0(const Params& p) const {
#if CUFLASH_VARLEN
        return (i64)h * p.total_q + q_start;
#else
        return row_stat(p.nheads, p.seqlen_q);
#endif
    }
    // Row 0 of the forward's output o (head h).
    template <class T, class Params>
    CUFLASH_DEVICE T* out_rows(const Params& p) const {
        return query_rows(static_cast<T*>(p.o), p.o_batch_stride, p.o_row_stride, p.o_head_stride);
    }
    // Whether query rows from row0 on lie past this sequence (a varlen grid covers the
    // longest sequence; shorter ones' surplus query blocks exit at once).
    CUFLASH_DEVICE bool past_end(int row0) const { return CUFLASH_VARLEN && row0 >= seqlen_q; }
    // The same for a key block (the backward's grid covers the longest key sequence).
    CUFLASH_DEVICE bool past_end_of_keys(int key0) const { return CUFLASH_VARLEN && key0 >= seqlen_k; }
};

// The backward's operands of one (b, h) (bwd.cu, bwd_sm90.cu): row 0 of q, dout (head h)
// and k, v (head h_kv), index 0 of this head's lse_log2 and delta rows (seqlen_q_rounded
// floats each: padded to whole query blocks by bwd_prepare.cu) and row 0 of dq_accum
// (fp32, head h).
struct BwdRows {
    const elem_t *q, *k, *v, *dout;
    const float *lse2, *delta;
    float* dq_accum;
    template <class Params>
    CUFLASH_DEVICE BwdRows(const Params& p, const SeqInfo& si) {
        si.qkv_rows(p, q, k, v);
        dout = si.dout_rows<elem_t>(p);
        lse2 = p.lse_log2 + si.bwd_stat_row0(p);
        delta = p.delta + si.bwd_stat_row0(p);
        dq_accum = si.dq_accum_rows(p);
    }
};
