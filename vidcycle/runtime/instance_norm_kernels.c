/* Instance norm without affine parameters, forward and backward, each plane (one image's channel) in
 * two passes over memory where torch's CPU kernels take five or six (vidcycle/runtime/instance_norm.py),
 * with the ReLU after it when `relu` is set (its mask read from x_hat > 0, as the ReLU's own backward reads
 * its output > 0). Planes run in parallel on OpenMP's threads; each plane's sums are vectorised reductions
 * in double. */

#include <math.h>
#include <stdint.h>
#include <string.h>

void instance_norm_forward(const float *x, float *y, float *mean, float *rstd, long planes, long size,
                           double eps, int relu, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long p = 0; p < planes; p++) {
        const float *in = x + p * size;
        float *out = y + p * size;
        double sum = 0.0, squares = 0.0;
#pragma omp simd reduction(+ : sum)
        for (long i = 0; i < size; i++)
            sum += in[i];
        const float m = (float)(sum / size);
#pragma omp simd reduction(+ : squares)
        for (long i = 0; i < size; i++) {
            const float d = in[i] - m;
            squares += d * d;
        }
        const float r = (float)(1.0 / sqrt(squares / size + eps));
        if (relu) {
#pragma omp simd
            for (long i = 0; i < size; i++) {
                const float v = (in[i] - m) * r;
                out[i] = v < 0.0f ? 0.0f : v;   /* torch's ReLU: NaN stays NaN */
            }
        } else {
#pragma omp simd
            for (long i = 0; i < size; i++)
                out[i] = (in[i] - m) * r;
        }
        mean[p] = m;
        rstd[p] = r;
    }
}

/* grad_x = rstd (g - mean(g) - x_hat mean(g x_hat)), x_hat = (x - mean) rstd, for one plane; with `relu`, g is
 * the gradient after the ReLU's, zero where x_hat <= 0 (an integer mask: with a select gcc sums in order,
 * one element at a time, 10x slower). */
static inline float kept_where_positive(float g, float x_hat) {
    int32_t bits, sign;
    memcpy(&bits, &g, sizeof bits);
    memcpy(&sign, &x_hat, sizeof sign);
    bits &= -(int32_t)(sign > 0);
    memcpy(&g, &bits, sizeof g);
    return g;
}

#define NORM_BACKWARD_PLANE(G)                                                                               \
    do {                                                                                                     \
        double sum = 0.0, dot = 0.0;                                                                         \
        _Pragma("omp simd reduction(+ : sum, dot)") for (long i = 0; i < size; i++) {                        \
            const float x_hat = (in[i] - m) * r, gv = g[i], gi = (G);                                        \
            sum += gi;                                                                                       \
            dot += gi * x_hat;                                                                               \
        }                                                                                                    \
        const float mean_g = (float)(sum / size), mean_gx = (float)(dot / size);                             \
        _Pragma("omp simd") for (long i = 0; i < size; i++) {                                                \
            const float x_hat = (in[i] - m) * r, gv = g[i], gi = (G);                                        \
            out[i] = r * (gi - mean_g - x_hat * mean_gx);                                                    \
        }                                                                                                    \
    } while (0)

void instance_norm_backward(const float *grad, const float *x, const float *mean, const float *rstd,
                            float *grad_x, long planes, long size, int relu, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long p = 0; p < planes; p++) {
        const float *g = grad + p * size, *in = x + p * size;
        float *out = grad_x + p * size;
        const float m = mean[p], r = rstd[p];
        if (relu)
            NORM_BACKWARD_PLANE(kept_where_positive(gv, x_hat));
        else
            NORM_BACKWARD_PLANE(gv);
    }
}
