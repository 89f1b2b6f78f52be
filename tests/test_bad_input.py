"""Hostile input, table-driven: loose scalars, masked and byte-swapped arrays, dtype objects.

Every refused call raises the documented type with a message that says what
was expected, and leaves ``out`` untouched. Every accepted one gives the bits
of the plain call.
"""

import fractions
import pickle

import numpy as np
import pytest

import numba_ln
from numba_ln import _validate

SHAPE = (4, 6)
SENTINEL = 9.0


def _x(dtype=np.float32):
    return (np.arange(24, dtype=np.float64).reshape(SHAPE) % 7 - 2.5).astype(dtype)


def _forward(**kwargs):
    def call(out):
        args = dict(kwargs)
        return numba_ln.layer_norm(args.pop("x", _x()), out=out, **args)
    return call


def _backward(**kwargs):
    def call(out):
        x = _x()
        _, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
        args = dict(dy=x, x=x, mean=mean, rstd=rstd)
        args.update(kwargs)
        return numba_ln.layer_norm_backward(args.pop("dy"), args.pop("x"), args.pop("mean"),
                                            args.pop("rstd"), out=out, **args)
    return call


def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))


REFUSED = {
    "eps str": (_forward(eps="1e-5"), TypeError, r"eps must be a real number, got str: "
                                                 r"expected a Python or NumPy float or int"),
    "eps bool": (_forward(eps=True), TypeError, r"eps must be a real number, got bool"),
    "eps numpy bool": (_forward(eps=np.bool_(True)), TypeError, r"got bool"),
    "eps complex": (_forward(eps=1e-5 + 0j), TypeError, r"got complex"),
    "eps array": (_forward(eps=np.array([1e-5])), TypeError, r"got ndarray"),
    "eps None": (_forward(eps=None), TypeError, r"got NoneType"),
    "eps negative numpy": (_forward(eps=np.float32(-1)), ValueError,
                           r"eps must be finite and >= 0"),
    "axis bool": (_forward(axis=True), TypeError, r"axis must be an integer, got bool"),
    "axis numpy bool": (_forward(axis=np.bool_(True)), TypeError, r"got bool"),
    "axis float": (_forward(axis=-1.0), TypeError, r"axis must be an integer, got float"),
    "axis numpy float": (_forward(axis=np.float64(-1)), TypeError, r"got float64"),
    "backward axis bool": (_backward(axis=True), TypeError, r"axis must be an integer, "
                                                            r"got bool"),
    "backward axis float": (_backward(axis=1.0), TypeError, r"got float"),
    "masked x": (_forward(x=_masked(_x())), TypeError,
                 r"x is a masked array; numba-ln does not apply masks .* x\.filled\(value\)"),
    "masked weight": (_forward(weight=_masked(np.ones(6, np.float32))), TypeError,
                      r"weight is a masked array"),
    "masked bias": (_forward(bias=_masked(np.ones(6, np.float32))), TypeError,
                    r"bias is a masked array"),
    "masked dy": (_backward(dy=_masked(_x())), TypeError, r"dy is a masked array"),
    "masked x backward": (_backward(x=_masked(_x())), TypeError, r"x is a masked array"),
    "masked rstd": (_backward(rstd=_masked(np.ones((4, 1), np.float32))), TypeError,
                    r"rstd is a masked array"),
    "byte-swapped int": (_forward(x=_x().astype(">i4")), TypeError,
                         r"x has dtype >i4; supported dtypes are float16, bfloat16 \(ml_dtypes\), "
                         r"float32, float64"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_the_expected_error_and_out_untouched(case):
    call, error, message = REFUSED[case]
    out = np.full(SHAPE, SENTINEL, np.float32)
    with pytest.raises(error, match=message):
        call(out)
    assert (out == SENTINEL).all()


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_without_out_too(case):
    call, error, message = REFUSED[case]
    with pytest.raises(error, match=message):
        call(None)


def test_masked_out_is_refused_and_untouched():
    out = _masked(np.full(SHAPE, SENTINEL, np.float32))
    with pytest.raises(TypeError, match=r"out is a masked array"):
        numba_ln.layer_norm(_x(), out=out)
    assert (out.data == SENTINEL).all()


@pytest.mark.parametrize("eps", [np.float32(1e-3), np.float64(1e-3), np.float16(1e-3),
                                 np.int64(0), 0, fractions.Fraction(1, 1000)], ids=repr)
def test_real_numbers_are_accepted_as_eps(eps):
    expected = numba_ln.layer_norm(_x(), eps=float(eps))
    assert numba_ln.layer_norm(_x(), eps=eps).tobytes() == expected.tobytes()


@pytest.mark.parametrize("axis", [np.int64(-1), np.int32(1), np.uint8(1)], ids=repr)
def test_numpy_integers_are_accepted_as_axis(axis):
    assert numba_ln.layer_norm(_x(), axis=axis).tobytes() == numba_ln.layer_norm(_x()).tobytes()


def test_a_valid_axis_call_does_not_let_a_float_axis_through_later():
    """The per-shape cache keys on the validated axis: -1 first must not admit -1.0."""
    _validate._cached_spec.cache_clear()
    numba_ln.layer_norm(_x(), axis=-1)
    with pytest.raises(TypeError, match="axis must be an integer, got float"):
        numba_ln.layer_norm(_x(), axis=-1.0)


# --------------------------------------------------------------------------- dtype objects

def _pickled(a):
    return pickle.loads(pickle.dumps(a))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_a_pickled_dtype_object_gives_the_same_bits_and_poisons_nothing(dtype):
    """Arrays from pickle carry an equal dtype that is not NumPy's own object."""
    x = _x(dtype)
    pickled = _pickled(x)
    assert pickled.dtype == x.dtype
    _validate._cached_spec.cache_clear()  # the pickled one is the first of its shape
    y_pickled, mean, rstd = numba_ln.layer_norm(pickled, return_stats=True)
    y = numba_ln.layer_norm(x)
    assert y_pickled.dtype is np.dtype(dtype) and y.dtype is np.dtype(dtype)
    assert y_pickled.tobytes() == y.tobytes()
    grads = numba_ln.layer_norm_backward(_pickled(x), pickled, mean, rstd,
                                         _pickled(np.ones(6, dtype)))
    plain = numba_ln.layer_norm_backward(x, x, mean, rstd, np.ones(6, dtype))
    for a, b in zip(grads, plain):
        assert a.tobytes() == b.tobytes()


def test_a_pickled_out_receives_the_result():
    x = _x(np.float16)
    out = _pickled(np.full(SHAPE, SENTINEL, np.float16))
    assert numba_ln.layer_norm(x, out=out) is out
    assert out.tobytes() == numba_ln.layer_norm(x).tobytes()


def test_newbyteorder_native_is_the_same_dtype():
    x = _x(np.float16)
    same = x.view(x.dtype.newbyteorder("="))
    assert numba_ln.layer_norm(same).tobytes() == numba_ln.layer_norm(x).tobytes()


# --------------------------------------------------------------------------- byte order

def _swapped(a):
    return a.astype(a.dtype.newbyteorder())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_byte_swapped_inputs_are_converted_once(dtype):
    x, weight = _x(dtype), np.linspace(0.5, 2, 6).astype(dtype)
    y, mean, rstd = numba_ln.layer_norm(_swapped(x), _swapped(weight), _swapped(weight),
                                        return_stats=True)
    expected, mean0, rstd0 = numba_ln.layer_norm(x, weight, weight, return_stats=True)
    assert y.dtype is np.dtype(dtype)  # results come in native order
    assert y.tobytes() == expected.tobytes() and mean.tobytes() == mean0.tobytes()
    grads = numba_ln.layer_norm_backward(_swapped(x), _swapped(x), _swapped(mean),
                                         _swapped(rstd), _swapped(weight))
    plain = numba_ln.layer_norm_backward(x, x, mean, rstd, weight)
    for a, b in zip(grads, plain):
        assert a.dtype.isnative and a.tobytes() == b.tobytes()


def test_byte_swapped_out_receives_the_values():
    x = _x()
    out = np.full(SHAPE, SENTINEL, np.dtype(np.float32).newbyteorder())
    assert numba_ln.layer_norm(x, out=out) is out
    assert np.array_equal(out, numba_ln.layer_norm(x))
    out_x = _swapped(x)  # in place on a byte-swapped array
    assert numba_ln.layer_norm(out_x, out=out_x) is out_x
    assert np.array_equal(out_x, numba_ln.layer_norm(x))
