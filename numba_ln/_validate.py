"""Validation at the door: the checks on dtypes, shapes, ``axis``, ``eps`` and ``out=``.

The functions here see shapes, strides and dtypes only -- never data -- so the
CPU and CUDA backends share them. ``forward_spec`` and ``backward_spec`` turn a
call's arguments into a :class:`Spec`: any rank and ``axis`` become
``(rows, cols)``, and every later layer works on that 2-D view. Where the data
lives (``device=``, host or CUDA arrays) is checked by ``_dispatch``, which
also calls :func:`check_not_masked` and :func:`check_native` from here.

Examples
--------
>>> import numpy as np
>>> from numba_ln import _validate
>>> x = np.ones((2, 3, 4), np.float16)
>>> spec, eps = _validate.forward_spec(x, None, None, 1, 1e-5, None)
>>> spec.rows, spec.cols, spec.compute_dtype, spec.stats_shape
(2, 12, dtype('float32'), (2, 1, 1))
"""

import functools
import math
import numbers
import operator
from typing import NamedTuple

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_SUPPORTED_NAMES = "float16, bfloat16 (ml_dtypes), float32, float64"
_FLOAT16, _FLOAT32, _FLOAT64 = SUPPORTED_DTYPES

#: ``ml_dtypes.bfloat16``'s dtype once an array of it has been seen (numba-ln
#: never imports ml_dtypes: an array of it means it is loaded already).
BFLOAT16 = None

#: Every dtype the kernels accept, by value, to NumPy's own (native) object:
#: dtypes that compare equal but are other objects (any that came through
#: pickle), and the byte-swapped ones, which the backends convert once.
_CANONICAL = {**{dt: dt for dt in SUPPORTED_DTYPES},
              **{dt.newbyteorder(): dt for dt in SUPPORTED_DTYPES}}


class Spec(NamedTuple):
    """A validated problem: what every backend needs to know besides the data."""

    shape: tuple            #: shape of ``x``
    axis: int               #: first normalized axis, non-negative
    rows: int               #: product of ``shape[:axis]`` (independent rows)
    cols: int               #: product of ``shape[axis:]`` (normalized elements per row)
    dtype: np.dtype         #: NumPy's native dtype of ``x`` (and of ``y``, ``dy``, ``dx``)
    compute_dtype: np.dtype  #: accumulation and statistics dtype
    param_dtype: np.dtype   #: dtype of ``dweight``/``dbias`` (backward only)
    normalized_shape: tuple  #: shape of ``weight``, ``bias``, ``dweight``, ``dbias``
    stats_shape: tuple      #: shape of ``mean`` and ``rstd`` (ONNX keep-dims layout)


def compute_dtype(dtype):
    """float16 accumulates in float32; float32 and float64 in themselves.

    Examples
    --------
    >>> import numpy as np
    >>> compute_dtype(np.dtype(np.float16))
    dtype('float32')
    """
    return _COMPUTE[dtype]


_COMPUTE = {np.dtype(np.float16): np.dtype(np.float32),
            np.dtype(np.float32): np.dtype(np.float32),
            np.dtype(np.float64): np.dtype(np.float64)}


def check_float_dtype(dtype, name):
    """NumPy's native float dtype equal to ``dtype`` up to byte order; else ``TypeError``.

    The kernels and every cache key see only these three objects, so how a
    dtype object was made (pickle, ``newbyteorder``) never changes a result.

    Examples
    --------
    >>> import numpy as np
    >>> check_float_dtype(np.dtype(">f4"), "x") is np.dtype(np.float32)
    True
    >>> check_float_dtype(np.dtype(np.int64), "weight")
    Traceback (most recent call last):
    ...
    TypeError: weight has dtype int64; supported dtypes are float16, bfloat16 (ml_dtypes), float32, float64
    """
    # NumPy's native float dtypes are singletons: an identity test is the fast
    # path (a small call pays for every comparison of dtype objects).
    if dtype is _FLOAT32 or dtype is _FLOAT64 or dtype is _FLOAT16:
        return dtype
    try:
        return _CANONICAL[dtype]
    except (KeyError, TypeError):
        pass
    if _register_bfloat16(dtype):
        return BFLOAT16
    try:
        described = str(np.dtype(dtype))
    except TypeError:
        described = repr(dtype)
    raise TypeError(f"{name} has dtype {described}; supported dtypes are {_SUPPORTED_NAMES}")


def _register_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16; the first time, make it a supported dtype.

    It is recognised by what it is -- a 2-byte dtype named ``bfloat16`` whose
    scalar type comes from ``ml_dtypes`` -- so numba-ln needs no import of
    ml_dtypes to accept it. It computes in float32, as float16 does.
    """
    global BFLOAT16
    if not isinstance(dtype, np.dtype) or dtype.name != "bfloat16" or dtype.itemsize != 2:
        return False
    if not getattr(dtype.type, "__module__", "").startswith("ml_dtypes"):
        return False
    BFLOAT16 = dtype
    _CANONICAL[dtype] = dtype
    _COMPUTE[dtype] = _FLOAT32
    return True


def is_half(dtype):
    """Whether ``dtype`` (a supported one) is float16 or bfloat16: stored in 16 bits, computed in float32."""
    return dtype is _FLOAT16 or (dtype is BFLOAT16 and dtype is not None)


def storage_dtype(dtype):
    """The dtype the kernels see a supported ``dtype``'s elements as.

    float16 is viewed as uint16 and bfloat16 as int16 (raw bits, converted in
    registers; see ``_storage``); float32 and float64 are themselves.

    Examples
    --------
    >>> import numpy as np
    >>> storage_dtype(np.dtype(np.float16)), storage_dtype(np.dtype(np.float32))
    (dtype('uint16'), dtype('float32'))
    """
    if dtype is _FLOAT16:
        return _UINT16
    if dtype is _FLOAT32 or dtype is _FLOAT64:
        return dtype
    if (dtype is BFLOAT16 and dtype is not None) or _register_bfloat16(dtype):
        return _INT16
    return dtype


_UINT16, _INT16 = np.dtype(np.uint16), np.dtype(np.int16)


def is_native(dtype):
    """Whether ``dtype`` is stored in this machine's byte order (kernels read it as is)."""
    return dtype is _FLOAT32 or dtype is _FLOAT64 or dtype is _FLOAT16 or dtype.isnative


def check_native(array, name):
    """``TypeError`` for a byte-swapped array where no conversion is made (device memory)."""
    dtype = np.dtype(array.dtype)
    if dtype.kind == "f" and not dtype.isnative:
        raise TypeError(
            f"{name} has byte-swapped dtype {dtype.str!r}; the GPU kernels read native "
            f"byte order: convert it first, e.g. to {dtype.newbyteorder('=').str!r}")


def check_not_masked(array, name):
    """Masked arrays are refused: the kernels would read the masked elements as data."""
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array; numba-ln does not apply masks (masked elements "
            f"would enter the statistics): pass {name}.filled(value) to choose what they "
            f"hold, or np.asarray({name}) to use the data as it is")


def check_axis(axis):
    """``axis`` as a Python int: Python and NumPy integers only (not bool, not float)."""
    if type(axis) is int:
        return axis
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError("axis must be an integer, got bool")
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}") from None


def normalize_axis(axis, ndim):
    """ONNX axis: normalize over ``shape[axis:]``; negative counts from the end.

    Examples
    --------
    >>> normalize_axis(-1, 3)
    2
    >>> normalize_axis(3, 2)
    Traceback (most recent call last):
    ...
    ValueError: axis 3 is out of range for an array of rank 2; expected -2 <= axis <= 1
    """
    axis = check_axis(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis {axis} is out of range for an array of rank {ndim}; "
            f"expected {-ndim} <= axis <= {ndim - 1}")
    return axis % ndim


def eps_fault(eps):
    """The one rule for ``eps``: 0 when it is finite and >= 0, else what is wrong.

    Returns 1 for NaN, 2 for an infinity, 3 for a negative value. The C
    library runs this function compiled (``_cabi``); each side words its
    own message.

    Examples
    --------
    >>> [eps_fault(e) for e in (1e-5, 0.0, float("nan"), float("inf"), -1.0)]
    [0, 0, 1, 2, 3]
    """
    if eps != eps:
        return 1
    if eps - eps != 0:
        return 2
    return 3 if eps < 0 else 0


def check_eps(eps):
    """``eps`` must be a finite, non-negative real number (Python or NumPy; not bool).

    Examples
    --------
    >>> import numpy as np
    >>> check_eps(np.float32(0.5))
    0.5
    >>> check_eps(True)
    Traceback (most recent call last):
    ...
    TypeError: eps must be a real number, got bool: expected a Python or NumPy float or int
    """
    if type(eps) is float and not eps_fault(eps):  # the usual case, fast
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}: expected "
                        f"a Python or NumPy float or int")
    value = float(eps)
    if eps_fault(value):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return value


def _build_spec(shape, dtype, axis, param_dtype):
    """Every check on ``x``'s shape, dtype and ``axis``; the call's :class:`Spec`."""
    if not shape:
        raise ValueError("x must have rank >= 1, got a 0-d array")
    dtype = check_float_dtype(dtype, "x")
    axis = normalize_axis(axis, len(shape))
    cols = math.prod(shape[axis:])
    if cols == 0:
        raise ValueError(
            f"the normalized shape {shape[axis:]} (x.shape[{axis}:] of {shape}) "
            f"has zero elements; expected at least one element per row")
    compute = compute_dtype(dtype)
    return Spec(shape, axis, math.prod(shape[:axis]), cols, dtype, compute,
                compute if param_dtype is None else param_dtype,
                shape[axis:], shape[:axis] + (1,) * (len(shape) - axis))


#: A program calls with few distinct shapes: the checks run once per shape.
#: The key holds only what decides the result: dtypes compare by value and
#: ``axis`` is an int by then, so no call can change what a later one gets.
#: (Errors are raised, never cached.)
_cached_spec = functools.lru_cache(maxsize=256)(_build_spec)


def _spec(shape, dtype, axis, param_dtype=None):
    return _cached_spec(shape, dtype, check_axis(axis), param_dtype)


def check_param(param, spec, name):
    """``weight``/``bias``: None, or the normalized shape and a supported dtype."""
    if param is None:
        return
    check_float_dtype(param.dtype, name)
    shape = param.shape if type(param.shape) is tuple else tuple(param.shape)
    if shape != spec.normalized_shape:
        raise ValueError(
            f"{name} has shape {tuple(param.shape)}; expected the normalized shape "
            f"{spec.normalized_shape} (x.shape[{spec.axis}:])")


def check_out(out, spec, name="out", dtype=None):
    """``out=`` (``y`` or ``dx``): same shape and dtype as ``x``, writeable (before any write).

    ``dtype`` replaces ``x``'s where another one is expected (``residual_out``).
    """
    dtype = spec.dtype if dtype is None else dtype
    if tuple(out.shape) != spec.shape:
        raise ValueError(f"{name} has shape {tuple(out.shape)}; expected {spec.shape}")
    if _CANONICAL.get(np.dtype(out.dtype)) is not dtype:
        raise TypeError(f"{name} has dtype {np.dtype(out.dtype)}; expected {dtype}")
    flags = getattr(out, "flags", None)  # NumPy's; CUDA arrays carry no such flag
    if flags is not None and not getattr(flags, "writeable", True):
        raise ValueError(f"{name} is read-only; expected a writeable array")


def residual_dtype(residual, residual_out, spec):
    """Check ``residual=`` and ``residual_out=``; return the dtype of ``s = x + residual``.

    ``residual`` has ``x``'s shape and dtype, or float32 with a float16 ``x``
    (the residual stream kept in higher precision); ``s`` has the
    residual's dtype. ``residual_out`` without ``residual`` is an error.

    Examples
    --------
    >>> import numpy as np
    >>> spec, _ = forward_spec(np.ones((2, 4), np.float16), None, None, -1, 1e-5, None)
    >>> residual_dtype(np.ones((2, 4), np.float32), None, spec)
    dtype('float32')
    """
    if residual is None:
        if residual_out is not None:
            raise ValueError("residual_out= was given without residual=; it receives "
                             "x + residual, so pass the residual too")
        return None
    if tuple(residual.shape) != spec.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}; expected x's shape "
                         f"{spec.shape}")
    dtype = _CANONICAL.get(np.dtype(residual.dtype))
    allowed = (spec.dtype, _FLOAT32) if is_half(spec.dtype) else (spec.dtype,)
    if dtype not in allowed:
        raise TypeError(f"residual has dtype {np.dtype(residual.dtype)}; expected x's dtype "
                        f"{spec.dtype}" + (" or float32" if len(allowed) > 1 else ""))
    if residual_out is not None:
        check_out(residual_out, spec, "residual_out", dtype)
    return dtype


def check_dresidual(dresidual, spec):
    """``dresidual=`` of a backward call: ``x``'s shape and dtype."""
    if dresidual is None:
        return
    if tuple(dresidual.shape) != spec.shape:
        raise ValueError(f"dresidual has shape {tuple(dresidual.shape)}; expected x's shape "
                         f"{spec.shape}")
    if _CANONICAL.get(np.dtype(dresidual.dtype)) is not spec.dtype:
        raise TypeError(f"dresidual has dtype {np.dtype(dresidual.dtype)}; expected x's "
                        f"dtype {spec.dtype}")


def forward_spec(x, weight, bias, axis, eps, out):
    """Check a ``layer_norm`` call; return its :class:`Spec` and ``eps`` as float."""
    spec = _spec(tuple(x.shape), x.dtype, axis)
    check_param(weight, spec, "weight")
    check_param(bias, spec, "bias")
    eps = check_eps(eps)
    if out is not None:
        check_out(out, spec)
    return spec, eps


def backward_spec(dy, x, mean, rstd, weight, axis, out=None, centered=True):
    """Check a ``layer_norm_backward`` call; return its :class:`Spec`.

    Not ``centered`` (RMSNorm's backward), ``mean`` is None and not read.
    """
    param_dtype = None if weight is None else check_float_dtype(weight.dtype, "weight")
    spec = _spec(tuple(x.shape), x.dtype, axis, param_dtype)
    if tuple(dy.shape) != spec.shape:
        raise ValueError(f"dy has shape {tuple(dy.shape)}; expected x's shape {spec.shape}")
    dy_dtype = _CANONICAL.get(np.dtype(dy.dtype))
    if dy_dtype is not spec.dtype:
        hint = (f" (with a float32 residual stream, x is s: pass dy.astype({spec.dtype.name}))"
                if dy_dtype is not None and is_half(dy_dtype) and spec.dtype is _FLOAT32
                else "")
        raise TypeError(f"dy has dtype {np.dtype(dy.dtype)}; expected x's dtype "
                        f"{spec.dtype}{hint}")
    for name, stat in (("mean", mean), ("rstd", rstd)) if centered else (("rstd", rstd),):
        if stat is None:
            raise TypeError(f"{name} is None; expected the forward pass's {name}: a float "
                            f"array with one element per row ({spec.rows}, shape "
                            f"{spec.stats_shape})")
        check_float_dtype(stat.dtype, name)
        size = math.prod(stat.shape)
        if size != spec.rows:
            raise ValueError(
                f"{name} has {size} elements (shape {tuple(stat.shape)}); expected one "
                f"per row: {spec.rows} (shape {spec.stats_shape})")
    check_param(weight, spec, "weight")
    if out is not None:
        check_out(out, spec)
    return spec


def row_stride(shape, strides, itemsize, axis):
    """Row stride in elements if the array is a stack of contiguous rows, else None.

    An array qualifies when ``shape[axis:]`` is C-contiguous (so each row is
    ``cols`` adjacent elements) and the rows are evenly spaced, non-overlapping
    and in increasing memory order: the ``(rows, cols)`` matrix with leading
    dimension ``ld >= cols`` that the kernels and the C ABI take. ``strides``
    is in bytes; ``None`` means C-contiguous.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 10), np.float32)[:, :6]   # padded rows: read in place
    >>> row_stride(x.shape, x.strides, x.itemsize, 1)
    10
    >>> row_stride(x.T.shape, x.T.strides, x.itemsize, 1) is None   # must be copied
    True
    """
    cols = math.prod(shape[axis:])
    if strides is None:
        return cols
    expected = itemsize
    for size, stride in zip(reversed(shape[axis:]), reversed(strides[axis:])):
        if size != 1 and stride != expected:
            return None
        expected *= size
    ld = None
    for size, stride in zip(reversed(shape[:axis]), reversed(strides[:axis])):
        if size == 1:
            continue
        if ld is None:
            if stride % itemsize or stride < cols * itemsize:
                return None
            ld = stride // itemsize
            expected = stride * size
        elif stride != expected:
            return None
        else:
            expected *= size
    return cols if ld is None else ld
