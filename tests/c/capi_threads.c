/*
 * capi_threads.c -- 8 pthreads call numba_ln.h at once; every result must be
 * bit-identical to the same call made alone.
 *
 * Phase 1: the 8 threads make the process's very first calls together (so
 *          they race through the library's start-up), one shape each.
 * Phase 2: serial reference results for every shape.
 * Phase 3: all threads, the same large shape (parallel kernels), repeatedly.
 * Phase 4: each thread cycles through all shapes (small serial ones, padded
 *          ones, parallel ones), forward and backward, float32 and float64.
 * Prints "OK <calls>" and exits 0, or prints each mismatch and exits 1.
 * Usage: capi_threads [ITERATIONS]   (default 6)
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers, clock_gettime */

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <numba_ln.h>

#define THREADS 8

typedef struct {
    int64_t rows, cols, ld;
} shape_t;

/* Small (serial kernels), padded, and large (parallel kernels) shapes. */
static const shape_t shapes[] = {
    {1, 64, 64}, {7, 300, 333}, {64, 768, 768}, {512, 1024, 1030},
    {3000, 50, 50}, {33, 1, 4}, {257, 4096, 4096}, {2, 16385, 16400},
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

/* One complete set of inputs and outputs for a shape. */
typedef struct {
    float *x, *w, *b, *dy, *y, *mean, *rstd, *dx, *dw, *db;
    double *xd, *yd, *meand, *rstdd, *dxd, *dwd, *dbd;
} buffers_t;

static buffers_t inputs[NSHAPES];    /* x, w, b, dy (read-only once made) */
static buffers_t reference[NSHAPES]; /* serial outputs */
static int failures;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t extent(const shape_t *s)
{
    return (size_t)((s->rows - 1) * s->ld + s->cols);
}

static void *alloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size);
    if (p == NULL) {
        fprintf(stderr, "capi_threads: out of memory\n");
        exit(2);
    }
    return p;
}

static void make_inputs(int k)
{
    const shape_t *s = &shapes[k];
    buffers_t *in = &inputs[k];
    size_t n = extent(s);
    uint64_t state = 0x9E3779B97F4A7C15ull * (uint64_t)(k + 1);
    in->x = alloc(n, sizeof(float));
    in->dy = alloc(n, sizeof(float));
    in->xd = alloc(n, sizeof(double));
    in->w = alloc((size_t)s->cols, sizeof(float));
    in->b = alloc((size_t)s->cols, sizeof(float));
    for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(state >> 11) / 9007199254740992.0; /* [0, 1) */
        in->x[i] = (float)(4.0 * u - 1.5);
        in->xd[i] = 4.0 * u - 1.5;
        in->dy[i] = (float)(1.0 - 2.0 * u * u);
    }
    for (int64_t j = 0; j < s->cols; j++) {
        in->w[j] = 1.0f + 0.01f * (float)(j % 17);
        in->b[j] = 0.1f * (float)(j % 5) - 0.2f;
    }
}

static void alloc_outputs(int k, buffers_t *out)
{
    const shape_t *s = &shapes[k];
    size_t n = extent(s), rows = (size_t)s->rows, cols = (size_t)s->cols;
    out->y = alloc(n, sizeof(float));
    out->dx = alloc(n, sizeof(float));
    out->mean = alloc(rows, sizeof(float));
    out->rstd = alloc(rows, sizeof(float));
    out->dw = alloc(cols, sizeof(float));
    out->db = alloc(cols, sizeof(float));
    out->yd = alloc(n, sizeof(double));
    out->dxd = alloc(n, sizeof(double));
    out->meand = alloc(rows, sizeof(double));
    out->rstdd = alloc(rows, sizeof(double));
    out->dwd = alloc(cols, sizeof(double));
    out->dbd = alloc(cols, sizeof(double));
}

static void free_outputs(buffers_t *out)
{
    free(out->y); free(out->dx); free(out->mean); free(out->rstd); free(out->dw);
    free(out->db); free(out->yd); free(out->dxd); free(out->meand); free(out->rstdd);
    free(out->dwd); free(out->dbd);
}

static void check(nln_status status, const char *what)
{
    if (status != NLN_OK) {
        pthread_mutex_lock(&report_lock);
        printf("FAIL %s: %s: %s\n", what, nln_status_string(status), nln_last_error());
        failures++;
        pthread_mutex_unlock(&report_lock);
    }
}

/* Forward and backward, float32 and float64, for shape k into out. */
static void run_shape(int k, buffers_t *out)
{
    const shape_t *s = &shapes[k];
    const buffers_t *in = &inputs[k];
    check(nln_layer_norm_f32(in->x, s->ld, in->w, in->b, out->y, s->ld, out->mean,
                             out->rstd, s->rows, s->cols, 1e-5f), "forward f32");
    check(nln_layer_norm_backward_f32(in->dy, s->ld, in->x, s->ld, out->mean, out->rstd,
                                      in->w, out->dx, s->ld, out->dw, out->db, s->rows,
                                      s->cols), "backward f32");
    check(nln_layer_norm_f64(in->xd, s->ld, NULL, NULL, out->yd, s->ld, out->meand,
                             out->rstdd, s->rows, s->cols, 1e-6), "forward f64");
    check(nln_layer_norm_backward_f64(in->xd, s->ld, in->xd, s->ld, out->meand,
                                      out->rstdd, NULL, out->dxd, s->ld, out->dwd,
                                      out->dbd, s->rows, s->cols), "backward f64");
}

static int same(const void *a, const void *b, size_t count, size_t size)
{
    return memcmp(a, b, count * size) == 0;
}

static void compare(int k, const buffers_t *got, const char *phase, int thread)
{
    const shape_t *s = &shapes[k];
    const buffers_t *ref = &reference[k];
    size_t n = extent(s), rows = (size_t)s->rows, cols = (size_t)s->cols;
    const char *bad = NULL;
    if (!same(got->y, ref->y, n, sizeof(float))) bad = "y f32";
    else if (!same(got->mean, ref->mean, rows, sizeof(float))) bad = "mean f32";
    else if (!same(got->rstd, ref->rstd, rows, sizeof(float))) bad = "rstd f32";
    else if (!same(got->dx, ref->dx, n, sizeof(float))) bad = "dx f32";
    else if (!same(got->dw, ref->dw, cols, sizeof(float))) bad = "dweight f32";
    else if (!same(got->db, ref->db, cols, sizeof(float))) bad = "dbias f32";
    else if (!same(got->yd, ref->yd, n, sizeof(double))) bad = "y f64";
    else if (!same(got->dxd, ref->dxd, n, sizeof(double))) bad = "dx f64";
    else if (!same(got->dwd, ref->dwd, cols, sizeof(double))) bad = "dweight f64";
    else if (!same(got->dbd, ref->dbd, cols, sizeof(double))) bad = "dbias f64";
    if (bad) {
        pthread_mutex_lock(&report_lock);
        printf("MISMATCH %s thread %d shape %lldx%lld (ld %lld): %s\n", phase, thread,
               (long long)s->rows, (long long)s->cols, (long long)s->ld, bad);
        failures++;
        pthread_mutex_unlock(&report_lock);
    }
}

static int iterations = 6;
static buffers_t first_results[THREADS];
static pthread_barrier_t barrier;
static long calls[THREADS];

static void *first_call(void *arg)
{
    int t = (int)(intptr_t)arg;
    alloc_outputs(t % NSHAPES, &first_results[t]);
    pthread_barrier_wait(&barrier);
    run_shape(t % NSHAPES, &first_results[t]);
    calls[t] += 4;
    return NULL;
}

static void *same_shape(void *arg)
{
    int t = (int)(intptr_t)arg, k = 3; /* 512 x 1024, padded: parallel kernels */
    buffers_t out;
    alloc_outputs(k, &out);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < iterations; i++) {
        run_shape(k, &out);
        compare(k, &out, "same-shape", t);
        calls[t] += 4;
    }
    free_outputs(&out);
    return NULL;
}

static void *mixed_shapes(void *arg)
{
    int t = (int)(intptr_t)arg;
    buffers_t out[NSHAPES];
    for (int k = 0; k < NSHAPES; k++)
        alloc_outputs(k, &out[k]);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < iterations; i++) {
        for (int j = 0; j < NSHAPES; j++) {
            int k = (t + j) % NSHAPES;
            run_shape(k, &out[k]);
            compare(k, &out[k], "mixed-shapes", t);
            calls[t] += 4;
        }
    }
    for (int k = 0; k < NSHAPES; k++)
        free_outputs(&out[k]);
    return NULL;
}

static void run_threads(void *(*body)(void *))
{
    pthread_t threads[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int t = 0; t < THREADS; t++)
        if (pthread_create(&threads[t], NULL, body, (void *)(intptr_t)t) != 0) {
            fprintf(stderr, "capi_threads: pthread_create failed\n");
            exit(2);
        }
    for (int t = 0; t < THREADS; t++)
        pthread_join(threads[t], NULL);
    pthread_barrier_destroy(&barrier);
}

int main(int argc, char **argv)
{
    long total = 0;
    if (argc > 1)
        iterations = atoi(argv[1]);
    for (int k = 0; k < NSHAPES; k++)
        make_inputs(k);

    run_threads(first_call);                  /* phase 1 */
    for (int k = 0; k < NSHAPES; k++) {       /* phase 2 */
        alloc_outputs(k, &reference[k]);
        run_shape(k, &reference[k]);
    }
    for (int t = 0; t < THREADS; t++)
        compare(t % NSHAPES, &first_results[t], "first-call", t);
    run_threads(same_shape);                  /* phase 3 */
    run_threads(mixed_shapes);                /* phase 4 */

    for (int t = 0; t < THREADS; t++)
        total += calls[t];
    if (failures) {
        printf("FAILED %d\n", failures);
        return 1;
    }
    printf("OK %ld\n", total);
    return 0;
}
