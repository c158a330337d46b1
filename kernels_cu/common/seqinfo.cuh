// seqinfo.cuh: where one (batch b, query head h) lives (DESIGN 4a).
//
// Kernels take their sequence lengths, kv head and row bases from here and
// never read p.seqlen_* themselves, so that variable-length batches change
// this file only. Tensors are (batch, seqlen, heads, dim) with element
// strides; query-side tensors (q, o, dout, dq) are indexed by h, key-side
// ones (k, v, dk, dv) by the kv head h_kv = h / (nheads / nheads_kv) (GQA).
#pragma once
#include "platform.cuh"

struct SeqInfo {
    int b, h, h_kv;
    int seqlen_q, seqlen_k;

    template <class Params>
    CUFLASH_DEVICE SeqInfo(const Params& p, int b_, int h_)
        : b(b_), h(h_), h_kv(h_ / (p.nheads / p.nheads_kv)), seqlen_q(p.seqlen_q), seqlen_k(p.seqlen_k) {}

    // Row 0 of this (b, h) in a query-side tensor / of (b, h_kv) in a key-side one.
    template <class T>
    CUFLASH_DEVICE T* query_rows(T* base, i64 batch_stride, i64 head_stride) const {
        return base + b * batch_stride + h * head_stride;
    }
    template <class T>
    CUFLASH_DEVICE T* key_rows(T* base, i64 batch_stride, i64 head_stride) const {
        return base + b * batch_stride + h_kv * head_stride;
    }
    // Row 0 of q (head h) and of k, v (head h_kv): the inputs every main kernel reads.
    template <class Params>
    CUFLASH_DEVICE void qkv_rows(const Params& p, const u16*& q, const u16*& k, const u16*& v) const {
        q = query_rows(static_cast<const u16*>(p.q), p.q_batch_stride, p.q_head_stride);
        k = key_rows(static_cast<const u16*>(p.k), p.k_batch_stride, p.k_head_stride);
        v = key_rows(static_cast<const u16*>(p.v), p.v_batch_stride, p.v_head_stride);
    }
    // Index of query row 0 in a (batch, nheads, rows) per-row array (lse and
    // the backward's padded lse_log2 / delta).
    CUFLASH_DEVICE i64 row_stat(int nheads, int rows) const { return ((i64)b * nheads + h) * rows; }
};
