// mma.cuh: warp-level matrix products on the tensor cores (sm_80+: ldmatrix,
// mma.sync), fp32 accumulators, for 16-bit and for float32 inputs.
//
// 16-bit inputs (fp16, bf16): mma.m16n8k16, a k-step is 16 elements.
// float32 inputs (CUFLASH_FP32): 3xTF32 on mma.m16n8k8.tf32, a k-step is 8
// elements. Each operand x is split into big = tf32(x) and small =
// tf32(x - big) (x - big is exact; tf32 keeps 10 of float32's 23 mantissa bits), and
//   a b = small_a big_b + big_a small_b + big_a big_b   (small_a small_b, ~2^-22 of
//   a b, is dropped)
// so a product is as accurate as float32 arithmetic to within a few units in
// the last place, at three tensor-core instructions per k-step.
// Either way a k-step spans 32 bytes of a row (KSTEP elements), so the shared
// addresses of the 16-bit path serve the float32 one byte for byte.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8"), lane = 4*g + t:
//   16-bit A 16x16 (row major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//          B 16x8  (col major): b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   tf32   A 16x8:              a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]
//          B 8x8:               b0 = B[t][g], b1 = B[t+4][g]
//   C 16x8 (fp32):              c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// 16-bit: the C layout of two adjacent n8 tiles equals the A layout of one
// k-step, so a score tile turns into the A operand of P·V without moving data.
// tf32: a product sums over k in any order as long as A and B agree, so a
// product with an operand from registers or stored transposed lets k-slot t
// hold element 2t and slot t+4 element 2t+1 (the "paired" order). Then one C
// tile is the A operand of one k-step (a0..a3 = c0, c2, c1, c3), and a
// transposed operand is two (B) or four (A) 32-bit loads whose lanes touch
// rows 2t, 2t+1 and column g: with rows 4 words apart mod 32 (pitch D + 4)
// the 32 lanes hit 32 distinct banks. A tf32 product of two untransposed
// operands uses the natural order and ldmatrix, whose 8x8 matrices of 16-bit
// pairs are 8x4 matrices of 32-bit elements in exactly the tf32 layout.
#pragma once
#include "platform.cuh"
#include "numeric.cuh"  // elem_t, pack_float2
#include "fragment.cuh"  // zero_acc
#include "copy.cuh"      // chunk_offset

// Elements per k-step (16 or 8) and n8 C tiles per k-step (2 or 1).
constexpr int KSTEP = 32 / ELEM_BYTES;
constexpr int C_TILES_PER_KSTEP = KSTEP / 8;

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

// One 32-bit shared-memory load (volatile like ldmatrix: never moved across a barrier).
CUFLASH_DEVICE u32 lds32(u32 addr) {
    u32 r;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(r) : "r"(addr));
    return r;
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

// c += a * b for one m16n8k8 tile of tf32 operands (float bit patterns whose
// low 13 mantissa bits are zero).
CUFLASH_DEVICE void mma_1688_tf32(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// x = big + small, both tf32, round to nearest (x - big is exact in float32).
CUFLASH_DEVICE void split_tf32(float x, u32& big, u32& small) {
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(big) : "f"(x));
    const float rest = x - __uint_as_float(big);
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(small) : "f"(rest));
}

// ---------------------------------------------------------------------------
// Operand fragments of one k-step: A (16 x KSTEP) and B (KSTEP x 8). 16-bit:
// the mma's registers; float32: the big and small tf32 halves of each.
struct FragA {
    u32 r[4];
#if CUFLASH_DTYPE == CUFLASH_FP32
    u32 lo[4];
#endif
};
struct FragB {
    u32 r[2];
#if CUFLASH_DTYPE == CUFLASH_FP32
    u32 lo[2];
#endif
};

// Raw loaded registers -> a fragment (float32: split in place into big / small).
template <int N>
CUFLASH_DEVICE void set_frag(u32 (&r)[N], u32 (&lo)[N], const u32 (&raw)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        if constexpr (FP32) split_tf32(__uint_as_float(raw[i]), r[i], lo[i]);
        else r[i] = raw[i];
    }
}
#if CUFLASH_DTYPE == CUFLASH_FP32
#define CUFLASH_FRAG_LO(f) (f).lo
#else
#define CUFLASH_FRAG_LO(f) (f).r  // unused: 16-bit fragments have no small half
#endif
CUFLASH_DEVICE void set_a(FragA& a, const u32 (&raw)[4]) { set_frag(a.r, CUFLASH_FRAG_LO(a), raw); }
CUFLASH_DEVICE void set_b(FragB& b, u32 raw0, u32 raw1) {
    const u32 raw[2] = {raw0, raw1};
    set_frag(b.r, CUFLASH_FRAG_LO(b), raw);
}

// c += a * b, one k-step.
CUFLASH_DEVICE void mma(float (&c)[4], const FragA& a, const FragB& b) {
#if CUFLASH_DTYPE == CUFLASH_FP32
    // Small terms first: they are added while c is still near its earlier value.
    mma_1688_tf32(c, a.lo, b.r[0], b.r[1]);
    mma_1688_tf32(c, a.r, b.lo[0], b.lo[1]);
    mma_1688_tf32(c, a.r, b.r[0], b.r[1]);
#else
    mma_16816(c, a.r, b.r[0], b.r[1]);
#endif
}

// A k-step of A stored [m][k] at addr (+ this lane's ldsm_offset_a).
CUFLASH_DEVICE void load_a(FragA& a, u32 addr) {
    u32 raw[4];
    ldmatrix_x4(raw, addr);
    set_a(a, raw);
}

// Two n8 tiles of B (one k-step) stored [n][k] at addr (+ ldsm_offset_b).
CUFLASH_DEVICE void load_b2(FragB (&b)[2], u32 addr) {
    u32 raw[4];
    ldmatrix_x4(raw, addr);
    set_b(b[0], raw[0], raw[1]);
    set_b(b[1], raw[2], raw[3]);
}

// float32, paired order: a k-step of A stored [m][k] at addr (+ ldsm_offset_a<PITCH,
// true>): a0..a3 = A[g][2t], A[g+8][2t], A[g][2t+1], A[g+8][2t+1], two 64-bit loads.
template <int PITCH>
CUFLASH_DEVICE void load_a_paired(FragA& a, u32 addr) {
    u32 raw[4];
    asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];\n" : "=r"(raw[0]), "=r"(raw[2]) : "r"(addr));
    asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];\n" : "=r"(raw[1]), "=r"(raw[3]) : "r"(addr + 8 * PITCH * 4));
    set_a(a, raw);
}

// A k-step of A stored [k][m] (rows PITCH elements apart) at addr (+ ldsm_offset_a_t).
// float32: paired order, a0..a3 = A[g][2t], A[g+8][2t], A[g][2t+1], A[g+8][2t+1].
template <int PITCH>
CUFLASH_DEVICE void load_a_t(FragA& a, u32 addr) {
    u32 raw[4];
    if constexpr (FP32) {
        raw[0] = lds32(addr), raw[1] = lds32(addr + 8 * 4);
        raw[2] = lds32(addr + PITCH * 4), raw[3] = lds32(addr + (PITCH + 8) * 4);
    } else {
        ldmatrix_x4_trans(raw, addr);
    }
    set_a(a, raw);
}

// Two n8 tiles of B (one k-step) stored [k][n] at addr (+ ldsm_offset_b_t).
// float32: paired order, b0, b1 = B[2t][g], B[2t+1][g] (columns g and g + 8).
template <int PITCH>
CUFLASH_DEVICE void load_b2_t(FragB (&b)[2], u32 addr) {
    u32 raw[4];
    if constexpr (FP32) {
        raw[0] = lds32(addr), raw[1] = lds32(addr + PITCH * 4);
        raw[2] = lds32(addr + 8 * 4), raw[3] = lds32(addr + (PITCH + 8) * 4);
    } else {
        ldmatrix_x4_trans(raw, addr);
    }
    set_b(b[0], raw[0], raw[1]);
    set_b(b[1], raw[2], raw[3]);
}

// k-step ks of an A operand held as the C fragments c[..][4] of an earlier
// product (rows m, columns k): 16-bit, tiles 2ks and 2ks+1 rounded to 16 bits;
// float32, tile ks in the paired order.
template <int NT>
CUFLASH_DEVICE void a_from_c(FragA& a, const float (&c)[NT][4], int ks) {
    u32 raw[4];
    if constexpr (FP32) {
        const float(&x)[4] = c[ks];
        raw[0] = __float_as_uint(x[0]), raw[1] = __float_as_uint(x[2]);
        raw[2] = __float_as_uint(x[1]), raw[3] = __float_as_uint(x[3]);
    } else {
        raw[0] = pack_float2(c[2 * ks][0], c[2 * ks][1]);
        raw[1] = pack_float2(c[2 * ks][2], c[2 * ks][3]);
        raw[2] = pack_float2(c[2 * ks + 1][0], c[2 * ks + 1][1]);
        raw[3] = pack_float2(c[2 * ks + 1][2], c[2 * ks + 1][3]);
    }
    set_a(a, raw);
}

// An A operand of MT m16 tiles x K columns held in registers for a later
// product, made from C fragments (the forward's P for P·V): 16-bit, packed to
// 16 bits at once (half the registers of the C tiles, which die here); float32,
// the C tiles themselves, split per k-step when read (held split, the forward's
// d96-d256 tiles spilled 8-40 bytes).
template <int MT, int K>
struct RegA {
#if CUFLASH_DTYPE == CUFLASH_FP32
    float c[MT][K / 8][4];
#else
    u32 r[MT][K / 16][4];
#endif
    CUFLASH_DEVICE void set(const float (&acc)[MT][K / 8][4]) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int ks = 0; ks < K / KSTEP; ++ks) {
#if CUFLASH_DTYPE == CUFLASH_FP32
#pragma unroll
                for (int e = 0; e < 4; ++e) c[mt][ks][e] = acc[mt][ks][e];
#else
                FragA a;
                a_from_c(a, acc[mt], ks);
#pragma unroll
                for (int e = 0; e < 4; ++e) r[mt][ks][e] = a.r[e];
#endif
            }
    }
    CUFLASH_DEVICE void get(FragA& a, int mt, int ks) const {
#if CUFLASH_DTYPE == CUFLASH_FP32
        a_from_c(a, c[mt], ks);
#else
#pragma unroll
        for (int e = 0; e < 4; ++e) a.r[e] = r[mt][ks][e];
#endif
    }
};

// ---------------------------------------------------------------------------
// Warp-level products with operands in shared memory (used by the backward).
//
// A tile in shared memory is stored row by row with a row pitch of PITCH
// elements (copy.cuh). An operand is either stored in the layout the
// mma wants (A as [m][k], B as [n][k]: plain ldmatrix) or transposed (A as
// [k][m], B as [k][n]: ldmatrix.trans, or float32's paired 32-bit loads). The
// ldsm_offset_* helpers give the byte offset of this lane's address for one
// k-step at the tile origin; the products below add the per-tile offsets.

// A stored [m][k]: matrices (m 0-7, k-chunk 0), (m 8-15, k-chunk 0), (m 0-7, k-chunk 1),
// (m 8-15, k-chunk 1) = a0..a3 (a k-chunk is 16 bytes); lane l addresses row m = l % 16,
// k-chunk l / 16. PAIRED (float32, a product whose B is stored transposed):
// row m = g, column k = 2t (load_a_paired).
template <int PITCH, bool PAIRED = false>
CUFLASH_DEVICE u32 ldsm_offset_a(int lane) {
    if constexpr (FP32 && PAIRED) return (u32)(((lane / 4) * PITCH + 2 * (lane % 4)) * 4);
    return (u32)(((lane % 16) * PITCH + (lane / 16) * CHUNK) * ELEM_BYTES);
}

// float32, an operand stored transposed ([k][m] or [k][n]), paired order: this
// lane's first element is row k = 2t, column g (load_a_t, load_b2_t).
template <int PITCH>
CUFLASH_DEVICE u32 paired_t_offset(int lane) {
    return (u32)((2 * (lane % 4) * PITCH + lane / 4) * 4);
}

// A stored [k][m] (transposed): 16-bit, the same four matrices read with .trans;
// lane l addresses row k = (l / 16) * 8 + l % 8, column m = ((l / 8) % 2) * 8.
// float32: paired_t_offset.
template <int PITCH>
CUFLASH_DEVICE u32 ldsm_offset_a_t(int lane) {
    if constexpr (FP32) return paired_t_offset<PITCH>(lane);
    return (u32)((((lane / 16) * 8 + lane % 8) * PITCH + ((lane / 8) % 2) * 8) * 2);
}

// B stored [n][k]: one x4 = two n8 tiles x one k-step: (n 0-7, k-chunk 0),
// (n 0-7, k-chunk 1) = b0, b1 of tile 0, then the same for n 8-15 (tile 1); lane
// l addresses row n = l % 8 + (l / 16) * 8, k-chunk (l / 8) % 2.
template <int PITCH>
CUFLASH_DEVICE u32 ldsm_offset_b(int lane) {
    return (u32)(((lane % 8 + (lane / 16) * 8) * PITCH + ((lane / 8) % 2) * CHUNK) * ELEM_BYTES);
}

// B stored [k][n] (transposed): 16-bit, read with .trans, same register order;
// lane l addresses row k = l % 8 + ((l / 8) % 2) * 8, column n = (l / 16) * 8.
// float32: paired_t_offset.
template <int PITCH>
CUFLASH_DEVICE u32 ldsm_offset_b_t(int lane) {
    if constexpr (FP32) return paired_t_offset<PITCH>(lane);
    return (u32)(((lane % 8 + ((lane / 8) % 2) * 8) * PITCH + (lane / 16) * 8) * 2);
}

// How a float32 product adds into its accumulator (16-bit products ignore it).
// A tensor core adds into its fp32 accumulator with truncation (Fasi, Higham,
// Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor cores", 2021), so a
// long sum drifts toward zero by up to an ulp of the sum per add. ROUND_PASS:
// each pair of n8 tiles sums its k-steps into a zeroed temporary, then adds
// it to acc with float32 adds (round to nearest): the truncations stay within
// one call's partial sum (the backward's dK and dV, summed over every query
// block, were 2.5-5x over float32's accuracy floor without it). ROUND_STEP: the
// same per k-step, so a single sum over d is rounded every 8 terms (the
// backward's dP, from which D = rowsum(dO o O) is subtracted: with truncated
// sums, dS of a key that every query sees alone came out 1e-4 off its exact 0).
// The temporaries cost 8 * MT registers, where per-product temporaries would
// cost those of every product in flight.
constexpr int ROUND_NONE = 0, ROUND_PASS = 1, ROUND_STEP = 2;

// acc[MT][NT][4] += A (MT*16 x KSTEPS k-steps) * B (KSTEPS k-steps x NT*8), with
// get_a(FragA&, mt, ks) and get_b(FragB (&)[2], np, ks) giving the fragments of
// m16 tile mt and of n8 tiles 2np, 2np+1 at k-step ks. UNROLL: k-steps per
// unrolled loop body. ROUND: ROUND_NONE, ROUND_PASS or ROUND_STEP (above).
// AHEAD (rolled loops only: UNROLL < KSTEPS; not with float32's ROUND): step ks + 1's fragments
// are loaded before step ks's products are issued, so each loop body opens with
// products whose operands are already in registers instead of waiting for
// ldmatrix (the last step, peeled, loads nothing). Costs MT * 4 + NT * 2
// registers for the fragments in flight; measured per tile (specs.BwdTiles.k_ahead).
template <int MT, int NT, int KSTEPS, int UNROLL, int ROUND, bool AHEAD = false, class GetA, class GetB>
CUFLASH_DEVICE void warp_product(float (&acc)[MT][NT][4], GetA&& get_a, GetB&& get_b) {
    static_assert(NT % 2 == 0, "B is loaded two n8 tiles at a time");
    if constexpr (FP32 && ROUND != ROUND_NONE) {
        auto add = [&](float(&t)[MT][2][4], int np) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int j = 0; j < 2; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][2 * np + j][e] += t[mt][j][e];
        };
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            float t[MT][2][4];
            zero_acc(t);
#pragma unroll(UNROLL)
            for (int ks = 0; ks < KSTEPS; ++ks) {
                FragB bf[2];
                get_b(bf, np, ks);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    FragA af;
                    get_a(af, mt, ks);
                    mma(t[mt][0], af, bf[0]);
                    mma(t[mt][1], af, bf[1]);
                }
                if (ROUND == ROUND_STEP) {
                    add(t, np);
                    zero_acc(t);
                }
            }
            if (ROUND == ROUND_PASS) add(t, np);
        }
    } else if constexpr (AHEAD && UNROLL < KSTEPS) {
        FragA af[MT];
        FragB bf[NT / 2][2];
        auto load = [&](FragA(&a)[MT], FragB(&b)[NT / 2][2], int ks) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) get_a(a[mt], mt, ks);
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) get_b(b[np], np, ks);
        };
        auto products = [&](const FragA(&a)[MT], const FragB(&b)[NT / 2][2]) {
#pragma unroll
            for (int np = 0; np < NT / 2; ++np)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma(acc[mt][2 * np], a[mt], b[np][0]);
                    mma(acc[mt][2 * np + 1], a[mt], b[np][1]);
                }
        };
        load(af, bf, 0);
#pragma unroll(UNROLL)
        for (int ks = 0; ks < KSTEPS - 1; ++ks) {
            FragA an[MT];
            FragB bn[NT / 2][2];
            load(an, bn, ks + 1);
            products(af, bf);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) af[mt] = an[mt];
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) bf[np][0] = bn[np][0], bf[np][1] = bn[np][1];
        }
        products(af, bf);
    } else {
#pragma unroll(UNROLL)
        for (int ks = 0; ks < KSTEPS; ++ks) {
            FragA af[MT];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) get_a(af[mt], mt, ks);
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                FragB bf[2];
                get_b(bf, np, ks);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma(acc[mt][2 * np], af[mt], bf[0]);
                    mma(acc[mt][2 * np + 1], af[mt], bf[1]);
                }
            }
        }
    }
}

// B of a product from shared memory: stored [n][k], or [k][n] (B_T), rows PITCH_B apart.
template <int PITCH_B, bool B_T>
CUFLASH_DEVICE void load_b_step(FragB (&bf)[2], u32 b, int np, int ks) {
    if (B_T)
        load_b2_t<PITCH_B>(bf, b + (u32)((ks * KSTEP * PITCH_B + np * 16) * ELEM_BYTES));
    else
        load_b2(bf, b + (u32)((np * 16 * PITCH_B + ks * KSTEP) * ELEM_BYTES));
}

// A B operand in a swizzled tile (copy.cuh chunk_offset; 16-bit inputs, rows of
// PITCH_B = D elements), in place of the address a padded tile passes: this
// lane's ldmatrix row and 16-byte chunk at the warp's origin (row0 % 8 == 0),
// as ldsm_offset_b (stored [n][k]: row n = l % 8 + (l / 16) * 8, chunk
// (l / 8) % 2) or ldsm_offset_b_t (B_T, stored [k][n]: row k = l % 8 +
// ((l / 8) % 2) * 8, chunk l / 16) place them. Every row a product adds is a
// multiple of 16 on, so row % 8, which the swizzle reads, is the lane's own.
// ALIGNED (the origin's chunk is a multiple of 8): the chunk of step s (2s on)
// lies at (addr + 128 (2s / 8)) ^ (16 (2s % 8)), since addr's bits 4-6 hold
// (lane chunk ^ row % 8) and the lane chunk is 0 or 1: one XOR with a constant
// per step, the rest in the load's immediate. (Computing c ^ (r % 8) per step
// instead made the d128 forward and backward spill 8-68 bytes.) LAUNDER: each
// step's address is made where it is used (platform.cuh opaque) instead of
// the compiler holding up to four of them per operand; which of the two
// spills less depends on the kernel (and the NVRTC).
template <bool ALIGNED, bool LAUNDER>
struct SwizzledB {
    u32 tile, addr;
    int row, chunk;
};
template <bool B_T, bool ALIGNED, int PITCH_B, bool LAUNDER = false>
CUFLASH_DEVICE SwizzledB<ALIGNED, LAUNDER> swizzled_b(u32 tile, int row0, int chunk0, int lane) {
    const int row = row0 + (B_T ? lane % 8 + ((lane / 8) % 2) * 8 : lane % 8 + (lane / 16) * 8);
    const int chunk = chunk0 + (B_T ? lane / 16 : (lane / 8) % 2);
    return {tile, tile + chunk_offset<PITCH_B, true>(row, chunk), row, chunk};
}
template <int PITCH_B, bool B_T, bool ALIGNED, bool LAUNDER>
CUFLASH_DEVICE void load_b_step(FragB (&bf)[2], SwizzledB<ALIGNED, LAUNDER> b, int np, int ks) {
    static_assert(!FP32, "swizzled tiles hold 16-bit elements");
    const int rows = B_T ? ks * 16 : np * 16, step = 2 * (B_T ? np : ks);  // rows and chunks on from the origin
    u32 at;
    if constexpr (ALIGNED)
        at = ((LAUNDER ? opaque(b.addr) : b.addr) + (u32)(rows * PITCH_B * ELEM_BYTES + (step / 8) * 128)) ^
             (u32)((step % 8) * 16);
    else
        at = b.tile + chunk_offset<PITCH_B, true>(b.row + rows, b.chunk + step);
    if (B_T) load_b2_t<PITCH_B>(bf, at);
    else load_b2(bf, at);
}

// acc[MT][NT][4] += A (MT*16 x K) * B (K x NT*8), both read from shared
// memory. a, b: shared addresses of the tile origins including this lane's
// ldsm_offset_* (A_T / B_T: operand stored transposed), or for b a swizzled
// tile (SwizzledB, from swizzled_b<B_T>). float32: the k order
// is natural for two untransposed operands, else paired (see the top of the
// file; an untransposed A then takes ldsm_offset_a<PITCH, true>).
// UNROLL: k-steps per unrolled loop body (default all). A fully unrolled
// loop lets the scheduler hoist the loads of many steps ahead, which can
// exhaust registers in kernels that also hold large accumulators. ROUND: ROUND_NONE,
// ROUND_PASS or ROUND_STEP, AHEAD: as warp_product.
template <int MT, int NT, int K, int PITCH_A, bool A_T, int PITCH_B, bool B_T, int UNROLL = K / KSTEP,
          int ROUND = ROUND_NONE, bool AHEAD = false, class BAddr = u32>
CUFLASH_DEVICE void mma_ss(float (&acc)[MT][NT][4], u32 a, BAddr b) {
    static_assert(K % KSTEP == 0, "whole k-steps");
    static_assert(!FP32 || B_T || !A_T, "float32: no paired load for an untransposed B");
    constexpr bool PAIRED = A_T || B_T;
    auto get_a = [&](FragA& af, int mt, int ks) {
        if (A_T)
            load_a_t<PITCH_A>(af, a + (u32)((ks * KSTEP * PITCH_A + mt * 16) * ELEM_BYTES));
        else if (FP32 && PAIRED)
            load_a_paired<PITCH_A>(af, a + (u32)((mt * 16 * PITCH_A + ks * KSTEP) * ELEM_BYTES));
        else
            load_a(af, a + (u32)((mt * 16 * PITCH_A + ks * KSTEP) * ELEM_BYTES));
    };
    auto get_b = [&](FragB (&bf)[2], int np, int ks) { load_b_step<PITCH_B, B_T>(bf, b, np, ks); };
    warp_product<MT, NT, K / KSTEP, UNROLL, ROUND, AHEAD>(acc, get_a, get_b);
}

// acc[MT][NT][4] += A * B where A (MT*16 x K) is held by this warp as fp32 C
// fragments c[MT][K / 8][4] of an earlier product (rows m, columns k), turned
// into A fragments on the fly (a_from_c), and B is read from shared memory as in
// mma_ss (a padded or a swizzled tile; float32: stored transposed, the paired
// order of a C tile). ROUND: as mma_ss.
template <int MT, int NT, int K, int PITCH_B, bool B_T, int ROUND = ROUND_NONE, class BAddr = u32>
CUFLASH_DEVICE void mma_rs(float (&acc)[MT][NT][4], const float (&c)[MT][K / 8][4], BAddr b) {
    static_assert(K % KSTEP == 0, "whole k-steps");
    static_assert(!FP32 || B_T, "a float32 product from registers reads B in the paired order");
    auto get_a = [&](FragA& af, int mt, int ks) { a_from_c(af, c[mt], ks); };
    auto get_b = [&](FragB (&bf)[2], int np, int ks) { load_b_step<PITCH_B, B_T>(bf, b, np, ks); };
    warp_product<MT, NT, K / KSTEP, K / KSTEP, ROUND>(acc, get_a, get_b);
}
