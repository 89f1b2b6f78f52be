"""Forward pass against the float64 reference: every dtype, rank, axis, layout."""

import numpy as np
import pytest

import numba_ln
from numba_ln._validate import storage_dtype
from reference import DTYPES, TOLERANCE, layer_norm as ref_layer_norm, param_dtype, rel_l2
from layouts import unaligned_copy
from streaming import FILL, assert_streamed_like_plain

SHAPES = [(7,), (5, 33), (3, 4, 17), (2, 3, 2, 5), (300, 129)]
PARAMS = ["none", "weight", "bias", "both"]


def _params(rng, shape, which, dtype):
    weight = rng.standard_normal(shape).astype(dtype) if which in ("weight", "both") else None
    bias = rng.standard_normal(shape).astype(dtype) if which in ("bias", "both") else None
    return weight, bias


def _layout(x, layout):
    """The same values as ``x`` in another memory layout."""
    if layout == "contiguous":
        return x
    if layout == "padded-rows":  # rows contiguous, row stride > row length: no copy
        padded = np.zeros(x.shape[:-1] + (x.shape[-1] + 3,), x.dtype)
        padded[..., :x.shape[-1]] = x
        return padded[..., :x.shape[-1]]
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "reversed":  # negative strides
        flipped = np.ascontiguousarray(x[::-1, ...])
        return flipped[::-1, ...]
    raise AssertionError(layout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("params", PARAMS)
def test_matches_reference_every_axis(rng, dtype, shape, params):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    for axis in range(-len(shape), len(shape)):
        normalized = shape[axis:]
        weight, bias = _params(rng, normalized, params, param_dtype(dtype))
        y, mean, rstd = numba_ln.layer_norm(x, weight, bias, axis=axis, return_stats=True)
        y_ref, mean_ref, rstd_ref = ref_layer_norm(x, weight, bias, axis=axis)
        assert y.dtype == dtype and y.shape == shape
        assert mean.shape == mean_ref.shape == rstd.shape
        assert mean.dtype == (np.float64 if dtype == np.float64 else np.float32)
        tol = TOLERANCE[np.dtype(dtype)]
        assert rel_l2(y, y_ref) <= tol, axis
        assert rel_l2(mean, mean_ref) <= max(tol, 1e-6), axis
        assert rel_l2(rstd, rstd_ref) <= max(tol, 1e-6), axis


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["padded-rows", "fortran", "reversed"])
@pytest.mark.parametrize("shape", [(6, 40), (4, 5, 24), (257, 300)], ids=str)
def test_any_strides_give_the_same_numbers(rng, dtype, layout, shape):
    x = rng.standard_normal(shape).astype(dtype)
    weight, bias = _params(rng, shape[-1:], "both", param_dtype(dtype))
    expected = numba_ln.layer_norm(x, weight, bias)
    strided = _layout(x, layout)
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(numba_ln.layer_norm(strided, weight, bias), expected)


def test_padded_rows_are_read_in_place_not_copied(rng, monkeypatch):
    from numba_ln import _cpu_backend

    x = rng.standard_normal((64, 100)).astype(np.float32)[:, :60]
    copies = []
    original = np.ascontiguousarray
    monkeypatch.setattr(_cpu_backend.np, "ascontiguousarray",
                        lambda a, *args, **kw: copies.append(a.shape) or original(a, *args, **kw))
    numba_ln.layer_norm(x)
    assert copies == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_parameters_and_mixed_param_dtypes(rng, dtype):
    x = rng.standard_normal((9, 16)).astype(dtype)
    weight = rng.standard_normal(32)[::2].astype(np.float64)
    bias = rng.standard_normal(16).astype(np.float16)
    y = numba_ln.layer_norm(x, weight, bias)
    y_ref, _, _ = ref_layer_norm(x, weight, bias)
    assert rel_l2(y, y_ref) <= TOLERANCE[np.dtype(dtype)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_receives_the_result_and_is_returned(rng, dtype):
    x = rng.standard_normal((20, 48)).astype(dtype)
    out = np.full_like(x, 7)
    result = numba_ln.layer_norm(x, out=out)
    assert result is out
    np.testing.assert_array_equal(out, numba_ln.layer_norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 50), (600, 128)], ids=str)
def test_in_place(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    expected = numba_ln.layer_norm(x)
    assert numba_ln.layer_norm(x, out=x) is x
    np.testing.assert_array_equal(x, expected)


def test_out_with_another_layout_or_overlapping_x(rng):
    x = rng.standard_normal((12, 30)).astype(np.float32)
    expected = numba_ln.layer_norm(x)
    out_f = np.zeros((12, 30), np.float32, order="F")
    numba_ln.layer_norm(x, out=out_f)
    np.testing.assert_array_equal(out_f, expected)
    # out overlaps x shifted by one row: the result must still be layer_norm(x).
    buffer = np.zeros((13, 30), np.float32)
    buffer[:12] = x
    out = numba_ln.layer_norm(buffer[:12], out=buffer[1:])
    np.testing.assert_array_equal(out, expected)


def test_out_holding_the_weight_gets_the_right_values(rng):
    """The weight is a row of out: writing earlier rows must not change it for later ones."""
    x = rng.standard_normal((6, 30)).astype(np.float32)
    buffer = rng.standard_normal((6, 30)).astype(np.float32)
    weight, bias = buffer[3], buffer[4]
    expected = numba_ln.layer_norm(x, weight.copy(), bias.copy())
    assert numba_ln.layer_norm(x, weight, bias, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)


def test_zero_rows_give_empty_results():
    x = np.empty((0, 4, 8), np.float32)
    y, mean, rstd = numba_ln.layer_norm(x, axis=1, return_stats=True)
    assert y.shape == (0, 4, 8) and mean.shape == (0, 1, 1) and rstd.shape == (0, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_stay_in_their_row(rng, dtype):
    x = rng.standard_normal((600, 96)).astype(dtype)  # big enough for the parallel kernel
    clean = numba_ln.layer_norm(x)
    dirty = x.copy()
    dirty[3, 5] = np.nan
    dirty[10, 0] = np.inf
    dirty[11, 95] = -np.inf
    dirty[12, 7] = np.inf
    dirty[12, 8] = -np.inf
    y = numba_ln.layer_norm(dirty)
    bad = [3, 10, 11, 12]
    assert np.isnan(y[bad]).all()
    good = np.setdiff1d(np.arange(600), bad)
    np.testing.assert_array_equal(y[good], clean[good])


def test_large_mean_small_spread_float32_is_stable(rng):
    # Rows with mean 1e4 and std 1e-2: E[x^2] - E[x]^2 would lose every digit.
    x = (1e4 + 1e-2 * rng.standard_normal((64, 1024))).astype(np.float32)
    y, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    y_ref, mean_ref, rstd_ref = ref_layer_norm(x)
    assert rel_l2(y, y_ref) <= 1e-6
    assert rel_l2(rstd, rstd_ref) <= 1e-6
    assert rel_l2(mean, mean_ref) <= 1e-7


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_row_with_eps_zero_is_nan_not_an_error(dtype):
    x = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]], dtype)
    y, _, rstd = numba_ln.layer_norm(x, eps=0.0, return_stats=True)
    assert np.isinf(rstd[0, 0]) and np.isnan(y[0]).all()
    np.testing.assert_allclose(y[1].astype(np.float64), [-np.sqrt(1.5), 0, np.sqrt(1.5)],
                               rtol=TOLERANCE[np.dtype(dtype)])


def test_list_input_and_eps_zero():
    y = numba_ln.layer_norm([[1.0, 2.0, 3.0]], eps=0.0)
    np.testing.assert_allclose(y, [[-np.sqrt(1.5), 0.0, np.sqrt(1.5)]], rtol=1e-12)


def test_device_cpu_is_accepted(rng):
    x = rng.standard_normal((4, 8))
    np.testing.assert_array_equal(numba_ln.layer_norm(x, device="cpu"), numba_ln.layer_norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 15, 33, 100, 1000, 1100, 5000])
@pytest.mark.parametrize("offset", [0, 1, 3], ids=lambda o: f"offset{o}")
@pytest.mark.parametrize("variant", ["layer", "rms", "residual"])
def test_streaming_stores_write_the_same_bits(rng, dtype, cols, offset, variant):
    """The kernel with and without streaming stores, on rows at every alignment.

    ``offset`` shifts every buffer and pads each row, so row starts fall
    anywhere in a cache line; the padding must come back untouched. With a
    residual, ``s = x + residual`` is streamed too.
    """
    from numba_ln import cpu

    rows, ld = 5, cols + offset
    storage = storage_dtype(np.dtype(dtype))
    compute = np.float64 if dtype == np.float64 else np.float32
    x = rng.standard_normal(rows * ld + offset).astype(dtype)[offset:].view(storage)
    weight = rng.standard_normal(cols).astype(compute)
    bias = rng.standard_normal(cols).astype(compute)
    residual = (rng.standard_normal(rows * ld + offset).astype(dtype)[offset:].view(storage)
                if variant == "residual" else None)
    results = []
    for stream_out in (False, True):
        y, s = (np.full(rows * ld + offset, FILL, dtype)[offset:].view(storage)
                for _ in range(2))
        mean, rstd = np.empty(rows, compute), np.empty(rows, compute)
        stage = cpu.new_stage(y, True) if stream_out else None
        cpu.ln_fwd_rows(x, ld, residual, ld, weight, bias, True, variant != "rms", y, ld,
                        None if residual is None else s, ld, mean, rstd, rows, cols, 1e-5,
                        variant != "rms", stage)
        results.append((y, s, mean, rstd))
    assert_streamed_like_plain(*results, rows, cols, ld, dtype, outputs=2)
    if residual is not None:
        s = results[1][1].view(dtype)
        for r in range(rows):
            row = slice(r * ld, r * ld + cols)
            np.testing.assert_array_equal(
                s[row], x.view(dtype)[row] + residual.view(dtype)[row])


def _streams(rows, cols, itemsize):
    """The forward plan's streaming decision, from the compiled plan the C library asks."""
    from numba_ln import cpu

    return cpu.Plan(*cpu.plan(0, rows, cols, itemsize)).stream


def test_streaming_decision_depends_on_the_shape_only():
    from numba_ln import _config

    big = _config.STREAM_MIN_BYTES // 4
    assert _streams(big // 1024, 1024, 4)
    assert not _streams(big // 1024 - 1, 1024, 4)
    assert _streams(big // 1024, 1024, 8)
    half_rows = _config.STREAM_MIN_BYTES // 2 // _config.STREAM_MIN_HALF_COLS
    assert _streams(half_rows, _config.STREAM_MIN_HALF_COLS, 2)
    assert not _streams(half_rows * 4, _config.STREAM_MIN_HALF_COLS // 4, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_api_streams_large_outputs_to_the_same_bits(rng, dtype, monkeypatch):
    """Through layer_norm, with the threshold moved so a small call streams:
    a fresh result, out= (misaligned to its element size, too), and in place."""
    from numba_ln import cpu

    x = rng.standard_normal((37, 1030)).astype(dtype)
    weight = rng.standard_normal(1030).astype(dtype)
    expected = numba_ln.layer_norm(x, weight, weight, return_stats=True)
    monkeypatch.setattr(cpu, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(cpu, "STREAM_MIN_HALF_COLS", 0)
    assert cpu.Plan(*cpu._plan(0, 37, 1030, np.dtype(dtype).itemsize)).stream
    got = numba_ln.layer_norm(x, weight, weight, return_stats=True)
    misaligned = unaligned_copy(x)
    numba_ln.layer_norm(x, weight, weight, out=misaligned)
    in_place = x.copy()
    numba_ln.layer_norm(in_place, weight, weight, out=in_place)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(misaligned, expected[0])
    np.testing.assert_array_equal(in_place, expected[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(768,), (1, 768), (3, 5, 7), (4, 1), (32, 1024), (100, 1024)],
                         ids=str)
@pytest.mark.parametrize("params", PARAMS)
def test_direct_calls_take_the_short_path_to_the_same_bits(rng, dtype, shape, params,
                                                           general_calls):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    weight, bias = _params(rng, shape[-1:], params, dtype)
    stats = numba_ln.layer_norm(x, weight, bias, eps=1e-3, return_stats=True, device="cpu")
    expected = stats[0]
    general = general_calls("forward_spec")
    for axis in (-1, len(shape) - 1):
        y = numba_ln.layer_norm(x, weight, bias, axis=axis, eps=1e-3)
        assert y.dtype == dtype and y.shape == shape and y.flags.c_contiguous
        np.testing.assert_array_equal(y, expected)
    got = numba_ln.layer_norm(x, weight, bias, eps=1e-3, return_stats=True)
    for a, b in zip(stats, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    out = np.full_like(x, np.nan)
    assert numba_ln.layer_norm(x, weight, bias, eps=1e-3, out=out) is out
    np.testing.assert_array_equal(out, expected)
    in_place = x.copy()
    assert numba_ln.layer_norm(in_place, weight, bias, eps=1e-3, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)
    assert not general, "a direct call took the general path"


def _general_calls(rng):
    """Calls the short path must leave to the general one: (name, args, kwargs)."""
    x = rng.standard_normal((6, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    shifted = np.concatenate([x, x[:1]])  # out=shifted[1:] overlaps x=shifted[:6]
    holder = np.zeros_like(x)
    holder[3] = w
    return [
        ("float16", (x.astype(np.float16), None, None), {}),
        ("float16 parameters", (x.astype(np.float16),) + (w.astype(np.float16),) * 2, {}),
        ("mixed parameter dtype", (x, w.astype(np.float64), w), {}),
        ("strided weight", (x, np.repeat(w, 2)[::2], w), {}),
        ("2-D weight", (x.reshape(6, 4, 10), w.reshape(4, 10), None), {"axis": 1}),
        ("first axis", (x, None, None), {"axis": 0}),
        ("transposed x", (np.ascontiguousarray(x.T).T, w, w), {}),
        ("list input", (x.tolist(), None, None), {}),
        ("numpy float eps", (x, w, w), {"eps": np.float32(1e-3)}),
        ("Fortran-ordered out", (x, w, w), {"out": np.empty_like(x, order="F")}),
        ("out overlapping x", (shifted[:6], w, w), {"out": shifted[1:]}),
        ("out holding the weight", (x, holder[3], w), {"out": holder}),
        ("device given", (x, w, w), {"device": "cpu"}),
        ("unaligned x", (unaligned_copy(x), w, w), {}),
        ("empty", (np.zeros((0, 40), np.float32), None, None), {}),
    ]


def test_other_calls_take_the_general_path(rng, general_calls):
    general = general_calls("forward_spec")
    for name, args, kwargs in _general_calls(rng):
        before = len(general)
        numba_ln.layer_norm(*args, **kwargs)
        assert len(general) == before + 1, name


@pytest.mark.parametrize("weight_shape, message", [((39,), r"weight has shape \(39,\)"),
                                                   ((), r"weight has shape \(\)")])
def test_direct_calls_with_a_bad_weight_get_the_general_error(rng, weight_shape, message):
    x = rng.standard_normal((2, 40)).astype(np.float32)
    weight = np.ones(weight_shape, np.float32)
    with pytest.raises(ValueError, match=message):
        numba_ln.layer_norm(x, weight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threaded_calls_take_read_only_and_unaligned_inputs(rng, dtype):
    """The threaded kernels call compiled code for writable, aligned arrays: a
    read-only or unaligned input must reach them as one, with the same bits.

    Read-only inputs are tried in float32 only: each dtype would compile the
    parallel kernels once more, and the retyping does not depend on the dtype.
    """
    x = rng.standard_normal((512, 1030)).astype(dtype)
    weight = rng.standard_normal(1030).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert x.size > numba_ln._config.SERIAL_MAX_ELEMENTS  # threaded
    expected = numba_ln.layer_norm(x, weight, weight, return_stats=True)
    expected_grads = numba_ln.layer_norm_backward(dy, x, *expected[1:], weight)
    frozen = [a.copy() for a in (x, weight, dy, *expected[1:])]
    for a in frozen:
        a.flags.writeable = False
    unaligned = unaligned_copy(x)
    got = numba_ln.layer_norm(unaligned, weight, weight, return_stats=True)
    grads = numba_ln.layer_norm_backward(dy, unaligned, *expected[1:], weight)
    for a, b in zip((*expected, *expected_grads), (*got, *grads)):
        np.testing.assert_array_equal(a, b)
    if dtype != np.float32:
        return
    got = numba_ln.layer_norm(frozen[0], frozen[1], frozen[1], return_stats=True)
    grads = numba_ln.layer_norm_backward(frozen[2], frozen[0], frozen[3], frozen[4], frozen[1])
    for a, b in zip((*expected, *expected_grads), (*got, *grads)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [20, 100, 1000, 1030])
def test_streamed_rows_join_their_shared_lines(rng, dtype, cols):
    """Rows one after another in ``y``, starting anywhere in a cache line.

    The line a row's tail shares with the next row's head is streamed once,
    whole: every row's bits are those of ordinary stores, and nothing before
    or after the buffer is written (a row shorter than a line joins nothing).
    """
    from numba_ln import cpu

    rows = 7
    storage = storage_dtype(np.dtype(dtype))
    compute = np.float64 if dtype == np.float64 else np.float32
    x = rng.standard_normal(rows * cols).astype(dtype).view(storage)
    weight, bias = rng.standard_normal((2, cols)).astype(compute)
    lane = 64 // x.itemsize
    buffer = np.full(rows * cols + 3 * lane, FILL, dtype).view(storage)
    first = (-buffer.ctypes.data % 64) // x.itemsize  # buffer[first] starts a line
    for shift in range(lane):
        results = []
        for stream_out in (False, True):
            buffer.view(dtype)[:] = FILL
            y = buffer[first + shift:first + shift + rows * cols]
            mean, rstd = np.empty(rows, compute), np.empty(rows, compute)
            cpu.ln_fwd_rows(x, cols, None, cols, weight, bias, True, True, y, cols, None, cols,
                            mean, rstd, rows, cols, 1e-5, True,
                            cpu.new_stage(y, True) if stream_out else None)
            results.append(buffer.copy())
        np.testing.assert_array_equal(results[1], results[0], err_msg=f"shift {shift}")
        outside = np.ones(buffer.size, bool)
        outside[first + shift:first + shift + rows * cols] = False
        assert (results[1].view(dtype)[outside] == FILL).all(), f"shift {shift}"
