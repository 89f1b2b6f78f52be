"""Every CUDA kernel variant and every boundary, forward and backward, against float64.

Under the ``small_launch`` configuration (``gpu_launch.SMALL``), float32:
warp kernels serve rows of up to 128 elements, block kernels up to 256,
longer rows (and a single row of 200 or more) are split into segments. Each
case names the schedule it reaches in each pass, whether it runs the vector
(16-byte) or the scalar kernels, and asserts that ``plan`` chose them and
that those very kernels were launched, so a change of thresholds cannot
silently drop a variant from the tests.
"""

import numpy as np
import pytest
from numba import cuda

import numba_ln
from numba_ln import _config
from numba_ln import gpu
from numba_ln._validate import compute_dtype as _compute_dtype

from .gpu_reference import TOLERANCE, layer_norm, layer_norm_backward, rel_error

#: (dtype, rows, cols, forward schedule, backward schedule, vector kernels?):
#: 1, 31, 32, 33 and 128 (the widest) columns for a warp, parts of a warp (4 and 32
#: columns are 1 and 8 vectors), the warp/block switch +-1 (the scalar backward
#: holds half as much per thread, so 129 splits), the block/split switch +-1,
#: a split row with a short last segment, and one long row split to fill the GPU.
CASES = [
    ("float32", 3, 1, "warp", "warp", False),
    ("float32", 3, 4, "warp", "warp", True),
    ("float32", 3, 31, "warp", "warp", False),
    ("float32", 3, 32, "warp", "warp", True),
    ("float32", 3, 33, "warp", "warp", False),
    ("float32", 3, 128, "warp", "warp", True),
    ("float32", 3, 129, "block", "split", False),
    ("float32", 3, 132, "block", "block", True),
    ("float32", 3, 256, "block", "block", True),
    ("float32", 3, 257, "split", "split", False),
    ("float32", 3, 260, "split", "split", True),
    ("float32", 1, 252, "split", "split", True),
    ("float16", 3, 8, "warp", "warp", True),
    ("float16", 3, 33, "warp", "warp", False),
    ("float16", 3, 264, "block", "block", True),
    ("float16", 3, 260, "block", "split", False),
    ("float16", 3, 520, "split", "split", True),
    ("float64", 3, 4, "warp", "warp", True),
    ("float64", 3, 33, "warp", "block", False),
    ("float64", 3, 124, "block", "block", True),
    ("float64", 3, 129, "split", "split", False),
    ("float64", 3, 260, "split", "split", True),
]


def _expected_kernels(direction, schedule, vector):
    short = {"forward": "fwd", "backward": "bwd"}[direction]
    names = [f"_ln_{short}_{name.split('_', 1)[1]}_{'vector' if vector else 'scalar'}"
             for name in gpu.VARIANTS[schedule][direction]]
    return names + (["_ln_bwd_reduce"] if direction == "backward" else [])


def compute_dtype(dtype):
    return _compute_dtype(np.dtype(dtype))


def _data(shape, dtype, seed, *, offset=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _check_forward(x, weight, bias, result, axis=-1, eps=1e-5):
    y, mean, rstd = (a.copy_to_host() if hasattr(a, "copy_to_host") else a for a in result)
    ref_y, ref_mean, ref_rstd = layer_norm(x, weight, bias, axis=axis, eps=eps)
    tol = TOLERANCE[np.dtype(x.dtype).name]
    assert y.dtype == x.dtype and y.shape == x.shape
    assert mean.dtype == rstd.dtype == compute_dtype(x.dtype)
    assert mean.shape == rstd.shape == ref_mean.shape
    assert rel_error(y, ref_y) <= tol
    assert rel_error(mean, ref_mean) <= tol
    assert rel_error(rstd, ref_rstd) <= tol
    return mean, rstd


def _check_backward(dy, x, mean, rstd, weight, result, axis=-1):
    dx, dweight, dbias = (a.copy_to_host() for a in result)
    ref_dx, ref_dweight, ref_dbias = layer_norm_backward(dy, x, mean, rstd, weight, axis)
    tol = TOLERANCE[np.dtype(x.dtype).name]
    param_dtype = compute_dtype(x.dtype) if weight is None else weight.dtype
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert dweight.dtype == dbias.dtype == param_dtype
    assert dweight.shape == dbias.shape == x.shape[axis % x.ndim:]
    assert rel_error(dx, ref_dx) <= tol
    assert rel_error(dweight, ref_dweight) <= tol
    assert rel_error(dbias, ref_dbias) <= tol


@pytest.mark.parametrize("dtype, rows, cols, forward, backward, vector", CASES)
def test_every_variant_and_boundary(small_launch, launched, dtype, rows, cols, forward,
                                    backward, vector):
    """Forward then backward (3 rows: more than the backward's 2 partial rows)."""
    storage = np.dtype(dtype)
    for direction, schedule in (("forward", forward), ("backward", backward)):
        planned = gpu.plan(direction, rows, cols, storage, [0], [cols])
        assert (planned.variant, planned.vec > 1) == (schedule, vector), direction
    x = _data((rows, cols), dtype, cols)
    weight = _data(cols, dtype, cols + 1, offset=1.0)
    bias = _data(cols, dtype, cols + 2, offset=0.0)
    dx_, dw_, db_ = (cuda.to_device(a) for a in (x, weight, bias))
    result = numba_ln.layer_norm(dx_, dw_, db_, return_stats=True)
    assert [launch.kernel for launch in launched] == _expected_kernels("forward", forward, vector)
    mean, rstd = _check_forward(x, weight, bias, result)

    launched.clear()
    dy = _data((rows, cols), dtype, cols + 3, offset=0.0)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy), dx_, cuda.to_device(mean),
                                         cuda.to_device(rstd), dw_)
    assert [launch.kernel for launch in launched] == _expected_kernels("backward", backward,
                                                                        vector)
    _check_backward(dy, x, mean, rstd, weight, grads)


@pytest.mark.parametrize("rows, cols, variant",
                         [(rows, cols, variant) for rows in (0, 1)
                          for cols, variant in ((33, "warp"), (132, "block"), (260, "split"))]
                         + [(35, 3, "warp")])
def test_row_counts(small_launch, rows, cols, variant):
    """No rows, one row, and many (11 rows per 32-lane warp: a warp loops in the backward)."""
    x = _data((rows, cols), np.float32, rows + cols)
    result = numba_ln.layer_norm(cuda.to_device(x), return_stats=True)
    assert result[1].shape == result[2].shape == (rows, 1)
    mean, rstd = _check_forward(x, None, None, result)
    assert gpu.plan("backward", max(rows, 3), cols, np.float32, [0], [cols]).variant == variant
    dy = _data((rows, cols), np.float32, 7, offset=0.0)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy), cuda.to_device(x),
                                         cuda.to_device(mean), cuda.to_device(rstd))
    _check_backward(dy, x, mean, rstd, None, grads)
    if rows == 0:
        np.testing.assert_array_equal(grads[1].copy_to_host(), 0)
        np.testing.assert_array_equal(grads[2].copy_to_host(), 0)


@pytest.mark.parametrize("cols, variant", [(3, "warp"), (40, "block"), (130, "split")])
def test_any_rank_and_axis(small_launch, cols, variant):
    """Rank 4, ``axis=-2``: rows of ``2 * cols`` elements, stats of shape (1, 3, 1, 1)."""
    shape = (1, 3, 2, cols)
    assert gpu.plan("forward", 3, 2 * cols, np.float64, [0], [2 * cols]).variant == variant
    x = _data(shape, np.float64, cols)
    weight = _data(shape[2:], np.float64, 1, offset=1.0)
    result = numba_ln.layer_norm(cuda.to_device(x), cuda.to_device(weight), axis=-2,
                                 return_stats=True)
    assert result[1].shape == (1, 3, 1, 1)
    mean, rstd = _check_forward(x, weight, None, result, axis=-2)
    dy = _data(shape, np.float64, 2, offset=0.0)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy), cuda.to_device(x),
                                         cuda.to_device(mean), cuda.to_device(rstd),
                                         cuda.to_device(weight), axis=-2)
    _check_backward(dy, x, mean, rstd, weight, grads, axis=-2)
