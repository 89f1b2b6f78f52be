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

#include "capi_cases.h"

#define THREADS 8

/* Small (serial kernels), padded, and large (parallel kernels) shapes. */
static const shape_t shapes[] = {
    {1, 64, 64}, {7, 300, 333}, {64, 768, 768}, {512, 1024, 1030},
    {3000, 50, 50}, {33, 1, 4}, {257, 4096, 4096}, {2, 16385, 16400},
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

static buffers_t inputs[NSHAPES];    /* x, w, b, dy (read-only once made) */
static buffers_t reference[NSHAPES]; /* serial outputs */

static void compare(int k, const buffers_t *got, const char *phase, int thread)
{
    compare_shape(&shapes[k], got, &reference[k], phase, thread);
}

/* The four calls of shape k (an index into shapes) into out. */
static void call_shape(int k, buffers_t *out)
{
    run_shape(&shapes[k], &inputs[k], out);
}

static int iterations = 6;
static buffers_t first_results[THREADS];
static pthread_barrier_t barrier;
static long calls[THREADS];

static void *first_call(void *arg)
{
    int t = (int)(intptr_t)arg;
    alloc_outputs(&shapes[t % NSHAPES], &first_results[t]);
    pthread_barrier_wait(&barrier);
    call_shape(t % NSHAPES, &first_results[t]);
    calls[t] += 4;
    return NULL;
}

static void *same_shape(void *arg)
{
    int t = (int)(intptr_t)arg, k = 3; /* 512 x 1024, padded: parallel kernels */
    buffers_t out;
    alloc_outputs(&shapes[k], &out);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < iterations; i++) {
        call_shape(k, &out);
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
        alloc_outputs(&shapes[k], &out[k]);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < iterations; i++) {
        for (int j = 0; j < NSHAPES; j++) {
            int k = (t + j) % NSHAPES;
            call_shape(k, &out[k]);
            compare(k, &out[k], "mixed-shapes", t);
            calls[t] += 4;
        }
    }
    for (int k = 0; k < NSHAPES; k++)
        free_outputs(&out[k]);
    return NULL;
}

/* All threads start body together, at the barrier. */
static void run_together(void *(*body)(void *))
{
    pthread_barrier_init(&barrier, NULL, THREADS);
    run_threads(THREADS, body);
    pthread_barrier_destroy(&barrier);
}

int main(int argc, char **argv)
{
    long total = 0;
    if (argc > 1)
        iterations = atoi(argv[1]);
    for (int k = 0; k < NSHAPES; k++)
        make_inputs(&shapes[k], &inputs[k], (uint64_t)k);

    run_together(first_call);                 /* phase 1 */
    for (int k = 0; k < NSHAPES; k++) {       /* phase 2 */
        alloc_outputs(&shapes[k], &reference[k]);
        call_shape(k, &reference[k]);
    }
    for (int t = 0; t < THREADS; t++)
        compare(t % NSHAPES, &first_results[t], "first-call", t);
    run_together(same_shape);                 /* phase 3 */
    run_together(mixed_shapes);               /* phase 4 */

    for (int t = 0; t < THREADS; t++)
        total += calls[t];
    if (failures) {
        printf("FAILED %d\n", failures);
        return 1;
    }
    printf("OK %ld\n", total);
    return 0;
}
