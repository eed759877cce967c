/* Instance norm without affine parameters, forward and backward, each plane (one image's channel) in
 * two passes over memory where torch's CPU kernels take five or six (vidcycle/runtime/instance_norm.py).
 * Planes run in parallel on OpenMP's threads; each plane's sums are vectorised reductions in double. */

#include <math.h>

void instance_norm_forward(const float *x, float *y, float *mean, float *rstd, long planes, long size,
                           double eps, int threads) {
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
#pragma omp simd
        for (long i = 0; i < size; i++)
            out[i] = (in[i] - m) * r;
        mean[p] = m;
        rstd[p] = r;
    }
}

/* grad_x = rstd (g - mean(g) - x_hat mean(g x_hat)), x_hat = (x - mean) rstd, per plane. */
void instance_norm_backward(const float *grad, const float *x, const float *mean, const float *rstd,
                            float *grad_x, long planes, long size, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long p = 0; p < planes; p++) {
        const float *g = grad + p * size, *in = x + p * size;
        float *out = grad_x + p * size;
        const float m = mean[p], r = rstd[p];
        double sum = 0.0, dot = 0.0;
#pragma omp simd reduction(+ : sum, dot)
        for (long i = 0; i < size; i++) {
            sum += g[i];
            dot += g[i] * ((in[i] - m) * r);
        }
        const float mean_g = (float)(sum / size), mean_gx = (float)(dot / size);
#pragma omp simd
        for (long i = 0; i < size; i++)
            out[i] = r * (g[i] - mean_g - (in[i] - m) * r * mean_gx);
    }
}
