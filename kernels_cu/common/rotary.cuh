// rotary.cuh: rotary position embedding (Su et al. 2021, RoPE) of one 16-byte
// chunk of a row, as attention_with_kvcache applies it to q and the new keys
// (kernels_cu/kvcache_append.cu; flash-attn 2.x's semantics).
//
// For a row at position pos, with cos/sin tables (seqlen_ro, R / 2) in the
// row's dtype (R = rotary_dim, a multiple of 16, at most d), pairs (x0, x1)
// of the first R columns turn into
//   y0 = x0 cos(pos, i) - x1 sin(pos, i),   y1 = x0 sin(pos, i) + x1 cos(pos, i)
// with pair i = (2i, 2i + 1) when interleaved (GPT-J) and (i, i + R / 2)
// otherwise (GPT-NeoX); columns >= R are copied. Arithmetic in fp32 (rotate0,
// rotate1), one rounding to the dtype per output.
#pragma once
#include "platform.cuh"
#include "numeric.cuh"

// Eight 16-bit values as four packed pairs and as floats.
CUFLASH_DEVICE void unpack8(uint4 x, float (&f)[8]) {
    const u32 w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 v = unpack_float2(w[k]);
        f[2 * k] = v.x;
        f[2 * k + 1] = v.y;
    }
}

CUFLASH_DEVICE uint4 pack8(const float (&f)[8]) {
    return make_uint4(pack_float2(f[0], f[1]), pack_float2(f[2], f[3]), pack_float2(f[4], f[5]),
                      pack_float2(f[6], f[7]));
}

// y0 and y1 of one pair, each product and the sum rounded once in fp32 (no
// FMA contraction), so that cuflash/reference.py rebuilds the bits in NumPy.
CUFLASH_DEVICE float rotate0(float x0, float x1, float c, float s) { return __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)); }
CUFLASH_DEVICE float rotate1(float x0, float x1, float c, float s) { return __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)); }

struct Rotary {
    const u16* cos;  // row pos of the table: R / 2 values
    const u16* sin;
    int dim;         // R; 0: no rotation
    bool interleaved;

    // The chunk at column col (col % 8 == 0) of a row: src -> dst. A NeoX chunk
    // in [R / 2, R) is written by the thread of its partner chunk col - R / 2,
    // so its own thread writes nothing (returns false).
    CUFLASH_DEVICE bool apply(const u16* src_row, u16* dst_row, int col) const {
        if (col >= dim) {
            *reinterpret_cast<uint4*>(dst_row + col) = *reinterpret_cast<const uint4*>(src_row + col);
            return true;
        }
        const int half = dim / 2;
        if (!interleaved && col >= half) return false;
        float x[8], c[8], s[8];
        unpack8(*reinterpret_cast<const uint4*>(src_row + col), x);
        if (interleaved) {
            // pairs (col + 2k, col + 2k + 1) use table entry col / 2 + k
            float cc[8], ss[8];
            unpack8(make_uint4(*reinterpret_cast<const u32*>(cos + col / 2), *reinterpret_cast<const u32*>(cos + col / 2 + 2), 0, 0), cc);
            unpack8(make_uint4(*reinterpret_cast<const u32*>(sin + col / 2), *reinterpret_cast<const u32*>(sin + col / 2 + 2), 0, 0), ss);
            float y[8];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                y[2 * k] = rotate0(x[2 * k], x[2 * k + 1], cc[k], ss[k]);
                y[2 * k + 1] = rotate1(x[2 * k], x[2 * k + 1], cc[k], ss[k]);
            }
            *reinterpret_cast<uint4*>(dst_row + col) = pack8(y);
            return true;
        }
        // NeoX: this chunk (x0 = columns col..col+7) and its partner (x1 = col + R/2 ..), table entries col..col+7
        float x1[8], y0[8], y1[8];
        unpack8(*reinterpret_cast<const uint4*>(src_row + col + half), x1);
        unpack8(*reinterpret_cast<const uint4*>(cos + col), c);
        unpack8(*reinterpret_cast<const uint4*>(sin + col), s);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            y0[k] = rotate0(x[k], x1[k], c[k], s[k]);
            y1[k] = rotate1(x[k], x1[k], c[k], s[k]);
        }
        *reinterpret_cast<uint4*>(dst_row + col) = pack8(y0);
        *reinterpret_cast<uint4*>(dst_row + col + half) = pack8(y1);
        return true;
    }
};
