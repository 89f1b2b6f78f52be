"""CPU kernels and their plan: how rows map onto threads.

:func:`plan` decides every schedule question of a call from its shape and
element size; the kernels only receive its decisions as arguments. The
Python backend (:func:`ln_fwd`, :func:`ln_bwd`) and the C library (through
``_cabi``) both ask it, so their schedules cannot drift apart.

Every kernel sees a problem in one shape: 1-D contiguous buffers and a row
stride (``ldx``: row ``r`` starts at ``x[r * ldx]``, ``ldx >= cols``), the
same layout the C ABI receives. Storage may be float32, float64, or float16
viewed as uint16 (see ``_storage``); ``weight``, ``bias``, ``mean``, ``rstd``,
``dweight`` and ``dbias`` are in the compute type (float32 for float16).

Schedules:

1. ``ln_fwd_rows`` -- forward, one row at a time: the row's sum, the sum of
   squared deviations from its mean (``_math``: corrected two-pass; 16-bit
   rows in one pass from a pilot), then the output, while the row sits in
   L1/L2. With a staging row (``stage``, for large outputs) ``y`` is written
   a 64-byte line at a time with streaming stores, so it is never read for
   ownership and never evicts the rows being worked on; a line shared by two
   rows of a chunk is written once, whole. ``ln_fwd_parallel`` runs it on
   contiguous chunks of rows across threads.
2. ``ln_bwd_blocks`` -- backward, rows grouped into fixed blocks. Each row is
   read twice while in cache: first the two row means the input gradient
   needs, adding ``dy * xhat`` and ``dy`` into its block's partial
   ``dweight``/``dbias`` row, then ``dx``. Wide rows take the first pass in
   pairs and may stream ``dx``. ``ln_bwd_reduce`` sums the blocks in block
   order. ``ln_bwd_parallel`` runs the blocks across threads, then the sums
   across threads, columns split.

Both kernels serve RMSNorm too: a run-time ``centered`` flag takes the mean
as zero (pass one of the statistics and ``mean(g)`` drop out), so one
compilation per dtype serves both norms. The fused residual (``residual`` and
``s``: ``s = x + residual`` written once, the row then normalized from
cache) and ``dresidual`` (added into ``dx``) are ``None`` or arrays, so only
calls that use them compile those variants.

The kernels take their arrays without numba's reference counts
(``_native.unowned``): each count is an atomic instruction, which on x86
waits for the thread's streaming stores to reach memory, and row slices
would pay one per row.

Each thread runs the same compiled pieces as a serial call, and the backward
partition depends on the shape alone, so serial, parallel and C-ABI calls give
bit-identical results for any thread count. A row's ``y``, statistics and
``dx`` do not depend on the other rows of the call either (a wide row left
without a partner goes through the pair loop beside zero gradients), so a
call on any run of rows gives the bits the whole call does; only
``dweight``/``dbias`` depend on the partition.

A variant (streaming stores, wide rows) is selected by the type of the
``stage`` argument -- ``None`` or an array -- so numba compiles it only when a
call first needs it. Every other argument has one type per dtype: int64
counts, bool flags, a float64 ``eps``.
"""

import functools
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import _cache, _math, _native, _threading
from ._config import (BACKWARD_BLOCKS, BACKWARD_MIN_BLOCK_ROWS, BACKWARD_REDUCE_COLS,
                      BACKWARD_WIDE_COLS, FASTMATH, FORWARD_CHUNKS, FORWARD_MIN_CHUNK_ELEMENTS,
                      PREFETCH_AHEAD_BYTES, SERIAL_MAX_ELEMENTS, STATS_BLOCK,
                      STATS_PILOT_ELEMENTS, STATS_PILOT_REACH, STREAM_MIN_BYTES,
                      STREAM_MIN_HALF_COLS, STREAM_STAGE_BYTES)
from ._native import unowned
from ._storage import (HARDWARE_BFLOAT16, LINE_BYTES, bfloat16_bits_to_float32,
                       element_bytes, float32_to_bfloat16_bits, line_elements, load,
                       narrow_affine, normalize_bfloat16_line, prefetch_line, store,
                       stream_fence, stream_line, stream_normalized_bfloat16_line, to_compute)

# error_model="numpy": a zero variance with eps=0 gives rstd=inf (and that
# row NaN, like any other non-finite row) instead of raising ZeroDivisionError.
_kernel = _cache.jit(fastmath=FASTMATH, error_model="numpy")
_parallel_kernel = _cache.jit(fastmath=FASTMATH, error_model="numpy", parallel=True)
# A piece of a row: typed once per dtype, inlined by LLVM where it is called
# (numba-IR inlining would type it again at every call site).
_PIECE_OPTIONS = dict(fastmath=FASTMATH, error_model="numpy", forceinline=True,
                      no_cpython_wrapper=True, no_cfunc_wrapper=True)
_piece = njit(**_PIECE_OPTIONS)
# A loop called, never inlined: every caller runs the same machine code for
# it, so its bits cannot depend on the loop around the call.
_shared = njit(fastmath=FASTMATH, error_model="numpy", forceinline=False, no_cpython_wrapper=True,
               no_cfunc_wrapper=True)

# --------------------------------------------------------------------------- plan

#: The fields of :func:`plan`, in order (the C library reads them by position).
PLAN_FIELDS = ("threaded", "tasks", "task_rows", "stream", "wide", "reduce_cols")

#: :func:`plan`'s tuple with its fields named, for reading a plan in tests and tools.
Plan = namedtuple("Plan", PLAN_FIELDS)


@_cache.jit()
def plan(backward, rows, cols, itemsize):
    """The schedule of one call, from its shape and element size alone.

    Parameters
    ----------
    backward : int
        0 for the forward pass, 1 for the backward pass.
    rows, cols : int
        The problem's shape (``rows >= 1``).
    itemsize : int
        Bytes per stored element (2, 4 or 8).

    Returns
    -------
    tuple of int
        :data:`PLAN_FIELDS`: ``threaded`` (1 to spread the call over
        threads); ``tasks`` and ``task_rows``, the contiguous row ranges a
        call is cut into (forward chunks, backward blocks; the backward sums
        its partial ``dweight``/``dbias`` per block, so only this partition,
        never the thread count, decides its bits); ``stream`` (1 to write
        the output with streaming stores); ``wide`` (backward rows taken in
        pairs); ``reduce_cols`` (columns per task when summing the blocks).

    Examples
    --------
    >>> from numba_ln import cpu
    >>> cpu.plan.py_func(0, 8, 768, 4)
    (0, 1, 8, 0, 0, 0)
    >>> cpu.Plan(*cpu.plan.py_func(1, 4096, 768, 4))
    Plan(threaded=1, tasks=64, task_rows=64, stream=0, wide=0, reduce_cols=512)
    """
    threaded = rows > 1 and rows * cols > SERIAL_MAX_ELEMENTS
    size = rows * cols * itemsize
    if backward:
        wide = cols >= BACKWARD_WIDE_COLS
        stream = wide and size >= STREAM_MIN_BYTES
        task_rows = max(BACKWARD_MIN_BLOCK_ROWS, (rows + BACKWARD_BLOCKS - 1) // BACKWARD_BLOCKS)
        reduce_cols = BACKWARD_REDUCE_COLS
    else:
        wide = False
        stream = size >= STREAM_MIN_BYTES and (itemsize >= 4 or cols >= STREAM_MIN_HALF_COLS)
        task_rows = max((rows + FORWARD_CHUNKS - 1) // FORWARD_CHUNKS,
                        (FORWARD_MIN_CHUNK_ELEMENTS + cols - 1) // cols) if threaded else rows
        reduce_cols = 0
    tasks = (rows + task_rows - 1) // task_rows
    return (int(threaded), tasks, task_rows, int(stream), int(wide), reduce_cols)


_plan = plan.py_func  # the same rule, without a dispatcher call from Python


# --------------------------------------------------------------------------- staging rows

def stage_elements(array):
    """Elements of ``array``'s type in a staging row of ``STREAM_STAGE_BYTES``."""
    return STREAM_STAGE_BYTES // array.itemsize


@overload(stage_elements, inline="always")
def _stage_elements_impl(array):
    elements = STREAM_STAGE_BYTES * 8 // array.dtype.bitwidth
    return lambda array: elements


def new_stage(like, stream):
    """A staging row for ``like``'s storage type: empty unless ``stream``."""
    return np.empty(stage_elements(like) if stream else 0, like.dtype)


def own_stage(stage):
    """A thread's own staging row like ``stage``; ``None`` stays ``None``."""
    return None if stage is None else np.empty_like(stage)


@overload(own_stage, inline="always")
def _own_stage_impl(stage):
    if isinstance(stage, types.NoneType):
        return lambda stage: None
    return lambda stage: np.empty_like(stage)


def residual_stage(s, cols, stage):
    """A row of ``s``'s type to build ``s = x + residual`` in before it is streamed out.

    ``None`` unless there is a residual (``s`` an array) and ``y`` is
    streamed (``stage`` an array): then ``s`` is streamed too, from this row.
    """
    return None if s is None or stage is None else np.empty(cols, s.dtype)


@overload(residual_stage, inline="always")
def _residual_stage_impl(s, cols, stage):
    if isinstance(s, types.NoneType) or isinstance(stage, types.NoneType):
        return lambda s, cols, stage: None
    return lambda s, cols, stage: np.empty(cols, s.dtype)


def row_of(a, r, ld, cols):
    """Row ``r`` of the kernel buffer ``a`` (row stride ``ld``); ``None`` stays ``None``."""
    return None if a is None else a[r * ld:r * ld + cols]


@overload(row_of, inline="always")
def _row_of_impl(a, r, ld, cols):
    if isinstance(a, types.NoneType):
        return lambda a, r, ld, cols: None
    return lambda a, r, ld, cols: a[r * ld:r * ld + cols]


def tail(a, start):
    """``a[start:]``; ``None`` stays ``None``."""
    return None if a is None else a[start:]


@overload(tail, inline="always")
def _tail_impl(a, start):
    if isinstance(a, types.NoneType):
        return lambda a, start: None
    return lambda a, start: a[start:]


@_piece
def _smaller(a, b):
    """``min(a, b)`` of two integers, without compiling numba's generic ``min``."""
    return a if a < b else b


@_piece
def _line_head(y):
    """Elements of ``y`` before its first 64-byte boundary.

    All of them when ``y`` is not aligned to its element size (possible with
    NumPy views): such a ``y`` gets ordinary stores only.
    """
    size = element_bytes(y)
    address = y.ctypes.data
    if address % size:
        return y.shape[0]
    return _smaller(y.shape[0], (-address % LINE_BYTES) // size)


@_piece
def _stream_lines(stage, y, start, count):
    """``y[start:start + count] = stage[:count]`` with streaming stores, whole lines only."""
    for k in range(0, count, line_elements(y)):
        stream_line(y, start + k, stage, k)


@_piece
def _stream_rest(stage, y, start, count):
    """``y[start:start + count] = stage[:count]``: whole lines streamed, the tail stored."""
    lines = count // line_elements(y) * line_elements(y)
    _stream_lines(stage, y, start, lines)
    for k in range(lines, count):
        y[start + k] = stage[k]


# --------------------------------------------------------------------------- forward

@_shared
def _narrow_row_moments(x, scale):
    """``_row_moments`` of a 16-bit row, centered, in one pass over it.

    The row's deviations from a pilot -- the mean of its first
    ``STATS_PILOT_ELEMENTS`` elements, rounded to bfloat16's 8 bits -- are
    summed with their squares, in float32 lanes and float64 between
    ``STATS_BLOCK`` blocks. A deviation of two values of 8 or 11 bits is
    exact with few bits, so the sums round as little as pass one's of the
    row itself, and the variance ``sumsq / n - (sum / n)**2`` loses to
    cancellation the square of the pilot's distance from the mean in
    standard deviations. The pilot is a fraction of one away unless the
    first elements are unlike the rest; a row whose pilot is further than
    ``STATS_PILOT_REACH`` allows is measured again by :func:`_row_moments`.
    Reading the row once instead of twice is what lets a 16-bit forward keep
    up with memory (bench/NOTES.md).
    """
    n = x.shape[0]
    pilot_count = _smaller(n, STATS_PILOT_ELEMENTS)
    pilot = to_compute(x, 0)
    for j in range(pilot_count):
        pilot += load(x, j) * scale
    pilot = bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.float32(pilot / pilot_count)))
    total = 0.0
    sumsq = 0.0
    for start in range(0, n, STATS_BLOCK):
        block = x[start:start + STATS_BLOCK]  # indices from 0: no negative-index fix-up
        part = to_compute(x, 0)
        part_sq = to_compute(x, 0)
        for j in range(block.shape[0]):
            d = _math.scaled_deviation(load(block, j), scale, pilot)
            part += d
            part_sq += d * d
        total += part
        sumsq += part_sq
    offset = total / n
    variance = _math.corrected_variance(offset, sumsq, n)
    if offset * offset > STATS_PILOT_REACH * variance:  # unlike the row: take the two passes
        return _row_moments(x, scale, True)
    mean = pilot + offset
    center = to_compute(x, mean)
    return center, mean - center, variance


@_shared
def _row_moments(x, scale, centered):
    """``(center, correction, variance)`` of the row ``x * scale`` (see ``_math``).

    Without ``centered`` (RMSNorm) the mean is taken to be zero: pass one is
    skipped and ``variance`` is the mean of the squares.

    Pass one adds the row in float64 lanes: the center's rounding is then the
    only error in a float32 row's mean, and it is known exactly
    (``correction``). Pass two adds the squares of
    ``x * scale - center`` in float32 lanes, in blocks of ``STATS_BLOCK``
    whose sums are added in float64: each block's rounding stays near an ulp
    of its sum, and a long row is as accurate as a short one (pass one is
    blocked too, for float64 rows). ``center`` is in the compute type, so that
    pass two and the output subtract it in one operation; the rest is float64.
    The loops are written here, not in helpers: each compiled helper costs a
    first call ~0.3 s.
    """
    n = x.shape[0]
    scale_sum = np.float64(scale)  # its product fuses with the add
    total = 0.0
    if centered:
        for start in range(0, n, STATS_BLOCK):
            block = x[start:start + STATS_BLOCK]  # indices from 0: no negative-index fix-up
            part = 0.0
            for j in range(block.shape[0]):
                part += np.float64(load(block, j)) * scale_sum
            total += part
    mean = total / n
    center = to_compute(x, mean)
    sumsq = 0.0
    for start in range(0, n, STATS_BLOCK):
        block = x[start:start + STATS_BLOCK]
        part_sq = to_compute(x, 0)
        for j in range(block.shape[0]):
            d = _math.scaled_deviation(load(block, j), scale, center)
            part_sq += d * d
        sumsq += part_sq
    correction = mean - center
    return center, correction, _math.corrected_variance(correction, sumsq, n)


def row_moments(x, scale, centered):
    """:func:`_narrow_row_moments` for a centered 16-bit row, else :func:`_row_moments`.

    Chosen by type, so that float32 and float64 kernels never compile the
    16-bit pass (the choice, as a pure-Python stand-in).
    """
    if x.dtype.itemsize == 2 and centered:
        return _narrow_row_moments(x, scale)
    return _row_moments(x, scale, centered)


@overload(row_moments, inline="always")
def _row_moments_impl(x, scale, centered):
    if x.dtype.bitwidth != 16:
        return lambda x, scale, centered: _row_moments(x, scale, centered)

    def narrow(x, scale, centered):
        if centered:
            return _narrow_row_moments(x, scale)
        return _row_moments(x, scale, centered)
    return narrow


@_piece
def _ln_fwd_stats(x, eps, centered):
    """Statistics of one row ``x`` (a 1-D view), from :func:`row_moments`.

    Returns ``(scale, center, correction, rstd_high, rstd_low, mean,
    rstd)``: the first five, in the compute type, are what
    :func:`_normalize` needs (the scaled row's rstd in two parts); the last
    two are reported. A finite row whose sums or squares overflow, or
    whose squares underflow while ``eps`` is too small to hide it, is
    measured again, scaled by a power of two (exact); a row with a NaN or an
    infinity gives NaN statistics. Without ``centered`` (RMSNorm) the mean,
    center and correction are zero and the variance is the mean square.
    """
    scale = 1.0
    center, correction, variance = row_moments(x, to_compute(x, scale), centered)
    if not (math.isfinite(center) and math.isfinite(variance)) or (
            variance + eps < _UNDERFLOW_VARIANCE):
        largest = to_compute(x, 0)  # a power of two bringing max|x| into [0.5, 1) is exact
        for j in range(x.shape[0]):
            magnitude = abs(load(x, j))
            largest = magnitude if magnitude > largest else largest
        if math.isfinite(largest) and largest > 0:
            scale = math.ldexp(1.0, -math.frexp(largest)[1])
            scale = scale if scale < _scale_limit(x) else _scale_limit(x)
            center, correction, variance = row_moments(x, to_compute(x, scale), centered)
        else:  # a NaN or Inf row: NaN statistics (RMSNorm's mean square is inf, not NaN)
            variance = math.nan
    scaled_rstd = _math.scaled_rstd(variance, eps, scale)
    rstd_high = to_compute(x, scaled_rstd)
    return (to_compute(x, scale), center, to_compute(x, correction), rstd_high,
            to_compute(x, scaled_rstd - rstd_high),
            to_compute(x, _math.scaled_mean(center, correction, scale)),
            to_compute(x, scaled_rstd * scale))


#: Below this, squares of the row's deviations may have fallen into the
#: subnormal range and lost their precision (float32's starts at 2**-126).
_UNDERFLOW_VARIANCE = 2.0 ** -60


def _scale_limit(x):
    """The largest scale of a row of ``x``: a power of two its compute type holds, whose
    square (``eps * scale**2``, in float64) does too."""
    return 2.0 ** (511 if x.dtype == np.float64 else 127)


@overload(_scale_limit, inline="always")
def _scale_limit_impl(x):
    limit = 2.0 ** (511 if x.dtype == types.float64 else 127)
    return lambda x: limit


def _normalize(x, y, weight, bias, has_weight, has_bias, scale, center, correction, rstd_high,
               rstd_low, count):
    """``y[j] = (x[j] - mean) * rstd * weight[j] + bias[j]`` for ``j < count``.

    The statistics are :func:`_ln_fwd_stats`'s. 16-bit outputs drop the
    parts of the statistics below float32's precision, which their rounding
    cannot keep (:func:`narrow_affine`). Where
    ``HARDWARE_BFLOAT16``, bfloat16 takes :func:`_normalize_by_lines`.
    """
    _normalize_each(x, y, weight, bias, has_weight, has_bias, scale, center, correction,
                    rstd_high, rstd_low, count)


@_piece
def _normalize_each(x, y, weight, bias, has_weight, has_bias, scale, center, correction,
                    rstd_high, rstd_low, count):
    """:func:`_normalize` an element at a time, rounded by :func:`store`."""
    one = to_compute(x, 1)
    zero = to_compute(x, 0)
    for j in range(count):
        w = weight[j] if has_weight else one
        b = bias[j] if has_bias else zero
        store(y, j, output_value(y, load(x, j), scale, center, correction, rstd_high, rstd_low,
                                 w, b))


def output_value(y, value, scale, center, correction, rstd_high, rstd_low, weight, bias):
    """The output for ``value``: :func:`narrow_affine` where ``y`` holds 16-bit floats,
    ``_math.affine_output`` otherwise (pure-Python stand-in)."""
    if y.dtype.itemsize == 2:
        return (value * scale - center) * (rstd_high * weight) + bias
    return _math.affine_output(value, scale, center, correction, rstd_high, rstd_low, weight,
                               bias)


@overload(output_value, inline="always")
def _output_value_impl(y, value, scale, center, correction, rstd_high, rstd_low, weight, bias):
    if y.dtype.bitwidth == 16:
        return (lambda y, value, scale, center, correction, rstd_high, rstd_low, weight, bias:
                narrow_affine(value, scale, center, rstd_high, weight, bias))
    return (lambda y, value, scale, center, correction, rstd_high, rstd_low, weight, bias:
            _math.affine_output(value, scale, center, correction, rstd_high, rstd_low, weight,
                                bias))


def _normalize_by_lines(x, y, weight, bias, has_weight, has_bias, scale, center, correction,
                        rstd_high, rstd_low, count):
    """:func:`_normalize` for bfloat16 rounded in hardware: whole lines of ``y`` at a time
    (:func:`normalize_bfloat16_line`), then the elements after the last one."""
    lines = count // line_elements(y) * line_elements(y)
    for j in range(0, lines, line_elements(y)):
        normalize_bfloat16_line(x, weight, bias, has_weight, has_bias, scale, center, rstd_high,
                                j, y, j)
    _normalize_each(x[lines:], y[lines:], weight[lines:], bias[lines:], has_weight, has_bias,
                    scale, center, correction, rstd_high, rstd_low, count - lines)


def _by_lines(y):
    """Whether outputs of numba type ``y`` take the line kernel: bfloat16 where
    ``HARDWARE_BFLOAT16``."""
    return y.dtype == types.int16 and HARDWARE_BFLOAT16


@overload(_normalize, jit_options=_PIECE_OPTIONS)
def _normalize_impl(x, y, weight, bias, has_weight, has_bias, scale, center, correction,
                    rstd_high, rstd_low, count):
    return _normalize_by_lines if _by_lines(y) else _normalize


def _normalize_streamed(x, y, start, weight, bias, has_weight, has_bias, scale, center,
                        correction, rstd_high, rstd_low, stage, count):
    """``y[start:start + count]`` = the output for ``x[:count]``, streamed a line at a time.

    ``y[start]`` lies on a 64-byte boundary and ``count`` is a whole number
    of lines. Computed into ``stage`` (in cache), then copied out with
    non-temporal stores; bfloat16 rounded in hardware goes straight to ``y``
    a line at a time instead (:func:`stream_normalized_bfloat16_line`).
    """
    _normalize(x, stage, weight, bias, has_weight, has_bias, scale, center, correction,
               rstd_high, rstd_low, count)
    _stream_lines(stage, y, start, count)


def _normalize_streamed_by_lines(x, y, start, weight, bias, has_weight, has_bias, scale, center,
                                 correction, rstd_high, rstd_low, stage, count):
    """:func:`_normalize_streamed` for bfloat16 rounded in hardware: each line straight to
    ``y`` (:func:`stream_normalized_bfloat16_line`), no stage."""
    for j in range(0, count, line_elements(y)):
        stream_normalized_bfloat16_line(x, weight, bias, has_weight, has_bias, scale, center,
                                        rstd_high, j, y, start + j)


@overload(_normalize_streamed, jit_options=_PIECE_OPTIONS)
def _normalize_streamed_impl(x, y, start, weight, bias, has_weight, has_bias, scale, center,
                             correction, rstd_high, rstd_low, stage, count):
    return _normalize_streamed_by_lines if _by_lines(y) else _normalize_streamed


@_shared
def _normalize_streaming(x, y, y_start, weight, bias, has_weight, has_bias, scale, center,
                         correction, rstd_high, rstd_low, stage, x_next, carried, keep_tail):
    """``_normalize`` of a row into ``y[y_start:]``, written with streaming stores a line at a time.

    Tiles of the row are computed into ``stage`` (in cache) and copied out
    with non-temporal stores. 16-bit rows also prefetch ``x_next`` (a row
    ``PREFETCH_AHEAD_BYTES`` ahead) into L2, a tile's worth of lines per
    tile: their arithmetic per byte is twice float32's, and without the
    prefetch memory idles while a tile is computed.

    The elements before the row's first 64-byte boundary (its head) and
    after its last whole line (its tail) share lines with the rows beside
    it. Where rows follow each other in ``y``, such a line is written once,
    whole, with a streaming store: ``stage[:carried]`` holds the previous
    row's tail, which this row's head completes, and with ``keep_tail`` this
    row's tail is left in ``stage[:count]`` for the next row, ``count``
    returned. Other heads and tails get ordinary stores (the lines of another
    thread's rows may share them). An ordinary store into a line read from
    memory would hold up every store behind it for as long as the read.
    """
    cols = x.shape[0]
    row = y[y_start:y_start + cols]
    head = _line_head(row)
    joined = carried > 0 and carried + head == line_elements(y)
    if not joined:  # the previous row's tail alone: ordinary stores
        for k in range(carried):
            y[y_start - carried + k] = stage[k]
    _normalize(x, stage[carried:] if joined else row, weight, bias, has_weight, has_bias, scale,
               center, correction, rstd_high, rstd_low, head)
    if joined:
        stream_line(y, y_start - carried, stage, 0)
    start = head
    tile = np.int64(stage_elements(stage))  # int64 like every other count: one compilation
    while start + line_elements(y) <= cols:
        count = _smaller(tile, (cols - start) // line_elements(y) * line_elements(y))
        _normalize_streamed(x[start:], row, start, weight[start:], bias[start:], has_weight,
                            has_bias, scale, center, correction, rstd_high, rstd_low, stage,
                            count)
        if element_bytes(x) == 2:
            for k in range(0, count, line_elements(x)):
                prefetch_line(x_next, start + k)
        start += count
    if element_bytes(x) == 2:  # the lines no tile asked for: the head's and the last
        if head > 0:
            prefetch_line(x_next, 0)
        prefetch_line(x_next, cols - 1)
    count = cols - start
    _normalize(x[start:], stage, weight[start:], bias[start:], has_weight, has_bias, scale,
               center, correction, rstd_high, rstd_low, count)
    if keep_tail:
        return count
    for k in range(count):
        row[start + k] = stage[k]
    return np.int64(0)


@_piece
def _add_residual(x, residual, s, s_stage):
    """``s = x + residual`` (rounded to ``s``'s type); returns the row to normalize.

    That is ``s`` itself, read back from cache, or -- when ``s_stage`` is
    an array, for calls large enough to stream -- ``s_stage``, which holds
    the sum while ``s`` receives it with streaming stores, so ``s`` is never
    read for ownership.
    """
    cols = x.shape[0]
    if s_stage is None:
        for j in range(cols):
            store(s, j, load(x, j) + load(residual, j))
        return s
    for j in range(cols):
        store(s_stage, j, load(x, j) + load(residual, j))
    head = _line_head(s)
    for j in range(head):
        s[j] = s_stage[j]
    _stream_rest(s_stage[head:], s, head, cols - head)
    return s_stage


def source_row(x, residual, s, s_stage):
    """The row a forward pass normalizes: ``x``, or ``s = x + residual`` (``_add_residual``)."""
    return x if residual is None else _add_residual(x, residual, s, s_stage)


@overload(source_row, inline="always")
def _source_row_impl(x, residual, s, s_stage):
    # Chosen by type: the two rows may have different dtypes (a float32 residual).
    if isinstance(residual, types.NoneType):
        return lambda x, residual, s, s_stage: x
    return lambda x, residual, s, s_stage: _add_residual(x, residual, s, s_stage)


@_kernel
def ln_fwd_rows(x, ldx, residual, ldr, weight, bias, has_weight, has_bias, y, ldy, s, lds,
                mean, rstd, rows, cols, eps, centered, stage):
    """Forward pass of ``rows`` rows on the calling thread.

    ``mean`` and ``rstd`` have one element per row, or none when that
    statistic is not wanted. ``centered`` is False for RMSNorm (no mean; the
    caller passes no bias). ``residual`` and ``s`` are ``None``, or buffers
    (row strides ``ldr`` and ``lds``) of one dtype: then ``s = x +
    residual`` is stored and normalized. ``stage`` is ``None`` for ordinary
    stores, or a staging row (:func:`new_stage`) to write ``y`` (and ``s``)
    with streaming stores; the values are the same bits either way.
    """
    x, residual, weight, bias, y, s = (unowned(x), unowned(residual), unowned(weight),
                                       unowned(bias), unowned(y), unowned(s))
    mean, rstd = unowned(mean), unowned(rstd)
    eps = to_compute(x, eps)  # as the C library's float32 functions receive it
    keep_mean = mean.shape[0] > 0
    keep_rstd = rstd.shape[0] > 0
    s_stage = residual_stage(s, cols, stage)
    carried = np.int64(0)  # elements of y in stage[:carried]: see _normalize_streaming
    row_bytes = cols * element_bytes(x)
    ahead_rows = _smaller(rows, (PREFETCH_AHEAD_BYTES + row_bytes - 1) // row_bytes)
    for r in range(rows):
        x_row = x[r * ldx:r * ldx + cols]
        src = source_row(x_row, row_of(residual, r, ldr, cols), row_of(s, r, lds, cols),
                         s_stage)
        scale, center, correction, rstd_high, rstd_low, row_mean, row_rstd = _ln_fwd_stats(
            src, eps, centered)
        if stage is None:
            _normalize(src, y[r * ldy:r * ldy + cols], weight, bias, has_weight, has_bias,
                       scale, center, correction, rstd_high, rstd_low, cols)
        else:
            ahead = _smaller(r + ahead_rows, rows - 1) * ldx
            carried = _normalize_streaming(src, y, r * ldy, weight, bias, has_weight, has_bias,
                                           scale, center, correction, rstd_high, rstd_low,
                                           unowned(stage), x[ahead:ahead + cols], carried,
                                           ldy == cols and r + 1 < rows)
        if keep_mean:
            mean[r] = row_mean
        if keep_rstd:
            rstd[r] = row_rstd
    if stage is not None:
        stream_fence()


@_parallel_kernel
def ln_fwd_parallel(rows_kernel, x, ldx, residual, ldr, weight, bias, has_weight, has_bias, y,
                    ldy, s, lds, mean, rstd, rows, cols, eps, centered, stage, tasks,
                    task_rows):
    """Forward pass, ``tasks`` chunks of ``task_rows`` rows across threads.

    Each chunk calls the compiled ``ln_fwd_rows`` at address ``rows_kernel``
    (:func:`rows_kernel`) with a staging row of its own.
    """
    as_mutable = _native.as_mutable
    for task in prange(tasks):
        first = task * task_rows
        count = _smaller(rows, first + task_rows) - first
        _native.call(rows_kernel, (
            as_mutable(x[first * ldx:]), ldx, as_mutable(tail(residual, first * ldr)),
            ldr, as_mutable(weight), as_mutable(bias), has_weight, has_bias, y[first * ldy:],
            ldy, tail(s, first * lds), lds, mean[first:], rstd[first:], count, cols, eps,
            centered, own_stage(stage)))


@functools.lru_cache(maxsize=None)  # numba types are slow to build: once per variant
def rows_kernel(storage, compute, streaming, residual=None):
    """The address of ``ln_fwd_rows`` for writable, aligned arrays of these dtypes.

    What ``ln_fwd_parallel`` and the C library call; ``streaming`` picks the
    variant (``stage`` an array, or ``None``), ``residual`` the dtype of
    ``residual`` and ``s`` (``None``: no residual).
    """
    array = _native.array
    stage_type = array(storage) if streaming else types.none
    residual_type = types.none if residual is None else array(residual)
    return _native.address(ln_fwd_rows, (
        array(storage), types.int64, residual_type, types.int64, array(compute),
        array(compute), types.boolean, types.boolean, array(storage), types.int64,
        residual_type, types.int64, array(compute), array(compute), types.int64, types.int64,
        types.float64, types.boolean, stage_type))


def ln_fwd(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd, rows, cols, eps,
           centered=True, residual=None, ldr=0, s=None, lds=0):
    """Forward pass of ``rows >= 1`` rows, scheduled by :func:`plan`."""
    threaded, tasks, task_rows, stream, _, _ = _plan(0, rows, cols, y.itemsize)
    stage = new_stage(y, True) if stream else None
    if threaded and _threading.parallel_allowed():
        kernel = rows_kernel(x.dtype, mean.dtype, stream, None if s is None else s.dtype)
        ln_fwd_parallel(kernel, x, ldx, residual, ldr, weight, bias, has_weight, has_bias, y,
                        ldy, s, lds, mean, rstd, rows, cols, eps, centered, stage, tasks,
                        task_rows)
    else:
        ln_fwd_rows(x, ldx, residual, ldr, weight, bias, has_weight, has_bias, y, ldy, s, lds,
                    mean, rstd, rows, cols, eps, centered, stage)


# --------------------------------------------------------------------------- backward

@_piece
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


@_piece
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


@_shared
def _ln_bwd_dx_part(dy, x, mean, rstd, weight, has_weight, dresidual, dx, mean_g, mean_gxhat,
                    count):
    """``dx[j]`` for ``j < count``, plus ``dresidual[j]`` unless that is ``None``.

    Shared, not inlined: inlined copies of this loop rounded its formula
    differently, and which copy ran depended on where the arrays lay.
    """
    one = to_compute(x, 1)
    for j in range(count):
        w = weight[j] if has_weight else one
        xhat = _math.normalized(load(x, j), mean, rstd)
        grad = _math.grad_input(w * load(dy, j), xhat, rstd, mean_g, mean_gxhat)
        if dresidual is None:
            store(dx, j, grad)
        else:
            store(dx, j, grad + load(dresidual, j))


@_piece
def _ln_bwd_dx(dy, x, mean, rstd, weight, has_weight, centered, dresidual, dx, sum_g,
               sum_gxhat, stage):
    """Pass two over a row: ``dx`` from pass one's sums.

    Without ``centered`` (RMSNorm) the ``mean(g)`` term is absent. With a
    non-empty ``stage`` it is written with streaming stores, as the
    forward writes ``y`` (``_normalize_streaming``): tiles computed into
    ``stage``, copied out a 64-byte line at a time, the ragged ends stored.
    """
    cols = x.shape[0]
    n = to_compute(x, cols)
    mean_g = _math.mean_offset(sum_g, n) if centered else n - n
    mean_gxhat = _math.mean_offset(sum_gxhat, n)
    if stage is None or not stage.shape[0]:
        _ln_bwd_dx_part(dy, x, mean, rstd, weight, has_weight, dresidual, dx, mean_g,
                        mean_gxhat, cols)
        return
    start = _line_head(dx)
    _ln_bwd_dx_part(dy, x, mean, rstd, weight, has_weight, dresidual, dx, mean_g, mean_gxhat,
                    start)
    tile = np.int64(stage_elements(stage))  # int64 like every other count: one compilation
    while start + tile <= cols:
        _ln_bwd_dx_part(dy[start:], x[start:], mean, rstd, weight[start:], has_weight,
                        tail(dresidual, start), stage, mean_g, mean_gxhat, tile)
        _stream_lines(stage, dx, start, tile)
        start += tile
    _ln_bwd_dx_part(dy[start:], x[start:], mean, rstd, weight[start:], has_weight,
                    tail(dresidual, start), stage, mean_g, mean_gxhat, cols - start)
    _stream_rest(stage, dx, start, cols - start)


@_kernel
def ln_bwd_reduce(part, out, first_col, stop_col):
    """``out[j] = sum over blocks of part[block, j]``, blocks in order, for a column range."""
    sums = out[first_col:stop_col]
    sums[:] = 0
    for block in range(part.shape[0]):
        row = part[block, first_col:stop_col]  # a contiguous row: one vector loop
        for j in range(row.shape[0]):
            sums[j] += row[j]


@_kernel
def ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, centered, dresidual,
                  lddres, dx, lddx, dweight_part, dbias_part, dweight, dbias, rows, cols,
                  block_rows, first_block, stop_block, stage):
    """Blocks ``first_block .. stop_block - 1`` of ``block_rows`` rows: ``dx`` and partial sums.

    Without ``centered`` (RMSNorm) ``mean`` may be empty: rows are taken to
    have mean zero and ``mean(g)`` drops out of ``dx`` (``dbias_part`` is
    still summed; the caller ignores it). ``dresidual`` is ``None``, or a
    buffer (row stride ``lddres``) added into ``dx``.

    ``dweight_part``/``dbias_part`` are ``(blocks, cols)``, one row per
    block. Non-empty ``dweight``/``dbias`` also receive the sums of all the
    blocks (a whole backward pass on the calling thread); a threaded pass
    gives empty ones and sums the blocks with ``ln_bwd_reduce`` once every
    block is done. ``stage`` is ``None`` for narrow rows; for wide rows (the
    plan's ``wide``) an array, empty for ordinary stores or a staging row to
    stream ``dx``. Wide rows go through pass one in pairs; a row left over
    goes through the same loop beside zero gradients, so its sums are the
    bits it would get in a pair.
    """
    dy, x, dresidual, dx = unowned(dy), unowned(x), unowned(dresidual), unowned(dx)
    mean, rstd, weight = unowned(mean), unowned(rstd), unowned(weight)
    dweight_part, dbias_part = unowned(dweight_part), unowned(dbias_part)
    dweight, dbias = unowned(dweight), unowned(dbias)
    zero = to_compute(x, 0)
    for block in range(first_block, stop_block):
        dweight_acc = dweight_part[block]
        dbias_acc = dbias_part[block]
        dweight_acc[:] = 0
        dbias_acc[:] = 0
        r = block * block_rows
        stop = _smaller(rows, r + block_rows)
        if stage is not None:
            while r + 1 < stop:
                s = r + 1
                dy0, x0 = dy[r * lddy:r * lddy + cols], x[r * ldx:r * ldx + cols]
                dy1, x1 = dy[s * lddy:s * lddy + cols], x[s * ldx:s * ldx + cols]
                mean0 = mean[r] if centered else zero
                mean1 = mean[s] if centered else zero
                sum_g0, sum_gxhat0, sum_g1, sum_gxhat1 = _ln_bwd_pair_sums(
                    dy0, x0, mean0, rstd[r], dy1, x1, mean1, rstd[s], weight,
                    has_weight, dweight_acc, dbias_acc)
                _ln_bwd_dx(dy0, x0, mean0, rstd[r], weight, has_weight, centered,
                           row_of(dresidual, r, lddres, cols), dx[r * lddx:r * lddx + cols],
                           sum_g0, sum_gxhat0, stage)
                _ln_bwd_dx(dy1, x1, mean1, rstd[s], weight, has_weight, centered,
                           row_of(dresidual, s, lddres, cols), dx[s * lddx:s * lddx + cols],
                           sum_g1, sum_gxhat1, stage)
                r += 2
        while r < stop:
            dy_row, x_row = dy[r * lddy:r * lddy + cols], x[r * ldx:r * ldx + cols]
            row_mean = mean[r] if centered else zero
            if stage is None:
                sum_g, sum_gxhat = _ln_bwd_sums(dy_row, x_row, row_mean, rstd[r], weight,
                                                has_weight, dweight_acc, dbias_acc)
            else:  # a wide row left alone (at most one a block): the pair loop, so that
                # its sums do not depend on its neighbours, beside a row adding nothing
                no_grad = np.zeros(cols, dy.dtype)
                sum_g, sum_gxhat, _, _ = _ln_bwd_pair_sums(
                    dy_row, x_row, row_mean, rstd[r], no_grad, x_row, row_mean, rstd[r],
                    weight, has_weight, dweight_acc, dbias_acc)
            _ln_bwd_dx(dy_row, x_row, row_mean, rstd[r], weight, has_weight, centered,
                       row_of(dresidual, r, lddres, cols), dx[r * lddx:r * lddx + cols],
                       sum_g, sum_gxhat, stage)
            r += 1
    if stage is not None:
        stream_fence()
    if dweight.shape[0]:
        first_col = np.int64(0)  # the int64 every caller passes: one compilation
        ln_bwd_reduce(dweight_part, dweight, first_col, cols)
        ln_bwd_reduce(dbias_part, dbias, first_col, cols)


@_parallel_kernel
def ln_bwd_parallel(blocks_kernel, reduce_kernel, phase, tasks, dy, lddy, x, ldx, mean, rstd,
                    weight, has_weight, centered, dresidual, lddres, dx, lddx, dweight_part,
                    dbias_part, dweight, dbias, rows, cols, block_rows, stage, reduce_cols):
    """One phase of a threaded backward pass, ``tasks`` tasks across threads.

    Phase 0: the blocks (``ln_bwd_blocks``), one per task. Phase 1: the
    blocks' sums (``ln_bwd_reduce``), ``reduce_cols`` columns per task. The
    two are one kernel, launched twice, so numba builds one parallel loop.
    The kernels are called at the addresses :func:`blocks_kernel` gives.
    """
    as_mutable = _native.as_mutable
    dy, x, mean, rstd, weight, dresidual = (
        as_mutable(dy), as_mutable(x), as_mutable(mean), as_mutable(rstd), as_mutable(weight),
        as_mutable(dresidual))
    for task in prange(tasks):
        first = np.int64(task)
        if phase == 0:
            _native.call(blocks_kernel, (
                dy, lddy, x, ldx, mean, rstd, weight, has_weight, centered, dresidual, lddres,
                dx, lddx, dweight_part, dbias_part, dweight[:0], dbias[:0], rows, cols,
                block_rows, first, first + 1, own_stage(stage)))
        else:
            first_col = first * reduce_cols
            stop_col = _smaller(cols, first_col + reduce_cols)
            _native.call(reduce_kernel, (dweight_part, dweight, first_col, stop_col))
            _native.call(reduce_kernel, (dbias_part, dbias, first_col, stop_col))


@functools.lru_cache(maxsize=None)  # numba types are slow to build: once per variant
def blocks_kernel(storage, compute, wide, dresidual=False):
    """The addresses of ``ln_bwd_blocks`` and ``ln_bwd_reduce`` for writable, aligned arrays.

    What ``ln_bwd_parallel`` and the C library call; ``wide`` picks the
    variant of ``ln_bwd_blocks`` (``stage`` an array, or ``None``),
    ``dresidual`` whether that argument is an array.
    """
    array, int64 = _native.array, types.int64
    stage_type = array(storage) if wide else types.none
    blocks = _native.address(ln_bwd_blocks, (
        array(storage), int64, array(storage), int64, array(compute), array(compute),
        array(compute), types.boolean, types.boolean,
        array(storage) if dresidual else types.none, int64, array(storage), int64,
        array(compute, 2),
        array(compute, 2), array(compute), array(compute), int64, int64, int64, int64, int64,
        stage_type))
    return blocks, _native.address(ln_bwd_reduce, (array(compute, 2), array(compute), int64,
                                                   int64))


def backward_stage(dx, wide, stream):
    """The ``stage`` argument of the backward kernels for the plan's ``wide`` and ``stream``."""
    return new_stage(dx, stream) if wide else None


def ln_bwd(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
           dweight, dbias, rows, cols, centered=True, dresidual=None, lddres=0):
    """Backward pass of ``rows >= 1`` rows, scheduled by :func:`plan`."""
    threaded, blocks, block_rows, stream, wide, reduce_cols = _plan(1, rows, cols, dx.itemsize)
    stage = backward_stage(dx, wide, stream)
    dweight_part = np.empty((blocks, cols), dweight.dtype)
    dbias_part = np.empty((blocks, cols), dbias.dtype)
    if threaded and _threading.parallel_allowed():
        kernels = blocks_kernel(dx.dtype, dweight.dtype, wide, dresidual is not None)
        for phase, tasks in ((0, blocks), (1, (cols + reduce_cols - 1) // reduce_cols)):
            ln_bwd_parallel(*kernels, phase, tasks, dy, lddy, x, ldx, mean, rstd, weight,
                            has_weight, centered, dresidual, lddres, dx, lddx, dweight_part,
                            dbias_part, dweight, dbias, rows, cols, block_rows, stage,
                            reduce_cols)
    else:
        ln_bwd_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, centered, dresidual,
                      lddres, dx, lddx, dweight_part, dbias_part, dweight, dbias, rows, cols,
                      block_rows, 0, blocks, stage)


_cache.discard_if_stale(ln_fwd_rows)
