// The dropout probe of the tests: keep[bh, i, j] for bh < bhs, i < seqlen_q, j < seqlen_k (both
// multiples of 16) from kernels_cu/common/dropout.cuh, one thread per group of eight entries.
// tests/compile/test_dropout_header.py compiles it; tests/gpu/test_dropout_mask.py runs it.
#define CUFLASH_DROPOUT 1
#include "dropout.cuh"
extern "C" __global__ void probe(unsigned char* keep, unsigned long long seed, unsigned int offset,
                                 unsigned int threshold, int bhs, int seqlen_q, int seqlen_k) {
    const int groups_q = seqlen_q / 2, groups_k = seqlen_k / 4;  // low corners per row / column
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= (long long)bhs * groups_q * groups_k) return;
    const int gk = (int)(g % groups_k), gq = (int)((g / groups_k) % groups_q), bh = (int)(g / groups_k / groups_q);
    const int i = (gq / 8) * 16 + gq % 8, j = (gk / 4) * 16 + 2 * (gk % 4);  // i % 16 < 8; j even, j % 16 < 8
    const PhiloxKey key{(u32)seed, (u32)(seed >> 32)};
    const u32 bits = dropout_keep_group(key, offset, threshold, bh, i, j);
    unsigned char* row = keep + ((long long)bh * seqlen_q + i) * seqlen_k;
    for (int di = 0; di < 2; ++di)
        for (int dk = 0; dk < 4; ++dk) {  // keys j, j + 1, j + 8, j + 9
            const int dj = (dk / 2) * 8 + dk % 2;
            row[di * 8 * seqlen_k + j + dj] = (bits >> (2 * (2 * di + dk / 2) + dk % 2)) & 1;
        }
}
