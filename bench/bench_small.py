"""Small inputs (1x64, 1x768, 8x768), where the cost of a call dominates: latency."""

import pytest

from numba_ln import _bench


@pytest.mark.parametrize("impl", _bench.implementations(), ids=lambda i: i.id)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("operation", _bench.OPERATIONS)
def test_small(benchmark, case_runner, small_shape, operation, dtype, impl):
    if operation not in impl.operations:
        pytest.skip(f"{impl.label} has no {operation}")
    case_runner(benchmark, _bench.Case(operation, *small_shape, dtype), impl)
