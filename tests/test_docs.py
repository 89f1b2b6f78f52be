"""Every docstring example in the package runs, module by module.

The modules are found with pkgutil, so one that is added, renamed or moved
out of the package is covered (or dropped) without editing this file. The
examples each module's source holds are read with ``ast`` and compared with
those doctest found and ran, so an example doctest cannot reach (in a nested
function, say) fails the test instead of being skipped in silence.
"""

import ast
import doctest
import importlib
import inspect
import pkgutil

import pytest

import numba_ln

#: Modules that may fail to import on a test machine: name -> why. Such a
#: module is skipped, with the reason, only when its import really fails.
#: Empty: every module imports without a GPU (numba-cuda is a test extra).
IMPORT_MAY_FAIL = {}

MODULES = ["numba_ln"] + sorted(f"numba_ln.{info.name}"
                                for info in pkgutil.iter_modules(numba_ln.__path__))

_PARSER = doctest.DocTestParser()


def _written_docstrings(module):
    """The docstrings in ``module``'s source that hold examples, at any depth."""
    tree = ast.parse(inspect.getsource(module))
    nodes = [tree] + [node for node in ast.walk(tree) if isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docstrings = (ast.get_docstring(node, clean=False) for node in nodes)
    return {doc for doc in docstrings if doc and _PARSER.get_examples(doc)}


def _first_line(docstring):
    return docstring.strip().splitlines()[0]


def test_the_package_is_discovered():
    assert {"numba_ln", "numba_ln.api", "numba_ln._validate"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if name in IMPORT_MAY_FAIL:
            pytest.skip(f"{IMPORT_MAY_FAIL[name]} ({exc})")
        raise
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    report, ran, tried, failed = [], set(), 0, 0
    for test in doctest.DocTestFinder().find(module):
        if not test.examples or test.docstring in ran:  # an alias of one already run
            continue
        ran.add(test.docstring)
        result = runner.run(test, out=report.append)
        tried += result.attempted
        failed += result.failed
    assert failed == 0, "".join(report)
    written = _written_docstrings(module)
    unreached = sorted(_first_line(doc) for doc in written - ran)
    assert not unreached, f"doctest cannot reach these docstrings' examples: {unreached}"
    expected = sum(len(_PARSER.get_examples(doc)) for doc in written)
    assert tried >= expected and (tried > 0 or not written)
