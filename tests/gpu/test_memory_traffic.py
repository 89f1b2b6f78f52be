"""Every kernel variant reads each input element, and writes each output element, as often as planned.

Under the simulator the kernels' row accesses go through ``sim_shims``'
strict ``simulated_load``/``simulated_store``, which :func:`sim_shims.counting`
counts per element. Each case runs ``numba_ln.layer_norm`` or
``layer_norm_backward`` on rows that are a view of a wider buffer (NaN in
the padding) and checks, element by element: ``x`` (and ``dy``) read once
-- twice by the split variant, whose first kernel reads them for the
statistics -- and ``y`` (``dx``) written once; the padding around the rows
never touched; and no access anywhere else than those arrays, ``weight``,
``bias`` and (backward) the partial ``dweight``/``dbias`` rows.

The tunables are patched tiny (``tiny_launch``) so that a few rows of at
most 200 columns reach every variant in blocks of at most 64 threads, and
``gpu.plan`` is asserted for each case, so a change of thresholds cannot
silently drop a variant.
"""

import numpy as np
import pytest
from numba import cuda

import numba_ln
from numba_ln import _config, _cuda_backend, gpu
from numba_ln._validate import forward_spec

from .conftest import SIMULATOR
from .sim_shims import counting, element_addresses

pytestmark = pytest.mark.skipif(not SIMULATOR, reason="counts accesses through the simulator")

#: Every variant within a few rows of at most 200 columns, in blocks of at most 64 threads:
#: vectors per thread (16 bytes' worth) 1 forward and backward; scalar elements per thread 4
#: forward, 2 backward. So float32 rows go to a warp up to 128 vector / 128 scalar columns
#: forward (64 scalar backward), to a block up to 256 / 256 (128), and are split from 192 on
#: when there are fewer than 4 rows, in segments of 128 (backward scalar: 64) columns.
TINY = {
    "CUDA_WARP_BLOCK_THREADS": 32,
    "CUDA_ROW_BLOCK_THREADS": 64,
    "CUDA_WARP_ROW_BYTES": 16,
    "CUDA_BLOCK_ROW_BYTES": 16,
    "CUDA_SPLIT_MIN_COLS": 192,
    "CUDA_SPLIT_MAX_ROWS": 4,
    "CUDA_SPLIT_SEGMENT_BYTES": 512,
    "CUDA_BACKWARD_MAX_PARTIALS": 2,
    "CUDA_REDUCE_THREADS": 32,
    "CUDA_REDUCE_GROUPS": 2,
}

#: (direction, variant, vector width, dtype, rows, cols, lead): the rows start ``lead``
#: elements into a buffer row whose start is 64-byte aligned. Scalar cases come from a width
#: that is not a multiple of the vector, or from rows that start 4 bytes past alignment.
#: Backward passes write 2 partial rows for 3 rows: a warp or block serves two rows, in a loop
#: over rows or (16-lane rows) as the warp's two groups, one of them idle on its second row.
CASES = [
    ("forward", "warp", 4, "float32", 3, 64, 0),
    ("forward", "warp", 1, "float32", 3, 30, 0),
    ("forward", "warp", 1, "float32", 3, 64, 1),
    ("forward", "block", 4, "float32", 3, 160, 0),
    ("forward", "block", 1, "float32", 3, 150, 0),
    ("forward", "split", 4, "float32", 3, 200, 0),
    ("forward", "split", 1, "float32", 3, 198, 0),
    ("forward", "warp", 8, "float16", 3, 64, 0),
    ("backward", "warp", 4, "float32", 3, 64, 0),
    ("backward", "warp", 1, "float32", 3, 30, 0),
    ("backward", "warp", 1, "float32", 3, 64, 1),
    ("backward", "block", 4, "float32", 3, 160, 0),
    ("backward", "block", 1, "float32", 3, 90, 0),
    ("backward", "split", 4, "float32", 3, 200, 0),
    ("backward", "split", 1, "float32", 3, 198, 0),
    ("backward", "warp", 8, "float16", 3, 64, 0),
]


def _case_id(case):
    direction, variant, vec, dtype, rows, cols, lead = case
    kind = "vector" if vec > 1 else ("offset" if lead else "scalar")
    return f"{direction}-{variant}-{kind}-{dtype}-{rows}x{cols}"


@pytest.fixture
def tiny_launch(monkeypatch):
    """Patch the CUDA tunables to :data:`TINY`."""
    for name, value in TINY.items():
        monkeypatch.setattr(_config, name, value)


def _aligned(shape, dtype, fill):
    """A simulator device array of ``shape`` filled with ``fill``, starting 64-byte aligned.

    The simulator's arrays are host memory, aligned as malloc leaves them
    (16 bytes at best); the vector kernels are chosen from the real pointers.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    spare = 64 // dtype.itemsize
    buffer = cuda.to_device(np.full(size + spare, fill, dtype))
    skip = (-element_addresses(buffer)[0] % 64) // dtype.itemsize
    return buffer[skip:skip + size].reshape(shape)


def _rows_in_padding(host, lead):
    """``host`` (rows x cols) as a view into a NaN-padded aligned device buffer; (view, buffer).

    Each buffer row has ``lead`` elements before the view's row and at least
    4 after, and a length that keeps rows vector-aligned.
    """
    rows, cols = host.shape
    row_length = -(-(lead + cols + 4) // 8) * 8
    buffer = _aligned((rows, row_length), host.dtype, np.nan)
    view = buffer[:, lead:lead + cols]
    view[:, :] = host
    return view, buffer


def _inside(buffer_shape, lead, cols):
    """True at the buffer elements that belong to the view's rows."""
    mask = np.zeros(buffer_shape, bool)
    mask[:, lead:lead + cols] = True
    return mask


def _assert_counts(counts, inside, times, what):
    """``counts`` is ``times`` inside the view's rows and 0 in the padding around them."""
    wrong = np.argwhere(counts != np.where(inside, times, 0))
    if len(wrong):
        first = tuple(int(i) for i in wrong[0])
        pytest.fail(f"{what}: expected {times} inside the rows and 0 in the padding; buffer "
                    f"element {first} counted {counts[first]} ({len(wrong)} elements wrong; "
                    f"counts seen {np.unique(counts).tolist()})")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_every_variant_reads_and_writes_each_element_as_planned(tiny_launch, case):
    direction, variant, vec, dtype, rows, cols, lead = case
    rng = np.random.default_rng(cols)
    x, x_buffer = _rows_in_padding(rng.standard_normal((rows, cols)).astype(dtype), lead)
    out, out_buffer = _rows_in_padding(np.zeros((rows, cols), dtype), lead)
    weight = _aligned((cols,), dtype, 0)
    weight[:] = rng.uniform(0.5, 1.5, cols).astype(dtype)
    inside = _inside(x_buffer.shape, lead, cols)
    # x's and dy's rows are read by one kernel, or by both of the split variant's.
    passes = 2 if variant == "split" else 1
    addresses = [element_addresses(a)[(0,) * a.ndim] for a in (x, out, weight)]

    if direction == "forward":
        bias = _aligned((cols,), dtype, 0)
        bias[:] = rng.standard_normal(cols).astype(dtype)
        p = gpu.plan("forward", rows, cols, dtype, addresses + [element_addresses(bias)[0]],
                     (x_buffer.shape[1],) * 2)
        assert (p.variant, p.vec) == (variant, vec)
        with counting() as counter:
            numba_ln.layer_norm(x, weight, bias, out=out, return_stats=True)
        _assert_counts(counter.reads(x_buffer), inside, passes, "x reads")
        _assert_counts(counter.writes(out_buffer), inside, 1, "y writes")
        assert counter.writes(x_buffer).sum() == counter.reads(out_buffer).sum() == 0
        params = counter.reads(weight).sum() + counter.reads(bias).sum()
        assert counter.total_reads == counter.reads(x_buffer).sum() + params
        assert counter.total_writes == counter.writes(out_buffer).sum()
    else:
        dy, dy_buffer = _rows_in_padding(rng.standard_normal((rows, cols)).astype(dtype), lead)
        host_x = x.copy_to_host().astype(np.float32 if dtype == "float16" else dtype)
        mean = cuda.to_device(host_x.mean(axis=1))
        rstd = cuda.to_device(1 / np.sqrt(host_x.var(axis=1) + 1e-5))
        addresses.insert(0, element_addresses(dy)[0, 0])
        p = gpu.plan("backward", rows, cols, dtype, addresses, (x_buffer.shape[1],) * 3,
                     np.dtype(dtype))
        assert (p.variant, p.vec) == (variant, vec)
        with counting() as counter:
            numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, out=out)
        _assert_counts(counter.reads(x_buffer), inside, passes, "x reads")
        _assert_counts(counter.reads(dy_buffer), inside, passes, "dy reads")
        _assert_counts(counter.writes(out_buffer), inside, 1, "dx writes")
        assert counter.writes(x_buffer).sum() == counter.writes(dy_buffer).sum() == 0
        assert counter.reads(out_buffer).sum() == 0
        assert counter.total_reads == (counter.reads(x_buffer).sum()
                                       + counter.reads(dy_buffer).sum()
                                       + counter.reads(weight).sum())
        # Besides dx, each partial dweight and dbias row is written once per column.
        assert counter.total_writes == counter.writes(out_buffer).sum() + 2 * p.partials * cols
    # The padding is NaN: had a kernel used it, the rows would not be finite.
    assert np.isfinite(out.copy_to_host()).all()


#: (operation, variant, vector width, dtype of x, dtype of the residual, rows, cols): the
#: residual forward of both norms on each schedule, and a float32 residual with float16 x.
RESIDUAL_CASES = [
    ("add_ln", "warp", 4, "float32", "float32", 3, 64),
    ("add_rms", "warp", 1, "float32", "float32", 3, 30),
    ("add_rms", "block", 4, "float32", "float32", 3, 160),
    ("add_ln", "block", 1, "float32", "float32", 3, 150),
    ("add_ln", "split", 4, "float32", "float32", 3, 200),
    ("add_rms", "warp", 8, "float16", "float32", 3, 64),
]


@pytest.mark.parametrize("case", RESIDUAL_CASES, ids=["-".join(map(str, case))
                                                      for case in RESIDUAL_CASES])
def test_residual_forward_reads_x_and_r_once_and_writes_s_and_y_once(tiny_launch, case):
    """``s = x + r`` is formed as the row is loaded and written once; the statistics and ``y``
    come from the registers, so ``s`` is never read back -- except by the split variant's
    second kernel, which reads ``s`` instead of ``x`` and ``r`` again (fewer bytes)."""
    op, variant, vec, dtype, residual_dtype, rows, cols = case
    rng = np.random.default_rng(cols)
    x, x_buffer = _rows_in_padding(rng.standard_normal((rows, cols)).astype(dtype), 0)
    r, r_buffer = _rows_in_padding(rng.standard_normal((rows, cols)).astype(residual_dtype), 0)
    out, out_buffer = _rows_in_padding(np.zeros((rows, cols), dtype), 0)
    s, s_buffer = _rows_in_padding(np.zeros((rows, cols), residual_dtype), 0)
    weight = _aligned((cols,), dtype, 0)
    weight[:] = rng.uniform(0.5, 1.5, cols).astype(dtype)
    inside = _inside(x_buffer.shape, 0, cols)
    arrays = (x, r, s, out, weight)
    p = gpu.plan("forward", rows, cols, dtype,
                 [element_addresses(a)[(0,) * a.ndim] for a in arrays],
                 (x_buffer.shape[1],) * 4, centered=op == "add_ln", residual=residual_dtype)
    assert (p.variant, p.vec) == (variant, vec)
    spec, eps = forward_spec(x, weight, None, -1, 1e-5, out)
    with counting() as counter:
        results = _cuda_backend.forward(spec, x, weight, None, eps, out,
                                        centered=op == "add_ln", residual=r, residual_out=s)
    assert results[0] is out and results[1] is s
    _assert_counts(counter.reads(x_buffer), inside, 1, "x reads")
    _assert_counts(counter.reads(r_buffer), inside, 1, "r reads")
    _assert_counts(counter.writes(s_buffer), inside, 1, "s writes")
    _assert_counts(counter.reads(s_buffer), inside, int(variant == "split"), "s reads")
    _assert_counts(counter.writes(out_buffer), inside, 1, "y writes")
    assert counter.writes(x_buffer).sum() == counter.writes(r_buffer).sum() == 0
    assert counter.reads(out_buffer).sum() == 0
    assert counter.total_reads == sum(counter.reads(a).sum() for a in
                                      (x_buffer, r_buffer, s_buffer, weight))
    assert counter.total_writes == counter.writes(s_buffer).sum() + counter.writes(out_buffer).sum()
    assert np.isfinite(out.copy_to_host()).all() and np.isfinite(s.copy_to_host()).all()
