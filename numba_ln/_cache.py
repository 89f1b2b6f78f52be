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
per-user cache directory; ``NUMBA_CACHE_DIR`` moves it.
"""

import hashlib
import pathlib

_PACKAGE = pathlib.Path(__file__).resolve().parent
_STAMP = "numba_ln.sources"
#: The modules whose code other modules' cached kernels inline.
_SHARED_SOURCES = ("_config.py", "_math.py", "_storage.py", "cpu.py")


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
