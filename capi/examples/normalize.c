/*
 * normalize.c -- layer-normalize a matrix from C with numba-ln.
 *
 * Reads "ROWS COLS" and then ROWS * COLS numbers (any whitespace) from stdin,
 * normalizes each row (mean 0, variance 1, eps = 1e-5 unless given as the
 * first argument) in double precision, and writes the result to stdout, one
 * row per line, followed by a line "# mean rstd" and one line of both
 * statistics per row.
 *
 *   python capi/build.py --outdir build
 *   gcc -Wall -Werror capi/examples/normalize.c \
 *       $(pkg-config --cflags --libs build/numba_ln.pc) -o normalize
 *   printf '2 3\n1 2 3\n10 10 40\n' | ./normalize
 */
#include <stdio.h>
#include <stdlib.h>

#include <numba_ln.h>

int main(int argc, char **argv)
{
    long long rows, cols;
    double eps = argc > 1 ? strtod(argv[1], NULL) : 1e-5;
    double *x, *y, *mean, *rstd;
    nln_status status;

    if (scanf("%lld %lld", &rows, &cols) != 2 || rows < 0 || cols <= 0) {
        fprintf(stderr, "normalize: expected 'ROWS COLS' (ROWS >= 0, COLS > 0) first\n");
        return 2;
    }
    x = malloc(sizeof(double) * (size_t)(rows * cols + 1));
    y = malloc(sizeof(double) * (size_t)(rows * cols + 1));
    mean = malloc(sizeof(double) * (size_t)(rows + 1));
    rstd = malloc(sizeof(double) * (size_t)(rows + 1));
    if (!x || !y || !mean || !rstd) {
        fprintf(stderr, "normalize: out of memory\n");
        return 1;
    }
    for (long long i = 0; i < rows * cols; i++) {
        if (scanf("%lf", &x[i]) != 1) {
            fprintf(stderr, "normalize: expected %lld numbers, read %lld\n", rows * cols, i);
            return 2;
        }
    }

    /* Contiguous rows: the row stride (ld) of x and y is cols. No weight or bias. */
    status = nln_layer_norm_f64(x, cols, NULL, NULL, y, cols, mean, rstd, rows, cols, eps);
    if (status != NLN_OK) {
        fprintf(stderr, "normalize: %s (%s)\n", nln_status_string(status), nln_last_error());
        return 1;
    }

    for (long long r = 0; r < rows; r++)
        for (long long c = 0; c < cols; c++)
            printf("%.17g%c", y[r * cols + c], c + 1 == cols ? '\n' : ' ');
    printf("# mean rstd\n");
    for (long long r = 0; r < rows; r++)
        printf("%.17g %.17g\n", mean[r], rstd[r]);
    free(x);
    free(y);
    free(mean);
    free(rstd);
    return 0;
}
