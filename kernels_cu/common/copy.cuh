// copy.cuh: global -> shared copies with cp.async (sm_80+), and shared
// addresses for ldmatrix.
//
// Tiles live in shared memory as rows of ROW_PITCH = D + CHUNK elements: the 16
// padding bytes shift consecutive rows by 4 banks, so the 8 row addresses of
// one ldmatrix 8x8 matrix land on 8 distinct 16-byte bank groups for every D
// that is a multiple of 32 (no conflicts, no swizzle arithmetic). Or, for
// tiles streamed through the main loop with D % 64 == 0 (16-bit inputs),
// swizzled rows of exactly D elements (chunk_offset below).
#pragma once
#include "platform.cuh"
#include "numeric.cuh"  // elem_t, CHUNK

CUFLASH_DEVICE u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// The dynamic shared memory from its first 1024-byte aligned byte on (swizzled
// TMA / wgmma tiles need that alignment; launch.py adds 1024 bytes of slack for
// it): the generic pointer, and its shared-window address in `addr`.
CUFLASH_DEVICE unsigned char* smem_aligned_1024(unsigned char* raw, u32& addr) {
    addr = (smem_addr(raw) + 1023u) & ~1023u;
    return raw + (addr - smem_addr(raw));
}

// Copy 16 bytes global -> shared asynchronously. When `pred` is false no
// global byte is read and the 16 shared bytes are zero-filled (src-size 0):
// out-of-range rows and head-dim padding columns become exact zeros, so they
// add nothing to Q·K^T and P·V and can never inject NaN.
CUFLASH_DEVICE void cp_async_16(u32 dst, const void* src, bool pred) {
    int src_bytes = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

// The same, reading only the first `bytes` (0 to 16) of the 16 and zero-filling
// the rest (a chunk that the end of a row cuts; with 0, src is never read).
CUFLASH_DEVICE void cp_async_16_bytes(u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

// 16 bytes from registers into shared memory (a chunk assembled where cp.async cannot copy it).
CUFLASH_DEVICE void st_shared_16(u32 dst, u32 a, u32 b, u32 c, u32 d) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// The same for a chunk known to be in range: no source-size operand to form.
CUFLASH_DEVICE void cp_async_16_full(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

CUFLASH_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
CUFLASH_DEVICE void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Swizzled rows: rows of exactly PITCH = D elements (D % 64 == 0, so every row
// is whole 128-byte lines) with 16-byte chunk c of row r stored at chunk
// c ^ (r % 8). The 8 consecutive rows one ldmatrix 8x8 matrix reads at one
// chunk land in 8 distinct bank groups, as with padded rows, and a row's
// cp.async copies fill whole lines. (Into padded rows, which straddle lines,
// the same copies made the H200's L2 serve 1.5x (decode.cu, fwd.cu) to 2.7x
// (bwd.cu) the sectors and requests: bandwidth and latency lost to L2.)
// Byte offset of chunk c of row r, swizzled or plain, for rows of PITCH elements.
template <int PITCH, bool SWIZZLE>
CUFLASH_DEVICE u32 chunk_offset(int r, int c) {
    return (u32)(r * PITCH * ELEM_BYTES + (SWIZZLE ? (c ^ (r & 7)) : c) * 16);
}

// Whether a tile that a main loop streams (fwd.cu K and V, bwd.cu Q and dO,
// decode.cu's K/V ring) is swizzled, and its row pitch in elements
// (cuflash/launch.py swizzled_pitch says the same for the shared-memory sizes).
template <int D>
__host__ __device__ constexpr bool streamed_swizzled() { return ELEM_BYTES == 2 && D % 64 == 0; }
template <int D>
__host__ __device__ constexpr int streamed_pitch() { return streamed_swizzled<D>() ? D : D + CHUNK; }

// Load a ROWS x D tile (rows [row0, row0 + ROWS) of a (seqlen, ..., d) tensor
// whose rows are `row_stride` elements apart) into shared memory with pitch
// D + CHUNK, or swizzled rows of D (SWIZZLE). Rows >= seqlen and columns >=
// head_dim are zero-filled.
//
// Each thread copies one fixed 16-byte column chunk of every ROW_STEP-th row,
// so its addresses are one base pointer plus constant multiples of the row
// stride: no per-chunk 64-bit address stays live across the main loop. When
// THREADS is not a multiple of the D / CHUNK chunks of a row (D = 96, 160, ...),
// the last THREADS % (D / CHUNK) threads copy nothing.
template <int ROWS, int D, int THREADS, bool SWIZZLE = false>
CUFLASH_DEVICE void load_tile_async(u32 smem, const elem_t* gmem, i64 row_stride, int row0, int seqlen,
                                    int head_dim, int tid) {
    constexpr int CHUNKS_PER_ROW = D / CHUNK;
    constexpr int ROW_STEP = THREADS / CHUNKS_PER_ROW;
    constexpr int PITCH = SWIZZLE ? D : D + CHUNK;
    static_assert(ROW_STEP > 0, "a row needs at most THREADS chunks");
    static_assert(!SWIZZLE || (D % 64 == 0 && ELEM_BYTES == 2), "swizzled rows: whole 128-byte lines");
    if (THREADS % CHUNKS_PER_ROW != 0 && tid >= ROW_STEP * CHUNKS_PER_ROW) return;
    const int r = tid / CHUNKS_PER_ROW, col = (tid % CHUNKS_PER_ROW) * CHUNK;
    const bool col_ok = col < head_dim;
    const elem_t* src = gmem + (i64)(row0 + r) * row_stride + col;
    const u32 dst = smem + (u32)(r * (D + CHUNK) + col) * (u32)ELEM_BYTES;  // padded rows
#pragma unroll
    for (int i = 0; i < (ROWS + ROW_STEP - 1) / ROW_STEP; ++i) {
        if (ROWS % ROW_STEP != 0 && r + i * ROW_STEP >= ROWS) break;  // ragged last round (dead when even)
        bool ok = col_ok && row0 + r + i * ROW_STEP < seqlen;
        // A predicated-off copy reads nothing, but still gets a valid address.
        const u32 at = SWIZZLE ? smem + chunk_offset<PITCH, true>(r + i * ROW_STEP, col / CHUNK)
                               : dst + (u32)(i * ROW_STEP * (D + CHUNK) * ELEM_BYTES);
        cp_async_16(at, ok ? src + i * ROW_STEP * row_stride : gmem, ok);
    }
}

// ---------------------------------------------------------------------------
// Swizzled tiles (the operand layout of Hopper's wgmma, see wgmma.cuh).
//
// A ROWS x D tile is stored as D / AW column blocks of ROWS x AW elements:
// AW = 64 (128-byte rows, the hardware's 128B swizzle) or AW = 32 (64-byte
// rows, 64B swizzle); by default 64 when D % 64 == 0, else 32. Inside a column block the 16-byte chunk
// c of row r sits at chunk position c ^ (r % 8) (128B) or c ^ ((r / 2) % 4)
// (64B), i.e. address bits [4, 7) (resp. [4, 6)) are XORed with bits [7, 10)
// (resp. [7, 9)). The pattern is a function of the shared address, so the
// tile and each column block start on a 1024-byte boundary (ROWS % 8 == 0).
// The 8 rows of one 16-byte column land on 8 distinct bank groups, so the
// row-wise copies and the epilogue's stores are conflict-free as well.
template <int D, int AW_ = (D % 64 == 0) ? 64 : 32>
struct SwizzleFor {
    static_assert((AW_ == 64 || AW_ == 32) && D % AW_ == 0, "swizzle atom of 64 or 32 elements");
    static constexpr int AW = AW_;
    static constexpr int ROW_BYTES = AW * 2;
    static constexpr u64 MODE = (AW == 64) ? 1 : 2;  // descriptor code: 1 = SWIZZLE_128B, 2 = SWIZZLE_64B
    static constexpr u32 MASK = (AW == 64) ? 7 : 3;  // row bits XORed into the chunk index
};

// Byte offset of element (r, col) in a ROWS x D swizzled tile (the swizzle moves
// whole 16-byte chunks, so columns col..col+7 of an aligned chunk stay adjacent).
template <int ROWS, int D, int AW = SwizzleFor<D>::AW>
CUFLASH_DEVICE u32 swizzled_offset(int r, int col) {
    using S = SwizzleFor<D, AW>;
    u32 linear = (u32)(((col / S::AW) * ROWS + r) * S::ROW_BYTES + (col % S::AW) * 2);
    return linear ^ (((linear >> 7) & S::MASK) << 4);
}

// As load_tile_async, into a swizzled ROWS x D tile. ROLLED: a loop that is
// not unrolled and advances one pointer (a producer warp with few registers);
// otherwise every round's address is formed up front.
//
// Unrolled, a tile that lies wholly inside the tensor (row0 + ROWS <= seqlen,
// head_dim == D: every block of a long sequence but its last) takes a path
// without bounds tests (UNTESTED_INSIDE), whose round i reads at a 32-bit byte
// offset i * ROW_STEP * row_stride * 2 from the thread's first chunk (when the
// row stride is not negative and the tile spans less than 2^31 bytes). The
// tested path forms each round's predicate and its null-or-real 64-bit source:
// about 14 instructions per 16-byte copy in fwd_sm90_ws.cu's producer warps,
// which share their schedulers with the consumers' softmax (bench/NOTES.md v15). A caller whose registers
// cannot hold both paths (a Q tile loaded once per tile) passes false.
template <int ROWS, int D, int THREADS, int AW = SwizzleFor<D>::AW, bool ROLLED = false,
          bool UNTESTED_INSIDE = !ROLLED>
CUFLASH_DEVICE void load_tile_swizzled(u32 smem, const u16* gmem, i64 row_stride, int row0, int seqlen,
                                       int head_dim, int tid) {
    constexpr int CHUNKS_PER_ROW = D / 8;
    constexpr int ROW_STEP = THREADS / CHUNKS_PER_ROW;
    constexpr int ROUNDS = (ROWS + ROW_STEP - 1) / ROW_STEP;
    static_assert(ROW_STEP > 0 && ROWS % 8 == 0, "a row needs at most THREADS chunks; 8-row atoms");
    static_assert(!(ROLLED && UNTESTED_INSIDE), "the rolled loop keeps one (tested) path");
    if (THREADS % CHUNKS_PER_ROW != 0 && tid >= ROW_STEP * CHUNKS_PER_ROW) return;
    const int r = tid / CHUNKS_PER_ROW, col = (tid % CHUNKS_PER_ROW) * 8;
    const u16* src = gmem + (i64)(row0 + r) * row_stride + col;
    // A negative row stride (a CuPy view reversed along the sequence) keeps the tested path's signed offsets.
    if (UNTESTED_INSIDE && row0 + ROWS <= seqlen && head_dim == D && row_stride >= 0 &&
        row_stride <= (i64)(0x7fffffff / (2 * ROWS))) {
        const char* first = reinterpret_cast<const char*>(src);
        const u32 step = (u32)(ROW_STEP * row_stride) * 2u;  // bytes between a thread's rounds
#pragma unroll
        for (int i = 0; i < ROUNDS; ++i) {
            if (ROWS % ROW_STEP != 0 && r + i * ROW_STEP >= ROWS) break;  // ragged last round (dead when even)
            cp_async_16_full(smem + swizzled_offset<ROWS, D, AW>(r + i * ROW_STEP, col), first + (u32)i * step);
        }
        return;
    }
    const bool col_ok = col < head_dim;
    if constexpr (ROLLED) {
        static_assert(ROWS % ROW_STEP == 0, "whole rounds");
#pragma unroll 1
        for (int rr = r; rr < ROWS; rr += ROW_STEP, src += ROW_STEP * row_stride) {
            const bool ok = col_ok && row0 + rr < seqlen;
            cp_async_16(smem + swizzled_offset<ROWS, D, AW>(rr, col), ok ? src : gmem, ok);
        }
    } else {
#pragma unroll
        for (int i = 0; i < ROUNDS; ++i) {
            if (ROWS % ROW_STEP != 0 && r + i * ROW_STEP >= ROWS) break;  // ragged last round (dead when even)
            bool ok = col_ok && row0 + r + i * ROW_STEP < seqlen;
            cp_async_16(smem + swizzled_offset<ROWS, D, AW>(r + i * ROW_STEP, col),
                        ok ? src + i * ROW_STEP * row_stride : gmem, ok);
        }
    }
}
