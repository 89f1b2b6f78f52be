"""The GPU tests' names for the one float64 reference, ``tests/reference.py``."""

import numpy as np

import reference
from reference import layer_norm, rel_l2 as rel_error

#: Largest relative L2 error accepted, by dtype name of ``x``.
TOLERANCE = {np.dtype(dtype).name: tol for dtype, tol in reference.TOLERANCE.items()}


def layer_norm_backward(dy, x, mean, rstd, weight=None, axis=-1):
    """Return ``(dx, dweight, dbias)`` in float64 from the given statistics."""
    return reference.layer_norm_backward(dy, x, weight, axis, mean=mean, rstd=rstd)


__all__ = ["TOLERANCE", "layer_norm", "layer_norm_backward", "rel_error"]
