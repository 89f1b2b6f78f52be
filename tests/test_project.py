"""The project's promises about itself: README examples run, flags stay safe.

Docstring examples are run by ``test_docs.py``.
"""

import pathlib
import re

import numba_ln

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README.md has no Python example"
    for block in blocks:  # each as a script runs it: the Dask example starts workers under main
        exec(compile(block, "README.md", "exec"), {"__name__": "__main__"})


def test_no_kernel_assumes_finite_math():
    for path in (ROOT / "numba_ln").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"fastmath\s*=\s*True", text), path
    assert numba_ln._config.FASTMATH == {"reassoc", "contract"}


def test_cpu_backend_reports_itself():
    cpu = numba_ln.backends()["cpu"]
    assert cpu.available and "threads" in cpu.detail


def test_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", numba_ln.__version__)
