"""The benchmark command (``python -m bench``, from the checkout) and its modules.

No test asserts a time: only that the figures exist, are consistent with
each other, and land in the table, the JSON, the plot and the docs page, and
that a missing optional part is a note, not a failure.
"""

import contextlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import numba_ln

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is a checkout's package, never installed
    sys.path.insert(0, str(ROOT))

from bench import cases, competitors, curve, report, runner, timer  # noqa: E402
from bench.__main__ import main, parser, settings  # noqa: E402

TINY = ["--shapes", "4x64", "--dtype", "float32", "--budget", "0.01", "--device", "cpu"]
PROCESS_TIMEOUT_S = 600  # a cold numba cache compiles the kernels first


def usage_error(capsys, argv):
    """Run the command expecting a usage error; return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def run_main(argv):
    """``main(argv)`` with stdout and stderr captured: ``(status, stdout, stderr)``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


def prepare(key, case, workspace=None, device="cpu"):
    """Prepare the competitor ``key`` on ``device`` for ``case``."""
    competitor = next(c for c in competitors.competitors((device,)) if c.key == key)
    return competitors.prepare(competitor, case, workspace or competitors.Workspace())


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "--device: unknown device 'tpu'; choose from cpu, cuda, all"),
    (["--dtype", "float8"],
     "--dtype: unknown dtype 'float8'; choose from float32, float16, bfloat16, float64"),
    (["--dtype", "float32,int8"], "unknown dtype 'int8'"),
    (["--shapes", "1024"], "--shapes: '1024' is not ROWSxCOLS with positive integers "
                           "(e.g. 65536x1024)"),
    (["--shapes", "0x768"], "--shapes: '0x768' is not ROWSxCOLS with positive"),
    (["--shapes", "8x768,axb"], "'axb' is not ROWSxCOLS"),
    (["--ops", "sideways"], "--ops: unknown operation 'sideways'; choose from forward, backward"),
    (["--budget", "0"], "--budget: must be a positive number"),
    (["--update-docs", "docs.md"], "--update-docs needs --out"),
    (["--from-json", "/nonexistent/results.json"], "--from-json: cannot read"),
    (["--rounds", "0"], "--rounds: must be at least 1, got 0"),
    (["--curve", "--no-curve"], "--curve and --no-curve contradict each other"),
    (["--curve", "--device", "cuda"], "--curve: the size curve is measured on the CPU"),
])
def test_bad_options_exit_2_with_a_clear_message(capsys, argv, message):
    assert message in usage_error(capsys, argv)


def test_default_dtypes_include_bfloat16():
    pytest.importorskip("ml_dtypes")
    p = parser()
    chosen = settings(p, p.parse_args(["--shapes", "4x64"]))
    assert chosen["dtypes"] == ("float32", "float16", "bfloat16") and not chosen["dtype_reasons"]


def test_bfloat16_without_ml_dtypes_says_how_to_get_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # makes `import ml_dtypes` fail
    assert "--dtype: bfloat16 needs ml_dtypes (pip install ml_dtypes" in usage_error(
        capsys, TINY + ["--dtype", "float32,bfloat16"])
    p = parser()
    chosen = settings(p, p.parse_args(["--shapes", "4x64"]))  # no --dtype: the default
    assert chosen["dtypes"] == ("float32", "float16")
    assert "needs ml_dtypes" in chosen["dtype_reasons"]["bfloat16"]
    with pytest.raises(ImportError, match="bfloat16 needs ml_dtypes"):
        cases.numpy_dtype("bfloat16")
    assert cases.Case("forward", 2, 8, "bfloat16").bytes_moved == 2 * 2 * 8 * 2


def test_cuda_without_a_gpu_says_why(capsys):
    if competitors.gpu_unavailable_reason() is None:
        pytest.skip("a GPU can be timed here")
    assert "--device cuda: no GPU can be timed here" in usage_error(capsys, ["--device", "cuda"])


def test_parse_shapes_and_choices():
    assert cases.parse_shapes("65536x1024, 1X768") == ((65536, 1024), (1, 768))
    assert cases.parse_choices("float16,float32,float16", cases.DTYPES, "dtype") == (
        "float16", "float32")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--device", "--dtype", "--shapes", "--ops", "--quick", "--budget", "--out",
                   "--capi-lib", "--markdown", "--from-json", "--update-docs", "--curve",
                   "--no-curve", "--rounds"):
        assert option in text


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "nope"],
     "--dtype: unknown dtype 'nope'; choose from float32, float16, bfloat16, float64"),
    (["--shapes", "8by768"], "--shapes: '8by768' is not ROWSxCOLS with positive integers"),
])
def test_module_entry_point_from_the_checkout(argv, message):
    done = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_the_package_ships_no_benchmark_code():
    package = ROOT / "numba_ln"
    assert not list(package.glob("_bench*")) and not (package / "__main__.py").exists()
    imports_bench = re.compile(r"^\s*(from|import)\s+(bench\b|\.*_bench)", re.M)
    for source in package.rglob("*.py"):
        assert not imports_bench.search(source.read_text()), f"{source} imports bench"


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny measured run, written with --out; shared by the checks below."""
    out = tmp_path_factory.mktemp("bench")
    return (*run_main(TINY + ["--out", str(out)]), out)


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
    # The progress bar: one line per case (layer norm's two operations, then the three of
    # issue 17, at the one shape given).
    assert "] 0/5 " in stderr and "] 4/5 " in stderr
    for heading in ("== rms_forward, float32", "== add_ln_forward, float32",
                    "== add_rms_forward, float32"):
        assert heading in stdout
    assert "  numba-ln unfused  " in stdout


def test_run_writes_json_with_every_figure(tiny_run):
    _, _, _, out = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == runner.SCHEMA
    assert results["command"].startswith("python -m bench --shapes 4x64")
    machine, versions = results["machine"], results["versions"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["numba_threads"] >= 1
    assert versions["numba_ln"] == numba_ln.__version__
    assert versions["numba"] and versions["numpy"] and "torch" in versions
    assert results["date"].startswith("20")
    assert results["settings"]["shapes"] == [[4, 64]]
    assert results["settings"]["devices"] == ["cpu"]
    records = results["results"]
    keys = {(r["operation"], r["key"]) for r in records}
    assert {(operation, key) for operation in cases.ALL_OPERATIONS
            for key in ("roofline", "numba_ln_out", "numba_ln", "numpy")} <= keys
    assert {key for operation, key in keys if key == "numba_ln_unfused"} == {"numba_ln_unfused"}
    assert {operation for operation, key in keys if key == "numba_ln_unfused"} == set(
        cases.RESIDUAL_OPERATIONS)
    streams = {"forward": 2, "backward": 3, "rms_forward": 2, "add_ln_forward": 4,
               "add_rms_forward": 4}
    for r in records:
        assert r["bytes"] == streams[r["operation"]] * 4 * 64 * 4
        fused = r["operation"] in cases.RESIDUAL_OPERATIONS
        assert (r["speedup_vs_unfused"] is not None) == fused
        assert r["others_cpu"] is None or 0 <= r["others_cpu"] <= 1
        assert r["best_s"] > 0 and r["median_s"] >= r["best_s"] and r["samples"] >= 1
        assert r["gbps"] == pytest.approx(r["bytes"] / r["best_s"] / 1e9)
        assert r["roofline_fraction"] == pytest.approx(r["gbps"] / r["roofline_gbps"])
        assert r["speedup_vs_numpy"] > 0
        assert r["group"] == f"{r['operation']}|4x64|float32"
    roofline = [r for r in records if r["key"] == "roofline"]
    assert len(roofline) == 5  # one per operation: the faster kernel stands for it
    assert all(r["kernel"] and r["roofline_fraction"] == pytest.approx(1.0) for r in roofline)
    if versions["torch"] is None:
        assert any("PyTorch" in name for name in results["skipped"])
    else:
        assert all(r["speedup_vs_torch"] > 0 for r in records)


def test_run_writes_a_png(tiny_run):
    _, _, _, out = tiny_run
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docs_page_from_saved_json(tiny_run, tmp_path):
    _, _, _, out = tiny_run
    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    status, printed, _ = run_main(["--from-json", str(out / "results.json"), "--markdown",
                                   "--out", str(tmp_path / "docs" / "perf"),
                                   "--update-docs", str(page)])
    assert status == 0
    assert printed.startswith("# Benchmarks\n")
    assert "| shape | device | implementation | time | GB/s | % roofline |" in printed
    assert page.read_text() == printed
    assert "![GB/s against hidden size](perf/plot.png)" in printed
    assert (tmp_path / "docs" / "perf" / "plot.png").is_file()
    assert json.loads((tmp_path / "docs" / "perf" / "results.json").read_text()) == (
        json.loads((out / "results.json").read_text()))


def test_docs_page_text_is_dedented():
    # The page starts at column 0 so it renders as Markdown.
    results = {"date": "2026-01-01T00:00:00+00:00", "command": "python -m bench",
               "machine": {"cpu_model": "CPU", "cores": 2, "numba_threads": 2,
                           "threading_layer": "omp", "system": "Linux", "gpu": None},
               "versions": {"numba_ln": "0", "numba": "0", "numpy": "0", "torch": None,
                            "python": "3"},
               "settings": {"budget_s": 0.3}, "skipped": {"GPU": "none here"},
               "results": []}
    text = report.format_markdown(results)
    assert text == textwrap.dedent(text)
    assert "- GPU: none here" in text and "PyTorch not installed" in text


def test_missing_optional_parts_are_notes_and_the_run_completes(tmp_path, monkeypatch):
    """No PyTorch, no matplotlib, no C library, no GPU: one line each; table, JSON, page."""
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr("bench.__main__.gpu_unavailable_reason", lambda: "no GPU in this test")
    out, page = tmp_path / "perf", tmp_path / "benchmarks.md"
    status, stdout, stderr = run_main(
        ["--shapes", "4x64", "--dtype", "float32", "--ops", "forward", "--budget", "0.01",
         "--capi-lib", str(tmp_path / "nope.so"), "--out", str(out),
         "--update-docs", str(page)])
    assert status == 0 and "Traceback" not in stdout + stderr
    assert "== forward, float32" in stdout and "  numba-ln  " in stdout
    notes = [line for line in stdout.splitlines() if line.startswith("not measured: ")]
    assert sorted(line.split(":")[1].strip() for line in notes) == [
        "GPU rows (numba-ln CUDA, PyTorch CUDA)", "PyTorch (cpu)", "numba-ln C ABI (cpu)"]
    assert any("PyTorch is not installed" in line for line in notes)
    assert any("no C library at" in line and "nope.so" in line for line in notes)
    plot_notes = [line for line in stderr.splitlines() if line.startswith("note: ")]
    assert plot_notes == ["note: no plot (matplotlib is not installed: pip install matplotlib)"]
    results = json.loads((out / "results.json").read_text())
    assert results["versions"]["torch"] is None and len(results["skipped"]) == 3
    assert not (out / "plot.png").exists()
    assert "## Every implementation and shape" in page.read_text()
    assert "![" not in page.read_text()


# ----------------------------------------------------------------------------- the size curve

CURVE_COLUMNS = ["shape", "x", "size", "fwd", "time", "fwd", "x", "PyTorch", "fwd", "%", "copy",
                 "bwd", "time", "bwd", "x", "PyTorch", "bwd", "%", "copy", "others"]


def chosen(argv):
    """The settings the command would run with."""
    p = parser()
    return settings(p, p.parse_args(argv))


@pytest.mark.parametrize("argv, curve_shapes, table_shapes", [
    ([], [list(s) for s in curve.SHAPES], [list(s) for s in cases.default_shapes()]),
    (["--curve"], [list(s) for s in curve.SHAPES], []),
    (["--curve", "--shapes", "2x64,1x8"], [[2, 64], [1, 8]], []),
    (["--no-curve"], None, [list(s) for s in cases.default_shapes()]),
    (["--shapes", "2x64"], None, [[2, 64]]),
    (["--quick"], None, [list(s) for s in cases.QUICK_SHAPES]),
])
def test_which_runs_measure_the_size_curve(argv, curve_shapes, table_shapes):
    found = chosen(argv + ["--rounds", "7"])
    assert found["shapes"] == table_shapes
    if curve_shapes is None:
        assert not found["size_curve"]
    else:
        assert found["size_curve"] == {"shapes": curve_shapes, "rounds": 7,
                                       "operations": ["forward", "backward"]}


@pytest.mark.parametrize("argv, norm_shapes", [
    ([], cases.NORM_SHAPES),
    (["--quick"], cases.QUICK_NORM_SHAPES),
    (["--shapes", "2x64,1x8"], ((2, 64), (1, 8))),
    (["--curve"], ()),
])
def test_where_the_norm_operations_run(argv, norm_shapes):
    found = chosen(argv)
    assert found["norm_shapes"] == [list(s) for s in norm_shapes]
    if "--curve" not in argv:
        assert found["operations"] == cases.ALL_OPERATIONS
    made = cases.cases([tuple(s) for s in found["shapes"]], ["float32"], found["operations"],
                       [tuple(s) for s in found["norm_shapes"]])
    for operation in cases.NORM_OPERATIONS:
        assert [c.shape for c in made if c.operation == operation] == [
            tuple(s) for s in norm_shapes]
    for operation in cases.OPERATIONS:
        assert [c.shape for c in made if c.operation == operation] == [
            tuple(s) for s in found["shapes"]]


def test_norm_operations_only_on_the_cpu_and_not_in_the_curve(capsys, monkeypatch):
    assert "the size curve measures forward and backward only" in usage_error(
        capsys, ["--curve", "--ops", "rms_forward"])
    curve_ops = chosen(["--ops", "backward,add_ln_forward"])["size_curve"]["operations"]
    assert curve_ops == ["backward"]
    assert not chosen(["--ops", "rms_forward"])["size_curve"]
    monkeypatch.setattr("bench.__main__.gpu_unavailable_reason", lambda: None)
    assert chosen(["--device", "cuda"])["operations"] == cases.OPERATIONS
    for operation in cases.NORM_OPERATIONS:
        assert {c.device for c in competitors.competitors(operation=operation)} == {"cpu"}
    assert [c.key for c in competitors.competitors(("cpu",), "backward")] == [
        "roofline", "numba_ln_out", "numba_ln", "capi", "torch", "numpy"]


def test_curve_points_are_the_issues():
    assert curve.ROWS == {768: (1, 4, 16, 64, 128, 256, 512, 1024, 4096, 16384, 65536),
                          4096: (1, 8, 32, 128, 512, 2048, 8192)}
    assert len(curve.SHAPES) == 18 and curve.DEFAULT_ROUNDS >= 15
    assert chosen([])["size_curve"]["rounds"] == curve.DEFAULT_ROUNDS


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory):
    """``--curve`` on three tiny points, two rounds, with --out and --update-docs."""
    folder = tmp_path_factory.mktemp("curve")
    page = folder / "benchmarks.md"
    argv = ["--curve", "--shapes", "2x64,8x64,2x128", "--rounds", "2",
            "--out", str(folder / "perf"), "--update-docs", str(page)]
    return (*run_main(argv), folder)


def test_curve_prints_its_table_of_ratios(curve_run):
    status, stdout, stderr, _ = curve_run
    assert status == 0 and "Traceback" not in stdout + stderr
    assert "== size curve, float32: median of 2 interleaved rounds" in stdout
    assert "== forward" not in stdout  # the tables are not measured
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("shape"))
    assert lines[header].split() == CURVE_COLUMNS
    rows = [line.split()[0] for line in lines[header + 2:header + 5]]
    assert rows == ["2x64", "8x64", "2x128"]
    assert lines[header + 1].startswith("---")
    assert "512 B" in lines[header + 2]  # 2 x 64 float32
    summary = lines[header + 5]
    assert summary.startswith("numba-ln over PyTorch")
    if competitors.importlib.util.find_spec("torch"):
        assert re.match(r"numba-ln over PyTorch at 6 points: geometric mean [\d.]+x "
                        r"\(forward [\d.]+x, backward [\d.]+x\); minimum [\d.]+x "
                        r"\((forward|backward) \d+x\d+\)$", summary)


def test_curve_writes_json_plot_and_page(curve_run):
    _, _, stderr, folder = curve_run
    results = json.loads((folder / "perf" / "results.json").read_text())
    assert results["results"] == [] and results["settings"]["size_curve"]["rounds"] == 2
    found = results["size_curve"]
    assert found["dtype"] == "float32" and found["rounds"] == 2
    assert set(found["labels"]) == {"roofline", "numba_ln", "torch", "numpy"}
    assert [(p["operation"], p["shape"]) for p in found["points"]] == [
        (op, shape) for shape in ("2x64", "8x64", "2x128") for op in ("forward", "backward")]
    has_torch = results["versions"]["torch"] is not None
    for p in found["points"]:
        assert p["elements"] == p["rows"] * p["cols"]
        assert p["bytes"] == (2 if p["operation"] == "forward" else 3) * 4 * p["elements"]
        assert set(p["median_s"]) == {"roofline", "numba_ln", "numpy"} | (
            {"torch"} if has_torch else set())
        assert all(0 < p["best_s"][k] <= p["median_s"][k] for k in p["median_s"])
        assert p["roofline_kernel"] in ("np.copyto", "np.bitwise_xor") or "prange" in (
            p["roofline_kernel"])
        assert p["copy_fraction"] == pytest.approx(p["median_s"]["roofline"]
                                                   / p["median_s"]["numba_ln"])
        assert p["others_cpu"] is None or 0 <= p["others_cpu"] <= 1
        if has_torch:
            assert p["torch_speedup"] == pytest.approx(p["median_s"]["torch"]
                                                       / p["median_s"]["numba_ln"])
    summary = found["summary"]
    assert set(summary) == {"all", "forward", "backward"}
    if has_torch:
        assert summary["all"]["points"] == 6
        assert summary["all"]["min"] == min(p["torch_speedup"] for p in found["points"])
    assert "wrote" in stderr and "size_curve.png" in stderr
    assert (folder / "perf" / "size_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (folder / "perf" / "plot.png").exists()  # no table, no table plot
    page = (folder / "benchmarks.md").read_text()
    assert "## Size curve, float32" in page
    assert "![Time per element against working-set size](perf/size_curve.png)" in page
    assert "| shape | x size | fwd time | fwd x PyTorch | fwd % copy | bwd time |" in page
    assert "## Every implementation and shape" not in page


def test_curve_without_pytorch_or_matplotlib_is_notes(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, stdout, stderr = run_main(["--curve", "--shapes", "2x64", "--rounds", "1",
                                       "--ops", "forward", "--out", str(tmp_path)])
    assert status == 0 and "Traceback" not in stdout + stderr
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("shape"))
    assert lines[header].split() == CURVE_COLUMNS[:11] + ["others"]
    assert lines[header + 3] == "numba-ln over PyTorch: not measured (no PyTorch in this run)"
    assert [line for line in lines if line.startswith("not measured: ")] == [
        "not measured: PyTorch (cpu): PyTorch is not installed (pip install torch, or "
        "`make bench-deps`)"]
    assert [line for line in stderr.splitlines() if line.startswith("note: ")] == [
        "note: no plot (matplotlib is not installed: pip install matplotlib)"]
    found = json.loads((tmp_path / "results.json").read_text())["size_curve"]
    assert found["summary"] == {"all": None, "forward": None}
    assert found["points"][0]["torch_speedup"] is None
    assert not (tmp_path / "size_curve.png").exists()


def test_curve_calls_return_the_statistics():
    case = cases.Case("forward", 3, 16, "float32")
    workspace = competitors.Workspace()
    for competitor in competitors.CURVE_COMPETITORS:
        try:
            prepared = competitors.prepare(competitor, case, workspace)
        except competitors.Unavailable:
            continue
        if not competitor.roofline:
            assert len(prepared[0].call()) == 3, competitor.key  # y, mean, rstd


def test_summary_of_speedups():
    points = [{"operation": "forward", "shape": "1x8", "torch_speedup": 0.5},
              {"operation": "backward", "shape": "1x8", "torch_speedup": 8.0},
              {"operation": "backward", "shape": "2x8", "torch_speedup": None}]
    found = curve.summary(points)
    assert found["all"] == {"points": 2, "geomean": pytest.approx(2.0), "min": 0.5,
                            "min_at": "forward 1x8"}
    assert found["backward"]["points"] == 1 and found["backward"]["min_at"] == "backward 1x8"
    assert curve.summary(points[2:]) == {"all": None, "backward": None}


def test_rows_timed_while_others_took_the_cpus_are_flagged():
    def fake(shape, others):
        return {"operation": "forward", "rows": int(shape[0]), "cols": 8, "shape": shape,
                "median_s": {"numba_ln": 1e-6}, "torch_speedup": 1.0, "copy_fraction": 0.5,
                "others_cpu": others}

    found = {"dtype": "float32", "points": [fake("1x8", 0.02), fake("2x8", None)]}
    assert [row[-1] for row in report.curve_rows(found)] == ["others", "2%", ""]
    assert report.curve_busy_warning(found) is None
    found["points"].append(fake("4x8", 0.5))
    assert report.curve_busy_warning(found).startswith(
        "other processes took more than 25% of the CPUs while 1 of 3 rows of the size curve "
        "were timed (4x8; column others)")
    cores = os.cpu_count() or 1
    assert runner.others_share((10.0, 1.0), (12.0, 2.0), 1.0) == pytest.approx(1 / cores)
    assert runner.others_share(None, (12.0, 2.0), 1.0) is None
    now = runner.cpu_seconds()
    assert now is None or (now[0] > 0 and now[1] > 0)


def test_cache_sizes_from_sysfs(tmp_path):
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction",
                                                 "32K"), ("2", "Unified", "1M"),
                                                ("3", "Unified", "33554432")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(text + "\n")
    (tmp_path / "index9").mkdir()  # unreadable entries are passed over
    assert runner.cache_sizes(tmp_path) == [{"name": "L1d", "bytes": 48 << 10},
                                            {"name": "L2", "bytes": 1 << 20},
                                            {"name": "L3", "bytes": 32 << 20}]
    assert runner.cache_sizes(tmp_path / "missing") == []


def test_rounds_are_exact_and_short_calls_settle_first(monkeypatch):
    calls = []
    # A clock only the calls advance: a busy machine cannot make "a" look slow.
    clock = [0.0]
    monkeypatch.setattr(timer.time, "perf_counter", lambda: clock[0])

    def call(name, pause_s=1e-6):
        def run():
            calls.append(name)
            clock[0] += pause_s
        return run

    monkeypatch.setattr(timer, "SETTLE_MAX_S", 0.0015)  # "slow" is above it, the others below
    a, b, slow = timer.measure_rounds([call("a"), call("b"), call("slow", 0.005)], 4)
    assert a.samples == b.samples == slow.samples == 4 and slow.loops == 1
    runs = [(name, len(list(group))) for name, group in itertools.groupby(calls)]
    # Each sample of a short call follows one settling call; the slow one's first call
    # (before the rounds) is its first sample, so the last round has no "slow".
    assert runs[-11:] == [("a", 1 + a.loops), ("b", 1 + b.loops), ("slow", 1)] * 3 + [
        ("a", 1 + a.loops), ("b", 1 + b.loops)]


# ----------------------------------------------------------------------------- the modules


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_numpy_baseline_matches_numba_ln(dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    inputs = cases.make_inputs((5, 33), dtype)
    y, mean, rstd = cases.numpy_forward(inputs.x, inputs.weight, inputs.bias)
    assert y.dtype == inputs.x.dtype
    expected = numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias, eps=cases.EPS)
    # bfloat16's significand is 3 bits shorter than float16's: 8 times the tolerance.
    tolerance = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(y.astype(np.float64), expected.astype(np.float64),
                               rtol=tolerance, atol=tolerance * 10)
    grads = cases.numpy_backward(inputs.dy, inputs.x, mean, rstd, inputs.weight)
    expected = numba_ln.layer_norm_backward(inputs.dy, inputs.x, inputs.mean, inputs.rstd,
                                            inputs.weight)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                   rtol=tolerance * 10, atol=tolerance * 10)


def test_check_output_rejects_a_wrong_result():
    case = cases.Case("forward", 8, 16, "float32")
    inputs = cases.make_inputs(case.shape, case.dtype)
    good = numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias, eps=cases.EPS)
    cases.check_output(case, inputs, good)
    bad = good.copy()
    bad[-1, 3] += 0.5
    with pytest.raises(AssertionError, match="differs from the float64 reference"):
        cases.check_output(case, inputs, bad)


@pytest.mark.parametrize("rms", [False, True])
def test_check_output_checks_both_results_of_the_fused_add(rms):
    case = cases.Case("add_rms_forward" if rms else "add_ln_forward", 8, 16, "float32")
    inputs = cases.make_inputs(case.shape, case.dtype)
    norm = (lambda x: numba_ln.rms_norm(x, inputs.weight)) if rms else (
        lambda x: numba_ln.layer_norm(x, inputs.weight, inputs.bias))
    s = inputs.x + inputs.residual
    cases.check_output(case, inputs, (norm(s), s))
    with pytest.raises(AssertionError, match="result differs"):  # the norm of x, not of s
        cases.check_output(case, inputs, (norm(inputs.x), s))
    with pytest.raises(AssertionError, match="residual sum s differs"):
        cases.check_output(case, inputs, (norm(s), inputs.x))
    with pytest.raises(AssertionError, match="no residual sum s"):
        cases.check_output(case, inputs, norm(s))


def test_rms_forward_reference_is_not_layer_norm():
    case = cases.Case("rms_forward", 8, 16, "float32")
    inputs = cases.make_inputs(case.shape, case.dtype)
    cases.check_output(case, inputs, numba_ln.rms_norm(inputs.x, inputs.weight))
    with pytest.raises(AssertionError, match="differs"):
        cases.check_output(case, inputs, numba_ln.layer_norm(inputs.x, inputs.weight))


@pytest.mark.parametrize("operation", cases.RESIDUAL_OPERATIONS)
def test_fused_add_rows_write_y_and_s(operation):
    """numba-ln (out=) and numba-ln unfused write their preallocated y and s call after call,
    and never the inputs."""
    workspace = competitors.Workspace()
    case = cases.Case(operation, 5, 40, "float32")
    inputs = workspace.inputs(case)
    x, r = inputs.x.copy(), inputs.residual.copy()
    for key in ("numba_ln_out", "numba_ln_unfused"):
        [prepared] = prepare(key, case, workspace)
        y1, s1 = prepared.call()
        y2, s2 = prepared.call()
        assert y1 is y2 and s1 is s2  # the same buffers
        np.testing.assert_array_equal(s1, x + r)
    np.testing.assert_array_equal(inputs.x, x)
    np.testing.assert_array_equal(inputs.residual, r)


@pytest.mark.parametrize("operation", cases.RESIDUAL_OPERATIONS)
def test_fused_add_roofline_copies_both_arrays(operation):
    case = cases.Case(operation, 3, 1001, "float16")
    inputs = cases.make_inputs(case.shape, case.dtype)
    out = np.zeros_like(inputs.x)
    candidates = competitors.roofline_candidates(case, inputs, out)
    assert len(candidates) == 2 and any("prange" in name for name in candidates)
    for call in candidates.values():
        out[...] = 0
        call()
        np.testing.assert_array_equal(out, inputs.x)
    assert case.bytes_moved == 2 * cases.Case("forward", 3, 1001, "float16").bytes_moved


def test_norm_rows_are_ratios_of_medians():
    def record(operation, key, median_s):
        return {"device": "cpu", "dtype": "float32", "shape": "4x8", "operation": operation,
                "key": key, "median_s": median_s}
    records = [record("forward", "roofline", 1.0), record("forward", "numba_ln_out", 2.0),
               record("forward", "torch", 4.0), record("backward", "numba_ln_out", 9.0),
               record("add_ln_forward", "roofline", 3.0),
               record("add_ln_forward", "numba_ln_out", 4.0),
               record("add_ln_forward", "numba_ln_unfused", 6.0),
               record("add_ln_forward", "torch", 8.0)]
    rows = report.norm_rows(records)
    assert rows[0] == report.NORM_COLUMNS
    records[5]["others_cpu"] = 0.25
    rows = report.norm_rows(records)
    assert rows[1:] == [("forward", "float32", "4x8", "2.00 s", "50%", "", "2.00x", ""),
                        ("add_ln_forward", "float32", "4x8", "4.00 s", "75%", "1.50x", "2.00x",
                         "25%")]
    assert report.norm_rows(records[:4]) == []  # no norm operation measured


def test_workspace_keeps_one_case_of_inputs():
    workspace = competitors.Workspace()
    f32 = workspace.inputs(cases.Case("forward", 3, 8, "float32"))
    assert workspace.inputs(cases.Case("backward", 3, 8, "float32")) is f32
    f16 = workspace.inputs(cases.Case("forward", 3, 8, "float16"))
    np.testing.assert_array_equal(f16.x, f32.x.astype(np.float16))  # the same draws
    assert workspace.inputs(cases.Case("forward", 4, 8, "float32")).x.shape == (4, 8)


@pytest.mark.parametrize("dtype", cases.HALF_DTYPES)
@pytest.mark.parametrize("operation", cases.OPERATIONS)
def test_roofline_candidates_move_the_bytes(operation, dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    case = cases.Case(operation, 3, 1001, dtype)
    inputs = cases.make_inputs(case.shape, case.dtype)
    raw_x = inputs.x.view(np.uint16)
    expected = raw_x if operation == "forward" else raw_x ^ inputs.dy.view(np.uint16)
    out = np.zeros_like(raw_x)
    candidates = competitors.roofline_candidates(case, inputs, out)
    assert len(candidates) == 2 and any("prange" in name for name in candidates)
    for call in candidates.values():
        out[...] = 0
        call()
        np.testing.assert_array_equal(out, expected)


def test_roofline_prepares_every_kernel():
    prepared = prepare("roofline", cases.Case("backward", 2, 8, "float32"))
    assert [p.kernel for p in prepared][1] == "np.bitwise_xor" and len(prepared) == 2


def test_timer_and_figures():
    [timing] = timer.measure([lambda: None], budget_s=0.005)
    assert timing.samples >= timer.MIN_SAMPLES and timing.loops > 1
    assert 0 < timing.best_s <= timing.median_s
    case = cases.Case("backward", 2, 8, "float32")
    assert case.bytes_moved == 3 * 2 * 8 * 4
    found = cases.figures(case, 2e-6, 1e-6)
    assert found["gbps"] == pytest.approx(192 / 2e-6 / 1e9)
    assert found["roofline_gbps"] == pytest.approx(192 / 1e-6 / 1e9)
    assert found["roofline_fraction"] == pytest.approx(0.5)
    assert cases.figures(case, 2e-6)["roofline_fraction"] is None


def test_interleaved_rounds_keep_the_roofline_sampling():
    calls = {"leader": 0, "follower": 0}

    def leader():
        calls["leader"] += 1
        sum(range(20_000))

    def follower():
        calls["follower"] += 1

    timings = timer.measure([follower, leader], budget_s=0.02, followers={0},
                            min_samples=3, max_samples=5)
    assert timings[1].samples >= 3
    # The follower was sampled in every round the leader was (loops calls each time).
    assert timings[0].samples >= timings[1].samples
    assert calls["follower"] >= timings[0].samples * timings[0].loops


@pytest.mark.parametrize("operation", cases.ALL_OPERATIONS)
def test_torch_takes_bfloat16_through_its_bits(operation):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    try:
        competitors.torch_module()
    except competitors.Unavailable as exc:
        pytest.skip(str(exc))
    case = cases.Case(operation, 5, 40, "bfloat16")
    [prepared] = prepare("torch", case)  # checked against the float64 reference
    result = prepared.call()
    first = result[0] if isinstance(result, (tuple, list)) else result
    host = cases.to_host(first)
    assert host.dtype == np.dtype(ml_dtypes.bfloat16) and host.shape == case.shape


def test_bfloat16_workspace_rounds_the_same_draws():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    workspace = competitors.Workspace()
    f32 = workspace.inputs(cases.Case("forward", 3, 8, "float32")).x.copy()
    bf16 = workspace.inputs(cases.Case("forward", 3, 8, "bfloat16"))
    assert bf16.x.dtype == np.dtype(ml_dtypes.bfloat16) and bf16.mean.dtype == np.float32
    np.testing.assert_array_equal(bf16.x, f32.astype(ml_dtypes.bfloat16))


def test_check_output_holds_bfloat16_to_its_significand():
    pytest.importorskip("ml_dtypes")
    case = cases.Case("forward", 8, 16, "bfloat16")
    inputs = cases.make_inputs(case.shape, case.dtype)
    good = numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias, eps=cases.EPS)
    cases.check_output(case, inputs, good)
    bad = good.astype(np.float32)
    bad[-1, 3] += 0.1  # a dozen bfloat16 spacings: more than rounding
    with pytest.raises(AssertionError, match="differs from the float64 reference"):
        cases.check_output(case, inputs, bad.astype(good.dtype))


def test_torch_missing_is_a_skip_with_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(competitors.Unavailable, match="PyTorch is not installed"):
        prepare("torch", cases.Case("forward", 2, 8, "float32"))


def test_progress_without_a_terminal_prints_one_line_per_case():
    stream = io.StringIO()
    progress = runner.Progress(2, stream)
    progress.show("forward|8x8|float32")
    progress.show("forward|8x8|float32", "NumPy (cpu)")
    progress.step()
    progress.show("backward|8x8|float32")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "0/2" in lines[0] and "1/2" in lines[1]


def test_skip_reasons_are_listed_once_each_on_one_line():
    skipped = {}
    for reason in ("no library (looked in a; b)", "no library (looked in a; b)",
                   "other\nreason:  spread over lines"):
        runner.note(skipped, "numba-ln C ABI (cpu)", reason)
    assert skipped == {"numba-ln C ABI (cpu)":
                       "no library (looked in a; b); other reason: spread over lines"}


def test_format_time():
    assert report.format_time(1.5) == "1.50 s"
    assert report.format_time(0.01234) == "12.34 ms"
    assert report.format_time(3.2e-6) == "3.2 us"


# ----------------------------------------------------------------------------- the C ABI rows

FAKE_HEADER = """
#ifndef NUMBA_LN_H
#define NUMBA_LN_H
#include <stdint.h>
#define NLN_API __attribute__((visibility("default")))
typedef enum nln_status { NLN_OK = 0, NLN_ERROR = 1 } nln_status;
/* The calling thread's last error message. */
NLN_API const char *nln_last_error(void);
/* Forward, float32: y = (x - mean) * rstd * weight + bias, row by row. */
NLN_API nln_status nln_layer_norm_f32(const float *x, int64_t ldx, const float *weight,
                                      const float *bias, float *y, int64_t ldy,
                                      float *mean, float *rstd, int64_t rows,
                                      int64_t cols, float eps);
/* Forward, bfloat16 bits (the top half of a float32), gains in the data's type. */
NLN_API nln_status nln_layer_norm_bf16(const uint16_t *x, int64_t ldx, const uint16_t *weight,
                                       const uint16_t *bias, uint16_t *y, int64_t ldy,
                                       float *mean, float *rstd, int64_t rows,
                                       int64_t cols, float eps);
/* Declared, but missing from the fake library. */
NLN_API nln_status nln_layer_norm_f64(const double *x, int64_t ldx, const double *weight,
                                      const double *bias, double *y, int64_t ldy,
                                      double *mean, double *rstd, int64_t rows,
                                      int64_t cols, double eps);
#endif
"""

FAKE_SOURCE = """
#include <math.h>
#include "numba_ln.h"
const char *nln_last_error(void) { return "rows must be >= 0"; }
nln_status nln_layer_norm_f32(const float *x, int64_t ldx, const float *weight,
                              const float *bias, float *y, int64_t ldy, float *mean,
                              float *rstd, int64_t rows, int64_t cols, float eps) {
    if (rows < 0) return NLN_ERROR;
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
static float widen(uint16_t b) {
    union { uint32_t u; float f; } v = {(uint32_t)b << 16};
    return v.f;
}
static uint16_t narrow(float f) {  /* round to nearest, ties to even (no NaN here) */
    union { float f; uint32_t u; } v = {f};
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
nln_status nln_layer_norm_bf16(const uint16_t *x, int64_t ldx, const uint16_t *weight,
                               const uint16_t *bias, uint16_t *y, int64_t ldy, float *mean,
                               float *rstd, int64_t rows, int64_t cols, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        double s = 0, ss = 0;
        for (int64_t j = 0; j < cols; ++j) s += widen(x[r * ldx + j]);
        double m = s / cols;
        for (int64_t j = 0; j < cols; ++j) { double d = widen(x[r * ldx + j]) - m; ss += d * d; }
        double q = 1.0 / sqrt(ss / cols + eps);
        for (int64_t j = 0; j < cols; ++j)
            y[r * ldy + j] = narrow((float)((widen(x[r * ldx + j]) - m) * q * widen(weight[j])
                                            + widen(bias[j])));
        mean[r] = (float)m; rstd[r] = (float)q;
    }
    return NLN_OK;
}
"""


@pytest.fixture(scope="module")
def fake_capi(tmp_path_factory):
    """A tiny C library with the C ABI's float32 forward, built with the system cc."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    folder = tmp_path_factory.mktemp("capi")
    (folder / "numba_ln.h").write_text(FAKE_HEADER)
    (folder / "fake.c").write_text(FAKE_SOURCE)
    library = folder / "libnumba_ln.so"
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(library),
                    str(folder / "fake.c"), "-lm"], check=True, timeout=120)
    return library


def test_capi_rows_call_the_library_through_its_header(fake_capi):
    workspace = competitors.Workspace(fake_capi)
    case = cases.Case("forward", 7, 33, "float32")
    [prepared] = prepare("capi", case, workspace)
    inputs = workspace.inputs(case)
    np.testing.assert_allclose(prepared.call(),
                               numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(competitors.Unavailable, match="declares no nln_layer_norm_f16"):
        prepare("capi", cases.Case("forward", 7, 33, "float16"), workspace)
    with pytest.raises(competitors.Unavailable, match="nln_layer_norm_f64"):
        prepare("capi", cases.Case("forward", 7, 33, "float64"), workspace)
    with pytest.raises(competitors.Unavailable, match="declares no nln_layer_norm_backward_f32"):
        prepare("capi", cases.Case("backward", 7, 33, "float32"), workspace)


def test_capi_rows_pass_bfloat16_as_uint16_bits(fake_capi):
    pytest.importorskip("ml_dtypes")
    workspace = competitors.Workspace(fake_capi)
    case = cases.Case("forward", 7, 33, "bfloat16")
    [prepared] = prepare("capi", case, workspace)  # checked against the float64 reference
    inputs = workspace.inputs(case)
    y = prepared.call()
    assert y.dtype == inputs.x.dtype
    expected = numba_ln.layer_norm(inputs.x, inputs.weight, inputs.bias, eps=cases.EPS)
    np.testing.assert_allclose(y.astype(np.float64), expected.astype(np.float64),
                               rtol=2**-7, atol=2**-7)


def test_capi_library_default_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_LN_CAPI_LIB", raising=False)
    assert competitors.default_capi_library() == ROOT / "build" / "libnumba_ln.so"
    monkeypatch.setenv("NUMBA_LN_CAPI_LIB", str(tmp_path / "elsewhere.so"))
    assert competitors.default_capi_library() == tmp_path / "elsewhere.so"
    with pytest.raises(competitors.Unavailable, match="no C library at .*elsewhere.so"):
        competitors.find_capi_library()
    with pytest.raises(competitors.Unavailable, match="no C library at .*nope.so"):
        competitors.find_capi_library(tmp_path / "nope.so")


def test_cli_measures_bfloat16_beside_float16():
    pytest.importorskip("ml_dtypes")
    status, stdout, _ = run_main(TINY + ["--dtype", "bfloat16,float16", "--ops", "forward"])
    assert status == 0
    assert "== forward, bfloat16" in stdout and "== forward, float16" in stdout
    assert stdout.index("== forward, bfloat16") < stdout.index("== forward, float16")


def test_cli_table_includes_capi_rows(fake_capi):
    status, stdout, _ = run_main(TINY + ["--ops", "forward", "--capi-lib", str(fake_capi)])
    assert status == 0 and "  numba-ln C ABI  " in stdout


# ----------------------------------------------------------------------------- the GPU rows

SIMULATED_GPU_ROWS = """
import sys

sys.setswitchinterval(1e-4)  # simulated threads hand over the GIL at every barrier
sys.path.insert(0, "tests")

from gpu import sim_shims  # the simulator has no warp shuffles: the GPU tests' shims add them
from gpu.gpu_launch import SMALL  # the GPU tests' small launches: fewer simulated threads
from numba_ln import _config

shims = sim_shims.installed()  # kept: dropping it would undo the patches
shims.__enter__()

for name, value in SMALL.items():
    setattr(_config, name, value)

import itertools

from bench import cases, competitors
from bench.__main__ import main

# Under the simulator GPU rows are never timed ...
reason = competitors.gpu_unavailable_reason()
assert reason is not None and "simulator" in reason, reason
try:
    main(["--device", "cuda"])
except SystemExit as exc:
    assert exc.code == 2
else:
    raise AssertionError("--device cuda ran under the simulator")

# ... but the callables they would time compute the right thing.
competitors.gpu_unavailable_reason = lambda: None
workspace = competitors.Workspace()
for dtype, operation in itertools.product(("float32", "bfloat16"), cases.OPERATIONS):
    case = cases.Case(operation, 5, 40, dtype)
    for competitor in competitors.competitors(("cuda",)):
        if competitor.key == "torch":
            continue
        competitors.prepare(competitor, case, workspace)  # checks the result
        print(dtype, operation, competitor.key, "ok")
"""


def test_gpu_rows_compute_the_right_thing_under_the_simulator():
    if competitors.gpu_unavailable_reason() is None:
        pytest.skip("a real GPU is here: the GPU rows run in the benchmark itself")
    try:
        import numba_cuda  # noqa: F401
    except ImportError:
        pytest.skip("numba-cuda is not installed")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", SIMULATED_GPU_ROWS], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    for dtype in ("float32", "bfloat16"):
        assert done.stdout.split("\n").count(f"{dtype} forward numba_ln ok") == 1
        assert f"{dtype} forward numba_ln_out ok" in done.stdout
        assert f"{dtype} backward roofline ok" in done.stdout
