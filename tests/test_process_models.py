"""Process models a NumPy pipeline uses: fork after use, forkserver, spawn, pools, threads.

Every child runs after the parent made large (threaded) calls, and must give
the parent's bits. Each wait has a timeout, so a hung child fails the test
instead of stalling the run.
"""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numba
import numpy as np
import pytest

import numba_ln
from numba_ln import _config

TIMEOUT = 180

#: (shape, dtype): a small serial call, threaded calls in every dtype, and
#: one whose output is written with streaming stores.
CASES = [((8, 768), np.float32), ((512, 1024), np.float64), ((2048, 1024), np.float16),
         ((4096, 1024), np.float32)]


def _inputs(shape, dtype):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    return x, dy, weight


def compute(shape, dtype):
    """Forward and backward results for one case, as bytes (module-level: spawn pickles it)."""
    x, dy, weight = _inputs(shape, dtype)
    y, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    grads = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)
    return [a.tobytes() for a in (y, mean, rstd, *grads)]


def compute_all(_=None):
    return [compute(shape, dtype) for shape, dtype in CASES]


@pytest.fixture(scope="module")
def parent_results():
    """The parent's results; the large cases run the threaded kernels here first."""
    assert any(s[0] * s[1] > _config.SERIAL_MAX_ELEMENTS for s, _ in CASES)
    return compute_all()


def _wait(pid, timeout=TIMEOUT):
    """``os.waitpid`` with a deadline: kill the child and fail when it hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} hung for {timeout} s")


def test_bare_fork_child_computes_the_parents_bits(parent_results):
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = 0 if compute_all() == parent_results else 3
        finally:
            os._exit(code)
    status = _wait(pid)
    assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0, "the child's results differ from the parent's"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_process_child_computes_the_parents_bits(parent_results, method):
    context = mp.get_context(method)
    with context.Pool(1) as pool:
        result = pool.apply_async(compute_all)
        try:
            child = result.get(timeout=TIMEOUT)
        except mp.TimeoutError:
            pool.terminate()
            pytest.fail(f"a {method} child hung for {TIMEOUT} s")
    assert child == parent_results


def test_pool_map_of_pickled_float16_arrays(parent_results):
    """A fork Pool's workers get arrays through pickle: their float16 dtype is another object."""
    x, _, weight = _inputs((2048, 1024), np.float16)
    chunks = np.array_split(x, 4)
    expected = [numba_ln.layer_norm(c, weight) for c in chunks]
    with mp.get_context("fork").Pool(2) as pool:
        result = pool.starmap_async(numba_ln.layer_norm, [(c, weight) for c in chunks])
        try:
            got = result.get(timeout=TIMEOUT)
        except mp.TimeoutError:
            pool.terminate()
            pytest.fail(f"a Pool.map hung for {TIMEOUT} s")
    for a, b in zip(got, expected):
        assert a.dtype == np.float16 and a.tobytes() == b.tobytes()


def test_sixteen_threads_then_a_fork(parent_results):
    """16 concurrent callers (forward and backward, every case), then a forked child."""
    failures = []

    def worker(i):
        shape, dtype = CASES[i % len(CASES)]
        for _ in range(3):
            if compute(shape, dtype) != parent_results[i % len(CASES)]:
                failures.append(i)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIMEOUT)
    assert not any(w.is_alive() for w in workers), "a thread hung"
    assert failures == []
    test_bare_fork_child_computes_the_parents_bits(parent_results)


_FORK_AFTER_OPENMP = textwrap.dedent("""
    import os, sys
    import numba, numpy as np
    import numba_ln
    x = np.random.default_rng(1).standard_normal((4096, 1024)).astype(np.float32)
    y, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    grads = numba_ln.layer_norm_backward(x, x, mean, rstd)
    assert numba.threading_layer() == "omp", numba.threading_layer()
    pid = os.fork()
    if pid == 0:
        again = numba_ln.layer_norm_backward(x, x, mean, rstd)
        same = np.array_equal(numba_ln.layer_norm(x), y) and all(
            np.array_equal(a, b) for a, b in zip(again, grads))
        serial = "serial in this process" in numba_ln.backends()["cpu"].detail
        os._exit(0 if same and serial else 3)
    _, status = os.waitpid(pid, 0)
    print("child", os.WIFEXITED(status) and os.WEXITSTATUS(status))
    print("parent", np.array_equal(numba_ln.layer_norm(x), y))
""")


def test_without_tbb_a_child_forked_after_openmp_runs_serially():
    """Where TBB is missing, numba runs GNU OpenMP; a forked child must still compute."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="omp")
    result = subprocess.run([sys.executable, "-c", _FORK_AFTER_OPENMP], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["child", "0", "parent", "True"], result.stderr


def test_tbb_is_the_layer_where_its_wheel_exists():
    """pip installs PyPI's tbb on Linux x86-64, and numba-ln makes numba find it."""
    numba_ln.layer_norm(np.ones((4096, 64), np.float32))  # a parallel launch
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        assert numba.threading_layer() == "tbb"
        assert "'tbb'" in numba_ln.backends()["cpu"].detail
