"""Every CUDA kernel variant and every boundary, forward and backward, against float64.

Under the ``small_launch`` configuration (``gpu_launch.SMALL``), float32:
warp kernels serve rows of up to 128 elements, block kernels up to 256,
longer rows (and a single row of 200 or more) are split into segments. Each
case names the schedule it reaches in each pass, whether it runs the vector
(16-byte) or the scalar kernels, and asserts that ``plan`` chose them and
that those very kernels were launched, so a change of thresholds cannot
silently drop a variant from the tests.

Every case runs each operation (``gpu_reference.OPS``): layer norm through
the public API; RMSNorm and the fused residual add through
``_cuda_backend`` (their public forms are the API's to add). The residual
forms pass ``residual`` and ``dresidual``; ``add_rms`` writes ``s`` in place
over ``residual``, a float32 one for float16 ``x``.
"""

import numpy as np
import pytest

from numba_ln import _config
from numba_ln import gpu
from numba_ln._validate import compute_dtype as _compute_dtype

from . import gpu_reference
from .gpu_reference import OPS, TOLERANCE, rel_error
from .operations import backward as _backward, forward as _forward, host as _host
from .operations import residual_dtype

#: (dtype, rows, cols, forward schedule, backward schedule, vector kernels?):
#: 1, 31, 32, 33 and 128 (the widest) columns for a warp, parts of a warp (4 and 32
#: columns are 1 and 8 vectors), the warp/block switch +-1 (the scalar backward
#: holds half as much per thread, so 129 splits), the block/split switch +-1,
#: a split row with a short last segment, and one long row split to fill the GPU. bfloat16
#: (float16's layout, its own conversions): float16's cases but the scalar block/split one,
#: whose scalar accesses the warp's scalar case runs (the simulator's time, 7 s, saved).
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
    ("bfloat16", 3, 8, "warp", "warp", True),
    ("bfloat16", 3, 33, "warp", "warp", False),
    ("bfloat16", 3, 264, "block", "block", True),
    ("bfloat16", 3, 520, "split", "split", True),
    ("float64", 3, 4, "warp", "warp", True),
    ("float64", 3, 33, "warp", "block", False),
    ("float64", 3, 124, "block", "block", True),
    ("float64", 3, 129, "split", "split", False),
    ("float64", 3, 260, "split", "split", True),
]


#: Forward schedules that differ with a float32 residual for float16 x: the forward holds s, in
#: float32, so a scalar thread holds half as many elements and 260 columns no longer fit a block.
WIDER_RESIDUAL = {("float16", 260): "split"}


def _expected_kernels(direction, schedule, vector, op="ln"):
    short = {"forward": "fwd", "backward": "bwd"}[direction]
    norm = op.removeprefix("add_")
    names = [f"_{norm if name == 'backward3_split_sums' else op}_{short}_"  # reads no residual
             f"{name.split('_', 1)[1]}_{'vector' if vector else 'scalar'}"
             for name in gpu.VARIANTS[schedule][direction]]
    return names + ([f"_{norm}_bwd_reduce"] if direction == "backward" else [])





def compute_dtype(dtype):
    return _compute_dtype(np.dtype(dtype))


def _data(shape, dtype, seed, *, offset=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _check_forward(x, weight, bias, result, axis=-1, op="ln", residual=None):
    """Check ``result`` against the reference; return ``s`` (x without a residual), mean, rstd."""
    y, s, mean, rstd = (None if a is None else _host(a) for a in result)
    ref_y, ref_s, ref_mean, ref_rstd = gpu_reference.forward(
        op, x, weight, bias if op.endswith("ln") else None, residual, axis)
    tol = TOLERANCE[np.dtype(x.dtype).name]
    assert y.dtype == x.dtype and y.shape == x.shape
    assert rstd.dtype == compute_dtype(x.dtype) and rstd.shape == ref_rstd.shape
    assert rel_error(y, ref_y) <= tol
    assert rel_error(rstd, ref_rstd) <= tol
    assert (mean is None) == (ref_mean is None) and (s is None) == (ref_s is None)
    if ref_mean is not None:
        assert mean.dtype == rstd.dtype and mean.shape == rstd.shape
        assert rel_error(mean, ref_mean) <= tol
    if ref_s is not None:
        assert s.dtype == residual.dtype and s.shape == x.shape
        assert rel_error(s, ref_s) <= TOLERANCE[s.dtype.name]
    return (x if s is None else s), mean, rstd


def _check_backward(dy, x, mean, rstd, weight, result, axis=-1, op="ln", dresidual=None):
    dx, dweight, dbias = (None if a is None else _host(a) for a in result)
    ref_dx, ref_dweight, ref_dbias = gpu_reference.backward(op, dy, x, mean, rstd, weight,
                                                            dresidual, axis)
    tol = TOLERANCE[np.dtype(dy.dtype).name]
    param_dtype = compute_dtype(dy.dtype) if weight is None else weight.dtype
    assert dx.dtype == dy.dtype and dx.shape == dy.shape
    assert dweight.dtype == param_dtype and dweight.shape == dy.shape[axis % dy.ndim:]
    if op == "rms" and dy.shape[-1] == 1:
        # A one-element row: dx = rstd * g * (1 - xhat**2), xhat**2 = x**2 / (x**2 + eps),
        # cancels all but eps-small of two terms of size rstd * g: measured against them.
        scale = np.linalg.norm(np.ravel(rstd) * dy.ravel() * (1 if weight is None else weight))
        assert np.linalg.norm(dx - ref_dx) <= tol * scale
    else:
        assert rel_error(dx, ref_dx) <= tol
    assert rel_error(dweight, ref_dweight) <= tol
    assert (dbias is None) == (ref_dbias is None)
    if ref_dbias is not None:
        assert dbias.dtype == param_dtype and dbias.shape == dweight.shape
        assert rel_error(dbias, ref_dbias) <= tol


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype, rows, cols, forward, backward, vector", CASES)
def test_every_variant_and_boundary(small_launch, launched, dtype, rows, cols, forward,
                                    backward, vector, op):
    """Forward then backward (3 rows: more than the backward's 2 partial rows)."""
    storage = np.dtype(dtype)
    residual = residual_dtype(op, dtype)
    if residual not in (None, storage):
        forward = WIDER_RESIDUAL.get((dtype, cols), forward)
    for direction, schedule, stream in (("forward", forward, residual),
                                        ("backward", backward, residual and storage)):
        planned = gpu.plan(direction, rows, cols, storage, [0], [cols], residual=stream)
        assert (planned.variant, planned.vec > 1) == (schedule, vector), direction
    x = _data((rows, cols), dtype, cols)
    weight = _data(cols, dtype, cols + 1, offset=1.0)
    bias = _data(cols, dtype, cols + 2, offset=0.0)
    r = None if residual is None else _data((rows, cols), residual, cols + 4, offset=-1.0)
    result = _forward(op, x, weight, bias, r)
    assert [launch.kernel for launch in launched] == _expected_kernels("forward", forward,
                                                                        vector, op)
    s, mean, rstd = _check_forward(x, weight, bias, result, op=op, residual=r)

    launched.clear()
    dy = _data((rows, cols), dtype, cols + 3, offset=0.0)
    dres = None if residual is None else _data((rows, cols), dtype, cols + 5, offset=0.0)
    # The backward runs at s in x's dtype (dy, x and dx share one; a float32 s is cast).
    s = s.astype(dtype)
    grads = _backward(op, dy, s, mean, rstd, weight, dres)
    assert [launch.kernel for launch in launched] == _expected_kernels("backward", backward,
                                                                        vector, op)
    _check_backward(dy, s, mean, rstd, weight, grads, op=op, dresidual=dres)


@pytest.mark.parametrize("rows, cols, variant",
                         [(rows, cols, variant) for rows in (0, 1)
                          for cols, variant in ((33, "warp"), (132, "block"), (260, "split"))]
                         + [(35, 3, "warp")])
@pytest.mark.parametrize("op", ["ln", "add_rms"])
def test_row_counts(small_launch, rows, cols, variant, op):
    """No rows, one row, and many (11 rows per 32-lane warp: a warp loops in the backward)."""
    x = _data((rows, cols), np.float32, rows + cols)
    r = None if op == "ln" else _data((rows, cols), np.float32, 5, offset=-1.0)
    result = _forward(op, x, None, None, r)
    assert result[3].shape == (rows, 1) and (result[2] is None or result[2].shape == (rows, 1))
    s, mean, rstd = _check_forward(x, None, None, result, op=op, residual=r)
    assert gpu.plan("backward", max(rows, 3), cols, np.float32, [0], [cols]).variant == variant
    dy = _data((rows, cols), np.float32, 7, offset=0.0)
    dres = None if op == "ln" else dy[::-1].copy()
    grads = _backward(op, dy, s, mean, rstd, None, dres)
    _check_backward(dy, s, mean, rstd, None, grads, op=op, dresidual=dres)
    if rows == 0:
        for grad in grads[1:]:
            if grad is not None:
                np.testing.assert_array_equal(grad.copy_to_host(), 0)


@pytest.mark.parametrize("cols, variant", [(3, "warp"), (40, "block"), (130, "split")])
def test_any_rank_and_axis(small_launch, cols, variant):
    """Rank 4, ``axis=-2``: rows of ``2 * cols`` elements, stats of shape (1, 3, 1, 1)."""
    shape = (1, 3, 2, cols)
    assert gpu.plan("forward", 3, 2 * cols, np.float64, [0], [2 * cols]).variant == variant
    x = _data(shape, np.float64, cols)
    weight = _data(shape[2:], np.float64, 1, offset=1.0)
    result = _forward("ln", x, weight, None, axis=-2)
    assert result[2].shape == (1, 3, 1, 1)
    _, mean, rstd = _check_forward(x, weight, None, result, axis=-2)
    dy = _data(shape, np.float64, 2, offset=0.0)
    grads = _backward("ln", dy, x, mean, rstd, weight, axis=-2)
    _check_backward(dy, x, mean, rstd, weight, grads, axis=-2)
