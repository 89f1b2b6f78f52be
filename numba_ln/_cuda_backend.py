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


def _as_stream(stream):
    """``stream=`` as a numba stream; the default stream for None."""
    from numba import cuda
    if stream is None:
        return cuda.default_stream()
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
    return cuda.as_cuda_array(obj)


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


def _param(param, spec, stream):
    """A weight/bias as a contiguous compute-dtype device buffer, or a placeholder."""
    from numba import cuda
    if param is None:
        return cuda.device_array(1, spec.compute_dtype, stream=stream), False
    return _vector(param, spec.cols, spec.compute_dtype, stream), True


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


def _launch(kernel, grid, block, stream, shared_bytes, args):
    """``kernel[grid, block, stream, shared_bytes](*args)``: every launch goes through here."""
    kernel[grid, block, stream, shared_bytes](*args)


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
    mean = cuda.device_array(spec.rows, compute, stream=stream)
    rstd = cuda.device_array(spec.rows, compute, stream=stream)
    if spec.rows:
        launch = gpu.plan("forward", spec.rows, spec.cols, compute)
        x_buf, ldx = _row_buffer(x, spec, stream)
        y_buf, ldy = _row_buffer(y, spec, stream)
        w, has_w = _param(weight, spec, stream)
        b, has_b = _param(bias, spec, stream)
        args = (x_buf, ldx, w, b, has_w, has_b, y_buf, ldy, mean, rstd,
                spec.rows, spec.cols, compute.type(eps))
        if launch.variant == "warp_per_row":
            args += (launch.lanes,)
        _launch(launch.kernel, launch.grid, launch.block, stream, launch.shared_bytes, args)
        if out_array is not None and not direct:
            _assign(out_array, y, stream)
    return (out if out is not None else y, mean.reshape(spec.stats_shape),
            rstd.reshape(spec.stats_shape))


def _backward_device(spec, dy, x, mean, rstd, weight, out, stream):
    from numba import cuda

    from . import gpu
    compute = spec.compute_dtype
    launch = gpu.plan("backward", spec.rows, spec.cols, compute)
    blocks = launch.grid if spec.rows else 0
    out_array = None if out is None else as_numba_array(out)
    direct = out_array is not None and _writes_directly(
        out_array, (dy, x, mean, rstd, weight), spec)
    dx = out_array if direct else cuda.device_array(spec.shape, spec.dtype, stream=stream)
    dweight = cuda.device_array(spec.cols, spec.param_dtype, stream=stream)
    dbias = cuda.device_array(spec.cols, spec.param_dtype, stream=stream)
    dweight_part = cuda.device_array(max(1, blocks * spec.cols), compute, stream=stream)
    dbias_part = cuda.device_array(max(1, blocks * spec.cols), compute, stream=stream)
    if spec.rows:
        dy_buf, lddy = _row_buffer(as_numba_array(dy), spec, stream)
        x_buf, ldx = _row_buffer(as_numba_array(x), spec, stream)
        dx_buf, lddx = _row_buffer(dx, spec, stream)
        mean_buf = _vector(mean, spec.rows, compute, stream)
        rstd_buf = _vector(rstd, spec.rows, compute, stream)
        w, has_w = _param(weight, spec, stream)
        args = (dy_buf, lddy, x_buf, ldx, mean_buf, rstd_buf, w, has_w, dx_buf, lddx,
                dweight_part, dbias_part, spec.rows, spec.cols)
        if launch.variant == "warp_per_row":
            args += (launch.lanes,)
        _launch(launch.kernel, launch.grid, launch.block, stream, launch.shared_bytes, args)
    reduction = launch.reduction
    _launch(reduction.kernel, reduction.grid, reduction.block, stream, reduction.shared_bytes,
            (dweight_part, dbias_part, blocks, spec.cols, dweight, dbias))
    if out_array is not None and not direct:
        _assign(out_array, dx, stream)
    shape = spec.normalized_shape
    return (out if out is not None else dx), dweight.reshape(shape), dbias.reshape(shape)


def _to_device(array, stream):
    from numba import cuda
    return None if array is None else cuda.to_device(np.ascontiguousarray(array),
                                                     stream=stream)


def forward(spec, x, weight, bias, eps, out, stream=None):
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
    stream = _as_stream(stream)
    if is_device_array(x):
        return _forward_device(spec, x, weight, bias, eps, out, stream)
    y, mean, rstd = _forward_device(spec, _to_device(x, stream), _to_device(weight, stream),
                                    _to_device(bias, stream), eps, None, stream)
    y, mean, rstd = (a.copy_to_host(stream=stream) for a in (y, mean, rstd))
    stream.synchronize()
    if out is not None:
        out[...] = y
        y = out
    return y, mean, rstd


def backward(spec, dy, x, mean, rstd, weight, out=None, stream=None):
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
    stream = _as_stream(stream)
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
