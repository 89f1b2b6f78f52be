"""``python -m bench.cluster``: numba_ln.dask on a local Dask cluster, against the obvious Dask code.

Issue 19's benchmark (``make bench-dask``). An array several times larger
than one chunk (by default 131072 x 1024 float32, 512 MiB in 8 chunks of
16384 rows) is made on the workers of a ``distributed.LocalCluster`` of 1,
then 2, worker processes (one Dask thread each; numba's threads inside a
worker are numba's as usual), and its layer norm, forward and backward, is
timed for

- ``numba_ln.dask``: :func:`numba_ln.dask.layer_norm` (with the statistics)
  and :func:`numba_ln.dask.layer_norm_backward`;
- the ``dask.array`` expressions one would write (:func:`expression_forward`,
  :func:`expression_backward`): ``mean``, ``var`` and arithmetic forward, the
  textbook gradient backward;

and, beside them, numba-ln on the whole NumPy array in this process (no
Dask). A figure is the time from asking the cluster to compute the results
-- ``y``, ``mean``, ``rstd``; ``dx``, ``dweight``, ``dbias`` -- into the
workers' memory (``client.persist``) until they are all there; the inputs
were persisted before. The implementations take turns, one call each per
round; the table gives the median and the fastest of the rounds, and each
implementation's first call (on the workers: loading or compiling the
kernels) apart. Every implementation's results are checked against
numba-ln's on the whole array before anything is timed. The share of the
CPUs that processes other than this one and its workers took while a
cluster was timed is printed with its table, since the figures on a shared
machine mean little without it.
"""

import argparse
import logging
import resource
import shlex
import sys
import time

import numpy as np

import numba_ln

from . import report, runner
from .cases import EPS

DEFAULT_ROWS, DEFAULT_COLS, DEFAULT_CHUNK_ROWS = 131072, 1024, 16384
DEFAULT_WORKERS = (1, 2)
DEFAULT_ROUNDS = 5
#: Seconds a cluster may take to start or to compute one call.
TIMEOUT_S = 600
SCHEMA = "numba-ln-bench-cluster/1"
NUMBA_LN_DASK, EXPRESSION, ONE_PROCESS = "numba_ln.dask", "dask.array expression", "numba-ln"
IMPLEMENTATIONS = {
    NUMBA_LN_DASK: "numba_ln.dask.layer_norm / layer_norm_backward",
    EXPRESSION: "dask.array: mean, var and arithmetic (forward), the textbook gradient "
                "(backward)",
    ONE_PROCESS: "numba_ln.layer_norm / layer_norm_backward on the whole NumPy array, in "
                 "this process, no Dask",
}
COLUMNS = ("pass", "implementation", "workers", "median", "min", "1st call", "GB/s",
           "x dask.array", "x one process")


def parser():
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description="Time layer norm, forward and backward, of a Dask array on a local "
                    "cluster of worker processes: numba_ln.dask against dask.array "
                    "expressions, and numba-ln on the whole array in one process.")
    p.add_argument("--rows", type=_positive, default=DEFAULT_ROWS)
    p.add_argument("--cols", type=_positive, default=DEFAULT_COLS)
    p.add_argument("--chunk-rows", type=_positive, default=DEFAULT_CHUNK_ROWS,
                   help="rows per chunk (default %(default)s)")
    p.add_argument("--workers", type=_worker_counts, default=DEFAULT_WORKERS,
                   help="comma-separated worker-process counts, one cluster each "
                        "(default 1,2)")
    p.add_argument("--rounds", type=_positive, default=DEFAULT_ROUNDS,
                   help="timed calls per implementation (default %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    return p


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _worker_counts(text):
    try:
        return tuple(_positive(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers (e.g. 1,2), got {text!r}") from None


def parse_args(argv):
    p = parser()
    args = p.parse_args(argv)
    if args.chunk_rows > args.rows:
        p.error(f"--chunk-rows {args.chunk_rows} is more than --rows {args.rows}: the array "
                f"must span several chunks")
    report.check_json_path(p, args.json)
    return args


# --------------------------------------------------------------------------- implementations


def inputs(rows, cols, chunk_rows):
    """``x`` and ``dy`` as lazy random Dask arrays (seeded), ``weight`` and ``bias`` NumPy."""
    import dask.array as da
    rng = da.random.default_rng(19)
    chunks = (chunk_rows, cols)
    x = rng.standard_normal((rows, cols), chunks=chunks, dtype=np.float32)
    dy = rng.standard_normal((rows, cols), chunks=chunks, dtype=np.float32)
    weight = np.linspace(0.5, 1.5, cols, dtype=np.float32)
    bias = np.linspace(-0.1, 0.1, cols, dtype=np.float32)
    return x, dy, weight, bias


def expression_forward(x, weight, bias, eps=EPS):
    """Layer norm as ``dask.array`` expressions: ``(y, mean, rstd)``.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.array([[1.0, 2.0, 3.0]]))
    >>> y, mean, rstd = expression_forward(x, np.ones(3), np.zeros(3), eps=0.0)
    >>> y.compute().round(4), mean.compute()
    (array([[-1.2247,  0.    ,  1.2247]]), array([[2.]]))
    """
    import dask.array as da
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1 / da.sqrt(x.var(axis=-1, keepdims=True) + eps)
    return (x - mean) * rstd * weight + bias, mean, rstd


def expression_backward(dy, x, mean, rstd, weight):
    """The textbook layer norm gradient as ``dask.array`` expressions: ``(dx, dweight, dbias)``.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.array([[1.0, 2.0, 3.0]]))
    >>> _, mean, rstd = expression_forward(x, np.ones(3), np.zeros(3))
    >>> dx, dweight, dbias = expression_backward(da.ones_like(x), x, mean, rstd, np.ones(3))
    >>> bool(abs(dx).max().compute() < 1e-12), dbias.compute()
    (True, array([1., 1., 1.]))
    """
    xhat = (x - mean) * rstd
    g = dy * weight
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def graphs(name, x, dy, weight, bias, stats):
    """``(forward results, backward results)`` of implementation ``name``, lazily.

    The backward takes ``stats`` (``mean``, ``rstd``), so both
    implementations differentiate at the same statistics.
    """
    import numba_ln.dask
    if name == NUMBA_LN_DASK:
        return (numba_ln.dask.layer_norm(x, weight, bias, return_stats=True),
                numba_ln.dask.layer_norm_backward(dy, x, *stats, weight))
    return expression_forward(x, weight, bias), expression_backward(dy, x, *stats, weight)


def bytes_moved(operation, rows, cols, itemsize=4):
    """Bytes a pass must move: x and y (forward) or x, dy and dx, plus statistics and gains.

    Examples
    --------
    >>> bytes_moved("forward", 2, 8)  # 4 bytes x (x and y: 2 x 16, mean and rstd: 4, gains: 16)
    208
    """
    arrays = 2 if operation == "forward" else 3
    params = 2 if operation == "forward" else 3  # weight, bias (and dweight, dbias)
    return itemsize * (arrays * rows * cols + 2 * rows + params * cols)


# --------------------------------------------------------------------------- checks


def check_close(name, got, want, tolerance):
    """Raise ``AssertionError`` unless ``got`` is within ``tolerance`` (relative L2) of ``want``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    error = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300)
    if not error <= tolerance:
        raise AssertionError(f"{name}: relative error {error:.2e} against numba-ln on the "
                             f"whole array, over the tolerance {tolerance:.0e}")


def check(name, forward, backward, whole, chunk_rows, client):
    """The first chunk of ``y``/``dx`` and all of ``dweight``/``dbias`` against ``whole``.

    numba_ln.dask must give the bits; the expressions within float32's rounding.
    """
    y, dx = forward[0].blocks[0], backward[0].blocks[0]
    got = [f.result(timeout=TIMEOUT_S) for f in client.compute([y, dx, *backward[1:]])]
    wanted = (whole[0][:chunk_rows], whole[3][:chunk_rows], whole[4], whole[5])
    for label, have, want in zip(("y", "dx", "dweight", "dbias"), got, wanted):
        if name == NUMBA_LN_DASK and label in ("y", "dx"):
            if have.tobytes() != want.tobytes():
                raise AssertionError(f"{name}: {label} differs from numba-ln on the whole array")
        else:
            check_close(f"{name}: {label}", have, want, 1e-5)


# --------------------------------------------------------------------------- timing


def _process_cpu_s():
    """CPU seconds of the calling process (run on each worker through ``client.run``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cluster_cpu(client):
    """``(machine busy s, this process's s + the workers' s)``, or None without /proc/stat."""
    reading = runner.cpu_seconds()
    if reading is None:
        return None
    workers = client.run(_process_cpu_s)
    return reading[0], reading[1] + sum(workers.values())


def persist(client, arrays):
    """Compute ``arrays`` into the workers' memory: ``(seconds until all are there, arrays)``."""
    from distributed import futures_of, wait
    start = time.perf_counter()
    persisted = client.persist(list(arrays))
    wait(futures_of(persisted), timeout=TIMEOUT_S)
    return time.perf_counter() - start, persisted


def interleaved(calls, rounds):
    """Each call's seconds per round, the calls taking turns: ``[[s, ...], ...]``.

    Unlike ``timer.measure_rounds`` the garbage collector stays on: results
    persisted on the workers are released as the client's references go.
    """
    samples = [[] for _ in calls]
    for _ in range(rounds):
        for call, times in zip(calls, samples):
            times.append(call())
    return samples


def time_cluster(workers, arrays, whole, args):
    """Every Dask implementation's records on a LocalCluster of ``workers`` processes."""
    import numba_ln.dask
    from distributed import Client, LocalCluster, futures_of, wait
    x, dy, weight, bias = arrays
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster, timeout=TIMEOUT_S) as client:  # wait() needs the default client
        x, dy = client.persist([x, dy])
        wait(futures_of([x, dy]), timeout=TIMEOUT_S)
        # numba_ln.dask's first forward call. Copies of its statistics serve both
        # backwards: under other keys, so that no timed call finds its results there.
        forward = numba_ln.dask.layer_norm(x, weight, bias, return_stats=True)
        first_forward, persisted = persist(client, forward)
        stats = persist(client, [stat.map_blocks(np.copy) for stat in persisted[1:]])[1]
        del persisted
        calls, firsts, names = [], [], []
        for name in (NUMBA_LN_DASK, EXPRESSION):
            forward, backward = graphs(name, x, dy, weight, bias, stats)
            for operation, results in (("forward", forward), ("backward", backward)):
                calls.append(lambda results=results: persist(client, results)[0])
                firsts.append(first_forward if (name, operation) == (NUMBA_LN_DASK, "forward")
                              else calls[-1]())
                names.append((name, operation))
            check(name, forward, backward, whole, args.chunk_rows, client)
        before, start = _cluster_cpu(client), time.perf_counter()
        samples = interleaved(calls, args.rounds)
        others = runner.others_share(before, _cluster_cpu(client), time.perf_counter() - start)
    return [record(name, operation, workers, times, first, args)
            for (name, operation), times, first in zip(names, samples, firsts)], others


def time_one_process(x, dy, weight, bias, args):
    """numba-ln on the whole NumPy arrays here: records and its results (for the checks)."""
    def forward():
        start = time.perf_counter()
        results = numba_ln.layer_norm(x, weight, bias, return_stats=True)
        return time.perf_counter() - start, results

    def backward():
        start = time.perf_counter()
        results = numba_ln.layer_norm_backward(dy, x, *stats, weight)
        return time.perf_counter() - start, results

    first_forward, (y, *stats) = forward()
    first_backward, grads = backward()
    samples = interleaved([lambda: forward()[0], lambda: backward()[0]], args.rounds)
    records = [record(ONE_PROCESS, operation, 0, times, first, args) for operation, times, first
               in zip(("forward", "backward"), samples, (first_forward, first_backward))]
    return records, (y, *stats, *grads)


def record(name, operation, workers, times, first_s, args):
    median = float(np.median(times))
    return {"implementation": name, "operation": operation, "workers": workers,
            "median_s": median, "best_s": min(times), "rounds": len(times), "samples_s": times,
            "first_call_s": first_s,
            "gbps": bytes_moved(operation, args.rows, args.cols) / median / 1e9}


def run(args, command):
    """Measure everything: the results dictionary (what ``--json`` writes)."""
    import dask
    started = time.perf_counter()
    arrays = inputs(args.rows, args.cols, args.chunk_rows)
    x, dy = dask.compute(*arrays[:2], scheduler="threads")
    # First in this process, so that the workers load the kernels it compiled and cached.
    records, whole = time_one_process(x, dy, *arrays[2:], args)
    others = {}
    for workers in args.workers:
        found, others[workers] = time_cluster(workers, arrays, whole, args)
        records += found
    environment = runner.environment()
    import distributed
    environment["versions"].update(dask=dask.__version__, distributed=distributed.__version__)
    return {"schema": SCHEMA, "command": command, **environment,
            "settings": {"rows": args.rows, "cols": args.cols, "chunk_rows": args.chunk_rows,
                         "chunks": -(-args.rows // args.chunk_rows), "dtype": "float32",
                         "workers": list(args.workers), "rounds": args.rounds},
            "implementations": IMPLEMENTATIONS, "records": records,
            "others_share": {str(k): v for k, v in others.items()},
            "elapsed_s": time.perf_counter() - started}


# --------------------------------------------------------------------------- report


def _find(records, name, operation, workers):
    for r in records:
        if (r["implementation"], r["operation"], r["workers"]) == (name, operation, workers):
            return r
    return None


def table_rows(records):
    """The table's rows (header first): each pass, each implementation and worker count.

    ``x dask.array``: the expression's median over this row's, on as many
    workers; ``x one process``: numba-ln's in one process over this row's.
    """
    rows = [COLUMNS]
    for operation in ("forward", "backward"):
        alone = _find(records, ONE_PROCESS, operation, 0)
        for r in (r for r in records if r["operation"] == operation):
            expression = _find(records, EXPRESSION, operation, r["workers"])
            versus = "" if expression is None or r is expression else \
                f"{expression['median_s'] / r['median_s']:.2f}x"
            rows.append((operation, r["implementation"], str(r["workers"] or "-"),
                         report.format_time(r["median_s"]), report.format_time(r["best_s"]),
                         report.format_time(r["first_call_s"]), f"{r['gbps']:.2f}", versus,
                         f"{alone['median_s'] / r['median_s']:.2f}x"))
    return rows


def format_report(results):
    """The results as Markdown: the set-up, the table, the CPUs others took."""
    s = results["settings"]
    others = ", ".join(f"{'n/a' if share is None else f'{100 * share:.0f} %'} with {k} "
                       f"worker{'s' if k != '1' else ''}"
                       for k, share in results["others_share"].items())
    lines = [f"# numba_ln.dask on a LocalCluster, {results['date']}", "",
             f"{report.machine_line(results)}", "",
             f"{report.versions_line(results)}, Dask {results['versions']['dask']}, "
             f"distributed {results['versions']['distributed']}", "",
             f"- {s['rows']}x{s['cols']} {s['dtype']} "
             f"({report.format_bytes(4 * s['rows'] * s['cols'])}) in {s['chunks']} chunks of "
             f"{s['chunk_rows']} rows, on LocalClusters of worker processes with one Dask "
             f"thread each; the inputs persisted on the workers first. A figure: "
             f"client.persist of the pass's results (y, mean, rstd / dx, dweight, dbias) "
             f"until they are in the workers' memory; medians of {s['rounds']} interleaved "
             f"rounds, fastest beside them; 1st call: the first, kernels loaded or compiled "
             f"in the workers.",
             "- " + "; ".join(f"{k}: {v}" for k, v in results["implementations"].items()) + ".",
             "- GB/s: x and y (forward) or x, dy and dx (backward) once each, over the median. "
             "x dask.array: the expression's median over the row's on as many workers; "
             "x one process: numba-ln's in one process over the row's.",
             f"- Other processes took {others} of the CPUs while the clusters were timed.", "",
             report._markdown_table(table_rows(results["records"]), first_figure=3), "",
             f"Command: `{results['command']}`; {results['elapsed_s']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Measure and print the Markdown report; with ``--json``, also write the results.

    Returns
    -------
    int
        0. Bad options exit with status 2 and a message.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = " ".join(["python -m bench.cluster"] + [shlex.quote(a) for a in argv])
    results = run(args, command)
    report.write_report(format_report(results), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
