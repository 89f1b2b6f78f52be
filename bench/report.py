"""Turn benchmark results into tables, a plot and the docs page, and write them.

Input everywhere is the results dictionary that ``python -m bench`` writes
as JSON (see :func:`bench.runner.environment` and :func:`bench.runner.run`
for its parts), so the tables can be rebuilt from a saved run without
measuring again.
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from .cases import ALL_OPERATIONS, NORM_OPERATIONS, OPERATIONS, TARGET_SHAPES

COLUMNS = ("shape", "device", "implementation", "time", "GB/s", "% roofline",
           "x NumPy", "x PyTorch")


def format_time(seconds):
    """Seconds as a short human figure: ``"12.3 us"``, ``"55.98 ms"``, ``"1.40 s"``.

    Examples
    --------
    >>> format_time(5.598e-2)
    '55.98 ms'
    >>> format_time(1.23e-5)
    '12.3 us'
    """
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def format_bytes(count):
    """A byte count in binary units: ``"3 KiB"``, ``"1.5 MiB"``, ``"192 MiB"``.

    Examples
    --------
    >>> format_bytes(3072), format_bytes(3 << 19), format_bytes(512)
    ('3 KiB', '1.5 MiB', '512 B')
    """
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f} {unit}" if value >= 10 or value.is_integer() \
                else f"{value:.1f} {unit}"
    return f"{count} B"


def _ratio(value):
    return "" if value is None else f"{value:.2f}x"


def _percent(value):
    return "" if value is None else f"{100 * value:.0f}%"


def row_cells(record):
    """One record as the table's cells, in :data:`COLUMNS` order."""
    return (record["shape"], record["device"], record["implementation"],
            format_time(record["best_s"]), f"{record['gbps']:.1f}",
            _percent(record["roofline_fraction"]), _ratio(record["speedup_vs_numpy"]),
            _ratio(record["speedup_vs_torch"]))


def sections(records):
    """Records grouped by (operation, dtype), in the order they were measured.

    Returns
    -------
    dict of (str, str) to list of dict
    """
    grouped = {}
    for record in records:
        grouped.setdefault((record["operation"], record["dtype"]), []).append(record)
    return grouped


def target_records(records):
    """numba-ln's CPU rows (Python and C ABI) at the target shapes and at 1x768.

    These carry the ratios its targets are stated in: % of the copy roofline
    (forward with ``out=``, backward), speedup of the allocating forward over
    PyTorch, and the 1x768 latency against PyTorch.
    """
    shapes = {f"{r}x{c}" for r, c in TARGET_SHAPES} | {"1x768"}
    return [r for r in records if r["device"] == "cpu" and r["shape"] in shapes
            and r["key"] in ("numba_ln", "numba_ln_out", "capi")]


#: The columns of :func:`norm_rows`.
NORM_COLUMNS = ("operation", "dtype", "shape", "median", "% roofline", "x unfused",
                "x PyTorch", "others")


def _median_ratio(numerator, denominator):
    if not (numerator and denominator):
        return None
    return numerator["median_s"] / denominator["median_s"]


def norm_rows(records):
    """numba-ln (out=) on the CPU: layer norm, RMSNorm and the fused residual add, by medians.

    Issue 17's ratios, at every shape and dtype where an operation of
    :data:`~bench.cases.NORM_OPERATIONS` was measured: the forward's (layer
    norm and RMSNorm) and the fused add's share of the roofline (the copy
    moving the same bytes -- twice a copy's for the fused add), and the fused
    add's speedup over numba-ln unfused (``np.add`` into ``s``, then the norm
    with ``out=``) and over PyTorch (``torch.add(out=)`` then ``F.layer_norm``
    / ``F.rms_norm``). All are ratios of medians of the same interleaved run.

    Parameters
    ----------
    records : list of dict

    Returns
    -------
    list of tuple of str
        A header (:data:`NORM_COLUMNS`), then one row per operation, shape
        and dtype; empty where no norm operation was measured.
    """
    found = {}
    for r in records:
        if r["device"] == "cpu":
            found.setdefault((r["dtype"], r["shape"], r["operation"]), {})[r["key"]] = r
    places = []
    for dtype, shape, operation in found:
        if operation in NORM_OPERATIONS and (dtype, shape) not in places:
            places.append((dtype, shape))
    rows = []
    for dtype, shape in places:
        for operation in ALL_OPERATIONS:
            by_key = found.get((dtype, shape, operation), {})
            mine = by_key.get("numba_ln_out")
            if operation == "backward" or not mine:
                continue
            rows.append((operation, dtype, shape, format_time(mine["median_s"]),
                         _percent(_median_ratio(by_key.get("roofline"), mine)),
                         _ratio(_median_ratio(by_key.get("numba_ln_unfused"), mine)),
                         _ratio(_median_ratio(by_key.get("torch"), mine)),
                         _percent(mine.get("others_cpu"))))
    return [NORM_COLUMNS] + rows if rows else []


_NORM_METHOD = ("numba-ln with `out=` (and `residual_out=`) preallocated; median of the "
                "interleaved samples; % roofline: the copy's median over numba-ln's (the fused "
                "add's copy moves x and the residual: twice a copy's bytes); x unfused: "
                "`np.add(x, r, out=s)` then the norm of s with `out=`, over the fused call; "
                "x PyTorch: `F.layer_norm` / `F.rms_norm` (after `torch.add(x, r, out=s)` for "
                "the fused add) over numba-ln; others: the share of the CPUs other processes "
                "took while the case was timed (the kernels are compute-bound per core on a "
                "2-core machine, so a busy neighbour lowers % roofline)")


def _text_table(rows, first_figure=None):
    """Aligned columns, the figures (``time`` or column ``first_figure`` on) right-aligned."""
    widths = [max(len(str(cells[i])) for cells in rows) for i in range(len(rows[0]))]
    first_figure = rows[0].index("time") if first_figure is None else first_figure
    lines = []
    for n, cells in enumerate(rows):
        lines.append("  ".join(str(c).rjust(w) if i >= first_figure else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(rows, first_figure=None):
    first_figure = rows[0].index("time") if first_figure is None else first_figure
    lines = ["| " + " | ".join(rows[0]) + " |",
             "|" + "|".join("---" if i < first_figure else "---:"
                            for i in range(len(rows[0]))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows[1:]]
    return "\n".join(lines)


def machine_line(results):
    """``"AMD EPYC, 2 cores (2 numba threads, omp), Linux-..., 2026-11-22T00:30:00+00:00"``."""
    m = results["machine"]
    gpu = f"; GPU: {m['gpu']}" if m.get("gpu") else "; no GPU"
    return (f"{m['cpu_model']}, {m['cores']} cores ({m['numba_threads']} numba threads, "
            f"threading layer {m['threading_layer']}){gpu}; {m['system']}")


def versions_line(results):
    """``"numba-ln 0.1.0, numba 0.68.1, NumPy 2.4.6, PyTorch 2.13.0+cpu, Python 3.12"``."""
    v = results["versions"]
    parts = [f"numba-ln {v['numba_ln']}", f"numba {v['numba']}", f"NumPy {v['numpy']}",
             f"PyTorch {v['torch']}" if v.get("torch") else "PyTorch not installed",
             f"Python {v['python']}"]
    return ", ".join(parts)


def load_warning(results):
    """A warning when other work was running as the benchmark started, else None."""
    load = results["machine"].get("load_average_before")
    cores = results["machine"].get("cores") or 1
    if load and load[0] > 0.25 * cores:
        return (f"the machine was busy when this run started (load average {load[0]:.2f} "
                f"on {cores} cores): parallel timings may be inflated")
    return None


def missing_lines(results):
    """One line per implementation that was not measured, with the reason."""
    return [f"{name}: {reason}" for name, reason in results.get("skipped", {}).items()]


_SHORT = {"forward": "fwd", "backward": "bwd"}


def curve_rows(curve):
    """The size curve's table of ratios: a header, then one row per shape.

    Parameters
    ----------
    curve : dict
        ``results["size_curve"]`` (see :func:`bench.curve.run`).

    Returns
    -------
    list of tuple of str
        ``shape``, ``x size``, then per operation measured numba-ln's
        ``time`` (median), ``x PyTorch`` (PyTorch's median over numba-ln's)
        and ``% copy`` (the copy's median over numba-ln's); last ``others``,
        the largest share of the CPUs other processes took while the row was
        timed.
    """
    operations = [op for op in OPERATIONS if any(p["operation"] == op for p in curve["points"])]
    header = ("shape", "x size") + tuple(f"{_SHORT[op]} {what}" for op in operations
                                         for what in ("time", "x PyTorch", "% copy"))
    header += ("others",)
    by_shape = {}
    for p in curve["points"]:
        by_shape.setdefault((p["rows"], p["cols"]), {})[p["operation"]] = p
    itemsize = np.dtype(curve["dtype"]).itemsize
    rows = [header]
    for (n_rows, cols), found in by_shape.items():
        cells = [f"{n_rows}x{cols}", format_bytes(n_rows * cols * itemsize)]
        for op in operations:
            p = found.get(op)
            mine = p and p["median_s"].get("numba_ln")
            cells += ["", "", ""] if not mine else [
                format_time(mine), _ratio(p["torch_speedup"]), _percent(p["copy_fraction"])]
        cells.append(_percent(_busiest(found.values())))
        rows.append(tuple(cells))
    return rows


#: Other processes' share of the CPUs above which a row's figures are suspect.
BUSY_SHARE = 0.25


def _busiest(points):
    shares = [p.get("others_cpu") for p in points if p.get("others_cpu") is not None]
    return max(shares) if shares else None


def curve_busy_warning(curve):
    """A warning when other processes took the CPUs while some rows were timed, else None."""
    by_shape = {}
    for p in curve["points"]:
        by_shape.setdefault(p["shape"], []).append(p)
    busy = [shape for shape, points in by_shape.items()
            if (_busiest(points) or 0) > BUSY_SHARE]
    if not busy:
        return None
    return (f"other processes took more than {BUSY_SHARE:.0%} of the CPUs while "
            f"{len(busy)} of {len(by_shape)} rows of the size curve were timed ({', '.join(busy)}"
            f"; column others): their figures are not to be trusted")


def curve_summary(curve):
    """The size curve's verdict in one line: numba-ln's speedups over PyTorch."""
    summary = curve["summary"]
    overall = summary.get("all")
    if overall is None:
        return "numba-ln over PyTorch: not measured (no PyTorch in this run)"
    each = ", ".join(f"{op} {summary[op]['geomean']:.2f}x" for op in OPERATIONS
                     if summary.get(op))
    return (f"numba-ln over PyTorch at {overall['points']} points: geometric mean "
            f"{overall['geomean']:.2f}x ({each}); minimum {overall['min']:.2f}x "
            f"({overall['min_at']})")


def _curve_method(curve):
    return (f"median of {curve['rounds']} interleaved rounds (each round times every "
            f"implementation once, in turn); x PyTorch: PyTorch's time over numba-ln's; "
            f"% copy: the time of a copy moving the same bytes over numba-ln's; others: "
            f"the share of the CPUs that other processes took meanwhile (blank: timed too "
            f"briefly to tell)")


def format_text(results):
    """The terminal report: machine, one table per (operation, dtype), targets, gaps.

    Parameters
    ----------
    results : dict

    Returns
    -------
    str
    """
    out = [f"numba-ln benchmark, {results['date']}",
           machine_line(results), versions_line(results)]
    if results["results"]:
        out.append("time: best of the timed calls; GB/s: bytes moved / time (forward and "
                   "rms_forward x+y, backward x+dy+dx, add_*_forward x+r+y+s); % roofline: of "
                   "the copy moving the same bytes on the "
                   "same device in this run; xNumPy / xPyTorch: speedup over them")
    out.append("")
    for (operation, dtype), records in sections(results["results"]).items():
        out.append(f"== {operation}, {dtype}")
        out.append(_text_table([COLUMNS] + [row_cells(r) for r in records]))
        out.append("")
    norms = norm_rows(results["results"])
    if norms:
        out.append("== layer norm, RMSNorm and the fused residual add (CPU): "
                   + _NORM_METHOD.replace("`", ""))
        out.append(_text_table(norms, first_figure=3))
        out.append("")
    targets = target_records(results["results"])
    if targets:
        out.append("== numba-ln (CPU) at the target shapes")
        out.append(_text_table([("operation", "dtype") + COLUMNS]
                               + [(r["operation"], r["dtype"]) + row_cells(r)
                                  for r in targets]))
        out.append("")
    curve = results.get("size_curve")
    if curve:
        out.append(f"== size curve, {curve['dtype']}: {_curve_method(curve)}")
        out.append(_text_table(curve_rows(curve), first_figure=1))
        out.append(curve_summary(curve))
        if curve_busy_warning(curve):
            out.append(f"warning: {curve_busy_warning(curve)}")
        out.append("")
    for line in missing_lines(results):
        out.append(f"not measured: {line}")
    if load_warning(results):
        out.append(f"warning: {load_warning(results)}")
    return "\n".join(out).rstrip() + "\n"


def format_markdown(results, plot=None, curve_plot=None):
    """The benchmarks page (``docs/benchmarks.md``) in Markdown.

    Parameters
    ----------
    results : dict
    plot, curve_plot : str, optional
        Paths of the plot and the size curve's plot relative to the page, to
        embed.

    Returns
    -------
    str
    """
    settings = results.get("settings", {})
    out = ["# Benchmarks", "",
           "Generated by `make bench-readme` (`python -m bench --out docs/perf "
           "--update-docs docs/benchmarks.md`) from `docs/perf/results.json`; edits by hand "
           "are overwritten.", "",
           f"Measured on {results['date'][:10]} with `{results.get('command', '')}` on: "
           f"{machine_line(results)}.", "",
           f"Versions: {versions_line(results)}.", ""]
    if results["results"]:
        out += ["Time is the best of the timed calls after a warm-up call (JIT compilation "
                "excluded); the implementations of one case are timed in interleaved rounds, "
                "the roofline throughout, so a noisy moment hits them alike. GB/s counts the "
                "bytes that must move: forward (and RMSNorm's, `rms_forward`) reads `x` and "
                "writes `y`; backward reads `x` and `dy` and writes `dx`; the fused residual "
                "add + norm (`add_ln_forward`, `add_rms_forward`) reads `x` and `r` and "
                "writes `y` and `s = x + r`. **% roofline** compares with a plain streaming "
                "kernel moving the same bytes on the same device in the same run (the faster "
                "of a numba `prange` kernel on every thread and NumPy's "
                "`copyto`/`bitwise_xor`; for the fused add, two copies). `numba-ln (out=)` "
                "writes into preallocated arrays (`out=`, and `residual_out=` for the fused "
                "add); `numba-ln unfused` is `np.add(x, r, out=s)` then the norm of `s` with "
                "`out=`; PyTorch's fused-add row is `torch.add(x, r, out=s)` then "
                "`F.layer_norm` / `F.rms_norm` (which take no `out=`); "
                "`numba-ln` allocates its result, as PyTorch and NumPy do; `numba-ln C ABI` "
                "calls `libnumba_ln.so` from Python with caller-allocated outputs. The NumPy "
                "implementation is plain vectorized NumPy (`numpy_forward` / `numpy_backward` "
                "in `bench/cases.py`).", ""]
    if results["results"] and settings.get("budget_s") is not None:
        out += [f"Each figure comes from about {settings['budget_s']} s of timed calls; on a "
                "shared or virtual machine repeated runs can differ by 10-20%, so compare "
                "rows of one run rather than runs.", ""]
    if load_warning(results):
        out += [f"**Warning:** {load_warning(results)}.", ""]
    missing = missing_lines(results)
    if missing:
        out += ["**Not measured in this run:**", ""]
        out += [f"- {line}" for line in missing]
        out.append("")
    if plot:
        out += [f"![GB/s against hidden size]({plot})", ""]
    targets = target_records(results["results"])
    if targets:
        out += ["## numba-ln (CPU) at the target shapes", "",
                _markdown_table([("operation", "dtype") + COLUMNS]
                                + [(r["operation"], r["dtype"]) + row_cells(r)
                                   for r in targets]), ""]
    norms = norm_rows(results["results"])
    if norms:
        out += ["## Layer norm, RMSNorm and the fused residual add (CPU)", "",
                f"{_NORM_METHOD}.", "", _markdown_table(norms, first_figure=3), ""]
    curve = results.get("size_curve")
    if curve:
        out += [f"## Size curve, {curve['dtype']}", "",
                "numba-ln (`layer_norm(x, w, b, return_stats=True)`, `layer_norm_backward(dy, "
                "x, mean, rstd, w)`) against PyTorch's CPU kernels called directly, without "
                "autograd (`torch.ops.aten.native_layer_norm`, `native_layer_norm_backward`), "
                "both allocating their results and returning the statistics; NumPy and the "
                f"copy of the same bytes beside them. Each figure is the {_curve_method(curve)}.",
                ""]
        if curve_plot:
            out += [f"![Time per element against working-set size]({curve_plot})", ""]
        out += [_markdown_table(curve_rows(curve), first_figure=1), "",
                f"{curve_summary(curve)}.", ""]
        if curve_busy_warning(curve):
            out += [f"**Warning:** {curve_busy_warning(curve)}.", ""]
    if results["results"]:
        out += ["## Every implementation and shape", ""]
    for (operation, dtype), records in sections(results["results"]).items():
        out += ["<details>", f"<summary>{operation}, {dtype}</summary>", "",
                _markdown_table([COLUMNS] + [row_cells(r) for r in records]), "",
                "</details>", ""]
    out += ["Run it yourself from a checkout: `make bench` (the default set above), "
            "`python -m bench --quick` (under a minute on two cores), or pick with "
            "`--device cpu|cuda|all`, `--dtype float32,float16,bfloat16`, "
            "`--shapes 65536x1024,1x768`, "
            "`--ops forward,backward,rms_forward,add_ln_forward,add_rms_forward`, "
            "`--capi-lib PATH`; `--out DIR` writes `results.json`, "
            "`plot.png` and `size_curve.png`. `python -m bench --curve` measures the size "
            "curve alone (`--rounds N`, default 15; `--no-curve` leaves it out of the "
            "default run). The same cases run under pytest-benchmark with "
            "`pytest bench --benchmark-enable` (one table per `operation|shape|dtype`); "
            "`make test` runs each of them once, on small shapes, as a test.", ""]
    return "\n".join(out)


_COLORS = {"numba-ln (out=)": "tab:red", "numba-ln": "tab:green", "numba-ln unfused": "tab:brown",
           "numba-ln C ABI": "tab:purple", "PyTorch": "tab:orange", "NumPy": "tab:blue"}


def _pyplot():
    """matplotlib's pyplot drawing to files only (ImportError without matplotlib)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot(results, path):
    """Write the GB/s-against-hidden-size plot.

    One panel per dtype (rows) and per operation and device (columns: CPU
    and GPU side by side), one line per implementation, the roofline dashed.
    Hidden sizes are evenly spaced, in increasing order. The latency shapes
    are left out: their GB/s measure call overhead, not bandwidth. Where
    several shapes share a hidden size, the one moving the most bytes is drawn.

    Parameters
    ----------
    results : dict
    path : str or Path
        A ``.png`` file.
    """
    plt = _pyplot()
    records = [r for r in results["results"] if not r["small"]]
    dtypes = [d for d in ("float32", "float16", "bfloat16", "float64")
              if any(r["dtype"] == d for r in records)]
    columns = [(op, dev) for dev in ("cpu", "cuda") for op in ALL_OPERATIONS
               if any((r["operation"], r["device"]) == (op, dev) for r in records)]
    order = {}  # implementations in the order they were measured: roofline first
    for r in records:
        order.setdefault(r["implementation"], len(order))
    nrows, ncols = max(len(dtypes), 1), max(len(columns), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows),
                             squeeze=False)
    for i, dtype in enumerate(dtypes):
        for j, (operation, device) in enumerate(columns):
            ax = axes[i][j]
            lines = {}
            for r in records:
                if (r["operation"], r["dtype"], r["device"]) != (operation, dtype, device):
                    continue
                per_cols = lines.setdefault(r["implementation"], {})
                kept = per_cols.get(r["cols"])
                if kept is None or r["bytes"] > kept["bytes"]:
                    per_cols[r["cols"]] = r
            all_cols = sorted({c for per_cols in lines.values() for c in per_cols})
            position = {c: k for k, c in enumerate(all_cols)}
            for name in sorted(lines, key=order.get):
                per_cols = lines[name]
                xs = sorted(per_cols)
                ys = [per_cols[c]["gbps"] for c in xs]
                if per_cols[xs[0]]["roofline"]:
                    style = dict(color="black", linestyle="--", linewidth=1.2)
                else:
                    style = dict(color=_COLORS.get(name), marker="o", markersize=4)
                ax.plot([position[c] for c in xs], ys, label=name, **style)
            ax.set_xticks(range(len(all_cols)))
            ax.set_xticklabels([str(c) for c in all_cols], fontsize=8)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("hidden size (columns)", fontsize=9)
            ax.set_ylabel("GB/s", fontsize=9)
            where = "CPU" if device == "cpu" else "GPU"
            ax.set_title(f"{operation}, {dtype}, {where}", fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"numba-ln {results['versions']['numba_ln']}: {m['cpu_model']}, "
                 f"{m['cores']} cores{', ' + m['gpu'] if m.get('gpu') else ''}, "
                 f"{results['date'][:10]} (GB/s = bytes that must move / best time)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: The size curve's hidden sizes, told apart by line style and marker.
_CURVE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def plot_curve(results, path):
    """Write the size curve: time per element against working-set size, log-log.

    One panel per operation, a colour per implementation (the copy black), a
    line style per hidden size, and the data caches (``results["machine"]
    ["caches"]``) as labelled vertical lines. The working set is the bytes a
    call must move (forward ``x`` and ``y``, backward ``x``, ``dy`` and
    ``dx``).

    Parameters
    ----------
    results : dict
        With a ``size_curve``.
    path : str or Path
        A ``.png`` file.
    """
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    curve = results["size_curve"]
    operations = [op for op in OPERATIONS if any(p["operation"] == op for p in curve["points"])]
    all_cols = sorted({p["cols"] for p in curve["points"]})
    caches = results["machine"].get("caches") or []
    fig, axes = plt.subplots(1, max(len(operations), 1), figsize=(6.6 * len(operations), 4.8),
                             squeeze=False)
    for ax, operation in zip(axes[0], operations):
        points = [p for p in curve["points"] if p["operation"] == operation]
        for key, label in curve["labels"].items():
            for k, cols in enumerate(all_cols):
                line = sorted((p["bytes"], p["median_s"][key] / p["elements"] * 1e9)
                              for p in points if p["cols"] == cols and key in p["median_s"])
                if not line:
                    continue
                linestyle, marker = _CURVE_STYLES[k % len(_CURVE_STYLES)]
                color = "black" if key == "roofline" else _COLORS.get(label)
                ax.plot(*zip(*line), color=color, linestyle=linestyle, marker=marker,
                        markersize=4, linewidth=1.2, label=f"{label}, {cols} columns")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        low, high = ax.get_xlim()
        ticks = [1 << k for k in range(0, 64, 2) if low <= 1 << k <= high]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(int(v))))
        ax.tick_params(axis="x", labelsize=7, labelrotation=45)
        for cache in caches:
            if low <= cache["bytes"] <= high:
                ax.axvline(cache["bytes"], color="grey", linestyle=":", linewidth=1)
                ax.text(cache["bytes"], 0.98, f"{cache['name']} {format_bytes(cache['bytes'])} ",
                        transform=ax.get_xaxis_transform(), rotation=90, ha="right",
                        va="top", fontsize=7, color="dimgrey")
        moved = "x + y" if operation == "forward" else "x + dy + dx"
        ax.set_xlabel(f"working set: bytes moved per call ({moved})", fontsize=9)
        ax.set_ylabel("ns per element (median)", fontsize=9)
        ax.set_title(f"{operation}, {curve['dtype']}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    legend = {}  # one legend below both panels, so no line hides behind it
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        legend.update(zip(labels, handles))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=4, fontsize=8)
    m = results["machine"]
    fig.suptitle(f"numba-ln {results['versions']['numba_ln']} size curve: {m['cpu_model']}, "
                 f"{m['cores']} cores, {results['date'][:10]} (median of {curve['rounds']} "
                 f"interleaved rounds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(legend) / 4), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_json_path(parser, path):
    """A usage error now, not after the measuring, when ``--json PATH`` has no folder to go in."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        parser.error(f"--json: no folder {str(Path(path).parent)!r} to write {path} in")


def write_report(text, results, json_path=None):
    """Print ``text``; with ``json_path``, also write ``results`` there as JSON."""
    sys.stdout.write(text)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {json_path}", file=sys.stderr)


def relative_link(target, start):
    """``target`` relative to the folder ``start``, with forward slashes."""
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


def save(results, out, write_json=True):
    """Write ``out/results.json``, ``out/plot.png`` and ``out/size_curve.png``.

    Each plot is drawn when there is something to draw (the tables' records,
    the size curve). Without matplotlib there are no plots: a one-line note
    on stderr says so, and the JSON is written all the same.

    Parameters
    ----------
    results : dict
    out : str or Path
        A folder, created if missing.
    write_json : bool, default True
        False when ``results`` was read from that very file.

    Returns
    -------
    dict
        The plots written, by name: ``"plot"``, ``"size_curve"``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if write_json:
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    wanted = {"plot": (plot, results["results"]),
              "size_curve": (plot_curve, (results.get("size_curve") or {}).get("points"))}
    written = {}
    for name, (draw, data) in wanted.items():
        if not data:
            continue
        path = out / f"{name}.png"
        try:
            draw(results, path)
        except ImportError as exc:  # matplotlib is optional: the figures still count
            print(f"note: no plot ({exc.name or 'matplotlib'} is not installed: "
                  f"pip install matplotlib)", file=sys.stderr)
            break
        written[name] = path
    return written
