"""The Python half of libnumba_ln.so's private boundary (capi/nln_shim.h).

capi/build.py hands this file to cffi's ``embedding_init_code``: it runs once,
inside the interpreter the library embeds, when the C side first starts
Python. It only binds the ``extern "Python"`` functions; everything that can
fail (importing numba_ln, loading or compiling the kernels) happens inside
``nln__py_init``, which reports failure through its return value and
``nln__set_error`` rather than raising here.

``_numba_ln_capi`` is the module cffi builds from the library itself.
"""

import sys
import traceback

from _numba_ln_capi import ffi, lib


def _set_error(message):
    lib.nln__set_error(message.encode("utf-8", "replace")[:1000])


def _describe(exc):
    """One line: the exception type and message, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}{where}"


@ffi.def_extern(error=-1)
def nln__py_init(runtime):
    """Import numba_ln and store the CPU entry points' addresses in ``*runtime``."""
    try:
        from numba_ln import _cabi

        if _cabi.OK != lib.NLN_ENTRY_OK:
            raise RuntimeError(f"numba_ln._cabi.OK is {_cabi.OK}, the library expects "
                               f"{lib.NLN_ENTRY_OK}: rebuild it with capi/build.py")
        for name, address in _cabi.entry_points().items():
            setattr(runtime, name, address)
        runtime.ready = lib.NLN_RUNTIME_READY
        return 0
    except BaseException as exc:  # report every failure to C; never unwind into it
        _set_error(f"cannot load numba_ln in the embedded Python {sys.executable} "
                   f"(prefix {sys.prefix}): {_describe(exc)}")
        return -1


@ffi.def_extern(error=0)
def nln__py_cuda_available():
    """1 when the GPU functions can run here."""
    try:
        from numba_ln import _cabi

        return 1 if _cabi.cuda_unavailable_reason() is None else 0
    except Exception:  # no numba-cuda, no driver: either way, no GPU
        return 0


def _run_on_gpu(function, *args):
    """Call a ``numba_ln._cabi`` GPU function; map its outcome to an nln_status."""
    import numba_ln  # imported by nln__py_init already: the C side calls us only then
    from numba_ln import _cabi

    try:
        reason = _cabi.cuda_unavailable_reason()
        if reason is not None:
            _set_error(f"no usable GPU: {reason}")
            return lib.NLN_ERR_NO_DEVICE
        function(*args)
        return lib.NLN_OK
    except numba_ln.CUDAUnavailableError as exc:
        _set_error(f"no usable GPU: {exc}")
        return lib.NLN_ERR_NO_DEVICE
    except NotImplementedError as exc:
        _set_error(_describe(exc))
        return lib.NLN_ERR_UNSUPPORTED
    except (TypeError, ValueError) as exc:
        _set_error(_describe(exc))
        return lib.NLN_ERR_INVALID_ARGUMENT
    except BaseException as exc:  # report every failure to C; never unwind into it
        _set_error(f"the CUDA backend failed: {_describe(exc)}")
        return lib.NLN_ERR_INTERNAL


@ffi.def_extern(error=lib.NLN_ERR_INTERNAL)
def nln__py_cuda_forward(precision, centered, x, ldx, residual, ldr, weight, bias, y, ldy, s, lds,
                         mean, rstd, rows, cols, eps, stream):
    """Every ``nln_cuda_*`` forward function, after the C side's checks."""
    from numba_ln import _cabi

    return _run_on_gpu(_cabi.cuda_forward, ffi.string(precision).decode(), centered, x, ldx,
                       residual, ldr, weight, bias, y, ldy, s, lds, mean, rstd, rows, cols,
                       eps, stream)


@ffi.def_extern(error=lib.NLN_ERR_INTERNAL)
def nln__py_cuda_backward(precision, centered, dy, lddy, x, ldx, mean, rstd, weight, dresidual,
                          lddres, dx, lddx, dweight, dbias, rows, cols, stream):
    """Every ``nln_cuda_*_backward`` function, after the C side's checks."""
    from numba_ln import _cabi

    return _run_on_gpu(_cabi.cuda_backward, ffi.string(precision).decode(), centered, dy,
                       lddy, x, ldx, mean, rstd, weight, dresidual, lddres, dx, lddx, dweight,
                       dbias, rows, cols, stream)
