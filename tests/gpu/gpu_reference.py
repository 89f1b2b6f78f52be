"""The GPU tests' names for the one float64 reference, ``tests/reference.py``."""

import numpy as np

import reference
from reference import layer_norm, rel_l2 as rel_error

#: Largest relative L2 error accepted, by dtype name of ``x``.
TOLERANCE = {np.dtype(dtype).name: tol for dtype, tol in reference.TOLERANCE.items()}

#: The operations the kernels serve: layer norm, RMSNorm, and each with the residual added first.
OPS = ("ln", "rms", "add_ln", "add_rms")


def layer_norm_backward(dy, x, mean, rstd, weight=None, axis=-1):
    """Return ``(dx, dweight, dbias)`` in float64 from the given statistics."""
    return reference.layer_norm_backward(dy, x, weight, axis, mean=mean, rstd=rstd)


def forward(op, x, weight=None, bias=None, residual=None, axis=-1):
    """``op``'s forward in float64: ``(y, s, mean, rstd)``, ``s``/``mean`` None where there
    is none (``s`` without a residual, ``mean`` for RMSNorm, which takes no ``bias``)."""
    if op == "ln":
        y, mean, rstd = layer_norm(x, weight, bias, axis)
        return y, None, mean, rstd
    if op == "rms":
        y, rstd = reference.rms_norm(x, weight, axis)
        return y, None, None, rstd
    if op == "add_ln":
        return reference.add_layer_norm(x, residual, weight, bias, axis)
    y, s, rstd = reference.add_rms_norm(x, residual, weight, axis)
    return y, s, None, rstd


def backward(op, dy, x, mean, rstd, weight=None, dresidual=None, axis=-1):
    """``op``'s gradients in float64 at ``x`` (``s`` for the residual forms) from the given
    statistics: ``(dx, dweight, dbias)``, ``dbias`` None for RMSNorm."""
    if op.endswith("ln"):
        return reference.add_layer_norm_backward(dy, x, weight, axis, mean=mean, rstd=rstd,
                                                 dresidual=dresidual)
    dx, dweight = reference.add_rms_norm_backward(dy, x, weight, axis, rstd=rstd,
                                                  dresidual=dresidual)
    return dx, dweight, None


__all__ = ["OPS", "TOLERANCE", "backward", "forward", "layer_norm", "layer_norm_backward",
           "rel_error"]
