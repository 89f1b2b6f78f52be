"""The CPU backend: NumPy arrays in, the ``cpu.py`` kernels, NumPy arrays out.

It turns validated arrays into the kernels' layout (a 1-D buffer and a row
stride), allocates results, and shapes them for the caller. Arrays whose rows
are already contiguous are passed without a copy, whatever their row stride;
any other layout (transposed, Fortran-order, strided within a row) is copied
once to C order.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _validate, cpu
from ._config import SERIAL_MAX_ELEMENTS
from ._validate import eps_fault, row_stride

_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_NO_PARAM = {dt: np.ones(1, dt) for dt in (_FLOAT32, _FLOAT64)}
_NO_STATS = {dt: np.empty(0, dt) for dt in (_FLOAT32, _FLOAT64)}


def _row_buffer(a, spec):
    """``a`` as (1-D kernel buffer, row stride in elements), copying only if needed."""
    if not a.flags.aligned:  # the kernels take aligned arrays only (``_native``)
        a = np.array(a, dtype=spec.dtype)
    elif a.dtype is not spec.dtype:  # an equal dtype object (a view), or byte-swapped (a copy)
        a = a.view(spec.dtype) if a.dtype == spec.dtype else np.ascontiguousarray(
            a, dtype=spec.dtype)
    if a.flags.c_contiguous:  # the common case, and the cheapest view to make
        buffer, ld = a.reshape(-1), spec.cols
    else:
        ld = row_stride(a.shape, a.strides, a.itemsize, spec.axis)
        if ld is None:
            a = np.ascontiguousarray(a)
            ld = spec.cols
        size = (spec.rows - 1) * ld + spec.cols if spec.rows else 0
        buffer = as_strided(a, shape=(size,), strides=(a.itemsize,))
    storage = _validate.storage_dtype(spec.dtype)
    return (buffer if storage is spec.dtype else buffer.view(storage)), ld


def _new_rows(spec):
    """A fresh C-ordered result of ``x``'s shape and dtype, and its kernel buffer."""
    storage = _validate.storage_dtype(spec.dtype)
    buffer = np.empty(spec.rows * spec.cols, storage)
    if storage is spec.dtype:
        return buffer.reshape(spec.shape), buffer
    return buffer.view(spec.dtype).reshape(spec.shape), buffer


def _param(param, dtype):
    """A weight/bias as a contiguous 1-D array of the compute dtype, or a placeholder."""
    if param is None:
        return _NO_PARAM[dtype], False
    if param.dtype is not dtype or not param.flags.c_contiguous or not param.flags.aligned:
        param = np.array(param, dtype=dtype, order="C")
    return (param if param.ndim == 1 else param.reshape(-1)), True


def _writes_directly(out, inputs, spec):
    """Can the kernel write into ``out`` as it is? (Row layout, and no partial overlap.)

    ``out`` may be one of ``inputs`` exactly (the same memory seen the same
    way): every kernel reads a row's inputs before it writes that row, element
    by element, so in place is safe. Any other overlap is not. A byte-swapped
    ``out`` receives a copy.
    """
    if not (out.dtype.isnative and out.flags.aligned):
        return False
    if not out.flags.c_contiguous and row_stride(
            out.shape, out.strides, out.itemsize, spec.axis) is None:
        return False
    return all(a is None or out is a or not np.may_share_memory(out, a)
               or (out.ctypes.data == a.ctypes.data and out.strides == a.strides)
               for a in inputs)


def _result_rows(out, inputs, spec):
    """Where the kernel writes: ``(result, buffer, ld)``, ``out`` itself when it can."""
    if out is not None and _writes_directly(out, inputs, spec):
        buffer, ld = _row_buffer(out, spec)
        return out, buffer, ld
    result, buffer = _new_rows(spec)
    return result, buffer, spec.cols


def _deliver(result, out):
    """``result``, copied into ``out`` when the kernel could not write there directly."""
    if out is None or result is out:
        return result
    out[...] = result
    return out


def forward(spec, x, weight, bias, eps, out, stream=None, *, centered=True, residual=None,
            residual_out=None):
    """Layer norm (or, not ``centered``, RMSNorm) of a NumPy array on the CPU.

    Returns ``(y, s, mean, rstd)``. ``mean`` and ``rstd`` are 1-D, one
    element per row (``mean`` is None for RMSNorm): the API gives them their
    keep-dims shape only when the caller asks for them. With ``residual``,
    ``s = x + residual`` (``residual_out`` when given) is normalized and
    returned; else ``s`` is None.
    """
    compute = spec.compute_dtype
    x_buf, ldx = _row_buffer(x, spec)
    w, has_w = _param(weight, compute)
    b, has_b = _param(bias, compute)
    inputs = (x, weight, bias, residual, residual_out)
    y, y_buf, ldy = _result_rows(out, inputs, spec)
    s = r_buf = s_buf = None
    ldr = lds = 0
    if residual is not None:
        # The API checked residual and residual_out; this is only its canonical dtype.
        s_spec = spec._replace(dtype=_validate.check_float_dtype(residual.dtype, "residual"))
        r_buf, ldr = _row_buffer(residual, s_spec)
        s, s_buf, lds = _result_rows(residual_out, (x, residual, weight, bias), s_spec)
    mean = np.empty(spec.rows if centered else 0, compute)
    rstd = np.empty(spec.rows, compute)
    if spec.rows:
        cpu.ln_fwd(x_buf, ldx, w, b, has_w, has_b, y_buf, ldy, mean, rstd, spec.rows,
                   spec.cols, eps, centered, r_buf, ldr, s_buf, lds)
    if s is not None:
        s = _deliver(s, residual_out)
    return _deliver(y, out), s, mean if centered else None, rstd


def _direct_param(param, dtype, cols):
    """``(array, given)`` for the direct paths, or None if ``param`` needs the general one."""
    if param is None:
        return _NO_PARAM[dtype], False
    if (type(param) is np.ndarray and param.dtype is dtype and param.ndim == 1
            and param.shape[0] == cols and _contiguous_aligned(param)):
        return param, True
    return None


def direct_forward(x, weight, bias, axis, eps, out=None, return_stats=False, centered=True,
                   residual=None, residual_out=None):
    """``layer_norm(x, weight, bias, axis=axis, eps=eps, out=out, return_stats=...)``, or None.

    The common case of a NumPy pipeline, for about half the Python overhead
    of the general path: ``x`` a C-contiguous float32 or float64 NumPy array
    (:func:`_direct_rows`) normalized over its last axis, ``weight`` and
    ``bias`` None or aligned contiguous 1-D arrays of ``x``'s dtype, ``eps`` a
    valid float, and ``out`` None or a writeable, aligned, C-contiguous array
    of ``x``'s shape and dtype that is ``x`` itself or shares no memory with
    the inputs. Such a call needs no views and no
    :class:`~numba_ln._validate.Spec`; it runs the same kernels as every
    other forward (the same bits). Anything else, every error included,
    returns None and takes the general path. Not ``centered``: RMSNorm
    (``bias`` None), returning ``y`` or ``(y, rstd)``. A ``residual`` of
    ``x``'s shape, dtype and layout, with ``residual_out`` None or as ``out``
    is taken (it may be ``residual`` or ``x``), adds ``s`` after ``y``.
    """
    found = _direct_rows(x)
    if (found is None or type(axis) is not int or (axis != -1 and axis != x.ndim - 1)
            or type(eps) is not float or eps_fault(eps)):
        return None
    dtype, rows, cols = found
    w = _direct_param(weight, dtype, cols)
    b = _direct_param(bias, dtype, cols)
    if w is None or b is None:
        return None
    s = r_buf = s_buf = None
    if residual is not None:
        if (type(residual) is not np.ndarray or residual.dtype is not dtype
                or residual.shape != x.shape or not _contiguous_aligned(residual)):
            return None
        if residual_out is None:
            residual_out = np.empty_like(x)
        elif not _direct_out(residual_out, x, (x, residual, weight, bias)):
            return None
        s, r_buf, s_buf = residual_out, residual.ravel(), residual_out.ravel()
    elif residual_out is not None:  # an error: the general path says which
        return None
    if out is None:
        out = np.empty_like(x)
    elif out is s or not _direct_out(out, x, (x, weight, bias, residual, s)):
        return None
    rstd = np.empty(rows, dtype) if return_stats else _NO_STATS[dtype]
    mean = np.empty(rows, dtype) if return_stats and centered else _NO_STATS[dtype]
    if x.size <= SERIAL_MAX_ELEMENTS:  # the plan's answer at this size, without asking
        cpu.ln_fwd_rows(x.ravel(), cols, r_buf, cols, w[0], b[0], w[1], b[1], out.ravel(), cols,
                        s_buf, cols, mean, rstd, rows, cols, eps, centered, None)
    else:
        cpu.ln_fwd(x.ravel(), cols, w[0], b[0], w[1], b[1], out.ravel(), cols, mean, rstd,
                   rows, cols, eps, centered, r_buf, cols, s_buf, cols)
    results = (out,) if s is None else (out, s)
    if return_stats:
        stats_shape = x.shape[:-1] + (1,)
        stats = (mean, rstd) if centered else (rstd,)
        results += tuple(stat.reshape(stats_shape) for stat in stats)
    return results[0] if len(results) == 1 else results


def _direct_rows(x):
    """``(dtype, rows, cols)`` if ``x`` suits the direct paths, else None.

    That is a non-empty, aligned, C-contiguous float32 or float64 NumPy array,
    at least 1-D (the kernels take aligned arrays only, see ``_native``).
    """
    dtype = x.dtype
    if ((dtype is not _FLOAT32 and dtype is not _FLOAT64) or not x.shape or not x.size
            or not _contiguous_aligned(x)):
        return None
    return dtype, x.size // x.shape[-1], x.shape[-1]


def _contiguous_aligned(a):
    """Is the NumPy array ``a`` C-contiguous and aligned? (One flags object, not two.)"""
    flags = a.flags
    return flags.c_contiguous and flags.aligned


def _direct_out(out, like, inputs):
    """Can a direct path write into the caller's ``out``? (Else the general path decides.)

    ``out`` must be a writeable, aligned, C-contiguous array of ``like``'s
    shape and dtype that is one of ``inputs`` exactly or shares memory with
    none of them (``None`` entries are skipped), the general path's rule.
    Two different arrays that each own their memory (``base is None``)
    cannot overlap; only views cost a ``may_share_memory`` call.
    """
    if not (type(out) is np.ndarray and out.dtype is like.dtype and out.shape == like.shape
            and _contiguous_aligned(out) and out.flags.writeable):
        return False
    owner = out.base is None
    return all(a is None or out is a or (owner and a.base is None)
               or not np.may_share_memory(out, a) for a in inputs)


def _direct_stat(stat, dtype, rows):
    """Is a ``mean``/``rstd`` fit for the direct backward path as it is?"""
    return (type(stat) is np.ndarray and stat.dtype is dtype and stat.size == rows
            and _contiguous_aligned(stat))


def direct_backward(dy, x, mean, rstd, weight, axis, out, centered=True):
    """``layer_norm_backward(dy, x, mean, rstd, weight, axis=axis, out=out)``, or None.

    The backward twin of :func:`direct_forward`: ``x`` and ``dy`` of one
    shape and dtype (:func:`_direct_rows`), normalized over the last
    axis; ``mean``/``rstd`` aligned contiguous arrays of that dtype with one
    element per row; ``weight`` None or such a 1-D array of that dtype; ``out``
    as :func:`direct_forward` takes it (``dy`` or ``x`` itself allowed). It
    calls the same ``cpu.ln_bwd`` as the general path, so the bits are the
    same. Anything else, every error included, returns None and takes the
    general path. Not ``centered``: RMSNorm (``mean`` None), returning
    ``(dx, dweight)``.
    """
    found = _direct_rows(x)
    if found is None or type(axis) is not int or (axis != -1 and axis != x.ndim - 1):
        return None
    dtype, rows, cols = found
    if (type(dy) is not np.ndarray or dy.dtype is not dtype or dy.shape != x.shape
            or not _contiguous_aligned(dy) or not _direct_stat(rstd, dtype, rows)
            or (centered and not _direct_stat(mean, dtype, rows))):
        return None
    w = _direct_param(weight, dtype, cols)
    if w is None:
        return None
    if out is None:
        out = np.empty_like(x)
    elif not _direct_out(out, x, (dy, x, mean, rstd, weight)):
        return None
    dweight = np.empty(cols, dtype)
    dbias = np.empty(cols, dtype)
    mean = mean.ravel() if centered else _NO_STATS[dtype]
    cpu.ln_bwd(dy.ravel(), cols, x.ravel(), cols, mean, rstd.ravel(), w[0], w[1],
               out.ravel(), cols, dweight, dbias, rows, cols, centered)
    return (out, dweight, dbias) if centered else (out, dweight)


def backward(spec, dy, x, mean, rstd, weight, out=None, stream=None, *, centered=True,
             dresidual=None):
    """Gradients of layer norm (or, not ``centered``, RMSNorm) on the CPU.

    Returns ``(dx, dweight, dbias)``; ``dx`` is ``out`` when given, plus
    ``dresidual`` when given; ``mean`` and ``dbias`` are None for RMSNorm.
    """
    compute = spec.compute_dtype
    dy_buf, lddy = _row_buffer(dy, spec)
    x_buf, ldx = _row_buffer(x, spec)
    mean = (np.ascontiguousarray(mean, dtype=compute).reshape(-1) if centered
            else _NO_STATS[compute])
    rstd = np.ascontiguousarray(rstd, dtype=compute).reshape(-1)
    w, has_w = _param(weight, compute)
    dres_buf, lddres = (None, 0) if dresidual is None else _row_buffer(dresidual, spec)
    dx, dx_buf, lddx = _result_rows(out, (dy, x, mean, rstd, weight, dresidual), spec)
    dweight = np.zeros(spec.cols, compute)
    dbias = np.zeros(spec.cols, compute)
    if spec.rows:
        cpu.ln_bwd(dy_buf, lddy, x_buf, ldx, mean, rstd, w, has_w, dx_buf, lddx,
                   dweight, dbias, spec.rows, spec.cols, centered, dres_buf, lddres)
    shape = spec.normalized_shape
    dbias = dbias.astype(spec.param_dtype, copy=False).reshape(shape) if centered else None
    return (_deliver(dx, out), dweight.astype(spec.param_dtype, copy=False).reshape(shape),
            dbias)
