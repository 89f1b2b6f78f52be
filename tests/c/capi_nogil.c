/*
 * capi_nogil.c -- CPU calls must not need the embedded interpreter's lock.
 *
 * After nln_init(), the main thread takes the GIL of the embedded Python
 * (PyGILState_Ensure, found in the already loaded libpython) and keeps it
 * while a second thread makes CPU calls of up to ROWS x 1024 elements,
 * forward and backward, with and without the optional outputs, layer norm
 * and the fused residual forms (RMSNorm's among them). The test
 * runs it with ROWS at the largest serial size
 * (numba_ln._config.SERIAL_MAX_ELEMENTS) and at four times that, where the
 * library spreads a call over its own threads. A call that needed the GIL
 * would wait forever; after 20 s the main thread gives up and reports it.
 * Prints "OK", or "BLOCKED" / "FAIL ...".
 * Usage: capi_nogil [ROWS]   (default 32)
 */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <numba_ln.h>

#define COLS 1024

static int rows = 32;

static volatile int done;
static volatile int failed;

static void *calls_without_gil(void *arg)
{
    size_t n = (size_t)rows * COLS;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    float *dx = malloc(n * sizeof(float)), *mean = malloc((size_t)rows * sizeof(float));
    float *rstd = malloc((size_t)rows * sizeof(float)), *s = malloc(n * sizeof(float));
    static float dw[COLS], db[COLS];
    (void)arg;
    if (!x || !y || !dx || !mean || !rstd || !s) {
        failed = 1;
        done = 1;
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(i % 13) * 0.25f;
    for (int repeat = 0; repeat < 20; repeat++) {
        if (nln_layer_norm_f32(x, 64, NULL, NULL, y, 64, mean, rstd, 1, 64, 1e-5f) != NLN_OK ||
            nln_layer_norm_f32(x, 70, NULL, NULL, y, 64, mean, rstd, 7, 64, 1e-5f) != NLN_OK ||
            nln_layer_norm_f32(x, COLS, NULL, NULL, y, COLS, mean, rstd, rows, COLS,
                               1e-5f) != NLN_OK ||
            nln_layer_norm_f32(x, COLS, NULL, NULL, y, COLS, NULL, NULL, rows, COLS,
                               1e-5f) != NLN_OK ||
            nln_layer_norm_backward_f32(y, COLS, x, COLS, mean, rstd, NULL, dx, COLS, dw, db,
                                        rows, COLS) != NLN_OK ||
            nln_layer_norm_backward_f32(y, COLS, x, COLS, mean, rstd, NULL, dx, COLS, NULL,
                                        NULL, rows, COLS) != NLN_OK ||
            nln_add_layer_norm_f32(x, COLS, y, COLS, NULL, NULL, dx, COLS, s, COLS, mean, rstd,
                                   rows, COLS, 1e-5f) != NLN_OK ||
            nln_add_rms_norm_backward_f32(y, COLS, s, COLS, rstd, NULL, x, COLS, dx, COLS, dw,
                                          rows, COLS) != NLN_OK)
            failed = 1;
    }
    free(x);
    free(y);
    free(dx);
    free(mean);
    free(rstd);
    free(s);
    done = 1;
    return NULL;
}

int main(int argc, char **argv)
{
    typedef int (*ensure_fn)(void);
    typedef void (*release_fn)(int);
    pthread_t thread;
    if (argc > 1)
        rows = atoi(argv[1]);
    nln_status status = nln_init();
    if (status != NLN_OK) {
        printf("FAIL init: %s\n", nln_last_error());
        return 1;
    }
    ensure_fn ensure = (ensure_fn)dlsym(RTLD_DEFAULT, "PyGILState_Ensure");
    release_fn release = (release_fn)dlsym(RTLD_DEFAULT, "PyGILState_Release");
    if (ensure == NULL || release == NULL) {
        printf("FAIL no PyGILState_Ensure in the process\n");
        return 1;
    }
    int gil = ensure(); /* the GIL is ours from here on */
    if (pthread_create(&thread, NULL, calls_without_gil, NULL) != 0) {
        printf("FAIL pthread_create\n");
        return 1;
    }
    for (int waited = 0; !done && waited < 2000; waited++) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        nanosleep(&ten_ms, NULL);
    }
    if (!done) {
        printf("BLOCKED\n");
        fflush(stdout);
        _exit(1); /* the other thread is stuck waiting for the GIL */
    }
    pthread_join(thread, NULL);
    release(gil);
    printf(failed ? "FAIL a call returned an error\n" : "OK\n");
    return failed;
}
