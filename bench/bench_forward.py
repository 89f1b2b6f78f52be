"""Forward layer norm at transformer widths, odd widths and very long rows.

Implementations per group: the copy roofline, numba-ln with ``out=`` and
allocating, the C ABI, PyTorch, NumPy (and their CUDA counterparts on a GPU).
"""

import pytest

from numba_ln import _bench


@pytest.mark.parametrize("impl", _bench.implementations("forward"), ids=lambda i: i.id)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_forward(benchmark, case_runner, throughput_shape, dtype, impl):
    case_runner(benchmark, _bench.Case("forward", *throughput_shape, dtype), impl)
