"""Forward layer norm at transformer widths, odd widths and very long rows.

Competitors per group: the copy roofline, numba-ln with ``out=`` and
allocating, the C ABI, PyTorch, NumPy (and their CUDA counterparts on a GPU).
"""

import pytest

from bench.cases import Case
from bench.competitors import competitors


@pytest.mark.parametrize("competitor", competitors(), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_forward(benchmark, case_runner, throughput_shape, dtype, competitor):
    case_runner(benchmark, Case("forward", *throughput_shape, dtype), competitor)
