/*
 * capi_bench.c -- time nln_layer_norm_f32 (or its backward) from C.
 *
 * Usage: capi_bench ROWS COLS REPEATS [forward|backward]
 *
 * The first forward call is timed from the start of main (it starts the
 * embedded interpreter and loads -- or compiles -- the kernels). Then REPEATS
 * calls of the chosen pass are timed in batches, and the best batch gives
 * the per-call time. Contiguous rows, weight and bias, mean and rstd wanted
 * (forward), dweight and dbias wanted (backward): the usual training calls.
 * Prints "key value" lines:
 *   first_call_s, per_call_ns, best_call_s, gbytes_per_s (forward: read x,
 *   write y; backward: read dy and x, write dx).
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers, clock_gettime */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <numba_ln.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int64_t rows, cols;
static float *x, *y, *w, *b, *mean, *rstd, *dx, *dw, *db;

static nln_status forward(void)
{
    return nln_layer_norm_f32(x, cols, w, b, y, cols, mean, rstd, rows, cols, 1e-5f);
}

/* y stands in for dy: any values do. */
static nln_status backward(void)
{
    return nln_layer_norm_backward_f32(y, cols, x, cols, mean, rstd, w, dx, cols, dw, db, rows,
                                       cols);
}

int main(int argc, char **argv)
{
    double start = now();
    if (argc != 4 && !(argc == 5 && (!strcmp(argv[4], "forward") ||
                                     !strcmp(argv[4], "backward")))) {
        fprintf(stderr, "usage: capi_bench ROWS COLS REPEATS [forward|backward]\n");
        return 2;
    }
    int is_backward = argc == 5 && !strcmp(argv[4], "backward");
    nln_status (*call)(void) = is_backward ? backward : forward;
    rows = atoll(argv[1]);
    cols = atoll(argv[2]);
    long repeats = atol(argv[3]);
    size_t n = (size_t)(rows * cols);
    x = malloc(n * sizeof(float));
    y = malloc(n * sizeof(float));
    dx = malloc(n * sizeof(float));
    w = malloc((size_t)cols * sizeof(float));
    b = malloc((size_t)cols * sizeof(float));
    dw = malloc((size_t)cols * sizeof(float));
    db = malloc((size_t)cols * sizeof(float));
    mean = malloc((size_t)rows * sizeof(float));
    rstd = malloc((size_t)rows * sizeof(float));
    if (!x || !y || !dx || !w || !b || !dw || !db || !mean || !rstd || repeats < 1) {
        fprintf(stderr, "capi_bench: out of memory or bad REPEATS\n");
        return 2;
    }
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((i * 2654435761u) % 1000) * 0.001f;
    for (int64_t j = 0; j < cols; j++) {
        w[j] = 1.0f;
        b[j] = 0.0f;
    }

    nln_status status = forward();
    double first = now() - start;
    double t0 = now();
    if (status == NLN_OK)
        status = call();
    double one = now() - t0;
    if (status != NLN_OK) {
        fprintf(stderr, "capi_bench: %s: %s\n", nln_status_string(status), nln_last_error());
        return 1;
    }

    /* Batches of about 20 ms each; the best batch is the per-call cost. */
    long batch = 1;
    if (one < 0.02)
        batch = (long)(0.02 / (one > 1e-9 ? one : 1e-9)) + 1;
    if (batch > repeats)
        batch = repeats;
    double best = 1e30;
    for (long done = 0; done < repeats; done += batch) {
        t0 = now();
        for (long i = 0; i < batch; i++)
            call();
        double per_call = (now() - t0) / (double)batch;
        if (per_call < best)
            best = per_call;
    }
    printf("first_call_s %.6f\n", first);
    printf("per_call_ns %.1f\n", best * 1e9);
    printf("best_call_s %.9f\n", best);
    printf("gbytes_per_s %.3f\n",
           (is_backward ? 3.0 : 2.0) * (double)n * sizeof(float) / best * 1e-9);
    printf("check %.6f\n", (double)(is_backward ? dx : y)[n - 1]);
    free(x);
    free(y);
    free(dx);
    free(w);
    free(b);
    free(dw);
    free(db);
    free(mean);
    free(rstd);
    return 0;
}
