"""The benchmark command (``python -m numba_ln bench``) and its shared machinery.

No test asserts a time: only that the figures exist, are consistent with
each other, and land in the table, the JSON and the plot.
"""

import io
import os
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numba_ln
from numba_ln import _bench, _bench_capi, _bench_report, _bench_timing
from numba_ln.__main__ import main

TINY = ["bench", "--shapes", "4x64", "--dtype", "float32", "--budget", "0.01"]


def usage_error(capsys, argv):
    """Run the command expecting a usage error; return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("argv, message", [
    (["bench", "--device", "tpu"], "--device: unknown device 'tpu'; choose from cpu, cuda, all"),
    (["bench", "--dtype", "float8"], "--dtype: unknown dtype 'float8'; choose from float32"),
    (["bench", "--dtype", "float32,int8"], "unknown dtype 'int8'"),
    (["bench", "--shapes", "1024"], "--shapes: '1024' is not ROWSxCOLS"),
    (["bench", "--shapes", "0x768"], "--shapes: '0x768' is not ROWSxCOLS with positive"),
    (["bench", "--shapes", "8x768,axb"], "'axb' is not ROWSxCOLS"),
    (["bench", "--ops", "sideways"], "--ops: unknown operation 'sideways'"),
    (["bench", "--budget", "0"], "--budget: must be a positive number"),
    (["bench", "--update-readme", "README.md"], "--update-readme needs --out"),
])
def test_bad_options_exit_2_with_a_clear_message(capsys, argv, message):
    assert message in usage_error(capsys, argv)


def test_no_command_is_a_usage_error(capsys):
    assert "COMMAND" in usage_error(capsys, [])


def test_cuda_without_a_gpu_says_why(capsys):
    if _bench.gpu_unavailable_reason() is None:
        pytest.skip("a GPU can be timed here")
    assert "--device cuda: no GPU can be timed here" in usage_error(
        capsys, ["bench", "--device", "cuda"])


def test_parse_shapes_and_choices():
    assert _bench.parse_shapes("65536x1024, 1X768") == ((65536, 1024), (1, 768))
    assert _bench.parse_choices("float16,float32,float16", _bench.DTYPES, "dtype") == (
        "float16", "float32")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--device", "--dtype", "--shapes", "--quick", "--out", "--capi-lib",
                   "--markdown", "--update-readme"):
        assert option in text


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny measured run, written with --out; shared by the checks below."""
    out = tmp_path_factory.mktemp("bench")
    stdout, stderr = io.StringIO(), io.StringIO()
    real = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        status = main(TINY + ["--out", str(out)])
    finally:
        sys.stdout, sys.stderr = real
    return status, stdout.getvalue(), stderr.getvalue(), out


def test_run_prints_the_table(tiny_run):
    status, stdout, stderr, _ = tiny_run
    assert status == 0
    for heading in ("== forward, float32", "== backward, float32"):
        assert heading in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("shape"))
    assert header.split() == ["shape", "device", "implementation", "time", "GB/s", "%",
                              "roofline", "x", "NumPy", "x", "PyTorch"]
    for name in ("copy roofline", "numba-ln (out=)", "numba-ln", "NumPy"):
        assert f"  {name}  " in stdout
    assert "4x64" in stdout
    assert "] 0/2 " in stderr and "] 1/2 " in stderr  # the progress bar: one line per case


def test_run_writes_json_with_every_figure(tiny_run):
    _, _, _, out = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == _bench.SCHEMA
    assert results["command"].startswith("python -m numba_ln bench --shapes 4x64")
    machine, versions = results["machine"], results["versions"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["numba_threads"] >= 1
    assert versions["numba_ln"] == numba_ln.__version__
    assert versions["numba"] and versions["numpy"] and "torch" in versions
    assert results["date"].startswith("20")
    assert results["settings"]["shapes"] == [[4, 64]]
    records = results["results"]
    keys = {(r["operation"], r["key"]) for r in records}
    assert {(operation, key) for operation in ("forward", "backward")
            for key in ("roofline", "numba_ln_out", "numba_ln", "numpy")} <= keys
    for r in records:
        assert r["bytes"] == (2 if r["operation"] == "forward" else 3) * 4 * 64 * 4
        assert r["best_s"] > 0 and r["median_s"] >= r["best_s"] and r["samples"] >= 1
        assert r["gbps"] == pytest.approx(r["bytes"] / r["best_s"] / 1e9)
        assert r["roofline_fraction"] == pytest.approx(r["gbps"] / r["roofline_gbps"])
        assert r["speedup_vs_numpy"] > 0
        assert r["group"] == f"{r['operation']}|4x64|float32"
    roofline = next(r for r in records if r["key"] == "roofline")
    assert roofline["kernel"] and roofline["roofline_fraction"] == pytest.approx(1.0)
    if versions["torch"] is None:
        assert any("PyTorch" in name for name in results["skipped"])
    else:
        assert all(r["speedup_vs_torch"] > 0 for r in records)


def test_run_writes_a_png(tiny_run):
    _, _, _, out = tiny_run
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_and_readme_from_saved_json(tiny_run, tmp_path, capsys):
    _, _, _, out = tiny_run
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n\n<!-- section: performance -->\nold\n"
                      "<!-- end section: performance -->\n\nafter\n")
    assert main(["bench", "--from-json", str(out / "results.json"), "--markdown",
                 "--out", str(tmp_path / "perf"), "--update-readme", str(readme)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("## Performance")
    assert "| shape | device | implementation | time | GB/s | % roofline |" in printed
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n<!-- section: performance -->\n## Performance")
    assert text.endswith("<!-- end section: performance -->\n\nafter\n")
    assert "old" not in text and "![GB/s against hidden size](perf/plot.png)" in text
    assert (tmp_path / "perf" / "plot.png").is_file()


def test_readme_without_markers_is_an_error(tiny_run, tmp_path, capsys):
    _, _, _, out = tiny_run
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    message = usage_error(capsys, ["bench", "--from-json", str(out / "results.json"),
                                   "--update-readme", str(readme)])
    assert "has no '<!-- section: performance -->'" in message


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "numba_ln", "bench", "--dtype", "nope"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown dtype 'nope'" in done.stderr


# ----------------------------------------------------------------------------- machinery


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_numpy_baseline_matches_numba_ln(dtype):
    inputs = _bench.make_inputs((5, 33), dtype)
    y, mean, rstd = _bench.numpy_forward(inputs.x, inputs.weight, inputs.bias)
    expected = numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias, eps=_bench.EPS)
    tolerance = {"float16": 2e-3, "float32": 2e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(y.astype(np.float64), expected.astype(np.float64),
                               rtol=tolerance, atol=tolerance * 10)
    grads = _bench.numpy_backward(inputs.dy, inputs.x, mean, rstd, inputs.weight)
    expected = numba_ln.layer_norm_backward(inputs.dy, inputs.x, inputs.mean, inputs.rstd,
                                            inputs.weight)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                   rtol=tolerance * 10, atol=tolerance * 10)


def test_check_output_rejects_a_wrong_result():
    case = _bench.Case("forward", 8, 16, "float32")
    inputs = _bench.make_inputs(case.shape, case.dtype)
    good = numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias, eps=_bench.EPS)
    _bench.check_output(case, inputs, good)
    bad = good.copy()
    bad[-1, 3] += 0.5
    with pytest.raises(AssertionError, match="differs from the float64 reference"):
        _bench.check_output(case, inputs, bad)


@pytest.mark.parametrize("operation", _bench.OPERATIONS)
def test_roofline_candidates_move_the_bytes(operation):
    case = _bench.Case(operation, 3, 1001, "float16")
    inputs = _bench.make_inputs(case.shape, case.dtype)
    raw_x = inputs.x.view(np.uint16)
    expected = raw_x if operation == "forward" else raw_x ^ inputs.dy.view(np.uint16)
    out = np.zeros_like(raw_x)
    candidates = _bench.roofline_candidates(case, inputs, out)
    assert len(candidates) == 2 and any("prange" in name for name in candidates)
    for call in candidates.values():
        out[...] = 0
        call()
        np.testing.assert_array_equal(out, expected)


def test_measure_and_extra_info():
    case = _bench.Case("backward", 2, 8, "float32")
    timing = _bench.measure(lambda: None, budget_s=0.001)
    assert timing.samples >= _bench_timing.MIN_SAMPLES and timing.loops > 1
    assert 0 < timing.best_s <= timing.median_s
    info = _bench.extra_info(case, 2e-6, _bench.Timing(1e-6, 1e-6, 3, 1), kernel=None)
    assert info["bytes"] == 3 * 2 * 8 * 4
    assert info["gbps"] == pytest.approx(192 / 2e-6 / 1e9)
    assert info["roofline_fraction"] == pytest.approx(0.5)
    assert _bench.extra_info(case) == {"bytes": 192, "operation": "backward",
                                       "shape": "2x8", "dtype": "float32"}


def test_interleaved_rounds_keep_the_roofline_sampling():
    calls = {"leader": 0, "follower": 0}

    def leader():
        calls["leader"] += 1
        sum(range(20_000))

    def follower():
        calls["follower"] += 1

    timings = _bench.measure_interleaved([follower, leader], budget_s=0.02, followers={0},
                                         min_samples=3, max_samples=5)
    assert timings[1].samples >= 3
    # The follower was sampled in every round the leader was (loops calls each time).
    assert timings[0].samples >= timings[1].samples
    assert calls["follower"] >= timings[0].samples * timings[0].loops


def test_torch_missing_is_a_skip_with_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    case = _bench.Case("forward", 2, 8, "float32")
    impl = next(i for i in _bench.implementations("forward", ("cpu",)) if i.key == "torch")
    with pytest.raises(_bench.Unavailable, match="PyTorch is not installed"):
        _bench.prepare(impl, case, _bench.make_inputs(case.shape, case.dtype))


def test_progress_without_a_terminal_prints_one_line_per_case():
    stream = io.StringIO()
    progress = _bench.Progress(2, stream)
    progress.show("forward|8x8|float32")
    progress.show("forward|8x8|float32", "NumPy (cpu)")
    progress.step()
    progress.show("backward|8x8|float32")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "0/2" in lines[0] and "1/2" in lines[1]


def test_skip_reasons_are_listed_once_each():
    skipped = {}
    for reason in ("no library (looked in a; b)", "no library (looked in a; b)", "other"):
        _bench._note(skipped, "numba-ln C ABI (cpu)", reason)
    assert skipped == {"numba-ln C ABI (cpu)": "no library (looked in a; b); other"}


def test_format_time():
    assert _bench_report.format_time(1.5) == "1.50 s"
    assert _bench_report.format_time(0.01234) == "12.34 ms"
    assert _bench_report.format_time(3.2e-6) == "3.2 us"


# ----------------------------------------------------------------------------- the C ABI rows

FAKE_HEADER = """
#ifndef NUMBA_LN_H
#define NUMBA_LN_H
#include <stdint.h>
#define NLN_API __attribute__((visibility("default")))
typedef enum nln_status { NLN_OK = 0, NLN_ERROR = 1 } nln_status;
/* Forward, float32: y = (x - mean) * rstd * weight + bias, row by row. */
NLN_API nln_status nln_layer_norm_f32(const float *x, int64_t ldx, const float *weight,
                                      const float *bias, float *y, int64_t ldy,
                                      float *mean, float *rstd, int64_t rows,
                                      int64_t cols, float eps);
#endif
"""

FAKE_SOURCE = """
#include <math.h>
#include "numba_ln.h"
nln_status nln_layer_norm_f32(const float *x, int64_t ldx, const float *weight,
                              const float *bias, float *y, int64_t ldy, float *mean,
                              float *rstd, int64_t rows, int64_t cols, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        double s = 0, ss = 0;
        for (int64_t j = 0; j < cols; ++j) s += x[r * ldx + j];
        double m = s / cols;
        for (int64_t j = 0; j < cols; ++j) { double d = x[r * ldx + j] - m; ss += d * d; }
        double q = 1.0 / sqrt(ss / cols + eps);
        for (int64_t j = 0; j < cols; ++j)
            y[r * ldy + j] = (float)((x[r * ldx + j] - m) * q * weight[j] + bias[j]);
        mean[r] = (float)m; rstd[r] = (float)q;
    }
    return NLN_OK;
}
"""


@pytest.fixture(scope="module")
def fake_capi(tmp_path_factory):
    """A tiny C library with the C ABI's forward prototype, built with the system cc."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    folder = tmp_path_factory.mktemp("capi")
    (folder / "numba_ln.h").write_text(FAKE_HEADER)
    (folder / "fake.c").write_text(FAKE_SOURCE)
    library = folder / "libnumba_ln.so"
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(library),
                    str(folder / "fake.c"), "-lm"], check=True)
    return library


def test_parse_prototype_reads_the_header():
    returns, params = _bench_capi.parse_prototype(FAKE_HEADER, "nln_layer_norm_f32")
    assert returns == "nln_status"
    assert params[:3] == [("float *", "x"), ("int64_t", "ldx"), ("float *", "weight")]
    assert params[-1] == ("float", "eps")
    assert _bench_capi.parse_prototype(FAKE_HEADER, "nln_layer_norm_f16") is None


def test_capi_rows_call_the_library_by_its_header(fake_capi):
    case = _bench.Case("forward", 7, 33, "float32")
    inputs = _bench.make_inputs(case.shape, case.dtype)
    impl = next(i for i in _bench.implementations("forward", ("cpu",)) if i.key == "capi")
    prepared = _bench.prepare(impl, case, inputs, _bench.Options(capi_lib=str(fake_capi)))
    y = prepared.call()
    np.testing.assert_allclose(y, numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias),
                               rtol=1e-5, atol=1e-5)
    missing = _bench.Case("forward", 7, 33, "float16")
    with pytest.raises(_bench.Unavailable, match="declares no nln_layer_norm_f16"):
        _bench.prepare(impl, missing, _bench.make_inputs(missing.shape, missing.dtype),
                       _bench.Options(capi_lib=str(fake_capi)))


def test_capi_missing_library_is_a_skip_with_a_reason(tmp_path):
    with pytest.raises(_bench.Unavailable, match="no such file"):
        _bench_capi.find_capi_library(tmp_path / "nope.so")


def test_cli_table_includes_capi_rows(fake_capi, capsys):
    assert main(TINY + ["--ops", "forward", "--capi-lib", str(fake_capi)]) == 0
    assert "numba-ln C ABI" in capsys.readouterr().out


def test_readme_section_text_is_dedented():
    # The generated section starts at column 0 so it renders as Markdown.
    results = {"date": "2026-01-01T00:00:00+00:00", "command": "python -m numba_ln bench",
               "machine": {"cpu_model": "CPU", "cores": 2, "numba_threads": 2,
                           "threading_layer": "omp", "system": "Linux", "gpu": None},
               "versions": {"numba_ln": "0", "numba": "0", "numpy": "0", "torch": None,
                            "python": "3"},
               "settings": {"budget_s": 0.3}, "skipped": {"GPU": "none here"},
               "results": []}
    text = _bench_report.format_markdown(results)
    assert text == textwrap.dedent(text)
    assert "- GPU: none here" in text and "PyTorch not installed" in text


# ----------------------------------------------------------------------------- the GPU rows

SIMULATED_GPU_ROWS = """
import numba_ln
from numba_ln import _bench
from numba_ln.__main__ import main

# Under the simulator GPU rows are never timed ...
reason = _bench.gpu_unavailable_reason()
assert reason is not None and "simulator" in reason, reason
try:
    main(["bench", "--device", "cuda"])
except SystemExit as exc:
    assert exc.code == 2
else:
    raise AssertionError("--device cuda ran under the simulator")

# ... but the callables they would time compute the right thing.
_bench.gpu_unavailable_reason = lambda: None
options = _bench.Options()
for operation in _bench.OPERATIONS:
    case = _bench.Case(operation, 5, 40, "float32")
    inputs = _bench.make_inputs(case.shape, case.dtype)
    for impl in _bench.implementations(operation, ("cuda",)):
        if impl.key == "torch":
            continue
        prepared = _bench.prepare(impl, case, inputs, options)  # checks the result
        print(operation, impl.key, "ok")
"""


def test_gpu_rows_compute_the_right_thing_under_the_simulator():
    if _bench.gpu_unavailable_reason() is None:
        pytest.skip("a real GPU is here: the GPU rows run in the benchmark itself")
    try:
        import numba_cuda  # noqa: F401
    except ImportError:
        pytest.skip("numba-cuda is not installed")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", SIMULATED_GPU_ROWS], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n").count("forward numba_ln ok") == 1
    assert "forward numba_ln_out ok" in done.stdout and "backward roofline ok" in done.stdout


def test_without_matplotlib_the_run_still_prints_and_writes(tiny_run, tmp_path, monkeypatch,
                                                            capsys):
    """matplotlib is optional: a one-line note, the table, the JSON and the README; no plot."""
    _, stdout, _, out = tiny_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- section: performance -->\nold\n"
                      "<!-- end section: performance -->\n")
    perf = tmp_path / "perf"
    assert main(["bench", "--from-json", str(out / "results.json"), "--out", str(perf),
                 "--update-readme", str(readme)]) == 0
    captured = capsys.readouterr()
    assert "== forward, float32" in captured.out
    notes = [line for line in captured.err.splitlines() if line.startswith("note: no plot")]
    assert notes == ["note: no plot (matplotlib is not installed: pip install matplotlib)"]
    assert "Traceback" not in captured.err
    assert (perf / "results.json").is_file() and not (perf / "plot.png").exists()
    assert "old" not in readme.read_text() and "![" not in readme.read_text()
