"""The on-disk kernel cache is emptied when a shared kernel source changes."""

import types

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
    it is loaded back from numba's cache (numba issue #8578); it happened in
    this project with the old compiled ``ln_fwd`` wrapper. Every numba
    function in the package is checked: none may name a parallel one.
    """
    from numba.core.registry import CPUDispatcher

    from numba_ln import _cabi, cpu

    offenders = []
    for module in (cpu, _cabi):
        functions = {name: value for name, value in vars(module).items()
                     if isinstance(value, CPUDispatcher)}
        parallel = {name for name, f in functions.items() if f.targetoptions.get("parallel")}
        assert module is not cpu or {"ln_fwd_parallel", "ln_bwd_parallel"} <= parallel
        for name, function in functions.items():
            called = set(function.py_func.__code__.co_names) & parallel
            offenders += [f"{module.__name__}.{name} calls {callee}" for callee in called]
    assert offenders == []
