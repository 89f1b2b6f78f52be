"""The CPU backend: NumPy arrays in, the ``cpu.py`` kernels, NumPy arrays out.

It turns validated arrays into the kernels' layout (a 1-D buffer and a row
stride), allocates results, and shapes them for the caller. Arrays whose rows
are already contiguous are passed without a copy, whatever their row stride;
any other layout (transposed, Fortran-order, strided within a row) is copied
once to C order.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import cpu
from ._validate import row_stride

_STORAGE = {np.dtype(np.float16): np.dtype(np.uint16)}
_NO_PARAM = {dt: np.ones(1, dt) for dt in (np.dtype(np.float32), np.dtype(np.float64))}


def _row_buffer(a, spec):
    """``a`` as (1-D kernel buffer, row stride in elements), copying only if needed."""
    if a.flags.c_contiguous:  # the common case, and the cheapest view to make
        buffer, ld = a.reshape(-1), spec.cols
    else:
        ld = row_stride(a.shape, a.strides, a.itemsize, spec.axis)
        if ld is None:
            a = np.ascontiguousarray(a)
            ld = spec.cols
        size = (spec.rows - 1) * ld + spec.cols if spec.rows else 0
        buffer = as_strided(a, shape=(size,), strides=(a.itemsize,))
    storage = _STORAGE.get(a.dtype)
    return (buffer if storage is None else buffer.view(storage)), ld


def _new_rows(spec):
    """A fresh C-ordered result of ``x``'s shape and dtype, and its kernel buffer."""
    storage = _STORAGE.get(spec.dtype)
    if storage is None:
        buffer = np.empty(spec.rows * spec.cols, spec.dtype)
        return buffer.reshape(spec.shape), buffer
    buffer = np.empty(spec.rows * spec.cols, storage)
    return buffer.view(spec.dtype).reshape(spec.shape), buffer


def _param(param, dtype):
    """A weight/bias as a contiguous 1-D array of the compute dtype, or a placeholder."""
    if param is None:
        return _NO_PARAM[dtype], False
    if param.dtype != dtype or not param.flags.c_contiguous:
        param = np.ascontiguousarray(param, dtype=dtype)
    return param.reshape(-1), True


def _writes_directly(out, x, spec):
    """Can the kernel write into ``out`` as it is? (Row layout, and no partial overlap.)"""
    if not out.flags.c_contiguous and row_stride(
            out.shape, out.strides, out.itemsize, spec.axis) is None:
        return False
    # In place (the very array, or the same memory seen the same way) is safe:
    # every row is read whole before it is written.
    return (out is x or not np.may_share_memory(out, x)
            or (out.ctypes.data == x.ctypes.data and out.strides == x.strides))


def forward(spec, x, weight, bias, eps, out, stream=None):
    """Layer norm of a NumPy array on the CPU; returns ``(y, mean, rstd)``.

    ``mean`` and ``rstd`` are 1-D, one element per row: the API gives them
    their keep-dims shape only when the caller asks for them.
    """
    compute = spec.compute_dtype
    x_buf, ldx = _row_buffer(x, spec)
    w, has_w = _param(weight, compute)
    b, has_b = _param(bias, compute)
    if out is not None and _writes_directly(out, x, spec):
        y = out
        y_buf, ldy = _row_buffer(out, spec)
    else:
        (y, y_buf), ldy = _new_rows(spec), spec.cols
    mean = np.empty(spec.rows, compute)
    rstd = np.empty(spec.rows, compute)
    if spec.rows:
        cpu.ln_fwd(x_buf, ldx, w, b, has_w, has_b, y_buf, ldy, mean, rstd,
                   spec.rows, spec.cols, eps)
    if out is not None and y is not out:
        out[...] = y
        y = out
    return y, mean, rstd


def backward(spec, dy, x, mean, rstd, weight, stream=None):
    """Gradients of layer norm on the CPU; returns ``(dx, dweight, dbias)``."""
    compute = spec.compute_dtype
    dy_buf, lddy = _row_buffer(dy, spec)
    x_buf, ldx = _row_buffer(x, spec)
    mean = np.ascontiguousarray(mean, dtype=compute).reshape(-1)
    rstd = np.ascontiguousarray(rstd, dtype=compute).reshape(-1)
    w, has_w = _param(weight, compute)
    dx, dx_buf = _new_rows(spec)
    dweight = np.zeros(spec.cols, compute)
    dbias = np.zeros(spec.cols, compute)
    if spec.rows:
        cpu.ln_bwd(dy_buf, lddy, x_buf, ldx, mean, rstd, w, has_w, dx_buf, spec.cols,
                   dweight, dbias, spec.rows, spec.cols)
    shape = spec.normalized_shape
    return (dx, dweight.astype(spec.param_dtype, copy=False).reshape(shape),
            dbias.astype(spec.param_dtype, copy=False).reshape(shape))
