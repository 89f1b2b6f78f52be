"""Small inputs (1x64, 1x768, 8x768), where the cost of a call dominates: latency."""

import pytest

from bench.cases import OPERATIONS, Case
from bench.competitors import competitors


@pytest.mark.parametrize("competitor", competitors(), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_small(benchmark, case_runner, small_shape, operation, dtype, competitor):
    case_runner(benchmark, Case(operation, *small_shape, dtype), competitor)
