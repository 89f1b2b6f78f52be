"""The simulator shims (``sim_shims``): a faithful ``shfl_xor_sync`` and the barrier check.

The shuffle tests that compare values also run on a real GPU (the shim must
agree with the hardware); the tests that break the rules would hang or be
undefined on a GPU, so they run only under the simulator, each under a
timeout so that a hang fails instead of stalling the run.
"""

import inspect
import threading
import time

import numpy as np
import pytest
from numba import cuda

from .conftest import SIMULATOR
from .sim_shims import DivergentBarrierError, WarpShuffleError

FULL_MASK = 0xFFFFFFFF
#: Seconds a rule-breaking launch may take before the test calls it a hang.
HANG_TIMEOUT_S = 60

simulator_only = pytest.mark.skipif(not SIMULATOR, reason="breaks a rule a GPU would hang on")


def launch_within(timeout_s, launch):
    """Run ``launch()`` in a thread; re-raise what it raised, or fail if it outlives ``timeout_s``."""
    raised = []

    def target():
        try:
            launch()
        except BaseException as error:  # re-raised below, in the test's thread
            raised.append(error)

    deadline = time.monotonic() + timeout_s
    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    runner.join(timeout_s)
    # A launch that raised leaves its other threads to stop at their next barrier or shuffle;
    # until they have, they keep this module's ``cuda`` swapped for the simulator's fake.
    from numba.cuda.simulator.kernel import BlockThread
    for thread in threading.enumerate():
        if isinstance(thread, BlockThread):
            thread.join(max(deadline - time.monotonic(), 0))
    if runner.is_alive() or any(isinstance(t, BlockThread) for t in threading.enumerate()):
        pytest.fail(f"kernel still running after {timeout_s} s: a hang, not a clear failure")
    if raised:
        raise raised[0]


def lines_calling(kernel, callee):
    """(file, line numbers) of the source lines of ``kernel`` that call ``callee``."""
    function = kernel.py_func
    source, first = inspect.getsourcelines(function)
    lines = [first + i for i, text in enumerate(source) if f"{callee}(" in text]
    return inspect.getsourcefile(function), lines


# --------------------------------------------------------------------------
# shfl_xor_sync
# --------------------------------------------------------------------------

@cuda.jit
def _shuffle_every_offset(values, out):
    """``out[offset, tid]`` = ``shfl_xor_sync`` of ``values[tid]`` for offsets 0..31."""
    tid = cuda.threadIdx.x
    for offset in range(32):
        out[offset, tid] = cuda.shfl_xor_sync(FULL_MASK, values[tid], offset)


@cuda.jit
def _butterfly_sum(values, out):
    """Each lane adds the lane ``offset`` away, offsets 16, 8, 4, 2, 1: every lane gets the total."""
    tid = cuda.threadIdx.x
    total = values[tid]
    offset = 16
    while offset > 0:
        total += cuda.shfl_xor_sync(FULL_MASK, total, offset)
        offset //= 2
    out[tid] = total


@cuda.jit
def _half_warp_shuffles(values, out):
    """Lanes 0..15 shuffle with the full mask; lanes 16..31 return without calling."""
    tid = cuda.threadIdx.x
    if tid < 16:
        out[tid] = cuda.shfl_xor_sync(FULL_MASK, values[tid], 1)


@cuda.jit
def _other_half_at_barrier(values, out):
    """Lanes 0..15 shuffle with the full mask; lanes 16..31 wait at a barrier first."""
    tid = cuda.threadIdx.x
    if tid >= 16:
        cuda.syncthreads()
    out[tid] = cuda.shfl_xor_sync(FULL_MASK, values[tid], 1)


#: Any of lanes 16..31, the ones that do not call (whichever a waiting lane looks at first).
LATE_LANE = r"lane (1[6-9]|2\d|3[01])"


def _butterfly_in_numpy(values):
    """The kernel's sums in the kernel's order: lane i adds lane i ^ offset."""
    lanes = np.arange(32)
    totals = values.copy()
    for offset in (16, 8, 4, 2, 1):
        totals = totals + totals[lanes ^ offset]
    return totals


def _bits(array):
    return array.view(np.uint32 if array.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shuffle_reads_lane_xor_offset_bit_exact(dtype):
    """Two warps: every lane gets lane ``lane ^ offset`` of its own warp, bit for bit.

    The values are random bit patterns (NaNs with payloads, subnormals, -0.0
    among them), so any conversion on the way would show.
    """
    rng = np.random.default_rng(16)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    values = rng.integers(0, np.iinfo(uint).max, 64, dtype=uint, endpoint=True).view(dtype)
    values[:3] = [np.float64(-0.0), np.finfo(dtype).smallest_subnormal, np.nan]
    out = cuda.device_array((32, 64), dtype)
    _shuffle_every_offset[1, 64](cuda.to_device(values), out)
    tid = np.arange(64)
    expected = np.stack([values[tid ^ offset] for offset in range(32)])
    np.testing.assert_array_equal(_bits(out.copy_to_host()), _bits(expected))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_butterfly_sum_gives_every_lane_the_same_bits(dtype):
    """A butterfly over a warp matches NumPy's sum in the same order in every lane."""
    values = np.random.default_rng(32).standard_normal(32).astype(dtype) * 1e3
    out = cuda.device_array(32, dtype)
    _butterfly_sum[1, 32](cuda.to_device(values), out)
    totals = out.copy_to_host()
    expected = _butterfly_in_numpy(values)
    assert np.unique(_bits(expected)).size == 1  # the NumPy order gives all lanes one total
    np.testing.assert_array_equal(_bits(totals), _bits(expected))
    exact = values.astype(np.float64)
    assert abs(totals[0] - exact.sum()) <= 1e-5 * np.abs(exact).sum()


@simulator_only
@pytest.mark.parametrize("kernel, threads, problem", [
    (_half_warp_shuffles, 32, LATE_LANE + r" of the mask exited without calling it"),
    (_other_half_at_barrier, 32, LATE_LANE + r" of the mask waits at a syncthreads instead"),
    (_half_warp_shuffles, 16, LATE_LANE + r" of the mask is past the block's 16 threads"),
], ids=["lanes-exit", "lanes-at-barrier", "lanes-past-block"])
def test_shuffle_fails_when_lanes_of_the_mask_cannot_arrive(kernel, threads, problem):
    """Lanes 0..15 call with the full mask; lanes 16..31 leave, wait at a barrier, or do not exist."""
    values = np.arange(threads, dtype=np.float32)
    out = cuda.device_array(threads, np.float32)
    with pytest.raises(WarpShuffleError, match=problem):
        launch_within(HANG_TIMEOUT_S, lambda: kernel[1, threads](values, out))


# --------------------------------------------------------------------------
# The barrier check
# --------------------------------------------------------------------------

@cuda.jit
def _divergent_barrier(out):
    """Threads below 16 wait at one ``syncthreads``, the others at another."""
    tid = cuda.threadIdx.x
    if tid < 16:
        cuda.syncthreads()
    else:
        cuda.syncthreads()
    out[tid] = tid


@cuda.jit(device=True)
def _barrier_in_device_function():
    cuda.syncthreads()


@cuda.jit
def _device_barrier_from_two_lines(out):
    """Every thread reaches the same ``syncthreads`` line, through calls on two lines."""
    tid = cuda.threadIdx.x
    if tid < 16:
        _barrier_in_device_function()
    else:
        _barrier_in_device_function()
    out[tid] = tid


@cuda.jit
def _uniform_barriers_after_early_exit(out):
    """Two barriers every thread reaches alike, in a loop; threads past ``out`` leave first."""
    tid = cuda.threadIdx.x
    if tid >= out.size:
        return
    for _ in range(2):
        out[tid] += 1
        cuda.syncthreads()
        _barrier_in_device_function()


@simulator_only
def test_barrier_check_names_both_sites_of_a_divergent_barrier():
    path, (first, second) = lines_calling(_divergent_barrier, "cuda.syncthreads")
    out = cuda.device_array(32, np.int64)
    with pytest.raises(DivergentBarrierError) as raised:
        launch_within(HANG_TIMEOUT_S, lambda: _divergent_barrier[1, 32](out))
    message = str(raised.value)
    assert "different syncthreads call sites" in message
    assert f"{path}:{first} " in message and f"{path}:{second} " in message


@simulator_only
def test_barrier_check_tells_apart_the_calls_of_a_device_function():
    """On a GPU a device function is inlined at each call: two call lines, two barriers."""
    path, calls = lines_calling(_device_barrier_from_two_lines, "_barrier_in_device_function")
    assert len(calls) == 2
    out = cuda.device_array(32, np.int64)
    with pytest.raises(DivergentBarrierError) as raised:
        launch_within(HANG_TIMEOUT_S, lambda: _device_barrier_from_two_lines[1, 32](out))
    message = str(raised.value)
    assert all(f"called from {path}:{line} " in message for line in calls)


def test_barrier_check_passes_uniform_barriers():
    """Threads that leave early, then barriers every remaining thread reaches from the same site."""
    out = cuda.to_device(np.zeros(24, np.int64))
    _uniform_barriers_after_early_exit[1, 32](out)
    np.testing.assert_array_equal(out.copy_to_host(), 2)
