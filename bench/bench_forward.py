"""Forward layer norm at transformer widths, odd widths and very long rows; RMSNorm's
forward and the fused residual add + norm (issue 17) at the same shapes, on the CPU.

Competitors per group: the copy roofline, numba-ln with ``out=`` and
allocating, the C ABI, PyTorch, NumPy (and their CUDA counterparts on a GPU).
The fused add's groups add *numba-ln unfused* (``np.add`` into ``s``, then the
norm with ``out=``); its roofline copies ``x`` and the residual (twice a
copy's bytes).
"""

import pytest

from bench.cases import BENCH_DTYPES, NORM_OPERATIONS, Case
from bench.competitors import competitors


@pytest.mark.parametrize("competitor", competitors(operation="forward"), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", BENCH_DTYPES)
def test_forward(benchmark, case_runner, throughput_shape, dtype, competitor):
    case_runner(benchmark, Case("forward", *throughput_shape, dtype), competitor)


@pytest.mark.parametrize("operation, competitor",
                         [(op, c) for op in NORM_OPERATIONS for c in competitors(("cpu",), op)],
                         ids=lambda v: v if isinstance(v, str) else v.id)
@pytest.mark.parametrize("dtype", BENCH_DTYPES)
def test_norm_forward(benchmark, case_runner, throughput_shape, dtype, operation, competitor):
    case_runner(benchmark, Case(operation, *throughput_shape, dtype), competitor)
