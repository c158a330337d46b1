// The dropout probe of the tests: keep[bh, i, j] for bh < bhs, i < seqlen_q, j < seqlen_k (both
// multiples of 16) from kernels_cu/common/dropout.cuh, one thread per group of sixteen entries.
// tests/compile/test_dropout_header.py compiles it; tests/gpu/test_dropout_mask.py runs it.
#define CUFLASH_DROPOUT 1
#include "dropout.cuh"
extern "C" __global__ void probe(unsigned char* keep, unsigned long long seed, unsigned int offset,
                                 unsigned int threshold, int bhs, int seqlen_q, int seqlen_k) {
    const int groups_q = seqlen_q / 4, groups_k = seqlen_k / 4;  // low corners per column / row
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= (long long)bhs * groups_q * groups_k) return;
    const int gk = (int)(g % groups_k), gq = (int)((g / groups_k) % groups_q), bh = (int)(g / groups_k / groups_q);
    // i and j even, i % 16 < 8, j % 16 < 8
    const int i = (gq / 4) * 16 + 2 * (gq % 4), j = (gk / 4) * 16 + 2 * (gk % 4);
    const PhiloxKey key{(u32)seed, (u32)(seed >> 32)};
    const u32 bits = dropout_keep_group(key, offset, threshold, bh, i, j);
    unsigned char* rows = keep + ((long long)bh * seqlen_q + i) * seqlen_k + j;
    for (int w = 0; w < 4; ++w)      // queries i, i + 1, i + 8, i + 9
        for (int b = 0; b < 4; ++b)  // keys j, j + 1, j + 8, j + 9
            rows[(w % 2 + 8 * (w / 2)) * seqlen_k + b % 2 + 8 * (b / 2)] = (bits >> (4 * w + b)) & 1;
}
