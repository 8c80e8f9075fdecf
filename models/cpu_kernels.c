/* The sampling step's two CPU streams, for few rows: compiled at first use by
 * models/cpu_kernels.py, once per instruction set (-mavx2 -mfma, or -mavx512f ...).
 *
 * A sampling step multiplies every weight by one row per sequence (8 at batch 8), so
 * its time is the time to stream the weights, and the libraries' kernels for such thin
 * products read them at ~17 GB/s on 2 Zen 4 cores. Here each weight is packed once into
 * panels of NR columns, [N/NR][K][NR] (zero-padded), read front to back; a tile of
 * MR rows x NR columns stays in registers for the whole of K, so each loaded weight
 * vector feeds MR multiply-adds and each broadcast input NR/lanes of them. With AVX2's
 * 16 registers, 4 x 24 (12 accumulators) issues the fewest loads per multiply-add; with
 * AVX-512's 32, 8 x 32. More rows than MR re-read the panel from cache, not memory.
 * While a panel is read a second time (from cache) the memory would idle, so every pass
 * over a panel prefetches its share of the next panel into L2: with two or more passes the
 * reads from memory overlap the arithmetic (1.3-1.5x at 8-32 rows on a Xeon, bench notes in
 * the README). Hence 2 to MR rows are split into two passes; one row is one pass, left to
 * the hardware prefetcher (prefetching the next panel there was slower).
 *
 * The attention of one new position over the key/value cache is the other stream;
 * `attend_step` writes the position's key and value into the cache and attends, one
 * (sequence, head) per task, reading each cached key and value once.
 *
 * Around them, the step's small operations cost more through torch than their arithmetic:
 * GELU joins the product's pass (`linear(..., gelu)`), and `layer_norm` normalises a step's
 * few rows on the calling thread.
 *
 * Weights and the cache may also be bfloat16 (`linear_bf16`, `attend_step_bf16`): half the
 * bytes to read, widened exactly to float32 in registers, all arithmetic float32.
 *
 * Threads: OpenMP, the runtime torch's Linux builds use (libgomp.so.1, one copy per
 * process), with the thread count the caller passes (torch.get_num_threads()).
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define MR 8
#define NR 32
#define LANES 16
typedef __m512 vec;
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vstore(p, v) _mm512_storeu_ps(p, v)
#define vbroadcast(p) _mm512_set1_ps(*(p))
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vadd(a, b) _mm512_add_ps(a, b)
#define vsub(a, b) _mm512_sub_ps(a, b)
#define vmul(a, b) _mm512_mul_ps(a, b)
#define vdiv(a, b) _mm512_div_ps(a, b)
#define vmin(a, b) _mm512_min_ps(a, b)
#define vmax(a, b) _mm512_max_ps(a, b)
#define vset1(x) _mm512_set1_ps(x)
#define vsum(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MR 4
#define NR 24
#define LANES 8
typedef __m256 vec;
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vstore(p, v) _mm256_storeu_ps(p, v)
#define vbroadcast(p) _mm256_broadcast_ss(p)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vadd(a, b) _mm256_add_ps(a, b)
#define vsub(a, b) _mm256_sub_ps(a, b)
#define vmul(a, b) _mm256_mul_ps(a, b)
#define vdiv(a, b) _mm256_div_ps(a, b)
#define vmin(a, b) _mm256_min_ps(a, b)
#define vmax(a, b) _mm256_max_ps(a, b)
#define vset1(x) _mm256_set1_ps(x)
static inline float vsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#else
#error "cpu_kernels.c needs AVX2 with FMA, or AVX-512"
#endif

#define NV (NR / LANES) /* vectors per panel row */
#define UNROLL _Pragma("GCC unroll 8") /* whole: the accumulators must be registers, not an array */

int kernel_rows(void) { return MR; }
int kernel_columns(void) { return NR; }

/* GELU in its exact form, x/2 (1 + erf(x / sqrt 2)), erf as Eigen's rational approximation
 * on [-4, 4] (beyond, float32's erf is +-1): at most 1.4e-6 from the exact GELU on
 * [-10, 10], as torch's float32 GELU (1.2e-6). NaN stays NaN (it multiplies x). */
static inline vec vgelu(vec x) {
    const vec z = vmin(vmax(vmul(x, vset1(0.70710678118654752f)), vset1(-4.0f)), vset1(4.0f)), z2 = vmul(z, z);
    vec p = vfma(z2, vset1(-2.72614225801306e-10f), vset1(2.77068142495902e-08f));
    p = vfma(z2, p, vset1(-2.10102402082508e-06f));
    p = vfma(z2, p, vset1(-5.69250639462346e-05f));
    p = vfma(z2, p, vset1(-7.34990630326855e-04f));
    p = vfma(z2, p, vset1(-2.95459980854025e-03f));
    p = vmul(z, vfma(z2, p, vset1(-1.60960333262415e-02f)));
    vec q = vfma(z2, vset1(-1.45660718464996e-05f), vset1(-2.13374055278905e-04f));
    q = vfma(z2, q, vset1(-1.68282697438203e-03f));
    q = vfma(z2, q, vset1(-7.37332916720468e-03f));
    q = vfma(z2, q, vset1(-1.42647390514189e-02f));
    return vmul(vmul(vset1(0.5f), x), vadd(vset1(1.0f), vdiv(p, q)));
}

/* y[i, :cols] = gelu?(acc[i]) (+ residual[i]) for i < mr, rows ldy apart */
static inline __attribute__((always_inline)) void store_tile(int mr, vec acc[MR][NV], int gelu, const float *residual,
                                                             float *y, size_t ldy, int cols) {
    UNROLL for (int i = 0; i < mr; i++) {
        float row[NR];
        float *out = cols == NR ? y + i * ldy : row; /* a last, narrower panel goes through row */
        for (int j = 0; j < NV; j++) {
            vec v = gelu ? vgelu(acc[i][j]) : acc[i][j];
            if (residual && cols == NR) v = vadd(v, vload(residual + i * ldy + j * LANES));
            vstore(out + j * LANES, v);
        }
        if (cols < NR)
            for (int j = 0; j < cols; j++) y[i * ldy + j] = row[j] + (residual ? residual[i * ldy + j] : 0.0f);
    }
}

/* Weights and the cache may be float32 or bfloat16. A bf16 value's bits are the top half
 * of its float32 (zero-extend, shift left 16: exact), so bf16 arrays are read widened in
 * registers: half the bytes to stream, all arithmetic float32. `bf16` is a constant
 * wherever load_float is inlined. */
#if defined(__AVX512F__)
#define vload_bf16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32( \
    _mm256_loadu_si256((const __m256i *)(p))), 16))
#else
#define vload_bf16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32( \
    _mm_loadu_si128((const __m128i *)(p))), 16))
#endif

static inline __attribute__((always_inline)) vec load_float(int bf16, const void *base, size_t i) {
    return bf16 ? vload_bf16((const unsigned short *)base + i) : vload((const float *)base + i);
}

/* y[i, :cols] = gelu?(x[i, :K] @ panel (+ bias)) (+ residual[i]) for i < mr, rows ldy apart;
 * mr and bf16 are constants wherever this is inlined, so the accumulators stay in registers */
static inline __attribute__((always_inline)) void tile_product(int mr, int bf16, const float *x, int K,
                                                               const void *panel, const float *bias, int gelu,
                                                               const float *residual, float *y, size_t ldy,
                                                               int cols, const char *ahead, size_t step) {
    vec acc[MR][NV];
    UNROLL for (int i = 0; i < mr; i++)
        UNROLL for (int j = 0; j < NV; j++) acc[i][j] = bias ? vload(bias + j * LANES) : vzero();
    for (int k = 0; k < K; k++) {
        vec w[NV];
        UNROLL for (int j = 0; j < NV; j++) w[j] = load_float(bf16, panel, (size_t)k * NR + j * LANES);
        if (ahead) _mm_prefetch(ahead + (size_t)k * step, _MM_HINT_T1);
        UNROLL for (int i = 0; i < mr; i++) {
            vec a = vbroadcast(x + (size_t)i * K + k);
            UNROLL for (int j = 0; j < NV; j++) acc[i][j] = vfma(a, w[j], acc[i][j]);
        }
    }
    store_tile(mr, acc, gelu, residual, y, ldy, cols);
}

#define TILE_CASE(r) case r: tile_product(r, bf16, x, K, panel, bias, gelu, residual, y, N, cols, ahead, step); break;

/* y[:M, n0:n0+NR] (clipped at N) = gelu?(x @ panel (+ bias)) (+ residual); bias and residual are
 * offset to the panel's first column, bias zero-padded to NR (pack_bias). Pass t of T
 * prefetches the t-th T-th of the next panel, `step` bytes per k (past the last panel
 * this touches addresses beyond the weight: a prefetch never faults). */
static inline __attribute__((always_inline)) void panel_product(int bf16, const float *x, int M, int K,
                                                                const void *panel, int n0, int N,
                                                                const float *bias, int gelu,
                                                                const float *residual, float *y) {
    int cols = N - n0 < NR ? N - n0 : NR;
    y += n0;
    residual = residual ? residual + n0 : NULL;
    bias = bias ? bias + n0 : NULL;
    const size_t bytes = (size_t)K * NR * (bf16 ? 2 : 4);
    const int rows = M > 1 && M <= MR ? (M + 1) / 2 : MR;
    const int tiles = (M + rows - 1) / rows;
    const size_t step = (bytes / K + tiles - 1) / tiles;
    for (int m0 = 0; m0 < M; m0 += rows) {
        int mr = M - m0 < rows ? M - m0 : rows;
        const char *ahead = tiles > 1 ? (const char *)panel + bytes + (size_t)(m0 / rows) * K * step : NULL;
        switch (mr) {
            TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4)
#if MR == 8
            TILE_CASE(5) TILE_CASE(6) TILE_CASE(7) TILE_CASE(8)
#endif
        }
        x += (size_t)rows * K, y += (size_t)rows * N;
        residual = residual ? residual + (size_t)rows * N : NULL;
    }
}

/* one copy of the panel loop per weight dtype (not inlined into the parallel loops) */
static void panel_product_float32(const float *x, int M, int K, const void *panel, int n0, int N, const float *bias,
                                  int gelu, const float *residual, float *y) {
    panel_product(0, x, M, K, panel, n0, N, bias, gelu, residual, y);
}

static void panel_product_bfloat16(const float *x, int M, int K, const void *panel, int n0, int N,
                                   const float *bias, int gelu, const float *residual, float *y) {
    panel_product(1, x, M, K, panel, n0, N, bias, gelu, residual, y);
}

/* y (M, N) = x (M, K) @ W^T + bias, through GELU if gelu, + residual; W packed by
 * models/cpu_kernels.pack_weight (panels [N/NR][K][NR], float32 for linear, bf16 bits for
 * linear_bf16), bias zero-padded to whole panels (pack_bias); bias and residual (M, N) may
 * be NULL; x, bias, residual and y float32, row-major, contiguous. */
void linear(const float *x, const float *packed, const float *bias, const float *residual, float *y, int M, int K,
            int N, int gelu, int threads) {
    int panels = (N + NR - 1) / NR;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int p = 0; p < panels; p++)
        panel_product_float32(x, M, K, packed + (size_t)p * K * NR, p * NR, N, bias, gelu, residual, y);
}

void linear_bf16(const float *x, const unsigned short *packed, const float *bias, const float *residual, float *y,
                 int M, int K, int N, int gelu, int threads) {
    int panels = (N + NR - 1) / NR;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int p = 0; p < panels; p++)
        panel_product_bfloat16(x, M, K, packed + (size_t)p * K * NR, p * NR, N, bias, gelu, residual, y);
}

/* y (M, C) = (x - mean) / sqrt(variance + eps) * weight + bias per row of x (M, C): the
 * mean first, then the deviations from it, whose sum corrects the mean and the variance
 * (the corrected two-pass algorithm: as close as torch's F.layer_norm); rows
 * are split between threads only when there are many (a step's few cost less than a wake-up). */
void layer_norm(const float *x, const float *weight, const float *bias, float *y, int M, int C, float eps,
                int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && (size_t)M * C >= 65536)
    for (int i = 0; i < M; i++) {
        const float *row = x + (size_t)i * C;
        float *out = y + (size_t)i * C;
        int c = 0;
        vec total = vzero();
        for (; c + LANES <= C; c += LANES) total = vadd(total, vload(row + c));
        float sum = vsum(total);
        for (; c < C; c++) sum += row[c];
        float mean = sum / C;
        vec m = vset1(mean), deviations = vzero(), squares = vzero();
        for (c = 0; c + LANES <= C; c += LANES) {
            const vec d = vsub(vload(row + c), m);
            deviations = vadd(deviations, d), squares = vfma(d, d, squares);
        }
        float deviation = vsum(deviations), square = vsum(squares);
        for (; c < C; c++) deviation += row[c] - mean, square += (row[c] - mean) * (row[c] - mean);
        /* the deviations' sum is the first mean's rounding error, times C: correct both */
        mean += deviation / C, m = vset1(mean);
        const float variance = (square - deviation * deviation / C) / C;
        const float rstd = 1.0f / sqrtf((variance > 0.0f ? variance : 0.0f) + eps);
        const vec r = vset1(rstd);
        for (c = 0; c + LANES <= C; c += LANES)
            vstore(out + c, vfma(vmul(vsub(vload(row + c), m), r), vload(weight + c), vload(bias + c)));
        for (; c < C; c++) out[c] = (row[c] - mean) * rstd * weight[c] + bias[c];
    }
}

/* The cache's keys and values, float32 or bfloat16 (written rounded to nearest even, as
 * torch's .to(torch.bfloat16)); scalar access for the any-width path. */
static inline float kv_get(int bf16, const void *base, size_t i) {
    if (!bf16) return ((const float *)base)[i];
    unsigned bits = (unsigned)((const unsigned short *)base)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline void kv_put(int bf16, void *base, size_t i, const float *from, int n) {
    if (!bf16) {
        memcpy((float *)base + i, from, sizeof(float) * n);
        return;
    }
    unsigned short *to = (unsigned short *)base + i;
    for (int d = 0; d < n; d++) {
        unsigned bits;
        memcpy(&bits, from + d, sizeof bits);
        to[d] = (bits & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((bits >> 16) | 0x40)  /* NaN stays NaN */
                                                  : (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
}

/* softmax(q k^T * scale) v for one query over n cached positions of one head whose width
 * is dv vectors (a constant wherever this is inlined: q and the output stay in registers).
 * Keys are scored four at a time, four independent sums, so the multiply-adds' latency
 * overlaps; scores (n floats) is scratch. */
static inline __attribute__((always_inline)) void attend_head(int dv, int bf16, const float *q, const void *keys,
                                                              const void *values, int n, float scale,
                                                              float *scores, float *o) {
    const int D = dv * LANES;
    vec qv[8], ov[8];
    UNROLL for (int j = 0; j < dv; j++) qv[j] = vload(q + j * LANES);
    int t = 0;
    for (; t + 4 <= n; t += 4) {
        const size_t k = (size_t)t * D;
        vec s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
        UNROLL for (int j = 0; j < dv; j++) {
            s0 = vfma(qv[j], load_float(bf16, keys, k + j * LANES), s0);
            s1 = vfma(qv[j], load_float(bf16, keys, k + D + j * LANES), s1);
            s2 = vfma(qv[j], load_float(bf16, keys, k + 2 * D + j * LANES), s2);
            s3 = vfma(qv[j], load_float(bf16, keys, k + 3 * D + j * LANES), s3);
        }
        scores[t] = vsum(s0) * scale, scores[t + 1] = vsum(s1) * scale;
        scores[t + 2] = vsum(s2) * scale, scores[t + 3] = vsum(s3) * scale;
    }
    for (; t < n; t++) {
        vec s0 = vzero();
        UNROLL for (int j = 0; j < dv; j++) s0 = vfma(qv[j], load_float(bf16, keys, (size_t)t * D + j * LANES), s0);
        scores[t] = vsum(s0) * scale;
    }
    float top = -INFINITY, total = 0.0f;
    for (t = 0; t < n; t++) top = scores[t] > top ? scores[t] : top;
    for (t = 0; t < n; t++) total += scores[t] = expf(scores[t] - top);
    UNROLL for (int j = 0; j < dv; j++) ov[j] = vzero();
    for (t = 0; t < n; t++) {
        const vec p = vset1(scores[t]);
        UNROLL for (int j = 0; j < dv; j++) ov[j] = vfma(p, load_float(bf16, values, (size_t)t * D + j * LANES), ov[j]);
    }
    const vec inverse = vset1(1.0f / total);
    UNROLL for (int j = 0; j < dv; j++) vstore(o + j * LANES, vmul(ov[j], inverse));
}

/* The same for any head width (D not a multiple of LANES, or wider than 8 vectors). */
static void attend_head_any(int D, int bf16, const float *q, const void *keys, const void *values, int n,
                            float scale, float *scores, float *o) {
    float top = -INFINITY, total = 0.0f;
    for (int t = 0; t < n; t++) {
        float s = 0.0f;
        for (int d = 0; d < D; d++) s += q[d] * kv_get(bf16, keys, (size_t)t * D + d);
        scores[t] = s * scale;
        top = scores[t] > top ? scores[t] : top;
    }
    for (int t = 0; t < n; t++) total += scores[t] = expf(scores[t] - top);
    for (int d = 0; d < D; d++) o[d] = 0.0f;
    for (int t = 0; t < n; t++)
        for (int d = 0; d < D; d++) o[d] += scores[t] * kv_get(bf16, values, (size_t)t * D + d);
    for (int d = 0; d < D; d++) o[d] /= total;
}

#define HEAD_CASE(v) case v: attend_head(v, bf16, q, keys, values, pos + 1, scale, scores, o); break;

/* One new position per sequence, at `pos`: its key and value (from qkv) go into the cache,
 * then its query attends over positions 0..pos (as softmax(q k^T / sqrt(D)) v), one
 * (sequence, head) per task. qkv (B, 3C): each row [q | k | v], C = H * D, head-major;
 * cache (2, B, H, L, D), float32 (attend_step) or bfloat16 bits (attend_step_bf16); out (B, C). */
static inline __attribute__((always_inline)) void attend_step_in(int bf16, const float *qkv, void *cache, float *out,
                                                                 int B, int H, int L, int D, int pos, int threads) {
    const int C = H * D, dv = D % LANES == 0 && D <= 8 * LANES ? D / LANES : 0;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t element = bf16 ? sizeof(unsigned short) : sizeof(float);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * 3 * C + (size_t)h * D;
        const size_t keys_at = (size_t)bh * L * D, values_at = ((size_t)B * H + bh) * L * D;
        const void *keys = (const char *)cache + keys_at * element;
        const void *values = (const char *)cache + values_at * element;
        float *o = out + (size_t)b * C + (size_t)h * D;
        float scores[pos + 1];
        kv_put(bf16, cache, keys_at + (size_t)pos * D, q + C, D);
        kv_put(bf16, cache, values_at + (size_t)pos * D, q + 2 * C, D);
        switch (dv) {
            HEAD_CASE(1) HEAD_CASE(2) HEAD_CASE(3) HEAD_CASE(4) HEAD_CASE(5) HEAD_CASE(6) HEAD_CASE(7) HEAD_CASE(8)
            default: attend_head_any(D, bf16, q, keys, values, pos + 1, scale, scores, o);
        }
    }
}

void attend_step(const float *qkv, float *cache, float *out, int B, int H, int L, int D, int pos, int threads) {
    attend_step_in(0, qkv, cache, out, B, H, L, D, pos, threads);
}

void attend_step_bf16(const float *qkv, unsigned short *cache, float *out, int B, int H, int L, int D, int pos,
                      int threads) {
    attend_step_in(1, qkv, cache, out, B, H, L, D, pos, threads);
}
