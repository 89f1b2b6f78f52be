/*
 * nln_shim.c -- the C half of libnumba_ln.so: the functions of numba_ln.h.
 *
 * capi/build.py compiles this file with cffi's embedding mode, after cffi's
 * own support code (which includes Python.h) and after a line that defines
 * NLN_BUILD_PYTHON, the python executable of the environment the library
 * was built in.
 *
 * Start-up (once per process, under pthread_once):
 *   1. Start CPython ourselves with a PyConfig whose program_name is that
 *      executable (or $NUMBA_LN_PYTHON). CPython then finds its standard
 *      library and the virtual environment's site-packages exactly as when
 *      that python runs, with no environment variables. Py_InitializeFromConfig
 *      reports failure as a PyStatus instead of aborting the process.
 *      A host that runs Python already (ctypes, say) lends its interpreter.
 *   2. cffi_start_python() sets this library up as a Python module and runs
 *      embedded_init.py, which binds the Python side of nln_shim.h
 *      (nln__start_cffi says why it runs with the GIL held).
 *   3. nln__py_init() asks numba_ln._cabi.entry_points() for the addresses
 *      (loaded from numba's cache, or compiled) of the plan, the eps rule,
 *      the @cfunc adapters and the kernels they call, and they are kept in
 *      the per-precision tables below.
 * Any failure is recorded once; every later call returns NLN_ERR_INIT with
 * the recorded message. A call cffi could not deliver to Python returns 0,
 * so success is recognised only by runtime.ready == NLN_RUNTIME_READY.
 * A caller that holds the host's GIL releases it while it waits for
 * start-up (nln__await_start says why); once start-up is over, a call only
 * reads an atomic flag.
 *
 * Steady state: a CPU call checks its arguments here, asks the compiled
 * numba_ln.cpu.plan how to run it, then calls the entry points through their
 * pointers: compiled code only, no Python executed, no GIL. The plan cuts
 * the call into tasks (row chunks; fixed backward blocks, then a sum of the
 * blocks in order, columns split) that run on the calling thread or, for a
 * threaded call, on a pool of this file's own (pthreads, started on the
 * first threaded call, reset in a forked child): the schedule of the Python
 * API, so results are bit-identical to it. numba's own parallel launcher is
 * not used: it takes the GIL around every parallel region. Neither is
 * OpenMP: GNU OpenMP hangs a forked child that uses it.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "numba_ln.h"
#include "nln_shim.h"

#ifndef NLN_BUILD_PYTHON
#error "NLN_BUILD_PYTHON (the python executable to embed) must be defined by capi/build.py"
#endif

#define NLN_MESSAGE_CAP 1024

/* ------------------------------------------------------------------ errors */

static _Thread_local char nln__error[NLN_MESSAGE_CAP];

void nln__set_error(const char *message)
{
    snprintf(nln__error, sizeof nln__error, "%s", message ? message : "");
}

/* Set this thread's message to "fn: <formatted>" and return `status`. */
static nln_status nln__fail(nln_status status, const char *fn, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static nln_status nln__fail(nln_status status, const char *fn, const char *format, ...)
{
    char detail[NLN_MESSAGE_CAP];
    va_list args;
    va_start(args, format);
    vsnprintf(detail, sizeof detail, format, args);
    va_end(args);
    snprintf(nln__error, sizeof nln__error, "%s: %.*s", fn,
             (int)(sizeof nln__error - strlen(fn) - 3), detail);
    return status;
}

/* After the Python side failed: prefix its message with the function name. */
static nln_status nln__fail_from_python(nln_status status, const char *fn)
{
    char detail[NLN_MESSAGE_CAP];
    snprintf(detail, sizeof detail, "%s",
             nln__error[0] ? nln__error : "the Python side failed without a message");
    return nln__fail(status, fn, "%s", detail);
}

/* ------------------------------------------------------------------ start-up */

/* The compiled entry points. Their types, struct nln_runtime and the
 * X-macros NLN__SHARED_ENTRIES, NLN__PRECISION_ENTRIES and NLN__PRECISIONS
 * (and NLN__PRECISION_KERNELS) come from numba_ln._cabi.ENTRY_POINTS and
 * KERNELS, written before this file by capi/build.py. */
static struct {
#define NLN__FIELD(name) nln__##name##_fn name;
    NLN__SHARED_ENTRIES(NLN__FIELD)
#undef NLN__FIELD
} nln__shared;

/* One precision: the size of its data, gains and biases (itemsize) and of
 * its statistics, parameter gradients and kernel gains (param_size: float
 * for float16 and bfloat16, whose gains the shim widens, see
 * nln__widen_params), its suffix, a stand-in for a NULL weight or bias of
 * param_size (the kernels are then told to ignore it), its entry points, and
 * the addresses of the compiled kernels they call (opaque to C). */
struct nln__precision {
    size_t itemsize, param_size;
    const char *suffix;
    const void *one;
#define NLN__FIELD(name, suffix) nln__##name##_fn name;
    NLN__PRECISION_ENTRIES(NLN__FIELD, _)
#undef NLN__FIELD
#define NLN__FIELD(name, suffix) uintptr_t name;
    NLN__PRECISION_KERNELS(NLN__FIELD, _)
#undef NLN__FIELD
};

#define NLN__DEFINE_PRECISION(suffix, T, CT)                                            \
    static const CT nln__one_##suffix = 1;                                             \
    static struct nln__precision nln__##suffix = {sizeof(T), sizeof(CT), #suffix,      \
                                                  &nln__one_##suffix};
NLN__PRECISIONS(NLN__DEFINE_PRECISION)
#undef NLN__DEFINE_PRECISION

static pthread_once_t nln__once = PTHREAD_ONCE_INIT;
static atomic_int nln__started;         /* start-up is over: its outcome below is final */
static atomic_int nln__starting_python; /* start-up is starting an interpreter of its own */
static nln_status nln__init_status = NLN_ERR_INIT;
static char nln__init_message[NLN_MESSAGE_CAP];
static char nln__python[NLN_MESSAGE_CAP] = "the host program's Python";

static void nln__init_failed(const char *format, ...) __attribute__((format(printf, 1, 2)));

static void nln__init_failed(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(nln__init_message, sizeof nln__init_message, format, args);
    va_end(args);
    nln__init_status = NLN_ERR_INIT;
}

/* Step 1: start CPython as the recorded python would start. 0 on success. */
static int nln__start_interpreter(void)
{
    const char *python = getenv("NUMBA_LN_PYTHON");
    const char *origin = "NUMBA_LN_PYTHON";
    PyPreConfig preconfig;
    PyConfig config;
    PyStatus status;

    if (Py_IsInitialized())
        return 0; /* the host program runs Python already: use it */
    atomic_store(&nln__starting_python, 1);
    if (python == NULL || python[0] == '\0') {
        python = NLN_BUILD_PYTHON;
        origin = "recorded at build time";
    }
    snprintf(nln__python, sizeof nln__python, "%s", python);
    if (access(python, X_OK) != 0) {
        nln__init_failed("cannot start Python: the interpreter %s (%s) is not an "
                         "executable file: %s", python, origin, strerror(errno));
        return -1;
    }

    /* Leave the host's locale alone; decode paths as UTF-8. */
    PyPreConfig_InitPythonConfig(&preconfig);
    preconfig.utf8_mode = 1;
    preconfig.configure_locale = 0;
    preconfig.coerce_c_locale = 0;
    preconfig.coerce_c_locale_warn = 0;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        goto failed;

    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0; /* the host owns SIGINT and friends */
    config.parse_argv = 0;
    status = PyConfig_SetBytesString(&config, &config.program_name, python);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        goto failed;
    PyEval_SaveThread(); /* release the GIL: Python runs only inside our calls */
    return 0;

failed:
    nln__init_failed("cannot start Python from %s (%s): %s%s%s", python, origin,
                     status.func ? status.func : "", status.func ? ": " : "",
                     status.err_msg ? status.err_msg : "exit requested");
    return -1;
}

/* Step 2: cffi_start_python(), with the GIL held.
 *
 * Before Python 3.12, cffi guards its start-up with a spin lock that is
 * PyCapsule_Type.tp_version_tag: 0 means free. Python assigns that field a
 * version tag as soon as an attribute is looked up on any capsule (importing
 * torch does; so does getattr on datetime.datetime_CAPI), and cffi then spins
 * forever: the first call from such a Python host hung. PyType_Modified
 * drops the tag, and holding the GIL until cffi has taken and released its
 * lock keeps any other thread from setting it again in between (cffi's
 * start-up takes the GIL with PyGILState_Ensure, which nests). */
static int nln__start_cffi(void)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc;

#if PY_VERSION_HEX < 0x030C0000
    PyType_Modified(&PyCapsule_Type);
#endif
    rc = cffi_start_python();
    PyGILState_Release(gil);
    return rc;
}

/* Steps 1 to 3. */
static void nln__load(void)
{
    struct nln_runtime runtime;
    int32_t rc;
    int missing;

    if (nln__start_interpreter() != 0)
        return;
    if (nln__start_cffi() != 0) {
        nln__init_failed("the embedded Python could not load the numba_ln C ABI module "
                         "(its traceback is on stderr); is cffi installed in the "
                         "environment of %s?", nln__python);
        return;
    }
    memset(&runtime, 0, sizeof runtime);
    nln__error[0] = '\0';
    rc = nln__py_init(&runtime);
    missing = rc != 0 || runtime.ready != NLN_RUNTIME_READY;
#define NLN__BIND_SHARED(name)                                                          \
    nln__shared.name = (nln__##name##_fn)runtime.name;                                 \
    missing |= !runtime.name;
#define NLN__BIND(name, suffix)                                                         \
    nln__##suffix.name = (nln__##name##_fn)runtime.name##_##suffix;                    \
    missing |= !runtime.name##_##suffix;
#define NLN__BIND_KERNEL(name, suffix)                                                  \
    nln__##suffix.name = runtime.name##_##suffix;                                      \
    missing |= !runtime.name##_##suffix;
#define NLN__BIND_PRECISION(suffix, T, CT)                                              \
    NLN__PRECISION_ENTRIES(NLN__BIND, suffix) NLN__PRECISION_KERNELS(NLN__BIND_KERNEL, suffix)
    NLN__SHARED_ENTRIES(NLN__BIND_SHARED)
    NLN__PRECISIONS(NLN__BIND_PRECISION)
#undef NLN__BIND_SHARED
#undef NLN__BIND
#undef NLN__BIND_KERNEL
#undef NLN__BIND_PRECISION
    if (missing) {
        nln__init_failed("%s", nln__error[0] ? nln__error
                                             : "the Python side failed to start "
                                               "(its traceback is on stderr)");
        nln__error[0] = '\0';
        return;
    }
    nln__init_status = NLN_OK;
}

/* The pthread_once routine. */
static void nln__start(void)
{
    nln__load();
    atomic_store_explicit(&nln__started, 1, memory_order_release);
}

/* 1 when the calling thread holds the GIL of a Python that the host started.
 * PyGILState_Check is not safe while our own start-up initializes Python in
 * another thread; that start-up sets its flag before Py_IsInitialized turns
 * true, so reading the two in this order never misses it. */
static int nln__holds_host_gil(void)
{
    if (!Py_IsInitialized())
        return 0;
    atomic_thread_fence(memory_order_acquire); /* the flag is read after it */
    return !atomic_load(&nln__starting_python) && PyGILState_Check();
}

/* Wait for start-up, which may run in another thread. It runs Python, which
 * hands the GIL to other threads now and then: a caller holding the host's
 * GIL (ctypes.PyDLL, a C extension) lets go of it while it waits, or the
 * start-up would wait for it forever. */
static void nln__await_start(void)
{
    PyThreadState *host_thread = nln__holds_host_gil() ? PyEval_SaveThread() : NULL;
    pthread_once(&nln__once, nln__start);
    if (host_thread != NULL)
        PyEval_RestoreThread(host_thread);
}

/* Start once; afterwards one atomic load, and no Python API call. */
static nln_status nln__ready(const char *fn)
{
    if (!atomic_load_explicit(&nln__started, memory_order_acquire))
        nln__await_start();
    if (nln__init_status != NLN_OK)
        return nln__fail(NLN_ERR_INIT, fn, "%s", nln__init_message);
    return NLN_OK;
}

/* ------------------------------------------------------------------ checks */

static nln_status nln__check_shape(const char *fn, int64_t rows, int64_t cols)
{
    if (rows < 0)
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn, "rows (%lld) must be >= 0",
                         (long long)rows);
    if (cols <= 0)
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn, "cols (%lld) must be > 0",
                         (long long)cols);
    return NLN_OK;
}

/* Element counts and sizes up to 2^128: (rows - 1) * ld + cols of int64 values
 * never overflows it. */
typedef unsigned __int128 nln__count;

/* `count` in decimal; `text` must hold 40 characters (2^128 has 39 digits). */
static const char *nln__decimal(nln__count count, char text[40])
{
    char *digit = text + 39;
    *digit = '\0';
    do {
        *--digit = (char)('0' + (int)(count % 10));
        count /= 10;
    } while (count != 0);
    return digit;
}

/* Whether `count` elements of `itemsize` bytes from `data` (NULL: none) fit
 * in the address space: at most PTRDIFF_MAX bytes, and not past its end. */
static int nln__fits(const void *data, nln__count count, size_t itemsize)
{
    /* Multiplications, not a 128-bit division: this runs on every call. */
    return count <= PTRDIFF_MAX && count * itemsize <= PTRDIFF_MAX &&
           (uintptr_t)data <= UINTPTR_MAX - (uintptr_t)(count * itemsize);
}

/* The error for a span nln__fits rejected: `what` names the buffer,
 * `formula` says how `count` was computed. */
static nln_status nln__span_error(const char *fn, const char *what, const void *data,
                                  const char *formula, nln__count count, size_t itemsize)
{
    char digits[40];
    if (count > PTRDIFF_MAX || count * itemsize > PTRDIFF_MAX)
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn,
                         "%s spans %s = %s elements of %zu bytes, more than the address "
                         "space", what, formula, nln__decimal(count, digits), itemsize);
    return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn,
                     "%s spans %s = %s elements of %zu bytes from %p, past the end of "
                     "the address space", what, formula, nln__decimal(count, digits),
                     itemsize, data);
}

/* A required matrix: non-NULL, ld >= cols, and its span fits in the address space. */
static nln_status nln__check_matrix(const char *fn, const char *name, const void *data,
                                    const char *ld_name, int64_t ld,
                                    int64_t rows, int64_t cols, size_t itemsize)
{
    char formula[64];
    nln__count count;
    if (data == NULL)
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn, "%s is NULL", name);
    if (ld < cols)
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn, "%s (%lld) must be >= cols (%lld)",
                         ld_name, (long long)ld, (long long)cols);
    count = rows ? (nln__count)(uint64_t)(rows - 1) * (uint64_t)ld + (uint64_t)cols : 0;
    if (nln__fits(data, count, itemsize))
        return NLN_OK;
    snprintf(formula, sizeof formula, "(rows - 1) * %s + cols", ld_name);
    return nln__span_error(fn, name, data, formula, count, itemsize);
}

/* An optional vector of `length` elements (named by `length_name`, "rows" or "cols"). */
static nln_status nln__check_vector(const char *fn, const char *name, const void *data,
                                    const char *length_name, int64_t length,
                                    size_t itemsize)
{
    if (data == NULL || nln__fits(data, (nln__count)length, itemsize))
        return NLN_OK;
    return nln__span_error(fn, name, data, length_name, (nln__count)length, itemsize);
}

static nln_status nln__check_required(const char *fn, const char *name, const void *data)
{
    if (data == NULL)
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn, "%s is NULL", name);
    return NLN_OK;
}

/* numba_ln._validate.eps_fault decides; the messages are this library's. */
static nln_status nln__check_eps(const char *fn, double eps)
{
    switch (nln__shared.eps_fault(eps)) {
    case 0:
        return NLN_OK;
    case 1:
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn, "eps is NaN; it must be finite and >= 0");
    case 2:
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn,
                         "eps is infinite; it must be finite and >= 0");
    default:
        return nln__fail(NLN_ERR_INVALID_ARGUMENT, fn, "eps (%g) must be >= 0", eps);
    }
}

/* Return from the calling function with `call`'s status unless it is NLN_OK. */
#define NLN__TRY(call)                                                                  \
    do {                                                                                \
        nln_status status_ = (call);                                                    \
        if (status_ != NLN_OK)                                                          \
            return status_;                                                             \
    } while (0)

/* What a function computes: layer norm centers each row (RMSNorm does not);
 * the fused forms add a residual first (forward) or the gradient of the
 * skip path (backward). */
enum { NLN__CENTERED = 1, NLN__RESIDUAL = 2 };

/* A forward call as an exported function received it (NULL: not given),
 * then the plan's decisions. RMSNorm has no bias and no mean; residual and
 * s are given exactly when form has NLN__RESIDUAL. */
struct nln__forward_args {
    const struct nln__precision *p;
    int32_t form;
    const void *x, *residual, *weight, *bias;
    void *y, *s, *mean, *rstd;
    int64_t ldx, ldr, ldy, lds, rows, cols;
    double eps;
    int64_t task_rows; /* the plan's */
    int32_t stream;
};

/* A backward call as an exported function received it. `x` is the forward
 * pass's normalized input: `s` of a fused form. RMSNorm has no mean and no
 * dbias; dresidual may be NULL. Then the plan's decisions. */
struct nln__backward_args {
    const struct nln__precision *p;
    int32_t form;
    const void *dy, *x, *mean, *rstd, *weight, *dresidual;
    void *dx, *dweight, *dbias;
    int64_t lddy, ldx, lddres, lddx, rows, cols;
    void *dweight_part, *dbias_part; /* the plan's */
    int64_t blocks, block_rows, reduce_cols;
    int32_t wide, stream;
};

static nln_status nln__check_forward(const char *fn, const struct nln__forward_args *a)
{
    size_t size = a->p->itemsize, param_size = a->p->param_size;
    int fused = a->form & NLN__RESIDUAL;
    int64_t rows = a->rows, cols = a->cols;
    NLN__TRY(nln__check_shape(fn, rows, cols));
    NLN__TRY(nln__check_matrix(fn, "x", a->x, "ldx", a->ldx, rows, cols, size));
    if (fused)
        NLN__TRY(nln__check_matrix(fn, "residual", a->residual, "ldr", a->ldr, rows, cols,
                                   size));
    NLN__TRY(nln__check_matrix(fn, "y", a->y, "ldy", a->ldy, rows, cols, size));
    if (fused)
        NLN__TRY(nln__check_matrix(fn, "s", a->s, "lds", a->lds, rows, cols, size));
    NLN__TRY(nln__check_vector(fn, "weight", a->weight, "cols", cols, size));
    NLN__TRY(nln__check_vector(fn, "bias", a->bias, "cols", cols, size));
    NLN__TRY(nln__check_vector(fn, "mean", a->mean, "rows", rows, param_size));
    NLN__TRY(nln__check_vector(fn, "rstd", a->rstd, "rows", rows, param_size));
    return nln__check_eps(fn, a->eps);
}

static nln_status nln__check_backward(const char *fn, const struct nln__backward_args *a)
{
    size_t size = a->p->itemsize, param_size = a->p->param_size;
    int fused = a->form & NLN__RESIDUAL;
    int64_t rows = a->rows, cols = a->cols;
    NLN__TRY(nln__check_shape(fn, rows, cols));
    NLN__TRY(nln__check_matrix(fn, "dy", a->dy, "lddy", a->lddy, rows, cols, size));
    NLN__TRY(nln__check_matrix(fn, fused ? "s" : "x", a->x, fused ? "lds" : "ldx", a->ldx,
                               rows, cols, size));
    if (a->form & NLN__CENTERED)
        NLN__TRY(nln__check_required(fn, "mean", a->mean));
    NLN__TRY(nln__check_vector(fn, "mean", a->mean, "rows", rows, param_size));
    NLN__TRY(nln__check_required(fn, "rstd", a->rstd));
    NLN__TRY(nln__check_vector(fn, "rstd", a->rstd, "rows", rows, param_size));
    NLN__TRY(nln__check_vector(fn, "weight", a->weight, "cols", cols, size));
    if (a->dresidual != NULL)
        NLN__TRY(nln__check_matrix(fn, "dresidual", a->dresidual, "lddres", a->lddres, rows,
                                   cols, size));
    NLN__TRY(nln__check_matrix(fn, "dx", a->dx, "lddx", a->lddx, rows, cols, size));
    NLN__TRY(nln__check_vector(fn, "dweight", a->dweight, "cols", cols, param_size));
    return nln__check_vector(fn, "dbias", a->dbias, "cols", cols, param_size);
}

/* ------------------------------------------------------------------ public API */

NLN_API const char *nln_version(void)
{
    return NLN_VERSION_STRING;
}

NLN_API const char *nln_status_string(nln_status status)
{
    switch (status) {
    case NLN_OK: return "NLN_OK: success";
    case NLN_ERR_INVALID_ARGUMENT: return "NLN_ERR_INVALID_ARGUMENT: invalid argument";
    case NLN_ERR_UNSUPPORTED: return "NLN_ERR_UNSUPPORTED: not supported";
    case NLN_ERR_NO_DEVICE: return "NLN_ERR_NO_DEVICE: no usable GPU";
    case NLN_ERR_INIT: return "NLN_ERR_INIT: the library failed to initialize";
    case NLN_ERR_INTERNAL: return "NLN_ERR_INTERNAL: internal error";
    }
    return "unknown nln_status";
}

NLN_API const char *nln_last_error(void)
{
    return nln__error;
}

NLN_API nln_status nln_init(void)
{
    return nln__ready("nln_init");
}

/* ------------------------------------------------------------------ thread pool
 *
 * The threads of large calls (the top of the file says why they are our
 * own). A job is `count` tasks, run(arg, task), cut into one contiguous
 * slice per thread as OpenMP's schedule(static) cuts them: neighbouring
 * tasks write neighbouring memory (the backward's rows of partial sums can
 * share a cache line), so a thread should run neighbours. The caller and the
 * workers claim slices from a shared counter until none is left, so a late
 * worker's slice is run by whoever is free. One job at a time: a caller that
 * finds the pool busy runs its tasks alone. Who runs a task never changes
 * what it computes, so neither do the bits.
 *
 * A job's fields are written only while `open` is 0. A worker reads them
 * after it has counted itself `inside` and seen `open` set; the caller clears
 * `open` and waits for `inside` to drop to 0 before it returns.
 */

/* Runs task `task` of a job; nonzero if it failed. */
typedef int (*nln__task_fn)(void *arg, int64_t task);

/* Waiters spin this long before they sleep: calls made back to back find
 * the workers awake. */
#define NLN__SPIN_NS 100000
/* A bound on OMP_NUM_THREADS, so that a typo cannot start thousands of threads. */
#define NLN__MAX_THREADS 1024

static struct {
    pthread_once_t once;
    int threads;                   /* a job's threads: the workers and the caller */
    int workers;                   /* started so far; changed by the pool's owner only */
    pthread_mutex_t lock;          /* for the sleeping side of nln__await */
    pthread_cond_t job_posted;     /* generation changed */
    pthread_cond_t workers_left;   /* inside dropped to 0 */
    atomic_int busy;               /* a caller owns the pool */
    atomic_uint generation;        /* jobs posted so far */
    atomic_int open;               /* the current job still takes workers */
    atomic_uint inside;            /* workers that joined a job and have not left it */
    _Alignas(64) atomic_int next_slice; /* its own cache line: claimed while others read */
    _Alignas(64) atomic_int failed;
    nln__task_fn run;              /* the current job */
    void *arg;
    int64_t count;
    int slices;
} nln__pool = {.once = PTHREAD_ONCE_INIT, .lock = PTHREAD_MUTEX_INITIALIZER,
               .job_posted = PTHREAD_COND_INITIALIZER,
               .workers_left = PTHREAD_COND_INITIALIZER};

static uint64_t nln__now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Wait until (*word == value) == until_equal: spin for NLN__SPIN_NS, then
 * sleep on `wakeup`, which is broadcast under the pool's lock after every
 * change of *word that can end the wait. Returns the last value read. */
static unsigned nln__await(atomic_uint *word, unsigned value, int until_equal,
                           pthread_cond_t *wakeup)
{
    uint64_t start = nln__now_ns();
    unsigned now;
    while (((now = atomic_load(word)) == value) != until_equal) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (nln__now_ns() - start < NLN__SPIN_NS)
            continue;
        pthread_mutex_lock(&nln__pool.lock);
        while (((now = atomic_load(word)) == value) != until_equal)
            pthread_cond_wait(wakeup, &nln__pool.lock);
        pthread_mutex_unlock(&nln__pool.lock);
        break;
    }
    return now;
}

/* Run slices of the current job until none is left. Slice s has count /
 * slices tasks, one more for the first count % slices. */
static void nln__take_tasks(void)
{
    int64_t size = nln__pool.count / nln__pool.slices;
    int64_t extra = nln__pool.count % nln__pool.slices;
    int slice;
    while ((slice = atomic_fetch_add(&nln__pool.next_slice, 1)) < nln__pool.slices) {
        int64_t first = slice * size + (slice < extra ? slice : extra);
        int64_t stop = first + size + (slice < extra);
        for (int64_t task = first; task < stop; ++task)
            if (nln__pool.run(nln__pool.arg, task) != 0)
                atomic_store(&nln__pool.failed, 1);
    }
}

static void *nln__worker(void *first_generation)
{
    unsigned seen = (unsigned)(uintptr_t)first_generation;
    for (;;) {
        seen = nln__await(&nln__pool.generation, seen, 0, &nln__pool.job_posted);
        atomic_fetch_add(&nln__pool.inside, 1);
        if (atomic_load(&nln__pool.open))
            nln__take_tasks();
        if (atomic_fetch_sub(&nln__pool.inside, 1) == 1) {
            pthread_mutex_lock(&nln__pool.lock);
            pthread_cond_broadcast(&nln__pool.workers_left);
            pthread_mutex_unlock(&nln__pool.lock);
        }
    }
    return NULL;
}

/* Start the missing workers (the pool's owner only). They block every
 * signal, so the host's handlers run on the host's threads. A worker that
 * cannot be started now is tried again on the next job. */
static void nln__start_workers(void)
{
    sigset_t all, host;
    pthread_attr_t attr;
    pthread_t thread;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &host);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (nln__pool.workers < nln__pool.threads - 1 &&
           pthread_create(&thread, &attr, nln__worker,
                          (void *)(uintptr_t)atomic_load(&nln__pool.generation)) == 0)
        nln__pool.workers++;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &host, NULL);
}

/* The child of a fork has only the thread that forked: no workers, and no
 * caller inside a job. The lock and conditions may have been in use by
 * threads that are gone. */
static void nln__pool_after_fork_child(void)
{
    pthread_mutex_init(&nln__pool.lock, NULL);
    pthread_cond_init(&nln__pool.job_posted, NULL);
    pthread_cond_init(&nln__pool.workers_left, NULL);
    nln__pool.workers = 0;
    atomic_store(&nln__pool.busy, 0);
    atomic_store(&nln__pool.open, 0);
    atomic_store(&nln__pool.inside, 0);
}

/* OMP_NUM_THREADS's leading integer when it is positive, else the number of
 * CPUs this process may run on. */
static int nln__thread_count(void)
{
    const char *setting = getenv("OMP_NUM_THREADS");
    cpu_set_t cpus;
    long count = 0;
    if (setting != NULL) {
        char *end;
        count = strtol(setting, &end, 10);
        if (end == setting)
            count = 0;
    }
    if (count <= 0 && sched_getaffinity(0, sizeof cpus, &cpus) == 0)
        count = CPU_COUNT(&cpus);
    if (count <= 0)
        count = sysconf(_SC_NPROCESSORS_ONLN);
    return count < 1 ? 1 : count > NLN__MAX_THREADS ? NLN__MAX_THREADS : (int)count;
}

static void nln__pool_init(void)
{
    nln__pool.threads = nln__thread_count();
    pthread_atfork(NULL, NULL, nln__pool_after_fork_child);
}

/* The number of threads a large call runs on. */
static int nln__pool_threads(void)
{
    pthread_once(&nln__pool.once, nln__pool_init);
    return nln__pool.threads;
}

/* Post the job to the workers, take part in it, and wait for them to leave it
 * (the pool's owner only). Nonzero if a task failed. */
static int nln__run_job(nln__task_fn run, void *arg, int64_t count)
{
    if (nln__pool.workers < nln__pool.threads - 1)
        nln__start_workers();
    nln__pool.run = run;
    nln__pool.arg = arg;
    nln__pool.count = count;
    nln__pool.slices = count < nln__pool.threads ? (int)count : nln__pool.threads;
    atomic_store(&nln__pool.next_slice, 0);
    atomic_store(&nln__pool.failed, 0);
    atomic_store(&nln__pool.open, 1);
    pthread_mutex_lock(&nln__pool.lock);
    atomic_fetch_add(&nln__pool.generation, 1);
    pthread_cond_broadcast(&nln__pool.job_posted);
    pthread_mutex_unlock(&nln__pool.lock);
    nln__take_tasks();
    atomic_store(&nln__pool.open, 0);
    nln__await(&nln__pool.inside, 0, 1, &nln__pool.workers_left);
    return atomic_load(&nln__pool.failed);
}

/* Tasks 0 .. count - 1 of run(arg, task): on the pool when it is free, else
 * on the calling thread. Nonzero if a task failed. */
static int nln__parallel(nln__task_fn run, void *arg, int64_t count)
{
    int failed = 0;
    if (nln__pool_threads() > 1 && count > 1 && !atomic_exchange(&nln__pool.busy, 1)) {
        failed = nln__run_job(run, arg, count);
        atomic_store(&nln__pool.busy, 0);
        return failed;
    }
    for (int64_t task = 0; task < count; ++task)
        failed |= run(arg, task) != 0;
    return failed;
}

/* ------------------------------------------------------------------ schedules
 *
 * What a CPU call runs, on the calling thread or on the pool. Each returns
 * NLN_OK, or NLN_ERR_INTERNAL with the reason as `fn`'s last error.
 */

#define NLN_KERNEL_FAILED \
    "the CPU kernel raised an exception (numba printed it on stderr); outputs may be " \
    "partly written"
#define NLN_OUT_OF_MEMORY "no memory for the backward pass's partial sums"
#define NLN_NO_GAIN_MEMORY "no memory for the gains and biases widened to float"

static nln_status nln__kernel_status(const char *fn, int failed)
{
    return failed ? nln__fail(NLN_ERR_INTERNAL, fn, NLN_KERNEL_FAILED) : NLN_OK;
}

/* Tasks 0 .. count - 1 of run(arg, task): on the pool when the plan says the
 * call is threaded, else on the calling thread. Nonzero if a task failed. */
static int nln__run(nln__task_fn run, void *arg, int64_t count, int64_t threaded)
{
    int failed = 0;
    if (threaded)
        return nln__parallel(run, arg, count);
    for (int64_t task = 0; task < count; ++task)
        failed |= run(arg, task) != 0;
    return failed;
}

/* The plan of numba_ln.cpu.plan for this call. */
static nln_status nln__plan(const char *fn, int32_t backward, int64_t rows, int64_t cols,
                            size_t itemsize, struct nln__plan *plan)
{
    if (nln__shared.plan(backward, rows, cols, (int64_t)itemsize, (int64_t *)plan) !=
        NLN_ENTRY_OK)
        return nln__fail(NLN_ERR_INTERNAL, fn, NLN_KERNEL_FAILED);
    return NLN_OK;
}

/* float16 and bfloat16 functions take weight and bias in the data's type;
 * the kernels take them in the compute type (param_size). For those
 * precisions the `count` given ones of params[] (NULL: not given, stays
 * NULL) are widened by the precision's compiled `widen` (numba_ln._storage's
 * conversion), once per call and before any task runs, into one allocation
 * that *held points to afterwards (NULL if none: the caller frees it);
 * params[] then point into it. Other precisions are left alone. */
static nln_status nln__widen_params(const char *fn, const struct nln__precision *p,
                                    int64_t cols, const void **params, int count, void **held)
{
    size_t bytes = (size_t)cols * p->param_size; /* cols * itemsize fits: checked */
    char *widened;
    int given = 0;
    *held = NULL;
    for (int i = 0; i < count; ++i)
        given |= params[i] != NULL;
    if (p->itemsize == p->param_size || !given)
        return NLN_OK;
    if (!nln__fits(NULL, (nln__count)cols * (nln__count)count, p->param_size))
        return nln__span_error(fn, "the widened gains and biases", NULL, "count * cols",
                               (nln__count)cols * (nln__count)count, p->param_size);
    widened = malloc((size_t)count * bytes);
    if (widened == NULL)
        return nln__fail(NLN_ERR_INTERNAL, fn, NLN_NO_GAIN_MEMORY);
    *held = widened;
    for (int i = 0; i < count; ++i) {
        if (params[i] == NULL)
            continue;
        if (p->widen(params[i], cols, widened + (size_t)i * bytes) != NLN_ENTRY_OK) {
            free(widened);
            *held = NULL;
            return nln__fail(NLN_ERR_INTERNAL, fn, NLN_KERNEL_FAILED);
        }
        params[i] = widened + (size_t)i * bytes;
    }
    return NLN_OK;
}

/* `base` advanced by `elements` elements of `itemsize` bytes; NULL stays NULL. */
static const void *nln__at(const void *base, int64_t elements, size_t itemsize)
{
    return base ? (const char *)base + (size_t)elements * itemsize : NULL;
}

/* Rows task * task_rows onwards, at most task_rows of them. */
static int nln__forward_task(void *args, int64_t task)
{
    const struct nln__forward_args *a = args;
    const struct nln__precision *p = a->p;
    size_t size = p->itemsize, param_size = p->param_size;
    int64_t first = task * a->task_rows;
    int64_t stop = first + a->task_rows < a->rows ? first + a->task_rows : a->rows;
    uintptr_t kernel = a->residual ? (a->stream ? p->forward_rows_streaming_residual
                                                : p->forward_rows_residual)
                                   : (a->stream ? p->forward_rows_streaming : p->forward_rows);
    return p->forward(kernel, nln__at(a->x, first * a->ldx, size), a->ldx,
                      nln__at(a->residual, first * a->ldr, size), a->ldr,
                      a->weight ? a->weight : p->one, a->bias ? a->bias : p->one,
                      a->weight != NULL, a->bias != NULL,
                      (void *)nln__at(a->y, first * a->ldy, size), a->ldy,
                      (void *)nln__at(a->s, first * a->lds, size), a->lds,
                      (void *)nln__at(a->mean, first, param_size),
                      (void *)nln__at(a->rstd, first, param_size), a->residual != NULL,
                      a->mean != NULL, a->rstd != NULL, stop - first, a->cols, a->eps,
                      (a->form & NLN__CENTERED) != 0, a->stream) != NLN_ENTRY_OK;
}

static nln_status nln__cuda_forward(const char *fn, const struct nln__forward_args *a,
                                    void *stream);
static nln_status nln__cuda_backward(const char *fn, const struct nln__backward_args *a,
                                     void *stream);

/* Every forward function: the checks, then the GPU (on_gpu) or the plan's
 * tasks on the CPU. */
static nln_status nln__forward(const char *fn, struct nln__forward_args *a, int on_gpu,
                               void *stream)
{
    struct nln__plan plan;
    const void *params[2];
    void *widened;
    nln_status status;
    NLN__TRY(nln__ready(fn));
    NLN__TRY(nln__check_forward(fn, a));
    if (on_gpu)
        return nln__cuda_forward(fn, a, stream);
    if (a->rows == 0)
        return NLN_OK;
    NLN__TRY(nln__plan(fn, 0, a->rows, a->cols, a->p->itemsize, &plan));
    a->task_rows = plan.task_rows;
    a->stream = (int32_t)plan.stream;
    params[0] = a->weight;
    params[1] = a->bias;
    status = nln__widen_params(fn, a->p, a->cols, params, 2, &widened);
    if (status == NLN_OK) {
        a->weight = params[0];
        a->bias = params[1];
        status = nln__kernel_status(fn, nln__run(nln__forward_task, a, plan.tasks,
                                                 plan.threaded));
    }
    free(widened);
    return status;
}

/* One block of rows: its part of dx and its row of partial sums. */
static int nln__backward_task(void *args, int64_t block)
{
    const struct nln__backward_args *a = args;
    const struct nln__precision *p = a->p;
    uintptr_t kernel = a->dresidual ? (a->wide ? p->backward_rows_wide_dresidual
                                               : p->backward_rows_dresidual)
                                    : (a->wide ? p->backward_rows_wide : p->backward_rows);
    return p->backward_blocks(kernel, a->dy, a->lddy, a->x, a->ldx, a->mean, a->rstd,
                              a->weight ? a->weight : p->one, a->weight != NULL,
                              (a->form & NLN__CENTERED) != 0, a->dresidual, a->lddres,
                              a->dresidual != NULL, a->dx, a->lddx, a->dweight_part,
                              a->dbias_part, a->rows, a->cols, a->block_rows, block,
                              block + 1, a->wide, a->stream) != NLN_ENTRY_OK;
}

/* reduce_cols columns of dweight and dbias: the blocks' partial sums in block order. */
static int nln__reduce_task(void *args, int64_t chunk)
{
    const struct nln__backward_args *a = args;
    int64_t first = chunk * a->reduce_cols;
    int64_t stop = first + a->reduce_cols < a->cols ? first + a->reduce_cols : a->cols;
    int failed = 0;
    if (a->dweight)
        failed |= a->p->reduce(a->p->block_sums, a->dweight_part, a->blocks, a->cols,
                               a->dweight, first, stop) != NLN_ENTRY_OK;
    if (a->dbias)
        failed |= a->p->reduce(a->p->block_sums, a->dbias_part, a->blocks, a->cols,
                               a->dbias, first, stop) != NLN_ENTRY_OK;
    return failed;
}

/* Every backward function: the checks, then the GPU (on_gpu) or, on the
 * CPU, the blocks of the plan and their sums: the partition depends on the
 * shape alone, so the bits do not depend on the thread count. */
static nln_status nln__backward(const char *fn, struct nln__backward_args *a, int on_gpu,
                                void *stream)
{
    struct nln__plan plan;
    size_t size = a->p->param_size; /* of the partial sums, dweight and dbias */
    void *widened;
    NLN__TRY(nln__ready(fn));
    NLN__TRY(nln__check_backward(fn, a));
    if (on_gpu)
        return nln__cuda_backward(fn, a, stream);
    if (a->rows == 0) { /* sums over no rows: +0.0, all bits zero */
        if (a->dweight)
            memset(a->dweight, 0, (size_t)a->cols * size);
        if (a->dbias)
            memset(a->dbias, 0, (size_t)a->cols * size);
        return NLN_OK;
    }
    NLN__TRY(nln__plan(fn, 1, a->rows, a->cols, a->p->itemsize, &plan));
    nln__count part_count = (nln__count)plan.tasks * (nln__count)a->cols;
    /* Implied by dy's check (blocks <= rows, cols <= lddy); kept beside the
       allocation it guards. */
    if (!nln__fits(NULL, part_count, size))
        return nln__span_error(fn, "the partial sums of dweight and dbias", NULL,
                               "blocks * cols", part_count, size);
    a->blocks = plan.tasks;
    a->block_rows = plan.task_rows;
    a->reduce_cols = plan.reduce_cols;
    a->wide = (int32_t)plan.wide;
    a->stream = (int32_t)plan.stream;
    NLN__TRY(nln__widen_params(fn, a->p, a->cols, &a->weight, 1, &widened));
    a->dweight_part = malloc((size_t)part_count * size);
    a->dbias_part = malloc((size_t)part_count * size);
    int failed;
    if (!a->dweight_part || !a->dbias_part) {
        free(a->dweight_part);
        free(a->dbias_part);
        free(widened);
        return nln__fail(NLN_ERR_INTERNAL, fn, NLN_OUT_OF_MEMORY);
    }
    failed = nln__run(nln__backward_task, a, plan.tasks, plan.threaded);
    failed |= nln__run(nln__reduce_task, a, (a->cols + plan.reduce_cols - 1) / plan.reduce_cols,
                       plan.threaded);
    free(a->dweight_part);
    free(a->dbias_part);
    free(widened);
    return nln__kernel_status(fn, failed);
}

/* ------------------------------------------------------------------ GPU */

NLN_API int nln_cuda_available(void)
{
    if (nln__ready("nln_cuda_available") != NLN_OK)
        return 0;
    return nln__py_cuda_available() == 1;
}

/* A checked forward call on the GPU: the Python side (with the GIL). */
static nln_status nln__cuda_forward(const char *fn, const struct nln__forward_args *a,
                                    void *stream)
{
    nln_status status;
    nln__error[0] = '\0';
    status = (nln_status)nln__py_cuda_forward(
        a->p->suffix, (a->form & NLN__CENTERED) != 0, (uintptr_t)a->x,
        a->ldx, (uintptr_t)a->residual, a->ldr, (uintptr_t)a->weight, (uintptr_t)a->bias,
        (uintptr_t)a->y, a->ldy, (uintptr_t)a->s, a->lds, (uintptr_t)a->mean,
        (uintptr_t)a->rstd, a->rows, a->cols, a->eps, (uintptr_t)stream);
    return status == NLN_OK ? NLN_OK : nln__fail_from_python(status, fn);
}

static nln_status nln__cuda_backward(const char *fn, const struct nln__backward_args *a,
                                     void *stream)
{
    nln_status status;
    nln__error[0] = '\0';
    status = (nln_status)nln__py_cuda_backward(
        a->p->suffix, (a->form & NLN__CENTERED) != 0, (uintptr_t)a->dy,
        a->lddy, (uintptr_t)a->x, a->ldx, (uintptr_t)a->mean, (uintptr_t)a->rstd,
        (uintptr_t)a->weight, (uintptr_t)a->dresidual, a->lddres, (uintptr_t)a->dx, a->lddx,
        (uintptr_t)a->dweight, (uintptr_t)a->dbias, a->rows, a->cols, (uintptr_t)stream);
    return status == NLN_OK ? NLN_OK : nln__fail_from_python(status, fn);
}

/* ------------------------------------------------------------------ exported functions
 *
 * Each function of numba_ln.h names itself and describes its call to the
 * bodies above. NLN__EXPORT defines a pair: nln_NAME_SUFFIX on the CPU and
 * nln_cuda_NAME_SUFFIX on the GPU, which takes the same parameters and then
 * the stream. KIND is forward or backward; the designated initializers that
 * follow fill in struct nln__KIND_args. NLN__DEFINE_EXPORTS takes a row of
 * NLN__PRECISIONS: T is the precision's data type (x, weight, bias, y, ...),
 * CT its compute type (mean, rstd, dweight, dbias, eps).
 */
#define NLN__WITH_STREAM(...) (__VA_ARGS__, void *stream)

#define NLN__EXPORT(name, suffix, kind, params, ...)                                    \
    NLN_API nln_status nln_##name##_##suffix params                                     \
    {                                                                                   \
        struct nln__##kind##_args a = {.p = &nln__##suffix, __VA_ARGS__};              \
        return nln__##kind("nln_" #name "_" #suffix, &a, 0, NULL);                      \
    }                                                                                   \
                                                                                        \
    NLN_API nln_status nln_cuda_##name##_##suffix NLN__WITH_STREAM params               \
    {                                                                                   \
        struct nln__##kind##_args a = {.p = &nln__##suffix, __VA_ARGS__};              \
        return nln__##kind("nln_cuda_" #name "_" #suffix, &a, 1, stream);               \
    }

/* One precision's functions, in the header's order. */
#define NLN__DEFINE_EXPORTS(suffix, T, CT)                                              \
    NLN__EXPORT(layer_norm, suffix, forward,                                            \
                (const T *x, int64_t ldx, const T *weight, const T *bias, T *y,         \
                 int64_t ldy, CT *mean, CT *rstd, int64_t rows, int64_t cols, CT eps),  \
                .form = NLN__CENTERED, .x = x, .ldx = ldx, .weight = weight,            \
                .bias = bias, .y = y, .ldy = ldy, .mean = mean, .rstd = rstd,           \
                .rows = rows, .cols = cols, .eps = eps)                                 \
    NLN__EXPORT(layer_norm_backward, suffix, backward,                                  \
                (const T *dy, int64_t lddy, const T *x, int64_t ldx, const CT *mean,    \
                 const CT *rstd, const T *weight, T *dx, int64_t lddx, CT *dweight,     \
                 CT *dbias, int64_t rows, int64_t cols),                                \
                .form = NLN__CENTERED, .dy = dy, .lddy = lddy, .x = x, .ldx = ldx,      \
                .mean = mean, .rstd = rstd, .weight = weight, .dx = dx, .lddx = lddx,   \
                .dweight = dweight, .dbias = dbias, .rows = rows, .cols = cols)         \
    NLN__EXPORT(rms_norm, suffix, forward,                                              \
                (const T *x, int64_t ldx, const T *weight, T *y, int64_t ldy, CT *rstd, \
                 int64_t rows, int64_t cols, CT eps),                                   \
                .form = 0, .x = x, .ldx = ldx, .weight = weight, .y = y, .ldy = ldy,    \
                .rstd = rstd, .rows = rows, .cols = cols, .eps = eps)                   \
    NLN__EXPORT(rms_norm_backward, suffix, backward,                                    \
                (const T *dy, int64_t lddy, const T *x, int64_t ldx, const CT *rstd,    \
                 const T *weight, T *dx, int64_t lddx, CT *dweight, int64_t rows,       \
                 int64_t cols),                                                         \
                .form = 0, .dy = dy, .lddy = lddy, .x = x, .ldx = ldx, .rstd = rstd,    \
                .weight = weight, .dx = dx, .lddx = lddx, .dweight = dweight,           \
                .rows = rows, .cols = cols)                                             \
    NLN__EXPORT(add_layer_norm, suffix, forward,                                        \
                (const T *x, int64_t ldx, const T *residual, int64_t ldr,               \
                 const T *weight, const T *bias, T *y, int64_t ldy, T *s, int64_t lds,  \
                 CT *mean, CT *rstd, int64_t rows, int64_t cols, CT eps),               \
                .form = NLN__CENTERED | NLN__RESIDUAL, .x = x, .ldx = ldx,              \
                .residual = residual, .ldr = ldr, .weight = weight, .bias = bias,       \
                .y = y, .ldy = ldy, .s = s, .lds = lds, .mean = mean, .rstd = rstd,     \
                .rows = rows, .cols = cols, .eps = eps)                                 \
    NLN__EXPORT(add_layer_norm_backward, suffix, backward,                              \
                (const T *dy, int64_t lddy, const T *s, int64_t lds, const CT *mean,    \
                 const CT *rstd, const T *weight, const T *dresidual, int64_t lddres,   \
                 T *dx, int64_t lddx, CT *dweight, CT *dbias, int64_t rows,             \
                 int64_t cols),                                                         \
                .form = NLN__CENTERED | NLN__RESIDUAL, .dy = dy, .lddy = lddy, .x = s,  \
                .ldx = lds, .mean = mean, .rstd = rstd, .weight = weight,               \
                .dresidual = dresidual, .lddres = lddres, .dx = dx, .lddx = lddx,       \
                .dweight = dweight, .dbias = dbias, .rows = rows, .cols = cols)         \
    NLN__EXPORT(add_rms_norm, suffix, forward,                                          \
                (const T *x, int64_t ldx, const T *residual, int64_t ldr,               \
                 const T *weight, T *y, int64_t ldy, T *s, int64_t lds, CT *rstd,       \
                 int64_t rows, int64_t cols, CT eps),                                   \
                .form = NLN__RESIDUAL, .x = x, .ldx = ldx, .residual = residual,        \
                .ldr = ldr, .weight = weight, .y = y, .ldy = ldy, .s = s, .lds = lds,   \
                .rstd = rstd, .rows = rows, .cols = cols, .eps = eps)                   \
    NLN__EXPORT(add_rms_norm_backward, suffix, backward,                                \
                (const T *dy, int64_t lddy, const T *s, int64_t lds, const CT *rstd,    \
                 const T *weight, const T *dresidual, int64_t lddres, T *dx,            \
                 int64_t lddx, CT *dweight, int64_t rows, int64_t cols),                \
                .form = NLN__RESIDUAL, .dy = dy, .lddy = lddy, .x = s, .ldx = lds,      \
                .rstd = rstd, .weight = weight, .dresidual = dresidual,                 \
                .lddres = lddres, .dx = dx, .lddx = lddx, .dweight = dweight,           \
                .rows = rows, .cols = cols)

NLN__PRECISIONS(NLN__DEFINE_EXPORTS)
