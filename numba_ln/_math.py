"""The per-element math of layer normalization, written once.

These small ``@njit`` functions are the only place the formulas live. The CPU
kernels (``cpu.py``) and the CUDA kernels (``gpu.py``) call them; the kernels
only decide how rows map onto threads.

The CPU statistics use a *corrected two-pass* algorithm. Pass one sums the
row in float64, so the mean is as accurate as its float allows; ``center``
is that mean rounded to the compute type and ``correction = mean - center``
(exact in float64). Pass two sums the squares of the deviations ``d = x *
scale - center``, and the variance is ``sum(d*d) / n - correction**2``.
``x - center`` is exact when ``center`` is within a factor of two of ``x``,
so a row whose mean is large compared with its spread (mean 1e4, std 1e-2)
keeps its spread's precision. 16-bit rows take one pass instead, their
deviations from a pilot of 8 bits exact (``cpu._narrow_row_moments``).
``scale`` is 1, or a power of two that brings
a row whose squares or sums would overflow back into range. The CUDA kernels
hold the row in registers and use the same correction in the compute type:
``center`` is the row's sum over ``n`` (:func:`mean_offset` of the sum),
pass two sums ``d = x - center`` (:func:`shifted`) and ``d * d``, and
:func:`corrected_rstd` takes the variance from both; rows split over several
blocks merge their segments with :func:`combine_moments`.

Notation: ``n`` is the row length, ``xhat`` the normalized value, ``rstd =
1 / sqrt(var + eps)`` with the biased variance.

Examples
--------
One row's statistics as the CPU kernels compute them (called from Python
here, in float64):

>>> from numba_ln import _math
>>> row, scale = [1.0, 2.0, 3.0, 6.0], 1.0
>>> center = sum(v * scale for v in row) / len(row)  # kernels: the float64 mean, rounded
>>> d = [_math.scaled_deviation(v, scale, center) for v in row]
>>> correction = 0.0  # kernels: the float64 mean minus center, exactly
>>> variance = _math.corrected_variance(correction, sum(v * v for v in d), len(row))
>>> _math.scaled_mean(center, correction, scale), _math.scaled_rstd(variance, 0.0, scale)
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
def scaled_deviation(value, scale, center):
    """``value * scale - center``: pass two sums these and their squares."""
    return value * scale - center


@_jit
def corrected_variance(correction, deviation_sumsq, n):
    """The variance from the second pass's sum of squares, in float64.

    ``correction`` is the mean minus the center the deviations were taken
    from. Never negative, whatever the rounding; NaN stays NaN.
    """
    variance = deviation_sumsq / n - correction * correction
    return 0.0 if variance < 0.0 else variance


@_jit
def scaled_mean(center, correction, scale):
    """The row mean reported to the caller, undoing the scale (float64)."""
    return (center + correction) / scale


@_jit
def scaled_rstd(variance, eps, scale):
    """``rstd`` of the scaled row, ``1 / sqrt(var + eps * scale**2)`` (float64).

    Times ``scale`` it is the row's own ``rstd``. A zero variance with
    ``eps = 0`` gives ``inf``.
    """
    return 1.0 / math.sqrt(variance + eps * scale * scale)


@_jit
def affine_output(value, scale, center, correction, rstd_high, rstd_low, weight, bias):
    """``y = (value - mean) * rstd * weight + bias`` from the CPU statistics.

    ``rstd_high + rstd_low`` is the scaled row's float64 ``rstd`` split in
    two of the compute type. Computed as ``t * gain + (bias - correction *
    gain)`` with ``t = value * scale - center`` (exact when ``center`` is
    near ``value``) and ``gain = rstd * weight`` rounded once: the large
    term is rounded twice in all, not four times.
    """
    gain = rstd_high * weight + rstd_low * weight
    return (value * scale - center) * gain + (bias - correction * gain)


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
def corrected_rstd(deviation_sumsq, correction, n, eps):
    """``1 / sqrt(var + eps)`` with ``var = sum(d*d) / n - correction**2``, in the compute type.

    ``d`` are the deviations from a center, ``correction`` the mean minus
    that center. A rounding below zero counts as zero; NaN stays NaN.
    """
    variance = deviation_sumsq / n - correction * correction
    if variance < n - n:
        variance = n - n
    return (n / n) / math.sqrt(variance + eps)


@_jit
def deviation_sumsq(deviation_sumsq, deviation_sum, n):
    """The sum of squared deviations from the mean, from deviations taken from a center.

    ``sum((x - mean)**2) = sum(d*d) - sum(d)**2 / n``; never below zero.
    """
    total = deviation_sumsq - deviation_sum * deviation_sum / n
    if total < n - n:
        total = n - n
    return total


@_jit
def combine_moments(mean_a, sumsq_a, count_a, mean_b, sumsq_b, count_b):
    """Merge two parts' means and sums of squared deviations (Chan, Golub and LeVeque).

    Returns the mean and the sum of squared deviations of both parts
    together; ``count_a`` and ``count_b`` are floats of the compute type.
    """
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    return mean, sumsq_a + sumsq_b + delta * delta * (count_a * count_b / count)


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
