/*
 * capi_init_fail.c -- run where the library cannot start (tests/test_capi.py
 * points NUMBA_LN_PYTHON at a broken environment): every call must return
 * NLN_ERR_INIT, never NLN_OK, and leave its outputs alone. One line per call:
 *
 *   CALL <label> <status> <untouched> <nln_last_error()>
 */
#include <stdio.h>

#include <numba_ln.h>

#define SENTINEL 1234.5f

static float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static double xd[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static float y[8], mean[2], rstd[2], dw[4], db[4];
static double yd[8], meand[2], rstdd[2];

static void reset(void)
{
    for (int i = 0; i < 8; i++)
        y[i] = SENTINEL, yd[i] = SENTINEL;
    for (int i = 0; i < 2; i++) {
        mean[i] = rstd[i] = SENTINEL;
        meand[i] = rstdd[i] = SENTINEL;
    }
    for (int i = 0; i < 4; i++)
        dw[i] = db[i] = SENTINEL;
}

static int untouched(void)
{
    for (int i = 0; i < 8; i++)
        if (y[i] != SENTINEL || yd[i] != SENTINEL)
            return 0;
    for (int i = 0; i < 2; i++)
        if (mean[i] != SENTINEL || rstd[i] != SENTINEL || meand[i] != SENTINEL ||
            rstdd[i] != SENTINEL)
            return 0;
    for (int i = 0; i < 4; i++)
        if (dw[i] != SENTINEL || db[i] != SENTINEL)
            return 0;
    return 1;
}

static void report(const char *name, nln_status status)
{
    printf("CALL %s %d %d %s\n", name, (int)status, untouched(), nln_last_error());
    reset();
}

int main(void)
{
    float stats[2] = {2.5f, 2.5f}, inv[2] = {0.9f, 0.9f};
    reset();
    report("nln_layer_norm_f32", nln_layer_norm_f32(x, 4, NULL, NULL, y, 4, mean, rstd, 2, 4,
                                                    1e-5f));
    report("nln_init", nln_init());
    report("nln_layer_norm_f32_again",
           nln_layer_norm_f32(x, 4, NULL, NULL, y, 4, mean, rstd, 2, 4, 1e-5f));
    report("nln_layer_norm_f32_rows_zero",
           nln_layer_norm_f32(x, 4, NULL, NULL, y, 4, NULL, NULL, 0, 4, 1e-5f));
    report("nln_layer_norm_f32_bad_argument",
           nln_layer_norm_f32(NULL, 4, NULL, NULL, y, 4, NULL, NULL, 2, 4, 1e-5f));
    report("nln_layer_norm_f64",
           nln_layer_norm_f64(xd, 4, NULL, NULL, yd, 4, meand, rstdd, 2, 4, 1e-5));
    report("nln_layer_norm_backward_f32",
           nln_layer_norm_backward_f32(x, 4, x, 4, stats, inv, NULL, y, 4, dw, db, 2, 4));
    report("nln_cuda_layer_norm_f32",
           nln_cuda_layer_norm_f32(x, 4, NULL, NULL, y, 4, NULL, NULL, 2, 4, 1e-5f, NULL));
    printf("CUDA_AVAILABLE %d\n", nln_cuda_available());
    printf("VERSION %s\n", nln_version());
    return 0;
}
