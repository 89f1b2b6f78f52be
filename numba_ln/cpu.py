"""CPU kernels: how rows map onto threads.

Every kernel sees a problem in one shape: 1-D contiguous buffers and a row
stride (``ldx``: row ``r`` starts at ``x[r * ldx]``, ``ldx >= cols``), the
same layout the C ABI receives. Storage may be float32, float64, or float16
viewed as uint16 (see ``_storage``); ``weight``, ``bias``, ``mean``, ``rstd``,
``dweight`` and ``dbias`` are in the compute type (float32 for float16).

Schedules:

1. ``ln_fwd_serial`` / ``ln_fwd_parallel`` -- forward, one row at a time,
   rows split into contiguous chunks across threads (``prange``'s static
   schedule). Each row is read three times while it sits in L1/L2: the
   shifted sum, the sum of squared deviations, then the output.
2. ``ln_bwd_serial`` / ``ln_bwd_parallel`` -- backward, rows grouped into
   at most ``BACKWARD_BLOCKS`` fixed blocks (``backward_block_rows``) spread
   across threads. Each row is read twice while in cache: the two row means
   the input gradient needs, then ``dx``, with ``dy * xhat`` and ``dy`` added
   into the block's own partial ``dweight``/``dbias`` row (``ln_bwd_blocks``).
   ``ln_bwd_reduce`` then sums the blocks in block order.

The parallel kernels only schedule: each thread runs the compiled serial
pieces (``ln_fwd_serial``, ``ln_bwd_blocks``, ``ln_bwd_reduce``), so serial,
parallel and C-ABI calls give bit-identical results, and the C library can
run the same pieces on threads of its own without numba's launcher (which
takes the GIL around a parallel region). The partition depends on the shape
alone, so the gradients are bit-identical for any thread count.

``ln_fwd`` and ``ln_bwd`` (plain Python) pick serial or parallel by size
(``runs_parallel``) for the Python backend; the C ABI asks ``runs_parallel``
itself and runs the serial pieces on threads of its own. ``eps`` may come in
any float type; the forward kernels cast it to the compute type once.
"""

import numpy as np
from numba import njit, prange

from . import _cache, _math
from ._config import BACKWARD_BLOCKS, CACHE, FASTMATH, FORWARD_CHUNKS, SERIAL_MAX_ELEMENTS
from ._storage import load, store, to_compute

# error_model="numpy": a zero variance with eps=0 gives rstd=inf (and that
# row NaN, like any other non-finite row) instead of raising ZeroDivisionError.
_kernel = njit(fastmath=FASTMATH, cache=CACHE, error_model="numpy")
_parallel_kernel = njit(fastmath=FASTMATH, cache=CACHE, error_model="numpy", parallel=True)
_row = njit(fastmath=FASTMATH, inline="always", error_model="numpy")


@_row
def _ln_fwd_row(x, y, weight, bias, has_weight, has_bias, eps):
    """Normalize one row ``x`` into ``y`` (1-D views); return its (mean, rstd)."""
    cols = x.shape[0]
    n = to_compute(x, cols)
    shift = load(x, 0)
    total = to_compute(x, 0)
    for j in range(cols):
        total += _math.shifted(load(x, j), shift)
    offset = _math.mean_offset(total, n)
    sumsq = to_compute(x, 0)
    for j in range(cols):
        d = _math.centered(load(x, j), shift, offset)
        sumsq += d * d
    rstd = _math.reciprocal_std(sumsq, n, eps)
    one = to_compute(x, 1)
    zero = to_compute(x, 0)
    for j in range(cols):
        w = weight[j] if has_weight else one
        b = bias[j] if has_bias else zero
        d = _math.centered(load(x, j), shift, offset)
        store(y, j, _math.normalize_affine(d, rstd, w, b))
    return _math.row_mean(shift, offset), rstd


@_kernel
def ln_fwd_serial(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                  rows, cols, eps):
    """Forward pass, all rows on the calling thread."""
    eps = to_compute(x, eps)
    for r in range(rows):
        mean[r], rstd[r] = _ln_fwd_row(x[r * ldx:r * ldx + cols], y[r * ldy:r * ldy + cols],
                                       weight, bias, has_weight, has_bias, eps)


@_parallel_kernel
def ln_fwd_parallel(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                    rows, cols, eps):
    """Forward pass, contiguous chunks of rows on each thread.

    Each chunk runs the compiled ``ln_fwd_serial``, so a row gets the same
    machine code -- and the same bits -- on every path, the C ABI's included.
    """
    chunks = min(rows, FORWARD_CHUNKS)
    step = (rows + chunks - 1) // chunks
    for chunk in prange(chunks):
        first = chunk * step
        count = min(rows, first + step) - first
        if count > 0:
            ln_fwd_serial(x[first * ldx:], ldx, weight, bias, has_weight, has_bias,
                          y[first * ldy:], ldy, mean[first:], rstd[first:], count, cols,
                          eps)


@njit(cache=CACHE)
def runs_parallel(rows, cols):
    """The serial/parallel decision for every CPU entry point, Python's and C's."""
    return rows > 1 and rows * cols > SERIAL_MAX_ELEMENTS


_decide = runs_parallel.py_func  # the same rule, without a dispatcher call from Python


# ``ln_fwd`` and ``ln_bwd`` are plain Python on purpose. A cached, non-parallel
# @njit function that calls a parallel one can crash when it is loaded back
# from numba's on-disk cache (numba issue #8578: the caller's cached code
# reaches the callee's parfor through a symbol the cache does not restore),
# and we saw exactly that here. So only Python calls the parallel kernels;
# the C ABI schedules the serial ones on its own threads.


def ln_fwd(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
           rows, cols, eps):
    """Forward pass: serial for small problems, parallel otherwise."""
    if _decide(rows, cols):
        ln_fwd_parallel(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean,
                        rstd, rows, cols, eps)
    else:
        ln_fwd_serial(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                      rows, cols, eps)


@_row
def _ln_bwd_row(dy, x, mean, rstd, weight, has_weight, dx, dweight_acc, dbias_acc):
    """Input gradient of one row (1-D views); add its ``dy * xhat`` and ``dy`` to the partials.

    Two passes over the row while it is in cache: the two row means the input
    gradient needs, then ``dx`` and the parameter-gradient terms.
    """
    cols = x.shape[0]
    n = to_compute(x, cols)
    one = to_compute(x, 1)
    sum_g = to_compute(x, 0)
    sum_gxhat = to_compute(x, 0)
    for j in range(cols):
        w = weight[j] if has_weight else one
        g = w * load(dy, j)
        sum_g += g
        sum_gxhat += g * _math.normalized(load(x, j), mean, rstd)
    mean_g = _math.mean_offset(sum_g, n)
    mean_gxhat = _math.mean_offset(sum_gxhat, n)
    for j in range(cols):
        w = weight[j] if has_weight else one
        grad = load(dy, j)
        xhat = _math.normalized(load(x, j), mean, rstd)
        store(dx, j, _math.grad_input(w * grad, xhat, rstd, mean_g, mean_gxhat))
        dweight_acc[j] += grad * xhat
        dbias_acc[j] += grad


@_row
def _ln_bwd_block(block, block_rows, dy, lddy, x, ldx, mean, rstd, weight, has_weight,
                  dx, lddx, dweight_part, dbias_part, rows, cols):
    """One fixed block of rows: its input gradients and its partial sums."""
    dweight_acc = dweight_part[block]
    dbias_acc = dbias_part[block]
    dweight_acc[:] = 0
    dbias_acc[:] = 0
    for r in range(block * block_rows, min(rows, (block + 1) * block_rows)):
        _ln_bwd_row(dy[r * lddy:r * lddy + cols], x[r * ldx:r * ldx + cols], mean[r],
                    rstd[r], weight, has_weight, dx[r * lddx:r * lddx + cols],
                    dweight_acc, dbias_acc)


@_kernel
def ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                  dweight_part, dbias_part, rows, cols, first_block, stop_block):
    """Blocks ``first_block .. stop_block - 1``: their ``dx`` and partial-sum rows.

    ``dweight_part``/``dbias_part`` are ``(blocks, cols)``, one row per block.
    """
    block_rows = backward_block_rows(rows)
    for block in range(first_block, stop_block):
        _ln_bwd_block(block, block_rows, dy, lddy, x, ldx, mean, rstd, weight,
                      has_weight, dx, lddx, dweight_part, dbias_part, rows, cols)


@_kernel
def ln_bwd_reduce(part, out, first_col, stop_col):
    """``out[j] = sum over blocks of part[block, j]``, blocks in order, for a column range."""
    for j in range(first_col, stop_col):
        out[j] = 0
    for block in range(part.shape[0]):
        for j in range(first_col, stop_col):
            out[j] += part[block, j]


@njit(cache=CACHE)
def backward_block_rows(rows):
    """Rows per block of the backward reduction: a function of the shape alone."""
    return max(1, (rows + BACKWARD_BLOCKS - 1) // BACKWARD_BLOCKS)


@njit(cache=CACHE)
def backward_blocks(rows):
    """Number of backward blocks (rows of partial sums) for ``rows`` rows."""
    block_rows = backward_block_rows(rows)
    return (rows + block_rows - 1) // block_rows


_REDUCE_COLS = 512


@_kernel
def ln_bwd_serial(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                  dweight, dbias, rows, cols):
    """Backward pass on the calling thread (same blocks as the parallel one)."""
    blocks = backward_blocks(rows)
    dweight_part = np.empty((blocks, cols), dweight.dtype)
    dbias_part = np.empty((blocks, cols), dbias.dtype)
    ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                  dweight_part, dbias_part, rows, cols, 0, blocks)
    ln_bwd_reduce(dweight_part, dweight, 0, cols)
    ln_bwd_reduce(dbias_part, dbias, 0, cols)


@_parallel_kernel
def ln_bwd_parallel(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                    dweight, dbias, rows, cols):
    """Backward pass, blocks of rows across threads, then a column-parallel reduction.

    The same compiled pieces as ``ln_bwd_serial``, scheduled across threads.
    """
    blocks = backward_blocks(rows)
    dweight_part = np.empty((blocks, cols), dweight.dtype)
    dbias_part = np.empty((blocks, cols), dbias.dtype)
    for block in prange(blocks):
        ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                      dweight_part, dbias_part, rows, cols, block, block + 1)
    chunks = (cols + _REDUCE_COLS - 1) // _REDUCE_COLS
    for chunk in prange(chunks):
        first = chunk * _REDUCE_COLS
        stop = min(cols, first + _REDUCE_COLS)
        ln_bwd_reduce(dweight_part, dweight, first, stop)
        ln_bwd_reduce(dbias_part, dbias, first, stop)


def ln_bwd(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
           dweight, dbias, rows, cols):
    """Backward pass: serial for small problems, parallel otherwise."""
    if _decide(rows, cols):
        ln_bwd_parallel(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                        dweight, dbias, rows, cols)
    else:
        ln_bwd_serial(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                      dweight, dbias, rows, cols)


_cache.discard_if_stale(ln_fwd_serial)
