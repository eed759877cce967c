/* Winograd's F(4x4, 3x3) transforms, each fused with the layout change around it (see winograd.py).
 *
 * torch's operations take a tile through memory three times (tiles cut out, transformed, laid out for the
 * batched product) and back the same way; here each transform reads the image and writes the product's
 * operand in one pass, vectorised over a block of channels. Built at run time by native.py; every function
 * runs its outer loop on `threads` of OpenMP's threads, which are torch's own (the same libgomp, loaded
 * first); the caller passes torch's thread count, which a thread of its own would not inherit.
 *
 * Layouts: images NCHW, float32, contiguous; transform-domain tiles (36, tiles, channels), tile index
 * (n * rows + row) * cols + col, the 6 x 6 place p * 6 + q first.
 */
#include <stdlib.h>
#include <string.h>

#define BLOCK 16                 /* channels a vector block */

/* B^T (6 x 6) over six strided blocks of channels: out[p] = sum_i B^T[p][i] in[i] */
static inline void input_1d(const float *in, long in_step, float *out, long out_step) {
    for (int l = 0; l < BLOCK; l++) {
        float d0 = in[l], d1 = in[in_step + l], d2 = in[2 * in_step + l];
        float d3 = in[3 * in_step + l], d4 = in[4 * in_step + l], d5 = in[5 * in_step + l];
        out[l] = 4.0f * d0 - 5.0f * d2 + d4;
        out[out_step + l] = -4.0f * (d1 + d2) + d3 + d4;
        out[2 * out_step + l] = 4.0f * (d1 - d2) - d3 + d4;
        out[3 * out_step + l] = 2.0f * (d3 - d1) - d2 + d4;
        out[4 * out_step + l] = 2.0f * (d1 - d3) - d2 + d4;
        out[5 * out_step + l] = 4.0f * d1 - 5.0f * d3 + d5;
    }
}

/* B (6 x 6), the adjoint of input_1d: out[i] = sum_p B^T[p][i] in[p] */
static inline void input_adjoint_1d(const float *in, long in_step, float *out, long out_step) {
    for (int l = 0; l < BLOCK; l++) {
        float v0 = in[l], v1 = in[in_step + l], v2 = in[2 * in_step + l];
        float v3 = in[3 * in_step + l], v4 = in[4 * in_step + l], v5 = in[5 * in_step + l];
        out[l] = 4.0f * v0;
        out[out_step + l] = 4.0f * (v2 - v1 + v5) + 2.0f * (v4 - v3);
        out[2 * out_step + l] = -5.0f * v0 - 4.0f * (v1 + v2) - v3 - v4;
        out[3 * out_step + l] = v1 - v2 + 2.0f * (v3 - v4) - 5.0f * v5;
        out[4 * out_step + l] = v0 + v1 + v2 + v3 + v4;
        out[5 * out_step + l] = v5;
    }
}

/* A^T (4 x 6): out[a] = sum_p A^T[a][p] in[p] */
static inline void output_1d(const float *in, long in_step, float *out, long out_step) {
    for (int l = 0; l < BLOCK; l++) {
        float m0 = in[l], m1 = in[in_step + l], m2 = in[2 * in_step + l];
        float m3 = in[3 * in_step + l], m4 = in[4 * in_step + l], m5 = in[5 * in_step + l];
        float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
        out[l] = m0 + s12 + s34;
        out[out_step + l] = d12 + 2.0f * d34;
        out[2 * out_step + l] = s12 + 4.0f * s34;
        out[3 * out_step + l] = d12 + 8.0f * d34 + m5;
    }
}

/* A (6 x 4), the adjoint of output_1d: out[p] = sum_a A^T[a][p] in[a] */
static inline void output_adjoint_1d(const float *in, long in_step, float *out, long out_step) {
    for (int l = 0; l < BLOCK; l++) {
        float g0 = in[l], g1 = in[in_step + l], g2 = in[2 * in_step + l], g3 = in[3 * in_step + l];
        float even = g0 + g2, odd = g1 + g3, even4 = g0 + 4.0f * g2, odd2 = 2.0f * g1 + 8.0f * g3;
        out[l] = g0;
        out[out_step + l] = even + odd;
        out[2 * out_step + l] = even - odd;
        out[3 * out_step + l] = even4 + odd2;
        out[4 * out_step + l] = even4 - odd2;
        out[5 * out_step + l] = g3;
    }
}

/* a block of channels: whole blocks by a copy the compiler unrolls, the ragged last one by memcpy */
static inline void copy_block(float *to, const float *from, long take) {
    if (take == BLOCK) {
        for (int l = 0; l < BLOCK; l++) to[l] = from[l];
    } else {
        memcpy(to, from, sizeof(float) * take);
    }
}

#ifdef __AVX2__
#include <immintrin.h>

/* eight vectors of eight, transposed in place */
static inline void transpose8(__m256 *r) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

/* values (c, x) for c in [c0, c1), x in [x0, x1): from[c * from_c + x * from_x] -> to[c * to_c + x * to_x] */
static void copy_strided(const float *from, long from_c, long from_x, float *to, long to_c, long to_x, int c0,
                         int c1, long x0, long x1) {
    for (int c = c0; c < c1; c++)
        for (long x = x0; x < x1; x++) to[c * to_c + x * to_x] = from[c * from_c + x * from_x];
}

/* `count` channels x `width` places between an image row (channel c's at c * plane, places contiguous) and
 * a buffer row (place x's channels at x * BLOCK, contiguous), `to_buffer` saying which way: 8 x 8
 * transposes where there is AVX2, the rest one value at a time */
static void move_row(const float *from, float *to, long plane, long width, int count, int to_buffer) {
    long from_c = to_buffer ? plane : 1, from_x = to_buffer ? 1 : BLOCK;
    long to_c = to_buffer ? 1 : plane, to_x = to_buffer ? BLOCK : 1;
    int c = 0;
#ifdef __AVX2__
    long x = 0;
    for (; c + 8 <= count; c += 8)
        for (x = 0; x + 8 <= width; x += 8) {
            __m256 v[8];      /* eight runs of eight along the source's contiguous axis, transposed */
            for (int i = 0; i < 8; i++)
                v[i] = _mm256_loadu_ps(from + (to_buffer ? (c + i) * from_c + x : c + (x + i) * from_x));
            transpose8(v);
            for (int i = 0; i < 8; i++)
                _mm256_storeu_ps(to + (to_buffer ? c + (x + i) * to_x : (c + i) * to_c + x), v[i]);
        }
    copy_strided(from, from_c, from_x, to, to_c, to_x, 0, c, c ? x : 0, width);  /* places the vectors left */
#endif
    copy_strided(from, from_c, from_x, to, to_c, to_x, c, count, 0, width);
}

/* rows of `count` planes (rows `step` apart) -> buf[row][x][BLOCK], zero past `count` channels */
static void gather_rows(const float *src, long plane, long step, long width, int nrows, int count, float *buf) {
    if (count < BLOCK) memset(buf, 0, sizeof(float) * nrows * width * BLOCK);
    for (int r = 0; r < nrows; r++) move_row(src + r * step, buf + (long)r * width * BLOCK, plane, width, count, 1);
}

/* buf[row][x][BLOCK] -> rows of `count` planes (rows `step` apart) */
static void scatter_rows(const float *buf, int nrows, long width, int count, float *dst, long plane, long step) {
    for (int r = 0; r < nrows; r++) move_row(buf + (long)r * width * BLOCK, dst + r * step, plane, width, count, 0);
}

/* channels [first, first + BLOCK) of `total`, or fewer in the last block */
static inline long block_width(long total, long first) {
    return total - first < BLOCK ? total - first : BLOCK;
}

/* one tile's 36 places of a block of channels, `step` apart in the (36, tiles, channels) layout, to and from
 * done[k][BLOCK]; gathering zeroes the lanes past `take` */
static inline void places_out(float *to, long step, const float *done, long take) {
    for (int k = 0; k < 36; k++) copy_block(to + k * step, done + k * BLOCK, take);
}

static inline void places_in(float *gathered, const float *from, long step, long take) {
    if (take < BLOCK) memset(gathered, 0, sizeof(float) * 36 * BLOCK);
    for (int k = 0; k < 36; k++) copy_block(gathered + k * BLOCK, from + k * step, take);
}

/* A two-sided transform of one tile's blocks: `first` down each of `columns` columns (rows `row_step` apart)
 * into across[m][column], then `second` along each of the `middle` rows of across into done[m][out_cols] */
typedef void (*pass_1d)(const float *in, long in_step, float *out, long out_step);

static inline void two_sided(pass_1d first, pass_1d second, const float *tile, long row_step, int columns,
                             int middle, int out_cols, float *across, float *done) {
    for (int j = 0; j < columns; j++) first(tile + j * BLOCK, row_step, across + j * BLOCK, columns * BLOCK);
    for (int m = 0; m < middle; m++) second(across + m * columns * BLOCK, BLOCK, done + m * out_cols * BLOCK, BLOCK);
}

/* x (n, channels, 4 rows + 2, 4 cols + 2), its steps between images, planes and rows given (a band of a
 * bigger image), -> tiles (36, n rows cols, channels) */
void input_transform(const float *x, long n, long channels, long rows, long cols, long image_step,
                     long plane, long step, float *tiles, int threads) {
    long width = 4 * cols + 2, count = n * rows * cols;
    long blocks = (channels + BLOCK - 1) / BLOCK;
    #pragma omp parallel num_threads(threads)
    {
        float *buf = (float *)malloc(sizeof(float) * 6 * width * BLOCK);
        float across[36 * BLOCK], done[36 * BLOCK];
        #pragma omp for collapse(3) schedule(static)
        for (long image = 0; image < n; image++)
            for (long row = 0; row < rows; row++)
                for (long block = 0; block < blocks; block++) {
                    long c0 = block * BLOCK, take = block_width(channels, c0);
                    gather_rows(x + image * image_step + c0 * plane + 4 * row * step, plane, step, width, 6,
                                (int)take, buf);
                    for (long col = 0; col < cols; col++) {
                        two_sided(input_1d, input_1d, buf + 4 * col * BLOCK, width * BLOCK, 6, 6, 6, across, done);
                        long t = (image * rows + row) * cols + col;
                        places_out(tiles + t * channels + c0, count * channels, done, take);
                    }
                }
        free(buf);
    }
}

/* products (36, n rows cols, filters) -> out (n, filters, 4 rows, 4 cols), plus bias when not NULL; out's
 * steps between images, planes and rows given */
void output_transform(const float *products, const float *bias, long n, long filters, long rows, long cols,
                      long image_step, long plane, long step, float *out, int threads) {
    long width = 4 * cols, count = n * rows * cols;
    long blocks = (filters + BLOCK - 1) / BLOCK;
    #pragma omp parallel num_threads(threads)
    {
        float *buf = (float *)malloc(sizeof(float) * 4 * width * BLOCK);
        float gathered[36 * BLOCK], across[24 * BLOCK], done[16 * BLOCK], shift[BLOCK];
        #pragma omp for collapse(3) schedule(static)
        for (long image = 0; image < n; image++)
            for (long row = 0; row < rows; row++)
                for (long block = 0; block < blocks; block++) {
                    long f0 = block * BLOCK, take = block_width(filters, f0);
                    for (int l = 0; l < BLOCK; l++) shift[l] = bias && l < take ? bias[f0 + l] : 0.0f;
                    for (long col = 0; col < cols; col++) {
                        long t = (image * rows + row) * cols + col;
                        places_in(gathered, products + t * filters + f0, count * filters, take);
                        two_sided(output_1d, output_1d, gathered, 6 * BLOCK, 6, 4, 4, across, done);
                        for (int a = 0; a < 4; a++)
                            for (int b = 0; b < 4; b++) {
                                float *to = buf + ((long)a * width + 4 * col + b) * BLOCK;
                                const float *from = done + (a * 4 + b) * BLOCK;
                                for (int l = 0; l < BLOCK; l++) to[l] = from[l] + shift[l];
                            }
                    }
                    scatter_rows(buf, 4, width, (int)take, out + image * image_step + f0 * plane + 4 * row * step,
                                 plane, step);
                }
        free(buf);
    }
}

/* grad (n, filters, 4 rows, 4 cols) -> its products' gradient (36, n rows cols, filters) */
void output_adjoint(const float *grad, long n, long filters, long rows, long cols, float *products, int threads) {
    long width = 4 * cols, plane = 4 * rows * width, count = n * rows * cols;
    long blocks = (filters + BLOCK - 1) / BLOCK;
    #pragma omp parallel num_threads(threads)
    {
        float *buf = (float *)malloc(sizeof(float) * 4 * width * BLOCK);
        float across[24 * BLOCK], done[36 * BLOCK];
        #pragma omp for collapse(3) schedule(static)
        for (long image = 0; image < n; image++)
            for (long row = 0; row < rows; row++)
                for (long block = 0; block < blocks; block++) {
                    long f0 = block * BLOCK, take = block_width(filters, f0);
                    gather_rows(grad + (image * filters + f0) * plane + 4 * row * width, plane, width, width, 4,
                                (int)take, buf);
                    for (long col = 0; col < cols; col++) {
                        two_sided(output_adjoint_1d, output_adjoint_1d, buf + 4 * col * BLOCK, width * BLOCK, 4, 6, 6,
                                  across, done);
                        long t = (image * rows + row) * cols + col;
                        places_out(products + t * filters + f0, count * filters, done, take);
                    }
                }
        free(buf);
    }
}

/* tiles' gradient (36, n rows cols, channels) -> the image's (n, channels, 4 rows + 2, 4 cols + 2): each
 * tile's 6 x 6 added where it came from; a block of channels goes down its rows of tiles in order, so the
 * two rows each tile row shares with the next are added in a buffer before they are written. */
void input_adjoint(const float *tiles, long n, long channels, long rows, long cols, float *x, int threads) {
    long height = 4 * rows + 2, width = 4 * cols + 2, plane = height * width, count = n * rows * cols;
    long blocks = (channels + BLOCK - 1) / BLOCK;
    #pragma omp parallel num_threads(threads)
    {
        float *buf = (float *)malloc(sizeof(float) * 6 * width * BLOCK);
        float gathered[36 * BLOCK], across[36 * BLOCK], done[36 * BLOCK];
        #pragma omp for collapse(2) schedule(static)
        for (long image = 0; image < n; image++)
            for (long block = 0; block < blocks; block++) {
                long c0 = block * BLOCK, take = block_width(channels, c0);
                float *dst = x + (image * channels + c0) * plane;
                memset(buf, 0, sizeof(float) * 6 * width * BLOCK);
                for (long row = 0; row < rows; row++) {
                    for (long col = 0; col < cols; col++) {
                        long t = (image * rows + row) * cols + col;
                        places_in(gathered, tiles + t * channels + c0, count * channels, take);
                        two_sided(input_adjoint_1d, input_adjoint_1d, gathered, 6 * BLOCK, 6, 6, 6, across, done);
                        for (int i = 0; i < 6; i++)
                            for (int j = 0; j < 6; j++) {
                                float *to = buf + ((long)i * width + 4 * col + j) * BLOCK;
                                const float *from = done + (i * 6 + j) * BLOCK;
                                for (int l = 0; l < BLOCK; l++) to[l] += from[l];
                            }
                    }
                    scatter_rows(buf, 4, width, (int)take, dst + 4 * row * width, plane, width);
                    memmove(buf, buf + 4 * width * BLOCK, sizeof(float) * 2 * width * BLOCK);
                    memset(buf + 2 * width * BLOCK, 0, sizeof(float) * 4 * width * BLOCK);
                }
                scatter_rows(buf, 2, width, (int)take, dst + 4 * rows * width, plane, width);
            }
        free(buf);
    }
}

/* G (6 x 3) over three strided blocks of filters: out[p] = sum_i G[p][i] in[i] */
static inline void filter_1d(const float *in, long in_step, float *out, long out_step) {
    for (int l = 0; l < BLOCK; l++) {
        float w0 = in[l], w1 = in[in_step + l], w2 = in[2 * in_step + l];
        float ends = w0 / 24.0f + w2 / 6.0f, middle = w1 / 12.0f;
        out[l] = w0 / 4.0f;
        out[out_step + l] = -(w0 + w1 + w2) / 6.0f;
        out[2 * out_step + l] = -(w0 - w1 + w2) / 6.0f;
        out[3 * out_step + l] = ends + middle;
        out[4 * out_step + l] = ends - middle;
        out[5 * out_step + l] = w2;
    }
}

/* G^T (3 x 6), the adjoint of filter_1d: out[i] = sum_p G[p][i] in[p] */
static inline void filter_adjoint_1d(const float *in, long in_step, float *out, long out_step) {
    for (int l = 0; l < BLOCK; l++) {
        float g0 = in[l], g1 = in[in_step + l], g2 = in[2 * in_step + l];
        float g3 = in[3 * in_step + l], g4 = in[4 * in_step + l], g5 = in[5 * in_step + l];
        out[l] = g0 / 4.0f - (g1 + g2) / 6.0f + (g3 + g4) / 24.0f;
        out[out_step + l] = (g2 - g1) / 6.0f + (g3 - g4) / 12.0f;
        out[2 * out_step + l] = (g3 + g4 - g1 - g2) / 6.0f + g5;
    }
}

/* weight (filters, channels, 3, 3) -> kernels (36, channels, filters): G w G^T of each 3 x 3 */
void filter_transform(const float *weight, long filters, long channels, float *kernels, int threads) {
    long blocks = (filters + BLOCK - 1) / BLOCK;
    #pragma omp parallel num_threads(threads)
    {
        float taps[9 * BLOCK], across[18 * BLOCK], done[36 * BLOCK];
        #pragma omp for collapse(2) schedule(static)
        for (long c = 0; c < channels; c++)
            for (long block = 0; block < blocks; block++) {
                long f0 = block * BLOCK, take = block_width(filters, f0);
                if (take < BLOCK) memset(taps, 0, sizeof taps);
                for (long f = 0; f < take; f++)
                    for (int k = 0; k < 9; k++) taps[k * BLOCK + f] = weight[((f0 + f) * channels + c) * 9 + k];
                two_sided(filter_1d, filter_1d, taps, 3 * BLOCK, 3, 6, 6, across, done);
                places_out(kernels + c * filters + f0, channels * filters, done, take);
            }
    }
}

/* the kernels' gradient (36, channels, filters) -> the weight's (filters, channels, 3, 3): G^T g G */
void filter_adjoint(const float *grad, long filters, long channels, float *weight, int threads) {
    long blocks = (filters + BLOCK - 1) / BLOCK;
    #pragma omp parallel num_threads(threads)
    {
        float gathered[36 * BLOCK], across[18 * BLOCK], done[9 * BLOCK];
        #pragma omp for collapse(2) schedule(static)
        for (long c = 0; c < channels; c++)
            for (long block = 0; block < blocks; block++) {
                long f0 = block * BLOCK, take = block_width(filters, f0);
                places_in(gathered, grad + c * filters + f0, channels * filters, take);
                two_sided(filter_adjoint_1d, filter_adjoint_1d, gathered, 6 * BLOCK, 6, 3, 3, across, done);
                for (long f = 0; f < take; f++)
                    for (int k = 0; k < 9; k++) weight[((f0 + f) * channels + c) * 9 + k] = done[k * BLOCK + f];
            }
    }
}
