"""The on-disk kernel cache is emptied when a shared kernel source changes."""

import types

import pytest

from numba_ln import _cache


def _dispatcher(path):
    return types.SimpleNamespace(_cache=types.SimpleNamespace(_cache_path=str(path)))


def _populate(directory):
    names = ["cpu.ln_fwd-92.py311.nbi", "cpu.ln_fwd-92.py311.1.nbc",
             "_cabi.entry-10.py311.nbi", "someone_else.f-1.py311.nbi"]
    for name in names:
        (directory / name).write_bytes(b"x")
    return names


def test_stale_entries_are_removed_and_the_stamp_written(tmp_path):
    _populate(tmp_path)
    (tmp_path / "numba_ln.sources").write_text("an older digest")
    _cache.discard_if_stale(_dispatcher(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.nb?")) == ["someone_else.f-1.py311.nbi"]
    assert (tmp_path / "numba_ln.sources").read_text() == _cache.source_digest()


def test_entries_built_from_the_current_sources_are_kept(tmp_path):
    names = _populate(tmp_path)
    (tmp_path / "numba_ln.sources").write_text(_cache.source_digest())
    _cache.discard_if_stale(_dispatcher(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.nb?")) == sorted(names)


def test_a_first_run_without_stamp_starts_clean(tmp_path):
    _populate(tmp_path)
    _cache.discard_if_stale(_dispatcher(tmp_path))
    assert len(list(tmp_path.glob("cpu.*"))) == 0


def test_disabled_cache_is_left_alone():
    _cache.discard_if_stale(types.SimpleNamespace(_cache=None))


def test_digest_follows_the_shared_sources(tmp_path, monkeypatch):
    for name in _cache._SHARED_SOURCES:
        (tmp_path / name).write_text(f"# {name}\n")
    monkeypatch.setattr(_cache, "_PACKAGE", tmp_path)
    before = _cache.source_digest()
    (tmp_path / "unrelated.py").write_text("x = 1\n")
    assert _cache.source_digest() == before
    (tmp_path / "_math.py").write_text("# an edited formula\n")
    assert _cache.source_digest() != before


def test_no_compiled_function_calls_a_parallel_kernel():
    """Parallel kernels are entered from Python only.

    A cached @njit function that calls a parallel=True one can segfault once
    it is loaded back from numba's cache (numba issue #8578). Every module of
    the package is checked: no numba function may name a parallel one of its
    module.
    """
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import numba_ln
    from numba_ln import cpu

    offenders = []
    for info in pkgutil.iter_modules(numba_ln.__path__):
        module = importlib.import_module(f"numba_ln.{info.name}")
        functions = {name: value for name, value in vars(module).items()
                     if isinstance(value, CPUDispatcher)}
        parallel = {name for name, f in functions.items() if f.targetoptions.get("parallel")}
        assert module is not cpu or {"ln_fwd_parallel", "ln_bwd_parallel"} <= parallel
        for name, function in functions.items():
            called = set(function.py_func.__code__.co_names) & parallel
            offenders += [f"{module.__name__}.{name} calls {callee}" for callee in called]
    assert offenders == []


def _two_processes_saving_at_once(tmp_path):
    """Two cache files of one function in one directory, saving two signatures interleaved.

    Both read the index before either writes it, and the first one's data
    file is written last: what two processes compiling at once may do.
    """
    first, second = (_cache._KeyedCacheFile(str(tmp_path), "kernel-10.py311", "stamp")
                     for _ in range(2))
    for cache_file in (first, second):
        cache_file._load_index = lambda: {}
    late = []
    first._save_data = lambda name, data: late.append((name, data))
    first.save(("float32",), b"code for float32")
    second.save(("float64",), b"code for float64")
    _cache._KeyedCacheFile._save_data(first, *late[0])
    return _cache._KeyedCacheFile(str(tmp_path), "kernel-10.py311", "stamp")


def test_signatures_saved_at_once_by_two_processes_never_load_each_others_code(tmp_path):
    later = _two_processes_saving_at_once(tmp_path)
    assert later.load(("float64",)) == b"code for float64"
    assert later.load(("float32",)) in (b"code for float32", None)  # at worst compiled again
    assert len(list(tmp_path.glob("kernel-10.py311.*.nbc"))) == 2


def test_the_package_kernels_save_through_the_keyed_cache():
    from numba_ln import cpu

    if _cache.policy() != "numba":
        pytest.skip(f"kernels cached by policy {_cache.policy()!r}, not saved by this process")
    assert isinstance(cpu.ln_fwd_rows._cache, _cache.KeyedFunctionCache)
    assert isinstance(cpu.ln_fwd_rows._cache._cache_file, _cache._KeyedCacheFile)
