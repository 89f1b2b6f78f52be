/*
 * capi_errors.c -- every way to call numba_ln.h wrongly, and the edges that
 * are not errors. One line per case on stdout:
 *
 *   CASE <name> <status> <untouched> <nln_last_error()>
 *
 * <untouched> is 1 when every output buffer still holds its sentinel (for
 * backward over zero rows: when dx does, and dweight/dbias are zero). Other
 * lines: "VERSION <nln_version()>", "STATUS <code> <nln_status_string()>",
 * "CUDA_AVAILABLE <0|1>", "FIRST_ERROR <message before any failure>",
 * "AFTER_SUCCESS <status> <message after a later successful call>",
 * "THREAD_ERROR <a second thread's message after its failed call>",
 * "OTHER_THREAD <status> <this thread's message after that>".
 *
 * Sizes past the address space: each function (CPU and GPU, forward and
 * backward, float32 and float64) with one matrix's stride set to each of
 * OVERFLOW_LDS in turn, "overflow_<function>_<matrix>_<stride>", and with
 * OVERFLOW_ROWS rows of the smallest stride, "overflow_<function>_rows".
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <numba_ln.h>

#define ROWS 3
#define COLS 4
#define LD 6
#define N (ROWS * LD)
#define SENTINEL 1234.5

static float xf[N], yf[N], wf[COLS], bf[COLS], meanf[ROWS], rstdf[ROWS];
static float dyf[N], dxf[N], dwf[COLS], dbf[COLS];
static double xd[N], yd[N], meand[ROWS], rstdd[ROWS], dyd[N], dxd[N], dwd[COLS], dbd[COLS];

static void reset(void)
{
    for (int i = 0; i < N; i++) {
        xf[i] = dyf[i] = (float)(i % 7) - 2.0f;
        xd[i] = dyd[i] = (double)(i % 7) - 2.0;
        yf[i] = dxf[i] = (float)SENTINEL;
        yd[i] = dxd[i] = SENTINEL;
    }
    for (int i = 0; i < COLS; i++) {
        wf[i] = 1.5f;
        bf[i] = 0.5f;
        dwf[i] = dbf[i] = (float)SENTINEL;
        dwd[i] = dbd[i] = SENTINEL;
    }
    for (int i = 0; i < ROWS; i++) {
        meanf[i] = rstdf[i] = (float)SENTINEL;
        meand[i] = rstdd[i] = SENTINEL;
    }
}

/* The inputs of a backward case: mean and rstd are inputs there. */
static void reset_backward(void)
{
    reset();
    for (int i = 0; i < ROWS; i++) {
        meanf[i] = 0.5f;
        rstdf[i] = 2.0f;
        meand[i] = 0.5;
        rstdd[i] = 2.0;
    }
}

static int untouched_forward(void)
{
    for (int i = 0; i < N; i++)
        if (yf[i] != (float)SENTINEL || yd[i] != SENTINEL)
            return 0;
    for (int i = 0; i < ROWS; i++)
        if (meanf[i] != (float)SENTINEL || rstdf[i] != (float)SENTINEL ||
            meand[i] != SENTINEL || rstdd[i] != SENTINEL)
            return 0;
    return 1;
}

static int untouched_backward(void)
{
    for (int i = 0; i < N; i++)
        if (dxf[i] != (float)SENTINEL || dxd[i] != SENTINEL)
            return 0;
    for (int i = 0; i < COLS; i++)
        if (dwf[i] != (float)SENTINEL || dbf[i] != (float)SENTINEL ||
            dwd[i] != SENTINEL || dbd[i] != SENTINEL)
            return 0;
    return 1;
}

/* Backward over zero rows: dx untouched, dweight and dbias set to zero. */
static int zero_rows_backward_f32(void)
{
    for (int i = 0; i < N; i++)
        if (dxf[i] != (float)SENTINEL)
            return 0;
    for (int i = 0; i < COLS; i++)
        if (dwf[i] != 0.0f || dbf[i] != 0.0f)
            return 0;
    return 1;
}

static int zero_rows_backward_f64(void)
{
    for (int i = 0; i < N; i++)
        if (dxd[i] != SENTINEL)
            return 0;
    for (int i = 0; i < COLS; i++)
        if (dwd[i] != 0.0 || dbd[i] != 0.0)
            return 0;
    return 1;
}

static void report(const char *name, nln_status status, int untouched)
{
    printf("CASE %s %d %d %s\n", name, (int)status, untouched, nln_last_error());
}

/* The call first, then the check of its outputs (argument order is unspecified). */
#define CHECKED(name, call, check)                                                      \
    do {                                                                                \
        nln_status s_ = (call);                                                         \
        report(name, s_, check);                                                        \
    } while (0)

#define FWD32(name, x, ldx, y, ldy, rows, cols, eps)                                    \
    do {                                                                                \
        reset();                                                                        \
        nln_status s_ = nln_layer_norm_f32(x, ldx, wf, bf, y, ldy, meanf, rstdf, rows,  \
                                           cols, eps);                                  \
        report(name, s_, untouched_forward());                                          \
    } while (0)

#define FWD64(name, x, ldx, y, ldy, rows, cols, eps)                                    \
    do {                                                                                \
        reset();                                                                        \
        nln_status s_ = nln_layer_norm_f64(x, ldx, NULL, NULL, y, ldy, meand, rstdd,    \
                                           rows, cols, eps);                            \
        report(name, s_, untouched_forward());                                          \
    } while (0)

#define BWD32(name, dy, lddy, x, ldx, mean, rstd, dx, lddx, rows, cols)                 \
    do {                                                                                \
        reset_backward();                                                               \
        nln_status s_ = nln_layer_norm_backward_f32(dy, lddy, x, ldx, mean, rstd, wf,   \
                                                    dx, lddx, dwf, dbf, rows, cols);    \
        report(name, s_, untouched_backward());                                         \
    } while (0)

#define BWD64(name, dy, lddy, x, ldx, mean, rstd, dx, lddx, rows, cols)                 \
    do {                                                                                \
        reset_backward();                                                               \
        nln_status s_ = nln_layer_norm_backward_f64(dy, lddy, x, ldx, mean, rstd, NULL, \
                                                    dx, lddx, dwd, dbd, rows, cols);    \
        report(name, s_, untouched_backward());                                         \
    } while (0)

/* A buffer 8 bytes before the end of the address space. */
#define NEAR_TOP(T) ((T *)(UINTPTR_MAX - 7))

/* Strides and a row count whose span, (rows - 1) * ld + cols elements, does
 * not fit in the address space with rows = ROWS_2 (ld) or ld = COLS (rows). */
#define ROWS_2 2
#define OVERFLOW_ROWS ((int64_t)1 << 62)
static const struct {
    const char *name;
    int64_t ld;
} overflow_lds[] = {{"ld62", (int64_t)1 << 62}, {"ld61", (int64_t)1 << 61},
                    {"ldmax", INT64_MAX}};

/* A function of numba_ln.h called with the three strides of its matrices
 * (inputs first; forward has two) and a row count, on this file's buffers. */
typedef nln_status (*strided_call)(const int64_t ld[3], int64_t rows);

static nln_status fwd32_strided(const int64_t ld[3], int64_t rows)
{
    return nln_layer_norm_f32(xf, ld[0], wf, bf, yf, ld[1], meanf, rstdf, rows, COLS, 1e-5f);
}

static nln_status fwd64_strided(const int64_t ld[3], int64_t rows)
{
    return nln_layer_norm_f64(xd, ld[0], NULL, NULL, yd, ld[1], meand, rstdd, rows, COLS,
                              1e-5);
}

static nln_status bwd32_strided(const int64_t ld[3], int64_t rows)
{
    return nln_layer_norm_backward_f32(dyf, ld[0], xf, ld[1], meanf, rstdf, wf, dxf, ld[2],
                                       dwf, dbf, rows, COLS);
}

static nln_status bwd64_strided(const int64_t ld[3], int64_t rows)
{
    return nln_layer_norm_backward_f64(dyd, ld[0], xd, ld[1], meand, rstdd, NULL, dxd, ld[2],
                                       dwd, dbd, rows, COLS);
}

/* The GPU functions check sizes before they look for a device: host
 * pointers are never dereferenced. */
static nln_status cuda_fwd32_strided(const int64_t ld[3], int64_t rows)
{
    return nln_cuda_layer_norm_f32(xf, ld[0], wf, bf, yf, ld[1], meanf, rstdf, rows, COLS,
                                   1e-5f, NULL);
}

static nln_status cuda_fwd64_strided(const int64_t ld[3], int64_t rows)
{
    return nln_cuda_layer_norm_f64(xd, ld[0], NULL, NULL, yd, ld[1], meand, rstdd, rows,
                                   COLS, 1e-5, NULL);
}

static nln_status cuda_bwd32_strided(const int64_t ld[3], int64_t rows)
{
    return nln_cuda_layer_norm_backward_f32(dyf, ld[0], xf, ld[1], meanf, rstdf, wf, dxf,
                                            ld[2], dwf, dbf, rows, COLS, NULL);
}

static nln_status cuda_bwd64_strided(const int64_t ld[3], int64_t rows)
{
    return nln_cuda_layer_norm_backward_f64(dyd, ld[0], xd, ld[1], meand, rstdd, NULL, dxd,
                                            ld[2], dwd, dbd, rows, COLS, NULL);
}

static const struct {
    const char *name;
    strided_call call;
    int backward;
} strided_functions[] = {
    {"fwd", fwd32_strided, 0},           {"fwd64", fwd64_strided, 0},
    {"bwd", bwd32_strided, 1},           {"bwd64", bwd64_strided, 1},
    {"cuda_fwd", cuda_fwd32_strided, 0}, {"cuda_fwd64", cuda_fwd64_strided, 0},
    {"cuda_bwd", cuda_bwd32_strided, 1}, {"cuda_bwd64", cuda_bwd64_strided, 1},
};

/* One strided call with its inputs reset; report its status and outputs. */
static void report_strided(const char *name, int f, const int64_t ld[3], int64_t rows)
{
    int backward = strided_functions[f].backward;
    if (backward)
        reset_backward();
    else
        reset();
    nln_status status = strided_functions[f].call(ld, rows);
    report(name, status, backward ? untouched_backward() : untouched_forward());
}

static void overflow_cases(void)
{
    static const char *const matrices[2][3] = {{"x", "y"}, {"dy", "x", "dx"}};
    char name[96];
    for (int f = 0; f < (int)(sizeof strided_functions / sizeof strided_functions[0]); f++) {
        int backward = strided_functions[f].backward;
        const int64_t small[3] = {COLS, COLS, COLS};
        for (int m = 0; m < 2 + backward; m++)
            for (int k = 0; k < (int)(sizeof overflow_lds / sizeof overflow_lds[0]); k++) {
                int64_t ld[3] = {LD, LD, LD};
                ld[m] = overflow_lds[k].ld;
                snprintf(name, sizeof name, "overflow_%s_%s_%s", strided_functions[f].name,
                         matrices[backward][m], overflow_lds[k].name);
                report_strided(name, f, ld, ROWS_2);
            }
        snprintf(name, sizeof name, "overflow_%s_rows", strided_functions[f].name);
        report_strided(name, f, small, OVERFLOW_ROWS);
    }
}

static char thread_error[1024];

static void *fail_in_thread(void *arg)
{
    (void)arg;
    nln_layer_norm_f32(xf, LD, NULL, NULL, yf, LD, NULL, NULL, ROWS, 0, 1e-5f);
    snprintf(thread_error, sizeof thread_error, "%s", nln_last_error());
    return NULL;
}

int main(void)
{
    const int64_t huge = (int64_t)1 << 40;
    pthread_t thread;

    printf("VERSION %s\n", nln_version());
    for (int s = 0; s <= 5; s++)
        printf("STATUS %d %s\n", s, nln_status_string((nln_status)s));
    printf("STATUS 42 %s\n", nln_status_string((nln_status)42));
    printf("FIRST_ERROR %s\n", nln_last_error());
    printf("INIT %d\n", (int)nln_init());

    /* forward, float32 */
    FWD32("fwd_x_null", NULL, LD, yf, LD, ROWS, COLS, 1e-5f);
    FWD32("fwd_y_null", xf, LD, NULL, LD, ROWS, COLS, 1e-5f);
    FWD32("fwd_rows_negative", xf, LD, yf, LD, -1, COLS, 1e-5f);
    FWD32("fwd_cols_zero", xf, LD, yf, LD, ROWS, 0, 1e-5f);
    FWD32("fwd_cols_negative", xf, LD, yf, LD, ROWS, -3, 1e-5f);
    FWD32("fwd_ldx_small", xf, COLS - 1, yf, LD, ROWS, COLS, 1e-5f);
    FWD32("fwd_ldy_small", xf, LD, yf, COLS - 1, ROWS, COLS, 1e-5f);
    FWD32("fwd_ldx_negative", xf, -LD, yf, LD, ROWS, COLS, 1e-5f);
    FWD32("fwd_eps_negative", xf, LD, yf, LD, ROWS, COLS, -1.0f);
    FWD32("fwd_eps_nan", xf, LD, yf, LD, ROWS, COLS, nanf(""));
    FWD32("fwd_eps_inf", xf, LD, yf, LD, ROWS, COLS, INFINITY);
    FWD32("fwd_eps_minus_inf", xf, LD, yf, LD, ROWS, COLS, -INFINITY);
    FWD32("fwd_extent_overflow", xf, huge, yf, LD, huge, COLS, 1e-5f);
    FWD32("fwd_rows_zero", xf, LD, yf, LD, 0, COLS, 1e-5f);
    /* forward, float64 */
    FWD64("fwd64_x_null", NULL, LD, yd, LD, ROWS, COLS, 1e-5);
    FWD64("fwd64_ldy_small", xd, LD, yd, 2, ROWS, COLS, 1e-5);
    FWD64("fwd64_eps_nan", xd, LD, yd, LD, ROWS, COLS, nan(""));
    FWD64("fwd64_eps_negative", xd, LD, yd, LD, ROWS, COLS, -1e-300);
    FWD64("fwd64_rows_zero", xd, LD, yd, LD, 0, COLS, 1e-5);
    /* backward, float32 */
    BWD32("bwd_dy_null", NULL, LD, xf, LD, meanf, rstdf, dxf, LD, ROWS, COLS);
    BWD32("bwd_x_null", dyf, LD, NULL, LD, meanf, rstdf, dxf, LD, ROWS, COLS);
    BWD32("bwd_mean_null", dyf, LD, xf, LD, NULL, rstdf, dxf, LD, ROWS, COLS);
    BWD32("bwd_rstd_null", dyf, LD, xf, LD, meanf, NULL, dxf, LD, ROWS, COLS);
    BWD32("bwd_dx_null", dyf, LD, xf, LD, meanf, rstdf, NULL, LD, ROWS, COLS);
    BWD32("bwd_lddy_small", dyf, 1, xf, LD, meanf, rstdf, dxf, LD, ROWS, COLS);
    BWD32("bwd_ldx_small", dyf, LD, xf, 1, meanf, rstdf, dxf, LD, ROWS, COLS);
    BWD32("bwd_lddx_small", dyf, LD, xf, LD, meanf, rstdf, dxf, 1, ROWS, COLS);
    BWD32("bwd_rows_negative", dyf, LD, xf, LD, meanf, rstdf, dxf, LD, -5, COLS);
    BWD32("bwd_cols_zero", dyf, LD, xf, LD, meanf, rstdf, dxf, LD, ROWS, 0);
    BWD32("bwd_extent_overflow", dyf, LD, xf, LD, meanf, rstdf, dxf, huge, huge, COLS);
    reset_backward();
    CHECKED("bwd_rows_zero",
           nln_layer_norm_backward_f32(dyf, LD, xf, LD, meanf, rstdf, wf, dxf, LD, dwf, dbf,
                                       0, COLS), zero_rows_backward_f32());
    /* backward, float64 */
    BWD64("bwd64_mean_null", dyd, LD, xd, LD, NULL, rstdd, dxd, LD, ROWS, COLS);
    BWD64("bwd64_cols_negative", dyd, LD, xd, LD, meand, rstdd, dxd, LD, ROWS, -1);
    reset_backward();
    CHECKED("bwd64_rows_zero",
           nln_layer_norm_backward_f64(dyd, LD, xd, LD, meand, rstdd, NULL, dxd, LD, dwd,
                                       dbd, 0, COLS), zero_rows_backward_f64());

    /* GPU: argument errors first, whatever the machine; then, without a GPU,
       valid calls report NLN_ERR_NO_DEVICE. */
    int cuda = nln_cuda_available();
    printf("CUDA_AVAILABLE %d\n", cuda);
    reset();
    CHECKED("cuda_fwd_x_null",
           nln_cuda_layer_norm_f32(NULL, LD, NULL, NULL, yf, LD, NULL, NULL, ROWS, COLS,
                                   1e-5f, NULL), untouched_forward());
    reset();
    CHECKED("cuda_fwd64_eps_nan",
           nln_cuda_layer_norm_f64(xd, LD, NULL, NULL, yd, LD, NULL, NULL, ROWS, COLS,
                                   nan(""), NULL), untouched_forward());
    reset_backward();
    CHECKED("cuda_bwd_ldx_small",
           nln_cuda_layer_norm_backward_f32(dyf, LD, xf, 2, meanf, rstdf, NULL, dxf, LD,
                                            NULL, NULL, ROWS, COLS, NULL),
           untouched_backward());
    reset_backward();
    CHECKED("cuda_bwd64_rstd_null",
           nln_cuda_layer_norm_backward_f64(dyd, LD, xd, LD, meand, NULL, NULL, dxd, LD,
                                            NULL, NULL, ROWS, COLS, NULL),
           untouched_backward());
    if (!cuda) {
        /* Host pointers: never dereferenced, the device check comes first. */
        reset();
        CHECKED("cuda_fwd_no_device",
               nln_cuda_layer_norm_f32(xf, LD, wf, bf, yf, LD, meanf, rstdf, ROWS, COLS,
                                       1e-5f, NULL), untouched_forward());
        reset();
        CHECKED("cuda_fwd64_no_device",
               nln_cuda_layer_norm_f64(xd, LD, NULL, NULL, yd, LD, meand, rstdd, ROWS,
                                       COLS, 1e-5, NULL), untouched_forward());
        reset_backward();
        CHECKED("cuda_bwd_no_device",
               nln_cuda_layer_norm_backward_f32(dyf, LD, xf, LD, meanf, rstdf, wf, dxf, LD,
                                                dwf, dbf, ROWS, COLS, NULL),
               untouched_backward());
        reset_backward();
        CHECKED("cuda_bwd64_no_device",
               nln_cuda_layer_norm_backward_f64(dyd, LD, xd, LD, meand, rstdd, NULL, dxd,
                                                LD, dwd, dbd, ROWS, COLS, NULL),
               untouched_backward());
        reset();
        CHECKED("cuda_fwd_rows_zero_no_device",
               nln_cuda_layer_norm_f32(xf, LD, NULL, NULL, yf, LD, NULL, NULL, 0, COLS,
                                       1e-5f, NULL), untouched_forward());
    }

    /* Sizes past the address space, and buffers that run past its end. */
    overflow_cases();
    reset();
    CHECKED("fwd_x_wraps",
            nln_layer_norm_f32(NEAR_TOP(const float), LD, NULL, NULL, yf, LD, NULL, NULL,
                               ROWS, COLS, 1e-5f), untouched_forward());
    reset();
    CHECKED("fwd_weight_wraps",
            nln_layer_norm_f32(xf, LD, NEAR_TOP(const float), NULL, yf, LD, NULL, NULL,
                               ROWS, COLS, 1e-5f), untouched_forward());
    reset();
    CHECKED("fwd64_rstd_wraps",
            nln_layer_norm_f64(xd, LD, NULL, NULL, yd, LD, meand, NEAR_TOP(double), ROWS,
                               COLS, 1e-5), untouched_forward());
    reset_backward();
    CHECKED("bwd_mean_wraps",
            nln_layer_norm_backward_f32(dyf, LD, xf, LD, NEAR_TOP(const float), rstdf, NULL,
                                        dxf, LD, dwf, dbf, ROWS, COLS), untouched_backward());
    reset_backward();
    CHECKED("bwd64_dbias_wraps",
            nln_layer_norm_backward_f64(dyd, LD, xd, LD, meand, rstdd, NULL, dxd, LD, dwd,
                                        NEAR_TOP(double), ROWS, COLS), untouched_backward());
    reset_backward();
    CHECKED("cuda_bwd_dx_wraps",
            nln_cuda_layer_norm_backward_f32(dyf, LD, xf, LD, meanf, rstdf, NULL,
                                             NEAR_TOP(float), LD, NULL, NULL, ROWS, COLS,
                                             NULL), untouched_backward());

    /* The last error survives a successful call... */
    nln_layer_norm_f32(NULL, LD, NULL, NULL, yf, LD, NULL, NULL, ROWS, COLS, 1e-5f);
    reset();
    nln_status ok = nln_layer_norm_f32(xf, LD, NULL, NULL, yf, LD, NULL, NULL, ROWS, COLS,
                                       1e-5f);
    printf("AFTER_SUCCESS %d %s\n", (int)ok, nln_last_error());
    /* ...and belongs to the thread that failed. */
    reset();
    ok = nln_layer_norm_f32(xf, LD, NULL, NULL, yf, LD, NULL, NULL, ROWS, COLS, 1e-5f);
    if (pthread_create(&thread, NULL, fail_in_thread, NULL) != 0 ||
        pthread_join(thread, NULL) != 0) {
        fprintf(stderr, "capi_errors: pthread failed\n");
        return 1;
    }
    printf("THREAD_ERROR %s\n", thread_error);
    printf("OTHER_THREAD %d %s\n", (int)ok, nln_last_error());
    return 0;
}
