"""Choose a numba threading layer that survives concurrent callers.

numba's ``workqueue`` layer aborts the whole process when two threads launch
parallel kernels at once -- an ordinary situation for a library called from
a thread pool or from C programs with several threads. ``"threadsafe"`` asks
numba for TBB or OpenMP, whichever is installed (GNU OpenMP ships with gcc's
runtime, libgomp, on every Linux with a compiler).

A user's explicit choice (``NUMBA_THREADING_LAYER`` in the environment) wins.
"""

import os

import numba

_SAFE_LAYERS = ("tbb", "omp")


def configure():
    """Select the thread-safe layer, unless the user picked one."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"


def is_thread_safe():
    """True once a parallel kernel has run under a thread-safe layer."""
    try:
        return numba.threading_layer() in _SAFE_LAYERS
    except ValueError:  # no parallel kernel has run yet: the configured choice rules
        return numba.config.THREADING_LAYER in ("threadsafe", "safe", *_SAFE_LAYERS)
