"""numba's on-disk kernel cache, kept consistent with the sources.

numba reuses a cached kernel while the file that *defines* it is unchanged;
it does not look at the files of the helpers it inlines (``_math.py``,
``_storage.py``, ``_config.py``, and ``cpu.py`` for the C entry points). This
module stamps the cache directory with a digest of those shared sources and
empties the package's entries when the digest changes, before any kernel is
loaded. A user who
upgrades, or a developer who edits one formula, never runs a stale kernel.

Where the cache lives is numba's choice, made deliberately here by leaving it
alone: ``__pycache__`` beside the sources when that is writable, else numba's
per-user cache directory; ``NUMBA_CACHE_DIR`` moves it. Where none of them is
writable (a read-only install run by a user without a writable home), numba
would refuse to define the kernels; :func:`policy` then reads the cache the
package ships in its own ``__pycache__`` if it was built from these sources,
and compiles in memory otherwise, with one warning.

Every kernel of the package is defined through :func:`jit` and :func:`cfunc`,
which apply that policy, and save through :class:`KeyedFunctionCache`, which
several processes may fill at once (Dask's workers, parallel test runs).
"""

import hashlib
import os
import pathlib
import warnings

import numba
from numba.core.caching import (CompileResultCacheImpl, FunctionCache, InTreeCacheLocator,
                                IndexDataCacheFile)

from . import _config

_PACKAGE = pathlib.Path(__file__).resolve().parent
_STAMP = "numba_ln.sources"
#: The modules whose code other modules' cached kernels inline.
_SHARED_SOURCES = ("_config.py", "_math.py", "_native.py", "_storage.py", "_validate.py",
                   "cpu.py")


def source_digest():
    """SHA-256 over the shared kernel sources."""
    digest = hashlib.sha256()
    for name in _SHARED_SOURCES:
        path = _PACKAGE / name
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def discard_if_stale(dispatcher):
    """Empty ``dispatcher``'s cache directory of numba-ln entries built from other sources."""
    cache_path = getattr(getattr(dispatcher, "_cache", None), "_cache_path", None)
    if cache_path is None:  # caching disabled
        return
    directory = pathlib.Path(cache_path)
    stamp = directory / _STAMP
    digest = source_digest()
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    modules = {path.stem for path in _PACKAGE.glob("*.py")}
    try:
        for entry in directory.glob("*.nb[ic]"):
            if entry.name.split(".", 1)[0] in modules:
                entry.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only cache is numba's to report, not ours
        pass


# --------------------------------------------------------------------------- processes at once

class _KeyedCacheFile(IndexDataCacheFile):
    """numba's index and data files, each data file named after its signature's key.

    numba numbers a function's data files in the order its signatures are
    saved, so two processes saving different signatures at once both take
    number 1, and the index the last one writes can name the other's code:
    a later process would run a kernel compiled for other types. Named
    after the key, two signatures never share a file; at worst an index
    entry is lost to the other process's write, and compiled again later.
    """

    def __init__(self, cache_path, filename_base, source_stamp):
        super().__init__(cache_path, filename_base, source_stamp)
        self._data_name_pattern = f"{filename_base}.{{number}}.nbc"

    def data_name(self, key):
        """The data file of ``key``: a digest of it, the same in every process."""
        return self._data_name(hashlib.sha256(repr(key).encode()).hexdigest()[:20])

    def save(self, key, data):
        name = self.data_name(key)
        self._save_data(name, data)  # written (atomically) before the index names it
        overloads = self._load_index()
        if overloads.get(key) != name:
            overloads[key] = name
            self._save_index(overloads)


class KeyedFunctionCache(FunctionCache):
    """numba's cache of a kernel, its data files named by :class:`_KeyedCacheFile`."""

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file = _KeyedCacheFile(self._cache_path, self._impl.filename_base,
                                           self._impl.locator.get_source_stamp())


# --------------------------------------------------------------------------- policy

class _ShippedLocator(InTreeCacheLocator):
    """The package's own ``__pycache__``, read as it is: its writability is not required."""

    def ensure_cache_path(self):
        if not os.path.isdir(self.get_cache_path()):
            raise OSError(f"no directory {self.get_cache_path()}")

    @classmethod
    def from_function(cls, py_func, py_file):
        locator = cls(py_func, py_file)
        return locator if os.path.isdir(locator.get_cache_path()) else None


class _ShippedImpl(CompileResultCacheImpl):
    _locator_classes = [_ShippedLocator]


class _ShippedCache(FunctionCache):
    """Loads kernels from the shipped cache; a kernel compiled here stays in memory."""

    _impl_class = _ShippedImpl

    def save_overload(self, sig, data):
        return None


_policy = None


def _writable_cache():
    """Whether numba finds a writable cache directory for this package's kernels."""
    try:
        FunctionCache(source_digest)  # numba's own search, as for any kernel here
    except RuntimeError:
        return False
    return True


def _shipped_cache_is_current():
    try:
        return (_PACKAGE / "__pycache__" / _STAMP).read_text() == source_digest()
    except OSError:
        return False


def policy():
    """How kernels are cached in this process: ``"numba"``, ``"shipped"`` or ``"off"``.

    Decided once: ``"off"`` with ``NUMBA_LN_NO_CACHE=1``; ``"numba"`` when
    numba has a writable cache directory; ``"shipped"`` when only the
    package's read-only cache, built from these sources, is there; else
    ``"off"`` with a warning that says how to keep compiled kernels.
    """
    global _policy
    if _policy is None:
        if not _config.CACHE:
            _policy = "off"
        elif _writable_cache():
            _policy = "numba"
        elif _shipped_cache_is_current():
            _policy = "shipped"
        else:
            _policy = "off"
            warnings.warn(
                "numba-ln: no writable cache directory for its compiled kernels (the "
                f"package's {_PACKAGE / '__pycache__'} is read-only and so is numba's "
                "per-user cache), so they are compiled in memory in every process. "
                "Set NUMBA_CACHE_DIR to a writable directory to keep them, or "
                "NUMBA_LN_NO_CACHE=1 to compile in memory without this warning.",
                RuntimeWarning, stacklevel=2)
    return _policy


def jit(**options):
    """``numba.njit(**options)`` with the package's cache :func:`policy`."""
    mode = policy()

    def decorate(func):
        dispatcher = numba.njit(**options)(func)  # no cache=True: the cache is set below
        if mode != "off":
            dispatcher._cache = (KeyedFunctionCache if mode == "numba" else _ShippedCache)(func)
        return dispatcher

    return decorate


def cfunc(signature):
    """``numba.cfunc(signature)`` with the package's cache :func:`policy` (compiles now)."""
    mode = policy()

    def decorate(func):
        if mode == "off":
            return numba.cfunc(signature)(func)
        from numba.core import sigutils
        from numba.core.ccallback import CFunc

        # numba.cfunc compiles before returning: the cache must be in place first.
        callback = CFunc(func, sigutils.normalize_signature(signature), locals={}, options={})
        callback._cache = (KeyedFunctionCache if mode == "numba" else _ShippedCache)(func)
        callback.compile()
        return callback

    return decorate
