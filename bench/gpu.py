"""``python -m bench.gpu``: numba-ln on a GPU against a copy of the same bytes and PyTorch.

One script for the day a GPU is present (issue 16), run once and unattended
(``make bench-gpu``): no prompts, no files but ``--json``, and under two
minutes, compilation included. For each dtype and shape it times

- numba-ln's forward into ``out=`` and allocating its result (both with the
  statistics), and its backward into ``out=``, on numba device arrays;
- a device-to-device copy (``cuMemcpyDtoD``, through numba's
  ``DeviceNDArray.copy_to_device``) of half the bytes the operation must
  move, so that it reads and writes as many bytes in all (:func:`bytes_moved`):
  the roofline no layer norm can beat;
- PyTorch's ``torch.nn.functional.layer_norm`` and
  ``torch.ops.aten.native_layer_norm_backward`` on CUDA tensors, when PyTorch
  with CUDA can be imported.

Each call is timed between two CUDA events recorded on the default stream,
with the device synchronized inside the window (:class:`EventClock`), so a
figure is what a caller waits for: launches, allocation and the work. The
competitors of a case take turns, one call each per round; a figure is the
median of the rounds, with the minimum beside it. Every output is checked
against a float64 reference before it is timed, and each competitor's first
call (JIT compilation included for numba-ln) is reported apart.

Without a GPU -- no driver, or numba's simulator (``NUMBA_ENABLE_CUDASIM=1``),
whose timings mean nothing -- it prints one line saying why and exits with
status 2.
"""

import argparse
import functools
import gc
import shlex
import statistics
import sys
import time
import traceback

import numpy as np

from numba_ln import _cuda_backend, layer_norm, layer_norm_backward

from . import report, runner
from .cases import (DTYPES, EPS, OPERATIONS, Case, Inputs, check_output, draw, numpy_forward,
                    parse_choices, parse_shapes, shapes_text)
from .competitors import Unavailable, torch_module

#: Issue 16's shapes: two transformer widths with many rows, a wide one, and
#: two where latency rules (8 rows; one row of 65536 columns).
SHAPES = ((4096, 768), (65536, 1024), (16384, 4096), (8, 768), (1, 65536))
DEFAULT_DTYPES = ("float32", "float16")
#: A round of the largest case should take about a millisecond on an
#: H100-class GPU (four calls moving 0.8 GB each at 3-4 TB/s, plus launches),
#: so 100 rounds of all 20 cases add seconds to the compilation.
DEFAULT_ROUNDS = 100
#: The run ends within two minutes (issue 16), compilation included.
TIME_BUDGET_S = 120
#: After this many seconds no case starts and rounds stop at MIN_ROUNDS: the
#: 20 s left cover one case's compilation and the report.
STOP_ADDING_S = 100
#: Fewer rounds than this make no median worth printing.
MIN_ROUNDS = 5
#: Untimed calls after the first (compilation) and the check: allocators and
#: caches settle before the clock runs.
WARMUP_CALLS = 3
#: The exit status when there is no GPU to time (argparse's usage errors share it).
EXIT_NO_GPU = 2

SCHEMA = "numba-ln-bench-gpu/1"
COPY, OUT, ALLOCATING, TORCH = "copy", "numba_ln_out", "numba_ln", "torch"
#: The table's rows: each numba-ln form, in this order, where the case has it.
FORMS = {OUT: "out=", ALLOCATING: "allocating"}
#: numba-ln's forms timed in each pass (issue 16 asks for the backward into ``out=``).
PASS_FORMS = {"forward": (OUT, ALLOCATING), "backward": (OUT,)}
TIMING_METHOD = ("CUDA events on the default stream around each call, the device "
                 "synchronized inside the window (cuCtxSynchronize before the end event)")
COPY_METHOD = ("cuMemcpyDtoD (numba's DeviceNDArray.copy_to_device) of half the bytes moved: "
               "it reads and writes as many bytes in all as the operation")
COLUMNS = ("shape", "dtype", "pass", "numba-ln us", "min us", "GB/s", "of copy", "copy us",
           "PyTorch us", "x PyTorch", "1st call ms")


def bytes_moved(operation, rows, cols, dtype):
    """Bytes one call must move between the GPU's memory and its cores.

    Each array is counted once, as it is read or written, at its own
    itemsize. What an implementation moves beyond that (partial sums of
    ``dweight``/``dbias`` that one kernel writes and the next reads, a row
    read twice) is its cost, not the problem's. ``weight`` and ``bias`` are in
    ``x``'s dtype here; the statistics are float32 (float64 for float64).

    - forward: ``x`` read, ``y`` written (``rows * cols`` each); ``weight``
      and ``bias`` read (``cols`` each); ``mean`` and ``rstd`` written
      (``rows`` each).
    - backward: ``dy`` and ``x`` read, ``dx`` written (``rows * cols`` each);
      ``mean`` and ``rstd`` read (``rows`` each); ``weight`` read, ``dweight``
      and ``dbias`` written (``cols`` each).

    Parameters
    ----------
    operation : {"forward", "backward"}
    rows, cols : int
    dtype : str
        ``x``'s dtype.

    Returns
    -------
    int

    Examples
    --------
    >>> bytes_moved("forward", 8, 768, "float32")  # (2*8*768 + 2*768) * 4 + 2*8 * 4
    55360
    >>> bytes_moved("backward", 1, 65536, "float16")  # (3 + 3) * 65536 * 2 + 2 * 4
    786440
    """
    item = np.dtype(dtype).itemsize
    stat = np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32).itemsize
    elements = rows * cols
    if operation == "forward":
        x_read, y_written = elements * item, elements * item
        weight_bias_read = 2 * cols * item
        stats_written = 2 * rows * stat
        return x_read + y_written + weight_bias_read + stats_written
    if operation == "backward":
        dy_x_read, dx_written = 2 * elements * item, elements * item
        stats_read = 2 * rows * stat
        weight_read, dweight_dbias_written = cols * item, 2 * cols * item
        return dy_x_read + dx_written + stats_read + weight_read + dweight_dbias_written
    raise ValueError(f"unknown operation {operation!r}; choose from {', '.join(OPERATIONS)}")


# --------------------------------------------------------------------------- arguments


def parser():
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu",
        description=(
            "Time numba-ln's CUDA forward and backward against a device-to-device copy of "
            "the same bytes and PyTorch's CUDA layer_norm (when installed); print a "
            "Markdown table. Medians of interleaved rounds timed with CUDA events; the "
            f"run stops adding rounds to stay under {TIME_BUDGET_S} s. Exits with status "
            f"{EXIT_NO_GPU} and one line when no GPU can be timed."),
        epilog=f"default shapes: {shapes_text(SHAPES)}")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, metavar="N",
                   help=f"interleaved rounds per case; each figure is their median "
                        f"(default {DEFAULT_ROUNDS}; at least {MIN_ROUNDS} are timed, fewer "
                        f"than N once {STOP_ADDING_S} s have passed)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    p.add_argument("--shapes", metavar="LIST",
                   help="comma-separated ROWSxCOLS (default: the list below)")
    p.add_argument("--dtypes", default=",".join(DEFAULT_DTYPES), metavar="LIST",
                   help=f"comma-separated dtypes from {', '.join(DTYPES)} "
                        f"(default: {','.join(DEFAULT_DTYPES)})")
    return p


def parse_args(argv):
    """The options, checked; a bad one exits with status 2 and a message on stderr.

    Parameters
    ----------
    argv : list of str

    Returns
    -------
    argparse.Namespace
        ``rounds``, ``json`` (a path or None), ``shapes`` (tuple of
        ``(rows, cols)``) and ``dtypes`` (tuple of str).

    Examples
    --------
    >>> parse_args(["--shapes", "8x768", "--dtypes", "float16"]).shapes
    ((8, 768),)
    """
    p = parser()
    args = p.parse_args(argv)
    try:
        args.shapes = SHAPES if args.shapes is None else parse_shapes(args.shapes)
    except ValueError as exc:
        p.error(f"--shapes: {exc}")
    try:
        args.dtypes = parse_choices(args.dtypes, DTYPES, "dtype")
    except ValueError as exc:
        p.error(f"--dtypes: {exc}")
    if args.rounds < 1:
        p.error(f"--rounds: must be at least 1, got {args.rounds}")
    report.check_json_path(p, args.json)  # found out now, not after two minutes of measuring
    return args


def no_gpu_reason():
    """None when a GPU can be timed here, else why not (one line).

    Returns
    -------
    str or None
    """
    if _cuda_backend.simulator_enabled():
        return ("numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1), and its timings "
                "mean nothing")
    reason = _cuda_backend.unavailable_reason()
    return None if reason is None else " ".join(reason.split())


# --------------------------------------------------------------------------- timing


class EventClock:
    """Times one call between two CUDA events, synchronizing inside the window.

    The start event is recorded on the default stream, the call made, the
    device synchronized, then the end event recorded and waited for: the
    window holds the host's launch work, the kernels and the wait, as a
    caller sees them (numba-ln launches on the stream its inputs export or the
    per-thread default stream, PyTorch on its current stream; the device
    synchronization waits for every stream). The host's clock around
    the same window is kept as a check.

    Parameters
    ----------
    cuda : module
        ``numba.cuda``, on a real GPU.
    """

    def __init__(self, cuda):
        self.cuda = cuda
        self.start, self.end = cuda.event(timing=True), cuda.event(timing=True)

    def __call__(self, call):
        """Seconds of ``call()``: ``(by the events, by the host's clock)``."""
        wall = time.perf_counter()
        self.start.record()
        call()
        self.cuda.synchronize()
        self.end.record()
        self.end.synchronize()
        wall = time.perf_counter() - wall
        return self.cuda.event_elapsed_time(self.start, self.end) / 1e3, wall


def time_rounds(calls, clock, rounds, deadline):
    """Time callables in interleaved rounds: each round calls every one once, in turn.

    Parameters
    ----------
    calls : dict of str to callable
        Warmed up.
    clock : callable
        ``clock(call)`` returns ``(seconds, wall_seconds)`` (:class:`EventClock`).
    rounds : int
    deadline : float
        ``time.perf_counter()`` after which no round starts once
        :data:`MIN_ROUNDS` are done.

    Returns
    -------
    dict of str to list of (float, float)
        Each callable's samples, in the order of ``calls``.

    Examples
    --------
    >>> ticks = iter(range(100))
    >>> samples = time_rounds({"a": None, "b": None}, lambda call: (next(ticks), 0.0), 2,
    ...                       float("inf"))
    >>> [s for s, _ in samples["a"]], [s for s, _ in samples["b"]]
    ([0, 2], [1, 3])
    """
    samples = {key: [] for key in calls}
    enabled = gc.isenabled()
    gc.disable()  # a collection inside a window would be charged to whoever was timed
    try:
        for done in range(rounds):
            if done >= MIN_ROUNDS and time.perf_counter() > deadline:
                break
            for key, call in calls.items():
                samples[key].append(clock(call))
    finally:
        if enabled:
            gc.enable()
    return samples


def summary(samples, first_call_s):
    """One competitor's figures from its samples.

    Parameters
    ----------
    samples : list of (float, float)
        ``(seconds by the events, seconds by the host's clock)`` per round.
    first_call_s : float
        Its first call (compilation included), by the host's clock.

    Returns
    -------
    dict
        ``median_s``, ``min_s`` (by the events), ``wall_median_s`` and
        ``first_call_s``.

    Examples
    --------
    >>> summary([(3.0, 4.0), (1.0, 2.0), (2.0, 3.0)], 9.0)["median_s"]
    2.0
    """
    event_s = [s for s, _ in samples]
    return {"median_s": statistics.median(event_s), "min_s": min(event_s),
            "wall_median_s": statistics.median(w for _, w in samples),
            "first_call_s": first_call_s}


# --------------------------------------------------------------------------- competitors


def host_inputs(draws, dtype):
    """Inputs in ``dtype`` from :func:`bench.cases.draw`'s numbers, with the statistics.

    The statistics the backward reads come from NumPy, not from numba-ln's
    forward, so a wrong forward cannot hide a wrong backward.

    Parameters
    ----------
    draws : tuple of ndarray
        ``draw(shape)``: float32 ``x``, ``dy``, ``weight``, ``bias``.
    dtype : str

    Returns
    -------
    Inputs
    """
    x, dy, weight, bias = (a.astype(dtype, copy=False) for a in draws)
    _, mean, rstd = numpy_forward(x, weight, bias)
    return Inputs(x, weight, bias, dy, np.ascontiguousarray(mean, np.float32),
                  np.ascontiguousarray(rstd, np.float32))


def numba_ln_call(operation, form, arrays, cuda):
    """numba-ln's forward (with the statistics) or backward on device arrays.

    Parameters
    ----------
    operation : {"forward", "backward"}
    form : {OUT, ALLOCATING}
        Into a buffer made here (``out=``), or allocating the result.
    arrays : dict of str to device array
        ``x``, ``weight``, ``bias``, ``dy``, ``mean``, ``rstd``.
    cuda : module
    """
    x, weight, bias = arrays["x"], arrays["weight"], arrays["bias"]
    out = {"out": cuda.device_array_like(x)} if form == OUT else {}  # y, or dx
    if operation == "forward":
        return lambda: layer_norm(x, weight, bias, eps=EPS, return_stats=True, **out)
    dy, mean, rstd = arrays["dy"], arrays["mean"], arrays["rstd"]
    return lambda: layer_norm_backward(dy, x, mean, rstd, weight, **out)


def copy_call(nbytes, cuda):
    """A device-to-device copy of ``nbytes`` bytes (reads and writes ``nbytes`` each)."""
    source, target = cuda.device_array(nbytes, np.uint8), cuda.device_array(nbytes, np.uint8)
    return lambda: target.copy_to_device(source)


def torch_call(operation, tensors, torch):
    """PyTorch's forward (allocating, as it always does) or backward on ``tensors``.

    The backward reads the statistics of PyTorch's own forward: their dtype
    is PyTorch's choice (float32 for float16 on CUDA, float16 on the CPU).

    Parameters
    ----------
    operation : {"forward", "backward"}
    tensors : dict of str to torch.Tensor
        ``x``, ``weight``, ``bias`` and ``dy``.
    torch : module
    """
    x, weight, bias = tensors["x"], tensors["weight"], tensors["bias"]
    shape = [x.shape[-1]]
    if operation == "forward":
        return lambda: torch.nn.functional.layer_norm(x, shape, weight, bias, EPS)
    dy = tensors["dy"]
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, weight, bias, EPS)
    backward = torch.ops.aten.native_layer_norm_backward
    return lambda: backward(dy, x, shape, mean, rstd, weight, bias, [True, True, True])


def torch_cuda():
    """``(torch, None)`` when PyTorch can run on the GPU, else ``(None, why not)``."""
    try:
        torch = torch_module()
    except Unavailable as exc:
        return None, str(exc)
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} sees no CUDA GPU"
    return torch, None


def prepare(key, build, case, inputs, cuda, notes):
    """Build a competitor's callable, make its first call, check the output, warm it up.

    Parameters
    ----------
    key : str
    build : callable
        Returns the callable to time.
    case : Case
    inputs : Inputs
        What the output is checked against.
    cuda : module
    notes : list of str
        A failure is added here (its traceback goes to stderr).

    Returns
    -------
    (callable, float) or None
        The callable and its first call's seconds (host clock, synchronized),
        or None when any of it failed.
    """
    try:
        call = build()
        start = time.perf_counter()
        output = call()
        cuda.synchronize()
        first_call_s = time.perf_counter() - start
        if key != COPY:
            check_output(case, inputs, output)
        for _ in range(WARMUP_CALLS):
            call()
        cuda.synchronize()
    # An unattended run reports what did run; the failure is a note, not the end.
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        first_line = (str(exc).splitlines() or [""])[0]
        notes.append(f"{case.group} {key}: {type(exc).__name__}: {first_line}")
        return None
    return call, first_call_s


def measure_case(case, builders, inputs, cuda, clock, rounds, deadline, notes):
    """Prepare and time one case's competitors; return its record.

    Parameters
    ----------
    case : Case
    builders : dict of str to callable
        By competitor key, what :func:`prepare` builds the callable with.
    inputs : Inputs
    cuda : module
    clock, rounds, deadline
        As :func:`time_rounds` takes them.
    notes : list of str

    Returns
    -------
    dict
        ``operation``, ``rows``, ``cols``, ``shape``, ``dtype``, ``bytes``,
        ``rounds`` (timed), and ``timings``: :func:`summary` by competitor
        key, None for one that failed.
    """
    prepared = {key: prepare(key, build, case, inputs, cuda, notes)
                for key, build in builders.items()}
    ready = {key: found[0] for key, found in prepared.items() if found is not None}
    samples = time_rounds(ready, clock, rounds, deadline)
    timings = {key: summary(samples[key], found[1]) if found else None
               for key, found in prepared.items()}
    return {"operation": case.operation, "rows": case.rows, "cols": case.cols,
            "shape": case.label, "dtype": case.dtype,
            "bytes": bytes_moved(case.operation, case.rows, case.cols, case.dtype),
            "rounds": len(next(iter(samples.values()), [])), "timings": timings}


def run(args, started, command, progress=None, clock=None):
    """Measure every case; return the results dictionary (the JSON).

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parse_args`.
    started : float
        ``time.perf_counter()`` when the command started: the budget counts from it.
    command : str
        The command line, for the record.
    progress : file, optional
        One line per case goes here (default: ``sys.stderr`` as it is when called).
    clock : callable, optional
        Times one call (default: :class:`EventClock`); a test's stand-in
        lets the rest run under numba's simulator, which has no timing events.
    """
    from numba import cuda

    progress = progress or sys.stderr
    gpu_name = _cuda_backend.device_name()
    torch, torch_reason = torch_cuda()
    clock = clock or EventClock(cuda)
    notes, left_out, records = [], [], []
    floor = [clock(lambda: None) for _ in range(50)]  # the window's own cost
    cases = [Case(op, rows, cols, dtype) for rows, cols in args.shapes for dtype in args.dtypes
             for op in OPERATIONS]
    for shape in args.shapes:
        draws = None
        for dtype in args.dtypes:
            if time.perf_counter() - started > STOP_ADDING_S:
                left_out += [c.group for c in cases if (c.shape, c.dtype) == (shape, dtype)]
                continue
            draws = draw(shape) if draws is None else draws
            inputs = host_inputs(draws, dtype)
            arrays = {name: cuda.to_device(getattr(inputs, name))
                      for name in ("x", "weight", "bias", "dy", "mean", "rstd")}
            tensors = None
            if torch:
                tensors = {name: torch.from_numpy(getattr(inputs, name)).cuda()
                           for name in ("x", "weight", "bias", "dy")}
            for operation in OPERATIONS:
                case = Case(operation, *shape, dtype)
                elapsed = time.perf_counter() - started
                print(f"[{len(records) + 1}/{len(cases)} {elapsed:5.1f} s] {case.group}",
                      file=progress, flush=True)
                # An even share of the time left, so a slow compilation early on
                # cannot leave the last cases without rounds.
                cases_left = len(cases) - len(records) - len(left_out)
                deadline = started + elapsed + (STOP_ADDING_S - elapsed) / cases_left
                copy_bytes = -(-bytes_moved(operation, *shape, dtype) // 2)  # rounded up
                builders = {COPY: functools.partial(copy_call, copy_bytes, cuda)}
                for form in PASS_FORMS[operation]:
                    builders[form] = functools.partial(numba_ln_call, operation, form, arrays,
                                                       cuda)
                if torch:
                    builders[TORCH] = functools.partial(torch_call, operation, tensors, torch)
                records.append(measure_case(case, builders, inputs, cuda, clock, args.rounds,
                                            deadline, notes))
            del arrays, tensors  # freed before the next arrays are made
    return {"schema": SCHEMA, "command": command,
            **runner.environment(), "gpu": gpu_name,
            "settings": {"rounds": args.rounds, "shapes": [list(s) for s in args.shapes],
                         "dtypes": list(args.dtypes), "stop_adding_s": STOP_ADDING_S,
                         "min_rounds": MIN_ROUNDS, "warmup_calls": WARMUP_CALLS},
            "timing_method": TIMING_METHOD, "copy_method": COPY_METHOD,
            "floor_median_s": statistics.median(s for s, _ in floor),
            "torch_missing": torch_reason, "records": records, "notes": notes,
            "left_out": left_out, "elapsed_s": time.perf_counter() - started}


# --------------------------------------------------------------------------- report


def _us(seconds):
    return "" if seconds is None else f"{seconds * 1e6:.1f}"


def _figures(record, key):
    """The table's cells after ``pass`` for numba-ln's ``key`` form of a record."""
    mine, copy, torch = (record["timings"].get(k) for k in (key, COPY, TORCH))
    if mine is None:
        return ("failed",) + ("",) * 7
    median = mine["median_s"]
    return (_us(median), _us(mine["min_s"]), f"{record['bytes'] / median / 1e9:.1f}",
            f"{copy['median_s'] / median:.2f}" if copy else "", _us(copy and copy["median_s"]),
            _us(torch and torch["median_s"]),
            f"{torch['median_s'] / median:.2f}x" if torch else "",
            f"{mine['first_call_s'] * 1e3:.1f}")


def table_rows(records):
    """The table as rows of cells, :data:`COLUMNS` first: one row per numba-ln form.

    Examples
    --------
    >>> timing = {"median_s": 2e-6, "min_s": 1e-6, "wall_median_s": 3e-6,
    ...           "first_call_s": 1.5}
    >>> record = {"shape": "1x1000", "dtype": "float32", "operation": "backward",
    ...           "bytes": 4000, "timings": {"copy": timing, "numba_ln_out": timing}}
    >>> table_rows([record])[1]
    ('1x1000', 'float32', 'backward, out=', '2.0', '1.0', '2.0', '1.00', '2.0', '', '', '1500.0')
    """
    rows = [COLUMNS]
    for record in records:
        for key, form in FORMS.items():
            if key in record["timings"]:
                rows.append((record["shape"], record["dtype"], f"{record['operation']}, {form}")
                            + _figures(record, key))
    return rows


def _rounds_text(records):
    """``"100"``, or ``"12-100"`` where the time budget cut some cases short."""
    rounds = [r["rounds"] for r in records] or [0]
    low, high = min(rounds), max(rounds)
    return str(high) if low == high else f"{low}-{high}"


def first_calls_s(records):
    """Seconds of numba-ln's first calls in all (mostly JIT compilation)."""
    return sum(timing["first_call_s"] for r in records for key, timing in r["timings"].items()
               if key in FORMS and timing is not None)


def format_report(results):
    """The results as Markdown: the GPU, the method, the table and the notes.

    Parameters
    ----------
    results : dict
        What :func:`run` returned.

    Returns
    -------
    str
    """
    records, settings = results["records"], results["settings"]
    versions = report.versions_line(results)
    lines = [f"# numba-ln on {results['gpu']}", "",
             f"{versions}, numba-cuda {results['versions']['numba_cuda']}", "",
             f"- Timing: {results['timing_method']}; medians of {_rounds_text(records)} "
             f"interleaved rounds (min beside them), after a first call that is checked "
             f"and {settings['warmup_calls']} more. An empty call's window: "
             f"{_us(results['floor_median_s'])} us.",
             f"- Copy (the roofline): {results['copy_method']}. GB/s and 'of copy' count "
             f"the bytes moved: x, y/dx, dy, weight, bias, dweight, dbias and the statistics "
             f"once each.",
             "- x PyTorch: PyTorch's time over numba-ln's (above 1: numba-ln is faster). "
             "1st call: numba-ln's first call of the row, compilation included where it is "
             f"the first of its kind ({first_calls_s(records):.1f} s in all).",
             "- PyTorch: " + (f"not timed: {results['torch_missing']}; its columns are empty."
                              if results["torch_missing"] else
                              f"torch.nn.functional.layer_norm (allocating) and "
                              f"torch.ops.aten.native_layer_norm_backward."), ""]
    if records:
        lines += [report._markdown_table(table_rows(records), first_figure=3), ""]
    short = [r for r in records if r["rounds"] < settings["rounds"]]
    if short or results["left_out"]:
        lines.append(f"Time budget: each case had an even share of what was left of "
                     f"{settings['stop_adding_s']} s (the run must end within "
                     f"{TIME_BUDGET_S} s): {len(short)} of {len(records)} cases have fewer "
                     f"than {settings['rounds']} rounds; left out: "
                     f"{', '.join(results['left_out']) or 'none'}.")
    lines += [f"Note: {note}" for note in results["notes"]]
    lines.append(f"Finished in {results['elapsed_s']:.0f} s.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command


def main(argv=None):
    """Measure and print; with ``--json``, also write the results.

    Parameters
    ----------
    argv : list of str, optional
        Options as :func:`parse_args` takes them; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The exit status: 0, or :data:`EXIT_NO_GPU` (with one line on stderr)
        when no GPU can be timed here. Bad options exit with status 2 and a
        message.
    """
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"python -m bench.gpu: no GPU to time: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    command = " ".join(["python -m bench.gpu"] + [shlex.quote(a) for a in argv])
    results = run(args, started, command)
    report.write_report(format_report(results), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
