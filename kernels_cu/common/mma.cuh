// mma.cuh: ldmatrix and mma.sync m16n8k16 (sm_80+), fp32 accumulators.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4*g + t:
//   A 16x16 (row major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16x8  (col major): b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C 16x8  (fp32):      c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// The C layout of two adjacent n-tiles equals the A layout of one k-step, so
// a score tile turns into the A operand of P·V without moving data.
#pragma once
#include "platform.cuh"
#include "numeric.cuh"  // pack_float2 (mma_rs)
#include "fragment.cuh"  // zero_acc

// Four 8x8 matrices of 16-bit elements; lane l supplies the address of row
// (l % 8) of matrix (l / 8).
CUFLASH_DEVICE void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// As ldmatrix_x4 but each 8x8 matrix transposed (used for V, stored [key][d]).
CUFLASH_DEVICE void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a * b for one m16n8k16 tile, 16-bit inputs of CUFLASH_DTYPE.
CUFLASH_DEVICE void mma_16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    // Not volatile: a pure register operation the compiler may schedule freely.
    // (ldmatrix above stays volatile so it never moves across a barrier.)
#if CUFLASH_DTYPE == CUFLASH_BF16
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
#else
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
#endif
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------
// Warp-level products with operands in shared memory (used by the backward).
//
// A tile in shared memory is stored row by row with a row pitch of PITCH
// 16-bit elements (copy.cuh). An operand is either stored in the layout the
// mma wants (A as [m][k], B as [n][k]: plain ldmatrix) or transposed (A as
// [k][m], B as [k][n]: ldmatrix.trans). The ldsm_offset_* helpers give the
// byte offset of the row address lane `lane` supplies for one x4 load at the
// tile origin; the products below add the per-tile offsets.

// A stored [m][k]: matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
// = a0..a3; lane l addresses row m = l % 16, column k = (l / 16) * 8.
template <int PITCH>
CUFLASH_DEVICE u32 ldsm_offset_a(int lane) {
    return (u32)(((lane % 16) * PITCH + (lane / 16) * 8) * 2);
}

// A stored [k][m] (transposed): the same four matrices read with .trans; lane
// l addresses row k = (l / 16) * 8 + l % 8, column m = ((l / 8) % 2) * 8.
template <int PITCH>
CUFLASH_DEVICE u32 ldsm_offset_a_t(int lane) {
    return (u32)((((lane / 16) * 8 + lane % 8) * PITCH + ((lane / 8) % 2) * 8) * 2);
}

// B stored [n][k]: one x4 = two n8 tiles x one k16 step: (n 0-7, k 0-7),
// (n 0-7, k 8-15) = b0, b1 of tile 0, then the same for n 8-15 (tile 1); lane
// l addresses row n = l % 8 + (l / 16) * 8, column k = ((l / 8) % 2) * 8.
template <int PITCH>
CUFLASH_DEVICE u32 ldsm_offset_b(int lane) {
    return (u32)(((lane % 8 + (lane / 16) * 8) * PITCH + ((lane / 8) % 2) * 8) * 2);
}

// B stored [k][n] (transposed, read with .trans): same register order; lane l
// addresses row k = l % 8 + ((l / 8) % 2) * 8, column n = (l / 16) * 8.
template <int PITCH>
CUFLASH_DEVICE u32 ldsm_offset_b_t(int lane) {
    return (u32)(((lane % 8 + ((lane / 8) % 2) * 8) * PITCH + (lane / 16) * 8) * 2);
}

// acc[MT][NT][4] += A (MT*16 x KSTEPS*16) * B (KSTEPS*16 x NT*8), both read
// from shared memory. a, b: shared addresses of the tile origins including
// this lane's ldsm_offset_* (A_T / B_T: operand stored transposed).
// UNROLL: k16 steps per unrolled loop body (default all). A fully unrolled
// loop lets the scheduler hoist the ldmatrix of many steps ahead, which can
// exhaust registers in kernels that also hold large accumulators.
template <int MT, int NT, int KSTEPS, int PITCH_A, bool A_T, int PITCH_B, bool B_T, int UNROLL = KSTEPS>
CUFLASH_DEVICE void mma_ss(float (&acc)[MT][NT][4], u32 a, u32 b) {
    static_assert(NT % 2 == 0, "B is loaded two n8 tiles at a time");
#pragma unroll(UNROLL)
    for (int ks = 0; ks < KSTEPS; ++ks) {
        u32 af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if (A_T)
                ldmatrix_x4_trans(af[mt], a + (u32)((ks * 16 * PITCH_A + mt * 16) * 2));
            else
                ldmatrix_x4(af[mt], a + (u32)((mt * 16 * PITCH_A + ks * 16) * 2));
        }
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            u32 bf[4];
            if (B_T)
                ldmatrix_x4_trans(bf, b + (u32)((ks * 16 * PITCH_B + np * 16) * 2));
            else
                ldmatrix_x4(bf, b + (u32)((np * 16 * PITCH_B + ks * 16) * 2));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_16816(acc[mt][2 * np], af[mt], bf[0], bf[1]);
                mma_16816(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
            }
        }
    }
}

// acc[MT][NT][4] += A * B where A (MT*16 x KSTEPS*16) is held by this warp as
// fp32 C fragments c[MT][2*KSTEPS][4] of an earlier product (rows m, columns
// k), rounded to 16 bits on the fly (the C layout of two adjacent n8 tiles is
// the A layout of one k16 step), and B is read from shared memory as in mma_ss.
template <int MT, int NT, int KSTEPS, int PITCH_B, bool B_T>
CUFLASH_DEVICE void mma_rs(float (&acc)[MT][NT][4], const float (&c)[MT][2 * KSTEPS][4], u32 b) {
    static_assert(NT % 2 == 0, "B is loaded two n8 tiles at a time");
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        u32 af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            af[mt][0] = pack_float2(c[mt][2 * ks][0], c[mt][2 * ks][1]);
            af[mt][1] = pack_float2(c[mt][2 * ks][2], c[mt][2 * ks][3]);
            af[mt][2] = pack_float2(c[mt][2 * ks + 1][0], c[mt][2 * ks + 1][1]);
            af[mt][3] = pack_float2(c[mt][2 * ks + 1][2], c[mt][2 * ks + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            u32 bf[4];
            if (B_T)
                ldmatrix_x4_trans(bf, b + (u32)((ks * 16 * PITCH_B + np * 16) * 2));
            else
                ldmatrix_x4(bf, b + (u32)((np * 16 * PITCH_B + ks * 16) * 2));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_16816(acc[mt][2 * np], af[mt], bf[0], bf[1]);
                mma_16816(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
            }
        }
    }
}

