"""Slow, readable float64 references for layer normalization and RMSNorm.

Every backend and dtype is compared against these. They loop over rows and
follow the papers' definitions literally: mean, biased variance (two-pass),
normalize, gain and bias; RMSNorm (Zhang & Sennrich, 2019) the same without
the centering; the backward passes are the textbook chain rule. The fused
residual forms normalize ``s = x + residual`` and return ``s`` too.
"""

import numpy as np


def _rows(a, axis):
    """View ``a`` as (rows, cols) in float64, ONNX axis semantics."""
    a = np.asarray(a, dtype=np.float64)
    axis = axis % a.ndim
    cols = int(np.prod(a.shape[axis:]))
    return a.reshape(-1, cols), axis


def _param(param, cols, fill):
    """``param`` as a float64 vector of ``cols``, or ``fill`` everywhere when it is None."""
    if param is None:
        return np.full(cols, fill, dtype=np.float64)
    return np.asarray(param, np.float64).reshape(-1)


def _stats_shape(x, axis):
    """ONNX's keep-dims shape of per-row statistics (``axis`` non-negative)."""
    return np.shape(x)[:axis] + (1,) * (np.ndim(x) - axis)


def layer_norm(x, weight=None, bias=None, axis=-1, eps=1e-5):
    """Return (y, mean, rstd) in float64; mean/rstd have ONNX's keep-dims shape."""
    rows, axis = _rows(x, axis)
    cols = rows.shape[1]
    w = _param(weight, cols, 1.0)
    b = _param(bias, cols, 0.0)
    y = np.empty_like(rows)
    mean = np.empty(rows.shape[0])
    rstd = np.empty(rows.shape[0])
    for r, row in enumerate(rows):
        mu = row.sum() / cols
        var = ((row - mu) ** 2).sum() / cols
        mean[r] = mu
        rstd[r] = 1.0 / np.sqrt(var + eps)
        y[r] = (row - mu) * rstd[r] * w + b
    stats_shape = _stats_shape(x, axis)
    return y.reshape(np.shape(x)), mean.reshape(stats_shape), rstd.reshape(stats_shape)


def layer_norm_backward(dy, x, weight=None, axis=-1, eps=1e-5, mean=None, rstd=None):
    """Return (dx, dweight, dbias) in float64.

    The statistics are recomputed from ``x`` (with ``eps``) unless ``mean``
    and ``rstd`` are given, in any shape with one element per row.
    """
    rows, axis = _rows(x, axis)
    grads, _ = _rows(dy, axis)
    cols = rows.shape[1]
    normalized_shape = np.shape(x)[axis:]
    w = _param(weight, cols, 1.0)
    if mean is not None:
        mean = np.asarray(mean, np.float64).reshape(-1)
        rstd = np.asarray(rstd, np.float64).reshape(-1)
    dx = np.empty_like(rows)
    dweight = np.zeros(cols)
    dbias = np.zeros(cols)
    for r, (row, dy_row) in enumerate(zip(rows, grads)):
        if mean is None:
            mu = row.mean()
            row_rstd = 1.0 / np.sqrt(((row - mu) ** 2).mean() + eps)
        else:
            mu, row_rstd = mean[r], rstd[r]
        xhat = (row - mu) * row_rstd
        g = w * dy_row
        dx[r] = row_rstd * (g - g.mean() - xhat * (g * xhat).mean())
        dweight += dy_row * xhat
        dbias += dy_row
    return (dx.reshape(np.shape(x)), dweight.reshape(normalized_shape),
            dbias.reshape(normalized_shape))


def rms_norm(x, weight=None, axis=-1, eps=1e-5):
    """RMSNorm in float64: ``y = x * rstd * weight``, ``rstd = 1 / sqrt(mean(x**2) + eps)``.

    Parameters
    ----------
    x : array_like
        Input of any rank; normalized over axes ``axis`` to the last (ONNX).
    weight : array_like, optional
        Gain with ``x.shape[axis:]``'s elements; ones when None.
    axis : int, optional
        First normalized axis, negative counting from the end.
    eps : float, optional
        Added to the mean square; ONNX RMSNormalization's default, 1e-5.

    Returns
    -------
    y : ndarray
        float64, ``x``'s shape.
    rstd : ndarray
        float64, one per row, in ``layer_norm``'s keep-dims shape.

    Examples
    --------
    No centering: a constant row stays constant (layer_norm makes it 0).

    >>> y, rstd = rms_norm(np.full((1, 4), 2.0), eps=0.0)
    >>> y, rstd
    (array([[1., 1., 1., 1.]]), array([[0.5]]))
    """
    rows, axis = _rows(x, axis)
    cols = rows.shape[1]
    w = _param(weight, cols, 1.0)
    y = np.empty_like(rows)
    rstd = np.empty(rows.shape[0])
    for r, row in enumerate(rows):
        rstd[r] = 1.0 / np.sqrt((row ** 2).sum() / cols + eps)
        y[r] = row * rstd[r] * w
    return y.reshape(np.shape(x)), rstd.reshape(_stats_shape(x, axis))


def rms_norm_backward(dy, x, weight=None, axis=-1, eps=1e-5, rstd=None):
    """RMSNorm's gradients in float64, for the loss whose gradient at ``y`` is ``dy``.

    With ``xhat = x * rstd`` and ``g = weight * dy``, per row:
    ``dx = rstd * (g - xhat * mean(g * xhat))`` (layer norm's formula less its
    ``mean(g)`` term, as nothing is centered) and ``dweight = sum over rows of
    dy * xhat``.

    Parameters
    ----------
    dy : array_like
        Gradient at ``y``, ``x``'s shape.
    x : array_like
        The forward pass's input.
    weight : array_like, optional
        The forward pass's gain; ones when None.
    axis : int, optional
        First normalized axis, as in the forward pass.
    eps : float, optional
        Used to recompute ``rstd`` from ``x`` when ``rstd`` is None.
    rstd : array_like, optional
        The forward pass's ``rstd``, any shape with one element per row;
        used as given instead of being recomputed.

    Returns
    -------
    dx : ndarray
        float64, ``x``'s shape.
    dweight : ndarray
        float64, ``x.shape[axis:]``; returned also when ``weight`` is None.

    Examples
    --------
    ``y`` does not change when ``x`` is scaled, so ``dx`` is orthogonal to ``x``:

    >>> x = np.array([[3.0, 4.0]])
    >>> dx, dweight = rms_norm_backward(np.array([[1.0, 0.0]]), x, eps=0.0)
    >>> dx.round(4), dweight.round(4)
    (array([[ 0.181 , -0.1358]]), array([0.8485, 0.    ]))
    >>> bool(np.isclose((x * dx).sum(), 0.0))
    True
    """
    rows, axis = _rows(x, axis)
    grads, _ = _rows(dy, axis)
    cols = rows.shape[1]
    w = _param(weight, cols, 1.0)
    if rstd is not None:
        rstd = np.asarray(rstd, np.float64).reshape(-1)
    dx = np.empty_like(rows)
    dweight = np.zeros(cols)
    for r, (row, dy_row) in enumerate(zip(rows, grads)):
        row_rstd = 1.0 / np.sqrt((row ** 2).mean() + eps) if rstd is None else rstd[r]
        xhat = row * row_rstd
        g = w * dy_row
        dx[r] = row_rstd * (g - xhat * (g * xhat).mean())
        dweight += dy_row * xhat
    return dx.reshape(np.shape(x)), dweight.reshape(np.shape(x)[axis:])


def _residual_sum(x, residual):
    """``x + residual`` in float64 from the inputs' own values, whatever their dtypes."""
    # Broadcasting would hide a wrong residual: the fused forms take x's shape only.
    if np.shape(residual) != np.shape(x):
        raise ValueError(f"residual has shape {np.shape(residual)}, "
                         f"expected x's shape {np.shape(x)}")
    return np.asarray(x, np.float64) + np.asarray(residual, np.float64)


def _with_skip_gradient(dx, dresidual):
    """``dx`` plus the gradient that reaches ``s`` through the skip path, if any."""
    return dx if dresidual is None else dx + np.asarray(dresidual, np.float64)


def add_layer_norm(x, residual, weight=None, bias=None, axis=-1, eps=1e-5):
    """Layer norm of ``s = x + residual``, returning ``s`` too, all in float64.

    Parameters
    ----------
    x, residual : array_like
        Same shape, any dtypes; ``s`` is their sum in float64.
    weight, bias, axis, eps
        As for ``layer_norm``.

    Returns
    -------
    y, s, mean, rstd : ndarray
        ``layer_norm(s, ...)``'s ``y``, ``mean`` and ``rstd``, and ``s``.

    Raises
    ------
    ValueError
        If ``residual``'s shape is not ``x``'s.

    Examples
    --------
    >>> y, s, mean, rstd = add_layer_norm([[0.0, 1.0]], [[1.0, 2.0]], eps=0.0)
    >>> y, s, mean, rstd
    (array([[-1.,  1.]]), array([[1., 3.]]), array([[2.]]), array([[1.]]))
    """
    s = _residual_sum(x, residual)
    y, mean, rstd = layer_norm(s, weight, bias, axis, eps)
    return y, s, mean, rstd


def add_layer_norm_backward(dy, s, weight=None, axis=-1, eps=1e-5, mean=None, rstd=None,
                            dresidual=None):
    """Gradients of ``add_layer_norm``: ``(dx, dweight, dbias)`` in float64.

    Parameters
    ----------
    dy : array_like
        Gradient at ``y``.
    s : array_like
        The sum ``x + residual`` that the forward pass returned.
    weight, axis, eps, mean, rstd
        As for ``layer_norm_backward``, with ``s`` in place of ``x``.
    dresidual : array_like, optional
        Gradient arriving at ``s`` through the skip path, ``s``'s shape.

    Returns
    -------
    dx : ndarray
        The gradient for both ``x`` and ``residual``: the norm's plus ``dresidual``.
    dweight, dbias : ndarray
        As ``layer_norm_backward``'s.

    Examples
    --------
    With no gradient at ``y``, only the skip path's reaches ``x``:

    >>> dx, dweight, dbias = add_layer_norm_backward(
    ...     np.zeros((1, 2)), [[1.0, 3.0]], dresidual=[[0.5, -2.0]])
    >>> dx
    array([[ 0.5, -2. ]])
    """
    dx, dweight, dbias = layer_norm_backward(dy, s, weight, axis, eps, mean, rstd)
    return _with_skip_gradient(dx, dresidual), dweight, dbias


def add_rms_norm(x, residual, weight=None, axis=-1, eps=1e-5):
    """RMSNorm of ``s = x + residual``: ``add_layer_norm`` without centering.

    Parameters
    ----------
    x, residual : array_like
        As for ``add_layer_norm``: one shape, summed in float64.
    weight, axis, eps
        As for ``rms_norm``.

    Returns
    -------
    y, s, rstd : ndarray
        ``rms_norm(s, ...)``'s results around ``s``.

    Raises
    ------
    ValueError
        As ``add_layer_norm``.

    Examples
    --------
    >>> y, s, rstd = add_rms_norm([[1.0, 2.0]], [[2.0, 2.0]], eps=0.0)
    >>> y.round(4), s
    (array([[0.8485, 1.1314]]), array([[3., 4.]]))
    """
    s = _residual_sum(x, residual)
    y, rstd = rms_norm(s, weight, axis, eps)
    return y, s, rstd


def add_rms_norm_backward(dy, s, weight=None, axis=-1, eps=1e-5, rstd=None, dresidual=None):
    """Gradients of ``add_rms_norm``: ``rms_norm_backward``'s at ``s``, ``dresidual`` added to dx.

    Parameters
    ----------
    dy, s, dresidual
        As for ``add_layer_norm_backward``.
    weight, axis, eps, rstd
        As for ``rms_norm_backward``, with ``s`` in place of ``x``.

    Returns
    -------
    dx, dweight : ndarray
        ``dx`` serves ``x`` and ``residual`` both.

    Examples
    --------
    A gradient at ``y`` along ``s`` itself is lost (scaling ``s`` leaves ``y``);
    the skip path's arrives whole:

    >>> dx, dweight = add_rms_norm_backward(
    ...     [[3.0, 4.0]], [[3.0, 4.0]], dresidual=[[0.5, -2.0]])
    >>> dx.round(4)
    array([[ 0.5, -2. ]])
    """
    dx, dweight = rms_norm_backward(dy, s, weight, axis, eps, rstd)
    return _with_skip_gradient(dx, dresidual), dweight


def rel_l2(actual, expected):
    """Relative L2 error of ``actual`` against the float64 ``expected``."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    norm = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return diff / norm if norm else diff


try:  # a test extra: bfloat16's NumPy dtype
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - the bfloat16 tests skip
    BFLOAT16 = None

#: Largest relative L2 error accepted, per input dtype. A result rounded to a
#: format with a p-bit significand has relative errors up to 2**-p (half an
#: ulp), about 2**-p / sqrt(3) in L2 over many elements: float16 (p = 11)
#: 2.8e-4, bfloat16 (p = 8) 2.3e-3. The float16 and bfloat16 bounds leave
#: room for the rounding of the inputs' sums as well.
TOLERANCE = {np.dtype(np.float16): 1e-3, np.dtype(np.float32): 1e-6,
             np.dtype(np.float64): 1e-12}
if BFLOAT16 is not None:
    TOLERANCE[BFLOAT16] = 8e-3


#: The dtypes every test covers.
DTYPES = [np.float16, np.float32, np.float64] + ([BFLOAT16] if BFLOAT16 is not None else [])


def param_dtype(dtype):
    """A gain/bias dtype that differs from x's where that is the realistic case."""
    return np.float32 if np.dtype(dtype).itemsize == 2 else dtype  # float16, bfloat16
