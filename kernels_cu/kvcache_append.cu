// kvcache_append.cu: new keys and values written into a KV cache in place,
// each batch row at its own position, with rotary embedding of the new keys
// and of q fused in (cuflash.attention_with_kvcache).
//
//   key cache_seqlens[b] + i of batch row b := rope(k[b, i, h, :], pos_k)   (v copied)
//   seqused[b] = min(cache_seqlens[b] + seqlen_new, seqlen_cache)
//   q_rot[b, i, h, :] = rope(q[b, i, h, :], pos_q)                         (rotary only)
//
// where a key of batch row b lives is kvcache.cuh's (a contiguous cache, with
// cache_batch_idx or not, or a paged one); seqlen_cache is the keys a batch
// row can hold (paged: max_pages * page_size). Positions count from the
// row's first key, cache_leftpad[b] (0 without): pos_k = cache_seqlens[b] -
// leftpad + i, and pos_q = cache_seqlens[b] - leftpad + i when q_positions_step
// is 1 (causal or local attention: query i sits with new key i) or
// cache_seqlens[b] - leftpad for every query when it is 0 (flash-attn 2.x);
// positions are clamped to the table (rotary.cuh). Rows that would land past
// the cache's end are dropped, and a negative cache_seqlens[b] counts as 0, so
// no value of cache_seqlens moves a write out of the cache. seqused is what
// the attention that follows reads as each row's number of keys.
//
// Steps: one thread per 8 consecutive elements (16 bytes) of one (row, head):
// the new keys' chunks first, then q's (rotary only); grid (ceil(chunks /
// THREADS), batch). The thread of chunk 0 of batch row b writes seqused[b].
//
// Compile-time constants: CUFLASH_DTYPE. Constraints: head_dim % 8 == 0;
// rotary_dim % 16 == 0, <= head_dim; every tensor 16-byte aligned with strides
// that are multiples of 8 elements (cuflash/api.py).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/kvcache.cuh"
#include "common/rotary.cuh"

constexpr int THREADS = 256;

extern "C" __global__ void __launch_bounds__(THREADS) cuflash_kvcache_append(const KvAppendParams p) {
    const int b = blockIdx.y;
    const int start = max(p.cache_seqlens[b], 0);
    const int chunks_per_head = p.head_dim / 8;
    const i64 chunk = (i64)blockIdx.x * THREADS + threadIdx.x;
    if (chunk == 0) p.seqused[b] = min(start + p.seqlen_new, p.seqlen_cache);
    const i64 k_chunks = (i64)p.seqlen_new * p.nheads_kv * chunks_per_head;
    const int c = (int)(chunk % chunks_per_head) * 8;
    // Rotary positions count from the row's first key (its left padding).
    const int first = p.cache_leftpad != nullptr ? min(max(p.cache_leftpad[b], 0), p.seqlen_cache) : 0;
    auto rotary_at = [&](int pos) {
        pos = min(max(pos, 0), p.seqlen_ro - 1);
        const u16* cos = static_cast<const u16*>(p.rotary_cos) + (i64)pos * (p.rotary_dim / 2);
        const u16* sin = static_cast<const u16*>(p.rotary_sin) + (i64)pos * (p.rotary_dim / 2);
        return Rotary{cos, sin, p.rotary_dim, p.rotary_interleaved != 0};
    };

    if (chunk < k_chunks) {
        const i64 rh = chunk / chunks_per_head;  // row * nheads_kv + head
        const int h = (int)(rh % p.nheads_kv);
        const int i = (int)(rh / p.nheads_kv);
        const i64 row = (i64)start + i;
        if (row >= p.seqlen_cache) return;  // past the cache's end: dropped
        const u16* k = static_cast<const u16*>(p.k) + b * p.k_batch_stride + i * p.k_row_stride + h * p.k_head_stride;
        const u16* v = static_cast<const u16*>(p.v) + b * p.v_batch_stride + i * p.v_row_stride + h * p.v_head_stride;
        const int2 slot = CacheMap(p, b).slot((int)row);
        u16* kc = static_cast<u16*>(p.k_cache) + CacheMap::at(slot, p.kc_batch_stride, p.kc_row_stride, p.kc_head_stride, h);
        u16* vc = static_cast<u16*>(p.v_cache) + CacheMap::at(slot, p.vc_batch_stride, p.vc_row_stride, p.vc_head_stride, h);
        *reinterpret_cast<uint4*>(vc + c) = *reinterpret_cast<const uint4*>(v + c);
        if (p.rotary_dim == 0)
            *reinterpret_cast<uint4*>(kc + c) = *reinterpret_cast<const uint4*>(k + c);
        else
            rotary_at(start - first + i).apply(k, kc, c);
        return;
    }
    if (p.rotary_dim == 0) return;
    // q: chunk - k_chunks indexes (row i, head h, column chunk) of (seqlen_q, nheads, d / 8).
    const i64 qc = chunk - k_chunks;
    if (qc >= (i64)p.seqlen_q * p.nheads * chunks_per_head) return;
    const i64 rh = qc / chunks_per_head;
    const int h = (int)(rh % p.nheads), i = (int)(rh / p.nheads);
    const u16* q = static_cast<const u16*>(p.q) + b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride;
    u16* q_rot = static_cast<u16*>(p.q_rot) + ((i64)(b * p.seqlen_q + i) * p.nheads + h) * p.head_dim;
    rotary_at(start - first + i * p.q_positions_step).apply(q, q_rot, c);
}
