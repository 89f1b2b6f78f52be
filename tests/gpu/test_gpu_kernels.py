"""Every CUDA kernel variant and every boundary, forward and backward, against float64.

With the ``small_launch`` configuration (conftest): warp-per-row kernels for
rows of up to 64 elements (32 lanes x 2 registers; parts of a warp below 32),
block-per-row kernels with a shared-memory cache up to 96 elements, streaming
beyond. ``plan`` is asserted for each shape, so a change of thresholds cannot
silently drop a variant from the tests.
"""

import numpy as np
import pytest
from numba import cuda

import numba_ln
from numba_ln import _config
from numba_ln import gpu
from numba_ln._validate import compute_dtype as _compute_dtype

from .gpu_launch import SHARED_MAX_COLS, WARP_MAX_COLS
from .gpu_reference import TOLERANCE, layer_norm, layer_norm_backward, rel_error

#: (cols, forward variant): 1, 31, 32, 33 lanes; the register/shared switch +-1;
#: the shared/streaming switch +-1.
COLUMNS = [
    (1, "warp_per_row"),
    (31, "warp_per_row"),
    (32, "warp_per_row"),
    (33, "warp_per_row"),
    (WARP_MAX_COLS - 1, "warp_per_row"),
    (WARP_MAX_COLS, "warp_per_row"),
    (WARP_MAX_COLS + 1, "block_per_row_shared"),
    (SHARED_MAX_COLS - 1, "block_per_row_shared"),
    (SHARED_MAX_COLS, "block_per_row_shared"),
    (SHARED_MAX_COLS + 1, "block_per_row_streaming"),
]


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


#: Every boundary in float32; every variant in float16 and float64.
CASES = ([("float32", cols, variant) for cols, variant in COLUMNS]
         + [(dtype, cols, variant) for dtype in ("float16", "float64")
            for cols, variant in (COLUMNS[3], COLUMNS[6], COLUMNS[9])])


@pytest.mark.parametrize("dtype, cols, variant", CASES)
def test_every_variant_and_boundary(small_launch, cols, variant, dtype):
    """Forward then backward, 3 rows (more rows than backward blocks)."""
    compute = compute_dtype(dtype)
    rows = 3
    small_launch("forward", dtype)
    assert gpu.plan("forward", rows, cols, compute).variant == variant
    x = _data((rows, cols), dtype, cols)
    weight = _data(cols, dtype, cols + 1, offset=1.0)
    bias = _data(cols, dtype, cols + 2, offset=0.0)
    dx_, dw_, db_ = (cuda.to_device(a) for a in (x, weight, bias))
    result = numba_ln.layer_norm(dx_, dw_, db_, return_stats=True)
    mean, rstd = _check_forward(x, weight, bias, result)

    small_launch("backward", dtype)
    launch = gpu.plan("backward", rows, cols, compute)
    assert launch.variant == variant
    dy = _data((rows, cols), dtype, cols + 3, offset=0.0)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy), dx_, cuda.to_device(mean),
                                         cuda.to_device(rstd), dw_)
    _check_backward(dy, x, mean, rstd, weight, grads)


@pytest.mark.parametrize("rows, cols, variant",
                         [(rows, cols, variant) for rows in (0, 1)
                          for cols, variant in (COLUMNS[3], COLUMNS[6], COLUMNS[9])]
                         + [(35, 3, "warp_per_row")])
def test_row_counts(small_launch, rows, cols, variant):
    """No rows, one row, and many (8 rows per warp-kernel block, several per group)."""
    small_launch("forward", "float32")
    x = _data((rows, cols), np.float32, rows + cols)
    result = numba_ln.layer_norm(cuda.to_device(x), return_stats=True)
    assert result[1].shape == result[2].shape == (rows, 1)
    mean, rstd = _check_forward(x, None, None, result)
    small_launch("backward", "float32")
    assert gpu.plan("backward", max(rows, 1), cols, np.float32).variant == variant
    dy = _data((rows, cols), np.float32, 7, offset=0.0)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy), cuda.to_device(x),
                                         cuda.to_device(mean), cuda.to_device(rstd))
    _check_backward(dy, x, mean, rstd, None, grads)
    if rows == 0:
        np.testing.assert_array_equal(grads[1].copy_to_host(), 0)
        np.testing.assert_array_equal(grads[2].copy_to_host(), 0)


@pytest.mark.parametrize("cols, variant", [(3, "warp_per_row"),
                                           (WARP_MAX_COLS // 2 + 1, "block_per_row_shared"),
                                           (SHARED_MAX_COLS + 1, "block_per_row_streaming")])
def test_any_rank_and_axis(small_launch, monkeypatch, cols, variant):
    """Rank 4, ``axis=-2``: rows of ``2 * cols`` elements, stats of shape (1, 3, 1, 1).

    Block-per-row kernels get two warps here (a two-warp reduction tree).
    """
    monkeypatch.setattr(_config, "CUDA_ROW_BLOCK_THREADS", 64)
    small_launch("forward", "float64", cols=2 * SHARED_MAX_COLS)
    shape = (1, 3, 2, cols)
    assert gpu.plan("forward", 3, 2 * cols, np.float64).variant == variant
    x = _data(shape, np.float64, cols)
    weight = _data(shape[2:], np.float64, 1, offset=1.0)
    result = numba_ln.layer_norm(cuda.to_device(x), cuda.to_device(weight), axis=-2,
                                 return_stats=True)
    assert result[1].shape == (1, 3, 1, 1)
    mean, rstd = _check_forward(x, weight, None, result, axis=-2)
    small_launch("backward", "float64", cols=2 * SHARED_MAX_COLS)
    assert gpu.plan("backward", 3, 2 * cols, np.float64).variant == variant
    dy = _data(shape, np.float64, 2, offset=0.0)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy), cuda.to_device(x),
                                         cuda.to_device(mean), cuda.to_device(rstd),
                                         cuda.to_device(weight), axis=-2)
    _check_backward(dy, x, mean, rstd, weight, grads, axis=-2)
