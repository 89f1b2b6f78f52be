"""The per-element math of layer normalization, written once.

These small ``@njit`` functions are the only place the formulas live. The CPU
kernels (``cpu.py``) and the CUDA kernels (``gpu.py``) call the same
functions; the kernels only decide how rows map onto threads.

Statistics use a *shifted* two-pass scheme. Pass one sums ``x - shift`` where
``shift`` is the row's first element; pass two sums the squares of the
centered values. Shifting by a value of the row keeps float32 accurate for
rows whose mean is large compared with their spread (mean 1e4, std 1e-2):
``x - shift`` is then exact, so the mean offset and the deviations carry the
row's spread, not the rounding of its magnitude. It never computes
E[x^2] - E[x]^2.

Notation: ``n`` is the row length, ``offset = mean - shift``, ``xhat`` the
normalized value, ``rstd = 1 / sqrt(var + eps)`` with the biased variance.

Examples
--------
One row's statistics as the kernels compute them (called from Python here,
in float64):

>>> from numba_ln import _math
>>> row = [1.0, 2.0, 3.0, 6.0]
>>> shift, n = row[0], float(len(row))
>>> offset = _math.mean_offset(sum(_math.shifted(v, shift) for v in row), n)
>>> sumsq = sum(_math.centered(v, shift, offset) ** 2 for v in row)
>>> _math.row_mean(shift, offset), _math.reciprocal_std(sumsq, n, 0.0)
(3.0, 0.5345224838248488)
"""

import math

from numba import njit

# Inlined at numba-IR level into each caller, so each kernel applies its own
# fast-math flags to these lines. IR inlining is also what lets
# ``numba.cuda.compile_ptx`` compile a kernel that calls them on a machine
# with no GPU: a call to a separately compiled device function asks the
# driver for the current device's compute capability.
_jit = njit(inline="always", error_model="numpy")


@_jit
def shifted(value, shift):
    """``value - shift``: pass one sums these."""
    return value - shift


@_jit
def mean_offset(shifted_sum, n):
    """The mean minus the shift, from the sum of shifted values.

    ``n`` is the row length as a float of the compute type (an integer would
    promote float32 arithmetic to float64).
    """
    return shifted_sum / n


@_jit
def centered(value, shift, offset):
    """``value - mean``, computed as ``(value - shift) - offset``."""
    return (value - shift) - offset


@_jit
def reciprocal_std(centered_sumsq, n, eps):
    """``1 / sqrt(var + eps)`` from the sum of squared deviations.

    The one is spelled ``n / n`` (exactly 1, in the compute type): a literal
    ``1.0`` is a float64 in numba and would promote float32 statistics to
    float64. A zero variance with ``eps = 0`` gives ``inf``.
    """
    return (n / n) / math.sqrt(centered_sumsq / n + eps)


@_jit
def row_mean(shift, offset):
    """The row mean reported to the caller."""
    return shift + offset


@_jit
def normalize_affine(deviation, rstd, weight, bias):
    """``y = (x - mean) * rstd * weight + bias``."""
    return deviation * rstd * weight + bias


@_jit
def normalized(value, mean, rstd):
    """``xhat = (x - mean) * rstd`` from the stored statistics (backward)."""
    return (value - mean) * rstd


@_jit
def grad_input(g, xhat, rstd, mean_g, mean_gxhat):
    """``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = w * dy``."""
    return rstd * ((g - mean_g) - xhat * mean_gxhat)
