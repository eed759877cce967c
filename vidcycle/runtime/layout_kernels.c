/* Layout changes for runtime/channels_last.py: each of `count` row-major matrices (rows x cols) written
 * transposed (cols x rows). NCHW to channels-last is rows = C, cols = H * W; back is rows = H * W, cols = C.
 * Blocks of 8 x 8, by AVX2's shuffles where the build has them, so that both the reads and the writes run
 * along whole cache lines; ragged edges one element at a time. */
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define BLOCK 8

static void transpose_edge(const float *src, long ld_src, float *dst, long ld_dst, long rows, long cols) {
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++) dst[c * ld_dst + r] = src[r * ld_src + c];
}

#ifdef __AVX2__
static inline void transpose_block(const float *src, long ld_src, float *dst, long ld_dst) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld_src), r2 = _mm256_loadu_ps(src + 2 * ld_src),
           r3 = _mm256_loadu_ps(src + 3 * ld_src), r4 = _mm256_loadu_ps(src + 4 * ld_src),
           r5 = _mm256_loadu_ps(src + 5 * ld_src), r6 = _mm256_loadu_ps(src + 6 * ld_src),
           r7 = _mm256_loadu_ps(src + 7 * ld_src);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ld_dst, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ld_dst, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ld_dst, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ld_dst, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ld_dst, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ld_dst, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ld_dst, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#else
static inline void transpose_block(const float *src, long ld_src, float *dst, long ld_dst) {
    transpose_edge(src, ld_src, dst, ld_dst, BLOCK, BLOCK);
}
#endif

void transpose_matrices(const float *src, float *dst, long count, long rows, long cols, int threads) {
    long row_blocks = (rows + BLOCK - 1) / BLOCK;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (long m = 0; m < count; m++)
        for (long block = 0; block < row_blocks; block++) {
            const float *from = src + m * rows * cols;
            float *to = dst + m * rows * cols;
            long r = block * BLOCK, height = rows - r < BLOCK ? rows - r : BLOCK;
            long c = 0;
            if (height == BLOCK)
                for (; c + BLOCK <= cols; c += BLOCK) transpose_block(from + r * cols + c, cols, to + c * rows + r, rows);
            transpose_edge(from + r * cols + c, cols, to + c * rows + r, rows, height, cols - c);
        }
}
