"""CUDA kernels: how rows map onto warps and blocks.

Every kernel sees the problem in the layout the CPU kernels see (``cpu.py``):
1-D contiguous buffers and a row stride (``ldx``: row ``r`` starts at
``x[r * ldx]``, ``ldx >= cols``). ``x``, ``y``, ``dy`` and ``dx`` are in the
storage dtype (float16, float32 or float64); ``weight``, ``bias``, ``mean``,
``rstd`` and the partial gradient rows are in the compute dtype (float32 for
float16). Values are widened to the compute dtype as they are loaded, so the
``_math`` functions -- the same ones the CPU kernels inline -- never see a
float16 (under numba's CUDA simulator they run as CPU functions, which have
no float16).

Row reductions are fixed-order shared-memory trees (``_group_sum``), never
warp shuffles and never atomics: the simulator runs these very kernels, and
the results are bit-identical from run to run.

Schedules (``plan`` picks one, and its launch configuration, in one place):

1. ``warp_per_row`` -- rows of up to ``32 * CUDA_WARP_ITEMS_PER_THREAD``
   elements. A group of ``lanes`` threads (a warp, or a power-of-two part of
   one for rows shorter than 32) owns a row; each thread holds its elements
   in registers (a fully unrolled local array), so the row is read from
   device memory once.
2. ``block_per_row_shared`` -- longer rows that fit in
   ``CUDA_SHARED_CACHE_BYTES``: a block owns a row and caches it in dynamic
   shared memory.
3. ``block_per_row_streaming`` -- rows too long to cache: a block owns a row
   and re-reads it from global memory (L2) for each pass.

The forward kernels compute the exact shifted two-pass statistics of
``_math`` from the cached copy. The backward kernels compute ``dx`` and, in
the same read of ``x`` and ``dy``, each block's partial ``dweight``/``dbias``
row; ``_ln_bwd_reduce_partials`` then sums the partial rows in block order.

Kernels are built per compute type and per tunable set (``kernels``): the
register-cache length and the static shared-memory sizes are compile-time
constants.
"""

import functools
from typing import NamedTuple

import numpy as np
from numba import boolean, cuda, float32, float64, from_dtype, int64

from . import _config, _math

#: Threads in a warp; a warp-per-row group never spans more than one.
WARP_SIZE = 32

_COMPUTE = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


@cuda.jit(device=True, inline="always")
def _group_sum(buf, tid, lane, lanes, value):
    """Sum ``value`` over a group of ``lanes`` threads; every member gets the total.

    The group is threads ``tid - lane .. tid - lane + lanes - 1`` of the
    block; ``lanes`` is a power of two. A shared-memory tree, in a fixed
    order. Every thread of the block must call it (it synchronizes the
    block), with the same ``lanes``.
    """
    buf[tid] = value
    cuda.syncthreads()
    width = lanes // 2
    while width > 0:
        if lane < width:
            buf[tid] += buf[tid + width]
        cuda.syncthreads()
        width //= 2
    total = buf[tid - lane]
    cuda.syncthreads()  # all have read the total before ``buf`` is reused
    return total


@cuda.jit(device=True, inline="always")
def _group_sum2(buf, buf2, tid, lane, lanes, first, second):
    """Two :func:`_group_sum` at once (one set of barriers for both)."""
    buf[tid] = first
    buf2[tid] = second
    cuda.syncthreads()
    width = lanes // 2
    while width > 0:
        if lane < width:
            buf[tid] += buf[tid + width]
            buf2[tid] += buf2[tid + width]
        cuda.syncthreads()
        width //= 2
    first_total = buf[tid - lane]
    second_total = buf2[tid - lane]
    cuda.syncthreads()
    return first_total, second_total


class Kernels(NamedTuple):
    """The CUDA kernels for one compute type and one set of tunables."""

    fwd_warp_per_row: object
    fwd_block_per_row_shared: object
    fwd_block_per_row_streaming: object
    bwd_warp_per_row: object
    bwd_block_per_row_shared: object
    bwd_block_per_row_streaming: object
    bwd_reduce_partials: object


@functools.cache
def kernels(compute_dtype, items, warp_threads, row_threads):
    """Build (once) the kernels for a compute dtype and a set of tunables.

    Parameters
    ----------
    compute_dtype : numpy.dtype
        float32 (for float16 and float32 data) or float64.
    items : int
        Register-cached elements per thread of the warp-per-row kernels.
    warp_threads, row_threads : int
        Threads per block of the warp-per-row kernels, and the most threads
        per block of the block-per-row kernels (static shared-memory sizes).

    Returns
    -------
    Kernels
        numba CUDA dispatchers; each compiles on first launch per dtype.
    """
    compute = _COMPUTE[np.dtype(compute_dtype)]
    jit = cuda.jit(fastmath=_config.CUDA_FASTMATH)

    # 1. Forward, warp per row. Rows: cols <= 32 * items. A group of `lanes`
    #    threads owns a row (several groups, hence rows, per block); thread
    #    `lane` holds elements lane, lane + lanes, ... in registers (coalesced
    #    loads). Reduces with a shared-memory tree over the group's lanes.
    @jit
    def _ln_fwd_warp_per_row(x, ldx, weight, bias, has_weight, has_bias, y, ldy,
                             mean, rstd, rows, cols, eps, lanes):
        buf = cuda.shared.array(warp_threads, compute)
        cache = cuda.local.array(items, compute)
        tid = cuda.threadIdx.x
        lane = tid % lanes
        groups = cuda.blockDim.x // lanes
        n = compute(cols)
        r = cuda.blockIdx.x * groups + tid // lanes
        active = r < rows
        shift = compute(x[r * ldx]) if active else compute(0)
        total = compute(0)
        for k in range(items):
            j = lane + k * lanes
            if active and j < cols:
                value = compute(x[r * ldx + j])
                cache[k] = value
                total += _math.shifted(value, shift)
        offset = _math.mean_offset(_group_sum(buf, tid, lane, lanes, total), n)
        sumsq = compute(0)
        for k in range(items):
            j = lane + k * lanes
            if active and j < cols:
                deviation = _math.centered(cache[k], shift, offset)
                sumsq += deviation * deviation
        row_rstd = _math.reciprocal_std(_group_sum(buf, tid, lane, lanes, sumsq),
                                        n, eps)
        if active:
            for k in range(items):
                j = lane + k * lanes
                if j < cols:
                    w = weight[j] if has_weight else compute(1)
                    b = bias[j] if has_bias else compute(0)
                    deviation = _math.centered(cache[k], shift, offset)
                    y[r * ldy + j] = _math.normalize_affine(deviation, row_rstd, w, b)
            if lane == 0:
                mean[r] = _math.row_mean(shift, offset)
                rstd[r] = row_rstd

    # 2. and 3. Forward, block per row. Rows: longer than a warp caches.
    #    `cached` (a compile-time constant): the row is cached in dynamic
    #    shared memory (cols * itemsize <= CUDA_SHARED_CACHE_BYTES) -- thread
    #    t caches (and alone reads back) elements t, t + threads, ...,
    #    coalesced and bank-conflict free -- or, for rows too long to cache,
    #    each pass re-reads the row from global memory (three reads, mostly
    #    from L2). Block-wide shared-memory tree.
    def _fwd_block_per_row(cached):
        def kernel(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd, rows,
                   cols, eps):
            buf = cuda.shared.array(row_threads, compute)
            cache = cuda.shared.array(0, compute)  # 0 bytes when not `cached`
            tid = cuda.threadIdx.x
            threads = cuda.blockDim.x
            n = compute(cols)
            for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
                shift = compute(x[r * ldx])
                total = compute(0)
                for j in range(tid, cols, threads):
                    value = compute(x[r * ldx + j])
                    if cached:
                        cache[j] = value
                    total += _math.shifted(value, shift)
                offset = _math.mean_offset(_group_sum(buf, tid, tid, threads, total), n)
                sumsq = compute(0)
                for j in range(tid, cols, threads):
                    value = cache[j] if cached else compute(x[r * ldx + j])
                    deviation = _math.centered(value, shift, offset)
                    sumsq += deviation * deviation
                row_rstd = _math.reciprocal_std(_group_sum(buf, tid, tid, threads, sumsq),
                                                n, eps)
                for j in range(tid, cols, threads):
                    w = weight[j] if has_weight else compute(1)
                    b = bias[j] if has_bias else compute(0)
                    value = cache[j] if cached else compute(x[r * ldx + j])
                    deviation = _math.centered(value, shift, offset)
                    y[r * ldy + j] = _math.normalize_affine(deviation, row_rstd, w, b)
                if tid == 0:
                    mean[r] = _math.row_mean(shift, offset)
                    rstd[r] = row_rstd
        # A name of its own in profiles and PTX.
        kernel.__name__ = kernel.__qualname__ = (
            "_ln_fwd_block_per_row_" + ("shared" if cached else "streaming"))
        return jit(kernel)

    _ln_fwd_block_per_row_shared = _fwd_block_per_row(True)
    _ln_fwd_block_per_row_streaming = _fwd_block_per_row(False)

    # 4. Backward, warp per row. Rows: as kernel 1. A group owns a row; each
    #    thread holds its elements' xhat and w * dy in registers between the
    #    row sums and dx, and accumulates dy * xhat and dy for its columns
    #    over all the rows its group serves (registers too). At the end the
    #    groups' accumulators are summed in group order into the block's
    #    partial row. Row sums: a paired shared-memory tree over the group.
    @jit
    def _ln_bwd_warp_per_row(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                             dweight_part, dbias_part, rows, cols, lanes):
        buf = cuda.shared.array(warp_threads, compute)
        buf2 = cuda.shared.array(warp_threads, compute)
        xhat_cache = cuda.local.array(items, compute)
        g_cache = cuda.local.array(items, compute)
        dweight_acc = cuda.local.array(items, compute)
        dbias_acc = cuda.local.array(items, compute)
        tid = cuda.threadIdx.x
        lane = tid % lanes
        groups = cuda.blockDim.x // lanes
        weight_cache = cuda.local.array(items, compute)
        for k in range(items):
            j = lane + k * lanes
            weight_cache[k] = weight[j] if has_weight and j < cols else compute(1)
            dweight_acc[k] = compute(0)
            dbias_acc[k] = compute(0)
        n = compute(cols)
        base = cuda.blockIdx.x * groups
        while base < rows:
            r = base + tid // lanes
            active = r < rows
            row_mean = mean[r] if active else compute(0)
            row_rstd = rstd[r] if active else compute(0)
            sum_g = compute(0)
            sum_gxhat = compute(0)
            for k in range(items):
                j = lane + k * lanes
                if active and j < cols:
                    grad = compute(dy[r * lddy + j])
                    xhat = _math.normalized(compute(x[r * ldx + j]), row_mean, row_rstd)
                    g = weight_cache[k] * grad
                    xhat_cache[k] = xhat
                    g_cache[k] = g
                    sum_g += g
                    sum_gxhat += g * xhat
                    dweight_acc[k] += grad * xhat
                    dbias_acc[k] += grad
            sum_g, sum_gxhat = _group_sum2(buf, buf2, tid, lane, lanes, sum_g, sum_gxhat)
            mean_g = _math.mean_offset(sum_g, n)
            mean_gxhat = _math.mean_offset(sum_gxhat, n)
            if active:
                for k in range(items):
                    j = lane + k * lanes
                    if j < cols:
                        dx[r * lddx + j] = _math.grad_input(g_cache[k], xhat_cache[k],
                                                            row_rstd, mean_g, mean_gxhat)
            base += cuda.gridDim.x * groups
        part = cuda.blockIdx.x * cols
        for k in range(items):
            buf[tid] = dweight_acc[k]
            buf2[tid] = dbias_acc[k]
            cuda.syncthreads()
            j = lane + k * lanes
            if tid < lanes and j < cols:
                dweight_sum = compute(0)
                dbias_sum = compute(0)
                for group in range(groups):
                    dweight_sum += buf[group * lanes + lane]
                    dbias_sum += buf2[group * lanes + lane]
                dweight_part[part + j] = dweight_sum
                dbias_part[part + j] = dbias_sum
            cuda.syncthreads()

    # 5. Backward, block per row, shared memory. Rows: as kernel 2 with four
    #    cached values per element. Dynamic shared memory holds
    #    [xhat | w * dy | dweight acc | dbias acc], `cols` each; thread t owns
    #    elements t, t + threads, ... of all four, so only the row sums need
    #    barriers (a paired block-wide tree). The accumulators run over the
    #    block's rows and become its partial row.
    @jit
    def _ln_bwd_block_per_row_shared(dy, lddy, x, ldx, mean, rstd, weight, has_weight,
                                     dx, lddx, dweight_part, dbias_part, rows, cols):
        buf = cuda.shared.array(row_threads, compute)
        buf2 = cuda.shared.array(row_threads, compute)
        cache = cuda.shared.array(0, compute)
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        for j in range(tid, cols, threads):
            cache[2 * cols + j] = compute(0)
            cache[3 * cols + j] = compute(0)
        n = compute(cols)
        for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            row_mean = mean[r]
            row_rstd = rstd[r]
            sum_g = compute(0)
            sum_gxhat = compute(0)
            for j in range(tid, cols, threads):
                grad = compute(dy[r * lddy + j])
                xhat = _math.normalized(compute(x[r * ldx + j]), row_mean, row_rstd)
                g = (weight[j] if has_weight else compute(1)) * grad
                cache[j] = xhat
                cache[cols + j] = g
                sum_g += g
                sum_gxhat += g * xhat
                cache[2 * cols + j] += grad * xhat
                cache[3 * cols + j] += grad
            sum_g, sum_gxhat = _group_sum2(buf, buf2, tid, tid, threads, sum_g, sum_gxhat)
            mean_g = _math.mean_offset(sum_g, n)
            mean_gxhat = _math.mean_offset(sum_gxhat, n)
            for j in range(tid, cols, threads):
                dx[r * lddx + j] = _math.grad_input(cache[cols + j], cache[j], row_rstd,
                                                    mean_g, mean_gxhat)
        part = cuda.blockIdx.x * cols
        for j in range(tid, cols, threads):
            dweight_part[part + j] = cache[2 * cols + j]
            dbias_part[part + j] = cache[3 * cols + j]

    # 6. Backward, block per row, streaming. Rows: too long for kernel 5's
    #    cache. Reads x and dy twice (row sums, then dx); the accumulators are
    #    the block's own partial row in global memory (thread t owns columns
    #    t, t + threads, ...: no two threads touch one element).
    @jit
    def _ln_bwd_block_per_row_streaming(dy, lddy, x, ldx, mean, rstd, weight,
                                        has_weight, dx, lddx, dweight_part, dbias_part,
                                        rows, cols):
        buf = cuda.shared.array(row_threads, compute)
        buf2 = cuda.shared.array(row_threads, compute)
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        part = cuda.blockIdx.x * cols
        for j in range(tid, cols, threads):
            dweight_part[part + j] = compute(0)
            dbias_part[part + j] = compute(0)
        n = compute(cols)
        for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            row_mean = mean[r]
            row_rstd = rstd[r]
            sum_g = compute(0)
            sum_gxhat = compute(0)
            for j in range(tid, cols, threads):
                grad = compute(dy[r * lddy + j])
                xhat = _math.normalized(compute(x[r * ldx + j]), row_mean, row_rstd)
                g = (weight[j] if has_weight else compute(1)) * grad
                sum_g += g
                sum_gxhat += g * xhat
            sum_g, sum_gxhat = _group_sum2(buf, buf2, tid, tid, threads, sum_g, sum_gxhat)
            mean_g = _math.mean_offset(sum_g, n)
            mean_gxhat = _math.mean_offset(sum_gxhat, n)
            for j in range(tid, cols, threads):
                grad = compute(dy[r * lddy + j])
                xhat = _math.normalized(compute(x[r * ldx + j]), row_mean, row_rstd)
                g = (weight[j] if has_weight else compute(1)) * grad
                dx[r * lddx + j] = _math.grad_input(g, xhat, row_rstd, mean_g, mean_gxhat)
                dweight_part[part + j] += grad * xhat
                dbias_part[part + j] += grad

    # 7. Backward, second stage: one thread per column sums the `blocks`
    #    partial rows in block order (coalesced across threads) and stores
    #    dweight/dbias in the parameter dtype.
    @jit
    def _ln_bwd_reduce_partials(dweight_part, dbias_part, blocks, cols, dweight, dbias):
        j = cuda.grid(1)
        if j < cols:
            dweight_sum = compute(0)
            dbias_sum = compute(0)
            for block in range(blocks):
                dweight_sum += dweight_part[block * cols + j]
                dbias_sum += dbias_part[block * cols + j]
            dweight[j] = dweight_sum
            dbias[j] = dbias_sum

    return Kernels(_ln_fwd_warp_per_row, _ln_fwd_block_per_row_shared,
                   _ln_fwd_block_per_row_streaming, _ln_bwd_warp_per_row,
                   _ln_bwd_block_per_row_shared, _ln_bwd_block_per_row_streaming,
                   _ln_bwd_reduce_partials)


VARIANTS = ("warp_per_row", "block_per_row_shared", "block_per_row_streaming")


class Launch(NamedTuple):
    """How one forward or backward call runs: the schedule and its launch configuration."""

    variant: str       #: one of ``VARIANTS``
    grid: int          #: blocks (backward: also the number of partial rows)
    block: int         #: threads per block
    lanes: int         #: threads per row
    shared_bytes: int  #: dynamic shared memory per block
    kernels: Kernels   #: the kernel set built for these tunables


def _next_pow2(value):
    """The smallest power of two >= ``value`` (>= 1)."""
    return 1 << (value - 1).bit_length()


def _check_pow2(name, value, least):
    if value < least or value & (value - 1):
        raise ValueError(f"_config.{name} must be a power of two >= {least}, got {value}")


def plan(direction, rows, cols, compute_dtype):
    """Choose the schedule and launch configuration for a call (the only place that does).

    Parameters
    ----------
    direction : {"forward", "backward"}
    rows, cols : int
        The 2-D view of the problem (``rows`` may be 0; ``cols >= 1``).
    compute_dtype : numpy.dtype
        float32 or float64: the cached values' type.

    Returns
    -------
    Launch
        Rows of up to ``32 * CUDA_WARP_ITEMS_PER_THREAD`` elements get a warp
        (or the smallest power-of-two part of one that covers them); longer
        rows a block of the smallest power of two >= 32 threads giving each
        thread at most ``CUDA_WARP_ITEMS_PER_THREAD`` elements (at most
        ``CUDA_ROW_BLOCK_THREADS``), cached in shared memory when they fit
        ``CUDA_SHARED_CACHE_BYTES``, streamed otherwise. Backward grids are
        capped at ``CUDA_BACKWARD_MAX_BLOCKS``.

    Raises
    ------
    ValueError
        A block size in ``_config`` that is not a power of two >= 32.
    """
    items = _config.CUDA_WARP_ITEMS_PER_THREAD
    warp_threads = _config.CUDA_WARP_BLOCK_THREADS
    row_threads = _config.CUDA_ROW_BLOCK_THREADS
    if items < 1:
        raise ValueError(f"_config.CUDA_WARP_ITEMS_PER_THREAD must be >= 1, got {items}")
    _check_pow2("CUDA_WARP_BLOCK_THREADS", warp_threads, WARP_SIZE)
    _check_pow2("CUDA_ROW_BLOCK_THREADS", row_threads, WARP_SIZE)
    compute_dtype = np.dtype(compute_dtype)
    kernel_set = kernels(compute_dtype, items, warp_threads, row_threads)
    if cols <= WARP_SIZE * items:
        lanes = min(WARP_SIZE, _next_pow2(cols))
        block = warp_threads
        grid = -(-rows // (block // lanes))
        variant, shared_bytes = "warp_per_row", 0
    else:
        lanes = block = min(row_threads, max(WARP_SIZE, _next_pow2(-(-cols // items))))
        grid = rows
        per_element = 1 if direction == "forward" else 4
        cached = per_element * cols * compute_dtype.itemsize
        if cached <= _config.CUDA_SHARED_CACHE_BYTES:
            variant, shared_bytes = "block_per_row_shared", cached
        else:
            variant, shared_bytes = "block_per_row_streaming", 0
    if direction == "backward":
        grid = min(grid, _config.CUDA_BACKWARD_MAX_BLOCKS)
    elif direction != "forward":
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    return Launch(variant, grid, block, lanes, shared_bytes, kernel_set)


def reduce_grid(cols):
    """Blocks (of ``CUDA_REDUCE_THREADS``) for ``_ln_bwd_reduce_partials``."""
    return -(-cols // _config.CUDA_REDUCE_THREADS)


def signatures(dtype, param_dtype=None):
    """The argument types every kernel is launched with, for ``x`` of ``dtype``.

    The backend passes exactly these (1-D C-contiguous buffers, int64 sizes,
    a compute-type ``eps``), so ``numba.cuda.compile_ptx`` on them compiles
    the code that runs.

    Parameters
    ----------
    dtype : numpy.dtype
        Storage dtype of ``x``: float16, float32 or float64.
    param_dtype : numpy.dtype, optional
        dtype of ``dweight``/``dbias`` (default: ``dtype``).

    Returns
    -------
    dict of str to tuple
        Kernel name (a field of :class:`Kernels`) to its numba argument types.
    """
    dtype = np.dtype(dtype)
    storage = from_dtype(dtype)
    compute = float64 if dtype == np.float64 else float32
    param = from_dtype(np.dtype(dtype if param_dtype is None else param_dtype))
    data, values = storage[::1], compute[::1]
    forward = (data, int64, values, values, boolean, boolean, data, int64, values, values,
               int64, int64, compute)
    backward = (data, int64, data, int64, values, values, values, boolean, data, int64,
                values, values, int64, int64)
    return {
        "fwd_warp_per_row": forward + (int64,),
        "fwd_block_per_row_shared": forward,
        "fwd_block_per_row_streaming": forward,
        "bwd_warp_per_row": backward + (int64,),
        "bwd_block_per_row_shared": backward,
        "bwd_block_per_row_streaming": backward,
        "bwd_reduce_partials": (values, values, int64, int64, param[::1], param[::1]),
    }
