"""``numba_ln.dask`` with chunks on the GPU, under numba's simulator or on a GPU.

Dask's GPU arrays are CuPy-backed, and CuPy cannot run under the simulator.
These tests build the very graphs ``numba_ln.dask`` ships over chunks that
are numba device arrays (``map_blocks(cuda.to_device)``): each task hands
its chunk to the top-level function, which runs the CUDA kernels on it.
Dask cannot concatenate device arrays, so results are collected chunk by
chunk; ``dweight``/``dbias`` come back to the host (numba device arrays have
no arithmetic: their one-row partial sums are copied). The CuPy-only lines
(results wrapped by ``cupy.asarray``, partial sums kept in CuPy) run on a
stand-in for CuPy's arrays that exports ``__cuda_array_interface__`` as
CuPy does, called through the per-chunk functions Dask runs. The scheduler is Dask's synchronous one: the simulator's
threads per CUDA thread are enough threads.
"""

import sys
import types

import dask
import dask.array as da
import numpy as np
import pytest
from numba import cuda

import numba_ln
import numba_ln.dask as nld
from numba_ln import _cuda_backend

from .gpu_reference import TOLERANCE, layer_norm_backward, rel_error


def on_device(array, chunks):
    """A Dask array of ``array`` whose chunks are numba device arrays."""
    host = da.from_array(array, chunks=chunks)
    return host.map_blocks(cuda.to_device, meta=host._meta)


def by_chunk(lazy):
    """Compute ``lazy`` chunk by chunk (device arrays), copied to the host and joined on axis 0."""
    chunks = dask.compute(*lazy.to_delayed().ravel(), scheduler="sync")
    assert all(_cuda_backend.is_device_array(c) for c in chunks)
    return np.concatenate([c.copy_to_host() for c in chunks])


def data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: np.dtype(d).name)
def test_device_chunks_give_the_whole_arrays_bits(small_launch, dtype):
    """The warp kernels; float16 gains go to float32 on their way in (via the host)."""
    rows, cols = 7, 40
    chunks = ((2, 5), cols)
    x, dy = data((rows, cols), dtype, 0), data((rows, cols), dtype, 1)
    weight, bias = data(cols, dtype, 2), data(cols, dtype, 3)
    y, mean, rstd = numba_ln.layer_norm(cuda.to_device(x), cuda.to_device(weight),
                                        cuda.to_device(bias), return_stats=True)
    dx, dweight, dbias = numba_ln.layer_norm_backward(cuda.to_device(dy), cuda.to_device(x),
                                                      mean, rstd, cuda.to_device(weight))

    lazy_weight = on_device(weight, cols)
    lazy = nld.layer_norm(on_device(x, chunks), lazy_weight, on_device(bias, cols),
                          return_stats=True)
    lazy_grads = nld.layer_norm_backward(on_device(dy, chunks), on_device(x, chunks), *lazy[1:],
                                         lazy_weight)
    for name, got, want in zip(("y", "mean", "rstd", "dx"), (*lazy, lazy_grads[0]),
                               (y, mean, rstd, dx)):
        assert by_chunk(got).tobytes() == want.copy_to_host().tobytes(), name
    sums = dask.compute(*lazy_grads[1:], scheduler="sync")
    ref = layer_norm_backward(dy, x, mean.copy_to_host(), rstd.copy_to_host(), weight)
    for got, whole, expected in zip(sums, (dweight, dbias), ref[1:]):
        assert isinstance(got, np.ndarray) and got.dtype == whole.dtype == dtype
        assert rel_error(got, expected) <= TOLERANCE[np.dtype(dtype).name]


def test_one_row_chunks_of_long_rows_take_the_split_kernels(small_launch, launched):
    """README's note: fewer than CUDA_SPLIT_MAX_ROWS rows of CUDA_SPLIT_MIN_COLS or more.

    Under ``small_launch`` those are 2 and 200: a whole array of 4 rows of
    240 runs the block kernels, chunks of one row the split ones, which add
    a row's segments otherwise (within tolerance); chunks of two rows give
    the whole array's bits.
    """
    x = data((4, 240), np.float32, 4)
    whole = numba_ln.layer_norm(cuda.to_device(x)).copy_to_host()
    assert not any("split" in launch.kernel for launch in launched)
    one_row = by_chunk(nld.layer_norm(on_device(x, (1, 240))))
    assert launched and all("split" in launch.kernel for launch in launched[1:])
    assert rel_error(one_row, whole) <= TOLERANCE["float32"]
    two_rows = by_chunk(nld.layer_norm(on_device(x, (2, 240))))
    assert two_rows.tobytes() == whole.tobytes()


class _CupyLike:
    """The parts of ``cupy.ndarray`` that ``numba_ln.dask`` uses on a CuPy chunk.

    Its memory is a numba device array's (``__cuda_array_interface__``, as
    CuPy exports it); ``astype`` goes through the host, where CuPy would
    stay on the device: it only serves the one-row partial sums.
    """

    __module__ = "cupy._core.core"  # what numba_ln.dask reads to tell CuPy chunks

    def __init__(self, device_array):
        self.array = device_array
        self.shape, self.dtype, self.ndim = device_array.shape, device_array.dtype, device_array.ndim
        self.__cuda_array_interface__ = {
            "shape": tuple(device_array.shape), "strides": tuple(device_array.strides),
            "typestr": device_array.dtype.str, "data": (_cuda_backend._pointer(device_array), False),
            "version": 3, "stream": None}

    def astype(self, dtype):
        return _CupyLike(cuda.to_device(self.array.copy_to_host().astype(dtype)))

    def reshape(self, shape):
        return _CupyLike(self.array.reshape(shape))


def _cupy_module():
    module = types.ModuleType("cupy")
    module.asarray = lambda array: array if isinstance(array, _CupyLike) else _CupyLike(array)
    return module


def test_cupy_chunks_run_on_the_gpu_and_come_back_as_cupy_without_a_copy(small_launch,
                                                                         monkeypatch):
    """The per-chunk functions Dask runs, on CuPy chunks: CUDA kernels, results wrapped in place."""
    if not _cuda_backend.simulator_enabled():
        pytest.skip("the stand-in reads the simulator's device memory")
    monkeypatch.setitem(sys.modules, "cupy", _cupy_module())
    copies = []
    real_copy = _cuda_backend._copy
    monkeypatch.setattr(_cuda_backend, "_copy", lambda *a: copies.append(a) or real_copy(*a))
    x, dy = data((5, 40), np.float32, 5), data((5, 40), np.float32, 6)
    weight = data(40, np.float32, 7)
    x_chunk, dy_chunk = _CupyLike(cuda.to_device(x)), _CupyLike(cuda.to_device(dy))
    w_chunk = _CupyLike(cuda.to_device(weight))

    y, mean, rstd = nld._forward_block(x_chunk, w_chunk, None, None, centered=True, axis=1,
                                       eps=1e-5, return_stats=True, device=None)
    dx, dweight, dbias = nld._backward_block(dy_chunk, x_chunk, mean, rstd, w_chunk, None,
                                             centered=True, axis=1, compute=np.dtype(np.float32),
                                             device=None)
    assert all(isinstance(r, _CupyLike) for r in (y, mean, rstd, dx, dweight, dbias))
    assert copies == []  # no chunk went through a copy, to the host or on the device
    want_y, want_mean, want_rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    want_dx, want_dweight, want_dbias = numba_ln.layer_norm_backward(
        dy, x, want_mean, want_rstd, weight)
    tol = TOLERANCE["float32"]
    for got, want in ((y, want_y), (mean, want_mean), (rstd, want_rstd), (dx, want_dx)):
        assert rel_error(got.array.copy_to_host(), want) <= tol
    for got, want in ((dweight, want_dweight), (dbias, want_dbias)):
        assert got.dtype == np.float64 and got.shape == (1, 40)  # a partial sum, for the tree
        assert rel_error(got.array.copy_to_host()[0], want) <= tol
