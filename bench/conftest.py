"""The pytest-benchmark suite: the command line's cases, timed by pytest-benchmark.

Cases, implementations, bytes moved, the roofline and the correctness check
come from ``numba_ln._bench`` -- the code ``python -m numba_ln bench`` runs --
so the two can never disagree about what a figure means.

- ``pytest bench --benchmark-enable`` (``make bench-pytest``) times the full
  shapes. Each benchmark's group is ``"operation|ROWSxCOLS|dtype"``, so one
  table holds every implementation of one case; ``extra_info`` carries the
  bytes moved, GB/s, the roofline's GB/s and the fraction of it reached. The
  roofline is timed once per case and device by the shared timer
  (``_bench.measure``), and its own row keeps the better of that figure and
  pytest-benchmark's.
- Under ``--benchmark-disable`` (the default in ``pyproject.toml``, so
  ``make test``) every benchmark runs once as a test, on small shapes.

An implementation that cannot run here (no PyTorch, no GPU, the simulator,
no built C library) is skipped with the reason.
"""

import pytest

from numba_ln import _bench


def pytest_addoption(parser):
    """``--capi-lib PATH``: the built ``libnumba_ln.so`` for the C ABI rows."""
    parser.addoption("--capi-lib", default=None, metavar="PATH",
                     help="libnumba_ln.so to benchmark through the C ABI (default: "
                          "$NUMBA_LN_CAPI_LIB or build/libnumba_ln.so when present)")


def benchmarks_disabled(config):
    """True under ``--benchmark-disable`` (unless ``--benchmark-enable`` overrides it, as
    pytest-benchmark decides): each benchmark then runs once, as a test."""
    return bool(config.getoption("benchmark_disable", default=False)
                and not config.getoption("benchmark_enable", default=False))


def pytest_generate_tests(metafunc):
    """Parametrize ``throughput_shape`` (small under --benchmark-disable) and ``small_shape``."""
    if "throughput_shape" in metafunc.fixturenames:
        shapes = (_bench.SMOKE_SHAPES if benchmarks_disabled(metafunc.config)
                  else _bench.THROUGHPUT_SHAPES)
        metafunc.parametrize("throughput_shape", shapes, ids=[f"{r}x{c}" for r, c in shapes])
    if "small_shape" in metafunc.fixturenames:
        shapes = _bench.SMALL_SHAPES
        metafunc.parametrize("small_shape", shapes, ids=[f"{r}x{c}" for r, c in shapes])


class CaseRunner:
    """Prepares, times and annotates one benchmark; keeps one case's inputs at a time.

    Parameters
    ----------
    config : pytest.Config
    """

    def __init__(self, config):
        self.enabled = not benchmarks_disabled(config)
        self.options = _bench.Options(capi_lib=config.getoption("--capi-lib"),
                                      choose_roofline=self.enabled)
        self._inputs_key = None
        self._inputs = None
        self._rooflines = {}

    def inputs(self, case):
        """The inputs of ``case``'s shape and dtype (made once, while they are in use)."""
        key = (case.shape, case.dtype)
        if key != self._inputs_key:
            self._inputs = None
            self.options._cache.clear()
            self._inputs_key, self._inputs = key, _bench.make_inputs(case.shape, case.dtype)
        return self._inputs

    def roofline(self, case, device):
        """The roofline's timing for a case and device, measured once per session."""
        key = (case, device)
        if key not in self._rooflines:
            impl = next(i for i in _bench.implementations(case.operation, (device,))
                        if i.roofline)
            try:
                prepared = _bench.prepare(impl, case, self.inputs(case), self.options)
                self._rooflines[key] = _bench.measure(prepared.call)
            except _bench.Unavailable:
                self._rooflines[key] = None
        return self._rooflines[key]

    def __call__(self, benchmark, case, impl):
        """Benchmark ``impl`` on ``case`` (skipping with the reason if it cannot run)."""
        benchmark.group = case.group
        inputs = self.inputs(case)
        try:
            prepared = _bench.prepare(impl, case, inputs, self.options)
        except _bench.Unavailable as exc:
            pytest.skip(f"{impl.label} ({impl.device}): {exc}")
        result = benchmark(prepared.call)
        if not impl.roofline:
            _bench.check_output(case, inputs, result)
        timed = benchmark.enabled and benchmark.stats is not None
        seconds = benchmark.stats.stats.min if timed else None
        roofline = self.roofline(case, impl.device) if seconds else None
        if impl.roofline and seconds and (roofline is None or seconds < roofline.best_s):
            # The roofline row itself ran faster than the session's measurement:
            # keep the better figure, for this row and the rest of its group.
            stats = benchmark.stats.stats
            roofline = _bench.Timing(seconds, stats.median, stats.rounds, 1)
            self._rooflines[(case, impl.device)] = roofline
        benchmark.extra_info.update(
            _bench.extra_info(case, seconds, roofline, prepared.kernel))


@pytest.fixture(scope="session")
def case_runner(request):
    """The session's :class:`CaseRunner`."""
    return CaseRunner(request.config)
