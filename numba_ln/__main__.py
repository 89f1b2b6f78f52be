"""The ``numba-ln`` command (also ``python -m numba_ln``).

``numba-ln bench`` measures numba-ln against NumPy, PyTorch and a copy
roofline, prints the tables, and with ``--out DIR`` writes ``results.json``
and ``plot.png``. See ``numba-ln bench --help``.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from . import __version__


def _parser():
    from . import _bench

    parser = argparse.ArgumentParser(
        prog="numba-ln", description="numba-ln: layer normalization for CPUs and NVIDIA GPUs.")
    parser.add_argument("--version", action="version", version=f"numba-ln {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser(
        "bench", help="benchmark numba-ln against NumPy, PyTorch and a copy roofline",
        description=(
            "Time layer norm (forward and backward) in numba-ln, plain NumPy, PyTorch (when "
            "installed), the numba-ln C ABI (when built) and, with a GPU, numba-ln CUDA and "
            "PyTorch CUDA; beside them a copy moving the same bytes (the roofline). Prints "
            "time, GB/s, % of roofline and speedups; --out also writes JSON and a plot."),
        epilog=(f"default shapes: {_shapes_text(_bench.default_shapes())}; "
                f"--quick: {_shapes_text(_bench.QUICK_SHAPES)}"))
    bench.add_argument("--device", default="all", metavar="{cpu,cuda,all}",
                       help="where to run: cpu, cuda, or all (default: all = the CPU, and "
                            "the GPU when one can be timed)")
    bench.add_argument("--dtype", default="float32,float16", metavar="LIST",
                       help="comma-separated dtypes from float32, float16, float64 "
                            "(default: float32,float16)")
    bench.add_argument("--shapes", metavar="LIST",
                       help="comma-separated ROWSxCOLS, e.g. 65536x1024,1x768 "
                            "(default: the default or --quick set)")
    bench.add_argument("--ops", default="forward,backward", metavar="LIST",
                       help="comma-separated operations: forward, backward (default: both)")
    bench.add_argument("--quick", action="store_true",
                       help="a small set and shorter timings (under a minute on 2 cores)")
    bench.add_argument("--budget", type=float, metavar="SECONDS",
                       help=f"seconds of timed calls per figure (default "
                            f"{_bench.DEFAULT_BUDGET_S}, --quick {_bench.QUICK_BUDGET_S})")
    bench.add_argument("--out", metavar="DIR",
                       help="write DIR/results.json (every figure, machine, versions, "
                            "date) and DIR/plot.png")
    bench.add_argument("--capi-lib", metavar="PATH",
                       help="the built libnumba_ln.so to benchmark through the C ABI "
                            "(default: $NUMBA_LN_CAPI_LIB or build/libnumba_ln.so if present)")
    bench.add_argument("--markdown", action="store_true",
                       help="print the tables as Markdown (the README section) instead")
    bench.add_argument("--from-json", metavar="FILE",
                       help="report a saved results.json instead of measuring")
    bench.add_argument("--update-readme", metavar="README",
                       help="replace README's Performance section (between its markers) "
                            "with the Markdown report; needs --out (for the plot) or "
                            "--from-json")
    return parser, bench


def _shapes_text(shapes):
    return ",".join(f"{r}x{c}" for r, c in shapes)


def _settings(parser, args):
    """Validate the options; return the run settings or exit with a usage error."""
    from . import _bench

    def parse(function, *extra, option):
        try:
            return function(*extra)
        except ValueError as exc:
            parser.error(f"{option}: {exc}")

    if args.device not in ("cpu", "cuda", "all"):
        parser.error(f"--device: unknown device {args.device!r}; choose from cpu, cuda, all")
    dtypes = parse(_bench.parse_choices, args.dtype, _bench.DTYPES, "dtype", option="--dtype")
    operations = parse(_bench.parse_choices, args.ops, _bench.OPERATIONS, "operation",
                       option="--ops")
    if args.shapes is not None:
        shapes = parse(_bench.parse_shapes, args.shapes, option="--shapes")
    else:
        shapes = _bench.QUICK_SHAPES if args.quick else _bench.default_shapes()
    budget = args.budget if args.budget is not None else (
        _bench.QUICK_BUDGET_S if args.quick else _bench.DEFAULT_BUDGET_S)
    if not budget > 0:
        parser.error(f"--budget: must be a positive number of seconds, got {args.budget}")
    if args.update_readme and not (args.out or args.from_json):
        parser.error("--update-readme needs --out DIR (where the plot goes) or --from-json")
    gpu_reason = _bench.gpu_unavailable_reason()
    if args.device == "cuda" and gpu_reason is not None:
        parser.error(f"--device cuda: no GPU can be timed here ({gpu_reason})")
    if args.device == "cpu" or (args.device == "all" and gpu_reason is not None):
        devices = ("cpu",)
    else:
        devices = ("cuda",) if args.device == "cuda" else ("cpu", "cuda")
    return {"devices": devices, "dtypes": dtypes, "operations": operations,
            "shapes": [list(s) for s in shapes], "budget_s": budget, "quick": args.quick,
            "capi_lib": args.capi_lib, "gpu_reason": gpu_reason}


def _measure(settings, argv):
    """Run the benchmark; return the results dictionary."""
    from . import _bench

    case_list = _bench.cases([tuple(s) for s in settings["shapes"]], settings["dtypes"],
                             settings["operations"])
    skipped = {}
    if "cuda" not in settings["devices"] and settings["gpu_reason"] is not None:
        skipped["GPU rows (numba-ln CUDA, PyTorch CUDA)"] = settings["gpu_reason"]
    load_before = _bench.load_average()  # before our own threads add to it
    progress = _bench.Progress(len(case_list))
    records = _bench.run(case_list, settings["devices"],
                         _bench.Options(capi_lib=settings["capi_lib"]),
                         settings["budget_s"], progress, skipped)
    results = {"schema": _bench.SCHEMA,
               "command": " ".join(["python -m numba_ln"] + [shlex.quote(a) for a in argv]),
               **_bench.environment(),
               "settings": {k: v for k, v in settings.items() if k != "gpu_reason"},
               "skipped": skipped, "results": records}
    results["machine"]["load_average_before"] = load_before
    return results


def bench(parser, args, argv):
    """``numba-ln bench``: measure (or load), print, and write what was asked for."""
    from . import _bench_report as report

    if args.from_json:
        try:
            results = json.loads(Path(args.from_json).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--from-json: cannot read {args.from_json}: {exc}")
        if args.update_readme and not args.out:
            args.out = str(Path(args.from_json).parent)
    else:
        results = _measure(_settings(parser, args), argv)

    plot_path = None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "results.json"
        if not (args.from_json and json_path.resolve() == Path(args.from_json).resolve()):
            json_path.write_text(json.dumps(results, indent=1) + "\n")
        plot_path = out / "plot.png"
        try:
            report.plot(results, plot_path)
        except ImportError as exc:  # matplotlib is optional: the figures still count
            print(f"note: no plot ({exc.name or 'matplotlib'} is not installed: "
                  f"pip install matplotlib)", file=sys.stderr)
            plot_path = None

    if args.markdown or args.update_readme:
        link = None
        if plot_path is not None:
            base = Path(args.update_readme).parent if args.update_readme else Path.cwd()
            link = report.relative_link(plot_path, base)
        markdown = report.format_markdown(results, link)
    if args.markdown:
        sys.stdout.write(markdown)
    else:
        sys.stdout.write(report.format_text(results))
    if args.out:
        print(f"wrote {json_path}" + (f" and {plot_path}" if plot_path else ""),
              file=sys.stderr)
    if args.update_readme:
        try:
            report.update_readme(args.update_readme, markdown)
        except (OSError, ValueError) as exc:
            parser.error(f"--update-readme: {exc}")
        print(f"updated the Performance section of {args.update_readme}", file=sys.stderr)
    return 0


def main(argv=None):
    """Entry point of ``numba-ln`` and ``python -m numba_ln``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success. Usage errors exit with status 2 and a
        message on stderr.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, bench_parser = _parser()
    args = parser.parse_args(argv)
    return bench(bench_parser, args, argv)


if __name__ == "__main__":
    sys.exit(main())
