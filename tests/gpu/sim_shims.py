"""Shims that make numba's CUDA simulator as strict as a GPU, without touching the kernels.

numba's simulator runs a block as one Python thread per CUDA thread
(``numba.cuda.simulator.kernel``): ``BlockThread.syncthreads`` flags the
thread as blocked and waits on an event; the ``BlockManager`` polls its
threads and releases them all once every live thread is blocked. Every
barrier -- ``cuda.syncthreads`` and its ``_count``/``_and``/``_or`` forms,
a grid group's ``sync`` -- goes through ``BlockThread.syncthreads``. Inside a
kernel ``cuda`` is a ``FakeCUDAModule`` (``numba.cuda.simulator.kernelapi``),
which has no warp shuffles at all.

:func:`installed` patches, for as long as it is entered:

- ``BlockManager.__init__``: each block gets a :class:`_BlockState`.
- ``BlockThread.run``: each thread registers in its block's state and marks
  itself exited when its function returns (so a shuffle can tell a lane that
  has not started from one that has left).
- ``BlockThread.syncthreads``: the barrier check. A thread's n-th barrier
  call meets every other live thread's n-th call (the manager releases a
  barrier only when all live threads wait at it), so the first site to
  arrive at barrier n is recorded and any thread that arrives there from
  another site raises :class:`DivergentBarrierError` naming both sites. A
  site is the chain of kernel-source lines from the barrier call out to the
  kernel (a device function called from two lines is two barriers on a GPU,
  where device functions are inlined).
- ``FakeCUDAModule.shfl_xor_sync``: a per-warp rendezvous. Each lane of the
  mask deposits its value and waits until every lane of the mask has, then
  takes the value of lane ``lane ^ offset`` as it was given (bit-exact).
  A lane of the mask that has exited, that waits at a later barrier, that
  lies outside the block, or that does not arrive within
  ``SHUFFLE_DEADLINE_S`` makes the waiting lanes raise
  :class:`WarpShuffleError` instead of hanging.
- ``numba_ln._gpu_ops.simulated_load`` and ``simulated_store``, which every
  row access of the kernels goes through under the simulator (looked up at
  call time): the access's first element must sit at a byte address that is
  a multiple of ``min(16, width * itemsize)``, as the GPU's ``ld.global.v*``
  requires, or :class:`MisalignedAccessError` names the address and the
  kernel call site. The address is the 1-D ``array._ary``'s data pointer
  plus ``index`` strides (the kernels get 1-D buffers that view the
  caller's memory, so a view's offset is in its pointer). Every element accessed is
  then recorded in each :func:`counting` counter that is entered.

- ``FakeCUDAShared.array``: the simulator finds a block's shared array by
  the calling line, but looks it up and stores it without a lock, so two
  threads of a block that reach the line together can each make an array
  of their own and stop sharing (a rare, load-dependent wrong sum). The
  shim makes the look-up and the store one step.

The simulator re-raises a kernel thread's exception from the launch as
``type(e)(msg)``, so these exceptions take a single message argument.
"""

import contextlib
import os
import sys
import threading
import time

import numpy as np
import pytest

#: Lanes in a warp; lanes are consecutive threads in ``threadIdx`` linear order.
WARP_SIZE = 32
#: Longest a lane waits for the rest of its mask before failing (a missing lane
#: is usually found at once; this only bounds the cases that cannot be told apart).
SHUFFLE_DEADLINE_S = 30.0
#: How often a waiting lane looks at the lanes that have not arrived.
SHUFFLE_POLL_S = 0.005


class SimulatorShimError(AssertionError):
    """A kernel did something a GPU would hang on or leave undefined."""


class DivergentBarrierError(SimulatorShimError):
    """Threads of one block waited at different ``syncthreads`` call sites."""


class WarpShuffleError(SimulatorShimError):
    """A warp shuffle whose lanes did not all take part, or read an inactive lane."""


class MisalignedAccessError(SimulatorShimError):
    """A vector load or store whose first element is not aligned to the access's size."""


class _BlockState:
    """What the shims know of one simulated block."""

    def __init__(self):
        # Barrier number -> (site, threadIdx) of the first thread to arrive there.
        self.barrier_sites = {}
        # thread_id -> BlockThread, for threads that have started.
        self.threads = {}
        # Guards the shuffle exchanges; waiting lanes sleep on it.
        self.shuffle_cond = threading.Condition()
        # (warp, mask, call number) -> {"values": {lane: value}, "readers": n}.
        self.exchanges = {}


def _site_text(site):
    """``file:line`` of the barrier call, then ``called from file:line`` outwards."""
    return ", called from ".join(f"{code.co_filename}:{line} ({code.co_name})"
                                 for code, line in site)


@contextlib.contextmanager
def installed():
    """Patch the simulator with the barrier check, ``shfl_xor_sync`` and strict row accesses."""
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator import kernelapi as sim_kernelapi

    from numba import types as numba_types
    from numba.np import numpy_support as numba_support

    import numba_ln._gpu_ops as gpu_ops

    simulator_dir = os.path.dirname(sim_kernel.__file__) + os.sep
    # Frames in these files are the simulator's, Python's or ours, never kernel source.
    not_kernel_source = {threading.__file__, __file__}
    # Code object -> whether it is kernel source; a barrier asks per frame, ~100k times a run.
    # The vector access's simulator stand-in is not: a site starts at the kernel line calling it.
    is_kernel_source = {code: False for code in gpu_ops._simulated_access.__code__.co_consts
                        if getattr(code, "co_name", None) == "access"}
    # The closure in BlockManager.run that calls the kernel: frames above it are the thread's.
    thread_entry = [code for code in sim_kernel.BlockManager.run.__code__.co_consts
                    if getattr(code, "co_name", None) == "target"]
    original_init = sim_kernel.BlockManager.__init__
    original_run = sim_kernel.BlockThread.run
    original_syncthreads = sim_kernel.BlockThread.syncthreads
    original_load = gpu_ops.simulated_load
    original_store = gpu_ops.simulated_store

    def kernel_call_site():
        """(code, line) of each kernel-source frame, innermost first."""
        site = []
        frame = sys._getframe(2)
        while frame is not None:
            code = frame.f_code
            kernel_source = is_kernel_source.get(code)
            if kernel_source is None:
                path = code.co_filename
                kernel_source = is_kernel_source[code] = not (
                    path.startswith(simulator_dir) or path in not_kernel_source)
            if kernel_source:
                site.append((code, frame.f_lineno))
            elif code in thread_entry:
                break
            frame = frame.f_back
        return tuple(site)

    def block_manager_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.shim_state = _BlockState()

    def block_thread_run(self):
        self.shim_barriers = 0
        self.shim_exited = False
        self._manager.shim_state.threads[self.thread_id] = self
        try:
            original_run(self)
        finally:
            self.shim_exited = True
            # A lane that leaves may be the one a shuffle waits for.
            with self._manager.shim_state.shuffle_cond:
                self._manager.shim_state.shuffle_cond.notify_all()

    def checked_syncthreads(self):
        site = kernel_call_site()
        barrier = self.shim_barriers
        self.shim_barriers = barrier + 1
        first_site, first_thread = self._manager.shim_state.barrier_sites.setdefault(
            barrier, (site, tuple(self.threadIdx)))
        if site != first_site:
            raise DivergentBarrierError(
                f"threads of block {list(self.blockIdx)} wait at different syncthreads "
                f"call sites (barrier {barrier}): thread {list(first_thread)} at "
                f"{_site_text(first_site)}; thread {list(self.threadIdx)} at "
                f"{_site_text(site)}")
        original_syncthreads(self)

    def checked_access(kind, array, index, width):
        """Raise if the access is misaligned; else record its elements in the counters."""
        data = array._ary
        itemsize = data.itemsize
        address = data.__array_interface__["data"][0] + index * data.strides[0]
        alignment = min(gpu_ops.VECTOR_BYTES, width * itemsize)
        if address % alignment:
            # The simulator puts the thread's and block's indices in front of the message.
            raise MisalignedAccessError(
                f"{kind} of {width} x {itemsize}-byte elements at address {address:#x} "
                f"(element {index}) is not aligned to {alignment} bytes "
                f"(address % {alignment} = {address % alignment}), at "
                f"{_site_text(kernel_call_site())}")
        for counter in _counters:
            counter.record(kind, address, itemsize, width)

    def strict_load(array, index, dest, start, width):
        checked_access("load", array, index, width)
        original_load(array, index, dest, start, width)

    def strict_store(array, index, src, start, width):
        checked_access("store", array, index, width)
        original_store(array, index, src, start, width)

    def shfl_xor_sync(fake_cuda, mask, value, offset):
        """Value of lane ``lane ^ offset`` of this warp; every lane of ``mask`` must call."""
        thread = threading.current_thread()
        lane = thread.thread_id % WARP_SIZE
        source = lane ^ int(offset)
        # PTX shfl.bfly: a source lane past the warp's last reads the caller's own value.
        return _exchange(thread, int(mask), value, source if source < WARP_SIZE else lane)

    shared_lock = threading.Lock()

    def shared_array(self, shape, dtype, alignment=None):
        """``cuda.shared.array``: one array per block and calling line, made once under a lock."""
        if shape == 0 or alignment is not None:  # dynamic shared memory, or the refusal
            return original_shared_array(self, shape, dtype, alignment)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with shared_lock:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(
                    shape, dtype if not isinstance(dtype, numba_types.Type)
                    else numba_support.as_dtype(dtype))
        return found

    original_shared_array = sim_kernelapi.FakeCUDAShared.array

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sim_kernelapi.FakeCUDAShared, "array", shared_array)
        patch.setattr(sim_kernel.BlockManager, "__init__", block_manager_init)
        patch.setattr(sim_kernel.BlockThread, "run", block_thread_run)
        patch.setattr(sim_kernel.BlockThread, "syncthreads", checked_syncthreads)
        patch.setattr(sim_kernelapi.FakeCUDAModule, "shfl_xor_sync", shfl_xor_sync,
                      raising=False)
        strict_load.records_into = strict_store.records_into = _counters  # counting() checks
        patch.setattr(gpu_ops, "simulated_load", strict_load)
        patch.setattr(gpu_ops, "simulated_store", strict_store)
        yield


#: The counters of the :func:`counting` blocks entered now; the strict accesses record into each.
_counters = []


class AccessCounter:
    """How many times each element was read and written through the kernels' row accesses.

    Records every element that ``_gpu_ops.simulated_load`` (a read) and
    ``simulated_store`` (a write) access, by the byte address of the
    element's first byte; :meth:`reads` and :meth:`writes` look the elements
    of an array up by address. Query arrays that stayed allocated while
    counting (a freed array's address may be reused), in the dtype the
    kernels accessed them in.
    """

    def __init__(self):
        # The simulator runs a Python thread per CUDA thread: appends go under the lock.
        self._lock = threading.Lock()
        # "load"/"store" -> byte address of each element accessed, once per access.
        self._addresses = {"load": [], "store": []}

    def record(self, kind, address, itemsize, width):
        """Count the ``width`` elements of ``itemsize`` bytes from ``address`` once, as ``kind``."""
        with self._lock:
            self._addresses[kind].extend(range(address, address + width * itemsize, itemsize))

    def reads(self, array):
        """Times each element of ``array`` was read.

        Parameters
        ----------
        array : simulator device array or numpy.ndarray
            Any view: its elements are found by address, whatever the strides.

        Returns
        -------
        numpy.ndarray of int64
            ``array``'s shape.
        """
        return self._counts("load", array)

    def writes(self, array):
        """Times each element of ``array`` was written; as :meth:`reads`."""
        return self._counts("store", array)

    @property
    def total_reads(self):
        """Elements read, over every array."""
        return len(self._addresses["load"])

    @property
    def total_writes(self):
        """Elements written, over every array."""
        return len(self._addresses["store"])

    def _counts(self, kind, array):
        with self._lock:
            seen = np.array(self._addresses[kind], dtype=np.int64)
        seen.sort()
        wanted = element_addresses(array)
        return (np.searchsorted(seen, wanted, side="right")
                - np.searchsorted(seen, wanted, side="left"))


def element_addresses(array):
    """Byte address of each element of ``array`` (a simulator device array or a NumPy array).

    Examples
    --------
    >>> buffer = np.zeros((2, 4), np.float32)
    >>> (element_addresses(buffer[:, 1:3]) - element_addresses(buffer)[0, 0]).tolist()
    [[4, 8], [20, 24]]
    """
    data = np.asarray(getattr(array, "_ary", array))
    addresses = np.array(data.__array_interface__["data"][0], dtype=np.int64)
    for extent, stride in zip(data.shape, data.strides):
        addresses = addresses[..., None] + np.arange(extent, dtype=np.int64) * stride
    return addresses


@contextlib.contextmanager
def counting():
    """Count the kernels' element reads and writes while entered; yields an :class:`AccessCounter`.

    Needs :func:`installed` entered (the GPU tests' conftest does it for the
    whole simulator session). Counters may nest; each sees every access made
    while it is entered.

    Yields
    ------
    AccessCounter

    Raises
    ------
    RuntimeError
        The strict accesses are not installed, so nothing would be counted.
    """
    import numba_ln._gpu_ops as gpu_ops
    if getattr(gpu_ops.simulated_load, "records_into", None) is not _counters:
        raise RuntimeError("sim_shims.counting() needs sim_shims.installed() entered "
                           "(and NUMBA_ENABLE_CUDASIM=1): nothing would be counted")
    counter = AccessCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def _exchange(thread, mask, value, source):
    """Rendezvous of the lanes of ``mask`` in ``thread``'s warp; return lane ``source``'s value."""
    state = thread._manager.shim_state
    lane = thread.thread_id % WARP_SIZE
    warp = thread.thread_id // WARP_SIZE
    mask &= 0xFFFFFFFF
    where = f"shfl_xor_sync(mask={mask:#010x}) in warp {warp} of block {list(thread.blockIdx)}"
    if not mask >> lane & 1:
        raise WarpShuffleError(f"lane {lane} calls {where} but is not in the mask")
    if not mask >> source & 1:
        raise WarpShuffleError(f"lane {lane} reads lane {source}, which is not in the mask "
                               f"of {where}")
    calls = thread.__dict__.setdefault("shim_shuffles", {})
    number = calls.get(mask, 0)
    calls[mask] = number + 1
    key = (warp, mask, number)
    members = [member for member in range(WARP_SIZE) if mask >> member & 1]
    deadline = time.monotonic() + SHUFFLE_DEADLINE_S
    with state.shuffle_cond:
        exchange = state.exchanges.setdefault(key, {"values": {}, "readers": 0})
        values = exchange["values"]
        values[lane] = value
        state.shuffle_cond.notify_all()
        while not all(member in values for member in members):
            if thread.abort:
                raise RuntimeError("abort flag set while waiting in shfl_xor_sync")
            missing = [member for member in members if member not in values]
            problem = _why_missing(thread, warp, missing, deadline)
            if problem:
                raise WarpShuffleError(f"lane {lane} waits in {where}, but {problem}")
            state.shuffle_cond.wait(SHUFFLE_POLL_S)
        result = values[source]
        # The last lane to read drops the exchange; a long kernel would pile them up.
        exchange["readers"] += 1
        if exchange["readers"] == len(members):
            del state.exchanges[key]
    return result


def _why_missing(thread, warp, missing, deadline):
    """Why lanes ``missing`` of the mask will never arrive, or None while they still may."""
    state = thread._manager.shim_state
    threads_in_block = 1
    for extent in thread._manager._block_dim:
        threads_in_block *= extent
    for lane in missing:
        thread_id = warp * WARP_SIZE + lane
        if thread_id >= threads_in_block:
            return f"lane {lane} of the mask is past the block's {threads_in_block} threads"
        other = state.threads.get(thread_id)
        if other is None:
            continue  # not started yet
        if other.shim_exited:
            return f"lane {lane} of the mask exited without calling it"
        # Blocked at a barrier this lane has not reached: the barrier waits for us, we for it.
        # (At the barrier this lane just left, the flag may not be cleared yet.)
        if other.syncthreads_blocked and other.shim_barriers > thread.shim_barriers:
            return f"lane {lane} of the mask waits at a syncthreads instead"
    if time.monotonic() > deadline:
        return (f"lanes {missing} of the mask did not arrive within "
                f"{SHUFFLE_DEADLINE_S:g} s")
    return None
