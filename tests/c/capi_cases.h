/*
 * capi_cases.h -- inputs, calls and bit-for-bit comparisons shared by the C
 * programs that call numba_ln.h from many threads (capi_threads.c) and from
 * forked children (capi_fork.c). Static functions only: each program
 * includes it once.
 *
 * A shape gets one set of inputs; run_shape makes the four CPU calls
 * (forward and backward, float32 and float64) into a set of outputs, and
 * compare_shape reports the first output that differs from a reference.
 * Failed calls and mismatches are printed and counted in `failures`.
 */
#ifndef CAPI_CASES_H
#define CAPI_CASES_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <numba_ln.h>

typedef struct {
    int64_t rows, cols, ld;
} shape_t;

/* One complete set of inputs and outputs for a shape. */
typedef struct {
    float *x, *w, *b, *dy, *y, *mean, *rstd, *dx, *dw, *db;
    double *xd, *yd, *meand, *rstdd, *dxd, *dwd, *dbd;
} buffers_t;

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
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* x, w, b, dy (float32) and xd (float64) for shape s, from a seeded generator. */
static void make_inputs(const shape_t *s, buffers_t *in, uint64_t seed)
{
    size_t n = extent(s);
    uint64_t state = 0x9E3779B97F4A7C15ull * (seed + 1);
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

static void alloc_outputs(const shape_t *s, buffers_t *out)
{
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

/* Forward and backward, float32 and float64, for shape s into out. */
static void run_shape(const shape_t *s, const buffers_t *in, buffers_t *out)
{
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

/* Print and count a mismatch between got and ref for shape s. */
static void compare_shape(const shape_t *s, const buffers_t *got, const buffers_t *ref,
                          const char *phase, int thread)
{
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

/* Start `count` threads running body(thread index) and join them. */
static void run_threads(int count, void *(*body)(void *))
{
    pthread_t threads[64];
    if (count > 64) {
        fprintf(stderr, "run_threads: at most 64 threads\n");
        exit(2);
    }
    for (int t = 0; t < count; t++)
        if (pthread_create(&threads[t], NULL, body, (void *)(intptr_t)t) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(2);
        }
    for (int t = 0; t < count; t++)
        pthread_join(threads[t], NULL);
}

#endif /* CAPI_CASES_H */
