// wgmma.cuh: Hopper warpgroup matrix products (sm_90a only: wgmma.mma_async),
// and their shared-memory matrix descriptors.
//
// One wgmma computes D (64 x N, fp32) += A (64 x 16) * B (16 x N) for the 128
// threads of a warpgroup (4 consecutive warps). Warp w of the group owns rows
// 16w..16w+15 of D, and within the warp the fragment is the mma.sync C layout
// of mma.cuh repeated over N/8 column tiles: d[j][0..3] of lane 4g+t holds
// D[16w+g][8j+2t..8j+2t+1] and D[16w+g+8][8j+2t..8j+2t+1]. A, when it comes
// from registers, has the mma.sync A layout (per warp a 16x16 k-step), so a
// score tile S turns into the A operand of P V exactly as in fwd.cu.
//
// The shared-memory operands use the swizzled tiles of copy.cuh (SwizzleFor).
#pragma once
#include "platform.cuh"
#include "copy.cuh"
#include "numeric.cuh"  // pack_float2

// Matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address,
// leading and stride byte offsets (all >> 4), layout (swizzle) in bits 62-63.
//   K-major operand (Q, K: the reduction dim is contiguous): SBO = 8 rows of
//     the atom; LBO unused by swizzled layouts (1 by convention).
//   MN-major operand (V in P V: N = d is contiguous): LBO = distance to the
//     next column block (the next AW columns of N), SBO = 8 rows (keys).
CUFLASH_DEVICE u64 make_smem_desc(u32 addr, u32 lbo_bytes, u32 sbo_bytes, u64 mode) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)((lbo_bytes & 0x3FFFF) >> 4) << 16) |
           ((u64)((sbo_bytes & 0x3FFFF) >> 4) << 32) | (mode << 62);
}

// Descriptor of a K-major operand (the reduction dim is contiguous) in a
// swizzled ROWS x D tile (copy.cuh): rows row0.. (a multiple of 8), k-step ks
// (16 columns).
template <int ROWS, int D, int AW = SwizzleFor<D>::AW>
CUFLASH_DEVICE u64 desc_k_major(u32 tile, int row0, int ks) {
    using S = SwizzleFor<D, AW>;
    const int col = ks * 16;
    const u32 addr = tile + (u32)(((col / AW) * ROWS + row0) * S::ROW_BYTES + (col % AW) * 2);
    return make_smem_desc(addr, 16, 8 * S::ROW_BYTES, S::MODE);
}

// Descriptor of an MN-major operand (M or N contiguous) whose reduction dim
// runs down the rows of a swizzled ROWS x D tile: rows k_row0.. (k-step of 16
// rows), M/N columns from col0 (a multiple of AW) on.
template <int ROWS, int D, int AW = SwizzleFor<D>::AW>
CUFLASH_DEVICE u64 desc_mn_major(u32 tile, int k_row0, int col0 = 0) {
    using S = SwizzleFor<D, AW>;
    const u32 addr = tile + (u32)(((col0 / AW) * ROWS + k_row0) * S::ROW_BYTES);
    return make_smem_desc(addr, ROWS * S::ROW_BYTES, 8 * S::ROW_BYTES, S::MODE);
}

// Order register and shared-memory accesses of this thread before the next
// wgmma (required before the first wgmma after registers were written).
CUFLASH_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
CUFLASH_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Wait until at most N committed wgmma groups of this warpgroup are pending.
template <int N>
CUFLASH_DEVICE void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Writes to shared memory through the generic proxy (st.shared, cp.async)
// become visible to wgmma (the async proxy) only after this fence, executed
// by the writing thread before the barrier that publishes them.
CUFLASH_DEVICE void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pin accumulator registers: the compiler may not move reads or writes of
// them across this point (wgmma writes them asynchronously between issue and
// wait, invisible to the compiler).
template <int NT>
CUFLASH_DEVICE void fence_regs(float (&d)[NT][4]) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

// The same for A fragments in registers: an in-flight wgmma reads them, so
// they must stay allocated (and unchanged) until its wait.
template <int KT>
CUFLASH_DEVICE void fence_regs(u32 (&a)[KT][4]) {
#pragma unroll
    for (int j = 0; j < KT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
}

#if CUFLASH_DTYPE == CUFLASH_BF16
#define CUFLASH_WG_AB "bf16.bf16"
#else
#define CUFLASH_WG_AB "f16.f16"
#endif

// Accumulator operand lists: registers %0.. of 8 n8-tiles (16 floats) each,
// and the matching "+f" operands of tiles 4c..4c+3.
#define CUFLASH_WG_R0 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define CUFLASH_WG_R1 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define CUFLASH_WG_R2 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define CUFLASH_WG_R3 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define CUFLASH_WG_R4 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79"
#define CUFLASH_WG_R5 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define CUFLASH_WG_R6 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111"
#define CUFLASH_WG_R7 "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define CUFLASH_WG_T(d, j) CUFLASH_WG_C(d[j][0]), CUFLASH_WG_C(d[j][1]), CUFLASH_WG_C(d[j][2]), CUFLASH_WG_C(d[j][3])
#define CUFLASH_WG_Q(d, c) \
    CUFLASH_WG_T(d, 4 * c), CUFLASH_WG_T(d, 4 * c + 1), CUFLASH_WG_T(d, 4 * c + 2), CUFLASH_WG_T(d, 4 * c + 3)

// N = 80, 112, 144, 176 (a whole list and two n8-tiles more): the first 8 registers of list
// R2..R5 and the "+f" operands of tiles 4c, 4c+1.
#define CUFLASH_WG_H2 "%32, %33, %34, %35, %36, %37, %38, %39"
#define CUFLASH_WG_H3 "%48, %49, %50, %51, %52, %53, %54, %55"
#define CUFLASH_WG_H4 "%64, %65, %66, %67, %68, %69, %70, %71"
#define CUFLASH_WG_H5 "%80, %81, %82, %83, %84, %85, %86, %87"
#define CUFLASH_WG_P(d, c) CUFLASH_WG_T(d, 4 * c), CUFLASH_WG_T(d, 4 * c + 1)

#define CUFLASH_WG_REGS_32 CUFLASH_WG_R0
#define CUFLASH_WG_REGS_64 CUFLASH_WG_REGS_32 ", " CUFLASH_WG_R1
#define CUFLASH_WG_REGS_96 CUFLASH_WG_REGS_64 ", " CUFLASH_WG_R2
#define CUFLASH_WG_REGS_128 CUFLASH_WG_REGS_96 ", " CUFLASH_WG_R3
#define CUFLASH_WG_REGS_160 CUFLASH_WG_REGS_128 ", " CUFLASH_WG_R4
#define CUFLASH_WG_REGS_192 CUFLASH_WG_REGS_160 ", " CUFLASH_WG_R5
#define CUFLASH_WG_REGS_224 CUFLASH_WG_REGS_192 ", " CUFLASH_WG_R6
#define CUFLASH_WG_REGS_256 CUFLASH_WG_REGS_224 ", " CUFLASH_WG_R7
#define CUFLASH_WG_REGS_80 CUFLASH_WG_REGS_64 ", " CUFLASH_WG_H2
#define CUFLASH_WG_REGS_112 CUFLASH_WG_REGS_96 ", " CUFLASH_WG_H3
#define CUFLASH_WG_REGS_144 CUFLASH_WG_REGS_128 ", " CUFLASH_WG_H4
#define CUFLASH_WG_REGS_176 CUFLASH_WG_REGS_160 ", " CUFLASH_WG_H5
#define CUFLASH_WG_OPS_32(d) CUFLASH_WG_Q(d, 0)
#define CUFLASH_WG_OPS_64(d) CUFLASH_WG_OPS_32(d), CUFLASH_WG_Q(d, 1)
#define CUFLASH_WG_OPS_96(d) CUFLASH_WG_OPS_64(d), CUFLASH_WG_Q(d, 2)
#define CUFLASH_WG_OPS_128(d) CUFLASH_WG_OPS_96(d), CUFLASH_WG_Q(d, 3)
#define CUFLASH_WG_OPS_160(d) CUFLASH_WG_OPS_128(d), CUFLASH_WG_Q(d, 4)
#define CUFLASH_WG_OPS_192(d) CUFLASH_WG_OPS_160(d), CUFLASH_WG_Q(d, 5)
#define CUFLASH_WG_OPS_224(d) CUFLASH_WG_OPS_192(d), CUFLASH_WG_Q(d, 6)
#define CUFLASH_WG_OPS_256(d) CUFLASH_WG_OPS_224(d), CUFLASH_WG_Q(d, 7)
#define CUFLASH_WG_OPS_80(d) CUFLASH_WG_OPS_64(d), CUFLASH_WG_P(d, 2)
#define CUFLASH_WG_OPS_112(d) CUFLASH_WG_OPS_96(d), CUFLASH_WG_P(d, 3)
#define CUFLASH_WG_OPS_144(d) CUFLASH_WG_OPS_128(d), CUFLASH_WG_P(d, 4)
#define CUFLASH_WG_OPS_176(d) CUFLASH_WG_OPS_160(d), CUFLASH_WG_P(d, 5)

// CUFLASH_WG_C(x) is the constraint of accumulator x: "+f" (read and
// written) where D += A B, "=f" (written only) where D = A B, so the old
// value is dead and its registers free for other values.
#define CUFLASH_WG_INOUT(x) "+f"(x)
#define CUFLASH_WG_OUT(x) "=f"(x)

// A and B from shared memory. The operands after the N/2 accumulators are
// %K0 desc_a, %K1 desc_b, %K2 scale_d (0: D = A B, 1: D += A B), %K3 trans_a, %K4 trans_b.
#define CUFLASH_WGMMA_SS(N, K0, K1, K2, K3, K4)                                                           \
    asm volatile(                                                                                        \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %" K2 ", 0;\n"                                                 \
        "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." CUFLASH_WG_AB " {" CUFLASH_WG_REGS_##N "}, %" K0 \
        ", %" K1 ", p, 1, 1, %" K3 ", %" K4 ";\n}\n"                                                      \
        : CUFLASH_WG_OPS_##N(d)                                                                          \
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_A), "n"(TRANS_B))

// A from registers (a[4], the mma.sync A fragment), B from shared memory:
// %K0..%K0+3 a, then desc_b, scale_d, trans_b.
#define CUFLASH_WGMMA_RS(N, A0, A1, A2, A3, KB, KS, KT)                                                    \
    asm volatile(                                                                                          \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %" KS ", 0;\n"                                                   \
        "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." CUFLASH_WG_AB " {" CUFLASH_WG_REGS_##N "}, {%" A0 \
        ", %" A1 ", %" A2 ", %" A3 "}, %" KB ", p, 1, 1, %" KT ";\n}\n"                                     \
        : CUFLASH_WG_OPS_##N(d)                                                                            \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(TRANS_B))

// N = D + 8 for O += P V with P's row sums beside O (wgmma_rs_sums): O's operands, then those of
// the n8 tile l[0] of the caller's array l.
#define CUFLASH_WG_REGS_136 CUFLASH_WG_REGS_128 ", %64, %65, %66, %67"
#define CUFLASH_WG_OPS_136(d) CUFLASH_WG_OPS_128(d), CUFLASH_WG_T(l, 0)

#define CUFLASH_WGMMA_SS_BY_N                                                      \
    if constexpr (N == 32) CUFLASH_WGMMA_SS(32, "16", "17", "18", "19", "20");                \
    else if constexpr (N == 64) CUFLASH_WGMMA_SS(64, "32", "33", "34", "35", "36");           \
    else if constexpr (N == 80) CUFLASH_WGMMA_SS(80, "40", "41", "42", "43", "44");           \
    else if constexpr (N == 96) CUFLASH_WGMMA_SS(96, "48", "49", "50", "51", "52");           \
    else if constexpr (N == 112) CUFLASH_WGMMA_SS(112, "56", "57", "58", "59", "60");         \
    else if constexpr (N == 128) CUFLASH_WGMMA_SS(128, "64", "65", "66", "67", "68");         \
    else if constexpr (N == 144) CUFLASH_WGMMA_SS(144, "72", "73", "74", "75", "76");         \
    else if constexpr (N == 160) CUFLASH_WGMMA_SS(160, "80", "81", "82", "83", "84");         \
    else if constexpr (N == 176) CUFLASH_WGMMA_SS(176, "88", "89", "90", "91", "92");         \
    else if constexpr (N == 192) CUFLASH_WGMMA_SS(192, "96", "97", "98", "99", "100");        \
    else if constexpr (N == 224) CUFLASH_WGMMA_SS(224, "112", "113", "114", "115", "116");    \
    else CUFLASH_WGMMA_SS(256, "128", "129", "130", "131", "132");

#define CUFLASH_WGMMA_RS_BY_N                                                                   \
    if constexpr (N == 32) CUFLASH_WGMMA_RS(32, "16", "17", "18", "19", "20", "21", "22");      \
    else if constexpr (N == 64) CUFLASH_WGMMA_RS(64, "32", "33", "34", "35", "36", "37", "38"); \
    else if constexpr (N == 96) CUFLASH_WGMMA_RS(96, "48", "49", "50", "51", "52", "53", "54"); \
    else if constexpr (N == 128) CUFLASH_WGMMA_RS(128, "64", "65", "66", "67", "68", "69", "70");        \
    else if constexpr (N == 160) CUFLASH_WGMMA_RS(160, "80", "81", "82", "83", "84", "85", "86");        \
    else if constexpr (N == 192) CUFLASH_WGMMA_RS(192, "96", "97", "98", "99", "100", "101", "102");     \
    else if constexpr (N == 224) CUFLASH_WGMMA_RS(224, "112", "113", "114", "115", "116", "117", "118"); \
    else CUFLASH_WGMMA_RS(256, "128", "129", "130", "131", "132", "133", "134");

// d (64 x N per warpgroup, as d[N/8][4]) += A B (ACCUM) or = A B (!ACCUM: the
// old d is not read), A and B from shared memory. TRANS_A = 0: A stored M x K
// (K contiguous, K-major), 1: K x M (M contiguous); TRANS_B = 0: B stored N x K
// (K-major), 1: K x N (N contiguous).
template <int N, int TRANS_A, int TRANS_B, bool ACCUM>
CUFLASH_DEVICE void wgmma_ss(float (&d)[N / 8][4], u64 desc_a, u64 desc_b) {
    static_assert((N % 32 == 0 && 32 <= N && N <= 256) || N == 80 || N == 112 || N == 144 || N == 176,
                  "N: a multiple of 32 up to 256, or 80, 112, 144, 176 (the operand lists above)");
    const int scale_d = ACCUM;
    if constexpr (ACCUM) {
#define CUFLASH_WG_C CUFLASH_WG_INOUT
        CUFLASH_WGMMA_SS_BY_N
#undef CUFLASH_WG_C
    } else {
#define CUFLASH_WG_C CUFLASH_WG_OUT
        CUFLASH_WGMMA_SS_BY_N
#undef CUFLASH_WG_C
    }
}

// As wgmma_ss with A (64 x 16) in registers (the mma.sync A fragment, K-major).
template <int N, int TRANS_B, bool ACCUM>
CUFLASH_DEVICE void wgmma_rs(float (&d)[N / 8][4], const u32 (&a)[4], u64 desc_b) {
    static_assert(N % 32 == 0 && N <= 256, "N: a multiple of 32 up to 256");
    const int scale_d = ACCUM;
    if constexpr (ACCUM) {
#define CUFLASH_WG_C CUFLASH_WG_INOUT
        CUFLASH_WGMMA_RS_BY_N
#undef CUFLASH_WG_C
    } else {
#define CUFLASH_WG_C CUFLASH_WG_OUT
        CUFLASH_WGMMA_RS_BY_N
#undef CUFLASH_WG_C
    }
}

// d (64 x D) += A B and l (64 x 8) += A 1 in one product of N = D + 8 (D = 128): B is the
// MN-major D columns of desc_b, followed in shared memory (at desc_b's start + D / AW column
// blocks) by a column block of ones, of which the product reads the first 8 columns.
template <int D>
CUFLASH_DEVICE void wgmma_rs_sums(float (&d)[D / 8][4], float (&l)[1][4], const u32 (&a)[4], u64 desc_b) {
    static_assert(D == 128, "N = D + 8 = 136 (d64's kernels spilled with l: bench/NOTES.md v32)");
    const int scale_d = 1;
    constexpr int TRANS_B = 1;
#define CUFLASH_WG_C CUFLASH_WG_INOUT
    CUFLASH_WGMMA_RS(136, "68", "69", "70", "71", "72", "73", "74");
#undef CUFLASH_WG_C
}

// The attention products of one warpgroup (64 query rows), each issued as one
// committed group (wait with wgmma_wait).
// S = Q K^T (64 x BN): rows wg_row.. of the swizzled BM x D Q tile times the
// BN x D K tile, both K-major. ACCUM: added onto s (a bias loaded into it);
// otherwise the first k-step overwrites s, so its old value is dead.
template <int BM, int BN, int D, bool ACCUM>
CUFLASH_DEVICE void issue_qk(float (&s)[BN / 8][4], u32 q_tile, int wg_row, u32 k_tile) {
    wgmma_fence();
    wgmma_ss<BN, 0, 0, ACCUM>(s, desc_k_major<BM, D>(q_tile, wg_row, 0), desc_k_major<BN, D>(k_tile, 0, 0));
#pragma unroll
    for (int ks = 1; ks < D / 16; ++ks)
        wgmma_ss<BN, 0, 0, true>(s, desc_k_major<BM, D>(q_tile, wg_row, ks), desc_k_major<BN, D>(k_tile, 0, ks));
    wgmma_commit();
}

// O += P V (64 x D): P (64 x BN, 16 bits) from registers as A fragments, 16
// keys per k-step; V the BN x D tile, read transposed (MN-major).
template <int BN, int D>
CUFLASH_DEVICE void issue_pv(float (&o)[D / 8][4], const u32 (&pa)[BN / 16][4], u32 v_tile) {
    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) wgmma_rs<D, 1, true>(o, pa[kk], desc_mn_major<BN, D>(v_tile, kk * 16));
    wgmma_commit();
}

// As issue_pv, and l += P 1 (every column of l: the rows' sums of P as packed) from the column
// block of ones that follows the V tile in shared memory (wgmma_rs_sums).
template <int BN, int D>
CUFLASH_DEVICE void issue_pv_sums(float (&o)[D / 8][4], float (&l)[1][4], const u32 (&pa)[BN / 16][4], u32 v_tile) {
    fence_regs(o);
    fence_regs(l);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) wgmma_rs_sums<D>(o, l, pa[kk], desc_mn_major<BN, D>(v_tile, kk * 16));
    wgmma_commit();
}

// The backward's products (bwd_sm90.cu, bwd_sm90_ws.cu), keys as the M
// dimension. None commits: the callers group them.
// x = K Q^T or V dO^T (64 keys x NQ queries): rows key_row0.. of the swizzled
// BN x D key-side tile times rows query_row0.. (a multiple of 8) of the BM x D
// query-side tile, both K-major. ACCUM: onto x (a bias loaded into it);
// otherwise the first k-step overwrites x.
template <int BN, int BM, int D, int AW, bool ACCUM, int NQ = BM>
CUFLASH_DEVICE void issue_keys_by_queries(float (&x)[NQ / 8][4], u32 key_tile, int key_row0, u32 query_tile,
                                          int query_row0 = 0) {
    wgmma_ss<NQ, 0, 0, ACCUM>(x, desc_k_major<BN, D, AW>(key_tile, key_row0, 0),
                              desc_k_major<BM, D, AW>(query_tile, query_row0, 0));
#pragma unroll
    for (int ks = 1; ks < D / 16; ++ks)
        wgmma_ss<NQ, 0, 0, true>(x, desc_k_major<BN, D, AW>(key_tile, key_row0, ks),
                                 desc_k_major<BM, D, AW>(query_tile, query_row0, ks));
}

// acc (64 keys x COLS) += A B over BM queries, B the BM x D query-side tile (dO
// or Q) read transposed from column col0 on; A = P^T as A fragments in
// registers (dV), or rows a_row0.. of a swizzled BN x BM tile [key][query] in
// shared memory (dS^T or P^T, K-major).
template <int BM, int D, int AW, int COLS>
CUFLASH_DEVICE void issue_keys_by_cols(float (&acc)[COLS / 8][4], const u32 (&a)[BM / 16][4], u32 b_tile,
                                       int col0 = 0) {
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_rs<COLS, 1, true>(acc, a[kk], desc_mn_major<BM, D, AW>(b_tile, kk * 16, col0));
}
template <int BN, int BM, int D, int AW, int COLS>
CUFLASH_DEVICE void issue_keys_by_cols(float (&acc)[COLS / 8][4], u32 a_tile, int a_row0, u32 b_tile,
                                       int col0 = 0) {
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_ss<COLS, 0, 1, true>(acc, desc_k_major<BN, BM>(a_tile, a_row0, kk),
                                   desc_mn_major<BM, D, AW>(b_tile, kk * 16, col0));
}

// dQ (BM queries x COLS) = dS K over the BN keys: A = dS, read transposed from
// the BN x BM dS^T tile; B = the BN x D K tile read transposed, columns col0..;
// the first k-step overwrites acc.
template <int BN, int BM, int D, int AW, int COLS>
CUFLASH_DEVICE void issue_queries_by_cols(float (&acc)[COLS / 8][4], u32 dst_tile, u32 k_tile, int col0) {
    wgmma_ss<COLS, 1, 1, false>(acc, desc_mn_major<BN, BM>(dst_tile, 0), desc_mn_major<BN, D, AW>(k_tile, 0, col0));
#pragma unroll
    for (int kk = 1; kk < BN / 16; ++kk)
        wgmma_ss<COLS, 1, 1, true>(acc, desc_mn_major<BN, BM>(dst_tile, kk * 16),
                                   desc_mn_major<BN, D, AW>(k_tile, kk * 16, col0));
}

// A 64-key x NQ tile of one warp's rows (fragment layout; this warp's keys
// start at row key0 of the tile) -> queries query0.. of a swizzled BN x BM
// tile [key][query] in shared memory, 16-bit.
template <int BN, int BM, int NQ = BM>
CUFLASH_DEVICE void store_keys_by_queries(unsigned char* tile, const float (&x)[NQ / 8][4], int key0, int lane,
                                          int query0 = 0) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < NQ / 8; ++nt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
            *reinterpret_cast<u32*>(tile + swizzled_offset<BN, BM>(key0 + hh * 8 + g, query0 + nt * 8) + 4 * t) =
                pack_float2(x[nt][2 * hh], x[nt][2 * hh + 1]);
}
