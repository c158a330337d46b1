// kvcache.cuh: where key j of batch row b lives in a KV cache (DESIGN 3,
// cuflash.attention_with_kvcache), for the append and the decode kernels.
//
// A contiguous cache is (cache rows, seqlen_cache, nheads_kv, d): batch row b
// reads cache row cache_batch_idx[b] (b when null) and key j is its row j.
// A paged cache is (num_pages, page_size, nheads_kv, d) with a block table
// (batch, max_pages) int32: key j of batch row b is row j % page_size of page
// block_table[b, j / page_size], for any page_size >= 1. Both come out as a
// slot (x, y): x indexes the cache's first dim (its batch stride), y its
// second (its row stride). Page and cache-row indices are clamped to
// [0, num_pages): the host refuses bad ones where it can read them, and under
// graph capture or jax.jit a bad one reads a wrong row, never outside the cache.
#pragma once
#include "platform.cuh"

// Its run-time fields are CUFLASH_CACHE_MAP_FIELDS (params.cuh).
struct CacheMap {
    const int* pages;  // batch row b's block-table row, or null (contiguous)
    int page_size, num_pages;
    int cache_row;     // contiguous: the cache row batch row b reads

    template <class Params>
    CUFLASH_DEVICE CacheMap(const Params& p, int b)
        : pages(p.block_table != nullptr ? p.block_table + b * p.block_table_batch_stride : nullptr),
          page_size(p.page_size), num_pages(p.num_pages),
          cache_row(p.cache_batch_idx != nullptr ? clamp_index(p.cache_batch_idx[b]) : b) {}

    CUFLASH_DEVICE int clamp_index(int x) const { return min(max(x, 0), num_pages - 1); }

    // (index into the cache's first dim, row within it) of key j >= 0.
    CUFLASH_DEVICE int2 slot(int j) const {
        if (pages == nullptr) return make_int2(cache_row, j);
        const int n = j / page_size;
        return make_int2(clamp_index(pages[n]), j - n * page_size);
    }

    // Element offset of slot s's row for kv head h in a cache with these strides
    // (K and V share the slot of a key; their strides may differ).
    static CUFLASH_DEVICE i64 at(int2 s, i64 batch_stride, i64 row_stride, i64 head_stride, int h) {
        return s.x * batch_stride + (i64)s.y * row_stride + h * head_stride;
    }
};

// A walk along one batch row's keys: the slot of key j, then of j + step, ...
// with one division at the start and a page lookup only where a step crosses
// into another page (every step for pages smaller than the step). Keys at or
// past `limit` (the row's used keys, <= what its block table covers) read no
// table entry; their slot is meaningless and the caller must not use it.
struct CacheCursor {
    int2 slot;
    int j, page;  // the key; its index into the row's block table (paged)

    CUFLASH_DEVICE CacheCursor(const CacheMap& map, int j_, int limit) : slot(make_int2(map.cache_row, j_)), j(j_), page(0) {
        if (map.pages != nullptr) {
            page = j / map.page_size;
            slot.y = j - page * map.page_size;
            if (j < limit) slot.x = map.clamp_index(map.pages[page]);
        }
    }

    CUFLASH_DEVICE void advance(const CacheMap& map, int step, int limit) {
        j += step;
        slot.y += step;
        if (map.pages == nullptr || slot.y < map.page_size) return;
        do {
            slot.y -= map.page_size;
            ++page;
        } while (slot.y >= map.page_size);
        if (j < limit) slot.x = map.clamp_index(map.pages[page]);
    }
};
