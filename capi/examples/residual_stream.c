/*
 * residual_stream.c -- the fused residual add of pre-norm transformer blocks,
 * from C with numba-ln.
 *
 * A pre-norm transformer keeps a residual stream h. Each block adds the
 * previous sub-layer's output to it and normalizes the sum for the next
 * sub-layer:  h = h + out;  y = rms_norm(h) * weight.  nln_add_rms_norm_f32
 * does both in one pass, and with s == residual it updates h in place.
 * Here a "sub-layer" is out = y / 2, for three blocks; then the backward pass
 * of the last block, given dy = 1 and the gradient reaching h through the
 * skip path (dh = 1/10): dx is the gradient of both out and h.
 *
 * Prints h, the last y, dx and dweight, one labelled line each (float32,
 * %.9g: every value reads back exactly).
 *
 *   python capi/build.py --outdir build
 *   gcc -Wall -Werror capi/examples/residual_stream.c \
 *       $(pkg-config --cflags --libs build/numba_ln.pc) -o residual_stream
 *   ./residual_stream
 */
#include <stdio.h>

#include <numba_ln.h>

#define ROWS 4
#define COLS 8
#define N (ROWS * COLS)

static void print_row(const char *label, const float *values, int count)
{
    printf("%s", label);
    for (int i = 0; i < count; i++)
        printf(" %.9g", values[i]);
    printf("\n");
}

static int failed(nln_status status)
{
    if (status != NLN_OK)
        fprintf(stderr, "residual_stream: %s (%s)\n", nln_status_string(status),
                nln_last_error());
    return status != NLN_OK;
}

int main(void)
{
    float h[N], out[N], y[N], rstd[ROWS], weight[COLS];
    float dy[N], dh[N], dx[N], dweight[COLS];

    for (int i = 0; i < N; i++) {
        h[i] = (float)((i * 37) % 11) / 4.0f - 1.0f;
        out[i] = (float)((i * 13) % 7) / 8.0f;
        dy[i] = 1.0f;
        dh[i] = 0.1f;
    }
    for (int j = 0; j < COLS; j++)
        weight[j] = 1.0f + 0.125f * (float)j;

    for (int block = 0; block < 3; block++) {
        /* h += out; y = rms_norm(h) * weight. Contiguous rows: every ld is COLS. */
        if (failed(nln_add_rms_norm_f32(out, COLS, h, COLS, weight, y, COLS, h, COLS, rstd,
                                        ROWS, COLS, 1e-5f)))
            return 1;
        for (int i = 0; i < N; i++)
            out[i] = 0.5f * y[i];
    }
    /* The last block's backward: h holds its s, rstd its statistics. */
    if (failed(nln_add_rms_norm_backward_f32(dy, COLS, h, COLS, rstd, weight, dh, COLS, dx,
                                             COLS, dweight, ROWS, COLS)))
        return 1;

    print_row("h", h, N);
    print_row("y", y, N);
    print_row("dx", dx, N);
    print_row("dweight", dweight, COLS);
    return 0;
}
