/*
 * capi_driver.c -- runs the cases tests/test_capi.py sends on stdin through
 * the CPU functions of numba_ln.h and writes the outputs to stdout.
 *
 * Binary, native endianness. Each case starts with 8 int64 and a double:
 *   op (0 forward, 1 backward), bits (32 or 64), rows, cols, ld_a, ld_b, ld_c,
 *   flags, eps
 * forward:  ld_a = ldx, ld_b = ldy; flags: 1 weight, 2 bias, 4 mean, 8 rstd.
 *           then x[extent(ldx)], weight[cols]?, bias[cols]?,
 *           y[extent(ldy)], mean[rows]?, rstd[rows]?   (initial contents)
 *           out: int64 status, y, mean?, rstd?
 * backward: ld_a = lddy, ld_b = ldx, ld_c = lddx; flags: 1 weight,
 *           16 dweight, 32 dbias.
 *           then dy[extent(lddy)], x[extent(ldx)], mean[rows], rstd[rows],
 *           weight[cols]?, dx[extent(lddx)], dweight[cols]?, dbias[cols]?
 *           out: int64 status, dx, dweight?, dbias?
 * extent(ld) = (rows - 1) * ld + cols, or 0 when rows == 0. A "?" buffer is
 * present only with its flag; without it the function gets NULL.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <numba_ln.h>

enum { HAS_WEIGHT = 1, HAS_BIAS = 2, HAS_MEAN = 4, HAS_RSTD = 8, HAS_DWEIGHT = 16,
       HAS_DBIAS = 32 };

static void *read_buffer(int64_t count, size_t itemsize)
{
    void *data = malloc(count > 0 ? (size_t)count * itemsize : 1);
    if (data == NULL || fread(data, itemsize, (size_t)count, stdin) != (size_t)count) {
        fprintf(stderr, "capi_driver: short input\n");
        exit(2);
    }
    return data;
}

/* A buffer when its flag is set, else NULL. */
static void *read_optional(int64_t flags, int64_t flag, int64_t count, size_t itemsize)
{
    return (flags & flag) ? read_buffer(count, itemsize) : NULL;
}

static void write_buffer(const void *data, int64_t count, size_t itemsize)
{
    if (data != NULL && count > 0)
        fwrite(data, itemsize, (size_t)count, stdout);
}

static int64_t extent(int64_t rows, int64_t ld, int64_t cols)
{
    return rows > 0 ? (rows - 1) * ld + cols : 0;
}

static nln_status forward(int64_t bits, int64_t rows, int64_t cols, int64_t ldx,
                          int64_t ldy, int64_t flags, double eps)
{
    size_t size = bits == 32 ? sizeof(float) : sizeof(double);
    void *x = read_buffer(extent(rows, ldx, cols), size);
    void *weight = read_optional(flags, HAS_WEIGHT, cols, size);
    void *bias = read_optional(flags, HAS_BIAS, cols, size);
    void *y = read_buffer(extent(rows, ldy, cols), size);
    void *mean = read_optional(flags, HAS_MEAN, rows, size);
    void *rstd = read_optional(flags, HAS_RSTD, rows, size);
    nln_status status;

    if (bits == 32)
        status = nln_layer_norm_f32(x, ldx, weight, bias, y, ldy, mean, rstd, rows, cols,
                                    (float)eps);
    else
        status = nln_layer_norm_f64(x, ldx, weight, bias, y, ldy, mean, rstd, rows, cols,
                                    eps);
    int64_t code = status;
    fwrite(&code, sizeof code, 1, stdout);
    write_buffer(y, extent(rows, ldy, cols), size);
    write_buffer(mean, rows, size);
    write_buffer(rstd, rows, size);
    free(x);
    free(weight);
    free(bias);
    free(y);
    free(mean);
    free(rstd);
    return status;
}

static nln_status backward(int64_t bits, int64_t rows, int64_t cols, int64_t lddy,
                           int64_t ldx, int64_t lddx, int64_t flags)
{
    size_t size = bits == 32 ? sizeof(float) : sizeof(double);
    void *dy = read_buffer(extent(rows, lddy, cols), size);
    void *x = read_buffer(extent(rows, ldx, cols), size);
    void *mean = read_buffer(rows, size);
    void *rstd = read_buffer(rows, size);
    void *weight = read_optional(flags, HAS_WEIGHT, cols, size);
    void *dx = read_buffer(extent(rows, lddx, cols), size);
    void *dweight = read_optional(flags, HAS_DWEIGHT, cols, size);
    void *dbias = read_optional(flags, HAS_DBIAS, cols, size);
    nln_status status;

    if (bits == 32)
        status = nln_layer_norm_backward_f32(dy, lddy, x, ldx, mean, rstd, weight, dx, lddx,
                                             dweight, dbias, rows, cols);
    else
        status = nln_layer_norm_backward_f64(dy, lddy, x, ldx, mean, rstd, weight, dx, lddx,
                                             dweight, dbias, rows, cols);
    int64_t code = status;
    fwrite(&code, sizeof code, 1, stdout);
    write_buffer(dx, extent(rows, lddx, cols), size);
    write_buffer(dweight, cols, size);
    write_buffer(dbias, cols, size);
    free(dy);
    free(x);
    free(mean);
    free(rstd);
    free(weight);
    free(dx);
    free(dweight);
    free(dbias);
    return status;
}

int main(void)
{
    int64_t head[8];
    double eps;

    while (fread(head, sizeof(int64_t), 8, stdin) == 8) {
        nln_status status;
        if (fread(&eps, sizeof eps, 1, stdin) != 1) {
            fprintf(stderr, "capi_driver: short input\n");
            return 2;
        }
        if (head[0] == 0)
            status = forward(head[1], head[2], head[3], head[4], head[5], head[7], eps);
        else
            status = backward(head[1], head[2], head[3], head[4], head[5], head[6], head[7]);
        if (status != NLN_OK)
            fprintf(stderr, "capi_driver: %s: %s\n", nln_status_string(status),
                    nln_last_error());
    }
    return 0;
}
