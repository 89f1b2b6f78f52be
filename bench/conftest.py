"""The pytest-benchmark suite: the cases of ``python -m bench``, timed by pytest-benchmark.

Cases, competitors, bytes moved, the roofline and the correctness check come
from the modules ``python -m bench`` runs, so the two can never disagree
about what a figure means.

- ``pytest bench --benchmark-enable`` (``make bench-pytest``) times the full
  shapes. Each benchmark's group is ``"operation|ROWSxCOLS|dtype"``, so one
  table holds every competitor of one case; ``extra_info`` carries the bytes
  moved, GB/s, the roofline's GB/s and the fraction of it reached. The
  roofline's kernels are timed once per case and device by
  :func:`bench.timer.measure`, interleaved as in ``python -m bench``; the
  fastest is the roofline row, and that row keeps the better of its two
  figures.
- Under ``--benchmark-disable`` (the default in ``pyproject.toml``, so
  ``make test``) every benchmark runs once as a test, on small shapes.

A competitor that cannot run here (no PyTorch, no GPU, the simulator, no
built C library) is skipped with the reason.
"""

import pytest

from bench import cases, timer
from bench.competitors import Unavailable, Workspace, competitors, prepare


def pytest_addoption(parser):
    """``--capi-lib PATH``: the built ``libnumba_ln.so`` for the C ABI rows."""
    parser.addoption("--capi-lib", default=None, metavar="PATH",
                     help="libnumba_ln.so to benchmark through the C ABI (default: "
                          "$NUMBA_LN_CAPI_LIB, else build/libnumba_ln.so)")


def benchmarks_disabled(config):
    """True under ``--benchmark-disable`` (unless ``--benchmark-enable`` overrides it, as
    pytest-benchmark decides): each benchmark then runs once, as a test."""
    return bool(config.getoption("benchmark_disable", default=False)
                and not config.getoption("benchmark_enable", default=False))


def pytest_generate_tests(metafunc):
    """Parametrize ``throughput_shape`` (small under --benchmark-disable) and ``small_shape``."""
    if "throughput_shape" in metafunc.fixturenames:
        shapes = (cases.SMOKE_SHAPES if benchmarks_disabled(metafunc.config)
                  else cases.THROUGHPUT_SHAPES)
        metafunc.parametrize("throughput_shape", shapes, ids=[f"{r}x{c}" for r, c in shapes])
    if "small_shape" in metafunc.fixturenames:
        shapes = cases.SMALL_SHAPES
        metafunc.parametrize("small_shape", shapes, ids=[f"{r}x{c}" for r, c in shapes])


class CaseRunner:
    """Prepares, times and annotates one benchmark; keeps one case's inputs at a time.

    Parameters
    ----------
    config : pytest.Config
    """

    def __init__(self, config):
        self.enabled = not benchmarks_disabled(config)
        self.workspace = Workspace(config.getoption("--capi-lib"))
        self._rooflines = {}

    def roofline(self, case, device):
        """The roofline's fastest kernel on a case and device, and its timing.

        Measured once per case and device; the timing is None under
        ``--benchmark-disable``, where nothing is timed.

        Returns
        -------
        (Prepared, Timing or None)

        Raises
        ------
        Unavailable
            No roofline on ``device`` here.
        """
        key = (case, device)
        if key not in self._rooflines:
            competitor = next(c for c in competitors((device,)) if c.roofline)
            try:
                kernels = prepare(competitor, case, self.workspace)
            except Unavailable as exc:
                self._rooflines[key] = exc
            else:
                timings = (timer.measure([k.call for k in kernels]) if self.enabled
                           else [None] * len(kernels))
                self._rooflines[key] = min(
                    zip(kernels, timings), key=lambda pair: pair[1].best_s if pair[1] else 0)
        found = self._rooflines[key]
        if isinstance(found, Unavailable):
            raise found
        return found

    def __call__(self, benchmark, case, competitor):
        """Benchmark ``competitor`` on ``case`` (skipping with the reason if it cannot run)."""
        benchmark.group = case.group
        device = competitor.device
        reason = cases.dtype_unavailable_reason(case.dtype)
        if reason is not None:
            pytest.skip(reason)
        try:
            if competitor.roofline:
                prepared, _ = self.roofline(case, device)
            else:
                [prepared] = prepare(competitor, case, self.workspace)
        except Unavailable as exc:
            pytest.skip(f"{competitor.label} ({device}): {exc}")
        result = benchmark(prepared.call)
        if not competitor.roofline:
            cases.check_output(case, self.workspace.inputs(case), result)
        benchmark.extra_info.update(bytes=case.bytes_moved, operation=case.operation,
                                    shape=case.label, dtype=case.dtype)
        if prepared.kernel:
            benchmark.extra_info["kernel"] = prepared.kernel
        if not (benchmark.enabled and benchmark.stats is not None):
            return
        stats = benchmark.stats.stats
        try:
            fastest, roofline = self.roofline(case, device)
        except Unavailable:
            fastest, roofline = None, None
        if competitor.roofline and stats.min < roofline.best_s:
            # This row ran faster than the roofline's own measurement: keep the
            # better figure, for this row and the rest of its group.
            roofline = timer.Timing(stats.min, stats.median, stats.rounds, 1)
            self._rooflines[(case, device)] = (fastest, roofline)
        benchmark.extra_info.update(
            cases.figures(case, stats.min, roofline.best_s if roofline else None))


@pytest.fixture(scope="session")
def case_runner(request):
    """The session's :class:`CaseRunner`."""
    return CaseRunner(request.config)
