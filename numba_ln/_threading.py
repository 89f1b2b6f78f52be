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


def configure():
    """Select the thread-safe layer, unless the user picked one."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"
