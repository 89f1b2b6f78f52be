"""bfloat16 on the GPU: the bit conversions, NaN rows, dtypes mixed with it, and how it arrives.

The kernels' schedules run bfloat16 in ``test_gpu_kernels.py`` (its boundary
cases); here: a sample of the 65,536 bit patterns through the very vector
load and store the kernels use, against ``ml_dtypes``; NaN and infinity rows;
gains, biases and statistics of other dtypes; PyTorch's ``<V2`` arrays (a
stand-in exposing the same ``__cuda_array_interface__``) in and out without a
copy; NumPy arrays with ``device="cuda"``.
"""

import numpy as np
import pytest
from numba import cuda, float32, uint64

import numba_ln
from numba_ln import _cuda_backend, _gpu_ops

from . import gpu_reference
from .gpu_reference import TOLERANCE, layer_norm, layer_norm_backward, rel_error
from .operations import backward as run_backward, forward as run_forward, residual_dtype

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
TOL = TOLERANCE["bfloat16"]
VEC = 8  # bfloat16 elements in one 16-byte access


def _data(shape, dtype=BF16, seed=0, offset=2.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def _sample_patterns(count):
    """``count`` bfloat16 bit patterns: every sign and exponent with the mantissa's ends
    (zeros, subnormals, infinities, signalling and quiet NaNs), the rest at random."""
    edges = np.array([(sign << 15) | (exponent << 7) | mantissa for sign in (0, 1)
                      for exponent in range(256) for mantissa in (0, 1, 0x3F, 0x40, 0x7F)],
                     np.uint16)
    rng = np.random.default_rng(16)
    rest = rng.choice(65536, count - edges.size, replace=False).astype(np.uint16)
    return np.concatenate([edges, rest])[:count // VEC * VEC]


@cuda.jit
def _round_trip(bits, wide, narrowed):
    """Widen 8 bfloat16 a thread (one vector load) into float32, store them back (one
    vector store of the rounding): ``wide`` and ``narrowed`` as the kernels see them."""
    load, store = _gpu_ops.vector_load(VEC), _gpu_ops.vector_store(VEC)
    scalar_store = _gpu_ops.vector_store(1)
    values = cuda.local.array(VEC, float32)
    col = uint64(cuda.grid(1) * VEC)
    if col < bits.size:
        load(bits, 0, col, values, 0)
        for t in range(VEC):
            scalar_store(wide, 0, uint64(col + t), values, t)
        store(narrowed, 0, col, values, 0)


@cuda.jit
def _narrow(wide, bits):
    """Round float32 values to bfloat16 bits, 8 a thread (one vector store)."""
    load, store = _gpu_ops.vector_load(VEC), _gpu_ops.vector_store(VEC)
    values = cuda.local.array(VEC, float32)
    col = uint64(cuda.grid(1) * VEC)
    if col < wide.size:
        load(wide, 0, col, values, 0)
        store(bits, 0, col, values, 0)


def _same_bits_or_both_nan(got, want):
    """Equal float32 bits; a NaN need only be a NaN of the same sign."""
    got, want = got.view(np.uint32), want.view(np.uint32)
    nan = np.isnan(want.view(np.float32))
    np.testing.assert_array_equal(np.isnan(got.view(np.float32)), nan)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    np.testing.assert_array_equal(got[nan] >> 31, want[nan] >> 31)


def test_a_sample_of_bit_patterns_round_trips_through_the_vector_accesses():
    """Widening is exact, rounding it back gives the same bits (a NaN stays a quiet NaN of
    its sign), both as ml_dtypes converts."""
    bits = _sample_patterns(4096)
    wide = cuda.device_array(bits.size, np.float32)
    narrowed = cuda.device_array(bits.size, np.int16)
    _round_trip[bits.size // VEC // 64, 64](cuda.to_device(bits.view(np.int16)), wide,
                                              narrowed)
    expected = bits.view(BF16).astype(np.float32)
    _same_bits_or_both_nan(wide.copy_to_host(), expected)
    got = narrowed.copy_to_host().view(np.uint16)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(got[~nan], bits[~nan])
    np.testing.assert_array_equal(got[nan], bits[nan] | 0x0040)  # made quiet, sign kept


def test_rounding_float32_to_bfloat16_is_ml_dtypes_rounding():
    """Ties to even, carries into the exponent and up to infinity, subnormals, NaNs."""
    rng = np.random.default_rng(32)
    halves = rng.integers(0, 65536, 1024, dtype=np.uint32) << 16
    low = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    wide = (halves[:, None] | low[None, :]).ravel()
    wide = wide[:wide.size // VEC * VEC].view(np.float32)
    bits = cuda.device_array(wide.size, np.int16)
    _narrow[-(-wide.size // VEC // 64), 64](cuda.to_device(wide), bits)
    got = bits.copy_to_host().view(BF16).astype(np.float32)
    with np.errstate(invalid="ignore"):  # NumPy warns of the NaNs it converts
        expected = wide.astype(BF16).astype(np.float32)
    _same_bits_or_both_nan(got, expected)


@pytest.mark.parametrize("op, cols", [("ln", 160), ("add_rms", 16)])
def test_nan_and_inf_stay_in_their_row(small_launch, op, cols):
    """A NaN or an infinity spoils its own row as in float32, never another row."""
    x = _data((4, cols))
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    r_dtype = residual_dtype(op, "bfloat16")
    r = None if r_dtype is None else _data(x.shape, r_dtype, seed=3, offset=0.0)
    y, s, mean, rstd = (None if a is None else _host(a) for a in run_forward(op, x, None, None, r))
    assert y.dtype == BF16
    with np.errstate(invalid="ignore"):
        ref_y = gpu_reference.forward(op, x, residual=r)[0]
    np.testing.assert_array_equal(np.isnan(y.astype(np.float32)), np.isnan(ref_y))
    clean = [0, 3]
    assert rel_error(y[clean], ref_y[clean]) <= TOL
    s = x if s is None else s.astype(BF16)
    dy = _data(x.shape, seed=6)
    dx = _host(run_backward(op, dy, s, mean, rstd, None, None if r is None else dy)[0])
    assert np.isnan(dx[1].astype(np.float32)).all() and np.isnan(dx[2].astype(np.float32)).all()
    ref = gpu_reference.backward(op, dy[clean], s[clean], None if mean is None else mean[clean],
                                 rstd[clean], None, None if r is None else dy[clean])[0]
    assert rel_error(dx[clean], ref) <= TOL


def test_gains_and_statistics_of_other_dtypes(small_launch, launched):
    """bfloat16 x with a float32 weight and a float16 bias (widened to float32 on the device);
    float32 x with a strided bfloat16 weight (widened by ``_widen_bfloat16``) and bfloat16
    statistics: dweight comes back bfloat16."""
    x = _data((4, 24))
    weight, bias = _data(24, np.float32, seed=1), _data(24, np.float16, seed=2)
    y = numba_ln.layer_norm(cuda.to_device(x), cuda.to_device(weight), cuda.to_device(bias))
    assert _host(y).dtype == BF16
    assert rel_error(_host(y), layer_norm(x, weight, bias)[0]) <= TOL

    x32 = _data((4, 24), np.float32, seed=3)
    weight_wide = _data(48, BF16, seed=4)
    d_weight = cuda.to_device(weight_wide)[::2]
    launched.clear()
    y, mean, rstd = numba_ln.layer_norm(cuda.to_device(x32), d_weight, return_stats=True)
    assert "_widen_bfloat16" in [launch.kernel for launch in launched]
    assert rel_error(_host(y), layer_norm(x32, weight_wide[::2])[0]) <= TOLERANCE["float32"]
    mean, rstd = (_host(stat).astype(BF16) for stat in (mean, rstd))
    dy = _data(x32.shape, np.float32, seed=5)
    dx, dweight, dbias = numba_ln.layer_norm_backward(
        cuda.to_device(dy), cuda.to_device(x32), cuda.to_device(mean), cuda.to_device(rstd),
        d_weight)
    assert _host(dweight).dtype == _host(dbias).dtype == BF16
    for got, want in zip((dx, dweight, dbias),
                         layer_norm_backward(dy, x32, mean, rstd, weight_wide[::2])):
        assert rel_error(_host(got), want) <= TOL


class _TorchLike:
    """What a PyTorch bfloat16 CUDA tensor exports: typestr ``<V2`` over its memory (here, the
    simulator's device memory is host memory)."""

    def __init__(self, device_array):
        self.array = device_array  # owns the memory
        pointer = _cuda_backend._pointer(device_array)
        self.__cuda_array_interface__ = {
            "shape": tuple(device_array.shape), "strides": tuple(device_array.strides),
            "typestr": "<V2", "data": (pointer, False), "version": 3, "stream": None}


def test_pytorch_bfloat16_tensors_in_and_out_without_a_copy(small_launch, monkeypatch):
    """``<V2`` is bfloat16: read in place, ``out=`` written in place, and ``y`` viewed as int16
    (``torch.as_tensor(y.view(np.int16), device="cuda").view(torch.bfloat16)``)."""
    if not _cuda_backend.simulator_enabled():
        pytest.skip("the stand-in's pointer is host memory")
    copies = []
    real = _cuda_backend._copy
    monkeypatch.setattr(_cuda_backend, "_copy",
                        lambda *args: copies.append(args) or real(*args))
    x = _data((3, 40))
    x_tensor, out_tensor = _TorchLike(cuda.to_device(x)), _TorchLike(cuda.to_device(x * 0))
    y = numba_ln.layer_norm(x_tensor)
    assert y.dtype == BF16 and rel_error(_host(y), layer_norm(x)[0]) <= TOL
    numba_ln.layer_norm(x_tensor, out=out_tensor)
    assert np.array_equal(_host(out_tensor.array), _host(y))  # the caller's memory
    bits = y.view(np.int16)  # what torch.as_tensor(...).view(torch.bfloat16) wraps
    assert _cuda_backend._pointer(bits) == _cuda_backend._pointer(y)
    assert np.array_equal(_host(bits).view(BF16), _host(y))
    assert copies == []


def test_numpy_bfloat16_with_device_cuda():
    """Copied in, computed on the GPU, copied back as ml_dtypes bfloat16 NumPy arrays."""
    x, weight = _data((3, 64)), _data(64, seed=1)
    y, mean, rstd = numba_ln.layer_norm(x, weight, device="cuda", return_stats=True)
    assert isinstance(y, np.ndarray) and y.dtype == BF16
    assert rel_error(y, layer_norm(x, weight)[0]) <= TOL
    dy = _data(x.shape, seed=2)
    grads = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, device="cuda")
    assert [g.dtype for g in grads] == [BF16] * 3
    for got, want in zip(grads, layer_norm_backward(dy, x, mean, rstd, weight)):
        assert rel_error(got, want) <= TOL


def test_an_int16_array_is_not_bfloat16():
    """Only a bfloat16 dtype (or ``<V2``) means bfloat16; int16 bits are refused."""
    with pytest.raises(TypeError, match="x has dtype int16"):
        numba_ln.layer_norm(cuda.to_device(np.zeros((2, 8), np.int16)))


def test_numba_bfloat16_arrays_and_void_ones(small_launch):
    """A numba array of bfloat16 is used as it is (``out=`` comes back as that very array); one
    of ``V2``, what numba makes of a ``<V2`` interface, is read as bfloat16."""
    x = _data((3, 16))
    d_out = cuda.device_array(x.shape, BF16)
    y = numba_ln.layer_norm(cuda.to_device(x), out=d_out)
    assert y is d_out and rel_error(_host(y), layer_norm(x)[0]) <= TOL
    y = numba_ln.layer_norm(cuda.to_device(x.view("V2")))
    assert y.dtype == BF16 and rel_error(_host(y), layer_norm(x)[0]) <= TOL
