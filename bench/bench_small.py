"""Small inputs (1x64, 1x768, 8x768), where the cost of a call dominates: latency."""

import pytest

from bench.cases import BENCH_DTYPES, OPERATIONS, Case
from bench.competitors import competitors


@pytest.mark.parametrize("operation, competitor",
                         [(op, c) for op in OPERATIONS for c in competitors(operation=op)],
                         ids=lambda v: v if isinstance(v, str) else v.id)
@pytest.mark.parametrize("dtype", BENCH_DTYPES)
def test_small(benchmark, case_runner, small_shape, operation, dtype, competitor):
    case_runner(benchmark, Case(operation, *small_shape, dtype), competitor)
