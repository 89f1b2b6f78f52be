"""The CUDA backend: availability, device-array detection, host glue for ``gpu.py``.

numba.cuda is imported lazily: a CPU-only user never pays for it.

``forward`` and ``backward`` mirror ``_cpu_backend``: they turn validated
arrays into the kernels' layout (a 1-D buffer and a row stride, viewing the
caller's device memory without a copy), allocate results, launch the kernels
``gpu.plan`` chose on the caller's stream, and shape the results. Any array
exposing ``__cuda_array_interface__`` is viewed as a numba device array;
under numba's CUDA simulator its own device arrays stand in. Layouts the
kernels cannot take (rows not contiguous, parameters of another dtype) are
converted by a device-side copy, never through the host. NumPy inputs (with
``device="cuda"``) are copied in, computed on, and copied back.
"""

import functools
import importlib.util
import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._validate import row_stride


def simulator_enabled():
    """True when numba's CUDA simulator stands in for a GPU."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def is_device_array(obj):
    """True for any array that lives on a CUDA device (or the simulator's stand-in)."""
    if obj is None:
        return False
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    if simulator_enabled() and "numba.cuda" in type(obj).__module__:
        # The simulator's arrays wrap NumPy arrays and expose no
        # __cuda_array_interface__; the simulator has no is_cuda_array either.
        from numba.cuda.cudadrv.devicearray import is_cuda_ndarray
        return bool(is_cuda_ndarray(obj))
    return False


@functools.cache
def unavailable_reason():
    """None when kernels can run on a GPU here; otherwise why not, and what to do."""
    if importlib.util.find_spec("numba_cuda") is None:
        return ("numba-cuda is not installed; install the GPU target with "
                "`pip install 'numba-ln[cuda]'`")
    from numba import cuda
    if simulator_enabled():
        return None
    try:
        from numba.cuda.cudadrv.driver import driver
        driver.get_device_count()
    except Exception as exc:  # the driver's own words say what is missing
        message = " ".join(str(exc).split())
        return f"no usable CUDA driver: {message}"
    if not cuda.is_available():
        return "the CUDA driver reports no usable GPU"
    return None


def device_name():
    """The current GPU, as the driver names it, with its compute capability."""
    from numba import cuda
    device = cuda.get_current_device()
    major, minor = device.compute_capability
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return f"{name} (sm_{major}{minor})"


# --------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------

def stream_handle(stream):
    """The raw ``CUstream`` handle of a foreign stream object.

    Parameters
    ----------
    stream : object
        Anything implementing the ``__cuda_stream__`` protocol (CuPy, CUDA
        Python), a PyTorch stream (``.cuda_stream``), a CuPy stream
        (``.ptr``), or the handle itself as an ``int``.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        ``stream`` carries no CUDA stream handle.
    """
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    for attribute in ("cuda_stream", "ptr"):
        handle = getattr(stream, attribute, None)
        if isinstance(handle, int) and not isinstance(handle, bool):
            return handle
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    raise TypeError(
        f"stream must be None, a numba CUDA stream, or an object with a raw CUDA "
        f"stream handle (__cuda_stream__, .cuda_stream, .ptr, or an int); "
        f"got {type(stream).__name__}")


def _exported_stream(arrays):
    """The stream the first array that names one exports (CUDA array interface v3), or None.

    1 and 2 are the legacy and the per-thread default streams; ``None`` or no
    ``stream`` key means the producer needs no ordering.
    """
    from numba import cuda
    for array in arrays:
        interface = getattr(array, "__cuda_array_interface__", None)
        handle = interface.get("stream") if isinstance(interface, dict) else None
        if isinstance(handle, int) and not isinstance(handle, bool) and handle > 0:
            if handle == 1:
                return cuda.legacy_default_stream()
            if handle == 2:
                return cuda.per_thread_default_stream()
            return cuda.external_stream(handle)
    return None


def _as_stream(stream, arrays=()):
    """The numba stream a call runs on.

    ``stream=`` when given; else the stream an input array exports (so the
    launch is ordered after the work that produced it, without a host
    synchronization); else the per-thread default stream, which does not
    serialize threads that launch concurrently.
    """
    from numba import cuda
    if stream is None:
        if simulator_enabled():
            return cuda.default_stream()
        exported = _exported_stream(arrays)
        return exported if exported is not None else cuda.per_thread_default_stream()
    if simulator_enabled():
        numba_stream = cuda.stream  # the simulator's stream class
    else:
        from numba.cuda.cudadrv.driver import Stream as numba_stream
    if isinstance(stream, numba_stream):
        return stream
    return cuda.external_stream(stream_handle(stream))


# --------------------------------------------------------------------------
# Device arrays: views, copies, pointers
# --------------------------------------------------------------------------

def as_numba_array(obj):
    """A numba device array viewing ``obj``'s memory (no copy).

    Parameters
    ----------
    obj : CUDA array
        A numba device array, or anything with ``__cuda_array_interface__``
        (CuPy, PyTorch CUDA tensors); under the simulator, its device arrays.

    Returns
    -------
    numba device array
    """
    from numba.cuda.cudadrv.devicearray import is_cuda_ndarray
    if is_cuda_ndarray(obj):
        return obj
    from numba import cuda
    # No host synchronization: the call is ordered on the stream the array exports.
    return cuda.as_cuda_array(obj, sync=False)


def _pointer(array):
    """Device address of ``array``'s first element."""
    if simulator_enabled():
        return array._ary.__array_interface__["data"][0]
    return array.__cuda_array_interface__["data"][0]


def _extent(array):
    """``[low, high)`` byte addresses that ``array`` may touch (a superset).

    Reaches as far below the reported address as above it: for a view with
    negative strides some libraries report its first element, others the
    lowest address.
    """
    pointer = _pointer(array)
    if 0 in tuple(array.shape):
        return pointer, pointer
    span = sum(abs((size - 1) * stride) for size, stride in zip(array.shape, array.strides))
    span += array.dtype.itemsize
    has_negative = any(stride < 0 for stride in array.strides)
    return (pointer - span if has_negative else pointer), pointer + span


def _flat(array, size):
    """A 1-D C-contiguous view of ``size`` elements from ``array``'s first element."""
    itemsize = array.dtype.itemsize
    if simulator_enabled():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray(as_strided(array._ary, shape=(size,), strides=(itemsize,)))
    from numba import cuda
    interface = {"shape": (size,), "strides": None, "typestr": array.dtype.str,
                 "data": (_pointer(array), False), "version": 3}
    return cuda.from_cuda_array_interface(interface, owner=array, sync=False)


def _assign(target, source, stream):
    """``target[...] = source`` on the device (numba's strided, casting copy kernel)."""
    if simulator_enabled():
        target._ary[...] = source._ary
    else:
        target.setitem(tuple(slice(None) for _ in target.shape), source, stream=stream)


def _copy(array, dtype, stream):
    """A C-contiguous device copy of ``array`` in ``dtype``."""
    from numba import cuda
    copy = cuda.device_array(tuple(array.shape), dtype, stream=stream)
    _assign(copy, array, stream)
    return copy


def _row_buffer(array, spec, stream):
    """``array`` as (1-D kernel buffer, row stride), copied on the device only if needed."""
    ld = row_stride(array.shape, array.strides, array.dtype.itemsize, spec.axis)
    if ld is None:
        array = _copy(array, array.dtype, stream)
        ld = spec.cols
    return _flat(array, (spec.rows - 1) * ld + spec.cols), ld


def _vector(array, count, dtype, stream):
    """A contiguous 1-D device buffer of ``count`` elements of ``dtype`` (copy if needed)."""
    array = as_numba_array(array)
    if (np.dtype(array.dtype) != dtype
            or row_stride(array.shape, array.strides, array.dtype.itemsize, 0) != count):
        array = _copy(array, dtype, stream)
    return _flat(array, count)


def _gains(params, spec, placeholder, stream):
    """Weight/bias as contiguous device buffers of one dtype, each with "is it there".

    In ``x``'s dtype when every given one is (a float16 gain is widened in
    the kernel, as it is loaded); otherwise in the compute dtype, copied on
    the device where needed. A missing one is replaced by another buffer of
    that dtype (never read), so the kernel's types do not depend on which
    are given.
    """
    given = [as_numba_array(p) for p in params if p is not None]
    same = all(np.dtype(p.dtype) == spec.dtype for p in given)
    dtype = spec.dtype if same else spec.compute_dtype
    buffers = [None if p is None else _vector(p, spec.cols, dtype, stream) for p in params]
    present = [b for b in buffers if b is not None]
    stand_in = present[0] if present else placeholder  # x's dtype when none is given
    return [(stand_in, False) if b is None else (b, True) for b in buffers]


def _writes_directly(out, inputs, spec):
    """Can the kernel write into ``out`` as it is? (Row layout, and no partial overlap.)

    ``out`` may be one of ``inputs`` exactly (same start, same strides): every
    kernel thread reads its elements of a row before it writes them. Any other
    overlap is not safe.
    """
    if row_stride(out.shape, out.strides, out.dtype.itemsize, spec.axis) is None:
        return False
    out_low, out_high = _extent(out)
    for array in inputs:
        if array is None:
            continue
        low, high = _extent(array)
        same = out_low == low and tuple(out.strides) == tuple(array.strides)
        if not (same or out_high <= low or high <= out_low):
            return False
    return True


# --------------------------------------------------------------------------
# Forward and backward
# --------------------------------------------------------------------------

def _forward_device(spec, x, weight, bias, eps, out, stream):
    from numba import cuda

    from . import gpu
    compute = spec.compute_dtype
    x = as_numba_array(x)
    out_array = None if out is None else as_numba_array(out)
    direct = out_array is not None and _writes_directly(out_array, (x, weight, bias), spec)
    y = out_array if direct else cuda.device_array(spec.shape, spec.dtype, stream=stream)
    if not spec.rows:
        stats = cuda.device_array(0, compute, stream=stream)
        return (out if out is not None else y, stats.reshape(spec.stats_shape),
                stats.reshape(spec.stats_shape))
    x_buf, ldx = _row_buffer(x, spec, stream)
    y_buf, ldy = _row_buffer(y, spec, stream)
    (w, has_w), (b, has_b) = _gains((weight, bias), spec, x_buf, stream)
    pointers = [_pointer(a) for a in (x_buf, y_buf) + ((w,) if has_w else ())
                + ((b,) if has_b else ())]
    p = gpu.plan("forward", spec.rows, spec.cols, spec.dtype, pointers, (ldx, ldy))
    # One allocation: mean, rstd, then the split kernels' partial statistics.
    stats = cuda.device_array(2 * spec.rows + p.workspace, compute, stream=stream)
    mean, rstd = stats[:spec.rows], stats[spec.rows:2 * spec.rows]
    gpu.run_forward(p, stream, x_buf, ldx, w, b, has_w, has_b, y_buf, ldy, mean, rstd,
                    stats[2 * spec.rows:], spec.rows, spec.cols, compute.type(eps))
    if out_array is not None and not direct:
        _assign(out_array, y, stream)
    return (out if out is not None else y, mean.reshape(spec.stats_shape),
            rstd.reshape(spec.stats_shape))


def _backward_device(spec, dy, x, mean, rstd, weight, out, stream):
    from numba import cuda

    from . import gpu
    compute = spec.compute_dtype
    out_array = None if out is None else as_numba_array(out)
    direct = out_array is not None and _writes_directly(
        out_array, (dy, x, mean, rstd, weight), spec)
    dx = out_array if direct else cuda.device_array(spec.shape, spec.dtype, stream=stream)
    grads = cuda.device_array(2 * spec.cols, spec.param_dtype, stream=stream)
    dweight, dbias = grads[:spec.cols], grads[spec.cols:]
    x_arr = as_numba_array(x)
    if spec.rows:
        dy_buf, lddy = _row_buffer(as_numba_array(dy), spec, stream)
        x_buf, ldx = _row_buffer(x_arr, spec, stream)
        dx_buf, lddx = _row_buffer(dx, spec, stream)
        mean_buf = _vector(mean, spec.rows, compute, stream)
        rstd_buf = _vector(rstd, spec.rows, compute, stream)
    else:  # only the reduction runs (it writes zeros); these are never read
        x_buf = dy_buf = dx_buf = _flat(x_arr, 0)
        mean_buf = rstd_buf = cuda.device_array(0, compute, stream=stream)
        lddy = ldx = lddx = spec.cols
    ((w, has_w),) = _gains((weight,), spec, x_buf, stream)
    pointers = [_pointer(a) for a in (dy_buf, x_buf, dx_buf) + ((w,) if has_w else ())]
    p = gpu.plan("backward", spec.rows, spec.cols, spec.dtype, pointers, (lddy, ldx, lddx),
                 spec.param_dtype)
    workspace = cuda.device_array(max(1, p.workspace), compute, stream=stream)
    gpu.run_backward(p, stream, dy_buf, lddy, x_buf, ldx, mean_buf, rstd_buf, w, has_w,
                     dx_buf, lddx, workspace, spec.rows, spec.cols, dweight, dbias)
    if out_array is not None and not direct:
        _assign(out_array, dx, stream)
    shape = spec.normalized_shape
    return (out if out is not None else dx), dweight.reshape(shape), dbias.reshape(shape)


def _to_device(array, stream):
    from numba import cuda
    return None if array is None else cuda.to_device(np.ascontiguousarray(array),
                                                     stream=stream)


def forward(spec, x, weight, bias, eps, out, stream=None, *, centered=True, residual=None,
            residual_out=None):
    """Layer norm on the GPU; returns ``(y, mean, rstd)`` like ``_cpu_backend.forward``.

    Parameters
    ----------
    spec : _validate.Spec
    x, weight, bias, out : CUDA arrays, or NumPy arrays (``device="cuda"``)
        ``weight``/``bias``/``out`` may be None.
    eps : float
    stream : None, numba stream, or an object with a raw CUDA stream handle

    Returns
    -------
    y, mean, rstd
        Device arrays (``y`` is ``out`` when given) for device inputs; NumPy
        arrays, after the stream is synchronized, for NumPy inputs.
    """
    if not centered or residual is not None:
        raise NotImplementedError("RMSNorm and the residual add are not on the GPU yet")
    stream = _as_stream(stream, (x, weight, bias, out))
    if is_device_array(x):
        return (lambda y, mean, rstd: (y, None, mean, rstd))(
            *_forward_device(spec, x, weight, bias, eps, out, stream))
    y, mean, rstd = _forward_device(spec, _to_device(x, stream), _to_device(weight, stream),
                                    _to_device(bias, stream), eps, None, stream)
    y, mean, rstd = (a.copy_to_host(stream=stream) for a in (y, mean, rstd))
    stream.synchronize()
    if out is not None:
        out[...] = y
        y = out
    return y, None, mean, rstd


def backward(spec, dy, x, mean, rstd, weight, out=None, stream=None, *, centered=True,
             dresidual=None):
    """Gradients of layer norm on the GPU; returns ``(dx, dweight, dbias)``.

    Parameters
    ----------
    spec : _validate.Spec
    dy, x, mean, rstd, weight, out : CUDA arrays, or NumPy arrays (``device="cuda"``)
        ``mean``/``rstd`` in any shape with one element per row, any float
        dtype; ``weight`` and ``out`` may be None.
    stream : None, numba stream, or an object with a raw CUDA stream handle

    Returns
    -------
    dx, dweight, dbias
        Device arrays for device inputs; NumPy arrays for NumPy inputs
        (``dx`` is ``out`` when given). ``dweight``/``dbias`` are in
        ``spec.param_dtype`` and bit-identical from call to call (fixed
        blocks, summed in a fixed order).
    """
    if not centered or dresidual is not None:
        raise NotImplementedError("RMSNorm and the residual add are not on the GPU yet")
    stream = _as_stream(stream, (dy, x, mean, rstd, weight, out))
    if is_device_array(x):
        return _backward_device(spec, dy, x, mean, rstd, weight, out, stream)
    results = _backward_device(spec, *(_to_device(a, stream) for a in (dy, x, mean, rstd)),
                               _to_device(weight, stream), None, stream)
    dx, dweight, dbias = (a.copy_to_host(stream=stream) for a in results)
    stream.synchronize()
    if out is not None:
        out[...] = dx
        dx = out
    return dx, dweight, dbias
