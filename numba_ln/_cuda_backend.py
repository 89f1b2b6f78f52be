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

bfloat16: numba device arrays of ``ml_dtypes.bfloat16`` (``cuda.to_device``
keeps the dtype) and any ``__cuda_array_interface__`` of typestr ``<V2``
(PyTorch's bfloat16 tensors; numba's own bfloat16 arrays export it too) are
bfloat16 arrays, viewed as such without a copy; an ``int16`` array is never
taken for one. The kernels get ``int16`` views of the bits (``_flat``);
results are numba device arrays of ``ml_dtypes.bfloat16``. numba's copy
kernels cannot type bfloat16: same-dtype copies move the ``int16`` bits, and
a bfloat16 gain or statistic is widened to the compute dtype by
``gpu.widen_bfloat16``.
"""

import functools
import importlib.util
import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _validate
from ._validate import row_stride

#: Typestrs of a 2-byte "void" element: PyTorch's bfloat16 in ``__cuda_array_interface__``.
_BFLOAT16_TYPESTRS = ("<V2", "|V2")
_VOID2 = np.dtype("V2")


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
        if np.dtype(obj.dtype) == _VOID2:  # made by numba from a "<V2" interface
            return obj.view(bfloat16())
        return obj
    interface = obj.__cuda_array_interface__
    if interface.get("typestr") in _BFLOAT16_TYPESTRS:
        # Wrapped as int16 (a type numba knows), then viewed as bfloat16.
        return _from_interface({**interface, "typestr": "<i2"}, obj).view(bfloat16())
    return _from_interface(interface, obj)  # numba's as_cuda_array, which the simulator lacks


def bfloat16():
    """ml_dtypes' bfloat16 dtype, the name numba-ln gives a ``<V2`` device array's elements.

    Raises
    ------
    TypeError
        ml_dtypes is not installed (a PyTorch user may not have it).
    """
    if _validate.BFLOAT16 is None:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("x is a bfloat16 CUDA array (typestr '<V2'); numba-ln names its "
                            "dtype with ml_dtypes: `pip install ml_dtypes`") from None
        _validate.check_float_dtype(np.dtype(ml_dtypes.bfloat16), "x")
    return _validate.BFLOAT16


def _is_bfloat16(dtype):
    return _validate.BFLOAT16 is not None and np.dtype(dtype) == _validate.BFLOAT16


class _HostInterface:
    """Simulator: a ``__cuda_array_interface__`` read as the host memory it stands for."""

    def __init__(self, interface, owner):
        self.owner = owner  # kept alive by the NumPy array that views it
        self.__array_interface__ = {"shape": tuple(interface["shape"]),
                                    "typestr": interface["typestr"],
                                    "data": tuple(interface["data"]),
                                    "strides": interface.get("strides"), "version": 3}


def _from_interface(interface, owner):
    """A numba device array over the memory ``interface`` describes (no copy).

    No host synchronization: the call is ordered on the stream the array exports.
    """
    if simulator_enabled():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray(np.asarray(_HostInterface(interface, owner)))
    from numba import cuda
    return cuda.from_cuda_array_interface(interface, owner=owner, sync=False)


def _kernel_view(array):
    """``array`` as a kernel takes it: bfloat16 as its ``int16`` bits (no copy)."""
    return array.view(np.int16) if _is_bfloat16(array.dtype) else array


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
        return _kernel_view(FakeCUDAArray(as_strided(array._ary, shape=(size,),
                                                     strides=(itemsize,))))
    from numba import cuda
    typestr = "<i2" if _is_bfloat16(array.dtype) else array.dtype.str
    interface = {"shape": (size,), "strides": None, "typestr": typestr,
                 "data": (_pointer(array), False), "version": 3}
    return cuda.from_cuda_array_interface(interface, owner=array, sync=False)


def _assign(target, source, stream):
    """``target[...] = source`` on the device (numba's strided, casting copy kernel).

    bfloat16 to bfloat16 moves the bits; any other conversion from or to
    bfloat16 goes through :func:`_copy`.
    """
    if _is_bfloat16(target.dtype) and _is_bfloat16(source.dtype):
        target, source = target.view(np.int16), source.view(np.int16)
    if simulator_enabled():
        target._ary[...] = source._ary
    else:
        target.setitem(tuple(slice(None) for _ in target.shape), source, stream=stream)


def _copy(array, dtype, stream):
    """A C-contiguous device copy of ``array`` in ``dtype``.

    From bfloat16 to another dtype: the bits copied, then widened by a kernel.

    Raises
    ------
    TypeError
        A conversion to bfloat16 from another dtype (none is needed).
    """
    from numba import cuda
    dtype = np.dtype(dtype)
    copy = cuda.device_array(tuple(array.shape), dtype, stream=stream)
    if _is_bfloat16(array.dtype) == _is_bfloat16(dtype):
        _assign(copy, array, stream)
        return copy
    if not _is_bfloat16(array.dtype):
        raise TypeError(f"no device conversion from {array.dtype} to bfloat16")
    from . import gpu
    bits = _copy(array, array.dtype, stream)
    size = int(np.prod(array.shape))
    gpu.widen_bfloat16(_flat(bits, size), _flat(copy, size), stream)
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

def _forward_device(spec, x, weight, bias, eps, out, stream, centered, residual,
                    residual_out):
    from numba import cuda

    from . import gpu
    compute = spec.compute_dtype
    x = as_numba_array(x)
    r = None if residual is None else as_numba_array(residual)
    out_array = None if out is None else as_numba_array(out)
    direct = out_array is not None and _writes_directly(out_array, (x, r, weight, bias), spec)
    y = out_array if direct else cuda.device_array(spec.shape, spec.dtype, stream=stream)
    s = s_array = None
    if r is not None:  # s = x + r in r's dtype; into residual_out as out= into y
        s_dtype = np.dtype(r.dtype)
        s_array = None if residual_out is None else as_numba_array(residual_out)
        direct_s = (s_array is not None and np.dtype(s_array.dtype) == s_dtype
                    and _writes_directly(s_array, (x, r, weight, bias, y), spec))
        s = s_array if direct_s else cuda.device_array(spec.shape, s_dtype, stream=stream)
    stats_count = 2 if centered else 1  # rstd, and mean when centered
    if not spec.rows:
        stats = cuda.device_array(0, compute, stream=stream).reshape(spec.stats_shape)
        return _forward_results(out, y, residual_out, s, stats if centered else None, stats)
    x_buf, ldx = _row_buffer(x, spec, stream)
    y_buf, ldy = _row_buffer(y, spec, stream)
    r_buf = ldr = s_buf = lds = None
    rows_of = [x_buf, y_buf]
    strides = [ldx, ldy]
    if r is not None:
        (r_buf, ldr), (s_buf, lds) = _row_buffer(r, spec, stream), _row_buffer(s, spec, stream)
        rows_of += [r_buf, s_buf]
        strides += [ldr, lds]
    (w, has_w), (b, has_b) = _gains((weight, bias), spec, x_buf, stream)
    pointers = [_pointer(a) for a in rows_of + ([w] if has_w else []) + ([b] if has_b else [])]
    p = gpu.plan("forward", spec.rows, spec.cols, spec.dtype, pointers, strides,
                 centered=centered, residual=None if r is None else s.dtype)
    # One allocation: rstd, mean (centered), then the split kernels' partial statistics.
    stats = cuda.device_array(stats_count * spec.rows + p.workspace, compute, stream=stream)
    rstd = stats[:spec.rows]
    mean = stats[spec.rows:2 * spec.rows] if centered else rstd  # rstd: a stand-in, unused
    gpu.run_forward(p, stream, x_buf, ldx, w, b, has_w, has_b, y_buf, ldy, mean, rstd,
                    stats[stats_count * spec.rows:], spec.rows, spec.cols, compute.type(eps),
                    r_buf, ldr, s_buf, lds)
    if out_array is not None and not direct:
        _assign(out_array, y, stream)
    if s_array is not None and s is not s_array:
        _assign(s_array, s, stream)
    return _forward_results(out, y, residual_out, s,
                            mean.reshape(spec.stats_shape) if centered else None,
                            rstd.reshape(spec.stats_shape))


def _forward_results(out, y, residual_out, s, mean, rstd):
    """``(y, s, mean, rstd)``, the caller's ``out``/``residual_out`` standing for ``y``/``s``."""
    if s is not None and residual_out is not None:
        s = residual_out
    return (out if out is not None else y), s, mean, rstd


def _backward_device(spec, dy, x, mean, rstd, weight, out, stream, centered, dresidual):
    from numba import cuda

    from . import gpu
    compute = spec.compute_dtype
    out_array = None if out is None else as_numba_array(out)
    direct = out_array is not None and _writes_directly(
        out_array, (dy, x, mean, rstd, weight, dresidual), spec)
    dx = out_array if direct else cuda.device_array(spec.shape, spec.dtype, stream=stream)
    grads = cuda.device_array((2 if centered else 1) * spec.cols, spec.param_dtype,
                              stream=stream)
    dweight = grads[:spec.cols]
    dbias = grads[spec.cols:] if centered else None
    x_arr = as_numba_array(x)
    dres_buf = lddres = None
    if spec.rows:
        dy_buf, lddy = _row_buffer(as_numba_array(dy), spec, stream)
        x_buf, ldx = _row_buffer(x_arr, spec, stream)
        dx_buf, lddx = _row_buffer(dx, spec, stream)
        rstd_buf = _vector(rstd, spec.rows, compute, stream)
        mean_buf = _vector(mean, spec.rows, compute, stream) if centered else rstd_buf
        if dresidual is not None:
            dres_buf, lddres = _row_buffer(as_numba_array(dresidual), spec, stream)
    else:  # only the reduction runs (it writes zeros); these are never read
        x_buf = dy_buf = dx_buf = _flat(x_arr, 0)
        mean_buf = rstd_buf = cuda.device_array(0, compute, stream=stream)
        lddy = ldx = lddx = spec.cols
    ((w, has_w),) = _gains((weight,), spec, x_buf, stream)
    rows_of = [dy_buf, x_buf, dx_buf] + ([] if dres_buf is None else [dres_buf])
    strides = [lddy, ldx, lddx] + ([] if dres_buf is None else [lddres])
    pointers = [_pointer(a) for a in rows_of + ([w] if has_w else [])]
    p = gpu.plan("backward", spec.rows, spec.cols, spec.dtype, pointers, strides,
                 spec.param_dtype, centered=centered,
                 residual=None if dres_buf is None else spec.dtype)
    workspace = cuda.device_array(max(1, p.workspace), compute, stream=stream)
    gpu.run_backward(p, stream, dy_buf, lddy, x_buf, ldx, mean_buf, rstd_buf, w, has_w,
                     dx_buf, lddx, workspace, spec.rows, spec.cols, _kernel_view(dweight),
                     None if dbias is None else _kernel_view(dbias), dres_buf, lddres)
    if out_array is not None and not direct:
        _assign(out_array, dx, stream)
    shape = spec.normalized_shape
    return ((out if out is not None else dx), dweight.reshape(shape),
            None if dbias is None else dbias.reshape(shape))


def _to_device(array, stream):
    from numba import cuda
    return None if array is None else cuda.to_device(np.ascontiguousarray(array),
                                                     stream=stream)


def _to_host(results, stream):
    """Device results (None kept) copied to NumPy, after the stream is synchronized."""
    results = [None if a is None else a.copy_to_host(stream=stream) for a in results]
    stream.synchronize()
    return results


def _into(target, result):
    """``result`` written into the caller's NumPy ``target`` (returned), or ``result``."""
    if target is None:
        return result
    target[...] = result
    return target


def forward(spec, x, weight, bias, eps, out, stream=None, *, centered=True, residual=None,
            residual_out=None):
    """Layer norm or RMSNorm on the GPU, with an optional fused residual add.

    Parameters
    ----------
    spec : _validate.Spec
    x, weight, bias, out : CUDA arrays, or NumPy arrays (``device="cuda"``)
        ``weight``/``bias``/``out`` may be None.
    eps : float
    stream : None, numba stream, or an object with a raw CUDA stream handle
    centered : bool, optional
        False for RMSNorm (``bias`` is then None): ``y = x * rstd * weight``.
    residual : array, optional
        ``x``'s shape; ``x``'s dtype, or float32 with a float16 ``x``
        (validated by the caller). ``s = x + residual`` is normalized.
    residual_out : array, optional
        Receives ``s`` (``residual``'s dtype, ``x``'s shape); may be
        ``residual`` itself. Allocated when None.

    Returns
    -------
    y, s, mean, rstd
        Device arrays (``y`` is ``out`` and ``s`` is ``residual_out`` when
        given) for device inputs; NumPy arrays, after the stream is
        synchronized, for NumPy inputs. ``s`` is None without a residual,
        ``mean`` None when not ``centered``.
    """
    stream = _as_stream(stream, (x, residual, weight, bias, out, residual_out))
    if is_device_array(x):
        return _forward_device(spec, x, weight, bias, eps, out, stream, centered, residual,
                               residual_out)
    results = _forward_device(spec, *(_to_device(a, stream) for a in (x, weight, bias)), eps,
                              None, stream, centered, _to_device(residual, stream), None)
    y, s, mean, rstd = _to_host(results, stream)
    return _into(out, y), (None if s is None else _into(residual_out, s)), mean, rstd


def backward(spec, dy, x, mean, rstd, weight, out=None, stream=None, *, centered=True,
             dresidual=None):
    """Gradients of layer norm or RMSNorm on the GPU; returns ``(dx, dweight, dbias)``.

    Parameters
    ----------
    spec : _validate.Spec
    dy, x, mean, rstd, weight, out : CUDA arrays, or NumPy arrays (``device="cuda"``)
        ``mean``/``rstd`` in any shape with one element per row, any float
        dtype; ``weight`` and ``out`` may be None, and ``mean`` is None when
        not ``centered``.
    stream : None, numba stream, or an object with a raw CUDA stream handle
    centered : bool, optional
        False for RMSNorm: ``dx = rstd * (g - xhat * mean(g * xhat))``.
    dresidual : array, optional
        ``x``'s shape and dtype: the gradient reaching ``s`` through the
        skip path, added into ``dx``.

    Returns
    -------
    dx, dweight, dbias
        Device arrays for device inputs; NumPy arrays for NumPy inputs
        (``dx`` is ``out`` when given). ``dweight``/``dbias`` are in
        ``spec.param_dtype`` and bit-identical from call to call (fixed
        blocks, summed in a fixed order); ``dbias`` is None when not
        ``centered``.
    """
    stream = _as_stream(stream, (dy, x, mean, rstd, weight, out, dresidual))
    if is_device_array(x):
        return _backward_device(spec, dy, x, mean, rstd, weight, out, stream, centered,
                                dresidual)
    results = _backward_device(spec, *(_to_device(a, stream) for a in (dy, x, mean, rstd)),
                               _to_device(weight, stream), None, stream, centered,
                               _to_device(dresidual, stream))
    dx, dweight, dbias = _to_host(results, stream)
    return _into(out, dx), dweight, dbias
