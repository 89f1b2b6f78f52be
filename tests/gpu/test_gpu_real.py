"""On a real GPU only: the shipped configuration at realistic sizes, foreign arrays, streams.

Skipped under the simulator (too slow there) and without a GPU.
"""

import numpy as np
import pytest
from numba import cuda

import numba_ln
from numba_ln import _config, gpu

from .gpu_reference import TOLERANCE, layer_norm, layer_norm_backward, rel_error

pytestmark = pytest.mark.real_gpu


def _data(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) + 1.0).astype(dtype)


#: (rows, cols) reaching each variant with the shipped tunables: warp (256
#: and below), block + shared cache, block streaming (float32 forward beyond
#: 8192 columns, backward beyond 2048).
SHAPES = [(1000, 7), (513, 256), (300, 257), (128, 768), (16, 3000), (4, 12289)]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("rows, cols", SHAPES)
def test_shipped_configuration(rows, cols, dtype):
    x = _data((rows, cols), dtype)
    weight = _data(cols, dtype, 1)
    bias = _data(cols, dtype, 2)
    y, mean, rstd = numba_ln.layer_norm(*(cuda.to_device(a) for a in (x, weight, bias)),
                                        return_stats=True)
    tol = TOLERANCE[dtype]
    assert rel_error(y.copy_to_host(), layer_norm(x, weight, bias)[0]) <= tol
    mean, rstd = mean.copy_to_host(), rstd.copy_to_host()
    dy = _data((rows, cols), dtype, 3)
    grads = numba_ln.layer_norm_backward(*(cuda.to_device(a) for a in (dy, x, mean, rstd,
                                                                        weight)))
    for got, want in zip(grads, layer_norm_backward(dy, x, mean, rstd, weight)):
        assert rel_error(got.copy_to_host(), want) <= tol


def test_launches_use_the_compiled_signatures():
    """What runs is what tests/test_ptx.py compiled and checked for spills."""
    for dtype in ("float16", "float32", "float64"):
        test_shipped_configuration(40, 100, dtype)
        test_shipped_configuration(2, 9000, dtype)
        test_shipped_configuration(2, 300, dtype)
        compute = np.dtype(np.float64 if dtype == "float64" else np.float32)
        kernel_set = gpu.build_kernel_set(compute, _config.CUDA_WARP_ITEMS_PER_THREAD,
                                          _config.CUDA_WARP_BLOCK_THREADS,
                                          _config.CUDA_ROW_BLOCK_THREADS, _config.CUDA_FASTMATH)
        expected = gpu.signatures(dtype)
        for name in gpu.KernelSet._fields:
            assert expected[name] in set(getattr(kernel_set, name).overloads), name


def test_raw_stream_handle():
    stream = cuda.stream()
    x = _data((64, 300), np.float32)
    d_x = cuda.to_device(x, stream=stream)

    class Foreign:
        def __cuda_stream__(self):
            return (0, int(stream))

    for handle in (int(stream), Foreign()):
        y = numba_ln.layer_norm(d_x, stream=handle)
        stream.synchronize()
        assert rel_error(y.copy_to_host(), layer_norm(x)[0]) <= TOLERANCE["float32"]


def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    x = cupy.asarray(_data((32, 1024), np.float32))
    out = cupy.empty_like(x)
    numba_ln.layer_norm(x, out=out, stream=cupy.cuda.get_current_stream())
    cupy.cuda.get_current_stream().synchronize()
    assert rel_error(cupy.asnumpy(out), layer_norm(cupy.asnumpy(x))[0]) <= 1e-6
    wrapped = cupy.asarray(numba_ln.layer_norm(x))  # a numba array, wrapped without a copy
    assert rel_error(cupy.asnumpy(wrapped), layer_norm(cupy.asnumpy(x))[0]) <= 1e-6


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    x = torch.randn(32, 768, device="cuda") + 1
    y = torch.as_tensor(numba_ln.layer_norm(x), device="cuda")
    expected = torch.nn.functional.layer_norm(x, (768,), eps=1e-5)
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-5)
