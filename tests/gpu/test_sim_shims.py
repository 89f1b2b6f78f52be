"""The simulator shims (``sim_shims``): ``shfl_xor_sync``, the barrier check, strict row accesses.

The shuffle tests that compare values also run on a real GPU (the shim must
agree with the hardware); the tests that break the rules would hang or be
undefined on a GPU, so they run only under the simulator, each under a
timeout so that a hang fails instead of stalling the run. So do the tests
of the vector accesses' alignment check and of the access counter.
"""

import inspect
import threading
import time

import numpy as np
import pytest
from numba import cuda, float32

from numba_ln import _gpu_ops

from .conftest import SIMULATOR
from .sim_shims import (DivergentBarrierError, MisalignedAccessError, WarpShuffleError,
                        counting, element_addresses)

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


# --------------------------------------------------------------------------
# Vector loads and stores: the alignment check and the access counter
# --------------------------------------------------------------------------

_load4, _store4 = _gpu_ops.vector_load(4), _gpu_ops.vector_store(4)
_load1, _store1 = _gpu_ops.vector_load(1), _gpu_ops.vector_store(1)


@cuda.jit
def _copy_four(source, source_index, target, target_index):
    """Thread 0 moves 4 elements through one vector load and one vector store."""
    local = cuda.local.array(4, float32)
    if cuda.threadIdx.x == 0:
        _load4(source, source_index, 0, local, 0)
        _store4(target, target_index, 0, local, 0)


@cuda.jit
def _copy_one(source, target):
    """Thread ``t`` copies element ``t``; thread 0 reads element 0 a second time."""
    local = cuda.local.array(1, float32)
    tid = cuda.threadIdx.x
    _load1(source, tid, 0, local, 0)
    if tid == 0:
        _load1(source, 0, 0, local, 0)
    _store1(target, tid, 0, local, 0)


def _device_at(dtype, past_64, size):
    """A simulator device array of ``size`` zeros whose first element is ``past_64`` bytes past
    a 64-byte boundary (NumPy allows unaligned views)."""
    dtype = np.dtype(dtype)
    raw = cuda.to_device(np.zeros(size * dtype.itemsize + 64 + past_64, np.uint8))
    skip = -element_addresses(raw)[0] % 64 + past_64
    return raw[skip:skip + size * dtype.itemsize].view(dtype)


@simulator_only
@pytest.mark.parametrize("index", [1, 2, 3, 6])
def test_vector_load_at_a_misaligned_index_fails(index):
    """4 float32 need 16-byte alignment: element 6 (8 bytes aligned) is no better than 1."""
    source = _device_at(np.float32, 0, 16)
    target = _device_at(np.float32, 0, 16)
    path, (line,) = lines_calling(_copy_four, "_load4")
    address = element_addresses(source)[index]
    with pytest.raises(MisalignedAccessError) as raised:
        _copy_four[1, 32](source, index, target, 0)
    message = str(raised.value)
    assert (f"load of 4 x 4-byte elements at address {address:#x} (element {index}) "
            f"is not aligned to 16 bytes") in message
    assert f"{path}:{line} (_copy_four)" in message


@simulator_only
@pytest.mark.parametrize("source_past, launch, problem", [
    (0, lambda source, target: _copy_four[1, 32](source, 4, target, 2),
     r"store of 4 x 4-byte elements .* \(element 2\) is not aligned to 16 bytes "
     r"\(address % 16 = 8\)"),
    (2, lambda source, target: _copy_one[1, 32](source, target),
     r"load of 1 x 4-byte elements .* is not aligned to 4 bytes \(address % 4 = 2\)"),
], ids=["vector-store", "scalar-load"])
def test_misaligned_store_and_scalar_access_fail(source_past, launch, problem):
    """Stores are checked as loads are; width 1 asks the element's own alignment (4 bytes here)."""
    source = _device_at(np.float32, source_past, 32)
    target = _device_at(np.float32, 0, 32)
    with pytest.raises(MisalignedAccessError, match=problem):
        launch(source, target)


@simulator_only
@pytest.mark.parametrize("source_index, target_index", [(0, 0), (4, 12), (12, 4)])
def test_aligned_vector_accesses_pass(source_index, target_index):
    values = np.arange(16, dtype=np.float32)
    source = _device_at(np.float32, 0, 16)
    source[:] = values
    target = _device_at(np.float32, 0, 16)
    _copy_four[1, 32](source, source_index, target, target_index)
    copied = target.copy_to_host()[target_index:target_index + 4]
    np.testing.assert_array_equal(copied, values[source_index:source_index + 4])


@simulator_only
def test_counter_counts_each_element_read_and_written():
    """Element 0 is read twice, the others once; a view with a row stride is looked up by address."""
    source = _device_at(np.float32, 0, 32)
    target = _device_at(np.float32, 0, 32)
    with counting() as counter:
        _copy_one[1, 32](source, target)
    expected = np.ones(32, np.int64)
    expected[0] = 2
    np.testing.assert_array_equal(counter.reads(source), expected)
    np.testing.assert_array_equal(counter.writes(target), np.ones(32))
    assert counter.writes(source).sum() == counter.reads(target).sum() == 0
    assert (counter.total_reads, counter.total_writes) == (33, 32)
    rows = source.reshape(4, 8)[:, :3]
    np.testing.assert_array_equal(counter.reads(rows), expected.reshape(4, 8)[:, :3])


@simulator_only
def test_counting_refuses_to_count_without_the_strict_accesses(monkeypatch):
    """Without the shims nothing would be recorded: an empty count must not pass for a clean one."""
    monkeypatch.setattr(_gpu_ops, "simulated_load", lambda *args: None)
    with pytest.raises(RuntimeError, match="needs sim_shims.installed"):
        with counting():
            pass


@simulator_only
def test_threads_reaching_a_shared_array_together_share_it(monkeypatch):
    """The simulator's look-up of a block's shared array is one step under the shim.

    Without it, threads that arrive at ``cuda.shared.array`` together could
    each make their own array; ``np.empty`` is slowed here so they would.
    """
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    shared = FakeCUDAShared(0)
    real_empty = np.empty

    def slow_empty(*args, **kwargs):
        time.sleep(0.01)  # every thread is between the look-up and the store
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_empty)
    start = threading.Barrier(16)
    arrays = []

    def thread():
        start.wait()
        arrays.append(shared.array((8,), np.float32))

    threads = [threading.Thread(target=thread) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_TIMEOUT_S)
    assert len(arrays) == 16 and all(a is arrays[0] for a in arrays)
