"""numba-ln on Dask arrays: the four functions, lazily, chunk by chunk, on one machine or a cluster.

``numba_ln.dask.layer_norm``, ``layer_norm_backward``, ``rms_norm`` and
``rms_norm_backward`` take the top-level functions' arguments and return
``dask.array.Array`` objects; nothing is computed until the caller asks.
Each chunk is handed to the top-level function itself -- the one dispatch --
so NumPy chunks run on the CPU kernels and chunks with
``__cuda_array_interface__`` (CuPy) on the GPU kernels, where they are.

A row must lie in one chunk: the normalized axes (``x.shape[axis:]``) are
rechunked to one chunk each, with a :class:`RechunkWarning` that says what
it costs, or refused with ``rechunk=False``. The batch axes keep their
chunks; arrays that must line up (``x``, ``dy``, ``residual``,
``dresidual``, ``mean``, ``rstd``) are brought to common chunks along them.

Every chunk's ``y``, ``s``, ``mean``, ``rstd`` and ``dx`` are the bits the
top-level function gives for the whole array (a row's results never depend
on the other rows of a call; on the GPU, except in a chunk of fewer than
``CUDA_SPLIT_MAX_ROWS`` rows of ``CUDA_SPLIT_MIN_COLS`` or more, which takes
the split-row kernels where the whole array may not). ``dweight`` and ``dbias`` are sums over all
rows: each chunk's call returns its rows' sums (in the compute dtype, as the
top-level function adds them), which are widened to float64 and added in a
tree of fixed shape -- at most :data:`SPLIT_EVERY` at a time, always in the
order of the chunks -- then rounded once to the parameters' dtype. The tree
depends on the chunking alone, so one chunking gives the same bits on every
run and scheduler (threads, processes, a cluster); another chunking groups
the rows differently and may round differently, within the float64
reference's tolerance. With the batch in one chunk the bits are the
top-level function's.

Examples
--------
>>> import dask.array as da
>>> import numpy as np
>>> import numba_ln.dask
>>> x = da.from_array(np.arange(12.0).reshape(4, 3), chunks=(2, 3))
>>> y, mean, rstd = numba_ln.dask.layer_norm(x, eps=0.0, return_stats=True)
>>> y.chunks, mean.chunks
(((2, 2), (3,)), ((2, 2), (1,)))
>>> mean.compute().ravel()
array([ 1.,  4.,  7., 10.])
"""

import functools
import math
import operator
import warnings

import numpy as np

try:
    import dask.array as da
    from dask.array.core import PerformanceWarning
    from dask.array.utils import meta_from_array
    from dask.base import tokenize
    from dask.core import flatten
    from dask.highlevelgraph import HighLevelGraph
except ImportError as _error:  # the optional extra is missing
    raise ImportError(
        f"numba_ln.dask needs Dask's arrays ({_error}); install numba-ln's dask extra: "
        f"pip install 'numba-ln[dask]'") from _error

from . import _dispatch, _validate, api

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward",
           "RechunkWarning", "SPLIT_EVERY"]

#: Most partial sums of ``dweight``/``dbias`` one task of the tree adds
#: (Dask's ``split_every``). Part of the bits' recipe: changing it changes
#: the tree, hence possibly the rounding.
SPLIT_EVERY = 8


class RechunkWarning(PerformanceWarning):
    """A normalized axis was split across chunks, and ``numba_ln.dask`` rechunked it.

    A subclass of Dask's ``PerformanceWarning``: filters for that one catch it.
    """


# --------------------------------------------------------------------------- per chunk
# The functions Dask runs on the workers: module-level, so they pickle by
# name. Each calls the top-level function once per chunk.


def _is_cupy(chunk):
    return type(chunk).__module__.split(".")[0] == "cupy"


def _like(result, chunk):
    """A result in the chunk's array type: CuPy for CuPy chunks (no copy), else as it is.

    The top-level functions return numba device arrays for CUDA inputs;
    a CuPy-backed Dask array needs CuPy chunks back.
    """
    if result is None or isinstance(result, np.ndarray) or not _is_cupy(chunk):
        return result
    import cupy  # a CuPy chunk means CuPy is there
    return cupy.asarray(result)


def _partial_sum(grad, batch_ndim, chunk):
    """A chunk's ``dweight``/``dbias`` as float64, shape ``(1,) * batch_ndim + grad.shape``.

    NumPy for NumPy chunks, CuPy for CuPy chunks; numba device arrays have no
    arithmetic, so their partial sums -- one row each -- are copied to the host.
    """
    if not isinstance(grad, np.ndarray):
        grad = _like(grad, chunk) if _is_cupy(chunk) else grad.copy_to_host()
    return grad.astype(np.float64).reshape((1,) * batch_ndim + tuple(grad.shape))


def _forward_block(x, weight, bias, residual, *, centered, axis, eps, return_stats, device):
    """One chunk's forward: the top-level function's results, always as a tuple.

    ``x`` (and ``residual``) is a chunk holding whole rows; the results are
    the top-level function's, in its order, in the chunk's array type.
    """
    if centered:
        results = api.layer_norm(x, weight, bias, axis=axis, eps=eps, return_stats=return_stats,
                                 device=device, residual=residual)
    else:
        results = api.rms_norm(x, weight, axis=axis, eps=eps, return_stats=return_stats,
                               device=device, residual=residual)
    results = results if isinstance(results, tuple) else (results,)
    return tuple(_like(result, x) for result in results)


def _gain_in(weight, dtype):
    """``weight`` in the compute ``dtype``, where it lives (a numba device array: via the host)."""
    if weight is None or np.dtype(weight.dtype) == dtype:
        return weight
    if isinstance(weight, np.ndarray) or _is_cupy(weight):
        return weight.astype(dtype)
    from numba import cuda  # a numba device array has no astype: one row goes round the host
    return cuda.to_device(weight.copy_to_host().astype(dtype))


def _backward_block(dy, x, mean, rstd, weight, dresidual, *, centered, axis, compute, device):
    """One chunk's backward: ``(dx, dweight partial[, dbias partial])``.

    ``mean``/``rstd`` hold one element per row of the chunk. ``weight`` is
    first put in the ``compute`` dtype, which the kernels convert it to
    anyway (``dx`` is unchanged), so the partial sums come back as the
    kernels added them, before any rounding to the parameters' dtype (see
    :func:`_partial_sum`).
    """
    weight = _gain_in(weight, compute)
    if centered:
        dx, *grads = api.layer_norm_backward(dy, x, mean, rstd, weight, axis=axis,
                                             device=device, dresidual=dresidual)
    else:
        dx, *grads = api.rms_norm_backward(dy, x, rstd, weight, axis=axis, device=device,
                                           dresidual=dresidual)
    return (_like(dx, x),) + tuple(_partial_sum(g, axis, x) for g in grads)


def _pick(results, index, axis=None, keepdims=True, computing_meta=False):
    """A reduction's first step: a chunk's partial sum, taken from its results' tuple."""
    if computing_meta:  # Dask asks with an empty array for the result's type
        return results.astype(np.float64)
    return results[index]


def _add_partials(parts, axis, keepdims, computing_meta=False, dtype=None):
    """Add partial sums in the order of their chunks, in float64; cast to ``dtype`` if given.

    ``parts`` holds one partial sum per chunk along the leading ``axis``
    axes (those of the batch), in C order of the chunks: they are added one
    after another, first to last, whatever order they were computed in.
    """
    if computing_meta or not parts.size:  # Dask's question about the result's type
        return parts if dtype is None else parts.astype(dtype)
    batch_ndim = len(axis)
    shape = tuple(parts.shape[batch_ndim:])
    rows = parts.reshape((-1,) + shape)
    total = rows[0].astype(np.float64, copy=True)
    for row in rows[1:]:
        total += row
    if dtype is not None:
        total = total.astype(dtype)
    return total.reshape((1,) * batch_ndim + shape) if keepdims else total


# --------------------------------------------------------------------------- graphs


def _refuse(function, **given):
    """``TypeError`` for an argument the Dask functions do not offer (``out=``, ...)."""
    for name, value in given.items():
        if value is None:
            continue
        if name == "stream":
            why = ("chunks run in Dask's workers, each on the stream its CUDA arrays export "
                   "(else the per-thread default stream); a stream of this process means "
                   "nothing there")
        else:
            result = "s" if name == "residual_out" else "the result"
            why = (f"Dask arrays are immutable, so there is nothing to write into: use the "
                   f"returned Dask array ({result}), and da.store(it, target) to write it "
                   f"into an existing array")
        raise TypeError(f"numba_ln.dask.{function} takes no {name}= (expected None, got "
                        f"{type(value).__name__}): {why}")


def _as_dask(array, name):
    """``x`` as a Dask array with known chunk sizes (array-likes become one)."""
    if not isinstance(array, da.Array):
        array = da.asarray(array)
    if any(math.isnan(size) for size in array.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {array.shape}); expected "
                         f"known ones: call {name}.compute_chunk_sizes() first")
    _validate.check_not_masked(array._meta, name)
    return array


def _like_x(array, x, name):
    """An array that lines up with ``x``: Dask arrays as they are, others in ``x``'s chunks."""
    if array is None or isinstance(array, da.Array):
        return array if array is None else _as_dask(array, name)
    return _as_dask(da.from_array(_shape_only(array), chunks=x.chunks), name)


def _shape_only(array):
    """Something with the ``shape`` and ``dtype`` the validators read (lists become NumPy)."""
    return array if array is None or hasattr(array, "dtype") else np.asarray(array)


def _whole_rows(array, name, axis, rechunk):
    """``array`` with its axes from ``axis`` on in one chunk each; batch axes untouched.

    Split normalized axes are rechunked with a :class:`RechunkWarning`, or,
    with ``rechunk=False``, refused with a ``ValueError`` that says how.
    """
    split = [ax for ax in range(axis, array.ndim) if len(array.chunks[ax]) > 1]
    if not split:
        return array
    split_chunks = ", ".join(f"{name}.chunks[{ax}] = {array.chunks[ax]}" for ax in split)
    fix = "{" + ", ".join(f"{ax}: -1" for ax in split) + "}"
    if not rechunk:
        raise ValueError(
            f"{name} is split along normalized axes {tuple(split)} ({split_chunks}); expected "
            f"each row ({name}.shape[{axis}:]) in one chunk: rechunk it first, e.g. "
            f"{name} = {name}.rechunk({fix}), or pass rechunk=True")
    batch_block = math.prod(max(c, default=0) for c in array.chunks[:axis])
    chunk_bytes = batch_block * math.prod(array.shape[axis:]) * array.dtype.itemsize
    warnings.warn(
        f"{name} is split along normalized axes {tuple(split)} ({split_chunks}); "
        f"numba_ln.dask rechunks them to one chunk each, at the cost of an all-to-all "
        f"shuffle of {name}'s {_format_bytes(array.nbytes)} into chunks of up to "
        f"{_format_bytes(chunk_bytes)}. Rechunk once yourself ({name}.rechunk({fix})) to pay "
        f"this once, or pass rechunk=False to make it an error", RechunkWarning, stacklevel=4)
    return array.rechunk({ax: -1 for ax in split})


def _format_bytes(count):
    """``"512 B"``, ``"3.0 KiB"``, ``"1.5 GiB"``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _param(param):
    """A weight/bias as a one-chunk Dask array, or None."""
    if param is None:
        return None
    param = param if isinstance(param, da.Array) else da.asarray(param)
    return param.rechunk(-1) if any(len(c) > 1 for c in param.chunks) else param


def _meta(x, ndim, dtype):
    """An empty array of ``x``'s chunk type (NumPy, CuPy, ...), ``ndim`` and ``dtype``."""
    return meta_from_array(x._meta, ndim=ndim, dtype=dtype)


def _outputs(blocks, label, outputs):
    """Split the Dask array of result tuples ``blocks`` into one Dask array per result.

    ``outputs`` holds ``(name, chunks, meta)`` for each element of the
    tuples, in order. Each result's chunk ``k`` is
    element ``i`` of ``blocks``' chunk ``k``, so the kernels run once per
    chunk however many results are used.
    """
    keys = list(flatten(blocks.__dask_keys__()))
    arrays = []
    for i, (name, chunks, meta) in enumerate(outputs):
        leaf = f"{label}-{name}-{tokenize(blocks.name, i)}"
        layer = {(leaf,) + key[1:]: (operator.getitem, key, i) for key in keys}
        graph = HighLevelGraph.from_collections(leaf, layer, dependencies=[blocks])
        arrays.append(da.Array(graph, leaf, chunks=chunks, meta=meta))
    return arrays


def _forward(function, centered, x, weight, bias, axis, eps, return_stats, device, residual,
             rechunk):
    """The graph of ``layer_norm`` (``centered``) or ``rms_norm`` on Dask arrays."""
    _dispatch.check_device(device)
    x = _as_dask(x, "x")
    weight, bias, given_residual = (_shape_only(a) for a in (weight, bias, residual))
    spec, eps = _validate.forward_spec(x, weight, bias, axis, eps, None)
    s_dtype = _validate.residual_dtype(given_residual, None, spec)
    axis = spec.axis
    x = _whole_rows(x, "x", axis, rechunk)
    if residual is not None:
        residual = _whole_rows(_like_x(residual, x, "residual"), "residual", axis, rechunk)
    index = tuple(range(x.ndim))
    rows = index[axis:]
    arguments = [x, index]
    for array, array_index in ((_param(weight), rows),
                               (_param(bias), rows), (residual, index)):
        arguments += [array, None if array is None else array_index]
    block = functools.partial(_forward_block, centered=centered, axis=axis, eps=eps,
                              return_stats=return_stats, device=device)
    blocks = da.blockwise(block, index, *arguments, concatenate=True, meta=x._meta,
                          token=f"numba_ln-{function}")
    stats_chunks = blocks.chunks[:axis] + ((1,),) * (x.ndim - axis)
    stats_meta = _meta(x, x.ndim, spec.compute_dtype)
    outputs = [("y", blocks.chunks, _meta(x, x.ndim, spec.dtype))]
    if residual is not None:
        outputs.append(("s", blocks.chunks, _meta(x, x.ndim, s_dtype)))
    if return_stats:
        outputs += [(name, stats_chunks, stats_meta)
                    for name in (("mean", "rstd") if centered else ("rstd",))]
    results = _outputs(blocks, function, outputs)
    return results[0] if len(results) == 1 else tuple(results)


def _stat(stat, spec, x, name):
    """``mean``/``rstd`` as a Dask array of the batch shape (one element per row)."""
    batch = spec.shape[:spec.axis]
    if not isinstance(stat, da.Array):
        stat = np.reshape(np.asarray(stat) if not hasattr(stat, "reshape") else stat, batch)
        return _as_dask(da.from_array(stat, chunks=x.chunks[:spec.axis]), name)
    stat = _as_dask(stat, name)
    return stat if stat.shape == batch else stat.reshape(batch)


def _backward(function, centered, dy, x, mean, rstd, weight, axis, device, dresidual, rechunk):
    """The graph of ``layer_norm_backward`` (``centered``) or ``rms_norm_backward``."""
    _dispatch.check_device(device)
    x = _as_dask(x, "x")
    dy, mean, rstd, weight, given_dresidual = (
        _shape_only(a) for a in (dy, mean, rstd, weight, dresidual))
    spec = _validate.backward_spec(dy, x, mean, rstd, weight, axis, centered=centered)
    _validate.check_dresidual(given_dresidual, spec)
    axis = spec.axis
    x = _whole_rows(x, "x", axis, rechunk)
    dy = _whole_rows(_like_x(dy, x, "dy"), "dy", axis, rechunk)
    index = tuple(range(x.ndim))
    batch, rows = index[:axis], index[axis:]
    arguments = [dy, index, x, index]
    for name, stat in (("mean", mean), ("rstd", rstd)):  # mean is None for RMSNorm
        arguments += [None, None] if stat is None else [_stat(stat, spec, x, name), batch]
    weight = _param(weight)
    arguments += [weight, None if weight is None else rows]
    if dresidual is not None:
        dresidual = _whole_rows(_like_x(dresidual, x, "dresidual"), "dresidual", axis, rechunk)
    arguments += [dresidual, None if dresidual is None else index]
    block = functools.partial(_backward_block, centered=centered, axis=axis,
                              compute=spec.compute_dtype, device=device)
    blocks = da.blockwise(block, index, *arguments, concatenate=True, meta=x._meta,
                          token=f"numba_ln-{function}")
    (dx,) = _outputs(blocks, function, [("dx", blocks.chunks, _meta(x, x.ndim, spec.dtype))])
    sums = [_sum_over_rows(blocks, k, spec, x, function, name)
            for k, name in enumerate(("dweight", "dbias") if centered else ("dweight",), 1)]
    return (dx, *sums)


def _sum_over_rows(blocks, index, spec, x, function, name):
    """Element ``index`` of every chunk's results -- a partial sum -- added in a fixed tree."""
    axis = spec.axis
    pick = functools.partial(_pick, index=index)
    return da.reduction(blocks, pick, _add_partials, combine=_add_partials,
                        axis=tuple(range(axis)), keepdims=False, dtype=spec.param_dtype,
                        split_every=SPLIT_EVERY, concatenate=True,
                        meta=_meta(x, x.ndim - axis, spec.param_dtype),
                        name=f"{function}-{name}")


# --------------------------------------------------------------------------- public


def layer_norm(x, weight=None, bias=None, *, axis=-1, eps=1e-5, out=None, return_stats=False,
               device=None, stream=None, residual=None, residual_out=None, rechunk=True):
    """:func:`numba_ln.layer_norm` of a Dask array, chunk by chunk, lazily.

    Builds the graph and returns at once; ``.compute()`` (or
    ``dask.compute``) runs it on any scheduler: threads, processes, or a
    ``distributed`` cluster. Each chunk -- whole rows -- goes to
    :func:`numba_ln.layer_norm`, so every result is the bits that function
    gives for the whole array.

    Parameters
    ----------
    x : dask.array.Array or array_like
        Input of any rank >= 1, dtype float16, bfloat16 (``ml_dtypes``),
        float32 or float64. NumPy chunks run on the CPU, CuPy chunks on their
        GPU. Other array-likes become one-chunk Dask arrays.
    weight, bias : array, optional
        Gain and bias of shape ``x.shape[axis:]`` (NumPy, CuPy or Dask); one
        chunk is sent to every task. ``None`` means 1 and 0.
    axis : int, default -1
        First normalized axis (ONNX): statistics over ``x.shape[axis:]``.
    eps : float, default 1e-5
        Added to the variance; finite and >= 0.
    out : None
        Not offered (Dask arrays are immutable); anything else is an error.
    return_stats : bool, default False
        Also return ``mean`` and ``rstd``, of shape
        ``x.shape[:axis] + (1,) * (x.ndim - axis)``, chunked like ``x``'s
        batch axes (one chunk of 1 along each normalized axis).
    device : {None, "cpu", "cuda"}, optional
        As for :func:`numba_ln.layer_norm`, for every chunk.
    stream : None
        Not offered (a chunk runs on the stream its CUDA arrays export).
    residual : array, optional
        Added to ``x`` first (Dask or an array of ``x``'s shape, which is cut
        into ``x``'s chunks); ``s = x + residual`` is normalized and returned.
    residual_out : None
        Not offered; ``s`` is returned.
    rechunk : bool, default True
        Whether to rechunk normalized axes that are split across chunks (with
        a :class:`RechunkWarning`); ``False`` makes that a ``ValueError``.

    Returns
    -------
    y : dask.array.Array
        ``x``'s shape, dtype and batch chunks; one chunk along each
        normalized axis.
    s : dask.array.Array
        Only with ``residual``: ``x + residual`` in ``residual``'s dtype.
    mean, rstd : dask.array.Array
        Only with ``return_stats=True``: float32 for 16-bit and float32
        inputs, float64 for float64.

    Raises
    ------
    TypeError
        ``out``, ``residual_out`` or ``stream`` given; and as
        :func:`numba_ln.layer_norm` for dtypes.
    ValueError
        A normalized axis split across chunks with ``rechunk=False``;
        unknown chunk sizes; an unknown ``device``; and as
        :func:`numba_ln.layer_norm` for shapes, ``axis`` and ``eps``. Errors
        that depend on the data or the device (no GPU for a CUDA chunk) are
        raised when the graph runs.

    Warns
    -----
    RechunkWarning
        When a normalized axis is split across chunks and rechunked.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import numba_ln, numba_ln.dask
    >>> x = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    >>> dx = da.from_array(x, chunks=(300, 64))
    >>> y, mean, rstd = numba_ln.dask.layer_norm(dx, return_stats=True)
    >>> y.chunks[0], mean.shape
    ((300, 300, 300, 100), (1000, 1))
    >>> bool((y.compute() == numba_ln.layer_norm(x)).all())
    True

    A row split across chunks is gathered into one, with a warning:

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     y = numba_ln.dask.layer_norm(da.from_array(x, chunks=(500, 32)))
    >>> y.chunks, caught[0].category.__name__
    (((500, 500), (64,)), 'RechunkWarning')
    """
    _refuse("layer_norm", out=out, residual_out=residual_out, stream=stream)
    return _forward("layer_norm", True, x, weight, bias, axis, eps, return_stats, device,
                    residual, rechunk)


def layer_norm_backward(dy, x, mean, rstd, weight=None, *, axis=-1, out=None, device=None,
                        stream=None, dresidual=None, rechunk=True):
    """:func:`numba_ln.layer_norm_backward` of Dask arrays: ``dx`` by chunk, sums in a fixed tree.

    Parameters
    ----------
    dy : dask.array.Array or array
        Gradient at ``y``; ``x``'s shape and dtype. Chunked along the batch
        axes otherwise than ``x``: both are brought to common chunks.
    x : dask.array.Array or array_like
        The forward pass's input (``s`` for the fused residual form).
    mean, rstd : dask.array.Array or array
        The forward pass's statistics, in their shape or any shape with one
        element per row.
    weight : array, optional
        The forward pass's gain (NumPy, CuPy or Dask).
    axis : int, default -1
        The forward pass's ``axis``.
    out : None
        Not offered (Dask arrays are immutable).
    device : {None, "cpu", "cuda"}, optional
        As for :func:`numba_ln.layer_norm_backward`, for every chunk.
    stream : None
        Not offered.
    dresidual : array, optional
        The gradient reaching ``s`` through the skip path, added into ``dx``.
    rechunk : bool, default True
        As for :func:`layer_norm`.

    Returns
    -------
    dx : dask.array.Array
        ``x``'s shape and dtype, chunked like the forward's ``y``.
    dweight, dbias : dask.array.Array
        Shape ``x.shape[axis:]``, ``weight``'s dtype (without ``weight``, the
        compute dtype): each chunk's rows' sums, widened to float64 and added
        in a tree of fixed shape (at most :data:`SPLIT_EVERY` at a time, in
        the order of the chunks), rounded once. The same chunking gives the
        same bits on every run and scheduler; another chunking may round
        differently. With the batch in one chunk: the top-level bits.

    Raises
    ------
    TypeError, ValueError
        As for :func:`layer_norm` and :func:`numba_ln.layer_norm_backward`.

    Warns
    -----
    RechunkWarning
        As for :func:`layer_norm`, naming the argument that was split.

    Examples
    --------
    >>> import dask
    >>> import dask.array as da
    >>> import numpy as np
    >>> import numba_ln.dask
    >>> rng = np.random.default_rng(0)
    >>> x = da.from_array(rng.standard_normal((1000, 64)), chunks=(300, 64))
    >>> dy = da.from_array(rng.standard_normal((1000, 64)), chunks=(250, 64))
    >>> y, mean, rstd = numba_ln.dask.layer_norm(x, return_stats=True)
    >>> dx, dweight, dbias = numba_ln.dask.layer_norm_backward(dy, x, mean, rstd)
    >>> dx.chunks[0]  # x's and dy's chunks, made common
    (250, 50, 200, 100, 150, 150, 100)
    >>> first = dask.compute(dweight, dbias)
    >>> again = dask.compute(dweight, dbias, scheduler="sync")  # one thread, another order
    >>> all((a == b).all() for a, b in zip(first, again))
    True
    """
    _refuse("layer_norm_backward", out=out, stream=stream)
    return _backward("layer_norm_backward", True, dy, x, mean, rstd, weight, axis, device,
                     dresidual, rechunk)


def rms_norm(x, weight=None, *, axis=-1, eps=1e-5, out=None, return_stats=False, device=None,
             stream=None, residual=None, residual_out=None, rechunk=True):
    """:func:`numba_ln.rms_norm` of a Dask array, chunk by chunk, lazily.

    Parameters
    ----------
    x, weight, axis, out, device, stream, residual, residual_out, rechunk
        As for :func:`layer_norm` (there is no bias).
    eps : float, default 1e-5
        Added to the mean square; finite and >= 0.
    return_stats : bool, default False
        Also return ``rstd``, chunked as :func:`layer_norm`'s statistics.

    Returns
    -------
    y : dask.array.Array
        ``x``'s shape and dtype.
    s : dask.array.Array
        Only with ``residual``.
    rstd : dask.array.Array
        Only with ``return_stats=True``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`layer_norm`.

    Warns
    -----
    RechunkWarning
        As for :func:`layer_norm`.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import numba_ln.dask
    >>> x = da.from_array(np.array([[3.0, 4.0], [1.0, 1.0]]), chunks=(1, 2))
    >>> y, s = numba_ln.dask.rms_norm(x, eps=0.0, residual=np.zeros((2, 2)))
    >>> y.compute()
    array([[0.84852814, 1.13137085],
           [1.        , 1.        ]])
    """
    _refuse("rms_norm", out=out, residual_out=residual_out, stream=stream)
    return _forward("rms_norm", False, x, weight, None, axis, eps, return_stats, device,
                    residual, rechunk)


def rms_norm_backward(dy, x, rstd, weight=None, *, axis=-1, out=None, device=None, stream=None,
                      dresidual=None, rechunk=True):
    """:func:`numba_ln.rms_norm_backward` of Dask arrays: ``dx`` by chunk, ``dweight`` by a tree.

    Parameters
    ----------
    dy, x, weight, axis, out, device, stream, dresidual, rechunk
        As for :func:`layer_norm_backward`.
    rstd : dask.array.Array or array
        The statistic ``rms_norm(..., return_stats=True)`` returned.

    Returns
    -------
    dx : dask.array.Array
        ``x``'s shape and dtype.
    dweight : dask.array.Array
        As :func:`layer_norm_backward`'s.

    Raises
    ------
    TypeError, ValueError
        As for :func:`layer_norm_backward`.

    Warns
    -----
    RechunkWarning
        As for :func:`layer_norm`.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import numba_ln.dask
    >>> x = da.from_array(np.array([[3.0, 4.0], [6.0, 8.0]]), chunks=(1, 2))
    >>> y, rstd = numba_ln.dask.rms_norm(x, eps=0.0, return_stats=True)
    >>> dx, dweight = numba_ln.dask.rms_norm_backward(y, x, rstd)  # the gradient of sum(y**2) / 2
    >>> bool(abs(dx).max().compute() < 1e-12), dweight.compute()
    (True, array([1.44, 2.56]))
    """
    _refuse("rms_norm_backward", out=out, stream=stream)
    return _backward("rms_norm_backward", False, dy, x, None, rstd, weight, axis, device,
                     dresidual, rechunk)
