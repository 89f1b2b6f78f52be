"""GPU tests: the CUDA backend under numba's simulator, or on a real GPU.

They run when ``NUMBA_ENABLE_CUDASIM=1`` (the simulator executes the very
kernels that ship, one Python thread per CUDA thread) or when a usable GPU is
present; otherwise they are skipped, except those marked
``runs_without_gpu``.

Under the simulator the launch sizes are patched small (``small_launch``), so
shapes of a few dozen columns reach every kernel variant and every switch.
On a GPU the same small configuration runs the real kernels, and the tests
marked ``real_gpu`` add the default configuration at realistic sizes.
"""

import os
import sys
from typing import NamedTuple

import pytest

from numba_ln import _config, _cuda_backend

from . import sim_shims
from .gpu_launch import SMALL

SIMULATOR = _cuda_backend.simulator_enabled()


def _gpu_reason():
    """None when a real GPU can run the tests, else why not."""
    if SIMULATOR:
        return None
    return _cuda_backend.unavailable_reason()


def pytest_configure(config):
    config.addinivalue_line("markers", "runs_without_gpu: runs in every test session")
    config.addinivalue_line("markers", "real_gpu: needs a real GPU (not the simulator)")


def pytest_collection_modifyitems(config, items):
    reason = _gpu_reason()
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        if item.get_closest_marker("runs_without_gpu"):
            continue
        if reason is not None:
            item.add_marker(pytest.mark.skip(
                reason=f"no GPU ({reason}); run with NUMBA_ENABLE_CUDASIM=1"))
        elif SIMULATOR and item.get_closest_marker("real_gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a real GPU, not the simulator"))


@pytest.fixture(scope="session", autouse=True)
def simulator_hands_over_the_gil_sooner():
    """Under the simulator, a 0.1 ms GIL switch interval instead of 5 ms.

    The simulator's block manager polls for threads blocked in
    ``syncthreads`` while holding the GIL, so each simulated barrier waits out
    switch intervals; the kernels and their results are the same either way.
    """
    if not SIMULATOR:
        yield
        return
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture(scope="session", autouse=True)
def simulator_as_strict_as_a_gpu():
    """Under the simulator, the barrier check and a faithful ``shfl_xor_sync`` (``sim_shims``).

    Threads of a block that wait at different ``syncthreads`` call sites, and
    warp shuffles whose lanes do not all arrive, fail the test; the kernels
    run unchanged.
    """
    if not SIMULATOR:
        yield
        return
    with sim_shims.installed():
        yield


@pytest.fixture
def small_launch(monkeypatch):
    """Patch the CUDA tunables small (``gpu_launch.SMALL``)."""
    for name, value in SMALL.items():
        monkeypatch.setattr(_config, name, value)


class Launched(NamedTuple):
    """One launch the backend made."""

    kernel: str    #: the kernel's name, as profilers show it (``_ln_fwd_warp_vector``, ...)
    factory: str   #: its factory in ``gpu.py`` (a key of ``gpu.signatures``)
    types: tuple   #: the numba types of the arguments it was launched with


@pytest.fixture
def launched(monkeypatch):
    """The launches each call makes, in order (every launch goes through ``gpu._run``)."""
    from numba import typeof

    from numba_ln import gpu
    launches = []
    real = gpu._run

    def spy(launch, stream, args):
        launches.append(Launched(launch.kernel.py_func.__name__, launch.name,
                                 tuple(typeof(a) for a in args)))
        return real(launch, stream, args)
    monkeypatch.setattr(gpu, "_run", spy)
    return launches
