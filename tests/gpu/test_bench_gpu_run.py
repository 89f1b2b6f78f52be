"""``python -m bench.gpu``'s measuring loop on a tiny shape: every call checked and timed.

The command refuses to time numba's simulator, so here :func:`bench.gpu.run`
is called directly. Under the simulator the host's clock stands in for the
CUDA events (the simulator has none) and the device's name is made up (its
fake device has none); on a real GPU both are real, so this is also the first
check of :class:`bench.gpu.EventClock`.
"""

import json
import sys
import time
from pathlib import Path

from numba_ln import _cuda_backend

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a checkout's package, never installed
    sys.path.insert(0, str(ROOT))

from bench import gpu  # noqa: E402

SIMULATOR = _cuda_backend.simulator_enabled()


def host_clock(call):
    """:class:`bench.gpu.EventClock`'s stand-in under the simulator."""
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    return seconds, seconds


def run(monkeypatch, argv):
    """``bench.gpu.run`` on the options ``argv``, with stand-ins under the simulator."""
    if SIMULATOR:
        monkeypatch.setattr(_cuda_backend, "device_name", lambda: "the simulator")
    monkeypatch.setattr(gpu, "WARMUP_CALLS", 0)  # each simulated call takes ~0.1 s
    return gpu.run(gpu.parse_args(argv), time.perf_counter(), "test",
                   clock=host_clock if SIMULATOR else None)


def test_every_call_is_checked_and_timed(small_launch, monkeypatch, capsys):
    results = run(monkeypatch, ["--shapes", "5x40", "--dtypes", "float32", "--rounds", "2"])
    assert results["notes"] == [] and results["left_out"] == []  # every output was right
    assert [(r["operation"], r["rounds"]) for r in results["records"]] == [
        ("forward", 2), ("backward", 2)]
    for record in results["records"]:
        expected = {"copy", "numba_ln_out"} | (
            {"numba_ln"} if record["operation"] == "forward" else set())
        assert expected <= set(record["timings"])
        for timing in record["timings"].values():
            # The events lie inside the host's window around the same call.
            assert 0 < timing["min_s"] <= timing["median_s"] <= timing["wall_median_s"]
    text = gpu.format_report(results)
    rows = [line for line in text.splitlines() if line.startswith("| 5x40 | float32 | ")]
    assert [row.split(" | ")[2] for row in rows] == [
        "forward, out=", "forward, allocating", "backward, out="]
    assert all("failed" not in row for row in rows)
    assert capsys.readouterr().err.count("|5x40|float32\n") == 2  # one progress line a case
    assert json.loads(json.dumps(results)) == results  # what --json writes


def test_past_the_time_budget_cases_are_left_out_and_said_to_be(monkeypatch):
    monkeypatch.setattr(gpu, "STOP_ADDING_S", -1.0)
    results = run(monkeypatch, ["--shapes", "2x8", "--dtypes", "float32,float16"])
    assert results["records"] == []
    assert results["left_out"] == ["forward|2x8|float32", "backward|2x8|float32",
                                   "forward|2x8|float16", "backward|2x8|float16"]
    assert "left out: forward|2x8|float32, backward|2x8|float32, " in gpu.format_report(results)
