"""The public NumPy-style API."""

from typing import NamedTuple

import numpy as np

from . import _cpu_backend, _cuda_backend, _dispatch, _threading, _validate

_FORWARD_ARRAYS = ("weight", "bias", "out", "residual", "residual_out")
_BACKWARD_ARRAYS = ("dy", "mean", "rstd", "weight", "out", "dresidual")


def _forward(centered, x, weight, bias, axis, eps, out, return_stats, device, stream, residual,
             residual_out):
    """``layer_norm`` (``centered``) or ``rms_norm``: one path for both."""
    if device is None and type(x) is np.ndarray:
        result = _cpu_backend.direct_forward(x, weight, bias, axis, eps, out, return_stats,
                                             centered, residual, residual_out)
        if result is not None:
            return result
    given_out, given_s = out, residual_out
    backend, x, (weight, bias, out, residual, residual_out) = _dispatch.select(
        device, x, (weight, bias, out, residual, residual_out), _FORWARD_ARRAYS)
    spec, eps = _validate.forward_spec(x, weight, bias, axis, eps, out)
    _validate.residual_dtype(residual, residual_out, spec)
    y, s, mean, rstd = backend.forward(spec, x, weight, bias, eps, out, stream,
                                       centered=centered, residual=residual,
                                       residual_out=residual_out)
    if given_out is not None:  # the caller's own object, even when a view was used
        y = given_out
    if given_s is not None:
        s = given_s
    results = (y,) if residual is None else (y, s)
    if return_stats:
        stats = (mean, rstd) if centered else (rstd,)
        results += tuple(stat.reshape(spec.stats_shape) for stat in stats)
    return results[0] if len(results) == 1 else results


def _backward(centered, dy, x, mean, rstd, weight, axis, out, device, stream, dresidual):
    """``layer_norm_backward`` (``centered``) or ``rms_norm_backward``."""
    if device is None and dresidual is None and type(x) is np.ndarray:
        grads = _cpu_backend.direct_backward(dy, x, mean, rstd, weight, axis, out, centered)
        if grads is not None:
            return grads
    given_out = out
    backend, x, (dy, mean, rstd, weight, out, dresidual) = _dispatch.select(
        device, x, (dy, mean, rstd, weight, out, dresidual), _BACKWARD_ARRAYS)
    spec = _validate.backward_spec(dy, x, mean, rstd, weight, axis, out, centered)
    _validate.check_dresidual(dresidual, spec)
    dx, dweight, dbias = backend.backward(spec, dy, x, mean, rstd, weight, out, stream,
                                          centered=centered, dresidual=dresidual)
    if given_out is not None:  # the caller's own object, even when a view was used
        dx = given_out
    return (dx, dweight, dbias) if centered else (dx, dweight)


def layer_norm(x, weight=None, bias=None, *, axis=-1, eps=1e-5, out=None,
               return_stats=False, device=None, stream=None, residual=None,
               residual_out=None):
    """Layer normalization (Ba, Kiros & Hinton, 2016).

    Each row -- the elements of ``x.shape[axis:]`` for one index of
    ``x.shape[:axis]`` -- is centered on its mean, divided by
    ``sqrt(var + eps)`` (biased variance), then scaled by ``weight`` and
    shifted by ``bias``::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    Parameters
    ----------
    x : array_like or CUDA array
        Input of any rank >= 1, dtype float16, float32 or float64. NumPy
        arrays (and array-likes) run on the CPU; arrays exposing
        ``__cuda_array_interface__`` (numba, CuPy, PyTorch CUDA tensors) run
        on their GPU. Any strides are accepted: rows that are contiguous
        (any row stride) are read in place, other layouts are copied once.
    weight, bias : array, optional
        Gain and bias of shape ``x.shape[axis:]``, any supported float dtype
        (it may differ from ``x``'s). ``None`` means 1 and 0.
    axis : int, default -1
        First normalized axis, as in ONNX LayerNormalization: the statistics
        are taken over ``x.shape[axis:]``. Negative values count from the end.
    eps : float, default 1e-5
        Added to the variance; finite and >= 0.
    out : array, optional
        Receives ``y`` and is returned: same shape and dtype as ``x``,
        writeable, on the same device. ``out=x`` normalizes in place.
    return_stats : bool, default False
        Also return the per-row ``mean`` and ``rstd = 1 / sqrt(var + eps)``,
        of shape ``x.shape[:axis] + (1,) * (x.ndim - axis)``.
    device : {None, "cpu", "cuda"}, optional
        ``None`` follows the data. ``"cuda"`` with NumPy inputs copies them
        to the GPU, computes there and returns NumPy arrays.
    stream : numba stream or object with a raw CUDA stream handle, optional
        CUDA stream for GPU work; the default stream otherwise.
    residual : array, optional
        Added to ``x`` first, in the same pass: ``s = x + residual`` is
        normalized and returned (a transformer block's pre-norm residual
        add). ``x``'s shape and dtype, or float32 with a float16 ``x`` (the
        residual stream kept in higher precision; ``s`` is then float32).
    residual_out : array, optional
        Receives ``s``: ``residual``'s shape and dtype, writeable. It may be
        ``residual`` itself (updated in place).

    Returns
    -------
    y : array
        Same shape and dtype as ``x``.
    s : array
        Only with ``residual``: ``x + residual`` in ``residual``'s dtype
        (``residual_out`` when given).
    mean, rstd : array
        Only with ``return_stats=True`` (after ``s``). float32 for float16
        and float32 inputs, float64 for float64.

    Raises
    ------
    TypeError
        ``x``, ``weight``, ``bias`` or ``out`` of an unsupported dtype, or
        ``out`` of a dtype other than ``x``'s; ``residual`` of a dtype other
        than ``x``'s (or float32 for float16), ``residual_out`` of another
        than ``residual``'s; a masked array; ``eps`` not a
        real number (bool and str are not); ``axis`` not an integer; a
        byte-swapped CUDA array.
    ValueError
        ``axis`` out of range, ``weight``/``bias``/``out``/``residual``/
        ``residual_out`` of the wrong shape, read-only ``out`` or
        ``residual_out``, ``residual_out`` without ``residual``, ``eps``
        negative, NaN or infinite, an empty normalized shape, or arrays on
        different devices.
    CUDAUnavailableError
        ``device="cuda"`` or a CUDA array, with no usable GPU here.

    Notes
    -----
    float16 inputs are accumulated in float32. A NaN or Inf in a row makes
    that row's output NaN and leaves every other row untouched. dtypes are
    compared by value (arrays from pickle are welcome); byte-swapped host
    arrays are converted once and results come in native byte order. Rows
    of zero length are an error; zero rows give empty results.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_ln
    >>> x = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]], dtype=np.float32)
    >>> numba_ln.layer_norm(x, eps=0.0).round(4)
    array([[-1.2247,  0.    ,  1.2247],
           [-0.7071, -0.7071,  1.4142]], dtype=float32)
    >>> y, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    >>> mean.ravel()
    array([ 2., 20.], dtype=float32)

    The residual add of a pre-norm transformer block, fused:

    >>> r = np.ones_like(x)
    >>> y, s = numba_ln.layer_norm(x, residual=r, residual_out=r)
    >>> s is r, r[0]
    (True, array([2., 3., 4.], dtype=float32))
    """
    return _forward(True, x, weight, bias, axis, eps, out, return_stats, device, stream,
                    residual, residual_out)


def layer_norm_backward(dy, x, mean, rstd, weight=None, *, axis=-1, out=None,
                        device=None, stream=None, dresidual=None):
    """Gradients of :func:`layer_norm` with respect to ``x``, ``weight`` and ``bias``.

    With ``xhat = (x - mean) * rstd`` and ``g = weight * dy``, per row::

        dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum over rows of dy * xhat
        dbias   = sum over rows of dy

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to ``y``; ``x``'s shape and dtype.
    x : array
        The forward pass's input.
    mean, rstd : array
        The statistics returned by ``layer_norm(..., return_stats=True)``, in
        that shape or any shape with one element per row.
    weight : array, optional
        The forward pass's gain; ``None`` means 1 (``dweight`` is still
        returned).
    axis : int, default -1
        The forward pass's ``axis``.
    out : array, optional
        Receives ``dx`` and is returned as it: same shape and dtype as ``x``,
        writeable, on the same device. ``out=dy`` (or ``out=x``) overwrites
        that input in place. Reusing one buffer from step to step saves
        allocating (and the OS zeroing) a fresh ``dx`` on every call.
    device, stream
        As for :func:`layer_norm`.
    dresidual : array, optional
        For the fused residual form, the gradient reaching ``s`` through the
        skip path (``x``'s shape and dtype); added into ``dx``, which is then
        the gradient of both ``x`` and ``residual``. Pass ``s`` as ``x``.

    Returns
    -------
    dx : array
        ``x``'s shape and dtype; ``out`` when given.
    dweight, dbias : array
        Shape ``x.shape[axis:]``, ``weight``'s dtype (without ``weight``: the
        compute dtype, float32 for float16 inputs). Bit-identical across calls
        and thread counts: rows are summed in fixed blocks, in a fixed order.

    Raises
    ------
    TypeError, ValueError, CUDAUnavailableError
        As for :func:`layer_norm` (``out`` included); also ``dy`` or
        ``dresidual`` not matching ``x``, or ``mean`` / ``rstd`` without one
        element per row.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_ln
    >>> x = np.array([[1.0, 2.0, 3.0]])
    >>> y, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    >>> dx, dweight, dbias = numba_ln.layer_norm_backward(np.ones_like(x), x, mean, rstd)
    >>> bool(np.abs(dx).max() < 1e-12), dbias
    (True, array([1., 1., 1.]))
    >>> dx_buffer = np.empty_like(x)
    >>> numba_ln.layer_norm_backward(np.ones_like(x), x, mean, rstd, out=dx_buffer)[0] is dx_buffer
    True
    """
    return _backward(True, dy, x, mean, rstd, weight, axis, out, device, stream, dresidual)


def rms_norm(x, weight=None, *, axis=-1, eps=1e-5, out=None, return_stats=False, device=None,
             stream=None, residual=None, residual_out=None):
    """RMS normalization (Zhang & Sennrich, 2019): layer norm without the centering.

    Each row -- the elements of ``x.shape[axis:]`` -- is divided by its root
    mean square, then scaled by ``weight``::

        y = x / sqrt(mean(x**2) + eps) * weight

    as PyTorch's ``F.rms_norm(x, x.shape[axis:], weight, eps)`` and ONNX's
    RMSNormalization (``axis``, ``epsilon``; opset 23) define it. A row is
    scale-invariant (``rms_norm(c * x) == rms_norm(x)`` for ``c > 0``, up to
    ``eps``), but unlike :func:`layer_norm` not shift-invariant.

    Parameters
    ----------
    x, weight, axis, out, device, stream, residual, residual_out
        As for :func:`layer_norm` (there is no bias).
    eps : float, default 1e-5
        Added to the mean square (ONNX's default); finite and >= 0.
    return_stats : bool, default False
        Also return ``rstd = 1 / sqrt(mean(x**2) + eps)`` per row, in the
        shape :func:`layer_norm` gives its statistics.

    Returns
    -------
    y : array
        Same shape and dtype as ``x``.
    s : array
        Only with ``residual``: ``x + residual``, as for :func:`layer_norm`.
    rstd : array
        Only with ``return_stats=True``.

    Raises
    ------
    TypeError, ValueError, CUDAUnavailableError
        As for :func:`layer_norm`.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_ln
    >>> x = np.array([[3.0, 4.0], [1.0, 1.0]])
    >>> numba_ln.rms_norm(x, eps=0.0)
    array([[0.84852814, 1.13137085],
           [1.        , 1.        ]])
    >>> y, rstd = numba_ln.rms_norm(x, eps=0.0, return_stats=True)
    >>> rstd.ravel()
    array([0.28284271, 1.        ])
    """
    return _forward(False, x, weight, None, axis, eps, out, return_stats, device, stream,
                    residual, residual_out)


def rms_norm_backward(dy, x, rstd, weight=None, *, axis=-1, out=None, device=None,
                      stream=None, dresidual=None):
    """Gradients of :func:`rms_norm` with respect to ``x`` and ``weight``.

    With ``xhat = x * rstd`` and ``g = weight * dy``, per row::

        dx      = rstd * (g - xhat * mean(g * xhat))
        dweight = sum over rows of dy * xhat

    Parameters
    ----------
    dy, x, weight, axis, out, device, stream, dresidual
        As for :func:`layer_norm_backward` (``x`` is ``s`` for the fused
        residual form).
    rstd : array
        The statistic returned by ``rms_norm(..., return_stats=True)``, in
        that shape or any shape with one element per row.

    Returns
    -------
    dx : array
        ``x``'s shape and dtype; ``out`` when given.
    dweight : array
        Shape ``x.shape[axis:]``, ``weight``'s dtype (without ``weight``: the
        compute dtype). Bit-identical across calls and thread counts.

    Raises
    ------
    TypeError, ValueError, CUDAUnavailableError
        As for :func:`layer_norm_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_ln
    >>> x = np.array([[3.0, 4.0]])
    >>> y, rstd = numba_ln.rms_norm(x, eps=0.0, return_stats=True)
    >>> dx, dweight = numba_ln.rms_norm_backward(y, x, rstd)  # the gradient of sum(y**2) / 2
    >>> bool(np.abs(dx).max() < 1e-12), dweight
    (True, array([0.72, 1.28]))
    """
    return _backward(False, dy, x, None, rstd, weight, axis, out, device, stream, dresidual)


class Backend(NamedTuple):
    """Whether a backend can run here, and why not when it cannot."""

    name: str
    available: bool
    detail: str


def backends():
    """The backends and whether each can run on this machine.

    Returns
    -------
    dict of str to Backend
        ``{"cpu": Backend(...), "cuda": Backend(...)}``. ``detail`` says what
        runs (threads, threading layer, simulator) or why a backend is off
        and what to install.

    Examples
    --------
    >>> import numba_ln
    >>> numba_ln.backends()["cpu"].available
    True
    """
    import numba

    try:  # the layer in use, once a parallel kernel has run
        layer = numba.threading_layer()
    except ValueError:  # none yet: the layer that will be selected
        layer = numba.config.THREADING_LAYER
    cpu_detail = (f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
                  f"threading layer {layer!r}")
    if not _threading.parallel_allowed():
        cpu_detail += "; serial in this process (forked after GNU OpenMP ran)"
    reason = _cuda_backend.unavailable_reason()
    if reason is None:
        cuda_detail = ("numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
                       if _cuda_backend.simulator_enabled() else _cuda_backend.device_name())
    else:
        cuda_detail = reason
    return {"cpu": Backend("cpu", True, cpu_detail),
            "cuda": Backend("cuda", reason is None, cuda_detail)}
