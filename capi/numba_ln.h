/*
 * numba_ln.h -- the C interface of numba-ln: layer normalization, forward and
 * backward, on the CPU and on NVIDIA GPUs.
 *
 * Link with libnumba_ln.so (see numba_ln.pc). The library embeds the Python
 * interpreter and the environment it was built from; a C program needs no
 * Python and no environment variables. The first call (or nln_init()) starts
 * that interpreter and loads the compiled kernels; after that, CPU calls run
 * compiled code only: they never execute Python and never take the
 * interpreter's lock (GIL). Large calls -- numba-ln's one plan decides which,
 * for this library and its Python API alike -- run on the library's own
 * threads (see OMP_NUM_THREADS below), in a fixed schedule: results do not
 * depend on the thread count. The library is
 * fork-safe: a child may call it at any time after a fork(), even one made
 * while another thread was inside a call. From a Python program, threads may
 * call with or without the GIL (ctypes.CDLL releases it, ctypes.PyDLL keeps
 * it); one that holds it releases it while it waits for another thread's
 * first call to start the library, and holds it again when it returns.
 *
 * Conventions
 * -----------
 * - A matrix has `rows` rows of `cols` elements; row r starts at element
 *   r * ld of its buffer (`ld*` = row stride in elements, >= cols). Elements
 *   between cols and ld of a row (padding) are never read or written.
 *   A buffer must hold at least (rows - 1) * ld + cols elements. A buffer
 *   whose size in bytes exceeds PTRDIFF_MAX, or that would run past the end
 *   of the address space, is NLN_ERR_INVALID_ARGUMENT.
 * - Inputs come first, then outputs. Inputs are const.
 * - 16-bit data: the _f16 and _bf16 functions take their data, gains and
 *   biases as 16-bit values in uint16_t (host byte order), and their
 *   statistics (mean, rstd), parameter gradients (dweight, dbias) and eps as
 *   float. _f16 is IEEE 754 binary16: 1 sign bit, 5 exponent bits, 10
 *   fraction bits (C23's _Float16 and CUDA's __half have these bits).
 *   _bf16 is bfloat16: the top 16 bits of an IEEE 754 binary32 -- 1 sign, 8
 *   exponent, 7 fraction bits -- so (uint32_t)b << 16 is the float's bit
 *   pattern (CUDA's __nv_bfloat16 has these bits). They compute in float32;
 *   every 16-bit result (y, s, dx) is rounded to nearest, ties to even, and
 *   a NaN stays a NaN.
 * - For each row: y = (x - mean) * rstd * weight + bias, with
 *   mean = sum(x) / cols, var = sum((x - mean)^2) / cols (biased) and
 *   rstd = 1 / sqrt(var + eps). RMSNorm (nln_rms_norm_*) does not center:
 *   y = x * rstd * weight with rstd = 1 / sqrt(sum(x^2) / cols + eps).
 * - The fused forms (nln_add_*) normalize s = x + residual (rounded to the
 *   precision) and store s too, for the next block of a transformer; their
 *   backward forms add the gradient that reaches s through the skip path.
 * - Every function returns an nln_status; on failure nln_last_error() says
 *   what was wrong. After NLN_ERR_INVALID_ARGUMENT, NLN_ERR_NO_DEVICE or
 *   NLN_ERR_INIT no output has been written; after NLN_ERR_INTERNAL (a kernel
 *   failed midway) outputs may be partly written.
 * - All functions may be called from any number of threads at once.
 *   Results do not depend on the thread count or on concurrent callers.
 * - GPU functions take device pointers (cudaMalloc / cuMemAlloc) and a
 *   cudaStream_t (or CUstream) passed as void * (NULL: the default stream).
 *   They enqueue work on that stream and may return before it finishes.
 *
 * Environment (all optional)
 * --------------------------
 *   NUMBA_LN_PYTHON   the python executable whose environment (venv) holds
 *                     numba_ln; overrides the one recorded at build time.
 *   NUMBA_CACHE_DIR   where numba keeps compiled kernels (numba's own variable).
 *                     With no writable cache directory (a read-only install),
 *                     the kernels cached in the package are used if they were
 *                     built from its sources, else they are compiled in memory.
 *   NUMBA_LN_NO_CACHE 1: compile in memory, never read or write a cache.
 *   OMP_NUM_THREADS   how many threads a large call runs on, the caller's
 *                     included (its leading integer, if positive); by default
 *                     one per CPU the process may run on (sched_getaffinity).
 *                     Read once, at the first large call.
 */
#ifndef NUMBA_LN_H
#define NUMBA_LN_H

#include <stdint.h>

#define NLN_VERSION_MAJOR 0
#define NLN_VERSION_MINOR 1
#define NLN_VERSION_PATCH 0
#define NLN_VERSION_STRING "0.1.0"
/* One integer that grows with each release: 10000 * major + 100 * minor + patch. */
#define NLN_VERSION_NUMBER \
    (NLN_VERSION_MAJOR * 10000 + NLN_VERSION_MINOR * 100 + NLN_VERSION_PATCH)

#if defined(_WIN32)
#  if defined(NLN_BUILDING_LIBRARY)
#    define NLN_API __declspec(dllexport)
#  else
#    define NLN_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define NLN_API __attribute__((visibility("default")))
#else
#  define NLN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* What a call did. The values are part of the ABI and never change. */
typedef enum nln_status {
    NLN_OK = 0,                   /* success */
    NLN_ERR_INVALID_ARGUMENT = 1, /* a NULL required pointer, a bad size, stride or eps */
    NLN_ERR_UNSUPPORTED = 2,      /* valid, but not supported by this build or backend */
    NLN_ERR_NO_DEVICE = 3,        /* a GPU function, and no usable GPU here */
    NLN_ERR_INIT = 4,             /* the embedded Python or the kernels failed to load */
    NLN_ERR_INTERNAL = 5          /* anything else; a bug worth reporting */
} nln_status;

/* The library's version, "MAJOR.MINOR.PATCH"; equals NLN_VERSION_STRING of
 * the header it was built with. Never NULL; needs no initialization. */
NLN_API const char *nln_version(void);

/* A static English name for `status`, e.g. "NLN_ERR_INVALID_ARGUMENT: invalid
 * argument". Unknown values give "unknown nln_status". Never NULL. */
NLN_API const char *nln_status_string(nln_status status);

/* The message of the calling thread's most recent failed call, e.g.
 * "nln_layer_norm_f32: ldx (3) must be >= cols (4)"; "" if no call on this
 * thread has failed. Successful calls leave it unchanged. The string belongs
 * to the library and stays valid until this thread's next failing call. */
NLN_API const char *nln_last_error(void);

/* Optional: start the embedded interpreter and load (or, with an empty numba
 * cache, compile) every CPU kernel now, instead of on the first call.
 * Idempotent and thread-safe; the outcome is decided once per process: if it
 * fails, this and every later call return NLN_ERR_INIT. */
NLN_API nln_status nln_init(void);

/* Layer normalization forward, float32.
 *
 *   x       [in]  rows x cols matrix, row stride ldx. Required.
 *   ldx     [in]  row stride of x in elements, >= cols.
 *   weight  [in]  cols gains; NULL means all ones.
 *   bias    [in]  cols biases; NULL means all zeros.
 *   y       [out] rows x cols result, row stride ldy. Required. May be x
 *                 itself (with ldy == ldx) to normalize in place; any other
 *                 overlap with an input is undefined.
 *   ldy     [in]  row stride of y in elements, >= cols.
 *   mean    [out] rows row means; NULL if not wanted.
 *   rstd    [out] rows reciprocal standard deviations 1/sqrt(var + eps);
 *                 NULL if not wanted.
 *   rows    [in]  number of rows, >= 0 (0: nothing to do, NLN_OK).
 *   cols    [in]  elements per row, > 0.
 *   eps     [in]  added to the variance; finite and >= 0.
 *
 * Returns NLN_OK, NLN_ERR_INVALID_ARGUMENT, NLN_ERR_INIT, or NLN_ERR_INTERNAL
 * if the kernel raised. A NaN or Inf in a row makes that row's outputs NaN and
 * no other row's. */
NLN_API nln_status nln_layer_norm_f32(const float *x, int64_t ldx,
                                      const float *weight, const float *bias,
                                      float *y, int64_t ldy,
                                      float *mean, float *rstd,
                                      int64_t rows, int64_t cols, float eps);

/* As nln_layer_norm_f32, in double precision. */
NLN_API nln_status nln_layer_norm_f64(const double *x, int64_t ldx,
                                      const double *weight, const double *bias,
                                      double *y, int64_t ldy,
                                      double *mean, double *rstd,
                                      int64_t rows, int64_t cols, double eps);

/* Layer normalization backward, float32: the gradients with respect to x,
 * weight and bias, given dy (the gradient with respect to y).
 *
 *   dy      [in]  rows x cols, row stride lddy. Required.
 *   lddy    [in]  row stride of dy, >= cols.
 *   x       [in]  the forward pass's input, row stride ldx. Required.
 *   ldx     [in]  row stride of x, >= cols.
 *   mean    [in]  rows means from the forward pass. Required.
 *   rstd    [in]  rows rstd values from the forward pass. Required.
 *   weight  [in]  the forward pass's cols gains; NULL means all ones.
 *   dx      [out] rows x cols input gradient, row stride lddx. Required.
 *                 May be dy itself (with lddx == lddy); any other overlap
 *                 with an input is undefined.
 *   lddx    [in]  row stride of dx, >= cols.
 *   dweight [out] cols values, sum over rows of dy * (x - mean) * rstd;
 *                 overwritten, not accumulated. NULL if not wanted.
 *   dbias   [out] cols values, sum over rows of dy; overwritten, not
 *                 accumulated. NULL if not wanted.
 *   rows    [in]  number of rows, >= 0 (0: NLN_OK; dweight and dbias, sums
 *                 over no rows, are set to zero).
 *   cols    [in]  elements per row, > 0.
 *
 * Returns NLN_OK, NLN_ERR_INVALID_ARGUMENT, NLN_ERR_INIT, or NLN_ERR_INTERNAL
 * if the kernel raised. dweight and dbias
 * are summed over fixed blocks of rows in a fixed order: bit-identical across
 * calls, thread counts and concurrent callers. */
NLN_API nln_status nln_layer_norm_backward_f32(const float *dy, int64_t lddy,
                                               const float *x, int64_t ldx,
                                               const float *mean, const float *rstd,
                                               const float *weight,
                                               float *dx, int64_t lddx,
                                               float *dweight, float *dbias,
                                               int64_t rows, int64_t cols);

/* As nln_layer_norm_backward_f32, in double precision. */
NLN_API nln_status nln_layer_norm_backward_f64(const double *dy, int64_t lddy,
                                               const double *x, int64_t ldx,
                                               const double *mean, const double *rstd,
                                               const double *weight,
                                               double *dx, int64_t lddx,
                                               double *dweight, double *dbias,
                                               int64_t rows, int64_t cols);

/* RMSNorm forward, float32: per row, y = x * rstd * weight with
 * rstd = 1 / sqrt(sum(x^2) / cols + eps). Nothing is centered and there is
 * no bias. Parameters, returns and in-place use as nln_layer_norm_f32,
 * without bias and mean, and with
 *
 *   rstd    [out] rows values 1 / sqrt(sum(x^2) / cols + eps); NULL if not
 *                 wanted.
 *   eps     [in]  added to the mean square; finite and >= 0. */
NLN_API nln_status nln_rms_norm_f32(const float *x, int64_t ldx, const float *weight,
                                    float *y, int64_t ldy, float *rstd,
                                    int64_t rows, int64_t cols, float eps);

/* As nln_rms_norm_f32, in double precision. */
NLN_API nln_status nln_rms_norm_f64(const double *x, int64_t ldx, const double *weight,
                                    double *y, int64_t ldy, double *rstd,
                                    int64_t rows, int64_t cols, double eps);

/* RMSNorm backward, float32: the gradients with respect to x and weight.
 * With xhat = x * rstd and g = weight * dy, per row
 * dx = rstd * (g - xhat * mean(g * xhat)). Parameters, returns, in-place use
 * and determinism as nln_layer_norm_backward_f32, without mean and dbias,
 * and with
 *
 *   rstd    [in]  rows rstd values from nln_rms_norm_f32. Required.
 *   dweight [out] cols values, sum over rows of dy * x * rstd; overwritten,
 *                 not accumulated (zeros for rows == 0). NULL if not wanted. */
NLN_API nln_status nln_rms_norm_backward_f32(const float *dy, int64_t lddy,
                                             const float *x, int64_t ldx,
                                             const float *rstd, const float *weight,
                                             float *dx, int64_t lddx, float *dweight,
                                             int64_t rows, int64_t cols);

/* As nln_rms_norm_backward_f32, in double precision. */
NLN_API nln_status nln_rms_norm_backward_f64(const double *dy, int64_t lddy,
                                             const double *x, int64_t ldx,
                                             const double *rstd, const double *weight,
                                             double *dx, int64_t lddx, double *dweight,
                                             int64_t rows, int64_t cols);

/* Residual add and layer norm in one pass, float32: s = x + residual is
 * stored, and y, mean and rstd are nln_layer_norm_f32's of s. Parameters and
 * returns as nln_layer_norm_f32, and
 *
 *   residual [in]  rows x cols matrix added to x, row stride ldr. Required.
 *   ldr      [in]  row stride of residual in elements, >= cols.
 *   s        [out] rows x cols sum x + residual, row stride lds. Required:
 *                  the next block's residual and the backward pass's input.
 *   lds      [in]  row stride of s in elements, >= cols.
 *
 * s may be residual itself (with lds == ldr), to update the residual stream
 * in place, or x itself (lds == ldx); y may be x itself (ldy == ldx) when s
 * is not. y and s must not overlap, and any other overlap of an output with
 * an input is undefined. */
NLN_API nln_status nln_add_layer_norm_f32(const float *x, int64_t ldx,
                                          const float *residual, int64_t ldr,
                                          const float *weight, const float *bias,
                                          float *y, int64_t ldy, float *s, int64_t lds,
                                          float *mean, float *rstd,
                                          int64_t rows, int64_t cols, float eps);

/* As nln_add_layer_norm_f32, in double precision. */
NLN_API nln_status nln_add_layer_norm_f64(const double *x, int64_t ldx,
                                          const double *residual, int64_t ldr,
                                          const double *weight, const double *bias,
                                          double *y, int64_t ldy, double *s, int64_t lds,
                                          double *mean, double *rstd,
                                          int64_t rows, int64_t cols, double eps);

/* Backward of nln_add_layer_norm_f32: the gradients with respect to x (and,
 * equally, residual), weight and bias. Parameters, returns and determinism
 * as nln_layer_norm_backward_f32 with s and lds (the forward pass's s) in
 * place of x and ldx, and
 *
 *   dresidual [in]  rows x cols gradient that reaches s through the skip
 *                   path (the next block's gradient with respect to its
 *                   residual), row stride lddres, added to dx. NULL means
 *                   zeros: lddres is then ignored, and this is
 *                   nln_layer_norm_backward_f32 of s.
 *   lddres    [in]  row stride of dresidual, >= cols.
 *
 * dx, the gradient with respect to x and to residual (they are the same), may
 * be dy or dresidual itself (with the same row stride); any other overlap
 * with an input is undefined. */
NLN_API nln_status nln_add_layer_norm_backward_f32(const float *dy, int64_t lddy,
                                                   const float *s, int64_t lds,
                                                   const float *mean, const float *rstd,
                                                   const float *weight,
                                                   const float *dresidual, int64_t lddres,
                                                   float *dx, int64_t lddx,
                                                   float *dweight, float *dbias,
                                                   int64_t rows, int64_t cols);

/* As nln_add_layer_norm_backward_f32, in double precision. */
NLN_API nln_status nln_add_layer_norm_backward_f64(const double *dy, int64_t lddy,
                                                   const double *s, int64_t lds,
                                                   const double *mean, const double *rstd,
                                                   const double *weight,
                                                   const double *dresidual, int64_t lddres,
                                                   double *dx, int64_t lddx,
                                                   double *dweight, double *dbias,
                                                   int64_t rows, int64_t cols);

/* Residual add and RMSNorm in one pass, float32: s = x + residual is
 * stored, and y and rstd are nln_rms_norm_f32's of s. Parameters, returns
 * and in-place use as nln_add_layer_norm_f32, without bias and mean. */
NLN_API nln_status nln_add_rms_norm_f32(const float *x, int64_t ldx,
                                        const float *residual, int64_t ldr,
                                        const float *weight, float *y, int64_t ldy,
                                        float *s, int64_t lds, float *rstd,
                                        int64_t rows, int64_t cols, float eps);

/* As nln_add_rms_norm_f32, in double precision. */
NLN_API nln_status nln_add_rms_norm_f64(const double *x, int64_t ldx,
                                        const double *residual, int64_t ldr,
                                        const double *weight, double *y, int64_t ldy,
                                        double *s, int64_t lds, double *rstd,
                                        int64_t rows, int64_t cols, double eps);

/* Backward of nln_add_rms_norm_f32: the gradients with respect to x (and,
 * equally, residual) and weight. Parameters, returns, in-place use and
 * determinism as nln_add_layer_norm_backward_f32, without mean and dbias;
 * rstd and dweight as for nln_rms_norm_backward_f32 (with s in place of x);
 * a NULL dresidual makes this nln_rms_norm_backward_f32 of s. */
NLN_API nln_status nln_add_rms_norm_backward_f32(const float *dy, int64_t lddy,
                                                 const float *s, int64_t lds,
                                                 const float *rstd, const float *weight,
                                                 const float *dresidual, int64_t lddres,
                                                 float *dx, int64_t lddx, float *dweight,
                                                 int64_t rows, int64_t cols);

/* As nln_add_rms_norm_backward_f32, in double precision. */
NLN_API nln_status nln_add_rms_norm_backward_f64(const double *dy, int64_t lddy,
                                                 const double *s, int64_t lds,
                                                 const double *rstd, const double *weight,
                                                 const double *dresidual, int64_t lddres,
                                                 double *dx, int64_t lddx, double *dweight,
                                                 int64_t rows, int64_t cols);

/* float16 (_f16) and bfloat16 (_bf16): every CPU function above, on 16-bit
 * data (see "16-bit data" at the top). Parameters, returns, in-place use and
 * determinism as the float32 function of the same name, with
 *
 *   x, residual, weight, bias, y, s, dy, dresidual, dx
 *                 [in/out] 16-bit values in uint16_t: the data, the gains
 *                 and the biases.
 *   mean, rstd, dweight, dbias, eps
 *                 float, as in the float32 functions.
 *
 * weight and bias are widened to float once per call (cols values, into a
 * buffer the call allocates and frees), not per row; a NULL weight or bias
 * means all ones or all zeros, as in float32. */
NLN_API nln_status nln_layer_norm_f16(const uint16_t *x, int64_t ldx, const uint16_t *weight,
                                      const uint16_t *bias, uint16_t *y, int64_t ldy,
                                      float *mean, float *rstd, int64_t rows, int64_t cols,
                                      float eps);
NLN_API nln_status nln_layer_norm_bf16(const uint16_t *x, int64_t ldx, const uint16_t *weight,
                                       const uint16_t *bias, uint16_t *y, int64_t ldy,
                                       float *mean, float *rstd, int64_t rows, int64_t cols,
                                       float eps);
NLN_API nln_status nln_layer_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                               const uint16_t *x, int64_t ldx,
                                               const float *mean, const float *rstd,
                                               const uint16_t *weight, uint16_t *dx,
                                               int64_t lddx, float *dweight, float *dbias,
                                               int64_t rows, int64_t cols);
NLN_API nln_status nln_layer_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                                const uint16_t *x, int64_t ldx,
                                                const float *mean, const float *rstd,
                                                const uint16_t *weight, uint16_t *dx,
                                                int64_t lddx, float *dweight, float *dbias,
                                                int64_t rows, int64_t cols);
NLN_API nln_status nln_rms_norm_f16(const uint16_t *x, int64_t ldx, const uint16_t *weight,
                                    uint16_t *y, int64_t ldy, float *rstd, int64_t rows,
                                    int64_t cols, float eps);
NLN_API nln_status nln_rms_norm_bf16(const uint16_t *x, int64_t ldx, const uint16_t *weight,
                                     uint16_t *y, int64_t ldy, float *rstd, int64_t rows,
                                     int64_t cols, float eps);
NLN_API nln_status nln_rms_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                             const uint16_t *x, int64_t ldx, const float *rstd,
                                             const uint16_t *weight, uint16_t *dx,
                                             int64_t lddx, float *dweight, int64_t rows,
                                             int64_t cols);
NLN_API nln_status nln_rms_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                              const uint16_t *x, int64_t ldx,
                                              const float *rstd, const uint16_t *weight,
                                              uint16_t *dx, int64_t lddx, float *dweight,
                                              int64_t rows, int64_t cols);
NLN_API nln_status nln_add_layer_norm_f16(const uint16_t *x, int64_t ldx,
                                          const uint16_t *residual, int64_t ldr,
                                          const uint16_t *weight, const uint16_t *bias,
                                          uint16_t *y, int64_t ldy, uint16_t *s, int64_t lds,
                                          float *mean, float *rstd, int64_t rows, int64_t cols,
                                          float eps);
NLN_API nln_status nln_add_layer_norm_bf16(const uint16_t *x, int64_t ldx,
                                           const uint16_t *residual, int64_t ldr,
                                           const uint16_t *weight, const uint16_t *bias,
                                           uint16_t *y, int64_t ldy, uint16_t *s, int64_t lds,
                                           float *mean, float *rstd, int64_t rows,
                                           int64_t cols, float eps);
NLN_API nln_status nln_add_layer_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                                   const uint16_t *s, int64_t lds,
                                                   const float *mean, const float *rstd,
                                                   const uint16_t *weight,
                                                   const uint16_t *dresidual, int64_t lddres,
                                                   uint16_t *dx, int64_t lddx, float *dweight,
                                                   float *dbias, int64_t rows, int64_t cols);
NLN_API nln_status nln_add_layer_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                                    const uint16_t *s, int64_t lds,
                                                    const float *mean, const float *rstd,
                                                    const uint16_t *weight,
                                                    const uint16_t *dresidual, int64_t lddres,
                                                    uint16_t *dx, int64_t lddx, float *dweight,
                                                    float *dbias, int64_t rows, int64_t cols);
NLN_API nln_status nln_add_rms_norm_f16(const uint16_t *x, int64_t ldx,
                                        const uint16_t *residual, int64_t ldr,
                                        const uint16_t *weight, uint16_t *y, int64_t ldy,
                                        uint16_t *s, int64_t lds, float *rstd, int64_t rows,
                                        int64_t cols, float eps);
NLN_API nln_status nln_add_rms_norm_bf16(const uint16_t *x, int64_t ldx,
                                         const uint16_t *residual, int64_t ldr,
                                         const uint16_t *weight, uint16_t *y, int64_t ldy,
                                         uint16_t *s, int64_t lds, float *rstd, int64_t rows,
                                         int64_t cols, float eps);
NLN_API nln_status nln_add_rms_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                                 const uint16_t *s, int64_t lds,
                                                 const float *rstd, const uint16_t *weight,
                                                 const uint16_t *dresidual, int64_t lddres,
                                                 uint16_t *dx, int64_t lddx, float *dweight,
                                                 int64_t rows, int64_t cols);
NLN_API nln_status nln_add_rms_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                                  const uint16_t *s, int64_t lds,
                                                  const float *rstd, const uint16_t *weight,
                                                  const uint16_t *dresidual, int64_t lddres,
                                                  uint16_t *dx, int64_t lddx, float *dweight,
                                                  int64_t rows, int64_t cols);

/* 1 if the nln_cuda_* functions can run here (a CUDA driver, a GPU, and the
 * numba-cuda package in the embedded environment), else 0. Starts the
 * library like nln_init(); 0 if that fails. */
NLN_API int nln_cuda_available(void);

/* GPU forward, float32. Arguments as nln_layer_norm_f32, but x, weight, bias,
 * y, mean and rstd are device pointers; then
 *
 *   stream  [in]  the cudaStream_t / CUstream to run on, as void *; NULL for
 *                 the default stream.
 *
 * Returns NLN_ERR_NO_DEVICE (and why, in nln_last_error()) without a usable
 * GPU; otherwise as nln_layer_norm_f32, or NLN_ERR_INTERNAL if the CUDA
 * backend fails. Unlike the CPU functions, this one takes the embedded
 * interpreter's lock while it launches work. */
NLN_API nln_status nln_cuda_layer_norm_f32(const float *x, int64_t ldx,
                                           const float *weight, const float *bias,
                                           float *y, int64_t ldy,
                                           float *mean, float *rstd,
                                           int64_t rows, int64_t cols, float eps,
                                           void *stream);

/* As nln_cuda_layer_norm_f32, in double precision. */
NLN_API nln_status nln_cuda_layer_norm_f64(const double *x, int64_t ldx,
                                           const double *weight, const double *bias,
                                           double *y, int64_t ldy,
                                           double *mean, double *rstd,
                                           int64_t rows, int64_t cols, double eps,
                                           void *stream);

/* GPU backward, float32. Arguments as nln_layer_norm_backward_f32, with
 * device pointers, then `stream` as for nln_cuda_layer_norm_f32. */
NLN_API nln_status nln_cuda_layer_norm_backward_f32(const float *dy, int64_t lddy,
                                                    const float *x, int64_t ldx,
                                                    const float *mean, const float *rstd,
                                                    const float *weight,
                                                    float *dx, int64_t lddx,
                                                    float *dweight, float *dbias,
                                                    int64_t rows, int64_t cols,
                                                    void *stream);

/* As nln_cuda_layer_norm_backward_f32, in double precision. */
NLN_API nln_status nln_cuda_layer_norm_backward_f64(const double *dy, int64_t lddy,
                                                    const double *x, int64_t ldx,
                                                    const double *mean, const double *rstd,
                                                    const double *weight,
                                                    double *dx, int64_t lddx,
                                                    double *dweight, double *dbias,
                                                    int64_t rows, int64_t cols,
                                                    void *stream);

/* GPU RMSNorm and the fused residual forms: arguments as the CPU function
 * of the same name without "cuda_", with device pointers, then `stream` as
 * for nln_cuda_layer_norm_f32; returns as nln_cuda_layer_norm_f32. */
NLN_API nln_status nln_cuda_rms_norm_f32(const float *x, int64_t ldx, const float *weight,
                                         float *y, int64_t ldy, float *rstd,
                                         int64_t rows, int64_t cols, float eps,
                                         void *stream);
NLN_API nln_status nln_cuda_rms_norm_f64(const double *x, int64_t ldx, const double *weight,
                                         double *y, int64_t ldy, double *rstd,
                                         int64_t rows, int64_t cols, double eps,
                                         void *stream);
NLN_API nln_status nln_cuda_rms_norm_backward_f32(const float *dy, int64_t lddy,
                                                  const float *x, int64_t ldx,
                                                  const float *rstd, const float *weight,
                                                  float *dx, int64_t lddx, float *dweight,
                                                  int64_t rows, int64_t cols, void *stream);
NLN_API nln_status nln_cuda_rms_norm_backward_f64(const double *dy, int64_t lddy,
                                                  const double *x, int64_t ldx,
                                                  const double *rstd, const double *weight,
                                                  double *dx, int64_t lddx, double *dweight,
                                                  int64_t rows, int64_t cols, void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_f32(const float *x, int64_t ldx,
                                               const float *residual, int64_t ldr,
                                               const float *weight, const float *bias,
                                               float *y, int64_t ldy, float *s, int64_t lds,
                                               float *mean, float *rstd,
                                               int64_t rows, int64_t cols, float eps,
                                               void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_f64(const double *x, int64_t ldx,
                                               const double *residual, int64_t ldr,
                                               const double *weight, const double *bias,
                                               double *y, int64_t ldy, double *s, int64_t lds,
                                               double *mean, double *rstd,
                                               int64_t rows, int64_t cols, double eps,
                                               void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_backward_f32(const float *dy, int64_t lddy,
                                                        const float *s, int64_t lds,
                                                        const float *mean, const float *rstd,
                                                        const float *weight,
                                                        const float *dresidual,
                                                        int64_t lddres,
                                                        float *dx, int64_t lddx,
                                                        float *dweight, float *dbias,
                                                        int64_t rows, int64_t cols,
                                                        void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_backward_f64(const double *dy, int64_t lddy,
                                                        const double *s, int64_t lds,
                                                        const double *mean,
                                                        const double *rstd,
                                                        const double *weight,
                                                        const double *dresidual,
                                                        int64_t lddres,
                                                        double *dx, int64_t lddx,
                                                        double *dweight, double *dbias,
                                                        int64_t rows, int64_t cols,
                                                        void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_f32(const float *x, int64_t ldx,
                                             const float *residual, int64_t ldr,
                                             const float *weight, float *y, int64_t ldy,
                                             float *s, int64_t lds, float *rstd,
                                             int64_t rows, int64_t cols, float eps,
                                             void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_f64(const double *x, int64_t ldx,
                                             const double *residual, int64_t ldr,
                                             const double *weight, double *y, int64_t ldy,
                                             double *s, int64_t lds, double *rstd,
                                             int64_t rows, int64_t cols, double eps,
                                             void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_backward_f32(const float *dy, int64_t lddy,
                                                      const float *s, int64_t lds,
                                                      const float *rstd, const float *weight,
                                                      const float *dresidual, int64_t lddres,
                                                      float *dx, int64_t lddx, float *dweight,
                                                      int64_t rows, int64_t cols,
                                                      void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_backward_f64(const double *dy, int64_t lddy,
                                                      const double *s, int64_t lds,
                                                      const double *rstd,
                                                      const double *weight,
                                                      const double *dresidual,
                                                      int64_t lddres,
                                                      double *dx, int64_t lddx,
                                                      double *dweight,
                                                      int64_t rows, int64_t cols,
                                                      void *stream);

/* GPU float16 and bfloat16: arguments as the CPU function of the same name
 * without "cuda_", with device pointers, then `stream` as for
 * nln_cuda_layer_norm_f32; returns as nln_cuda_layer_norm_f32. The gains are
 * handed to the CUDA backend in their 16-bit type. */
NLN_API nln_status nln_cuda_layer_norm_f16(const uint16_t *x, int64_t ldx,
                                           const uint16_t *weight, const uint16_t *bias,
                                           uint16_t *y, int64_t ldy, float *mean, float *rstd,
                                           int64_t rows, int64_t cols, float eps,
                                           void *stream);
NLN_API nln_status nln_cuda_layer_norm_bf16(const uint16_t *x, int64_t ldx,
                                            const uint16_t *weight, const uint16_t *bias,
                                            uint16_t *y, int64_t ldy, float *mean, float *rstd,
                                            int64_t rows, int64_t cols, float eps,
                                            void *stream);
NLN_API nln_status nln_cuda_layer_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                                    const uint16_t *x, int64_t ldx,
                                                    const float *mean, const float *rstd,
                                                    const uint16_t *weight, uint16_t *dx,
                                                    int64_t lddx, float *dweight, float *dbias,
                                                    int64_t rows, int64_t cols, void *stream);
NLN_API nln_status nln_cuda_layer_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                                     const uint16_t *x, int64_t ldx,
                                                     const float *mean, const float *rstd,
                                                     const uint16_t *weight, uint16_t *dx,
                                                     int64_t lddx, float *dweight,
                                                     float *dbias, int64_t rows, int64_t cols,
                                                     void *stream);
NLN_API nln_status nln_cuda_rms_norm_f16(const uint16_t *x, int64_t ldx,
                                         const uint16_t *weight, uint16_t *y, int64_t ldy,
                                         float *rstd, int64_t rows, int64_t cols, float eps,
                                         void *stream);
NLN_API nln_status nln_cuda_rms_norm_bf16(const uint16_t *x, int64_t ldx,
                                          const uint16_t *weight, uint16_t *y, int64_t ldy,
                                          float *rstd, int64_t rows, int64_t cols, float eps,
                                          void *stream);
NLN_API nln_status nln_cuda_rms_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                                  const uint16_t *x, int64_t ldx,
                                                  const float *rstd, const uint16_t *weight,
                                                  uint16_t *dx, int64_t lddx, float *dweight,
                                                  int64_t rows, int64_t cols, void *stream);
NLN_API nln_status nln_cuda_rms_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                                   const uint16_t *x, int64_t ldx,
                                                   const float *rstd, const uint16_t *weight,
                                                   uint16_t *dx, int64_t lddx, float *dweight,
                                                   int64_t rows, int64_t cols, void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_f16(const uint16_t *x, int64_t ldx,
                                               const uint16_t *residual, int64_t ldr,
                                               const uint16_t *weight, const uint16_t *bias,
                                               uint16_t *y, int64_t ldy, uint16_t *s,
                                               int64_t lds, float *mean, float *rstd,
                                               int64_t rows, int64_t cols, float eps,
                                               void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_bf16(const uint16_t *x, int64_t ldx,
                                                const uint16_t *residual, int64_t ldr,
                                                const uint16_t *weight, const uint16_t *bias,
                                                uint16_t *y, int64_t ldy, uint16_t *s,
                                                int64_t lds, float *mean, float *rstd,
                                                int64_t rows, int64_t cols, float eps,
                                                void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                                        const uint16_t *s, int64_t lds,
                                                        const float *mean, const float *rstd,
                                                        const uint16_t *weight,
                                                        const uint16_t *dresidual,
                                                        int64_t lddres, uint16_t *dx,
                                                        int64_t lddx, float *dweight,
                                                        float *dbias, int64_t rows,
                                                        int64_t cols, void *stream);
NLN_API nln_status nln_cuda_add_layer_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                                         const uint16_t *s, int64_t lds,
                                                         const float *mean, const float *rstd,
                                                         const uint16_t *weight,
                                                         const uint16_t *dresidual,
                                                         int64_t lddres, uint16_t *dx,
                                                         int64_t lddx, float *dweight,
                                                         float *dbias, int64_t rows,
                                                         int64_t cols, void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_f16(const uint16_t *x, int64_t ldx,
                                             const uint16_t *residual, int64_t ldr,
                                             const uint16_t *weight, uint16_t *y, int64_t ldy,
                                             uint16_t *s, int64_t lds, float *rstd,
                                             int64_t rows, int64_t cols, float eps,
                                             void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_bf16(const uint16_t *x, int64_t ldx,
                                              const uint16_t *residual, int64_t ldr,
                                              const uint16_t *weight, uint16_t *y, int64_t ldy,
                                              uint16_t *s, int64_t lds, float *rstd,
                                              int64_t rows, int64_t cols, float eps,
                                              void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_backward_f16(const uint16_t *dy, int64_t lddy,
                                                      const uint16_t *s, int64_t lds,
                                                      const float *rstd,
                                                      const uint16_t *weight,
                                                      const uint16_t *dresidual,
                                                      int64_t lddres, uint16_t *dx,
                                                      int64_t lddx, float *dweight,
                                                      int64_t rows, int64_t cols,
                                                      void *stream);
NLN_API nln_status nln_cuda_add_rms_norm_backward_bf16(const uint16_t *dy, int64_t lddy,
                                                       const uint16_t *s, int64_t lds,
                                                       const float *rstd,
                                                       const uint16_t *weight,
                                                       const uint16_t *dresidual,
                                                       int64_t lddres, uint16_t *dx,
                                                       int64_t lddx, float *dweight,
                                                       int64_t rows, int64_t cols,
                                                       void *stream);

#ifdef __cplusplus
}
#endif

#endif /* NUMBA_LN_H */
