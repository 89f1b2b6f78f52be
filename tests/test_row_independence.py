"""A row's results do not depend on the other rows of the call.

Whatever schedule a call takes (the short path, one thread, threads, rows
in pairs, streaming stores), the ``y``, statistics and ``dx`` of a row are
the bits a call on any run of rows around it gives. ``numba_ln.dask``
relies on it: a chunked array computes what the whole one does.
"""

import numpy as np
import pytest

import numba_ln
from numba_ln import cpu
from reference import DTYPES


def _chunks(rows):
    """Row ranges of 1, 3 and 17 rows, then the rest: starts of both parities."""
    bounds = [0, 1, 4, 21, rows]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _assert_same_bits(name, whole, parts):
    joined = np.concatenate(parts)
    assert joined.dtype == whole.dtype
    differ = ~((joined == whole) | (np.isnan(joined) & np.isnan(whole)))
    assert not differ.any(), (
        f"{name}: rows {sorted(set(np.nonzero(differ)[0]))} differ when computed in chunks")


def _inputs(rng, dtype, shape):
    x = (1 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    residual = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    bias = rng.standard_normal(shape[1]).astype(np.float32)
    return x, dy, residual, weight, bias


def _forward(x, weight, bias, residual, norm):
    if norm == "layer":
        return numba_ln.layer_norm(x, weight, bias, return_stats=True, residual=residual)
    return numba_ln.rms_norm(x, weight, return_stats=True, residual=residual)


def _backward(dy, x, stats, weight, dresidual, norm):
    if norm == "layer":
        return numba_ln.layer_norm_backward(dy, x, *stats, weight, dresidual=dresidual)[0]
    return numba_ln.rms_norm_backward(dy, x, stats[-1], weight, dresidual=dresidual)[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1000, 2051], ids=lambda c: f"cols{c}")
@pytest.mark.parametrize("norm,fused", [("layer", False), ("rms", True)])
def test_rows_in_chunks_give_the_bits_of_the_whole_call(rng, dtype, cols, norm, fused):
    """70 rows: threaded with wide rows in pairs; chunks take the short and serial paths."""
    rows = 70
    x, dy, residual, weight, bias = _inputs(rng, dtype, (rows, cols))
    residual = residual if fused else None
    whole = _forward(x, weight, bias, residual, norm)
    parts = [_forward(x[c], weight, bias, None if residual is None else residual[c], norm)
             for c in _chunks(rows)]
    for k, name in enumerate(("y", "s") if fused else ("y",)):
        _assert_same_bits(name, whole[k], [p[k] for p in parts])
    stats = whole[-2:] if norm == "layer" else whole[-1:]
    for k, name in enumerate(("mean", "rstd") if norm == "layer" else ("rstd",)):
        _assert_same_bits(name, stats[k], [p[len(p) - len(stats) + k] for p in parts])
    source = whole[1] if fused else x
    dresidual = dy[::-1].copy() if fused else None
    dx = _backward(dy, source, stats, weight, dresidual, norm)
    dx_parts = [_backward(dy[c], source[c], [s[c] for s in stats], weight,
                          None if dresidual is None else dresidual[c], norm)
                for c in _chunks(rows)]
    _assert_same_bits("dx", dx, dx_parts)


def test_streamed_wide_backward_rows_in_chunks_give_the_same_bits(rng):
    """A backward large enough to stream ``dx`` with wide rows, against small chunks."""
    rows, cols = 2048, 2051
    assert cpu.Plan(*cpu.plan(1, rows, cols, 4)).stream
    x, dy, _, weight, bias = _inputs(rng, np.float32, (rows, cols))
    y, mean, rstd = numba_ln.layer_norm(x, weight, bias, return_stats=True)
    dx = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)[0]
    chunks = _chunks(rows)
    _assert_same_bits("y", y, [numba_ln.layer_norm(x[c], weight, bias) for c in chunks])
    _assert_same_bits("dx", dx, [
        numba_ln.layer_norm_backward(dy[c], x[c], mean[c], rstd[c], weight)[0]
        for c in chunks])
