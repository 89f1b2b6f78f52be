"""Backward layer norm (``dx``, ``dweight``, ``dbias``) at the forward suite's shapes."""

import pytest

from numba_ln import _bench


@pytest.mark.parametrize("impl", _bench.implementations("backward"), ids=lambda i: i.id)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_backward(benchmark, case_runner, throughput_shape, dtype, impl):
    case_runner(benchmark, _bench.Case("backward", *throughput_shape, dtype), impl)
