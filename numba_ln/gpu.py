"""CUDA kernels, and the plan that picks one: how rows map onto warps and blocks.

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

One factory per kernel, numbered per pass as in llm.c's
``dev/cuda/layernorm_forward.cu``; ``plan`` picks one, and its launch
configuration, in one place:

1. ``forward1_warp_per_row``, ``backward1_warp_per_row`` -- rows of up to
   ``32 * CUDA_WARP_ITEMS_PER_THREAD`` elements. A group of ``lanes``
   threads (a warp, or a power-of-two part of one for rows shorter than 32)
   owns a row; each thread holds its elements in registers (a fully
   unrolled local array), so the row is read from device memory once.
2. ``forward2_block_per_row_shared``, ``backward2_block_per_row_shared`` --
   longer rows that fit in ``CUDA_SHARED_CACHE_BYTES``: a block owns a row
   and caches it in dynamic shared memory.
3. ``forward3_block_per_row_streaming``, ``backward3_block_per_row_streaming``
   -- rows too long to cache: a block owns a row and re-reads it from global
   memory (L2) for each pass.

The forward kernels compute the exact shifted two-pass statistics of
``_math`` from the cached copy. The backward kernels compute ``dx`` and, in
the same read of ``x`` and ``dy``, each block's partial ``dweight``/``dbias``
row; ``reduce1_thread_per_column`` then sums the partial rows in block order.

A factory returns a numba CUDA kernel for one compute type and one set of
tunables (the register-cache length and the static shared-memory sizes are
compile-time constants). Nothing compiles until a kernel is launched, then
once per argument types; ``build_kernel_set`` assembles the seven for a
configuration, once.
"""

import functools
from typing import NamedTuple, Optional

import numpy as np
from numba import boolean, cuda, float32, float64, from_dtype, int64

from . import _config, _math
from ._validate import compute_dtype as _compute_dtype

#: Threads in a warp; a warp-per-row group never spans more than one.
WARP_SIZE = 32

_COMPUTE = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


# --------------------------------------------------------------------------
# Device helpers shared by the kernels
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Kernel factories: one per numbered kernel. Each returns a numba CUDA kernel
# for the numba type ``compute`` (float32 or float64) and the tunables it
# names, compiled on its first launch; see :func:`build_kernel_set`.
# --------------------------------------------------------------------------

# Forward 1. Rows of up to 32 * items elements, a group of `lanes` threads each (several rows per
# block). Caches the row in registers, `items` per thread. Reduces with a shared-memory tree over
# the group's lanes.
def forward1_warp_per_row(compute, items, warp_threads, fastmath):
    """Forward kernel 1, ``_ln_fwd_warp_per_row``.

    Thread ``lane`` of a group holds elements ``lane, lane + lanes, ...``
    (coalesced loads).
    """
    @cuda.jit(fastmath=fastmath)
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
    return _ln_fwd_warp_per_row


def _forward_block_per_row(compute, row_threads, fastmath, cached):
    """Forward kernel 2 (``cached``, a compile-time constant) or 3: one body, two kernels.

    Thread ``t`` touches elements ``t, t + threads, ...`` (coalesced); cached,
    it alone reads back what it wrote, so only the reductions need barriers.
    """
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
    return cuda.jit(fastmath=fastmath)(kernel)


# Forward 2. Rows longer than a warp caches, of at most CUDA_SHARED_CACHE_BYTES: a block each.
# Caches the row in dynamic shared memory. Reduces with a block-wide shared-memory tree.
def forward2_block_per_row_shared(compute, row_threads, fastmath):
    """Forward kernel 2, ``_ln_fwd_block_per_row_shared``."""
    return _forward_block_per_row(compute, row_threads, fastmath, cached=True)


# Forward 3. Rows too long to cache: a block each. Caches nothing: each pass re-reads the row
# (three reads, mostly from L2). Reduces with a block-wide shared-memory tree.
def forward3_block_per_row_streaming(compute, row_threads, fastmath):
    """Forward kernel 3, ``_ln_fwd_block_per_row_streaming``."""
    return _forward_block_per_row(compute, row_threads, fastmath, cached=False)


# Backward 1. Rows as forward 1. Caches in registers xhat and w * dy (row sums to dx) and the
# column sums of dy * xhat and dy (over the group's rows). Reduces rows with a paired tree over
# the lanes; the groups' column sums are added in group order into the block's partial row.
def backward1_warp_per_row(compute, items, warp_threads, fastmath):
    """Backward kernel 1, ``_ln_bwd_warp_per_row``."""
    @cuda.jit(fastmath=fastmath)
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
    return _ln_bwd_warp_per_row


# Backward 2. Rows as forward 2, with 4 * cols values cached. Caches [xhat | w * dy | dweight acc |
# dbias acc] in dynamic shared memory; the accumulators become the block's partial row. Reduces
# with a paired block-wide tree.
def backward2_block_per_row_shared(compute, row_threads, fastmath):
    """Backward kernel 2, ``_ln_bwd_block_per_row_shared``.

    Thread ``t`` owns elements ``t, t + threads, ...`` of all four cached
    rows, so only the row sums need barriers.
    """
    @cuda.jit(fastmath=fastmath)
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
    return _ln_bwd_block_per_row_shared


# Backward 3. Rows too long for backward 2's cache. Caches nothing: reads x and dy twice (row sums,
# then dx); the accumulators are the block's own partial row in global memory. Reduces with a
# paired block-wide tree.
def backward3_block_per_row_streaming(compute, row_threads, fastmath):
    """Backward kernel 3, ``_ln_bwd_block_per_row_streaming``.

    Thread ``t`` owns columns ``t, t + threads, ...`` of the partial row, so
    no two threads touch one element.
    """
    @cuda.jit(fastmath=fastmath)
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
    return _ln_bwd_block_per_row_streaming


# Reduce 1. The backward's second stage: one thread per column sums the `blocks` partial rows in
# block order (coalesced across threads) and stores dweight/dbias in the parameter dtype.
def reduce1_thread_per_column(compute, fastmath):
    """Reduction kernel 1, ``_ln_bwd_reduce_partials``."""
    @cuda.jit(fastmath=fastmath)
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
    return _ln_bwd_reduce_partials


# --------------------------------------------------------------------------
# Assembly, plan, signatures
# --------------------------------------------------------------------------

class KernelSet(NamedTuple):
    """The seven kernels for one compute type and one set of tunables, by factory name."""

    forward1_warp_per_row: object
    forward2_block_per_row_shared: object
    forward3_block_per_row_streaming: object
    backward1_warp_per_row: object
    backward2_block_per_row_shared: object
    backward3_block_per_row_streaming: object
    reduce1_thread_per_column: object


@functools.cache
def build_kernel_set(compute_dtype, items, warp_threads, row_threads, fastmath):
    """Assemble (once per configuration) the kernels for a compute dtype and a set of tunables.

    Cheap: nothing is compiled here. Each kernel compiles on its first
    launch, once per argument types (so once per storage dtype).

    Parameters
    ----------
    compute_dtype : numpy.dtype
        float32 (for float16 and float32 data) or float64.
    items : int
        Register-cached elements per thread of the warp-per-row kernels.
    warp_threads, row_threads : int
        Threads per block of the warp-per-row kernels, and the most threads
        per block of the block-per-row kernels (static shared-memory sizes).
    fastmath : bool
        numba-cuda's ``fastmath`` flag.

    Returns
    -------
    KernelSet
        numba CUDA kernels, not yet compiled.
    """
    compute = _COMPUTE[np.dtype(compute_dtype)]
    return KernelSet(
        forward1_warp_per_row(compute, items, warp_threads, fastmath),
        forward2_block_per_row_shared(compute, row_threads, fastmath),
        forward3_block_per_row_streaming(compute, row_threads, fastmath),
        backward1_warp_per_row(compute, items, warp_threads, fastmath),
        backward2_block_per_row_shared(compute, row_threads, fastmath),
        backward3_block_per_row_streaming(compute, row_threads, fastmath),
        reduce1_thread_per_column(compute, fastmath))


#: The row schedules; forward and backward kernel ``i + 1`` serve ``VARIANTS[i]``.
VARIANTS = ("warp_per_row", "block_per_row_shared", "block_per_row_streaming")


class Launch(NamedTuple):
    """One kernel launch that :func:`plan` chose: the schedule, the kernel, its configuration."""

    variant: str        #: one of ``VARIANTS``; ``"thread_per_column"`` for the reduction
    grid: int           #: blocks (backward: also the number of partial rows)
    block: int          #: threads per block
    lanes: int          #: threads per row
    shared_bytes: int   #: dynamic shared memory per block
    kernel_name: str    #: the kernel's field in :class:`KernelSet` and key in :func:`signatures`
    kernel: object      #: the numba CUDA kernel to launch
    #: backward: the launch that sums the partial rows into dweight/dbias; None for forward
    reduction: Optional["Launch"] = None


def _next_pow2(value):
    """The smallest power of two >= ``value`` (>= 1)."""
    return 1 << (value - 1).bit_length()


def _check_pow2(name, value, least):
    if value < least or value & (value - 1):
        raise ValueError(f"_config.{name} must be a power of two >= {least}, got {value}")


def plan(direction, rows, cols, compute_dtype):
    """Choose the kernel and launch configuration for a call (the only place that does).

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
        capped at ``CUDA_BACKWARD_MAX_BLOCKS``, and ``reduction`` sums their
        partial rows with ``CUDA_REDUCE_THREADS``-thread blocks.

    Raises
    ------
    ValueError
        A block size in ``_config`` that is not a power of two >= 32, or an
        unknown ``direction``.

    Examples
    --------
    >>> from numba_ln import gpu
    >>> launch = gpu.plan("forward", 4, 300, "float32")
    >>> launch.kernel_name, launch.grid, launch.block, launch.shared_bytes
    ('forward2_block_per_row_shared', 4, 64, 1200)
    """
    items = _config.CUDA_WARP_ITEMS_PER_THREAD
    warp_threads = _config.CUDA_WARP_BLOCK_THREADS
    row_threads = _config.CUDA_ROW_BLOCK_THREADS
    if items < 1:
        raise ValueError(f"_config.CUDA_WARP_ITEMS_PER_THREAD must be >= 1, got {items}")
    _check_pow2("CUDA_WARP_BLOCK_THREADS", warp_threads, WARP_SIZE)
    _check_pow2("CUDA_ROW_BLOCK_THREADS", row_threads, WARP_SIZE)
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    compute_dtype = np.dtype(compute_dtype)
    kernel_set = build_kernel_set(compute_dtype, items, warp_threads, row_threads,
                                  _config.CUDA_FASTMATH)
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
    kernel_name = f"{direction}{VARIANTS.index(variant) + 1}_{variant}"
    reduction = None
    if direction == "backward":
        grid = min(grid, _config.CUDA_BACKWARD_MAX_BLOCKS)
        reduce_threads = _config.CUDA_REDUCE_THREADS
        reduction = Launch("thread_per_column", -(-cols // reduce_threads), reduce_threads, 1,
                           0, "reduce1_thread_per_column", kernel_set.reduce1_thread_per_column)
    return Launch(variant, grid, block, lanes, shared_bytes, kernel_name,
                  getattr(kernel_set, kernel_name), reduction)


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
        Kernel name (a field of :class:`KernelSet`) to its numba argument types.

    Examples
    --------
    >>> from numba_ln import gpu
    >>> partials, _, blocks, _, dweight, _ = gpu.signatures("float16")["reduce1_thread_per_column"]
    >>> print(partials, blocks, dweight)
    array(float32, 1d, C) int64 array(float16, 1d, C)
    """
    dtype = np.dtype(dtype)
    storage = from_dtype(dtype)
    compute = _COMPUTE[_compute_dtype(dtype)]
    param = from_dtype(np.dtype(dtype if param_dtype is None else param_dtype))
    data, values = storage[::1], compute[::1]
    forward = (data, int64, values, values, boolean, boolean, data, int64, values, values,
               int64, int64, compute)
    backward = (data, int64, data, int64, values, values, values, boolean, data, int64,
                values, values, int64, int64)
    return {
        "forward1_warp_per_row": forward + (int64,),
        "forward2_block_per_row_shared": forward,
        "forward3_block_per_row_streaming": forward,
        "backward1_warp_per_row": backward + (int64,),
        "backward2_block_per_row_shared": backward,
        "backward3_block_per_row_streaming": backward,
        "reduce1_thread_per_column": (values, values, int64, int64, param[::1], param[::1]),
    }
