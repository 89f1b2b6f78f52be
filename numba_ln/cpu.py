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
   shifted sum, the sum of squared deviations, then the output. Large
   outputs (``streams_output``) are written with streaming stores: 1 KiB
   tiles go through a staging row in L1 and out to memory a 64-byte line at
   a time, so ``y`` is never read for ownership and never evicts the row,
   ``weight`` or ``bias`` being worked on.
2. ``ln_bwd_serial`` / ``ln_bwd_parallel`` -- backward, rows grouped into
   at most ``BACKWARD_BLOCKS`` fixed blocks (``backward_block_rows``) spread
   across threads. Each row is read twice while in cache: first the two row
   means the input gradient needs, with ``dy * xhat`` and ``dy`` added into
   the block's own partial ``dweight``/``dbias`` row, then ``dx``
   (``ln_bwd_blocks``). Wide rows take the first pass in pairs, and large
   outputs of them write ``dx`` with streaming stores, as the forward does.
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
from numba.extending import overload

from . import _cache, _math, _threading
from ._config import (BACKWARD_BLOCKS, BACKWARD_WIDE_COLS, FASTMATH, FORWARD_CHUNKS,
                      SERIAL_MAX_ELEMENTS, STREAM_MIN_BYTES, STREAM_MIN_HALF_COLS,
                      STREAM_STAGE_BYTES)
from ._storage import (LINE_BYTES, element_bytes, line_elements, load, prefetch_line, store,
                       stream_fence, stream_line, to_compute)

# error_model="numpy": a zero variance with eps=0 gives rstd=inf (and that
# row NaN, like any other non-finite row) instead of raising ZeroDivisionError.
_kernel = _cache.jit(fastmath=FASTMATH, error_model="numpy")
_parallel_kernel = _cache.jit(fastmath=FASTMATH, error_model="numpy", parallel=True)
_row = njit(fastmath=FASTMATH, inline="always", error_model="numpy")
# A row piece whose bits must not depend on the loop it is compiled into: no
# fast-math flags (numba applies them per compiled function, so a separate
# one keeps its IEEE order even where LLVM inlines it into a fast-math kernel).
_strict = njit(error_model="numpy")
_strict_row = njit(inline="always", error_model="numpy")  # only inlined into _strict ones


@_row
def _ln_fwd_stats(x, eps):
    """Statistics of one row ``x`` (a 1-D view): ``(shift, offset, rstd)``.

    Two passes while the row is in cache: the shifted sum, then the sum of
    squared deviations (see ``_math``). The mean is ``shift + offset``.
    """
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
    return shift, offset, _math.reciprocal_std(sumsq, n, eps)


@_row
def _normalize(x, y, weight, bias, has_weight, has_bias, shift, offset, rstd, count):
    """``y[j] = (x[j] - mean) * rstd * weight[j] + bias[j]`` for ``j < count``.

    Called with a compile-time ``count`` (a staging tile) LLVM emits one
    straight vector loop with no remainder, which matters at a few hundred
    elements per tile.
    """
    one = to_compute(x, 1)
    zero = to_compute(x, 0)
    for j in range(count):
        w = weight[j] if has_weight else one
        b = bias[j] if has_bias else zero
        d = _math.centered(load(x, j), shift, offset)
        store(y, j, _math.normalize_affine(d, rstd, w, b))


@_row
def _line_head(y):
    """Elements of ``y`` before its first 64-byte boundary.

    All of them when ``y`` is not aligned to its element size (possible with
    NumPy views): such a ``y`` gets ordinary stores only.
    """
    size = element_bytes(y)
    address = y.ctypes.data
    if address % size:
        return y.shape[0]
    return min(y.shape[0], (-address % LINE_BYTES) // size)


@_row
def _stream_lines(stage, y, start, count):
    """``y[start:start + count] = stage[:count]`` with streaming stores, whole lines only."""
    for k in range(0, count, line_elements(y)):
        stream_line(y, start + k, stage, k)


@_row
def _stream_rest(stage, y, start, count):
    """``y[start:start + count] = stage[:count]``: whole lines streamed, the tail stored."""
    lines = count // line_elements(y) * line_elements(y)
    _stream_lines(stage, y, start, lines)
    tail = y[start + lines:start + count]
    for k in range(tail.shape[0]):
        tail[k] = stage[lines + k]


@_row
def _normalize_streaming(x, y, weight, bias, has_weight, has_bias, shift, offset, rstd,
                         stage, x_next):
    """``_normalize`` of a row, ``y`` written with streaming stores a line at a time.

    Tiles of the row are computed into ``stage`` (in cache) and copied out
    with non-temporal stores, so ``y`` is never read into the cache and never
    pushes ``x``, ``weight`` or ``bias`` out of it. The elements before ``y``'s
    first 64-byte boundary and after its last whole line get ordinary stores.

    float16 rows also prefetch ``x_next`` (the next row) into L2, a tile's
    worth of lines per tile, so the next row's first pass reads from cache:
    a float16 row costs as much arithmetic as a float32 one for half the
    bytes, and without the prefetch memory idles while it is computed. For
    float32 rows the prefetch measured neutral to slightly worse.
    """
    cols = x.shape[0]
    head = _line_head(y)
    _normalize(x, y, weight, bias, has_weight, has_bias, shift, offset, rstd, head)
    start = head
    tile = stage_elements(stage)
    while start + tile <= cols:
        _normalize(x[start:], stage, weight[start:], bias[start:], has_weight, has_bias,
                   shift, offset, rstd, tile)
        if element_bytes(x) == 2:
            for k in range(0, tile, line_elements(x)):
                prefetch_line(x_next, start + k)
        _stream_lines(stage, y, start, tile)
        start += tile
    _normalize(x[start:], stage, weight[start:], bias[start:], has_weight, has_bias, shift,
               offset, rstd, cols - start)
    _stream_rest(stage, y, start, cols - start)


@_row
def _ln_fwd_rows(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd, rows, cols,
                 eps, stage):
    """Every row: its statistics, then its output (streamed when ``stage`` is not empty).

    A ``mean`` or ``rstd`` of length 0 means the caller does not want that
    statistic: the rows are computed the same way and it is not stored.
    """
    keep_mean = mean.shape[0] > 0
    keep_rstd = rstd.shape[0] > 0
    for r in range(rows):
        x_row = x[r * ldx:r * ldx + cols]
        y_row = y[r * ldy:r * ldy + cols]
        shift, offset, row_rstd = _ln_fwd_stats(x_row, eps)
        if stage.shape[0]:
            ahead = min(r + 1, rows - 1) * ldx
            _normalize_streaming(x_row, y_row, weight, bias, has_weight, has_bias, shift,
                                 offset, row_rstd, stage, x[ahead:ahead + cols])
        else:
            _normalize(x_row, y_row, weight, bias, has_weight, has_bias, shift, offset,
                       row_rstd, cols)
        if keep_mean:
            mean[r] = _math.row_mean(shift, offset)
        if keep_rstd:
            rstd[r] = row_rstd


@_kernel
def ln_fwd_serial(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                  rows, cols, eps, stream_out):
    """Forward pass, all rows on the calling thread.

    ``mean`` and ``rstd`` have one element per row, or none when that
    statistic is not wanted. ``stream_out`` (``streams_output``'s decision
    for the whole call) writes ``y`` with non-temporal stores; the values are
    the same bits either way. The two ways are two separately compiled row
    loops.
    """
    eps = to_compute(x, eps)
    if stream_out:
        stage = np.empty(stage_elements(y), y.dtype)
        _ln_fwd_rows(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd, rows,
                     cols, eps, stage)
        stream_fence()
    else:
        _ln_fwd_rows(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd, rows,
                     cols, eps, y[:0])  # no staging row: ordinary stores


@_kernel
def ln_fwd_small(x, weight, bias, has_weight, has_bias, y, cols, eps):
    """``ln_fwd_serial`` for contiguous rows, without statistics or streaming.

    The small-call entry from Python (``_cpu_backend.small_forward``), for
    float32 and float64 (the empty statistics are views of ``x``). numba's
    dispatcher costs ~0.05 us per argument: called from Python with its 14,
    ``ln_fwd_serial`` took 0.75 us at 1x768, this with 8 about 0.5. It calls
    the one compiled ``ln_fwd_serial`` (``bool(0)`` is a run-time false: a
    literal ``False`` would make numba compile a second specialization).
    """
    ln_fwd_serial(x, cols, weight, bias, has_weight, has_bias, y, cols, x[:0], x[:0],
                  x.shape[0] // cols, cols, eps, bool(0))


@_parallel_kernel
def ln_fwd_parallel(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                    rows, cols, eps, stream_out):
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
                          eps, stream_out)


@_cache.jit()
def runs_parallel(rows, cols):
    """The serial/parallel decision for every CPU entry point, Python's and C's."""
    return rows > 1 and rows * cols > SERIAL_MAX_ELEMENTS


_decide = runs_parallel.py_func  # the same rule, without a dispatcher call from Python


@_cache.jit()
def streams_output(rows, cols, itemsize):
    """Whether a forward writes ``y`` with streaming stores: a function of its shape alone.

    Large outputs only (``STREAM_MIN_BYTES``). float16 rows also need
    ``STREAM_MIN_HALF_COLS`` elements: a float16 row costs twice the
    arithmetic per byte, and below that width staging it cost more than the
    stores saved.
    """
    return (rows * cols * itemsize >= STREAM_MIN_BYTES
            and (itemsize >= 4 or cols >= STREAM_MIN_HALF_COLS))


_streams = streams_output.py_func

# ln_fwd's shortcut for small calls relies on this.
assert STREAM_MIN_BYTES > 8 * SERIAL_MAX_ELEMENTS, "small calls must never stream"


@_cache.jit()
def streams_input_gradient(rows, cols, itemsize):
    """Whether a backward writes ``dx`` with streaming stores: a function of its shape alone.

    Large outputs (``STREAM_MIN_BYTES``) of wide rows (``BACKWARD_WIDE_COLS``)
    only: with narrower rows the backward's stores were not its limit, and
    staging them lost.
    """
    return rows * cols * itemsize >= STREAM_MIN_BYTES and cols >= BACKWARD_WIDE_COLS


def stage_elements(array):
    """Elements of ``array``'s type in a staging row of ``STREAM_STAGE_BYTES``."""
    return STREAM_STAGE_BYTES // array.itemsize


@overload(stage_elements, inline="always")
def _stage_elements_impl(array):
    elements = STREAM_STAGE_BYTES * 8 // array.dtype.bitwidth
    return lambda array: elements


# ``ln_fwd`` and ``ln_bwd`` are plain Python on purpose. A cached, non-parallel
# @njit function that calls a parallel one can crash when it is loaded back
# from numba's on-disk cache (numba issue #8578, still open), and the old
# compiled ``ln_fwd`` did, here. So only Python calls the parallel kernels;
# the C ABI schedules the serial ones on its own threads.


def ln_fwd(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
           rows, cols, eps):
    """Forward pass: serial for small problems, parallel otherwise."""
    if rows * cols <= SERIAL_MAX_ELEMENTS:  # small: serial, never streamed (see below)
        ln_fwd_serial(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                      rows, cols, eps, False)
        return
    stream_out = _streams(rows, cols, y.itemsize)
    if _decide(rows, cols) and _threading.parallel_allowed():
        ln_fwd_parallel(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean,
                        rstd, rows, cols, eps, stream_out)
    else:
        ln_fwd_serial(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                      rows, cols, eps, stream_out)


@_row
def _ln_bwd_sums(dy, x, mean, rstd, weight, has_weight, dweight_acc, dbias_acc):
    """Pass one over a row: the sums of ``g = w * dy`` and ``g * xhat``.

    It also adds the row's ``dy * xhat`` and ``dy`` to the block's partial
    ``dweight``/``dbias``: they need no row mean, and this pass streams the
    row from memory, so the extra arithmetic hides behind the loads.
    """
    one = to_compute(x, 1)
    sum_g = to_compute(x, 0)
    sum_gxhat = to_compute(x, 0)
    for j in range(x.shape[0]):
        w = weight[j] if has_weight else one
        grad = load(dy, j)
        xhat = _math.normalized(load(x, j), mean, rstd)
        g = w * grad
        sum_g += g
        sum_gxhat += g * xhat
        dweight_acc[j] += grad * xhat
        dbias_acc[j] += grad
    return sum_g, sum_gxhat


@_row
def _ln_bwd_pair_sums(dy0, x0, mean0, rstd0, dy1, x1, mean1, rstd1, weight, has_weight,
                      dweight_acc, dbias_acc):
    """``_ln_bwd_sums`` of two rows in one pass, sharing each load of ``weight`` and the partials.

    Returns ``(sum_g0, sum_gxhat0, sum_g1, sum_gxhat1)``.
    """
    one = to_compute(x0, 1)
    sum_g0 = to_compute(x0, 0)
    sum_gxhat0 = to_compute(x0, 0)
    sum_g1 = to_compute(x0, 0)
    sum_gxhat1 = to_compute(x0, 0)
    for j in range(x0.shape[0]):
        w = weight[j] if has_weight else one
        grad0 = load(dy0, j)
        grad1 = load(dy1, j)
        xhat0 = _math.normalized(load(x0, j), mean0, rstd0)
        xhat1 = _math.normalized(load(x1, j), mean1, rstd1)
        g0 = w * grad0
        g1 = w * grad1
        sum_g0 += g0
        sum_gxhat0 += g0 * xhat0
        sum_g1 += g1
        sum_gxhat1 += g1 * xhat1
        dweight_acc[j] += grad0 * xhat0 + grad1 * xhat1
        dbias_acc[j] += grad0 + grad1
    return sum_g0, sum_gxhat0, sum_g1, sum_gxhat1


@_strict_row
def _ln_bwd_dx_loop(dy, x, mean, rstd, weight, has_weight, dx, mean_g, mean_gxhat, count):
    """``dx[j]`` for ``j < count``: the loop of ``_ln_bwd_dx_part`` and ``_ln_bwd_dx_tile``."""
    one = to_compute(x, 1)
    for j in range(count):
        w = weight[j] if has_weight else one
        xhat = _math.normalized(load(x, j), mean, rstd)
        store(dx, j, _math.grad_input(w * load(dy, j), xhat, rstd, mean_g, mean_gxhat))


@_strict
def _ln_bwd_dx_part(dy, x, mean, rstd, weight, has_weight, dx, mean_g, mean_gxhat, count):
    """``dx[j]`` for ``j < count``.

    Compiled without fast-math flags (``_strict``). LLVM builds several
    versions of this loop (vector body, scalar remainder, a scalar fallback
    behind run-time overlap checks; in a streamed row also the head, tile
    and rest loops), and with ``contract`` and ``reassoc`` they rounded the
    formula differently. Which one computes an element can depend on where
    the arrays lie, so a large streamed ``dx`` changed by an ulp in ~1.5 % of
    its elements from call to call, and the C ABI's differed from Python's.
    Without the flags every version computes the written IEEE order. It
    costs the backward ~3 % at 1024 columns and ~9 % at 4096 (A/B, 2 threads).
    """
    _ln_bwd_dx_loop(dy, x, mean, rstd, weight, has_weight, dx, mean_g, mean_gxhat, count)


@_strict
def _ln_bwd_dx_tile(dy, x, mean, rstd, weight, has_weight, stage, mean_g, mean_gxhat):
    """``_ln_bwd_dx_part`` into a whole staging tile, its length a compile-time constant.

    A separately compiled function gets a run-time count; the streamed tiles
    keep theirs constant (one straight vector loop, no remainder).
    """
    _ln_bwd_dx_loop(dy, x, mean, rstd, weight, has_weight, stage, mean_g, mean_gxhat,
                    stage_elements(stage))


@_row
def _ln_bwd_dx(dy, x, mean, rstd, weight, has_weight, dx, sum_g, sum_gxhat, stage):
    """Pass two over a row: ``dx`` from pass one's sums.

    With a non-empty ``stage`` it is written with streaming stores, as the
    forward writes ``y`` (``_normalize_streaming``): tiles computed into
    ``stage``, copied out a 64-byte line at a time, the ragged ends stored.
    """
    cols = x.shape[0]
    n = to_compute(x, cols)
    mean_g = _math.mean_offset(sum_g, n)
    mean_gxhat = _math.mean_offset(sum_gxhat, n)
    if not stage.shape[0]:
        _ln_bwd_dx_part(dy, x, mean, rstd, weight, has_weight, dx, mean_g, mean_gxhat, cols)
        return
    start = _line_head(dx)
    _ln_bwd_dx_part(dy, x, mean, rstd, weight, has_weight, dx, mean_g, mean_gxhat, start)
    tile = stage_elements(stage)
    while start + tile <= cols:
        _ln_bwd_dx_tile(dy[start:], x[start:], mean, rstd, weight[start:], has_weight,
                        stage, mean_g, mean_gxhat)
        _stream_lines(stage, dx, start, tile)
        start += tile
    _ln_bwd_dx_part(dy[start:], x[start:], mean, rstd, weight[start:], has_weight, stage,
                    mean_g, mean_gxhat, cols - start)
    _stream_rest(stage, dx, start, cols - start)


@_row
def _ln_bwd_block(block, block_rows, dy, lddy, x, ldx, mean, rstd, weight, has_weight,
                  dx, lddx, dweight_part, dbias_part, rows, cols, stage):
    """One fixed block of rows: its input gradients and its partial sums.

    Rows of at least ``BACKWARD_WIDE_COLS`` go through pass one in pairs.
    """
    dweight_acc = dweight_part[block]
    dbias_acc = dbias_part[block]
    dweight_acc[:] = 0
    dbias_acc[:] = 0
    r = block * block_rows
    stop = min(rows, (block + 1) * block_rows)
    if cols >= BACKWARD_WIDE_COLS:
        while r + 1 < stop:
            s = r + 1
            dy0, x0 = dy[r * lddy:r * lddy + cols], x[r * ldx:r * ldx + cols]
            dy1, x1 = dy[s * lddy:s * lddy + cols], x[s * ldx:s * ldx + cols]
            sum_g0, sum_gxhat0, sum_g1, sum_gxhat1 = _ln_bwd_pair_sums(
                dy0, x0, mean[r], rstd[r], dy1, x1, mean[s], rstd[s], weight, has_weight,
                dweight_acc, dbias_acc)
            _ln_bwd_dx(dy0, x0, mean[r], rstd[r], weight, has_weight,
                       dx[r * lddx:r * lddx + cols], sum_g0, sum_gxhat0, stage)
            _ln_bwd_dx(dy1, x1, mean[s], rstd[s], weight, has_weight,
                       dx[s * lddx:s * lddx + cols], sum_g1, sum_gxhat1, stage)
            r += 2
    while r < stop:
        dy_row, x_row = dy[r * lddy:r * lddy + cols], x[r * ldx:r * ldx + cols]
        sum_g, sum_gxhat = _ln_bwd_sums(dy_row, x_row, mean[r], rstd[r], weight, has_weight,
                                        dweight_acc, dbias_acc)
        _ln_bwd_dx(dy_row, x_row, mean[r], rstd[r], weight, has_weight,
                   dx[r * lddx:r * lddx + cols], sum_g, sum_gxhat, stage)
        r += 1


@_kernel
def ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                  dweight_part, dbias_part, rows, cols, first_block, stop_block):
    """Blocks ``first_block .. stop_block - 1``: their ``dx`` and partial-sum rows.

    ``dweight_part``/``dbias_part`` are ``(blocks, cols)``, one row per block.
    ``rows`` and ``cols`` are the whole problem's, so every caller's blocks
    make the same decisions (``streams_input_gradient``). As in the forward,
    the streaming and ordinary ways are two separately compiled loops.
    """
    block_rows = backward_block_rows(rows)
    if streams_input_gradient(rows, cols, element_bytes(dx)):
        stage = np.empty(stage_elements(dx), dx.dtype)
        for block in range(first_block, stop_block):
            _ln_bwd_block(block, block_rows, dy, lddy, x, ldx, mean, rstd, weight,
                          has_weight, dx, lddx, dweight_part, dbias_part, rows, cols, stage)
        stream_fence()
    else:
        for block in range(first_block, stop_block):
            _ln_bwd_block(block, block_rows, dy, lddy, x, ldx, mean, rstd, weight,
                          has_weight, dx, lddx, dweight_part, dbias_part, rows, cols,
                          dx[:0])  # no staging row: ordinary stores


@_kernel
def ln_bwd_reduce(part, out, first_col, stop_col):
    """``out[j] = sum over blocks of part[block, j]``, blocks in order, for a column range."""
    for j in range(first_col, stop_col):
        out[j] = 0
    for block in range(part.shape[0]):
        for j in range(first_col, stop_col):
            out[j] += part[block, j]


@_cache.jit()
def backward_block_rows(rows):
    """Rows per block of the backward reduction: a function of the shape alone."""
    return max(1, (rows + BACKWARD_BLOCKS - 1) // BACKWARD_BLOCKS)


@_cache.jit()
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
    # int64 block and column bounds at every call site (a literal 0 or a prange
    # index would each compile the callee once more).
    first = np.int64(0)
    ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                  dweight_part, dbias_part, rows, cols, first, blocks)
    ln_bwd_reduce(dweight_part, dweight, first, cols)
    ln_bwd_reduce(dbias_part, dbias, first, cols)


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
        first_block = np.int64(block)  # as ln_bwd_serial calls it: one compilation
        ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                      dweight_part, dbias_part, rows, cols, first_block, first_block + 1)
    chunks = (cols + _REDUCE_COLS - 1) // _REDUCE_COLS
    for chunk in prange(chunks):
        first = np.int64(chunk) * _REDUCE_COLS
        stop = min(cols, first + _REDUCE_COLS)
        ln_bwd_reduce(dweight_part, dweight, first, stop)
        ln_bwd_reduce(dbias_part, dbias, first, stop)


def ln_bwd(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
           dweight, dbias, rows, cols):
    """Backward pass: serial for small problems, parallel otherwise."""
    if _decide(rows, cols) and _threading.parallel_allowed():
        ln_bwd_parallel(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                        dweight, dbias, rows, cols)
    else:
        ln_bwd_serial(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                      dweight, dbias, rows, cols)


_cache.discard_if_stale(ln_fwd_serial)
