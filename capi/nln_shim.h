/*
 * nln_shim.h -- the private boundary between libnumba_ln.so's C shim
 * (nln_shim.c) and its embedded Python half (embedded_init.py). Not installed.
 *
 * capi/build.py feeds this file to cffi's cdef, with NLN_PYTHON_SIDE read as
 * `extern "Python"`: those functions are implemented in Python with
 * @ffi.def_extern and called from C. To the C compiler they are static
 * functions that cffi defines later in the same translation unit.
 */
#ifndef NLN_SHIM_H
#define NLN_SHIM_H

#include <stdint.h>

#ifndef NLN_PYTHON_SIDE
#define NLN_PYTHON_SIDE static
#endif

/* runtime->ready holds this value once Python has filled in every field. A
 * failed start leaves it 0 (cffi zero-fills a failed call's result), so a
 * failure can never read as success. */
#define NLN_RUNTIME_READY 1314720305

/* What a CPU entry point returns on success; numba's @cfunc wrapper returns
 * 0 when the compiled code raised. Equals numba_ln._cabi.OK. */
#define NLN_ENTRY_OK 1

/* struct nln_runtime, the addresses of the compiled entry points, is written
 * by capi/build.py from numba_ln._cabi.ENTRY_POINTS, before this file. */

/* Implemented in C, called from Python: set the calling thread's
 * nln_last_error() message (UTF-8, truncated to fit). */
void nln__set_error(const char *message);

/* Implemented in Python. Import numba_ln, load or compile the CPU entry
 * points and store their addresses in *runtime. Returns 0 and sets
 * runtime->ready on success; otherwise -1 with the reason in nln__set_error. */
NLN_PYTHON_SIDE int32_t nln__py_init(struct nln_runtime *runtime);

/* Implemented in Python: 1 if the GPU functions can run here, else 0. */
NLN_PYTHON_SIDE int32_t nln__py_cuda_available(void);

/* Implemented in Python: the GPU passes on device pointers (0 for NULL),
 * `precision` the functions' suffix ("f32", "f64", "f16", "bf16": an entry of
 * numba_ln._cabi.PRECISIONS), `centered` = 1 for layer norm and 0 for RMSNorm,
 * arguments already checked by C; `residual` and `s` are both 0 or both
 * given, and `x` of the backward is `s` of a fused forward. Return an
 * nln_status; on failure the reason is in nln__set_error. */
NLN_PYTHON_SIDE int32_t nln__py_cuda_forward(const char *precision, int32_t centered,
                                             uintptr_t x, int64_t ldx,
                                             uintptr_t residual, int64_t ldr,
                                             uintptr_t weight, uintptr_t bias,
                                             uintptr_t y, int64_t ldy,
                                             uintptr_t s, int64_t lds,
                                             uintptr_t mean, uintptr_t rstd,
                                             int64_t rows, int64_t cols, double eps,
                                             uintptr_t stream);
NLN_PYTHON_SIDE int32_t nln__py_cuda_backward(const char *precision, int32_t centered,
                                              uintptr_t dy, int64_t lddy,
                                              uintptr_t x, int64_t ldx,
                                              uintptr_t mean, uintptr_t rstd,
                                              uintptr_t weight,
                                              uintptr_t dresidual, int64_t lddres,
                                              uintptr_t dx, int64_t lddx,
                                              uintptr_t dweight, uintptr_t dbias,
                                              int64_t rows, int64_t cols,
                                              uintptr_t stream);

#endif /* NLN_SHIM_H */
