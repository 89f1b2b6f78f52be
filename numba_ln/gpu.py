"""CUDA kernels, the plan that picks one, and the launchers that run a pass.

Every kernel sees the problem in the layout the CPU kernels see (``cpu.py``):
1-D contiguous buffers and a row stride (``ldx``: row ``r`` starts at
``x[r * ldx]``, ``ldx >= cols``). ``x``, ``y``, ``dy`` and ``dx`` are in the
storage dtype (float16, bfloat16, float32 or float64); ``weight`` and
``bias`` in the storage or the compute dtype (16-bit gains are widened as
they are loaded); ``mean``, ``rstd`` and the partial sums in the compute
dtype (float32 for float16 and bfloat16). Values are widened to the compute
dtype as they are loaded, so the ``_math`` functions never see a 16-bit
value. bfloat16 arrays are passed as ``int16`` views of their bits
(:func:`storage_type`), which ``_gpu_ops`` widens with a shift and rounds
to nearest even; everything else about them is float16's.

Row data moves through ``_gpu_ops.vector_load``/``vector_store``: 16 bytes
per access in the *vector* kernels (4 float32, 8 float16 or bfloat16, 2 float64), one
element in the *scalar* ones, which serve what the vector kernels cannot
(a pointer or row stride not a multiple of 16 bytes, a width not a multiple
of the vector). Each kernel is written once, with the vector width a
compile-time constant. Thread ``t`` of a row's group holds the vectors
``t, t + threads, t + 2 * threads, ...`` of the row in registers, in a fully
unrolled local array, so a row is read once and written once; column offsets
within a row are unsigned 32-bit (64-bit kernels serve rows of 2**32
elements or more), and the row's start is computed once per row.

Reductions are ``shfl_xor_sync`` butterflies within a warp (every lane gets
the same bits) and, in block kernels, one shared-memory step behind one
barrier (``_gpu_ops.block_sum``). No floating-point atomics: every sum has a
fixed order, so results are bit-identical from run to run on one GPU and
toolchain.

The forward statistics are a corrected two-pass from the registers: pass one
sums the row (``center = sum / n``), pass two sums ``d = x - center`` and
``d * d``; the mean is ``center + sum(d) / n`` and the variance
``sum(d * d) / n - (sum(d) / n) ** 2``. Rows split over several blocks
combine their segments' means and squared deviations in segment order
(``_math.combine_moments``).

One factory per kernel, numbered per pass as in llm.c's
``dev/cuda/layernorm_forward.cu``; :func:`plan` picks them and their launch
configuration, in one place:

1. ``forward1_warp``, ``backward1_warp`` -- rows of up to
   ``CUDA_WARP_ROW_BYTES`` per lane: a group of ``lanes`` threads (a warp,
   or a power-of-two part of one for short rows) owns a row.
2. ``forward2_block``, ``backward2_block`` -- longer rows, up to
   ``CUDA_BLOCK_ROW_BYTES`` per thread of a block of at most
   ``CUDA_ROW_BLOCK_THREADS``: a block owns a row.
3. ``forward3_split_stats`` + ``forward4_split_normalize``,
   ``backward3_split_sums`` + ``backward4_split_dx`` -- longer rows still, or
   long rows that are too few to fill the GPU: a row is cut into segments, a
   block each; the first kernel writes each segment's partial statistics (or
   row sums), the second combines them in segment order and finishes its
   segment. ``x`` (and ``dy``) are read twice.

The backward kernels accumulate ``dy * xhat`` and ``dy`` per column across
the rows a warp or block serves and write one partial row each;
``reduce1_partials`` adds the partial rows in a fixed order, parallel over
columns and over groups of partial rows.

RMSNorm and the fused residual add are the same kernels built with two more
compile-time arguments. ``centered=False`` (RMSNorm) drops pass one and the
mean: ``rstd = 1 / sqrt(mean(x * x) + eps)``, ``y = x * rstd * weight`` (no
bias, no ``mean`` written), and in the backward ``dx = rstd * (g - xhat *
mean(g * xhat))`` with no ``dbias``. ``residual`` (the dtype of the residual
stream, None without one) makes the forward load ``r`` beside ``x``, form
``s = x + r`` in the compute dtype, round it to ``s``'s dtype, store it, and
normalize the rounded values from the registers; ``s`` is never read back,
except by ``forward4_split_normalize``, which reads ``s`` in place of ``x``
(one stream where recomputing would read two, and safe when ``s`` overwrote
``r``). In the backward, ``residual`` adds ``dresidual`` into ``dx`` as it
is stored. Kernels are named ``_[add_]{ln,rms}_<pass>_<schedule>_<variant>``.

A factory returns a numba CUDA kernel for one storage dtype, vector width,
register-cache length, column-index type, ``centered`` and ``residual``
(all compile-time). Nothing compiles until a kernel is launched, then once
per argument types.
"""

import functools
from typing import NamedTuple

import numpy as np
from numba import boolean, cuda, float32, float64, from_dtype, int16, int64, uint32, uint64

from . import _config, _gpu_ops, _math, _validate
from ._validate import compute_dtype as _compute_dtype

#: Threads in a warp; a warp-per-row group never spans more than one.
WARP_SIZE = _gpu_ops.WARP_SIZE
#: Bytes per access of the vector kernels.
VECTOR_BYTES = _gpu_ops.VECTOR_BYTES

_COMPUTE = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}
_FULL = _gpu_ops.FULL_MASK


def _canonical(dtype):
    """``dtype`` as ``_validate`` names it (which also makes ml_dtypes' bfloat16 known)."""
    return _validate.check_float_dtype(np.dtype(dtype), "dtype")


def is_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16.

    Examples
    --------
    >>> is_bfloat16(np.dtype("float16"))
    False
    """
    dtype = np.dtype(dtype)
    return dtype.name == "bfloat16" and _canonical(dtype) is _validate.BFLOAT16


def storage_type(dtype):
    """The numba type a kernel sees ``dtype``'s elements as: bfloat16 as its ``int16`` bits.

    numba has no bfloat16; ``int16`` is the one type no float array of
    numba-ln has, so ``_gpu_ops`` knows it for bfloat16 at compile time.

    Examples
    --------
    >>> storage_type("float16")
    float16
    """
    return int16 if is_bfloat16(dtype) else from_dtype(np.dtype(dtype))


@cuda.jit(device=True, inline="always")
def _unchanged(value):
    return value


def _jit(threads=None):
    """``cuda.jit`` with the shipped fast-math flag, and launch bounds on a GPU.

    ``threads``, the most threads a block will have, lets ``ptxas`` budget
    registers for it (the simulator has no such option).
    """
    from ._cuda_backend import simulator_enabled
    options = {"fastmath": _config.CUDA_FASTMATH}
    if threads is not None and not simulator_enabled():
        options["launch_bounds"] = threads
    return cuda.jit(**options)


def _name(kernel, name, vec, centered=True, residual=None):
    """Give ``kernel`` (a Python function) its name in profilers and PTX.

    ``_<op>_<name>_<vector|scalar>``: ``<op>`` is ``ln`` (layer norm) or
    ``rms`` (RMSNorm), preceded by ``add_`` with a residual stream
    (``_add_rms_fwd_warp_vector``).
    """
    op = ("add_" if residual is not None else "") + ("ln" if centered else "rms")
    kernel.__name__ = kernel.__qualname__ = f"_{op}_{name}_{'vector' if vec > 1 else 'scalar'}"
    return kernel


# --------------------------------------------------------------------------
# Kernel factories. Each takes the storage dtype, the vector width (elements
# per access), the vectors each thread holds and the column-index type.
# --------------------------------------------------------------------------

@functools.cache
def _row_steps(compute, vec, chunks, index, centered=True, residual=None):
    """The device functions every kernel is built from, for one vector width and chunk count.

    A thread holds the vectors ``first, first + stride, ...`` (``chunks`` of
    them, ``vec`` elements each) of a row or segment of ``width`` elements;
    each step loops over them fully unrolled, so ``cache`` and the other
    local arrays stay in registers. ``centered`` (compile-time) is False for
    RMSNorm: no mean, no bias, no ``mean(g)`` term. ``residual`` is the dtype
    of the residual stream (forward: ``r`` and ``s``; backward:
    ``dresidual``), None without one; the steps that take such a stream
    ignore it then. Returns a dict of name to function.
    """
    load, store = _gpu_ops.vector_load(vec), _gpu_ops.vector_store(vec)
    has_residual = residual is not None
    # s rounded to its dtype: a float16 local rounds as it is assigned; bfloat16 (no numba type)
    # is kept as its bits, rounded once, then widened for the row and stored as they are.
    if has_residual and is_bfloat16(residual):
        rounded_type = int16
        to_rounded, from_rounded = _gpu_ops.bfloat16_conversions()
    else:
        rounded_type = from_dtype(residual) if has_residual else compute
        to_rounded = from_rounded = _unchanged
    # RMSNorm adds -0.0 as its bias: exact, and the compiler folds the addition away.
    no_bias = 0.0 if centered else -0.0

    @cuda.jit(device=True, inline="always")
    def load_params(weight, bias, has_weight, has_bias, col, w, b):
        """The gain and bias at columns ``col .. col + vec`` (1 and 0 where absent)."""
        if has_weight:
            load(weight, 0, col, w, 0)
        else:
            for t in range(vec):
                w[t] = 1
        if centered and has_bias:
            load(bias, 0, col, b, 0)
        else:
            for t in range(vec):
                b[t] = no_bias

    @cuda.jit(device=True, inline="always")
    def load_row(x, base, r, r_base, s, s_base, first, stride, width, active, cache, zero):
        """Load the thread's vectors into ``cache``; return their sum.

        With a residual, ``cache`` holds ``s = x + r`` rounded to ``s``'s
        dtype, which is stored here: what is normalized is what was stored.
        """
        addend = cuda.local.array(vec, compute)
        rounded = cuda.local.array(vec, rounded_type)
        total = zero
        for k in range(chunks):
            col = index(first + index(k) * stride)
            if active and col < width:
                load(x, base, col, cache, k * vec)
                if has_residual:
                    load(r, r_base, col, addend, 0)
                    for t in range(vec):
                        rounded[t] = to_rounded(cache[k * vec + t] + addend[t])
                        cache[k * vec + t] = from_rounded(rounded[t])
                    store(s, s_base, col, rounded, 0)
                for t in range(vec):
                    total += cache[k * vec + t]
        return total

    @cuda.jit(device=True, inline="always")
    def deviation_sums(cache, center, first, stride, width, active, zero):
        """The sums of ``d = x - center`` and of ``d * d`` over the thread's elements."""
        dsum = zero
        dsq = zero
        for k in range(chunks):
            col = index(first + index(k) * stride)
            if active and col < width:
                for t in range(vec):
                    d = _math.shifted(cache[k * vec + t], center)
                    dsum += d
                    dsq += d * d
        return dsum, dsq

    @cuda.jit(device=True, inline="always")
    def block_moments(x, base, r, r_base, s, s_base, first, stride, width, cache, sums, pairs,
                      warps, n, zero):
        """A block's row (or segment) into ``cache``: its ``center`` (sum / n) and the
        block-wide sums of ``d = x - center`` and ``d * d`` (two barriers). Not centered:
        center and ``sum(d)`` are 0 and ``sum(x * x)`` takes one barrier, in ``sums`` (which
        a caller looping over rows alternates, as ``block_sum`` asks)."""
        total = load_row(x, base, r, r_base, s, s_base, first, stride, width, True, cache, zero)
        if centered:
            center = _math.mean_offset(_gpu_ops.block_sum(sums, total, warps), n)
        else:
            center = zero
        dsum, dsq = deviation_sums(cache, center, first, stride, width, True, zero)
        if centered:
            dsum, dsq = _gpu_ops.block_sum2(pairs, dsum, dsq, warps)
        else:
            dsum, dsq = zero, _gpu_ops.block_sum(sums, dsq, warps)
        return center, dsum, dsq

    if centered:
        @cuda.jit(device=True, inline="always")
        def row_sums(sums, parity):
            """``sums`` (1-D): a row's two barriers order its reads before the next row's writes."""
            return sums
    else:
        @cuda.jit(device=True, inline="always")
        def row_sums(sums, parity):
            """``sums[parity]`` of two buffers: one barrier a row, so rows alternate them."""
            return sums[parity]

    @cuda.jit(device=True, inline="always")
    def normalize_row(y, base, weight, bias, has_weight, has_bias, param_start, first, stride,
                      width, cache, center, correction, row_rstd, w, b):
        """``y = (x - mean) * rstd * weight + bias`` from ``cache``, stored by vectors."""
        for k in range(chunks):
            col = index(first + index(k) * stride)
            if col < width:
                load_params(weight, bias, has_weight, has_bias, index(param_start + col), w, b)
                for t in range(vec):
                    cache[k * vec + t] = _math.normalize_affine(
                        _math.centered(cache[k * vec + t], center, correction), row_rstd,
                        w[t], b[t])
                store(y, base, col, cache, k * vec)

    @cuda.jit(device=True, inline="always")
    def gradient_sums(dy, dy_base, x, x_base, weight, has_weight, param_start, first, stride,
                      width, active, row_mean, row_rstd, xhat, g, w, dweight_acc, dbias_acc,
                      zero):
        """Load ``dy`` and ``x``; keep ``xhat`` and ``g = w * dy``; add each column's
        ``dy * xhat`` and (centered) ``dy``. Returns the sums of ``g`` (0 when not
        centered) and of ``g * xhat``."""
        sum_g = zero
        sum_gxhat = zero
        for k in range(chunks):
            col = index(first + index(k) * stride)
            if active and col < width:
                load(dy, dy_base, col, g, k * vec)
                load(x, x_base, col, xhat, k * vec)
                if has_weight:
                    load(weight, 0, index(param_start + col), w, 0)
                else:
                    for t in range(vec):
                        w[t] = 1
                for t in range(vec):
                    grad = g[k * vec + t]
                    value = _math.normalized(xhat[k * vec + t], row_mean, row_rstd)
                    xhat[k * vec + t] = value
                    dweight_acc[k * vec + t] += grad * value
                    if centered:
                        dbias_acc[k * vec + t] += grad
                    grad = w[t] * grad
                    g[k * vec + t] = grad
                    if centered:
                        sum_g += grad
                    sum_gxhat += grad * value
        return sum_g, sum_gxhat

    @cuda.jit(device=True, inline="always")
    def input_gradient(dx, base, dres, dres_base, first, stride, width, xhat, g, row_rstd,
                       mean_g, mean_gxhat):
        """``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, plus ``dresidual`` when
        there is one, stored by vectors."""
        skip = cuda.local.array(vec, compute)
        for k in range(chunks):
            col = index(first + index(k) * stride)
            if col < width:
                if has_residual:
                    load(dres, dres_base, col, skip, 0)
                for t in range(vec):
                    g[k * vec + t] = _math.grad_input(g[k * vec + t], xhat[k * vec + t],
                                                      row_rstd, mean_g, mean_gxhat)
                    if has_residual:
                        g[k * vec + t] += skip[t]
                store(dx, base, col, g, k * vec)

    @cuda.jit(device=True, inline="always")
    def store_partials(dweight_part, dbias_part, base, first, stride, width, dweight_acc,
                       dbias_acc):
        """The thread's column sums into its partial rows (no ``dbias`` when not centered)."""
        for k in range(chunks):
            col = index(first + index(k) * stride)
            if col < width:
                store(dweight_part, base, col, dweight_acc, k * vec)
                if centered:
                    store(dbias_part, base, col, dbias_acc, k * vec)

    @cuda.jit(device=True, inline="always")
    def segment_span(cols, segment):
        """This block's segment of a split row (``blockIdx.x``): first column, width."""
        start = index(index(cuda.blockIdx.x) * index(segment))
        return start, index(min(cols - int64(start), segment))

    @cuda.jit(device=True, inline="always")
    def fill(values, value):
        for i in range(vec * chunks):
            values[i] = value

    return {"load_row": load_row, "deviation_sums": deviation_sums,
            "block_moments": block_moments, "row_sums": row_sums,
            "normalize_row": normalize_row, "gradient_sums": gradient_sums,
            "input_gradient": input_gradient, "store_partials": store_partials,
            "segment_span": segment_span, "fill": fill}


def _steps(storage, vec, chunks, index, centered, residual):
    """The compute type of ``storage`` and the ``_row_steps`` a factory builds from."""
    compute = _COMPUTE[_compute_dtype(storage)]
    return compute, _row_steps(compute, vec, chunks, index, centered,
                               None if residual is None else np.dtype(residual))


# Forward 1. Rows of up to lanes * vec * chunks elements, a group of `lanes` threads each (several
# rows per block). Caches the row in registers. Reduces with warp shuffles: no barrier at all.
# With a residual, s = x + r is formed and stored as the row is loaded.
def forward1_warp(storage, vec, chunks, index, centered=True, residual=None):
    """Forward kernel 1, ``_ln_fwd_warp_{vector,scalar}`` (``_rms_``, ``_add_``: :func:`_name`)."""
    compute, steps = _steps(storage, vec, chunks, index, centered, residual)
    load_row, deviation_sums = steps["load_row"], steps["deviation_sums"]
    normalize_row = steps["normalize_row"]
    items = vec * chunks

    def kernel(x, ldx, r, ldr, s, lds, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
               rows, cols, eps, lanes):
        cache = cuda.local.array(items, compute)
        w = cuda.local.array(vec, compute)
        b = cuda.local.array(vec, compute)
        tid = cuda.threadIdx.x
        lane = index(tid & (lanes - 1))
        row = int64(cuda.blockIdx.x) * (cuda.blockDim.x // lanes) + tid // lanes
        active = row < rows
        width, stride, first = index(cols), index(lanes * vec), index(lane * vec)
        n = compute(cols)
        zero = compute(0)
        total = load_row(x, row * ldx, r, row * ldr, s, row * lds, first, stride, width, active,
                         cache, zero)
        center = _math.mean_offset(_gpu_ops.warp_sum(total, lanes), n) if centered else zero
        dsum, dsq = deviation_sums(cache, center, first, stride, width, active, zero)
        correction = _math.mean_offset(_gpu_ops.warp_sum(dsum, lanes), n) if centered else zero
        row_rstd = _math.corrected_rstd(_gpu_ops.warp_sum(dsq, lanes), correction, n, eps)
        if active:
            normalize_row(y, row * ldy, weight, bias, has_weight, has_bias, 0, first, stride,
                          width, cache, center, correction, row_rstd, w, b)
            if lane == 0:
                if centered:
                    mean[row] = _math.row_mean(center, correction)
                rstd[row] = row_rstd
    return _jit()(_name(kernel, "fwd_warp", vec, centered, residual))


# Forward 2. Longer rows: a block each, up to CUDA_ROW_BLOCK_THREADS threads of `chunks` vectors.
# Caches the row in registers. Reduces with shuffles, then one shared-memory step: two barriers a
# row (the sum, then the two deviation sums together; RMSNorm: the sum of squares alone).
def forward2_block(storage, vec, chunks, index, centered=True, residual=None):
    """Forward kernel 2, ``_ln_fwd_block_{vector,scalar}``."""
    compute, steps = _steps(storage, vec, chunks, index, centered, residual)
    block_moments, normalize_row = steps["block_moments"], steps["normalize_row"]
    items = vec * chunks
    max_warps = _config.CUDA_ROW_BLOCK_THREADS // WARP_SIZE
    pair_slots = 2 * max_warps

    def kernel(x, ldx, r, ldr, s, lds, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
               rows, cols, eps):
        sums = cuda.shared.array(max_warps, compute)
        pairs = cuda.shared.array(pair_slots, compute)
        cache = cuda.local.array(items, compute)
        w = cuda.local.array(vec, compute)
        b = cuda.local.array(vec, compute)
        tid = cuda.threadIdx.x
        warps = cuda.blockDim.x // WARP_SIZE
        row = int64(cuda.blockIdx.x)
        width, stride, first = index(cols), index(cuda.blockDim.x * vec), index(tid * vec)
        n = compute(cols)
        zero = compute(0)
        center, dsum, dsq = block_moments(x, row * ldx, r, row * ldr, s, row * lds, first,
                                          stride, width, cache, sums, pairs, warps, n, zero)
        correction = _math.mean_offset(dsum, n)
        row_rstd = _math.corrected_rstd(dsq, correction, n, eps)
        normalize_row(y, row * ldy, weight, bias, has_weight, has_bias, 0, first, stride, width,
                      cache, center, correction, row_rstd, w, b)
        if tid == 0:
            if centered:
                mean[row] = _math.row_mean(center, correction)
            rstd[row] = row_rstd
    return _jit(_config.CUDA_ROW_BLOCK_THREADS)(_name(kernel, "fwd_block", vec, centered,
                                                      residual))


# Forward 3. Rows cut into segments of `segment` elements, a block each (grid: segments x row
# blocks, looping over rows). Caches the segment in registers; writes its mean and its sum of
# squared deviations (two barriers a row; RMSNorm: mean 0 and the sum of squares, one barrier).
# With a residual it also forms and stores s, which forward 4 reads back instead of x and r: one
# stream of s's dtype instead of two (x, and r of s's dtype), and in place (s over r) stays safe.
def forward3_split_stats(storage, vec, chunks, index, centered=True, residual=None):
    """Forward kernel 3, ``_ln_fwd_split_stats_{vector,scalar}``."""
    compute, steps = _steps(storage, vec, chunks, index, centered, residual)
    block_moments, segment_span = steps["block_moments"], steps["segment_span"]
    row_sums = steps["row_sums"]
    items = vec * chunks
    max_warps = _config.CUDA_ROW_BLOCK_THREADS // WARP_SIZE
    pair_slots = 2 * max_warps
    sums_shape = max_warps if centered else (2, max_warps)

    def kernel(x, ldx, r, ldr, s, lds, partials, rows, cols, segment):
        sums = cuda.shared.array(sums_shape, compute)
        pairs = cuda.shared.array(pair_slots, compute)
        cache = cuda.local.array(items, compute)
        tid = cuda.threadIdx.x
        warps = cuda.blockDim.x // WARP_SIZE
        seg = cuda.blockIdx.x
        start, width = segment_span(cols, segment)
        stride, first = index(cuda.blockDim.x * vec), index(tid * vec)
        n = compute(width)
        zero = compute(0)
        parity = 0
        for row in range(int64(cuda.blockIdx.y), rows, int64(cuda.gridDim.y)):
            center, dsum, dsq = block_moments(
                x, row * ldx + int64(start), r, row * ldr + int64(start), s,
                row * lds + int64(start), first, stride, width, cache, row_sums(sums, parity),
                pairs, warps, n, zero)
            parity ^= 1
            if tid == 0:
                at = 2 * (row * cuda.gridDim.x + seg)
                partials[at] = _math.row_mean(center, _math.mean_offset(dsum, n))
                partials[at + 1] = _math.deviation_sumsq(dsq, dsum, n)
    return _jit(_config.CUDA_ROW_BLOCK_THREADS)(_name(kernel, "fwd_split_stats", vec, centered,
                                                      residual))


# Forward 4. The same blocks as forward 3. Each thread merges the row's segment statistics in
# segment order (no barrier), then normalizes its segment (a second read of x, or of s).
def forward4_split_normalize(storage, vec, chunks, index, centered=True, residual=None):
    """Forward kernel 4, ``_ln_fwd_split_normalize_{vector,scalar}``; its ``x`` is ``s``
    with a residual, so ``residual`` only names it."""
    compute, steps = _steps(storage, vec, chunks, index, centered, None)
    load_row, normalize_row = steps["load_row"], steps["normalize_row"]
    segment_span = steps["segment_span"]
    items = vec * chunks

    def kernel(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd, partials, rows,
               cols, segment, eps):
        cache = cuda.local.array(items, compute)
        w = cuda.local.array(vec, compute)
        b = cuda.local.array(vec, compute)
        tid = cuda.threadIdx.x
        seg = cuda.blockIdx.x
        segments = cuda.gridDim.x
        start, width = segment_span(cols, segment)
        stride, first = index(cuda.blockDim.x * vec), index(tid * vec)
        n = compute(cols)
        zero = compute(0)
        for row in range(int64(cuda.blockIdx.y), rows, int64(cuda.gridDim.y)):
            at = 2 * row * segments
            row_mean = partials[at]
            sumsq = partials[at + 1]
            count = compute(min(cols, segment))
            for other in range(1, segments):
                other_count = compute(min(cols - other * segment, segment))
                row_mean, sumsq = _math.combine_moments(
                    row_mean, sumsq, count, partials[at + 2 * other],
                    partials[at + 2 * other + 1], other_count)
                count += other_count
            if not centered:
                row_mean = zero  # the segments' means are 0: let the compiler know
            row_rstd = _math.reciprocal_std(sumsq, n, eps)
            base = row * ldx + int64(start)
            load_row(x, base, x, base, x, base, first, stride, width, True, cache, zero)
            normalize_row(y, row * ldy + int64(start), weight, bias, has_weight, has_bias, start,
                          first, stride, width, cache, row_mean, zero, row_rstd, w, b)
            if seg == 0 and tid == 0:
                if centered:
                    mean[row] = row_mean
                rstd[row] = row_rstd
    return _jit(_config.CUDA_ROW_BLOCK_THREADS)(
        _name(kernel, "fwd_split_normalize", vec, centered, residual))


# Backward 1. Rows as forward 1; warps loop over rows. Caches xhat and w * dy in registers, and the
# column sums of dy * xhat and dy across the warp's rows. Reduces rows with shuffles; the groups
# of a warp add their column sums with shuffles too, and each warp writes one partial row.
# With dresidual, it is read as dx is written and added in.
def backward1_warp(storage, vec, chunks, index, centered=True, residual=None):
    """Backward kernel 1, ``_ln_bwd_warp_{vector,scalar}``."""
    compute, steps = _steps(storage, vec, chunks, index, centered, residual)
    gradient_sums, input_gradient = steps["gradient_sums"], steps["input_gradient"]
    store_partials, fill = steps["store_partials"], steps["fill"]
    items = vec * chunks

    def kernel(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx, dres, lddres,
               dweight_part, dbias_part, rows, cols, lanes):
        xhat = cuda.local.array(items, compute)
        g = cuda.local.array(items, compute)
        w = cuda.local.array(vec, compute)
        dweight_acc = cuda.local.array(items, compute)
        dbias_acc = cuda.local.array(items, compute)
        tid = cuda.threadIdx.x
        lane = index(tid & (lanes - 1))
        groups = WARP_SIZE // lanes
        warp = int64(cuda.blockIdx.x) * (cuda.blockDim.x // WARP_SIZE) + tid // WARP_SIZE
        warps = int64(cuda.gridDim.x) * (cuda.blockDim.x // WARP_SIZE)
        width, stride, first = index(cols), index(lanes * vec), index(lane * vec)
        n = compute(cols)
        zero = compute(0)
        fill(dweight_acc, zero)
        fill(dbias_acc, zero)
        base = warp * groups
        while base < rows:  # the same trip count for every lane of the warp
            row = base + (tid % WARP_SIZE) // lanes
            active = row < rows
            row_mean = mean[row] if centered and active else zero
            row_rstd = rstd[row] if active else zero
            sum_g, sum_gxhat = gradient_sums(dy, row * lddy, x, row * ldx, weight, has_weight,
                                             0, first, stride, width, active, row_mean,
                                             row_rstd, xhat, g, w, dweight_acc, dbias_acc, zero)
            mean_g = _math.mean_offset(_gpu_ops.warp_sum(sum_g, lanes), n) if centered else zero
            mean_gxhat = _math.mean_offset(_gpu_ops.warp_sum(sum_gxhat, lanes), n)
            if active:
                input_gradient(dx, row * lddx, dres, row * lddres, first, stride, width, xhat, g,
                               row_rstd, mean_g, mean_gxhat)
            base += warps * groups
        # The warp's groups hold the same columns: add them, lanes apart, in a fixed order.
        for i in range(items):
            offset = lanes
            while offset < WARP_SIZE:
                dweight_acc[i] += cuda.shfl_xor_sync(_FULL, dweight_acc[i], offset)
                if centered:
                    dbias_acc[i] += cuda.shfl_xor_sync(_FULL, dbias_acc[i], offset)
                offset <<= 1
        if tid % WARP_SIZE < lanes:
            store_partials(dweight_part, dbias_part, warp * cols, first, stride, width,
                           dweight_acc, dbias_acc)
    return _jit()(_name(kernel, "bwd_warp", vec, centered, residual))


# Backward 2. Rows as forward 2; blocks loop over rows. Caches as backward 1; each thread owns its
# columns of the block's partial row. Reduces rows with shuffles and one shared step (one barrier).
def backward2_block(storage, vec, chunks, index, centered=True, residual=None):
    """Backward kernel 2, ``_ln_bwd_block_{vector,scalar}``."""
    compute, steps = _steps(storage, vec, chunks, index, centered, residual)
    gradient_sums, input_gradient = steps["gradient_sums"], steps["input_gradient"]
    store_partials, fill = steps["store_partials"], steps["fill"]
    items = vec * chunks
    pair_shape = (2, 2 * (_config.CUDA_ROW_BLOCK_THREADS // WARP_SIZE))

    def kernel(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx, dres, lddres,
               dweight_part, dbias_part, rows, cols):
        pairs = cuda.shared.array(pair_shape, compute)
        xhat = cuda.local.array(items, compute)
        g = cuda.local.array(items, compute)
        w = cuda.local.array(vec, compute)
        dweight_acc = cuda.local.array(items, compute)
        dbias_acc = cuda.local.array(items, compute)
        tid = cuda.threadIdx.x
        warps = cuda.blockDim.x // WARP_SIZE
        width, stride, first = index(cols), index(cuda.blockDim.x * vec), index(tid * vec)
        n = compute(cols)
        zero = compute(0)
        fill(dweight_acc, zero)
        fill(dbias_acc, zero)
        parity = 0
        for row in range(int64(cuda.blockIdx.x), rows, int64(cuda.gridDim.x)):
            row_rstd = rstd[row]
            sum_g, sum_gxhat = gradient_sums(dy, row * lddy, x, row * ldx, weight, has_weight,
                                             0, first, stride, width, True,
                                             mean[row] if centered else zero, row_rstd, xhat, g,
                                             w, dweight_acc, dbias_acc, zero)
            # Alternate buffers: the next row's barrier orders this row's reads before reuse.
            sum_g, sum_gxhat = _gpu_ops.block_sum2(pairs[parity], sum_g, sum_gxhat, warps)
            parity ^= 1
            input_gradient(dx, row * lddx, dres, row * lddres, first, stride, width, xhat, g,
                           row_rstd, _math.mean_offset(sum_g, n) if centered else zero,
                           _math.mean_offset(sum_gxhat, n))
        store_partials(dweight_part, dbias_part, int64(cuda.blockIdx.x) * cols, first, stride,
                       width, dweight_acc, dbias_acc)
    return _jit(_config.CUDA_ROW_BLOCK_THREADS)(_name(kernel, "bwd_block", vec, centered,
                                                      residual))


# Backward 3. Rows cut into segments as forward 3. Writes each segment's sums of w * dy and of
# w * dy * xhat (block_sum2: one barrier a row). dresidual is not read here (backward 4 adds it).
def backward3_split_sums(storage, vec, chunks, index, centered=True, residual=None):
    """Backward kernel 3, ``_ln_bwd_split_sums_{vector,scalar}``."""
    compute, steps = _steps(storage, vec, chunks, index, centered, None)
    gradient_sums, fill = steps["gradient_sums"], steps["fill"]
    segment_span = steps["segment_span"]
    items = vec * chunks
    pair_shape = (2, 2 * (_config.CUDA_ROW_BLOCK_THREADS // WARP_SIZE))

    def kernel(dy, lddy, x, ldx, mean, rstd, weight, has_weight, sums, rows, cols, segment):
        pairs = cuda.shared.array(pair_shape, compute)
        xhat = cuda.local.array(items, compute)
        g = cuda.local.array(items, compute)
        w = cuda.local.array(vec, compute)
        unused = cuda.local.array(items, compute)  # column sums: not needed here
        tid = cuda.threadIdx.x
        warps = cuda.blockDim.x // WARP_SIZE
        seg = cuda.blockIdx.x
        start, width = segment_span(cols, segment)
        stride, first = index(cuda.blockDim.x * vec), index(tid * vec)
        zero = compute(0)
        fill(unused, zero)
        parity = 0
        for row in range(int64(cuda.blockIdx.y), rows, int64(cuda.gridDim.y)):
            sum_g, sum_gxhat = gradient_sums(
                dy, row * lddy + int64(start), x, row * ldx + int64(start), weight, has_weight,
                start, first, stride, width, True, mean[row] if centered else zero, rstd[row],
                xhat, g, w, unused, unused, zero)
            sum_g, sum_gxhat = _gpu_ops.block_sum2(pairs[parity], sum_g, sum_gxhat, warps)
            parity ^= 1
            if tid == 0:
                at = 2 * (row * cuda.gridDim.x + seg)
                sums[at] = sum_g
                sums[at + 1] = sum_gxhat
    return _jit(_config.CUDA_ROW_BLOCK_THREADS)(_name(kernel, "bwd_split_sums", vec, centered,
                                                      None))


# Backward 4. The same blocks as backward 3, looping over rows. Each thread adds the row's segment
# sums in segment order (no barrier), writes dx (plus dresidual) for its segment and keeps its
# columns' dy * xhat and dy; each block writes its segment of one partial row.
def backward4_split_dx(storage, vec, chunks, index, centered=True, residual=None):
    """Backward kernel 4, ``_ln_bwd_split_dx_{vector,scalar}``."""
    compute, steps = _steps(storage, vec, chunks, index, centered, residual)
    gradient_sums, input_gradient = steps["gradient_sums"], steps["input_gradient"]
    store_partials, fill = steps["store_partials"], steps["fill"]
    segment_span = steps["segment_span"]
    items = vec * chunks

    def kernel(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx, dres, lddres, sums,
               dweight_part, dbias_part, rows, cols, segment):
        xhat = cuda.local.array(items, compute)
        g = cuda.local.array(items, compute)
        w = cuda.local.array(vec, compute)
        dweight_acc = cuda.local.array(items, compute)
        dbias_acc = cuda.local.array(items, compute)
        tid = cuda.threadIdx.x
        segments = cuda.gridDim.x
        start, width = segment_span(cols, segment)
        stride, first = index(cuda.blockDim.x * vec), index(tid * vec)
        n = compute(cols)
        zero = compute(0)
        fill(dweight_acc, zero)
        fill(dbias_acc, zero)
        for row in range(int64(cuda.blockIdx.y), rows, int64(cuda.gridDim.y)):
            row_rstd = rstd[row]
            at = 2 * row * segments
            sum_g = sums[at]
            sum_gxhat = sums[at + 1]
            for other in range(1, segments):
                sum_g += sums[at + 2 * other]
                sum_gxhat += sums[at + 2 * other + 1]
            gradient_sums(dy, row * lddy + int64(start), x, row * ldx + int64(start), weight,
                          has_weight, start, first, stride, width, True,
                          mean[row] if centered else zero, row_rstd, xhat, g, w, dweight_acc,
                          dbias_acc, zero)
            input_gradient(dx, row * lddx + int64(start), dres, row * lddres + int64(start),
                           first, stride, width, xhat, g, row_rstd,
                           _math.mean_offset(sum_g, n) if centered else zero,
                           _math.mean_offset(sum_gxhat, n))
        store_partials(dweight_part, dbias_part, int64(cuda.blockIdx.y) * cols + int64(start),
                       first, stride, width, dweight_acc, dbias_acc)
    return _jit(_config.CUDA_ROW_BLOCK_THREADS)(_name(kernel, "bwd_split_dx", vec, centered,
                                                      residual))


# Reduce 1. The backward's second stage, parallel over columns and groups of partial rows: a block
# of (tile columns x groups) threads per tile of columns; thread (c, g) adds partial rows g,
# g + groups, ... of its column in order, then one barrier and the groups' sums in group order.
# Not centered: dweight only.
def reduce1_partials(storage, param, centered=True):
    """Reduction kernel 1, ``_ln_bwd_reduce`` (``_rms_bwd_reduce``); ``param`` is the dtype of
    ``dweight``/``dbias``."""
    compute = _COMPUTE[_compute_dtype(storage)]
    threads = _config.CUDA_REDUCE_THREADS
    shape = (2, threads)
    write = _gradient_writer(param, compute)

    def kernel(dweight_part, dbias_part, parts, cols, dweight, dbias):
        shared = cuda.shared.array(shape, compute)
        c = cuda.threadIdx.x
        group = cuda.threadIdx.y
        tile = cuda.blockDim.x
        groups = cuda.blockDim.y
        col = int64(cuda.blockIdx.x) * tile + c
        inside = col < cols
        dweight_sum = compute(0)
        dbias_sum = compute(0)
        if inside:
            for part in range(int64(group), parts, int64(groups)):
                dweight_sum += dweight_part[part * cols + col]
                if centered:
                    dbias_sum += dbias_part[part * cols + col]
        shared[0, group * tile + c] = dweight_sum
        shared[1, group * tile + c] = dbias_sum
        cuda.syncthreads()
        if group == 0 and inside:
            for other in range(1, groups):
                dweight_sum += shared[0, other * tile + c]
                dbias_sum += shared[1, other * tile + c]
            write(dweight, col, dweight_sum)
            if centered:
                write(dbias, col, dbias_sum)
    kernel.__name__ = kernel.__qualname__ = f"_{'ln' if centered else 'rms'}_bwd_reduce"
    return _jit(threads)(kernel)


def _gradient_writer(param, compute):
    """``write(array, col, value)``: ``array[col] = value`` in ``param``'s dtype (bfloat16
    bits through ``_gpu_ops``' rounding store; other dtypes by assignment)."""
    if not is_bfloat16(param):
        @cuda.jit(device=True, inline="always")
        def write(array, col, value):
            array[col] = value
        return write
    store = _gpu_ops.vector_store(1)

    @cuda.jit(device=True, inline="always")
    def write(array, col, value):
        staged = cuda.local.array(1, compute)
        staged[0] = value
        store(array, 0, uint64(col), staged, 0)
    return write


# Convert 1. bfloat16 bits widened to a float dtype, one element a thread: the device-side copy
# of a bfloat16 gain, bias or statistic into the compute dtype (numba's copy cannot convert).
@functools.cache
def widen1_bfloat16(target):
    """Conversion kernel 1, ``_widen_bfloat16``: ``dst[i] = src[i]`` from bfloat16 bits to the
    float dtype ``target``; ``src`` and ``dst`` are 1-D and contiguous."""
    load, store = _gpu_ops.vector_load(1), _gpu_ops.vector_store(1)
    wide = from_dtype(np.dtype(target))

    def kernel(src, dst, size):
        i = cuda.grid(1)
        if i < size:
            value = cuda.local.array(1, wide)
            load(src, 0, uint64(i), value, 0)
            store(dst, 0, uint64(i), value, 0)
    kernel.__name__ = kernel.__qualname__ = "_widen_bfloat16"
    return _jit(CONVERT_THREADS)(kernel)


#: Threads per block of :func:`widen1_bfloat16`.
CONVERT_THREADS = 256


def widen_bfloat16(src, dst, stream):
    """Launch :func:`widen1_bfloat16`: ``src`` (bfloat16 bits) into ``dst`` (a float dtype).

    Both are 1-D contiguous device arrays of one size; ``src`` is ``int16``.
    """
    size = src.shape[0]
    if size:
        _run(Launch("widen1_bfloat16", (-(-size // CONVERT_THREADS),), (CONVERT_THREADS,),
                    widen1_bfloat16(np.dtype(dst.dtype))), stream, (src, dst, size))


# --------------------------------------------------------------------------
# Kernels by name, plan, launchers, signatures
# --------------------------------------------------------------------------

#: Factory name -> factory; the main kernels take ``(storage, vec, chunks, index)``.
FACTORIES = {
    "forward1_warp": forward1_warp,
    "forward2_block": forward2_block,
    "forward3_split_stats": forward3_split_stats,
    "forward4_split_normalize": forward4_split_normalize,
    "backward1_warp": backward1_warp,
    "backward2_block": backward2_block,
    "backward3_split_sums": backward3_split_sums,
    "backward4_split_dx": backward4_split_dx,
}

#: The row schedules, and the kernels each runs per pass, in launch order.
VARIANTS = {
    "warp": {"forward": ("forward1_warp",), "backward": ("backward1_warp",)},
    "block": {"forward": ("forward2_block",), "backward": ("backward2_block",)},
    "split": {"forward": ("forward3_split_stats", "forward4_split_normalize"),
              "backward": ("backward3_split_sums", "backward4_split_dx")},
}

_INDEX = {"uint32": uint32, "uint64": uint64}


def kernel(name, storage, vec, chunks, index="uint32", tunables=None, centered=True,
           residual=None):
    """The numba CUDA kernel of factory ``name`` for one configuration (built once, not compiled).

    Parameters
    ----------
    name : str
        A key of :data:`FACTORIES`.
    storage : numpy.dtype
        dtype of ``x``.
    vec, chunks : int
        Elements per access (1: the scalar kernel), vectors per thread.
    index : {"uint32", "uint64"}
        Column-offset type.
    tunables : tuple, optional
        The ``_config`` values the factory reads (part of the cache key, so
        a test that patches them gets kernels built for them).
    centered : bool, optional
        False for RMSNorm (no mean, no bias).
    residual : numpy.dtype, optional
        Forward: the dtype of the residual ``r`` and of ``s = x + r``;
        backward: of ``dresidual`` (``x``'s). None: no residual stream.

    Returns
    -------
    numba.cuda dispatcher

    Examples
    --------
    >>> from numba_ln import gpu
    >>> gpu.kernel("forward1_warp", np.dtype("float32"), 4, 2).py_func.__name__
    '_ln_fwd_warp_vector'
    """
    return _built(name, _canonical(storage), vec, chunks, index, tunables, centered,
                  None if residual is None else _canonical(residual))


@functools.cache
def _built(name, storage, vec, chunks, index, tunables, centered, residual):
    """:func:`kernel`, cached on every argument given (defaults too, so one kernel is one key)."""
    del tunables  # only a cache key
    return FACTORIES[name](storage, vec, chunks, _INDEX[index], centered, residual)


def reduction_kernel(storage, param, tunables=None, centered=True):
    """The gradient reduction for ``x`` of ``storage`` and ``dweight`` of ``param`` dtype
    (and ``dbias``, when ``centered``)."""
    return _built_reduction(_canonical(storage), _canonical(param), tunables, centered)


@functools.cache
def _built_reduction(storage, param, tunables, centered):
    del tunables  # only a cache key
    return reduce1_partials(storage, param, centered)


def _tunables():
    return (_config.CUDA_ROW_BLOCK_THREADS, _config.CUDA_REDUCE_THREADS, _config.CUDA_FASTMATH)


class Launch(NamedTuple):
    """One kernel launch that :func:`plan` chose."""

    name: str           #: factory name (a key of FACTORIES, or "reduce1_partials")
    grid: tuple         #: blocks, (x,) or (x, y)
    block: tuple        #: threads per block, (x,) or (x, y)
    kernel: object      #: the numba CUDA kernel


class Plan(NamedTuple):
    """How one pass runs: the schedule, the vector width, the launches in order."""

    variant: str        #: a key of VARIANTS
    vec: int            #: elements per access (1: scalar kernels)
    chunks: int         #: vectors each thread holds
    lanes: int          #: threads per row (warp kernels), block threads otherwise
    segment: int        #: row elements per block (split kernels; ``cols`` otherwise)
    segments: int       #: blocks per row (split kernels; 1 otherwise)
    partials: int       #: partial dweight/dbias rows (backward; 0 for forward)
    workspace: int      #: compute-dtype elements of scratch the launches need
    launches: tuple     #: Launch, in order (backward: the reduction last)


def _next_pow2(value):
    """The smallest power of two >= ``value`` (>= 1)."""
    return 1 << (max(1, value) - 1).bit_length()


def _check_pow2(name, value, least):
    if value < least or value & (value - 1):
        raise ValueError(f"_config.{name} must be a power of two >= {least}, got {value}")


def vector_width(storage, cols, pointers=(), row_strides=()):
    """Elements per access for these arrays: 16 bytes' worth, or 1.

    Parameters
    ----------
    storage : numpy.dtype
        dtype of ``x``.
    cols : int
        Row length.
    pointers : sequence of int
        Device addresses of every array the kernels read or write row-wise
        (and of ``weight``/``bias``).
    row_strides : sequence of int
        Row strides, in elements of ``storage``.

    Returns
    -------
    int
        ``16 // itemsize`` when every pointer is 16-byte aligned and ``cols``
        and every row stride are multiples of it; else 1.

    Examples
    --------
    >>> vector_width(np.dtype("float32"), 768, [4096, 8192], [768])
    4
    >>> vector_width(np.dtype("float32"), 768, [4100], [768])
    1
    >>> vector_width(np.dtype("float16"), 100, [0], [100])
    1
    """
    vec = _gpu_ops.VECTOR_BYTES // np.dtype(storage).itemsize
    if (cols % vec or any(p % _gpu_ops.VECTOR_BYTES for p in pointers)
            or any(s % vec for s in row_strides)):
        return 1
    return vec


#: Most elements a thread holds in one unrolled local array, in 16-byte vectors
#: (64: eight vectors of float16) and in scalars: more would not be unrolled
#: (the array would go to local memory), and scalar loads need a register for
#: each address.
MAX_ITEMS = 64
MAX_SCALAR_ITEMS = 16
#: Most vectors a thread of a split kernel holds (its backward's limit, for both passes).
SPLIT_CHUNKS = 4


def _row_itemsize(direction, storage, residual=None):
    """Bytes a thread's budget counts per element it holds: the forward's row (``s``'s
    dtype with a residual: what is held is ``s``, the residual's vector only passes through
    at load time), the backward's two compute-type values."""
    if direction == "forward":
        return max(storage.itemsize, 0 if residual is None else np.dtype(residual).itemsize)
    return 2 * _compute_dtype(storage).itemsize


def chunk_limits(direction, storage, vec, residual=None):
    """The most vectors a thread of a warp kernel, and of a block kernel, holds.

    The forward holds the row (``CUDA_WARP_ROW_BYTES`` / ``CUDA_BLOCK_ROW_BYTES``
    of storage, or of ``s`` with a ``residual`` of a wider dtype); the backward
    four compute-type arrays (``xhat``, ``w * dy`` and two column sums) in the
    registers of two. At most :data:`MAX_ITEMS` elements either way.

    Examples
    --------
    >>> [chunk_limits(direction, np.dtype("float32"), 4) for direction in ("forward", "backward")]
    [(8, 8), (4, 4)]
    >>> chunk_limits("forward", np.dtype("float16"), 8, residual=np.dtype("float32"))
    (4, 4)
    """
    storage = _canonical(storage)
    itemsize = _row_itemsize(direction, storage, residual)
    most = MAX_ITEMS if vec > 1 else MAX_SCALAR_ITEMS
    return tuple(max(1, min(budget // itemsize, most) // vec)
                 for budget in (_config.CUDA_WARP_ROW_BYTES, _config.CUDA_BLOCK_ROW_BYTES))


def max_chunks(name, storage, vec, residual=None):
    """The most vectors a thread of kernel ``name`` (a key of FACTORIES) holds under the plan.

    Examples
    --------
    >>> [max_chunks(name, np.dtype("float32"), 4) for name in FACTORIES]
    [8, 8, 4, 4, 4, 4, 4, 4]
    """
    direction = "forward" if name.startswith("forward") else "backward"
    warp_chunks, block_chunks = chunk_limits(direction, storage, vec, residual)
    if "split" in name:
        return min(SPLIT_CHUNKS, chunk_limits("backward", storage, vec)[1])
    return warp_chunks if "warp" in name else block_chunks


def plan(direction, rows, cols, storage, pointers=(), row_strides=(), param=None, *,
         centered=True, residual=None):
    """Choose the kernels and launch configuration for a call (the only place that does).

    Parameters
    ----------
    direction : {"forward", "backward"}
    rows, cols : int
        The 2-D view of the problem (``rows`` may be 0; ``cols >= 1``).
    storage : numpy.dtype
        dtype of ``x``.
    pointers, row_strides : sequence of int
        Addresses and row strides of the arrays, for :func:`vector_width`.
    param : numpy.dtype, optional
        dtype of ``dweight``/``dbias`` (backward; default the compute dtype).
    centered : bool, optional
        False for RMSNorm: the same schedules, kernels built without the mean.
    residual : numpy.dtype, optional
        The residual stream's dtype (forward: ``r`` and ``s``, whose row the
        forward holds; backward: ``dresidual``); None without one. Its
        pointers and row strides belong in ``pointers``/``row_strides``.

    Returns
    -------
    Plan
        Rows of at most ``CUDA_WARP_ROW_BYTES`` (forward; the backward half
        of it) per lane get a warp, or the smallest power-of-two part of one
        that covers them; rows of at most ``CUDA_BLOCK_ROW_BYTES`` (backward:
        half) per thread of a ``CUDA_ROW_BLOCK_THREADS`` block get a block;
        longer rows, and rows of at least ``CUDA_SPLIT_MIN_COLS`` when there
        are fewer than ``CUDA_SPLIT_MAX_ROWS``, are split into segments of
        ``CUDA_SPLIT_SEGMENT_BYTES``. Backward passes write at most
        ``CUDA_BACKWARD_MAX_PARTIALS`` partial rows.

    Raises
    ------
    ValueError
        A block size in ``_config`` that is not a power of two >= 32, or an
        unknown ``direction``.

    Examples
    --------
    >>> from numba_ln import gpu
    >>> p = gpu.plan("forward", 4096, 768, np.dtype("float32"), [0], [768])
    >>> p.variant, p.vec, p.chunks, p.lanes, p.launches[0].grid
    ('warp', 4, 8, 32, (1024,))
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    warp_threads = _config.CUDA_WARP_BLOCK_THREADS
    row_threads = _config.CUDA_ROW_BLOCK_THREADS
    _check_pow2("CUDA_WARP_BLOCK_THREADS", warp_threads, WARP_SIZE)
    _check_pow2("CUDA_ROW_BLOCK_THREADS", row_threads, WARP_SIZE)
    storage = _canonical(storage)
    compute = _compute_dtype(storage)
    vec = vector_width(storage, cols, pointers, row_strides)
    residual = None if residual is None else _canonical(residual)
    warp_chunks, block_chunks = chunk_limits(direction, storage, vec, residual)
    index = "uint32" if cols + row_threads * block_chunks * vec < 2 ** 32 else "uint64"
    vectors = -(-cols // vec)
    few_long = rows < _config.CUDA_SPLIT_MAX_ROWS and cols >= _config.CUDA_SPLIT_MIN_COLS
    max_partials = _config.CUDA_BACKWARD_MAX_PARTIALS
    segments, segment, workspace, partials = 1, cols, 0, 0
    if vectors <= WARP_SIZE * warp_chunks and not few_long:
        variant = "warp"
        lanes = min(WARP_SIZE, _next_pow2(vectors))
        chunks = _next_pow2(-(-vectors // lanes))
        groups = warp_threads // lanes
        grid = max(1, -(-rows // groups))
        if direction == "backward":
            grid = max(1, min(grid, max_partials // (warp_threads // WARP_SIZE)))
            partials = grid * (warp_threads // WARP_SIZE)
        block = warp_threads
    elif vectors <= row_threads * block_chunks and not few_long:
        variant = "block"
        lanes = block = min(row_threads, max(WARP_SIZE, _next_pow2(-(-vectors // block_chunks))))
        chunks = _next_pow2(-(-vectors // block))
        grid = max(1, rows)
        if direction == "backward":
            grid = max(1, min(grid, max_partials))
            partials = grid
    else:
        variant = "split"
        itemsize = _row_itemsize(direction, storage, residual)
        segment_vectors = max(1, _config.CUDA_SPLIT_SEGMENT_BYTES // itemsize // vec)
        # Few vectors a thread: a segment is small, and more threads fill the GPU sooner.
        chunks = max_chunks("backward3_split_sums", storage, vec)
        lanes = block = min(row_threads,
                            max(WARP_SIZE, _next_pow2(-(-segment_vectors // chunks))))
        chunks = min(chunks, _next_pow2(-(-segment_vectors // block)))
        segment = block * chunks * vec
        segments = -(-cols // segment)
        row_blocks = max(1, min(rows, 65535))  # gridDim.y's limit
        if direction == "backward":
            row_blocks = max(1, min(row_blocks, max_partials))
            partials = row_blocks
        grid = (segments, row_blocks)
        workspace = 2 * rows * segments
    launches = tuple(
        Launch(name, grid if isinstance(grid, tuple) else (grid,), (block,),
               kernel(name, storage, vec, chunks, index, _tunables(), centered, residual))
        for name in VARIANTS[variant][direction])
    if direction == "backward":
        # Few partial rows: fewer groups, wider tiles, the same threads a block.
        groups = min(_config.CUDA_REDUCE_GROUPS, _next_pow2(max(1, partials)),
                     _config.CUDA_REDUCE_THREADS)
        tile = _config.CUDA_REDUCE_THREADS // groups
        param = np.dtype(compute if param is None else param)
        launches += (Launch("reduce1_partials", (-(-cols // tile),), (tile, groups),
                            reduction_kernel(storage, param, _tunables(), centered)),)
        workspace += 2 * partials * cols
    return Plan(variant, vec, chunks, lanes, segment, segments, partials, workspace, launches)


def _run(launch, stream, args):
    """``kernel[grid, block, stream](*args)``: every launch goes through here.

    Raises
    ------
    RuntimeError
        Under numba's CUDA simulator without warp shuffles (it has none of
        its own; ``tests/gpu/sim_shims.py`` adds a faithful one).
    """
    from ._cuda_backend import simulator_enabled
    if simulator_enabled():
        from numba.cuda.simulator.kernelapi import FakeCUDAModule
        if not hasattr(FakeCUDAModule, "shfl_xor_sync"):
            raise RuntimeError(
                "numba's CUDA simulator has no warp shuffles (cuda.shfl_xor_sync), which "
                "numba-ln's kernels use; install a shim first, as tests/gpu/sim_shims.py "
                "does (sim_shims.installed())")
    launch.kernel[launch.grid, launch.block, stream, 0](*args)


def run_forward(p, stream, x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                workspace, rows, cols, eps, r=None, ldr=0, s=None, lds=0):
    """Launch the forward pass ``p`` (from :func:`plan`) on ``stream``.

    ``weight``/``bias`` are any device buffers when absent (``x`` will do),
    as is ``mean`` for RMSNorm (``rstd`` will do); ``workspace`` holds
    ``p.workspace`` elements of the compute dtype. With a residual ``r``
    (the plan's ``residual``), ``s = x + r`` is written to ``s``; the split
    schedule's second kernel normalizes ``s`` as it reads it back.
    """
    if rows == 0:
        return
    source = (x, ldx) if r is None else (s, lds)  # what the split's second kernel reads
    if r is None:  # stand-ins the kernels built without a residual never touch
        r, ldr, s, lds = x, ldx, y, ldy
    streams = (x, ldx, r, ldr, s, lds)
    if p.variant == "split":
        _run(p.launches[0], stream, streams + (workspace, rows, cols, p.segment))
        _run(p.launches[1], stream, source + (weight, bias, has_weight, has_bias, y, ldy, mean,
                                              rstd, workspace, rows, cols, p.segment, eps))
        return
    args = streams + (weight, bias, has_weight, has_bias, y, ldy, mean, rstd, rows, cols, eps)
    _run(p.launches[0], stream, args + ((p.lanes,) if p.variant == "warp" else ()))


def run_backward(p, stream, dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                 workspace, rows, cols, dweight, dbias, dres=None, lddres=0):
    """Launch the backward pass ``p`` (from :func:`plan`) on ``stream``, reduction included.

    ``workspace`` holds ``p.workspace`` elements of the compute dtype: the
    partial rows of ``dweight`` and of ``dbias``, then (split) the row sums.
    For RMSNorm ``mean`` is any buffer of the compute dtype and ``dbias``
    None (neither is touched). ``dres`` (the plan's ``residual``) is added
    into ``dx``.
    """
    size = p.partials * cols
    dweight_part, dbias_part = workspace[:size], workspace[size:2 * size]
    if dres is None:  # a stand-in the kernels built without dresidual never touch
        dres, lddres = dx, lddx
    if rows:
        common = (dy, lddy, x, ldx, mean, rstd, weight, has_weight)
        if p.variant == "split":
            sums = workspace[2 * size:]
            _run(p.launches[0], stream, common + (sums, rows, cols, p.segment))
            _run(p.launches[1], stream, common + (dx, lddx, dres, lddres, sums, dweight_part,
                                                  dbias_part, rows, cols, p.segment))
        else:
            args = common + (dx, lddx, dres, lddres, dweight_part, dbias_part, rows, cols)
            _run(p.launches[0], stream, args + ((p.lanes,) if p.variant == "warp" else ()))
    _run(p.launches[-1], stream, (dweight_part, dbias_part, p.partials if rows else 0, cols,
                                  dweight, dweight if dbias is None else dbias))


def signatures(dtype, param_dtype=None, weight_dtype=None, residual_dtype=None):
    """The argument types every kernel is launched with, for ``x`` of ``dtype``.

    The launchers pass exactly these (1-D C-contiguous buffers, int64 sizes,
    a compute-type ``eps``), so ``numba.cuda.compile_ptx`` on them compiles
    the code that runs.

    Parameters
    ----------
    dtype : numpy.dtype
        Storage dtype of ``x``: float16, bfloat16, float32 or float64 (bfloat16
        arrays are ``int16``: :func:`storage_type`).
    param_dtype : numpy.dtype, optional
        dtype of ``dweight``/``dbias`` (default: the compute dtype).
    weight_dtype : numpy.dtype, optional
        dtype of ``weight``/``bias`` (default: ``dtype``).
    residual_dtype : numpy.dtype, optional
        dtype of the forward's residual ``r`` and of ``s`` (default:
        ``dtype``, which the stand-ins of a call without a residual have);
        ``forward4_split_normalize`` then reads ``s``. ``dresidual`` has
        ``dtype``.

    Returns
    -------
    dict of str to tuple
        Factory name (a key of :data:`FACTORIES`, and ``"reduce1_partials"``)
        to its numba argument types.

    Examples
    --------
    >>> from numba_ln import gpu
    >>> partials, _, parts, _, dweight, _ = gpu.signatures("float16")["reduce1_partials"]
    >>> print(partials, parts, dweight)
    array(float32, 1d, C) int64 array(float32, 1d, C)
    """
    dtype = _canonical(dtype)
    compute_np = _compute_dtype(dtype)
    storage = storage_type(dtype)
    compute = _COMPUTE[compute_np]
    param = storage_type(compute_np if param_dtype is None else param_dtype)
    gains = storage_type(dtype if weight_dtype is None else weight_dtype)[::1]
    data, values = storage[::1], compute[::1]
    summed = storage_type(dtype if residual_dtype is None else residual_dtype)[::1]
    streams = (data, int64, summed, int64, summed, int64)
    params = (gains, gains, boolean, boolean, data, int64, values, values)
    backward = (data, int64, data, int64, values, values, gains, boolean)
    dx = (data, int64, data, int64)  # dx, then dresidual
    return {
        "forward1_warp": streams + params + (int64, int64, compute, int64),
        "forward2_block": streams + params + (int64, int64, compute),
        "forward3_split_stats": streams + (values, int64, int64, int64),
        "forward4_split_normalize": (summed, int64) + params + (values, int64, int64, int64,
                                                                compute),
        "backward1_warp": backward + dx + (values, values, int64, int64, int64),
        "backward2_block": backward + dx + (values, values, int64, int64),
        "backward3_split_sums": backward + (values, int64, int64, int64),
        "backward4_split_dx": backward + dx + (values, values, values, int64, int64, int64),
        "reduce1_partials": (values, values, int64, int64, param[::1], param[::1]),
    }
