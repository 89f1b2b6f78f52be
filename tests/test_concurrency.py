"""Determinism across thread counts, and concurrent callers."""

import threading

import numba
import numpy as np
import pytest

import numba_ln
from numba_ln import _config


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4096, 96), (37, 5000), (3, 70000)], ids=str)
def test_parameter_gradients_are_bit_identical_across_thread_counts(rng, dtype, shape):
    assert shape[0] * shape[1] > _config.SERIAL_MAX_ELEMENTS  # the parallel kernel runs
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    _, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    threads = numba.get_num_threads()
    results = []
    try:
        for n in (1, threads, 1):
            numba.set_num_threads(n)
            results.append(numba_ln.layer_norm_backward(dy, x, mean, rstd, weight))
    finally:
        numba.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


def test_threading_layer_is_thread_safe():
    numba_ln.layer_norm(np.ones((4096, 64), np.float32))  # force a parallel launch
    assert numba.threading_layer() in ("tbb", "omp")


def test_an_explicit_user_choice_of_layer_wins():
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    code = "import numba_ln, numba; print(numba.config.THREADING_LAYER)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "workqueue"


def test_concurrent_callers_get_serial_results(rng):
    shapes = [(2048, 96), (512, 1000), (3, 70000), (1, 768)]
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    expected = [numba_ln.layer_norm(x) for x in inputs]
    failures = []

    def worker(i):
        for _ in range(20):
            x = inputs[i % len(inputs)]
            if not np.array_equal(numba_ln.layer_norm(x), expected[i % len(inputs)]):
                failures.append(i)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failures == []
