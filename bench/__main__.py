"""``python -m bench``: measure numba-ln against its competitors and report.

Run from the repository root. Prints the tables and the size curve's
ratios; ``--out DIR`` also writes ``results.json``, ``plot.png`` and
``size_curve.png``, and ``--update-docs FILE`` the benchmarks page. See
``python -m bench --help``.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from . import curve, report, runner, timer
from .cases import (ALL_OPERATIONS, DTYPES, NORM_SHAPES, OPERATIONS, QUICK_NORM_SHAPES,
                    QUICK_SHAPES, cases, default_shapes, dtype_unavailable_reason,
                    parse_choices, parse_shapes, shapes_text)
from .competitors import Workspace, gpu_unavailable_reason

#: Seconds of timed calls per figure with ``--quick``.
QUICK_BUDGET_S = 0.1
#: ``--dtype``'s default.
DEFAULT_DTYPES = ("float32", "float16", "bfloat16")


def parser():
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Time layer norm (forward and backward) in numba-ln, plain NumPy, PyTorch (when "
            "installed), the numba-ln C ABI (when built) and, with a GPU, numba-ln CUDA and "
            "PyTorch CUDA; on the CPU also RMSNorm's forward and the fused residual add + "
            "norm (beside numba-ln unfused: np.add then the norm); beside them a copy moving "
            "the same bytes (the roofline). Prints "
            "time, GB/s, % of roofline and speedups; --out also writes JSON and a plot. "
            "The default run ends with the size curve: float32 on the CPU, numba-ln against "
            "PyTorch from one row to past the L3 cache, medians of interleaved rounds."),
        epilog=(f"default shapes: {shapes_text(default_shapes())} "
                f"({', '.join(ALL_OPERATIONS[len(OPERATIONS):])}: {shapes_text(NORM_SHAPES)}); "
                f"--quick: {shapes_text(QUICK_SHAPES)} "
                f"({shapes_text(QUICK_NORM_SHAPES)}); "
                f"size curve: {shapes_text(curve.SHAPES)}"))
    p.add_argument("--device", default="all", metavar="{cpu,cuda,all}",
                   help="where to run: cpu, cuda, or all (default: all = the CPU, and the "
                        "GPU when one can be timed)")
    p.add_argument("--dtype", metavar="LIST",
                   help=f"comma-separated dtypes from {', '.join(DTYPES)} "
                        f"(default: {','.join(DEFAULT_DTYPES)}; bfloat16 is ml_dtypes', a "
                        f"test extra, left out of the default with a note where missing)")
    p.add_argument("--shapes", metavar="LIST",
                   help="comma-separated ROWSxCOLS, e.g. 65536x1024,1x768 "
                        "(default: the default or --quick set)")
    p.add_argument("--ops", default=",".join(ALL_OPERATIONS), metavar="LIST",
                   help=f"comma-separated operations: {', '.join(ALL_OPERATIONS)} (default: "
                        f"all; forward and backward are layer norm's, rms_forward RMSNorm's, "
                        f"add_ln_forward / add_rms_forward the fused residual add + norm; "
                        f"the last three on the CPU only)")
    p.add_argument("--quick", action="store_true",
                   help="a small set and shorter timings (under a minute on 2 cores)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help=f"seconds of timed calls per figure (default "
                        f"{timer.DEFAULT_BUDGET_S}, --quick {QUICK_BUDGET_S})")
    p.add_argument("--curve", action="store_true",
                   help="measure only the size curve (its points: --shapes, default the "
                        "list below); float32, CPU")
    p.add_argument("--no-curve", action="store_true",
                   help="leave the size curve out of the default run (--shapes and --quick "
                        "leave it out too)")
    p.add_argument("--rounds", type=int, default=curve.DEFAULT_ROUNDS, metavar="N",
                   help=f"interleaved rounds per size-curve point; each figure is their "
                        f"median (default {curve.DEFAULT_ROUNDS})")
    p.add_argument("--out", metavar="DIR",
                   help="write DIR/results.json (every figure, machine, versions, date), "
                        "DIR/plot.png and DIR/size_curve.png")
    p.add_argument("--capi-lib", metavar="PATH",
                   help="the built libnumba_ln.so to benchmark through the C ABI "
                        "(default: $NUMBA_LN_CAPI_LIB, else build/libnumba_ln.so)")
    p.add_argument("--markdown", action="store_true",
                   help="print the benchmarks page (Markdown) instead of the text tables")
    p.add_argument("--from-json", metavar="FILE",
                   help="report a saved results.json instead of measuring")
    p.add_argument("--update-docs", metavar="FILE",
                   help="write the benchmarks page (docs/benchmarks.md) to FILE; needs "
                        "--out (for the plot) or --from-json")
    return p


def settings(p, args):
    """Validate the options; return the run settings or exit with a usage error."""
    def parse(function, *extra, option):
        try:
            return function(*extra)
        except ValueError as exc:
            p.error(f"{option}: {exc}")

    if args.device not in ("cpu", "cuda", "all"):
        p.error(f"--device: unknown device {args.device!r}; choose from cpu, cuda, all")
    if args.curve and args.device == "cuda":
        p.error("--curve: the size curve is measured on the CPU (--device cpu or all)")
    dtypes = parse(parse_choices, args.dtype or ",".join(DEFAULT_DTYPES), DTYPES, "dtype",
                   option="--dtype")
    dtype_reasons = {d: dtype_unavailable_reason(d) for d in dtypes}
    dtype_reasons = {d: reason for d, reason in dtype_reasons.items() if reason is not None}
    for reason in dtype_reasons.values():
        if args.dtype is not None:  # asked for by name: an error; by default: a note
            p.error(f"--dtype: {reason}")
    dtypes = tuple(d for d in dtypes if d not in dtype_reasons)
    operations = parse(parse_choices, args.ops, ALL_OPERATIONS, "operation", option="--ops")
    if args.shapes is not None:
        shapes = parse(parse_shapes, args.shapes, option="--shapes")
        norm_shapes = shapes
    else:
        shapes = QUICK_SHAPES if args.quick else default_shapes()
        norm_shapes = QUICK_NORM_SHAPES if args.quick else NORM_SHAPES
    curve_operations = [op for op in operations if op in OPERATIONS]
    if args.curve and not curve_operations:
        p.error(f"--curve: the size curve measures {' and '.join(OPERATIONS)} only")
    if args.curve and args.no_curve:
        p.error("--curve and --no-curve contradict each other")
    if args.rounds < 1:
        p.error(f"--rounds: must be at least 1, got {args.rounds}")
    budget = args.budget if args.budget is not None else (
        QUICK_BUDGET_S if args.quick else timer.DEFAULT_BUDGET_S)
    if not budget > 0:
        p.error(f"--budget: must be a positive number of seconds, got {args.budget}")
    gpu_reason = gpu_unavailable_reason()
    if args.device == "cuda" and gpu_reason is not None:
        p.error(f"--device cuda: no GPU can be timed here ({gpu_reason})")
    if args.device == "cpu" or (args.device == "all" and gpu_reason is not None):
        devices = ("cpu",)
    else:
        devices = ("cuda",) if args.device == "cuda" else ("cpu", "cuda")
    points = None  # the size curve's; the default run ends with it
    if args.curve:
        points, shapes = (shapes if args.shapes is not None else curve.SHAPES), ()
        norm_shapes = ()
    elif (args.shapes is None and not args.quick and not args.no_curve and "cpu" in devices
          and curve_operations):
        points = curve.SHAPES
    size_curve = points and {"shapes": [list(s) for s in points], "rounds": args.rounds,
                             "operations": curve_operations}
    if "cpu" not in devices:  # the norm operations run on the CPU only
        operations = tuple(op for op in operations if op in OPERATIONS)
    return {"devices": devices, "dtypes": dtypes, "operations": operations,
            "shapes": [list(s) for s in shapes],
            "norm_shapes": [list(s) for s in norm_shapes], "budget_s": budget,
            "quick": args.quick,
            "capi_lib": args.capi_lib, "size_curve": size_curve, "gpu_reason": gpu_reason,
            "dtype_reasons": dtype_reasons}


def measure(chosen, argv):
    """Run the benchmark with the settings :func:`settings` chose; return the results."""
    case_list = cases([tuple(s) for s in chosen["shapes"]], chosen["dtypes"],
                      chosen["operations"], [tuple(s) for s in chosen["norm_shapes"]])
    skipped = {f"{dtype} rows": reason for dtype, reason in chosen["dtype_reasons"].items()}
    if case_list and "cuda" not in chosen["devices"] and chosen["gpu_reason"] is not None:
        skipped["GPU rows (numba-ln CUDA, PyTorch CUDA)"] = chosen["gpu_reason"]
    load_before = runner.load_average()  # before our own threads add to it
    records = runner.run(case_list, chosen["devices"], Workspace(chosen["capi_lib"]),
                         chosen["budget_s"], runner.Progress(len(case_list)), skipped)
    results = {"schema": runner.SCHEMA,
               "command": " ".join(["python -m bench"] + [shlex.quote(a) for a in argv]),
               **runner.environment(),
               "settings": {k: v for k, v in chosen.items()
                            if k not in ("gpu_reason", "dtype_reasons")},
               "skipped": skipped, "results": records}
    results["machine"]["load_average_before"] = load_before
    if chosen["size_curve"]:
        shapes = [tuple(s) for s in chosen["size_curve"]["shapes"]]
        operations = chosen["size_curve"]["operations"]
        progress = runner.Progress(len(shapes) * len(operations))
        results["size_curve"] = curve.run(shapes, chosen["size_curve"]["rounds"],
                                          operations, progress, skipped)
    return results


def main(argv=None):
    """Measure (or load), print, and write what was asked for.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success. Usage errors exit with status 2 and a
        message on stderr; a missing optional part (PyTorch, the C library, a
        GPU, matplotlib) is a note, and the rest of the run goes on.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    if args.update_docs and not (args.out or args.from_json):
        p.error("--update-docs needs --out DIR (where the plot goes) or --from-json")
    if args.from_json:
        try:
            results = json.loads(Path(args.from_json).read_text())
        except (OSError, ValueError) as exc:
            p.error(f"--from-json: cannot read {args.from_json}: {exc}")
        if args.update_docs and not args.out:
            args.out = str(Path(args.from_json).parent)
    else:
        results = measure(settings(p, args), argv)

    plots = {}
    if args.out:
        json_path = Path(args.out) / "results.json"
        fresh = not (args.from_json and json_path.resolve() == Path(args.from_json).resolve())
        plots = report.save(results, args.out, write_json=fresh)
    if args.markdown or args.update_docs:
        page = Path(args.update_docs).parent if args.update_docs else Path.cwd()
        links = {name: report.relative_link(path, page) for name, path in plots.items()}
        markdown = report.format_markdown(results, links.get("plot"), links.get("size_curve"))
    sys.stdout.write(markdown if args.markdown else report.format_text(results))
    if args.out:
        written = [str(path) for path in [json_path if fresh else None, *plots.values()]
                   if path]
        if written:
            print(f"wrote {', '.join(written)}", file=sys.stderr)
    if args.update_docs:
        try:
            Path(args.update_docs).write_text(markdown)
        except OSError as exc:
            p.error(f"--update-docs: {exc}")
        print(f"wrote {args.update_docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
