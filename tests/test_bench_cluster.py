"""``python -m bench.cluster`` (``make bench-dask``) at a tiny size: it runs and reports.

No test asserts a time: only that every implementation and worker count
gets its row, that the Dask expressions it compares with are right, and
that bad options are usage errors.
"""

import doctest
import json
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from reference import layer_norm as ref_layer_norm, layer_norm_backward as ref_backward, rel_l2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is a checkout's package, never installed
    sys.path.insert(0, str(ROOT))

from bench import cluster  # noqa: E402

PROCESS_TIMEOUT_S = 300  # two clusters start, and a cold numba cache compiles first


def run_command(*argv):
    return subprocess.run([sys.executable, "-m", "bench.cluster", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)


def test_docstring_examples_run():
    # test_docs runs the package's examples; bench/ is not in the package.
    result = doctest.testmod(cluster, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 8


@pytest.mark.parametrize("argv, message", [
    (["--workers", "1,0"], "--workers: expected comma-separated positive integers (e.g. 1,2), "
                           "got '1,0'"),
    (["--rows", "ten"], "--rows: expected a positive integer, got 'ten'"),
    (["--rows", "100", "--chunk-rows", "200"],
     "--chunk-rows 200 is more than --rows 100: the array must span several chunks"),
])
def test_bad_options_exit_2_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cluster.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_dask_expressions_are_layer_norm():
    rng = np.random.default_rng(5)
    x, dy = (rng.standard_normal((40, 24)) for _ in range(2))
    weight, bias = rng.standard_normal(24), rng.standard_normal(24)
    lazy_x, lazy_dy = da.from_array(x, chunks=(15, 24)), da.from_array(dy, chunks=(15, 24))
    y, mean, rstd = dask.compute(*cluster.expression_forward(lazy_x, weight, bias))
    grads = dask.compute(*cluster.expression_backward(lazy_dy, lazy_x, mean, rstd, weight))
    for got, want in zip((y, mean, rstd), ref_layer_norm(x, weight, bias)):
        assert rel_l2(got, want) <= 1e-12
    for got, want in zip(grads, ref_backward(dy, x, weight, mean=mean, rstd=rstd)):
        assert rel_l2(got, want) <= 1e-12


def test_a_tiny_run_prints_every_row_and_writes_the_json(tmp_path):
    out = tmp_path / "cluster.json"
    done = run_command("--rows", "256", "--cols", "32", "--chunk-rows", "64", "--workers", "1,2",
                       "--rounds", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    cells = {tuple(c.strip() for c in line.strip("|").split("|")[:3]) for line in rows}
    expected = {(p, "numba-ln", "-") for p in ("forward", "backward")}
    expected |= {(p, name, w) for p in ("forward", "backward") for w in ("1", "2")
                 for name in ("numba_ln.dask", "dask.array expression")}
    assert cells == expected
    assert "256x32 float32 (32 KiB) in 4 chunks of 64 rows" in done.stdout
    assert "Command: `python -m bench.cluster --rows 256 --cols 32" in done.stdout
    results = json.loads(out.read_text())
    assert results["schema"] == cluster.SCHEMA and len(results["records"]) == 10
    assert all(r["rounds"] == 1 and r["median_s"] > 0 for r in results["records"])
