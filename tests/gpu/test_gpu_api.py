"""The public API on CUDA arrays: layouts, ``out=``, dtypes, streams, errors.

Shapes stay small (the simulator runs one Python thread per CUDA thread);
``small_launch`` makes them reach the block-per-row kernels too.
"""

import subprocess
import sys

import numpy as np
import pytest
from numba import cuda

import numba_ln
from numba_ln import _cuda_backend

from . import gpu_reference
from .gpu_reference import OPS, TOLERANCE, layer_norm, layer_norm_backward, rel_error
from .operations import backward as run_backward, forward as run_forward, residual_dtype

TOL32 = TOLERANCE["float32"]


def _data(shape, dtype=np.float32, seed=0, offset=2.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


@pytest.fixture
def no_copies(monkeypatch):
    """Fail the test if the backend makes a device-side copy of an input."""
    def refuse(array, dtype, stream):
        raise AssertionError(f"unexpected device copy of a {array.shape} array")
    monkeypatch.setattr(_cuda_backend, "_copy", refuse)


@pytest.fixture
def count_copies(monkeypatch):
    """Record the shapes of the device-side copies the backend makes."""
    copies = []
    real = _cuda_backend._copy

    def spy(array, dtype, stream):
        copies.append(tuple(array.shape))
        return real(array, dtype, stream)
    monkeypatch.setattr(_cuda_backend, "_copy", spy)
    return copies


@pytest.mark.parametrize("cols", [20, 150])
def test_row_strided_input_and_output_are_not_copied(small_launch, no_copies, cols):
    """x[:, :cols] of a wider array, and out= likewise: read and written in place."""
    wide = _data((4, cols + 9))
    weight = _data(cols, seed=1)
    d_wide = cuda.to_device(wide)
    d_out = cuda.to_device(np.full((4, cols + 5), -7.0, np.float32))
    result = numba_ln.layer_norm(d_wide[:, :cols], cuda.to_device(weight),
                                 out=d_out[:, :cols], return_stats=True)
    host_out = d_out.copy_to_host()
    assert rel_error(host_out[:, :cols], layer_norm(wide[:, :cols], weight)[0]) <= TOL32
    np.testing.assert_array_equal(host_out[:, cols:], -7.0)  # untouched padding
    mean, rstd = _host(result[1]), _host(result[2])
    dy = _data((4, cols + 3), seed=2)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy)[:, :cols], d_wide[:, :cols],
                                         cuda.to_device(mean), cuda.to_device(rstd),
                                         cuda.to_device(weight))
    expected = layer_norm_backward(dy[:, :cols], wide[:, :cols], mean, rstd, weight)
    for got, want in zip(grads, expected):
        assert rel_error(_host(got), want) <= TOL32


@pytest.mark.parametrize("cols", [20, 150])
def test_transposed_input_is_copied_on_the_device(small_launch, count_copies, cols):
    x = _data((cols, 5))  # rows are the columns of this array
    y = numba_ln.layer_norm(cuda.to_device(x).T)
    assert count_copies == [(5, cols)]
    assert rel_error(_host(y), layer_norm(x.T)[0]) <= TOL32


def test_in_place(small_launch):
    x = _data((5, 40))
    d_x = cuda.to_device(x)
    y = numba_ln.layer_norm(d_x, out=d_x)
    assert y is d_x
    assert rel_error(d_x.copy_to_host(), layer_norm(x)[0]) <= TOL32


def test_out_overlapping_x_gets_the_right_values(small_launch):
    """out and x are shifted views of one buffer: computed aside, then copied in."""
    buffer = _data((6, 40))
    d_buffer = cuda.to_device(buffer)
    numba_ln.layer_norm(d_buffer[1:], out=d_buffer[:-1])
    assert rel_error(d_buffer.copy_to_host()[:-1], layer_norm(buffer[1:])[0]) <= TOL32


def test_out_with_another_layout(small_launch):
    """A transposed out= (not row-contiguous) receives y through a device copy."""
    x = _data((5, 30), np.float64)
    d_out = cuda.device_array((30, 5), np.float64)
    y = numba_ln.layer_norm(cuda.to_device(x), out=d_out.T)
    np.testing.assert_allclose(_host(y), layer_norm(x)[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d_out.copy_to_host().T, layer_norm(x)[0], rtol=1e-12,
                               atol=1e-12)


def test_parameters_of_other_dtypes_and_layouts(small_launch):
    """float64 weight (strided) with float32 x: dweight/dbias come back float64."""
    x = _data((4, 24))
    weight_wide = _data(48, np.float64, seed=3)
    bias = _data(24, np.float16, seed=4)
    weight = weight_wide[::2]
    d_weight = cuda.to_device(weight_wide)[::2]
    y, mean, rstd = numba_ln.layer_norm(cuda.to_device(x), d_weight, cuda.to_device(bias),
                                        return_stats=True)
    assert rel_error(_host(y), layer_norm(x, weight, bias)[0]) <= TOL32
    mean, rstd = _host(mean), _host(rstd)
    dy = _data(x.shape, seed=5)
    dx, dweight, dbias = numba_ln.layer_norm_backward(
        cuda.to_device(dy), cuda.to_device(x), cuda.to_device(mean.astype(np.float64)),
        cuda.to_device(rstd.ravel()), d_weight)
    assert _host(dweight).dtype == _host(dbias).dtype == np.float64
    for got, want in zip((dx, dweight, dbias),
                         layer_norm_backward(dy, x, mean, rstd, weight)):
        assert rel_error(_host(got), want) <= TOL32


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("cols", [16, 160])
def test_nan_and_inf_stay_in_their_row(small_launch, cols, op):
    """A NaN or an infinity spoils its own row as the reference's (RMSNorm: an infinity makes
    ``rstd`` 0, so only its own element of ``y`` is NaN), never another row."""
    x = _data((4, cols))
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    r = None if residual_dtype(op, "float32") is None else _data(x.shape, seed=3, offset=0.0)
    y, s, mean, rstd = (None if a is None else _host(a) for a in run_forward(op, x, None, None, r))
    with np.errstate(invalid="ignore"):
        ref_y, ref_s, ref_mean, ref_rstd = gpu_reference.forward(op, x, residual=r)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref_y))
    assert np.isnan(y[1]).all() and np.isnan(y[2]).any()
    clean = [0, 3]
    assert rel_error(y[clean], ref_y[clean]) <= TOL32
    s = x if s is None else s
    dy = _data(x.shape, seed=6)
    dx = _host(run_backward(op, dy, s, mean, rstd, None, None if r is None else dy)[0])
    assert np.isnan(dx[1]).all() and np.isnan(dx[2]).all()
    ref = gpu_reference.backward(op, dy[clean], s[clean], None if mean is None else mean[clean],
                                 rstd[clean], None, None if r is None else dy[clean])[0]
    assert rel_error(dx[clean], ref) <= TOL32


@pytest.mark.parametrize("rows, cols", [(9, 5), (3, 50), (3, 150), (3, 300)])
def test_gradients_are_bit_identical_across_calls(small_launch, rows, cols):
    """Warp kernels (5 columns: 4 rows a block; 50: one) and streaming; blocks loop over rows."""
    x = _data((rows, cols))
    dy = cuda.to_device(_data((rows, cols), seed=1))
    mean, rstd = (cuda.to_device(stat) for stat in layer_norm(x)[1:])
    x = cuda.to_device(x)
    first = [_host(a) for a in numba_ln.layer_norm_backward(dy, x, mean, rstd)]
    second = [_host(a) for a in numba_ln.layer_norm_backward(dy, x, mean, rstd)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_device_cuda_with_numpy_inputs(small_launch):
    """Copied in, computed on the GPU, copied back: NumPy in, NumPy out (and out=)."""
    x = _data((3, 70), np.float16)
    weight = _data(70, np.float16, seed=1)
    out = np.empty_like(x)
    y, mean, rstd = numba_ln.layer_norm(x, weight, device="cuda", out=out, return_stats=True)
    assert y is out and isinstance(mean, np.ndarray) and mean.shape == (3, 1)
    assert rel_error(y, layer_norm(x, weight)[0]) <= TOLERANCE["float16"]
    dy = _data(x.shape, np.float16, seed=2)
    grads = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, device="cuda")
    assert all(isinstance(g, np.ndarray) for g in grads)
    assert grads[1].dtype == np.float16
    for got, want in zip(grads, layer_norm_backward(dy, x, mean, rstd, weight)):
        assert rel_error(got, want) <= TOLERANCE["float16"]


def test_byte_swapped_arrays(small_launch):
    """Host arrays bound for the GPU are converted once; device arrays and out= are refused."""
    x = _data((3, 20))
    swapped = x.astype(x.dtype.newbyteorder())
    assert np.array_equal(numba_ln.layer_norm(swapped, device="cuda"),
                          numba_ln.layer_norm(x, device="cuda"))
    out = np.full(x.shape, 9, swapped.dtype)
    with pytest.raises(TypeError, match=r"out has byte-swapped dtype '>f4'.*convert it"):
        numba_ln.layer_norm(x, out=out, device="cuda")
    assert (out == 9).all()
    d_swapped = cuda.to_device(swapped)
    assert not np.dtype(d_swapped.dtype).isnative
    with pytest.raises(TypeError, match=r"x has byte-swapped dtype '>f4'; the GPU kernels "
                                        r"read native byte order"):
        numba_ln.layer_norm(d_swapped)


def test_masked_arrays_are_refused_before_any_copy():
    with pytest.raises(TypeError, match="x is a masked array"):
        numba_ln.layer_norm(np.ma.masked_array(_data((2, 8))), device="cuda")


@pytest.mark.parametrize("cols", [20, 150])
def test_backward_out_in_place_and_aside(small_launch, cols):
    """out= for dx: written directly over dy, through a copy when it overlaps x partly."""
    x, dy = _data((5, cols)), _data((5, cols), seed=1)
    mean, rstd = (s.reshape(-1) for s in layer_norm(x)[1:])
    expected = layer_norm_backward(dy, x, mean, rstd)[0]
    d_x, d_dy, d_mean, d_rstd = (cuda.to_device(a) for a in (x, dy, mean, rstd))
    dx = numba_ln.layer_norm_backward(d_dy, d_x, d_mean, d_rstd, out=d_dy)[0]
    assert dx is d_dy
    assert rel_error(d_dy.copy_to_host(), expected) <= TOL32
    d_buffer = cuda.to_device(np.concatenate([x, x[:1]]))
    dx = numba_ln.layer_norm_backward(cuda.to_device(dy), d_buffer[:5], d_mean, d_rstd,
                                      out=d_buffer[1:])[0]
    assert rel_error(d_buffer.copy_to_host()[1:], expected) <= TOL32
    out = np.empty_like(x)
    dx = numba_ln.layer_norm_backward(dy, x, mean, rstd, out=out, device="cuda")[0]
    assert dx is out and rel_error(out, expected) <= TOL32


def test_numba_stream_is_used(small_launch):
    stream = cuda.stream()
    x = _data((3, 40))
    d_x = cuda.to_device(x, stream=stream)
    y, mean, rstd = numba_ln.layer_norm(d_x, stream=stream, return_stats=True)
    dx, dweight, dbias = numba_ln.layer_norm_backward(d_x, d_x, mean, rstd, stream=stream)
    stream.synchronize()
    assert rel_error(y.copy_to_host(), layer_norm(x)[0]) <= TOL32
    assert dweight.copy_to_host().shape == (40,)


def test_bad_stream_is_a_type_error():
    with pytest.raises(TypeError, match="raw CUDA stream handle"):
        numba_ln.layer_norm(cuda.to_device(_data((2, 8))), stream="default")


def test_mixing_host_and_device_arrays_is_an_error():
    d_x = cuda.to_device(_data((2, 8)))
    with pytest.raises(ValueError, match="x is a CUDA array but weight is a host array"):
        numba_ln.layer_norm(d_x, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="x is a host array but out is a CUDA array"):
        numba_ln.layer_norm(_data((2, 8)), out=d_x)
    with pytest.raises(ValueError, match="device='cpu' was given but x is a CUDA array"):
        numba_ln.layer_norm(d_x, device="cpu")


def test_validation_errors_are_the_cpu_ones():
    d_x = cuda.to_device(_data((2, 8)))
    with pytest.raises(ValueError, match=r"weight has shape \(7,\)"):
        numba_ln.layer_norm(d_x, cuda.to_device(np.ones(7, np.float32)))
    with pytest.raises(TypeError, match="out has dtype float64; expected float32"):
        numba_ln.layer_norm(d_x, out=cuda.device_array((2, 8), np.float64))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        numba_ln.layer_norm(d_x, axis=2)
    with pytest.raises(ValueError, match="expected one per row"):
        numba_ln.layer_norm_backward(d_x, d_x, cuda.to_device(np.zeros(3, np.float32)),
                                     cuda.to_device(np.ones(2, np.float32)))


def test_device_arrays_are_recognised_and_cuda_is_available():
    assert _cuda_backend.is_device_array(cuda.to_device(np.ones(3)))
    assert not _cuda_backend.is_device_array(np.ones(3))
    info = numba_ln.backends()["cuda"]
    assert info.available, info.detail


def test_default_configuration(launched):
    """The shipped tunables: a 304-wide float32 row gets a 32-lane warp and 16-byte vectors.

    302 columns are not a whole number of vectors: the scalar kernel.
    """
    from numba_ln import gpu
    p = gpu.plan("forward", 2, 302, np.float32, [0], [302])
    assert (p.variant, p.vec, p.lanes, p.chunks) == ("warp", 1, 32, 16)
    p = gpu.plan("forward", 2, 304, np.float32, [0], [304])
    assert (p.variant, p.vec, p.lanes, p.chunks) == ("warp", 4, 32, 4)
    x = _data((2, 304))
    y, mean, rstd = numba_ln.layer_norm(cuda.to_device(x), return_stats=True)
    assert [launch.kernel for launch in launched] == ["_ln_fwd_warp_vector"]
    assert rel_error(_host(y), layer_norm(x)[0]) <= TOL32
    dy = _data(x.shape, seed=1)
    grads = numba_ln.layer_norm_backward(cuda.to_device(dy), cuda.to_device(x), mean, rstd)
    assert [launch.kernel for launch in launched[1:]] == ["_ln_bwd_warp_vector",
                                                          "_ln_bwd_reduce"]
    for got, want in zip(grads, layer_norm_backward(dy, x, _host(mean), _host(rstd))):
        assert rel_error(_host(got), want) <= TOL32


@pytest.mark.runs_without_gpu
def test_stream_handles():
    class CudaStreamProtocol:
        def __cuda_stream__(self):
            return (0, 1234)

    class TorchLike:
        cuda_stream = 99

    class CupyLike:
        ptr = 77

    assert _cuda_backend.stream_handle(CudaStreamProtocol()) == 1234
    assert _cuda_backend.stream_handle(TorchLike()) == 99
    assert _cuda_backend.stream_handle(CupyLike()) == 77
    assert _cuda_backend.stream_handle(np.int64(5)) == 5
    with pytest.raises(TypeError, match="got bool"):
        _cuda_backend.stream_handle(True)


@pytest.mark.runs_without_gpu
def test_import_does_not_import_numba_cuda():
    code = "import sys, numba_ln; sys.exit('numba.cuda' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.runs_without_gpu
def test_without_a_gpu_device_cuda_says_why():
    reason = _cuda_backend.unavailable_reason()
    if reason is None:
        pytest.skip("a GPU (or the simulator) is available here")
    with pytest.raises(numba_ln.CUDAUnavailableError, match="CUDA support is not available"):
        numba_ln.layer_norm(np.ones((2, 4), np.float32), device="cuda")
    info = numba_ln.backends()["cuda"]
    assert not info.available and info.detail == reason


class _FakeDeviceArray:
    """Shape, strides, dtype and address of a NumPy view, dressed as a CUDA array."""

    def __init__(self, view):
        self._ary = view
        self.shape, self.strides, self.dtype = view.shape, view.strides, view.dtype
        self.__cuda_array_interface__ = {"data": (view.__array_interface__["data"][0], False)}


@pytest.mark.runs_without_gpu
def test_out_is_written_directly_only_when_safe():
    """Direct writes for in-place and disjoint out=; anything that may overlap goes aside."""
    from numba_ln._validate import forward_spec
    buffer = np.zeros((8, 10), np.float32)
    spec, _ = forward_spec(buffer[:4], None, None, -1, 1e-5, None)

    def direct(out, *inputs):
        return _cuda_backend._writes_directly(
            _FakeDeviceArray(out), [_FakeDeviceArray(a) for a in inputs], spec)

    assert direct(buffer[:4], buffer[:4])             # in place
    assert direct(buffer[4:], buffer[:4])             # disjoint
    assert not direct(buffer[1:5], buffer[:4])        # shifted by a row
    assert not direct(buffer[::2], buffer[1::2])      # interleaved: extents overlap
    assert not direct(buffer[:4, ::-1], buffer[4:])   # out's rows not contiguous
    assert not direct(buffer[4:], buffer[7:3:-1])     # reversed rows reach below their address
    assert direct(buffer[:4], buffer[:4], buffer[4:])  # backward: in place over dy, x apart
    assert not direct(buffer[:4], buffer[:4], buffer[3:7])  # ... but x overlaps a row of it
    assert not direct(buffer[4:], buffer[:4], buffer[7])    # a weight inside out


@pytest.mark.parametrize("cols", [3, 150, 300])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_launch_arguments_match_the_ptx_signatures(small_launch, launched, cols, dtype):
    """Every launch passes exactly the types tests/test_ptx.py compiles and checks.

    Warp, block and split schedules (3, 150 and 300 columns under
    ``small_launch``, for float32), 16-bit gains passed as they are (bfloat16
    as its int16 bits), the reduction last.
    """
    from numba_ln import gpu
    x = cuda.to_device(_data((1, cols), dtype))
    weight = cuda.to_device(_data(cols, dtype, seed=1))
    _, mean, rstd = numba_ln.layer_norm(x, weight, weight, return_stats=True)
    numba_ln.layer_norm_backward(x, x, mean, rstd, weight)
    planned = [launch.name for direction in ("forward", "backward")
               for launch in gpu.plan(direction, 1, cols, dtype, [0], [cols]).launches]
    assert [launch.factory for launch in launched] == planned
    expected = gpu.signatures(dtype, param_dtype=dtype)
    for launch in launched:
        assert launch.types == expected[launch.factory], launch.factory


class _Exported:
    """A foreign array that names the stream its producer used (CUDA array interface v3)."""

    def __init__(self, stream):
        self.__cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                         "version": 3, "stream": stream}


def test_the_stream_an_input_exports_is_the_launch_stream(monkeypatch):
    """No ``stream=``: the call is ordered after the work that produced its inputs."""
    monkeypatch.setattr(cuda, "legacy_default_stream", lambda: "legacy", raising=False)
    monkeypatch.setattr(cuda, "per_thread_default_stream", lambda: "per-thread",
                        raising=False)
    monkeypatch.setattr(cuda, "external_stream", lambda handle: ("external", handle))
    exported = _cuda_backend._exported_stream
    assert exported([None, _Exported(1)]) == "legacy"
    assert exported([_Exported(2)]) == "per-thread"
    assert exported([_Exported(None), _Exported(0xBEEF)]) == ("external", 0xBEEF)
    assert exported([np.ones(2), _Exported(None)]) is None  # no stream named: none needed
    assert exported([_Exported(True)]) is None  # a bool is no handle


def test_foreign_arrays_are_viewed_without_a_host_synchronization(monkeypatch):
    """On a GPU, numba views the interface with ``sync=False`` (the simulator reads its memory)."""
    calls = []

    def from_cuda_array_interface(interface, owner=None, sync=True):
        calls.append((interface, owner, sync))
        return owner

    monkeypatch.setattr(_cuda_backend, "simulator_enabled", lambda: False)
    monkeypatch.setattr(cuda, "from_cuda_array_interface", from_cuda_array_interface,
                        raising=False)  # the simulator has none
    foreign = _Exported(7)
    assert _cuda_backend.as_numba_array(foreign) is foreign
    assert calls == [(foreign.__cuda_array_interface__, foreign, False)]


def test_a_simulator_without_shuffles_says_so(monkeypatch):
    """numba's own simulator has no warp shuffles: a clear error, not an AttributeError deep in
    a simulated thread."""
    if not _cuda_backend.simulator_enabled():
        pytest.skip("a real GPU has warp shuffles")
    from numba.cuda.simulator.kernelapi import FakeCUDAModule
    monkeypatch.delattr(FakeCUDAModule, "shfl_xor_sync")
    with pytest.raises(RuntimeError, match=r"no warp shuffles .*sim_shims.installed\(\)"):
        numba_ln.layer_norm(cuda.to_device(_data((2, 8))))


def test_residual_out_in_place_aside_and_on_the_host(small_launch):
    """``residual_out`` receives ``s`` as ``out`` receives ``y``: directly, through a device copy
    when its layout is not rows (Fortran order) or it overlaps an input partly, and as a NumPy
    array with NumPy inputs; a float32 ``s`` for float16 ``x``."""
    from numba_ln._validate import forward_spec
    x, r = _data((5, 40), np.float16), _data((5, 40), np.float32, seed=1, offset=0.0)
    expected_y, expected_s, _, expected_rstd = gpu_reference.forward("add_rms", x, residual=r)
    spec, eps = forward_spec(x, None, None, -1, 1e-5, None)

    def check(y, s, mean, rstd, s_out):
        assert s is s_out and mean is None
        assert rel_error(_host(y), expected_y) <= TOLERANCE["float16"]
        assert _host(s).dtype == np.float32
        assert rel_error(_host(s), expected_s) <= TOL32
        assert rel_error(_host(rstd), expected_rstd) <= TOL32

    fortran = cuda.to_device(np.asfortranarray(np.zeros_like(r)))
    check(*_cuda_backend.forward(spec, cuda.to_device(x), None, None, eps, None,
                                 centered=False, residual=cuda.to_device(r),
                                 residual_out=fortran), fortran)
    d_buffer = cuda.to_device(np.concatenate([r, r[:1]]))  # s one row past r: overlaps it
    shifted = d_buffer[1:]
    check(*_cuda_backend.forward(spec, cuda.to_device(x), None, None, eps, None,
                                 centered=False, residual=d_buffer[:5], residual_out=shifted),
          shifted)
    host_s = np.empty_like(r)
    check(*_cuda_backend.forward(spec, x, None, None, eps, None, centered=False, residual=r,
                                 residual_out=host_s), host_s)
    assert np.array_equal(r, _data((5, 40), np.float32, seed=1, offset=0.0))  # r untouched
