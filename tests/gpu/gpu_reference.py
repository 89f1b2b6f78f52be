"""Slow, obvious float64 layer norm: what every GPU result is compared with."""

import numpy as np


def layer_norm(x, weight=None, bias=None, axis=-1, eps=1e-5):
    """Return ``(y, mean, rstd)`` in float64; stats keep dims (ONNX layout)."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y, mean, rstd


def layer_norm_backward(dy, x, mean, rstd, weight=None, axis=-1):
    """Return ``(dx, dweight, dbias)`` in float64 from the given statistics."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    batch = tuple(range(axis % x.ndim))
    mean = np.asarray(mean, np.float64).reshape(x.shape[:axis % x.ndim] + (1,) * len(axes))
    rstd = np.asarray(rstd, np.float64).reshape(mean.shape)
    xhat = (x - mean) * rstd
    g = dy if weight is None else dy * np.asarray(weight, np.float64)
    dx = rstd * (g - g.mean(axis=axes, keepdims=True)
                 - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=batch), dy.sum(axis=batch)


def rel_error(result, expected):
    """Relative L2 error (absolute when ``expected`` is all zeros)."""
    result = np.asarray(result, np.float64)
    expected = np.asarray(expected, np.float64)
    norm = np.linalg.norm(expected)
    diff = np.linalg.norm(result - expected)
    return diff / norm if norm else diff


#: Largest relative L2 error accepted, by dtype of ``x``.
TOLERANCE = {"float16": 1e-3, "float32": 1e-6, "float64": 1e-12}
