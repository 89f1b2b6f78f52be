"""A read-only install: no writable package directory, home or cache directory.

Containers often run as a user who owns nothing: the package's
``__pycache__`` is read-only and so is ``$HOME``. numba-ln must import and
compute there, loading the kernels the package ships in ``__pycache__`` when
they were built from its sources, and compiling in memory (with one warning
that names the fix) when not.

The package is copied into a fresh directory, made read-only, and imported
in a child process. Root ignores file modes, so under root the child runs
without the capabilities that let it (``setpriv``): then a mode of 0o555 is
as binding for it as for any user.
"""

import hashlib
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import numba_ln

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import hashlib, json, sys, warnings
    import numpy as np
    warnings.simplefilter("always")
    import numba_ln
    from numba_ln import _cache, cpu

    def digest(*arrays):
        return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()

    x = np.random.default_rng(5).standard_normal((64, 768)).astype(np.float32)
    report = {"file": numba_ln.__file__, "policy": _cache.policy()}
    if "--import-only" in sys.argv:
        print(json.dumps(report))
        sys.exit()
    y, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    report["forward"] = digest(y, mean, rstd)
    if "--backward" in sys.argv:
        report["backward"] = digest(*numba_ln.layer_norm_backward(x, x, mean, rstd))
    kernels = [f for f in vars(cpu).values() if hasattr(f, "_cache_hits")]
    report["hits"] = sum(sum(f._cache_hits.values()) for f in kernels)
    report["misses"] = sum(sum(f._cache_misses.values()) for f in kernels)
    report["missed"] = sorted(f.py_func.__name__ for f in kernels if f._cache_misses)
    if "--cabi" in sys.argv:  # the C library's entry points
        from numba_ln import _cabi
        _cabi.entry_points()
        report["cfunc_hits"] = _cabi._compiled["forward_f32"]._cache_hits
    print(json.dumps(report))
""")


def _digest(*arrays):
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()


def _expected():
    from numba_ln import _cabi

    _cabi.entry_points()  # the shipped cache holds the C entry points too

    x = np.random.default_rng(5).standard_normal((64, 768)).astype(np.float32)
    y, mean, rstd = numba_ln.layer_norm(x, return_stats=True)
    return {"forward": _digest(y, mean, rstd),
            "backward": _digest(*numba_ln.layer_norm_backward(x, x, mean, rstd))}


def _make_read_only(path):
    for directory, dirs, files in os.walk(path):
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
        os.chmod(directory, 0o555)


def copy_install(base):
    """``(site, home)`` under ``base``: a copy of the package with its cache, and a home.

    Skips the test where file modes cannot bind the child (root without setpriv).
    """
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root, and no setpriv to drop the capabilities")
    site, home = base / "site", base / "home"
    shutil.copytree(ROOT / "numba_ln", site / "numba_ln",
                    ignore=shutil.ignore_patterns("*.tmp.*"))
    (home / ".cache").mkdir(parents=True)
    return site, home


def install_environment(site, home):
    """The variables of a process that can import only ``site``'s numba_ln and write nothing."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"), "PYTHONPATH": str(site),
            "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture
def read_only_site():
    """``(site, home, expected)``: made read-only by ``_run_child``, after a test's edits."""
    expected = _expected()  # also fills the source tree's cache for the child's calls
    base = pathlib.Path(tempfile.mkdtemp(prefix="numba_ln_ro_"))
    site, home = copy_install(base)
    yield site, home, expected
    for directory, dirs, _ in os.walk(base):
        os.chmod(directory, 0o755)
    shutil.rmtree(base)


def _unprivileged(command):
    """``command`` run so that file modes bind it (root drops its override capabilities)."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *command]


def _run_child(site, home, *args, extra_env=None):
    """Run CHILD with only the read-only copy of numba_ln importable and nothing writable."""
    env = {**install_environment(site, home), **(extra_env or {})}
    _make_read_only(site)
    _make_read_only(home)
    result = subprocess.run(_unprivileged([sys.executable, "-c", CHILD, *args]), env=env,
                            cwd=str(home), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    import json

    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_imports_and_loads_the_shipped_kernels(read_only_site):
    site, home, expected = read_only_site
    report, stderr = _run_child(site, home, "--backward", "--cabi")
    assert report["file"] == str(site / "numba_ln" / "__init__.py")
    assert report["policy"] == "shipped"
    assert report["hits"] >= 1 and report["misses"] == 0, f"compiled {report['missed']}"
    assert report["cfunc_hits"] == 1
    assert report["forward"] == expected["forward"]
    assert report["backward"] == expected["backward"]
    assert "Warning" not in stderr, stderr


def test_a_read_only_numba_cache_dir_is_no_obstacle(read_only_site):
    site, home, expected = read_only_site
    report, stderr = _run_child(site, home, extra_env={"NUMBA_CACHE_DIR": str(home)})
    assert report["policy"] == "shipped"
    assert report["forward"] == expected["forward"]


def test_without_a_valid_shipped_cache_it_compiles_in_memory_and_says_how_to_keep_it(
        read_only_site):
    site, home, expected = read_only_site
    stamp = site / "numba_ln" / "__pycache__" / "numba_ln.sources"
    stamp.write_text("built from other sources")
    report, stderr = _run_child(site, home)
    assert report["policy"] == "off"
    assert report["hits"] == 0 and report["misses"] >= 1
    assert report["forward"] == expected["forward"]
    assert "RuntimeWarning" in stderr and "NUMBA_CACHE_DIR" in stderr
    assert "NUMBA_LN_NO_CACHE=1" in stderr
    assert stderr.count("numba-ln: no writable cache directory") == 1


def test_numba_ln_no_cache_silences_the_warning(read_only_site):
    site, home, expected = read_only_site
    shutil.rmtree(site / "numba_ln" / "__pycache__")
    report, stderr = _run_child(site, home, "--import-only",
                                extra_env={"NUMBA_LN_NO_CACHE": "1"})
    assert report["policy"] == "off"
    assert "Warning" not in stderr, stderr


def test_the_copy_is_really_read_only_for_the_child(read_only_site):
    """Guards the test itself: the child must not be able to write the copy or home."""
    site, home, _ = read_only_site
    _make_read_only(site)
    _make_read_only(home)
    probe = ("import sys\n"
             "for d in sys.argv[1:]:\n"
             "    try:\n"
             "        open(d + '/probe', 'w')\n"
             "    except OSError:\n"
             "        continue\n"
             "    sys.exit('wrote into ' + d)\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(_unprivileged(
        [sys.executable, "-c", probe, str(site / "numba_ln" / "__pycache__"), str(home)]),
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(site / "numba_ln").st_mode) == 0o555
