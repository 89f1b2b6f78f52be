"""Backward layer norm (``dx``, ``dweight``, ``dbias``) at the forward suite's shapes."""

import pytest

from bench.cases import BENCH_DTYPES, Case
from bench.competitors import competitors


@pytest.mark.parametrize("competitor", competitors(operation="backward"), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", BENCH_DTYPES)
def test_backward(benchmark, case_runner, throughput_shape, dtype, competitor):
    case_runner(benchmark, Case("backward", *throughput_shape, dtype), competitor)
