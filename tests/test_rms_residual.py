"""RMSNorm and the fused residual add on the CPU, against the float64 references.

Layer norm's own tests (``test_forward.py``, ``test_backward.py``) cover the
kernels' layouts, streaming and short paths; these check what the new forms
add: the missing centering, ``s = x + residual`` written beside ``y``, and
``dresidual`` added into ``dx``.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import numba_ln
import reference as ref
from reference import DTYPES, TOLERANCE, param_dtype, rel_l2

SHAPES = [(7,), (5, 33), (3, 4, 17), (300, 129)]
#: Serial; threaded; threaded with streamed outputs; wide backward rows.
SIZES = [(5, 33), (600, 257), (2048, 2304), (40, 5000)]


def _tol(dtype):
    return max(TOLERANCE[np.dtype(dtype)], 1e-6)


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_matches_reference_every_axis(rng, dtype, shape, with_weight):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    for axis in range(-len(shape), len(shape)):
        weight = (rng.standard_normal(shape[axis:]).astype(param_dtype(dtype))
                  if with_weight else None)
        y, rstd = numba_ln.rms_norm(x, weight, axis=axis, return_stats=True)
        y_ref, rstd_ref = ref.rms_norm(x, weight, axis=axis)
        assert y.dtype == dtype and y.shape == shape
        assert rstd.shape == rstd_ref.shape == shape[:axis % len(shape)] + (1,) * (
            len(shape) - axis % len(shape))
        assert rstd.dtype == (np.float64 if dtype == np.float64 else np.float32)
        assert rel_l2(y, y_ref) <= TOLERANCE[np.dtype(dtype)], axis
        assert rel_l2(rstd, rstd_ref) <= _tol(dtype), axis


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 33), (600, 257), (40, 5000)], ids=str)
@pytest.mark.parametrize("with_dresidual", [False, True])
def test_rms_norm_backward_matches_reference(rng, dtype, shape, with_dresidual):
    x = (rng.standard_normal(shape) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(shape[-1]).astype(param_dtype(dtype))
    dresidual = rng.standard_normal(shape).astype(dtype) if with_dresidual else None
    _, rstd = numba_ln.rms_norm(x, weight, return_stats=True)
    dx, dweight = numba_ln.rms_norm_backward(dy, x, rstd, weight, dresidual=dresidual)
    dx_ref, dweight_ref = ref.add_rms_norm_backward(dy, x, weight, dresidual=dresidual)
    assert dx.dtype == dtype and dweight.dtype == weight.dtype
    assert rel_l2(dx, dx_ref) <= _tol(dtype)
    assert rel_l2(dweight, dweight_ref) <= _tol(dtype)


def test_rms_norm_backward_is_the_derivative():
    """Central differences of ``sum(rms_norm(x, w) * dy)`` in float64."""
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    weight = rng.standard_normal(6)
    _, rstd = numba_ln.rms_norm(x, weight, return_stats=True)
    dx, dweight = numba_ln.rms_norm_backward(dy, x, rstd, weight)

    def loss(x, weight):
        return float((numba_ln.rms_norm(x, weight) * dy).sum())

    h = 1e-6
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        numeric = (loss(x + step, weight) - loss(x - step, weight)) / (2 * h)
        assert dx[index] == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    for j in range(6):
        step = np.zeros(6)
        step[j] = h
        numeric = (loss(x, weight + step) - loss(x, weight - step)) / (2 * h)
        assert dweight[j] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def _fused(op, x, residual, weight, **kwargs):
    """``op``'s fused forward with weight (and, for layer norm, a bias)."""
    if op == "layer":
        return numba_ln.layer_norm(x, weight, weight[::-1].copy(), residual=residual,
                                   return_stats=True, **kwargs)
    return numba_ln.rms_norm(x, weight, residual=residual, return_stats=True, **kwargs)


def _fused_ref(op, x, residual, weight):
    if op == "layer":
        return ref.add_layer_norm(x, residual, weight, weight[::-1].copy())
    return ref.add_rms_norm(x, residual, weight)


@pytest.mark.parametrize("op", ["layer", "rms"])
@pytest.mark.parametrize("dtype, residual_dtype", [
    (np.float16, np.float16), (np.float16, np.float32), (np.float32, np.float32),
    (np.float64, np.float64)], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_fused_residual_add_matches_reference(rng, op, dtype, residual_dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    residual = (rng.standard_normal(shape) * 4).astype(residual_dtype)
    weight = rng.standard_normal(shape[-1]).astype(param_dtype(dtype))
    y, s, *stats = _fused(op, x, residual, weight)
    assert y.dtype == dtype and s.dtype == residual_dtype and s.shape == shape
    # s is the sum rounded once to its dtype; the norm is of that s.
    np.testing.assert_array_equal(s, (_f64(x) + _f64(residual)).astype(residual_dtype))
    y_ref, s_ref, *stats_ref = _fused_ref(op, x, residual, weight)
    expected = _fused_ref(op, s, np.zeros_like(s), weight)
    assert rel_l2(y, expected[0]) <= TOLERANCE[np.dtype(dtype)]
    for stat, stat_ref in zip(stats, expected[2:]):
        assert rel_l2(stat, stat_ref) <= _tol(residual_dtype)
    # Against the unrounded float64 sum: the rounding of s is all that differs.
    assert rel_l2(y, y_ref) <= 4 * TOLERANCE[np.dtype(dtype)]


@pytest.mark.parametrize("op", ["layer", "rms"])
@pytest.mark.parametrize("shape", [(5, 33), (2048, 2304)], ids=str)
def test_fused_add_is_the_unfused_add_then_the_norm_bit_for_bit(rng, op, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    residual = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal(shape[-1]).astype(np.float32)
    fused = _fused(op, x, residual, weight)
    s = x + residual
    plain = (numba_ln.layer_norm(s, weight, weight[::-1].copy(), return_stats=True)
             if op == "layer" else numba_ln.rms_norm(s, weight, return_stats=True))
    np.testing.assert_array_equal(fused[1], s)
    for a, b in zip((fused[0],) + tuple(fused[2:]), plain):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ["layer", "rms"])
@pytest.mark.parametrize("shape", [(5, 33), (2048, 2304)], ids=str)
def test_residual_out_may_be_the_residual_itself(rng, op, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    residual = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal(shape[-1]).astype(np.float32)
    expected = _fused(op, x, residual.copy(), weight)
    result = _fused(op, x, residual, weight, residual_out=residual)
    assert result[1] is residual
    for a, b in zip(result, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["separate", "padded-rows", "fortran"])
def test_residual_out_receives_s_in_any_layout(rng, layout):
    x = rng.standard_normal((40, 24)).astype(np.float32)
    residual = rng.standard_normal((40, 24)).astype(np.float32)
    if layout == "separate":
        s_out = np.empty_like(x)
    elif layout == "padded-rows":
        s_out = np.zeros((40, 30), np.float32)[:, :24]
    else:
        s_out = np.asfortranarray(np.zeros_like(x))
    y_out = np.empty_like(x)
    y, s = numba_ln.rms_norm(x, residual=residual, residual_out=s_out, out=y_out)
    assert y is y_out and s is s_out
    np.testing.assert_array_equal(s_out, x + residual)
    np.testing.assert_array_equal(y, numba_ln.rms_norm(x + residual))


def test_return_values_in_order_with_and_without_stats(rng):
    x = rng.standard_normal((3, 8))
    residual = rng.standard_normal((3, 8))
    assert isinstance(numba_ln.rms_norm(x), np.ndarray)
    assert len(numba_ln.rms_norm(x, residual=residual)) == 2
    y, s, rstd = numba_ln.rms_norm(x, residual=residual, return_stats=True)
    assert rstd.shape == (3, 1)
    y2, s2, mean, rstd2 = numba_ln.layer_norm(x, residual=residual, return_stats=True)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_allclose(mean, s.mean(axis=1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("op", ["layer", "rms"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 33), (600, 257), (40, 5000)], ids=str)
def test_backward_adds_dresidual_into_dx(rng, op, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    residual = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dresidual = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(shape[-1]).astype(param_dtype(dtype))
    if op == "layer":
        _, s, mean, rstd = numba_ln.layer_norm(x, weight, residual=residual, return_stats=True)
        dx, dweight, dbias = numba_ln.layer_norm_backward(dy, s, mean, rstd, weight,
                                                          dresidual=dresidual)
        dx_ref, dweight_ref, dbias_ref = ref.add_layer_norm_backward(
            dy, s, weight, dresidual=dresidual)
        assert rel_l2(dbias, dbias_ref) <= _tol(dtype)
        plain = numba_ln.layer_norm_backward(dy, s, mean, rstd, weight)
    else:
        _, s, rstd = numba_ln.rms_norm(x, weight, residual=residual, return_stats=True)
        dx, dweight = numba_ln.rms_norm_backward(dy, s, rstd, weight, dresidual=dresidual)
        dx_ref, dweight_ref = ref.add_rms_norm_backward(dy, s, weight, dresidual=dresidual)
        plain = numba_ln.rms_norm_backward(dy, s, rstd, weight)
    assert rel_l2(dx, dx_ref) <= _tol(dtype)
    assert rel_l2(dweight, dweight_ref) <= _tol(dtype)
    np.testing.assert_array_equal(dweight, plain[1])  # dresidual changes dx only
    if dtype == np.float64:
        np.testing.assert_allclose(dx, plain[0] + dresidual, rtol=1e-13, atol=1e-13)


def test_dresidual_may_receive_dx_in_place(rng):
    x, dy, dresidual = (rng.standard_normal((600, 257)) for _ in range(3))
    _, rstd = numba_ln.rms_norm(x, return_stats=True)
    expected = numba_ln.rms_norm_backward(dy, x, rstd, dresidual=dresidual.copy())
    dx, dweight = numba_ln.rms_norm_backward(dy, x, rstd, dresidual=dresidual, out=dresidual)
    assert dx is dresidual
    np.testing.assert_array_equal(dx, expected[0])
    np.testing.assert_array_equal(dweight, expected[1])


@pytest.mark.parametrize("shape", [(4096, 96), (3, 70000)], ids=str)
def test_rms_gradients_are_bit_identical_across_thread_counts(rng, shape):
    x, dy, dresidual = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    _, rstd = numba_ln.rms_norm(x, weight, return_stats=True)
    threads = numba.get_num_threads()
    results = []
    try:
        for n in (1, threads):
            numba.set_num_threads(n)
            results.append(numba_ln.rms_norm_backward(dy, x, rstd, weight, dresidual=dresidual))
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", [False, True])
def test_nan_and_inf_stay_in_their_row(rng, dtype, fused):
    x = rng.standard_normal((600, 96)).astype(dtype)  # big enough for the parallel kernel
    residual = rng.standard_normal((600, 96)).astype(dtype) if fused else None
    dirty = x.copy()
    dirty[3, 5] = np.nan
    dirty[10, 0] = np.inf
    dirty[12, 7], dirty[12, 8] = np.inf, -np.inf
    clean = numba_ln.rms_norm(x, residual=residual)
    y = numba_ln.rms_norm(dirty, residual=residual)
    if fused:
        (clean, _), (y, s) = clean, y
        assert np.isinf(s[12, 7]) and np.isinf(s[12, 8]) and np.isinf(s[10, 0])
    bad = [3, 10, 12]
    assert np.isnan(y[bad]).all()
    good = np.setdiff1d(np.arange(600), bad)
    np.testing.assert_array_equal(y[good], clean[good])


@pytest.mark.parametrize("dtype, big", [(np.float16, 6e4), (np.float32, 3e38),
                                        (np.float64, 1e300)])
def test_rows_whose_squares_overflow_are_normalized(dtype, big):
    x = np.array([[big, -big, big / 2, 0.0]], dtype)
    y, rstd = numba_ln.rms_norm(x, eps=0.0, return_stats=True)
    expected, _ = ref.rms_norm(x.astype(np.float64) / big, eps=0.0)  # scale-invariant
    assert np.isfinite(y).all() and rel_l2(y, expected) <= TOLERANCE[np.dtype(dtype)]


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("dtype, tiny", [(np.float32, 1e-39), (np.float32, 1e-20),
                                         (np.float64, 1e-200), (np.float16, 6e-8)])
def test_rows_whose_squares_underflow_are_normalized(norm, dtype, tiny):
    """With ``eps=0`` nothing hides a sum of squares that fell below the smallest normal."""
    x = (np.array([[1.0, -2.0, 3.0, 0.5]]) * tiny).astype(dtype)
    scaled = x.astype(np.float64) / tiny
    if norm == "layer":
        y, expected = numba_ln.layer_norm(x, eps=0.0), ref.layer_norm(scaled, eps=0.0)[0]
    else:
        y, expected = numba_ln.rms_norm(x, eps=0.0), ref.rms_norm(scaled, eps=0.0)[0]
    assert rel_l2(y, expected) <= max(TOLERANCE[np.dtype(dtype)], 1e-6) * 4  # x was rounded


def test_matches_pytorch_rms_norm(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 6, 10)).astype(np.float32)
    weight = rng.standard_normal((6, 10)).astype(np.float32)
    expected = torch.nn.functional.rms_norm(torch.tensor(x), [6, 10], torch.tensor(weight),
                                            1e-5).numpy()
    np.testing.assert_allclose(numba_ln.rms_norm(x, weight, axis=1), expected, rtol=2e-5,
                               atol=2e-6)


def test_small_calls_take_the_short_path_to_the_same_bits(rng, general_calls):
    x = rng.standard_normal((32, 64)).astype(np.float32)
    dy = rng.standard_normal((32, 64)).astype(np.float32)
    weight = rng.standard_normal(64).astype(np.float32)
    specs = general_calls("forward_spec")
    y, rstd = numba_ln.rms_norm(x, weight, return_stats=True)
    dx, dweight = numba_ln.rms_norm_backward(dy, x, rstd, weight)
    assert specs == []
    padded = np.zeros((32, 70), np.float32)[:, :64]  # another layout: the general path
    padded[...] = x
    y2, rstd2 = numba_ln.rms_norm(padded, weight, return_stats=True)
    assert len(specs) == 1
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(rstd, rstd2)
    grads = numba_ln.rms_norm_backward(dy, padded, rstd, weight)
    for a, b in zip(grads, (dx, dweight)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ errors

def _x():
    return np.ones((2, 4), np.float32)


@pytest.mark.parametrize("residual, error, message", [
    (np.ones((2, 5), np.float32), ValueError, r"residual has shape \(2, 5\); expected x's "
                                              r"shape \(2, 4\)"),
    (np.ones((2, 4), np.float64), TypeError, r"residual has dtype float64; expected x's "
                                             r"dtype float32$"),
    (np.ones((2, 4), np.float16), TypeError, r"residual has dtype float16; expected x's "
                                             r"dtype float32$"),
], ids=["shape", "wider", "narrower"])
@pytest.mark.parametrize("norm", [numba_ln.layer_norm, numba_ln.rms_norm])
def test_bad_residual(norm, residual, error, message):
    out = np.full((2, 4), 7.0, np.float32)
    with pytest.raises(error, match=message):
        norm(_x(), residual=residual, out=out)
    assert (out == 7).all()


def test_float16_x_takes_a_float16_or_float32_residual_only():
    x = np.ones((2, 4), np.float16)
    with pytest.raises(TypeError, match="expected x's dtype float16 or float32"):
        numba_ln.rms_norm(x, residual=np.ones((2, 4), np.float64))


@pytest.mark.parametrize("residual_out, error, message", [
    (np.zeros((2, 4), np.float64), TypeError, "residual_out has dtype float64; expected "
                                              "float32"),
    (np.zeros((4, 2), np.float32), ValueError, r"residual_out has shape \(4, 2\)"),
])
def test_bad_residual_out_is_left_untouched(residual_out, error, message):
    with pytest.raises(error, match=message):
        numba_ln.layer_norm(_x(), residual=_x(), residual_out=residual_out)
    assert (residual_out == 0).all()


def test_residual_out_read_only_or_without_residual():
    frozen = np.zeros((2, 4), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="residual_out is read-only"):
        numba_ln.rms_norm(_x(), residual=_x(), residual_out=frozen)
    with pytest.raises(ValueError, match="residual_out= was given without residual="):
        numba_ln.rms_norm(_x(), residual_out=np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("dresidual, error, message", [
    (np.ones((2, 5), np.float32), ValueError, r"dresidual has shape \(2, 5\); expected x's"),
    (np.ones((2, 4), np.float64), TypeError, "dresidual has dtype float64; expected x's "
                                             "dtype float32"),
])
def test_bad_dresidual(dresidual, error, message):
    rstd = np.ones((2, 1), np.float32)
    with pytest.raises(error, match=message):
        numba_ln.rms_norm_backward(_x(), _x(), rstd, dresidual=dresidual)
    with pytest.raises(error, match=message):
        numba_ln.layer_norm_backward(_x(), _x(), rstd, rstd, dresidual=dresidual)


def test_rms_norm_backward_checks_rstd_and_takes_no_mean():
    with pytest.raises(ValueError, match=r"rstd has 3 elements .* expected one per row: 2"):
        numba_ln.rms_norm_backward(_x(), _x(), np.ones(3, np.float32))
    with pytest.raises(TypeError):
        numba_ln.rms_norm(_x(), None, None)  # no bias: weight is the only positional


# ------------------------------------------------------------------------ properties

finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@st.composite
def _rows(draw):
    shape = (draw(st.integers(1, 5)), draw(st.integers(2, 48)))
    x = draw(arrays(np.float64, shape, elements=finite))
    keep = np.sqrt((x * x).mean(axis=1)) > 1e-2  # rows well above eps's reach
    return x[keep] if keep.any() else np.array([[1.0, -2.0]])


@settings(max_examples=60, deadline=None)
@given(x=_rows(), scale=st.floats(1e-3, 1e3))
def test_rms_norm_is_scale_invariant(x, scale):
    np.testing.assert_allclose(numba_ln.rms_norm(scale * x, eps=0.0),
                               numba_ln.rms_norm(x, eps=0.0), rtol=1e-9, atol=1e-9)


def test_rms_norm_is_not_shift_invariant_unlike_layer_norm():
    x = np.array([[1.0, 2.0, 3.0, 6.0]])
    np.testing.assert_allclose(numba_ln.layer_norm(x + 10.0), numba_ln.layer_norm(x),
                               rtol=1e-12, atol=1e-12)
    assert np.abs(numba_ln.rms_norm(x + 10.0) - numba_ln.rms_norm(x)).max() > 0.1
    # A constant row: layer norm gives zeros, RMSNorm ones.
    np.testing.assert_allclose(numba_ln.rms_norm(np.full((1, 4), 5.0), eps=0.0), 1.0)


@pytest.mark.parametrize("op", ["layer", "rms"])
@pytest.mark.parametrize("shape", [(1, 768), (32, 1024), (300, 1024)], ids=str)
def test_fused_calls_take_the_short_path_to_the_same_bits(rng, op, shape, general_calls):
    x, residual = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    weight = rng.standard_normal(shape[-1]).astype(np.float32)
    specs = general_calls("forward_spec")
    s_out = np.empty_like(x)
    short = _fused(op, x, residual, weight, residual_out=s_out)
    in_place = _fused(op, x, residual.copy(), weight)
    assert specs == [] and short[1] is s_out
    general = _fused(op, x, memoryview(residual.copy()), weight)  # not an ndarray: general
    assert len(specs) == 1
    for a, b, c in zip(short, in_place, general):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_a_float16_dy_with_a_float32_s_says_how_to_call():
    s = np.ones((2, 4), np.float32)
    with pytest.raises(TypeError, match=r"dy has dtype float16; expected x's dtype float32 "
                                        r"\(with a float32 residual stream, x is s: pass "
                                        r"dy.astype\(float32\)\)"):
        numba_ln.rms_norm_backward(np.ones((2, 4), np.float16), s, np.ones(2, np.float32))
