// The dropout probe of the tests: keep[bh, i, j] for bh < bhs, i < seqlen_q, j < seqlen_k (both
// multiples of 16) from kernels_cu/common/dropout.cuh, one thread per group of four entries.
// tests/compile/test_dropout_header.py compiles it; tests/gpu/test_dropout_mask.py runs it.
#include "dropout.cuh"
extern "C" __global__ void probe(unsigned char* keep, unsigned long long seed, unsigned int offset,
                                 unsigned int threshold, int bhs, int seqlen_q, int seqlen_k) {
    const int groups_q = seqlen_q / 2, groups_k = seqlen_k / 2;  // low corners per row / column
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= (long long)bhs * groups_q * groups_k) return;
    const int gk = (int)(g % groups_k), gq = (int)((g / groups_k) % groups_q), bh = (int)(g / groups_k / groups_q);
    const int i = (gq / 8) * 16 + gq % 8, j = (gk / 8) * 16 + gk % 8;  // i % 16 < 8, j % 16 < 8
    const PhiloxKey key{(u32)seed, (u32)(seed >> 32)};
    const u32 bits = dropout_keep_group(key, offset, threshold, bh, i, j);
    unsigned char* row = keep + ((long long)bh * seqlen_q + i) * seqlen_k;
    row[j] = bits & 1;
    row[j + 8] = (bits >> 1) & 1;
    row[8 * seqlen_k + j] = (bits >> 2) & 1;
    row[8 * seqlen_k + j + 8] = (bits >> 3) & 1;
}
