"""Backward pass: against the reference formulas and against finite differences."""

import numpy as np
import pytest

import numba_ln
from numba_ln._validate import storage_dtype
from reference import DTYPES, TOLERANCE, layer_norm as ref_layer_norm, param_dtype
from reference import layer_norm_backward as ref_backward, rel_l2
from layouts import unaligned_copy
from streaming import FILL, assert_streamed_like_plain


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((7,), 0), ((5, 33), -1), ((3, 4, 17), 1),
                                        ((2, 3, 2, 5), -2), ((700, 96), 1),
                                        ((3, 70000), -1), ((4, 2048), -1),
                                        ((5, 600), -1)], ids=str)
@pytest.mark.parametrize("with_weight", [False, True])
def test_matches_reference(rng, dtype, shape, axis, with_weight):
    x = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    normalized = shape[axis:]
    weight = rng.standard_normal(normalized).astype(param_dtype(dtype)) if with_weight else None
    _, mean, rstd = numba_ln.layer_norm(x, weight, axis=axis, return_stats=True)
    dx, dweight, dbias = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, axis=axis)
    dx_ref, dweight_ref, dbias_ref = ref_backward(dy, x, weight, axis=axis)
    assert dx.shape == shape and dx.dtype == dtype
    assert dweight.shape == dbias.shape == normalized
    expected_param = np.dtype(param_dtype(dtype)) if with_weight else mean.dtype
    assert dweight.dtype == dbias.dtype == expected_param
    tol = TOLERANCE[np.dtype(dtype)]
    assert rel_l2(dx, dx_ref) <= tol
    # Parameter gradients sum over rows: allow the float32 accumulation error.
    param_tol = 1e-12 if dtype == np.float64 else 1e-5
    assert rel_l2(dweight, dweight_ref) <= param_tol
    assert rel_l2(dbias, dbias_ref) <= param_tol


def test_finite_differences():
    rng = np.random.default_rng(3)
    shape, eps = (3, 2, 5), 1e-5
    x = rng.standard_normal(shape)
    weight = rng.standard_normal((2, 5))
    bias = rng.standard_normal((2, 5))
    probe = rng.standard_normal(shape)  # loss = sum(probe * y)

    def loss(x_, weight_, bias_):
        return float((probe * numba_ln.layer_norm(x_, weight_, bias_, axis=1, eps=eps)).sum())

    _, mean, rstd = numba_ln.layer_norm(x, weight, bias, axis=1, eps=eps, return_stats=True)
    dx, dweight, dbias = numba_ln.layer_norm_backward(probe, x, mean, rstd, weight, axis=1)
    h = 1e-6
    for analytic, which in ((dx, 0), (dweight, 1), (dbias, 2)):
        args = [x, weight, bias]
        numeric = np.zeros_like(args[which])
        for index in np.ndindex(numeric.shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[which][index] += h
            minus[which][index] -= h
            numeric[index] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_stats_in_any_shape_with_one_element_per_row(rng):
    x = rng.standard_normal((4, 6, 10))
    dy = rng.standard_normal((4, 6, 10))
    _, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    expected = numba_ln.layer_norm_backward(dy, x, mean, rstd)
    flat = numba_ln.layer_norm_backward(dy, x, mean.ravel(), rstd.reshape(24, 1))
    for a, b in zip(expected, flat):
        np.testing.assert_array_equal(a, b)


def test_stats_of_another_float_dtype_are_converted(rng):
    x = rng.standard_normal((8, 16)).astype(np.float32)
    dy = rng.standard_normal((8, 16)).astype(np.float32)
    _, mean, rstd = ref_layer_norm(x)  # float64 statistics
    dx, _, _ = numba_ln.layer_norm_backward(dy, x, mean, rstd)
    assert rel_l2(dx, ref_backward(dy, x)[0]) <= 1e-6


def test_zero_rows():
    x = np.empty((0, 5), np.float32)
    dx, dweight, dbias = numba_ln.layer_norm_backward(x, x, np.empty(0), np.empty(0))
    assert dx.shape == (0, 5)
    np.testing.assert_array_equal(dweight, np.zeros(5))
    np.testing.assert_array_equal(dbias, np.zeros(5))


def test_strided_inputs(rng):
    x = rng.standard_normal((50, 40)).astype(np.float32)
    dy = rng.standard_normal((50, 40)).astype(np.float32)
    _, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    expected = numba_ln.layer_norm_backward(dy, x, mean, rstd)
    got = numba_ln.layer_norm_backward(np.asfortranarray(dy),
                                       np.pad(x, ((0, 0), (0, 5)))[:, :40], mean, rstd)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 50), (600, 128)], ids=str)
def test_out_receives_dx_and_is_returned(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(shape[-1]).astype(param_dtype(dtype))
    _, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    expected = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)
    out = np.full_like(x, 7)
    got = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, out=out)
    assert got[0] is out
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("inplace", ["dy", "x"])
@pytest.mark.parametrize("shape", [(3, 50), (600, 128)], ids=str)
def test_out_in_place_over_an_input(rng, inplace, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    expected = numba_ln.layer_norm_backward(dy, x, mean, rstd)
    target = dy if inplace == "dy" else x
    got = numba_ln.layer_norm_backward(dy, x, mean, rstd, out=target)
    assert got[0] is target
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_out_with_another_layout_or_overlapping_an_input(rng):
    x = rng.standard_normal((12, 30)).astype(np.float32)
    dy = rng.standard_normal((12, 30)).astype(np.float32)
    _, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    expected = numba_ln.layer_norm_backward(dy, x, mean, rstd)[0]
    out_f = np.zeros((12, 30), np.float32, order="F")
    assert numba_ln.layer_norm_backward(dy, x, mean, rstd, out=out_f)[0] is out_f
    np.testing.assert_array_equal(out_f, expected)
    out_padded = np.zeros((12, 40), np.float32)[:, :30]  # rows apart: written directly
    numba_ln.layer_norm_backward(dy, x, mean, rstd, out=out_padded)
    np.testing.assert_array_equal(out_padded, expected)
    # out overlaps dy (then x) shifted by one row: the result must not see its own writes.
    for position in (0, 1):
        buffer = np.zeros((13, 30), np.float32)
        buffer[:12] = (dy, x)[position]
        args = [dy, x]
        args[position] = buffer[:12]
        out = numba_ln.layer_norm_backward(*args, mean, rstd, out=buffer[1:])[0]
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(768,), (1, 768), (3, 5, 7), (4, 1), (32, 1024), (100, 1024)],
                         ids=str)
@pytest.mark.parametrize("with_weight", [False, True])
def test_direct_calls_take_the_short_path_to_the_same_bits(rng, dtype, shape, with_weight,
                                                           general_calls):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(shape[-1]).astype(dtype) if with_weight else None
    _, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    expected = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, device="cpu")
    general = general_calls("backward_spec")
    out = np.full_like(x, np.nan)
    in_place = dy.copy()
    calls = [((dy, x, mean, rstd, weight), {}),
             ((dy, x, mean.ravel(), rstd.ravel(), weight), {"axis": len(shape) - 1}),
             ((dy, x, mean, rstd, weight), {"out": out}),
             ((in_place, x, mean, rstd, weight), {"out": in_place})]
    for args, kwargs in calls:
        got = numba_ln.layer_norm_backward(*args, **kwargs)
        if "out" in kwargs:
            assert got[0] is kwargs["out"]
        assert got[0].dtype == dtype and got[0].shape == shape
        assert got[1].shape == got[2].shape == shape[-1:]
        for a, b in zip(expected, got):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    assert not general, "a direct call took the general path"


class _Subclass(np.ndarray):
    """An ndarray subclass: the short paths take exact ndarrays only."""


def _general_backward_calls(rng):
    """Calls the short path must leave to the general one: (name, args, kwargs)."""
    x = rng.standard_normal((6, 40)).astype(np.float32)
    dy = rng.standard_normal((6, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    _, mean, rstd = numba_ln.layer_norm(x, w, return_stats=True)
    half = x.astype(np.float16)
    shifted = np.concatenate([dy, dy[:1]])  # out=shifted[1:] overlaps dy=shifted[:6]
    return [
        ("float16", (half, half, mean, rstd, None), {}),
        ("float64 statistics", (dy, x, mean.astype(np.float64), rstd, w), {}),
        ("strided statistics", (dy, x, np.repeat(mean, 2)[::2], rstd, w), {}),
        ("mixed weight dtype", (dy, x, mean, rstd, w.astype(np.float64)), {}),
        ("first axis", (dy, x, np.zeros(1, np.float32), np.ones(1, np.float32), None),
         {"axis": 0}),
        ("transposed dy", (np.ascontiguousarray(dy.T).T, x, mean, rstd, w), {}),
        ("dy a subclass", (dy.view(_Subclass), x, mean, rstd, w), {}),
        ("Fortran-ordered out", (dy, x, mean, rstd, w), {"out": np.empty_like(x, order="F")}),
        ("out overlapping dy", (shifted[:6], x, mean, rstd, w), {"out": shifted[1:]}),
        ("device given", (dy, x, mean, rstd, w), {"device": "cpu"}),
        ("unaligned x", (dy, unaligned_copy(x), mean, rstd, w), {}),
        ("empty", (np.zeros((0, 40), np.float32),) * 2 + (np.zeros(0, np.float32),) * 2
         + (None,), {}),
    ]


def test_other_calls_take_the_general_path(rng, general_calls):
    general = general_calls("backward_spec")
    for name, args, kwargs in _general_backward_calls(rng):
        before = len(general)
        numba_ln.layer_norm_backward(*args, **kwargs)
        assert len(general) == before + 1, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 15, 33, 100, 1000, 2047, 2048, 2051, 5000])
@pytest.mark.parametrize("offset", [0, 1, 3], ids=lambda o: f"offset{o}")
@pytest.mark.parametrize("variant", ["layer", "rms+dresidual"])
def test_streaming_stores_write_the_same_bits(rng, dtype, cols, offset, variant):
    """A block of rows with and without streaming stores for ``dx``, at every alignment.

    Five rows, taken as wide ones (an array ``stage``): two pairs and a single row.
    ``offset`` shifts every buffer and pads each row, so row starts fall
    anywhere in a cache line; the padding must come back untouched.
    """
    from numba_ln import cpu

    rows, ld = 5, cols + offset
    storage = storage_dtype(np.dtype(dtype))
    compute = np.float64 if dtype == np.float64 else np.float32
    dy, x = (rng.standard_normal(rows * ld + offset).astype(dtype)[offset:].view(storage)
             for _ in range(2))
    mean = rng.standard_normal(rows).astype(compute)
    rstd = (1 + rng.random(rows)).astype(compute)
    weight = rng.standard_normal(cols).astype(compute)
    centered = variant == "layer"
    dresidual = None if centered else dy[::-1].copy()
    results = []
    for stage_bytes in (0, 1024):
        dx = np.full(rows * ld + offset, FILL, dtype)[offset:].view(storage)
        parts = np.empty((1, cols), compute), np.empty((1, cols), compute)
        stage = np.empty(stage_bytes // dx.itemsize, storage)
        no_sums = np.empty(0, compute)
        cpu.ln_bwd_blocks(dy, ld, x, ld, mean, rstd, weight, True, centered, dresidual, ld,
                          dx, ld, *parts, no_sums, no_sums, rows, cols, rows, 0, 1, stage)
        results.append((dx, *parts))
    assert_streamed_like_plain(*results, rows, cols, ld, dtype)


def _streams(rows, cols, itemsize):
    """The backward plan's streaming decision, from the compiled plan the C library asks."""
    from numba_ln import cpu

    return cpu.Plan(*cpu.plan(1, rows, cols, itemsize)).stream


def test_streaming_decision_depends_on_the_shape_only():
    from numba_ln import _config

    wide = _config.BACKWARD_WIDE_COLS
    rows = _config.STREAM_MIN_BYTES // 4 // wide
    assert _streams(rows, wide, 4)
    assert not _streams(rows - 1, wide, 4)
    assert not _streams(rows * 2, wide // 2, 4)
    assert _streams(rows // 2, wide, 8)


def test_large_wide_rows_stream_and_match_the_reference(rng):
    """A backward big enough to stream ``dx``, rows not aligned to a cache line."""
    shape = (2048, 2051)
    assert _streams(*shape, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    _, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    dx, dweight, dbias = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)
    dx_ref, dweight_ref, dbias_ref = ref_backward(dy, x, weight)
    assert rel_l2(dx, dx_ref) <= TOLERANCE[np.dtype(np.float32)]
    assert rel_l2(dweight, dweight_ref) <= 1e-5
    assert rel_l2(dbias, dbias_ref) <= 1e-5


def test_large_streamed_dx_is_the_same_on_every_call(rng):
    """Repeated calls, fresh results and ``out=`` at several placements, give the same bits.

    Where the arrays lie picks which of LLVM's versions of the ``dx`` loop
    runs; they must all round alike (``test_capi`` compares the same shape
    with the C ABI).
    """
    rows, cols = 2048, 2051  # >= 16 MiB of float32 dx: streamed, rows in pairs
    assert _streams(rows, cols, 4)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    dy = rng.standard_normal((rows, cols)).astype(np.float32)
    weight = rng.standard_normal(cols).astype(np.float32)
    _, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    results = [numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)[0] for _ in range(6)]
    raw = np.empty(rows * cols + 64, np.float32)
    first = (-raw.ctypes.data % 64) // 4  # the element on a 64-byte boundary
    for shift in (0, 1, 5, 15):
        out = raw[first + shift:first + shift + rows * cols].reshape(rows, cols)
        results.append(numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, out=out)[0].copy())
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])
