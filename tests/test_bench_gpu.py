"""``python -m bench.gpu`` (``make bench-gpu``) on a machine without a GPU.

The command times nothing here: without a GPU it must say why in one line
and exit with status 2. What can be checked without one is checked here:
the bytes each call must move, the options, the rounds and their figures,
the table, and PyTorch's calls (on the CPU, when PyTorch is installed).
``tests/gpu/test_bench_gpu_run.py`` runs the measuring loop itself, under
numba's simulator or on a GPU.
"""

import doctest
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numba_ln import _cuda_backend

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is a checkout's package, never installed
    sys.path.insert(0, str(ROOT))

from bench import gpu  # noqa: E402
from bench.cases import Case, check_output, draw  # noqa: E402

PROCESS_TIMEOUT_S = 300  # a cold numba cache compiles first


def run_command(env):
    """``python -m bench.gpu`` from the checkout: the finished process."""
    return subprocess.run([sys.executable, "-m", "bench.gpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)


def assert_one_line_and_status_2(done, reason):
    assert done.returncode == gpu.EXIT_NO_GPU == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == f"python -m bench.gpu: no GPU to time: {reason}\n"


def test_docstring_examples_run():
    # test_docs runs the package's examples; bench/ is not in the package.
    result = doctest.testmod(gpu, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 10


# ----------------------------------------------------------------------------- no GPU


def test_simulator_is_never_timed():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    assert_one_line_and_status_2(run_command(env), "numba's CUDA simulator is on "
                                 "(NUMBA_ENABLE_CUDASIM=1), and its timings mean nothing")


def test_without_a_driver_says_why():
    reason = _cuda_backend.unavailable_reason()
    if reason is None or _cuda_backend.simulator_enabled():
        pytest.skip("a GPU is here: the command would time it")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    assert_one_line_and_status_2(run_command(env), " ".join(reason.split()))


def test_main_returns_2_before_touching_cuda(monkeypatch, capsys):
    monkeypatch.setattr(_cuda_backend, "simulator_enabled", lambda: False)
    monkeypatch.setattr(_cuda_backend, "unavailable_reason", lambda: "no GPU\nin  this test")
    monkeypatch.setattr(gpu, "run", lambda *args, **kwargs: pytest.fail("run() was called"))
    assert gpu.main(["--rounds", "3"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "python -m bench.gpu: no GPU to time: "
                                                "no GPU in this test\n")


# ----------------------------------------------------------------------------- bytes


def test_bytes_moved_by_hand():
    # forward 4096x768 float16: x and y (4096*768*2 bytes each), weight and
    # bias (768*2 each), float32 mean and rstd (4096*4 each).
    assert gpu.bytes_moved("forward", 4096, 768, "float16") == (
        6_291_456 + 6_291_456 + 1536 + 1536 + 16_384 + 16_384)
    # backward 1x65536 float32: dy, x, dx (262144 bytes each), mean and rstd
    # (4 each), weight, dweight, dbias (262144 each): the parameters are half.
    assert gpu.bytes_moved("backward", 1, 65536, "float32") == 6 * 262_144 + 8
    # float64's statistics are float64.
    assert gpu.bytes_moved("forward", 2, 3, "float64") == (2 * 6 + 2 * 3 + 2 * 2) * 8
    with pytest.raises(ValueError, match="unknown operation 'sideways'"):
        gpu.bytes_moved("sideways", 1, 1, "float32")


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "4096x"], "--shapes: '4096x' is not ROWSxCOLS with positive integers "
                            "(e.g. 65536x1024)"),
    (["--shapes", "8x768,0x1"], "--shapes: '0x1' is not ROWSxCOLS"),
    (["--dtypes", "int8"], "--dtypes: unknown dtype 'int8'; choose from float32, float16, "
                           "bfloat16, float64"),
    (["--rounds", "0"], "--rounds: must be at least 1, got 0"),
    (["--json", "/nonexistent/folder/gpu.json"], "--json: no folder '/nonexistent/folder'"),
])
def test_bad_options_exit_2_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_default_options_are_issue_16s():
    args = gpu.parse_args([])
    assert args.shapes == ((4096, 768), (65536, 1024), (16384, 4096), (8, 768), (1, 65536))
    assert args.dtypes == ("float32", "float16") and args.rounds == gpu.DEFAULT_ROUNDS
    assert args.json is None
    assert gpu.MIN_ROUNDS <= gpu.DEFAULT_ROUNDS
    assert gpu.STOP_ADDING_S < gpu.TIME_BUDGET_S <= 120


# ----------------------------------------------------------------------------- rounds


def counting_clock():
    """A clock whose n-th sample is n seconds, and the calls it made."""
    made = []

    def clock(call):
        made.append(call)
        return float(len(made)), 0.5
    return clock, made


def test_rounds_interleave_the_competitors():
    clock, made = counting_clock()
    samples = gpu.time_rounds({"a": "A", "b": "B"}, clock, 3, deadline=float("inf"))
    assert made == ["A", "B"] * 3
    assert samples == {"a": [(1.0, 0.5), (3.0, 0.5), (5.0, 0.5)],
                       "b": [(2.0, 0.5), (4.0, 0.5), (6.0, 0.5)]}


def test_rounds_stop_at_the_deadline_but_not_below_the_minimum():
    clock, made = counting_clock()
    samples = gpu.time_rounds({"a": "A"}, clock, 50, deadline=0.0)
    assert len(samples["a"]) == len(made) == gpu.MIN_ROUNDS
    assert len(gpu.time_rounds({"a": "A"}, clock, 2, deadline=0.0)["a"]) == 2


def test_summary_is_the_median_and_minimum_of_the_events():
    assert gpu.summary([(4.0, 9.0), (1.0, 8.0), (3.0, 7.0), (2.0, 6.0)], 1.25) == {
        "median_s": 2.5, "min_s": 1.0, "wall_median_s": 7.5, "first_call_s": 1.25}


# ----------------------------------------------------------------------------- table


def fake_results(**changes):
    """What :func:`bench.gpu.run` returns, with made-up timings."""
    def timing(median_us, first_s=0.01):
        return gpu.summary([(median_us * 1e-6, 1.0), (median_us * 2e-6, 1.0),
                            (median_us * 0.5e-6, 1.0)], first_s)

    records = [
        {"operation": "forward", "rows": 65536, "cols": 1024, "shape": "65536x1024",
         "dtype": "float32", "bytes": gpu.bytes_moved("forward", 65536, 1024, "float32"),
         "rounds": 100, "timings": {"copy": timing(100.0), "numba_ln_out": timing(125.0, 2.5),
                                    "numba_ln": None, "torch": timing(250.0, 0.5)}},
        {"operation": "backward", "rows": 8, "cols": 768, "shape": "8x768",
         "dtype": "float16", "bytes": gpu.bytes_moved("backward", 8, 768, "float16"),
         "rounds": 12, "timings": {"copy": timing(5.0), "numba_ln_out": timing(20.0)}},
    ]
    results = {"gpu": "NVIDIA H200 (sm_90)", "elapsed_s": 42.0, "floor_median_s": 8e-6,
               "versions": {"numba_ln": "0.1.0", "numba": "0.68.1", "numpy": "2.4",
                            "torch": "2.13.0", "python": "3.11", "numba_cuda": "0.30.4"},
               "timing_method": gpu.TIMING_METHOD, "copy_method": gpu.COPY_METHOD,
               "torch_missing": None, "records": records,
               "settings": {"rounds": 100, "warmup_calls": 3, "stop_adding_s": 100},
               "notes": [], "left_out": []}
    return {**results, **changes}


def test_table_rows_from_fake_timings():
    rows = gpu.table_rows(fake_results()["records"])
    assert rows[0] == gpu.COLUMNS
    # 65536x1024 float32 forward moves 537,403,392 bytes (2 * 256 MiB, 8 KiB of
    # weight and bias, 512 KiB of statistics) in 125 us: 4299.2 GB/s.
    assert rows[1] == ("65536x1024", "float32", "forward, out=", "125.0", "62.5", "4299.2",
                       "0.80", "100.0", "250.0", "2.00x", "2500.0")
    assert rows[2] == ("65536x1024", "float32", "forward, allocating", "failed", "", "", "",
                       "", "", "", "")
    # 8x768 float16 backward moves 41,536 bytes in 20 us. No PyTorch timing:
    # its columns are empty; no allocating form in backward.
    assert rows[3][2:] == ("backward, out=", "20.0", "10.0", "2.1", "0.25", "5.0", "", "",
                           "10.0")
    assert len(rows) == 4


def test_report_names_the_gpu_the_method_and_what_was_cut():
    text = gpu.format_report(fake_results(
        torch_missing="PyTorch is not installed", notes=["forward|1x8|float32 numba_ln: boom"],
        left_out=["forward|1x65536|float16"]))
    assert text.startswith("# numba-ln on NVIDIA H200 (sm_90)\n")
    assert "numba-cuda 0.30.4" in text and "cuMemcpyDtoD" in text and "CUDA events" in text
    assert "medians of 12-100 interleaved rounds" in text
    assert "An empty call's window: 8.0 us." in text
    assert "(2.5 s in all)" in text  # numba-ln's first calls; PyTorch's are not counted
    assert "- PyTorch: not timed: PyTorch is not installed; its columns are empty." in text
    assert "| 8x768 | float16 | backward, out= | 20.0 |" in text
    assert ("1 of 2 cases have fewer than 100 rounds; left out: forward|1x65536|float16."
            in text)
    assert "Note: forward|1x8|float32 numba_ln: boom" in text


def test_report_without_cuts_does_not_mention_the_budget():
    text = gpu.format_report(fake_results(records=fake_results()["records"][:1]))
    assert "Time budget" not in text and "medians of 100 interleaved rounds" in text
    assert "torch.ops.aten.native_layer_norm_backward" in text


# ----------------------------------------------------------------------------- the calls


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("operation", ["forward", "backward"])
def test_torch_calls_compute_the_right_thing_on_the_cpu(operation, dtype):
    torch = pytest.importorskip("torch")
    inputs = gpu.host_inputs(draw((6, 48)), dtype)
    tensors = {name: torch.from_numpy(getattr(inputs, name))
               for name in ("x", "weight", "bias", "dy")}
    call = gpu.torch_call(operation, tensors, torch)
    check_output(Case(operation, 6, 48, dtype), inputs, call())


def test_host_statistics_are_float32_per_row():
    inputs = gpu.host_inputs(draw((3, 10)), "float16")
    x = inputs.x.astype(np.float64)
    assert inputs.mean.dtype == inputs.rstd.dtype == np.float32
    np.testing.assert_allclose(inputs.mean.ravel(), x.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(inputs.rstd.ravel(), 1 / np.sqrt(x.var(axis=1) + 1e-5),
                               rtol=1e-5)

