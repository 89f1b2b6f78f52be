"""The size curve: numba-ln against PyTorch from one row to past the L3 cache.

At float32 and two hidden sizes, the rows grow from 1 until the arrays no
longer fit the last-level cache (issue 15's points). At each point numba-ln,
PyTorch's aten kernels, NumPy and the copy roofline run forward and backward
in interleaved rounds (:func:`bench.timer.measure_rounds`): each round times
every one of them once, in turn, and a point's figure is the median of its
rounds. The result is one dictionary, ``results["size_curve"]`` in the JSON;
:mod:`bench.report` prints its table of ratios and draws it.
"""

import statistics
import time

from . import runner, timer
from .cases import OPERATIONS, cases
from .competitors import CURVE_COMPETITORS, Workspace, torch_no_grad

DTYPE = "float32"
#: Rows at each hidden size: one row (latency) to past a 32 MiB L3 (65536x768
#: is 192 MiB per array, 8192x4096 128 MiB).
ROWS = {768: (1, 4, 16, 64, 128, 256, 512, 1024, 4096, 16384, 65536),
        4096: (1, 8, 32, 128, 512, 2048, 8192)}
SHAPES = tuple((rows, cols) for cols, all_rows in ROWS.items() for rows in all_rows)
#: Issue 15 asks for medians of at least 15 rounds.
DEFAULT_ROUNDS = 15
#: Short calls are looped to 2 ms a sample, so that a small point's 15 rounds
#: last long enough (~0.15 s) to tell how much other processes took.
SAMPLE_S = 0.002


def run(shapes=SHAPES, rounds=DEFAULT_ROUNDS, operations=OPERATIONS, progress=None,
        skipped=None):
    """Measure the size curve.

    Parameters
    ----------
    shapes : iterable of (int, int)
        The points, as ``(rows, cols)``.
    rounds : int
        Interleaved rounds per point (the figure is their median).
    operations : iterable of str
    progress : Progress, optional
    skipped : dict, optional
        Filled as :func:`bench.runner.run` fills it.

    Returns
    -------
    dict
        ``dtype``, ``rounds``, ``labels`` (competitor key to name), ``points``
        (see :func:`point`) and ``summary`` (see :func:`summary`).
    """
    skipped = {} if skipped is None else skipped
    workspace = Workspace()
    points = []
    with torch_no_grad():
        for case in cases(shapes, (DTYPE,), operations):
            entries = runner.prepare_all(case, CURVE_COMPETITORS, workspace, progress,
                                         skipped)
            before, start = runner.cpu_seconds(), time.perf_counter()
            timings = timer.measure_rounds([e.call for e in entries], rounds,
                                           sample_s=SAMPLE_S)
            others = runner.others_share(before, runner.cpu_seconds(),
                                         time.perf_counter() - start)
            points.append(point(case, entries, timings, others))
            del entries
            if progress:
                progress.step()
    workspace.clear()
    if progress:
        progress.close()
    return {"dtype": DTYPE, "rounds": rounds,
            "labels": {c.key: c.label for c in CURVE_COMPETITORS},
            "points": points, "summary": summary(points)}


def point(case, entries, timings, others=None):
    """One point's medians and ratios.

    Parameters
    ----------
    case : Case
    entries : list of Prepared
    timings : list of Timing
        In the order of ``entries``.
    others : float, optional
        The share of the CPUs other processes used while it was timed
        (:func:`bench.runner.others_share`).

    Returns
    -------
    dict
        The case (``operation``, ``rows``, ``cols``, ``shape``, ``elements``,
        ``bytes`` moved), ``median_s`` and ``best_s`` by competitor key (the
        roofline's faster kernel by median, named in ``roofline_kernel``),
        ``torch_speedup`` (PyTorch's median over numba-ln's; None without
        PyTorch), ``copy_fraction`` (the copy's median over numba-ln's) and
        ``others_cpu`` (``others``).
    """
    median_s, best_s, kernel = {}, {}, None
    for entry, timing in zip(entries, timings):
        key = entry.competitor.key
        if key not in median_s or timing.median_s < median_s[key]:
            median_s[key], best_s[key] = timing.median_s, timing.best_s
            if entry.competitor.roofline:
                kernel = entry.kernel
    mine = median_s.get("numba_ln")
    return {"operation": case.operation, "rows": case.rows, "cols": case.cols,
            "shape": case.label, "elements": case.rows * case.cols, "bytes": case.bytes_moved,
            "median_s": median_s, "best_s": best_s, "roofline_kernel": kernel,
            "torch_speedup": _ratio(median_s.get("torch"), mine),
            "copy_fraction": _ratio(median_s.get("roofline"), mine), "others_cpu": others}


def _ratio(numerator, denominator):
    return numerator / denominator if numerator and denominator else None


def summary(points):
    """numba-ln's speedups over PyTorch: geometric mean and minimum, overall and per operation.

    Parameters
    ----------
    points : list of dict
        See :func:`point`.

    Returns
    -------
    dict
        ``"all"`` and each operation measured: ``points`` (how many had
        both), ``geomean``, ``min`` and ``min_at`` (``"backward 64x768"``);
        None where no point has PyTorch.

    Examples
    --------
    >>> summary([{"operation": "forward", "shape": "1x8", "torch_speedup": 0.5},
    ...          {"operation": "forward", "shape": "2x8", "torch_speedup": 2.0}])["all"]
    {'points': 2, 'geomean': 1.0, 'min': 0.5, 'min_at': 'forward 1x8'}
    """
    groups = {"all": points}
    for operation in OPERATIONS:
        groups[operation] = [p for p in points if p["operation"] == operation]
    found = {}
    for name, group in groups.items():
        if name != "all" and not group:
            continue
        rated = [p for p in group if p["torch_speedup"]]
        if not rated:
            found[name] = None
            continue
        worst = min(rated, key=lambda p: p["torch_speedup"])
        found[name] = {"points": len(rated),
                       "geomean": statistics.geometric_mean(p["torch_speedup"] for p in rated),
                       "min": worst["torch_speedup"],
                       "min_at": f"{worst['operation']} {worst['shape']}"}
    return found
