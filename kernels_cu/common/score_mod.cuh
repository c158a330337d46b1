// score_mod.cuh: what modifies a score before the softmax (DESIGN 3 and 4a):
// softcap, ALiBi and an additive bias, at one point of every kernel.
//
// Contract with the online softmax (softmax.cuh). The kernels hold raw scores
// s = q.k and fold softmax_scale into the exp2 multiply c = scale * log2(e).
// A modifier therefore works in raw units: it maps s to s' such that
// scale * s' is the modified logit of DESIGN 3,
//   logit = softcap * tanh(scale * s / softcap) - slope * |i + off - j| + B_ij,
//   s'    = softcap_out * tanh(softcap_in * s)  - (slope / scale) * |i + off - j| + B_ij / scale
// with softcap_in = scale / softcap, softcap_out = softcap / scale (params.cuh),
// off = seqlen_k - seqlen_q and B the bias broadcast to (batch, nheads,
// seqlen_q, seqlen_k) by its strides (0 on a broadcast dim; keys contiguous,
// so that the two adjacent keys of a fragment pair are one load where they
// are aligned: cuflash/api.py copies a bias whose keys are not), read
// from global memory by the threads that need it (L1/L2 serve the
// neighbours; nothing is materialised; the warp-specialised Hopper forward
// instead stages a 16-bit one in shared memory, bias_tile.cuh). A bias of
// -inf masks its entry. The forward applies it to S after the
// product and before the mask (a masked score must stay -inf, so the mask
// comes after); the backward applies it to S^T the same way and multiplies dS
// by its derivative ds'/ds (grad), which for softcap is 1 - tanh^2 (ALiBi and
// the bias add constants: derivative 1). With none of CUFLASH_SOFTCAP,
// CUFLASH_ALIBI and CUFLASH_BIAS compiled in, ACTIVE is false and the kernels
// skip both calls: their instructions are those of the plain fast path.
//
// CUFLASH_SOFTCAP_FOLDED (a softcap alone: no ALiBi, no bias; the kernels
// where it measured faster, cuflash/specs.py AttentionSpec.softcap_folded)
// keeps s' = tanh(softcap_in * s) and the host passes scale_log2 = softcap *
// log2(e), so softcap_out rides on the softmax's exp2 multiply: one multiply
// per score less (bench/NOTES.md s2). Every use of scale_log2 (the exponents,
// lse, the backward's P) then sees the same logits; the derivative reads tanh
// straight from s'.
//
// The bias's gradient (BiasGrad, the backward only): dB_ij = dlogit_ij =
// P_ij (dP_ij - D_i), the gradient of the logit before mod' (the bias is added
// after the softcap), summed over the bias's broadcast dims into a buffer of
// the bias's own shape (cuflash/api.py dbias_plan).
#pragma once
#include "platform.cuh"
#include "fragment.cuh"
#include "seqinfo.cuh"
#include "numeric.cuh"

constexpr bool SOFTCAP = CUFLASH_SOFTCAP;
constexpr bool ALIBI = CUFLASH_ALIBI;
// The learnable sink is no score modifier (it is a logit without a value,
// softmax.cuh), but its switch lives with theirs.
constexpr bool SINK = CUFLASH_SINK;

// CUFLASH_BIAS: 0 no bias, 16 a bias in the input dtype (u16), 32 a float32 bias
// (a float32 kernel's own dtype is float32: it reads either as float).
#ifndef CUFLASH_BIAS
#define CUFLASH_BIAS 0
#endif
#ifndef CUFLASH_SOFTCAP_FOLDED
#define CUFLASH_SOFTCAP_FOLDED 0
#endif
constexpr bool BIAS = CUFLASH_BIAS != 0;
#if CUFLASH_BIAS == 32 || CUFLASH_DTYPE == CUFLASH_FP32
using BiasT = float;
CUFLASH_DEVICE float bias_value(const float* x) { return __ldg(x); }
CUFLASH_DEVICE float2 bias_pair(const float* x) { return __ldg(reinterpret_cast<const float2*>(x)); }
CUFLASH_DEVICE float bias_from_float(float x) { return x; }
#else
using BiasT = u16;
CUFLASH_DEVICE float bias_value(const u16* x) { return unpack_float2(__ldg(x)).x; }
CUFLASH_DEVICE float2 bias_pair(const u16* x) { return unpack_float2(__ldg(reinterpret_cast<const u32*>(x))); }
CUFLASH_DEVICE u16 bias_from_float(float x) { return (u16)(pack_float2(x, 0.f) & 0xffffu); }
#endif

// tanh for the softcap: 16-bit kernels use the SFU (tanh.approx.f32, one
// instruction, max relative error 2^-11, below their rounding); float32 kernels
// the accurate tanhf (the approximation put a softcapped output 1.6x over
// float32's accuracy floor).
CUFLASH_DEVICE float softcap_tanh(float x) {
#if CUFLASH_DTYPE == CUFLASH_FP32
    return tanhf(x);
#else
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// B[b, h]: the start of this (batch, head)'s bias (ScoreMod here, bias_tile.cuh's staged copies).
template <class Params>
CUFLASH_DEVICE const BiasT* bias_slice(const Params& p, const SeqInfo& si) {
    return static_cast<const BiasT*>(p.bias) + si.b * p.bias_batch_stride + si.h * p.bias_head_stride;
}

struct ScoreMod {
    static constexpr bool ACTIVE = SOFTCAP || ALIBI || BIAS;
    static constexpr bool SOFTCAP_FOLDED = CUFLASH_SOFTCAP_FOLDED;
    static_assert(!SOFTCAP_FOLDED || (SOFTCAP && !ALIBI && !BIAS), "a folded softcap is the only modifier");
    float cap_in, cap_out;  // softcap_in, softcap_out (SOFTCAP)
    float slope;            // ALiBi slope of this (b, h) over softmax_scale (ALIBI)
    int off;                // seqlen_k - seqlen_q
    // BIAS: B[b, h] (seqlen_q, seqlen_k), keys contiguous, rows bias_rs apart.
    const BiasT* bias;
    i64 bias_rs;
    float inv_scale;         // 1 / softmax_scale
    int seqlen_q, seqlen_k;  // entries outside read no bias
    bool pairs_aligned;      // every row's even keys start a pair load (aligned start, even row stride)

    template <class Params>
    CUFLASH_DEVICE ScoreMod(const Params& p, const SeqInfo& si)
        : cap_in(p.softcap_in), cap_out(p.softcap_out), slope(0.f), off(si.seqlen_k - si.seqlen_q) {
        if (ALIBI) slope = p.alibi_slopes[si.b * p.alibi_batch_stride + si.h] / p.scale;
        if (BIAS) {
            bias = bias_slice(p, si);
            bias_rs = p.bias_row_stride;
            inv_scale = 1.f / p.scale;
            seqlen_q = si.seqlen_q;
            seqlen_k = si.seqlen_k;
            pairs_aligned = reinterpret_cast<u64>(bias) % (2 * sizeof(BiasT)) == 0 && bias_rs % 2 == 0;
        }
    }

    CUFLASH_DEVICE float alibi(int i, int j) const { return slope * (float)abs(i + off - j); }

    // B_ij / scale; 0 outside the (seqlen_q, seqlen_k) tile (padding rows and
    // keys past seqlen_k, which the mask removes): no read out of bounds.
    CUFLASH_DEVICE float bias_at(int i, int j) const {
        if ((unsigned)i >= (unsigned)seqlen_q || (unsigned)j >= (unsigned)seqlen_k) return 0.f;
        return bias_value(bias + i * bias_rs + j) * inv_scale;
    }
    // (B_ij, B_i,j+1) / scale: one load when both keys exist and the pair is
    // aligned (an odd row stride leaves every other row's pairs unaligned).
    CUFLASH_DEVICE float2 bias_at2(int i, int j) const {
        const BiasT* at = bias + i * bias_rs + j;
        const bool aligned = reinterpret_cast<u64>(at) % (2 * sizeof(BiasT)) == 0;
        if ((unsigned)i < (unsigned)seqlen_q && j + 1 < seqlen_k && aligned) {
            const float2 b = bias_pair(at);
            return make_float2(b.x * inv_scale, b.y * inv_scale);
        }
        return make_float2(bias_at(i, j), bias_at(i, j + 1));
    }

    // s' without the bias (the decode kernel, which has none, calls this alone).
    CUFLASH_DEVICE float operator()(float s, int i, int j) const {
        if (SOFTCAP_FOLDED) s = softcap_tanh(cap_in * s);
        else if (SOFTCAP) s = cap_out * softcap_tanh(cap_in * s);
        if (ALIBI) s -= alibi(i, j);
        return s;
    }

    // ds'/ds at (i, j), from the modified (and possibly masked) score x = s'.
    // tanh is recovered as t = (x + alibi - bias) * cap_in, clamped to [-1, 1]:
    // a masked x = -inf gives t = -1, and a bias of -inf gives NaN, which the
    // clamp turns into -1 (fmaxf returns its non-NaN operand): a derivative of
    // 0, never NaN, and P = 0 there already makes dS = 0. Folded, x is tanh's
    // own result, in [-1, 1], or -inf where masked (no ALiBi or bias to give
    // NaN), so the lower clamp alone does that: one instruction per score less.
    CUFLASH_DEVICE float grad(float x, int i, int j) const {
        if (!SOFTCAP) return 1.f;
        if (ALIBI) x += alibi(i, j);
        if (BIAS) x -= bias_at(i, j);
        const float t = SOFTCAP_FOLDED ? fmaxf(-1.f, x) : fminf(1.f, fmaxf(-1.f, x * cap_in));
        return 1.f - t * t;
    }

    // Without softcap the bias is where S starts: the kernels call init()
    // instead of zeroing the accumulator and the product adds onto it (the
    // loads go into registers that hold nothing yet, and their latency runs
    // before the product instead of after it). Softcap comes between the
    // product and the bias, so then apply() adds it.
    static constexpr bool BIAS_IN_ACC = BIAS && !SOFTCAP;

    // S (or S^T) before its product: B / scale under BIAS_IN_ACC, else 0.
    template <bool KEYS_AS_ROWS, int MT, int NT>
    CUFLASH_DEVICE void init(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        if constexpr (BIAS_IN_ACC) bias_tile<KEYS_AS_ROWS, false>(s, row0, col0, lane);
        else zero_acc(s);
    }

    // s' for every score of a tile (fragment.cuh layout; S or S^T). STAGED_BIAS: the
    // caller adds the bias itself, from shared memory (bias_tile.cuh).
    template <bool KEYS_AS_ROWS, bool STAGED_BIAS = false, int MT, int NT>
    CUFLASH_DEVICE void apply(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        if (SOFTCAP || ALIBI)
            for_each_score<KEYS_AS_ROWS>(s, row0, col0, lane, [&](float& x, int i, int j) { x = (*this)(x, i, j); });
        if (BIAS && !BIAS_IN_ACC && !STAGED_BIAS) bias_tile<KEYS_AS_ROWS, true>(s, row0, col0, lane);
    }

    // Ask L2 for the bias of the (queries [q0, q0 + QUERIES), keys [k0, k0 + KEYS))
    // tile a later step adds (the kernels call it a step ahead, beside the copies of
    // K / V or Q / dO): one 128-byte line per thread and pass, rows clamped to the
    // sequence. The loads of init() / apply() then find the lines in L2 instead of
    // waiting on memory right before the product.
    template <int QUERIES, int KEYS, int THREADS>
    CUFLASH_DEVICE void prefetch(int q0, int k0, int tid) const {
        if (!BIAS) return;
        constexpr int LINE = 128 / sizeof(BiasT);  // elements per 128-byte line
        constexpr int LINES_PER_ROW = (KEYS + LINE - 1) / LINE;
        const int keys = min(KEYS, seqlen_k - k0);
        if (keys <= 0) return;
#pragma unroll 1
        for (int x = tid; x < QUERIES * LINES_PER_ROW; x += THREADS) {
            const int i = q0 + x / LINES_PER_ROW, j = k0 + min((x % LINES_PER_ROW) * LINE, keys - 1);
            if (i < seqlen_q) asm volatile("prefetch.global.L2 [%0];" ::"l"(bias + i * bias_rs + j));
        }
    }

  private:
    // s = B / scale (ADD: s += B / scale). Each fragment element pair (2h, 2h + 1)
    // holds two adjacent columns: two adjacent keys of S (one load) or two
    // adjacent queries of S^T (two).
    // A tile inside (seqlen_q, seqlen_k) takes the fast path: one row pointer per
    // fragment row, loads at constant offsets from it, no bounds tests.
    template <bool KEYS_AS_ROWS, bool ADD, int MT, int NT>
    CUFLASH_DEVICE void bias_tile(float (&s)[MT][NT][4], int row0, int col0, int lane) const {
        const int g = lane / 4, t = lane % 4;
        const int rows_end = row0 + MT * 16, cols_end = col0 + NT * 8;
        auto set = [&](float& x, float b) { x = ADD ? x + b * inv_scale : b * inv_scale; };
        if constexpr (!KEYS_AS_ROWS) {
            if (pairs_aligned && rows_end <= seqlen_q && cols_end <= seqlen_k) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const BiasT* r = bias + (row0 + mt * 16 + h * 8 + g) * bias_rs + col0 + 2 * t;
#pragma unroll
                        for (int nt = 0; nt < NT; ++nt) {
                            const float2 b = bias_pair(r + nt * 8);
                            set(s[mt][nt][2 * h], b.x);
                            set(s[mt][nt][2 * h + 1], b.y);
                        }
                    }
                return;
            }
        } else {
            if (rows_end <= seqlen_k && cols_end <= seqlen_q) {  // rows: keys, columns: queries
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const BiasT* r = bias + (col0 + 2 * t) * bias_rs + row0 + mt * 16 + h * 8 + g;
#pragma unroll
                        for (int nt = 0; nt < NT; ++nt) {
                            set(s[mt][nt][2 * h], bias_value(r + nt * 8 * bias_rs));
                            set(s[mt][nt][2 * h + 1], bias_value(r + (nt * 8 + 1) * bias_rs));
                        }
                    }
                return;
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int row = row0 + mt * 16 + h * 8 + g, col = col0 + nt * 8 + 2 * t;
                    float2 b;
                    if constexpr (KEYS_AS_ROWS) b = make_float2(bias_at(col, row), bias_at(col + 1, row));
                    else b = bias_at2(row, col);
                    s[mt][nt][2 * h] = ADD ? s[mt][nt][2 * h] + b.x : b.x;
                    s[mt][nt][2 * h + 1] = ADD ? s[mt][nt][2 * h + 1] + b.y : b.y;
                }
    }
};

// The bias's gradient in the backward (BIAS, when dbias is not null): this
// (b, h)'s slice of a buffer of the bias's own shape, contiguous, with row
// stride 0 when the bias has one row for every query (a per-key bias) and its
// broadcast batch / head dims folded onto one slice. Entries that several
// (b, h, i) reach are accumulated in float32 with atomics (dbias_atomic); a
// per-key bias's are first summed over the warp's queries (softmax.cuh).
// Entries with one writer are stored: in the bias's own type (BiasT), unless
// the host asks for float32 (dbias_f32: a deterministic backward's buffer
// expanded over the broadcast dims, which the host then sums in a fixed order).
struct BiasGrad {
    void* dbias;  // row 0 of (b, h), or null: no gradient asked for
    i64 rs;       // row (query) stride; 0: sum over queries
    bool atomic, f32;

    template <class Params>
    CUFLASH_DEVICE BiasGrad(const Params& p, const SeqInfo& si) : dbias(nullptr), rs(0), atomic(false), f32(true) {
        if (BIAS && p.dbias != nullptr) {
            rs = p.dbias_row_stride;
            atomic = p.dbias_atomic != 0;
            f32 = atomic || p.dbias_f32 != 0;
            const i64 at = si.b * p.dbias_batch_stride + si.h * p.dbias_head_stride;
            dbias = f32 ? static_cast<void*>(static_cast<float*>(p.dbias) + at)
                        : static_cast<void*>(static_cast<BiasT*>(p.dbias) + at);
        }
    }
    CUFLASH_DEVICE bool active() const { return BIAS && dbias != nullptr; }
    CUFLASH_DEVICE bool sums_queries() const { return rs == 0; }

    // dB_ij = x (one entry, i < seqlen_q and j < seqlen_k: the caller checks).
    CUFLASH_DEVICE void put(float x, int i, int j) const {
        const i64 at = i * rs + j;
        if (atomic) atomicAdd(static_cast<float*>(dbias) + at, x);
        else if (f32) static_cast<float*>(dbias)[at] = x;
        else static_cast<BiasT*>(dbias)[at] = bias_from_float(x);
    }
};
