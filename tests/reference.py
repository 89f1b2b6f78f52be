"""Slow, readable float64 references for layer normalization.

Every backend and dtype is compared against these. They loop over rows and
follow the paper's definitions literally: mean, biased variance (two-pass),
normalize, gain and bias; the backward pass is the textbook chain rule.
"""

import numpy as np


def _rows(a, axis):
    """View ``a`` as (rows, cols) in float64, ONNX axis semantics."""
    a = np.asarray(a, dtype=np.float64)
    axis = axis % a.ndim
    cols = int(np.prod(a.shape[axis:]))
    return a.reshape(-1, cols), axis


def layer_norm(x, weight=None, bias=None, axis=-1, eps=1e-5):
    """Return (y, mean, rstd) in float64; mean/rstd have ONNX's keep-dims shape."""
    rows, axis = _rows(x, axis)
    cols = rows.shape[1]
    w = np.ones(cols) if weight is None else np.asarray(weight, np.float64).reshape(-1)
    b = np.zeros(cols) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    y = np.empty_like(rows)
    mean = np.empty(rows.shape[0])
    rstd = np.empty(rows.shape[0])
    for r, row in enumerate(rows):
        mu = row.sum() / cols
        var = ((row - mu) ** 2).sum() / cols
        mean[r] = mu
        rstd[r] = 1.0 / np.sqrt(var + eps)
        y[r] = (row - mu) * rstd[r] * w + b
    stats_shape = np.shape(x)[:axis] + (1,) * (np.ndim(x) - axis)
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
    w = np.ones(cols) if weight is None else np.asarray(weight, np.float64).reshape(-1)
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


def rel_l2(actual, expected):
    """Relative L2 error of ``actual`` against the float64 ``expected``."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    norm = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return diff / norm if norm else diff


#: Largest relative L2 error accepted, per input dtype.
TOLERANCE = {np.dtype(np.float16): 1e-3, np.dtype(np.float32): 1e-6,
             np.dtype(np.float64): 1e-12}


#: The dtypes every test covers.
DTYPES = [np.float16, np.float32, np.float64]


def param_dtype(dtype):
    """A gain/bias dtype that differs from x's where that is the realistic case."""
    return np.float32 if dtype == np.float16 else dtype
