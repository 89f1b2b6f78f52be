"""Choose a numba threading layer that survives threads and fork.

Layers numba offers and what each survives:

- ``tbb`` (Intel TBB): concurrent callers and ``fork()`` after use. numba
  loads it only if ``libtbb.so.12`` is loadable, and PyPI's ``tbb`` wheel
  puts that library in ``<prefix>/lib``, which is not on the loader's path:
  :func:`configure` loads it from where the wheel installed it.
- ``omp`` (GNU OpenMP, libgomp): concurrent callers, but a child forked after
  a parallel region is terminated on its first one.
- ``workqueue``: aborts the process when two threads launch at once.

numba-ln makes TBB loadable and asks for ``threadsafe``: TBB, else OpenMP.
With OpenMP, a child forked after a parallel region computes serially
(:func:`parallel_allowed`): the schedule does not depend on the thread
count, so the child gets the parent's bits, only slower. A user's own
choice (``NUMBA_THREADING_LAYER``) wins.
"""

import ctypes
import os
import sys

import numba

#: The soname numba's TBB layer links against (TBB 2021.6 or later).
_TBB_SONAME = "libtbb.so.12"

_forked_after_openmp = False


def _tbb_candidates():
    """Paths where a ``tbb`` wheel may have put ``libtbb.so.12``, most likely first."""
    try:
        from importlib import metadata

        files = metadata.files("tbb") or ()
    except Exception:  # no tbb distribution, or unreadable metadata
        files = ()
    found = [str(f.locate()) for f in files if f.name == _TBB_SONAME]
    found.append(os.path.join(sys.prefix, "lib", _TBB_SONAME))
    return found


def load_tbb():
    """Make ``libtbb.so.12`` loadable by numba's TBB layer; True on success."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(_TBB_SONAME)  # already on the loader's path
        return True
    except OSError:
        pass
    for path in _tbb_candidates():
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def _after_fork_in_child():
    global _forked_after_openmp
    from numba.np.ufunc import parallel

    if parallel._is_initialized and parallel._threading_layer == "omp":
        _forked_after_openmp = True


def parallel_allowed():
    """False in a child forked after GNU OpenMP ran: such a child must stay serial.

    Examples
    --------
    >>> from numba_ln import _threading
    >>> _threading.parallel_allowed()   # in a process that was not forked after OpenMP
    True
    """
    return not _forked_after_openmp


def configure():
    """Make TBB loadable; select the thread-safe layers unless the user picked one."""
    load_tbb()
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
