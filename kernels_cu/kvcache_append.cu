// kvcache_append.cu: new keys and values written into a KV cache in place,
// each batch row at its own position (cuflash.attention_with_kvcache).
//
//   key cache_seqlens[b] + i of batch row b := k[b, i, h, :]      (and v alike)
//   seqused[b] = min(cache_seqlens[b] + seqlen_new, seqlen_cache)
//
// where a key of batch row b lives is kvcache.cuh's (a contiguous cache, with
// cache_batch_idx or not, or a paged one). seqlen_cache is the keys a batch
// row can hold (paged: max_pages * page_size).
//
// for i < seqlen_new and every kv head h. seqused is what the attention that
// follows reads as each row's number of keys (params.cuh seqused_k). Rows that
// would land past the cache's end are dropped, and a negative cache_seqlens[b]
// counts as 0, so no value of cache_seqlens moves a write out of the cache.
//
// Steps: one thread per 8 consecutive elements (16 bytes) of one (row, head);
// grid (ceil(seqlen_new * nheads_kv * head_dim / 8 / THREADS), batch). The
// thread of chunk 0 of batch row b writes seqused[b].
//
// Compile-time constants: CUFLASH_DTYPE (the copy is bitwise, so only the
// element size matters). Constraints: head_dim % 8 == 0; every tensor 16-byte
// aligned with strides that are multiples of 8 elements (cuflash/api.py).
#include "common/platform.cuh"
#include "common/params.cuh"
#include "common/kvcache.cuh"

constexpr int THREADS = 256;

extern "C" __global__ void __launch_bounds__(THREADS) cuflash_kvcache_append(const KvAppendParams p) {
    const int b = blockIdx.y;
    const int start = max(p.cache_seqlens[b], 0);
    const int chunks_per_head = p.head_dim / 8;
    const i64 chunk = (i64)blockIdx.x * THREADS + threadIdx.x;
    if (chunk == 0) p.seqused[b] = min(start + p.seqlen_new, p.seqlen_cache);
    if (chunk >= (i64)p.seqlen_new * p.nheads_kv * chunks_per_head) return;
    const int c = (int)(chunk % chunks_per_head) * 8;
    const i64 rh = chunk / chunks_per_head;  // row * nheads_kv + head
    const int h = (int)(rh % p.nheads_kv);
    const int i = (int)(rh / p.nheads_kv);
    const i64 row = (i64)start + i;
    if (row >= p.seqlen_cache) return;  // past the cache's end: dropped

    const u16* k = static_cast<const u16*>(p.k) + b * p.k_batch_stride + i * p.k_row_stride + h * p.k_head_stride + c;
    const u16* v = static_cast<const u16*>(p.v) + b * p.v_batch_stride + i * p.v_row_stride + h * p.v_head_stride + c;
    const int2 slot = CacheMap(p, b).slot((int)row);
    u16* kc = static_cast<u16*>(p.k_cache) + CacheMap::at(slot, p.kc_batch_stride, p.kc_row_stride, p.kc_head_stride, h) + c;
    u16* vc = static_cast<u16*>(p.v_cache) + CacheMap::at(slot, p.vc_batch_stride, p.vc_row_stride, p.vc_head_stride, h) + c;
    *reinterpret_cast<uint4*>(kc) = *reinterpret_cast<const uint4*>(k);
    *reinterpret_cast<uint4*>(vc) = *reinterpret_cast<const uint4*>(v);
}
