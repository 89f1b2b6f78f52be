"""The paper's invariances, as property tests."""

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import numba_ln

rows_strategy = st.integers(1, 6)
cols_strategy = st.integers(2, 64)
finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@st.composite
def matrices(draw):
    shape = (draw(rows_strategy), draw(cols_strategy))
    x = draw(arrays(np.float64, shape, elements=finite))
    # Rows need a spread well above rounding for the invariances to be sharp.
    spread = x.std(axis=1)
    x = x[spread > 1e-3 * (np.abs(x).max(axis=1) + 1)]
    return x if x.shape[0] else np.array([[0.0, 1.0]])


@settings(max_examples=60, deadline=None)
@given(x=matrices(), scale=st.floats(1e-3, 1e3), shifts=st.data())
def test_rescaling_and_recentering_rows_changes_nothing(x, scale, shifts):
    shift = shifts.draw(arrays(np.float64, (x.shape[0], 1), elements=finite))
    y = numba_ln.layer_norm(x, eps=0.0)
    y_moved = numba_ln.layer_norm(scale * x + shift, eps=0.0)
    np.testing.assert_allclose(y_moved, y, rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(x=matrices(), eps=st.floats(0, 1))
def test_stats_are_the_row_mean_and_reciprocal_std(x, eps):
    y, mean, rstd = numba_ln.layer_norm(x, eps=eps, return_stats=True)
    np.testing.assert_allclose(mean[:, 0], x.mean(axis=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rstd[:, 0], 1 / np.sqrt(x.var(axis=1) + eps), rtol=1e-9)
    # Without gain and bias, each output row has mean 0 and variance var/(var+eps).
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-9)
    var = x.var(axis=1)
    np.testing.assert_allclose(y.var(axis=1), var / (var + eps), rtol=1e-7)


@settings(max_examples=30, deadline=None)
@given(x=matrices(), gain=st.floats(0.1, 10), offset=finite)
def test_gain_and_bias_undo_the_normalization(x, gain, offset):
    weight = np.full(x.shape[1], gain)
    bias = np.full(x.shape[1], offset)
    y = numba_ln.layer_norm(x, weight, bias, eps=0.0)
    np.testing.assert_allclose(y, gain * numba_ln.layer_norm(x, eps=0.0) + offset,
                               rtol=1e-9, atol=1e-9)
