"""bfloat16 storage: the CPU kernels' conversions, against ``ml_dtypes``."""

import numpy as np
import pytest
from numba import njit

from numba_ln import _storage

ml_dtypes = pytest.importorskip("ml_dtypes")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


@njit
def _widen(bits, out):
    for i in range(bits.size):
        out[i] = _storage.load(bits, i)


@njit
def _narrow(values, out):
    for i in range(values.size):
        _storage.store(out, i, values[i])


def _all_bfloat16_bits():
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16)


def test_every_bfloat16_widens_exactly():
    bits = _all_bfloat16_bits()
    wide = np.empty(bits.size, np.float32)
    _widen(bits, wide)
    expected = bits.view(BFLOAT16).astype(np.float32)
    np.testing.assert_array_equal(wide.view(np.uint32), expected.view(np.uint32))


def _narrowing_cases():
    """Every bfloat16 value, the midpoints between neighbours (ties), the floats
    just either side of them, and random float32 bit patterns."""
    exact = _all_bfloat16_bits().view(BFLOAT16).astype(np.float32)
    exact = exact[np.isfinite(exact)]
    bits = exact.view(np.uint32)
    tie = (bits + 0x8000).view(np.float32)
    below, above = tie.view(np.uint32) - np.uint32(1), tie.view(np.uint32) + np.uint32(1)
    rng = np.random.default_rng(16)
    random = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    edges = np.array([3.3895314e38, 3.3961776e38, 3.4028235e38, np.inf, -np.inf, 1e-45,
                      -1e-45, 0.0, -0.0], np.float32)
    return np.concatenate([exact, tie, below.view(np.float32), above.view(np.float32),
                           random.view(np.float32), edges])


def test_float32_narrows_to_nearest_even_like_ml_dtypes():
    values = _narrowing_cases()
    out = np.empty(values.size, np.int16)
    _narrow(values, out)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = values.astype(BFLOAT16).view(np.int16)
    nan = np.isnan(values)
    assert nan.any() and (~nan).sum() > 300_000
    np.testing.assert_array_equal(out[~nan], expected[~nan])
    # A NaN stays a NaN of its sign (the payload's top bits kept, made quiet).
    result = out[nan].view(BFLOAT16).astype(np.float32)
    assert np.isnan(result).all()
    np.testing.assert_array_equal(np.signbit(result), np.signbit(values[nan]))
