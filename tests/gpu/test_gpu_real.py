"""On a real GPU only: the shipped configuration at realistic sizes, foreign arrays, streams.

Skipped under the simulator (too slow there) and without a GPU.
"""

import numpy as np
import pytest
from numba import cuda

import numba_ln
from numba_ln import gpu

from .gpu_reference import TOLERANCE, layer_norm, layer_norm_backward, rel_error

pytestmark = pytest.mark.real_gpu


def _data(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) + 1.0).astype(dtype)


#: (rows, cols) reaching each variant with the shipped tunables, float32: warp
#: (forward up to 1024 columns, backward 512; scalar for widths that are not a
#: whole number of vectors), block (forward up to 16384, backward 8192), split
#: beyond, and a long row with few rows split to fill the GPU.
SHAPES = [(1000, 7), (513, 256), (300, 257), (128, 768), (16, 3000), (16, 3001),
          (40, 20000), (100, 20004), (1, 65536)]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
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


def test_launches_use_the_compiled_signatures(launched):
    """What runs is what tests/test_ptx.py compiled and checked for spills."""
    for dtype in ("float16", "float32", "float64", "bfloat16"):
        launched.clear()
        for rows, cols in ((40, 100), (16, 3000), (2, 9000), (1, 65536)):
            test_shipped_configuration(rows, cols, dtype)
        expected = gpu.signatures(dtype, param_dtype=dtype)  # dweight in weight's dtype
        assert {launch.factory for launch in launched} == set(expected)
        for launch in launched:
            assert launch.types == expected[launch.factory], launch.factory


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


def test_torch_bfloat16_tensors_without_a_copy():
    """PyTorch's ``<V2`` in, and the README's recipe back: ``y``'s bits viewed as bfloat16."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    x = (torch.randn(32, 768, device="cuda") + 1).to(torch.bfloat16)
    y = numba_ln.layer_norm(x)
    wrapped = torch.as_tensor(y.view(np.int16), device="cuda").view(torch.bfloat16)
    assert wrapped.data_ptr() == y.__cuda_array_interface__["data"][0]
    expected = torch.nn.functional.layer_norm(x.float(), (768,), eps=1e-5)
    assert torch.allclose(wrapped.float(), expected, rtol=2e-2, atol=2e-2)
    out = torch.empty_like(x)
    numba_ln.layer_norm(x, out=out)
    torch.cuda.synchronize()
    assert torch.equal(out, wrapped)
