"""Every error path: the exception type and a message that says what was expected."""

import numpy as np
import pytest

import numba_ln

X = np.ones((4, 6), np.float32)
STATS = np.ones((4, 1), np.float32)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, object])
def test_unsupported_x_dtype(dtype):
    with pytest.raises(TypeError, match=r"x has dtype .*; supported dtypes are float16, "
                                        r"bfloat16 \(ml_dtypes\), float32, float64"):
        numba_ln.layer_norm(np.ones((2, 3), dtype))


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_unsupported_param_dtype(name):
    with pytest.raises(TypeError, match=f"{name} has dtype int64"):
        numba_ln.layer_norm(X, **{name: np.ones(6, np.int64)})


@pytest.mark.parametrize("axis", [2, -3, 10])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match=rf"axis {axis} is out of range for an array of "
                                         r"rank 2; expected -2 <= axis <= 1"):
        numba_ln.layer_norm(X, axis=axis)


@pytest.mark.parametrize("axis,name", [(1.0, "float"), ([1], "list"), ("1", "str")])
def test_axis_not_an_integer(axis, name):
    with pytest.raises(TypeError, match=f"axis must be an integer, got {name}"):
        numba_ln.layer_norm(X, axis=axis)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_param_shape_mismatch(name):
    with pytest.raises(ValueError, match=rf"{name} has shape \(5,\); expected the "
                                         r"normalized shape \(6,\)"):
        numba_ln.layer_norm(X, **{name: np.ones(5, np.float32)})


def test_param_shape_follows_axis():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"expected the normalized shape \(3, 4\)"):
        numba_ln.layer_norm(x, np.ones(4), axis=1)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), -float("inf")])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        numba_ln.layer_norm(X, eps=eps)


def test_eps_not_a_number():
    with pytest.raises(TypeError, match="eps must be a real number, got str"):
        numba_ln.layer_norm(X, eps="small")


@pytest.mark.parametrize("shape,axis", [((3, 0), -1), ((2, 0, 4), 1)])
def test_zero_size_normalized_shape(shape, axis):
    with pytest.raises(ValueError, match="has zero elements; expected at least one"):
        numba_ln.layer_norm(np.ones(shape, np.float32), axis=axis)


def test_scalar_input():
    with pytest.raises(ValueError, match="x must have rank >= 1"):
        numba_ln.layer_norm(np.float32(1.0))


def test_out_wrong_shape_leaves_it_untouched():
    out = np.full((4, 5), 9, np.float32)
    with pytest.raises(ValueError, match=r"out has shape \(4, 5\); expected \(4, 6\)"):
        numba_ln.layer_norm(X, out=out)
    assert (out == 9).all()


def test_out_wrong_dtype():
    out = np.full((4, 6), 9, np.float64)
    with pytest.raises(TypeError, match="out has dtype float64; expected float32"):
        numba_ln.layer_norm(X, out=out)
    assert (out == 9).all()


def test_out_read_only():
    out = np.full((4, 6), 9, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        numba_ln.layer_norm(X, out=out)
    assert (out == 9).all()


@pytest.mark.parametrize("out,error,message", [
    (np.full((4, 5), 9, np.float32), ValueError, r"out has shape \(4, 5\); expected \(4, 6\)"),
    (np.full((4, 6), 9, np.float64), TypeError, "out has dtype float64; expected float32"),
    (np.full((1, 4, 6), 9, np.float32), ValueError, r"out has shape \(1, 4, 6\)"),
], ids=["shape", "dtype", "rank"])
def test_backward_out_errors_leave_it_untouched(out, error, message):
    _, mean, rstd = numba_ln.layer_norm(X, return_stats=True)
    with pytest.raises(error, match=message):
        numba_ln.layer_norm_backward(X, X, mean, rstd, out=out)
    assert (out == 9).all()


def test_backward_out_read_only():
    _, mean, rstd = numba_ln.layer_norm(X, return_stats=True)
    out = np.full((4, 6), 9, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only; expected a writeable array"):
        numba_ln.layer_norm_backward(X, X, mean, rstd, out=out)


def test_errors_come_before_any_write():
    out = np.full((4, 6), 9, np.float32)
    with pytest.raises(ValueError):
        numba_ln.layer_norm(X, np.ones(5), out=out)
    assert (out == 9).all()


def test_unknown_device():
    with pytest.raises(ValueError, match="device must be None, 'cpu' or 'cuda', got 'gpu'"):
        numba_ln.layer_norm(X, device="gpu")


def test_cuda_unavailable_says_why():
    cuda = numba_ln.backends()["cuda"]
    if cuda.available:
        pytest.skip("a GPU is available here")
    with pytest.raises(numba_ln.CUDAUnavailableError,
                       match="CUDA support is not available: .+") as info:
        numba_ln.layer_norm(X, device="cuda")
    assert cuda.detail in str(info.value)
    with pytest.raises(numba_ln.CUDAUnavailableError):
        numba_ln.layer_norm_backward(X, X, STATS, STATS, device="cuda")


def test_backward_dy_shape_and_dtype():
    with pytest.raises(ValueError, match=r"dy has shape \(4, 5\); expected x's shape"):
        numba_ln.layer_norm_backward(np.ones((4, 5), np.float32), X, STATS, STATS)
    with pytest.raises(TypeError, match="dy has dtype float64; expected x's dtype float32"):
        numba_ln.layer_norm_backward(X.astype(np.float64), X, STATS, STATS)


@pytest.mark.parametrize("name", ["mean", "rstd"])
def test_backward_stats_count(name):
    stats = {"mean": STATS, "rstd": STATS, name: np.ones(3, np.float32)}
    with pytest.raises(ValueError, match=rf"{name} has 3 elements .*expected one per row: 4"):
        numba_ln.layer_norm_backward(X, X, stats["mean"], stats["rstd"])


@pytest.mark.parametrize("name", ["mean", "rstd"])
def test_backward_stats_none(name):
    """A missing statistic is an error, not a read past a placeholder (any path, any size)."""
    for x in (X, np.ones((300, 400), np.float32)):  # the short path and the general one
        rows = x.shape[0]
        stats = {"mean": np.zeros(rows, np.float32), "rstd": np.ones(rows, np.float32),
                 name: None}
        with pytest.raises(TypeError, match=rf"^{name} is None; expected the forward pass's "
                                            rf"{name}: .*one element per row \({rows},"):
            numba_ln.layer_norm_backward(x, x, stats["mean"], stats["rstd"])
        if name == "rstd":
            with pytest.raises(TypeError, match=r"^rstd is None; expected"):
                numba_ln.rms_norm_backward(x, x, None)


def test_backward_weight_shape_and_axis():
    with pytest.raises(ValueError, match=r"weight has shape \(5,\)"):
        numba_ln.layer_norm_backward(X, X, STATS, STATS, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        numba_ln.layer_norm_backward(X, X, STATS, STATS, axis=3)


def test_backward_unsupported_dtype():
    xi = np.ones((4, 6), np.int32)
    with pytest.raises(TypeError, match="x has dtype int32"):
        numba_ln.layer_norm_backward(xi, xi, STATS, STATS)
