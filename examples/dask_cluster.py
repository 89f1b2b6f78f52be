"""Layer norm forward and backward of a large array on a local Dask cluster.

    python examples/dask_cluster.py                      # 1 GiB of float32 on 2 workers
    python examples/dask_cluster.py --rows 4096 --check  # small, and checked against numba_ln

The array is made on the workers, chunk by chunk (it never exists in this
process); numba_ln.dask builds the forward's and the backward's graphs, and
the cluster runs them, each worker process calling numba-ln's kernels on
its chunks. On a real cluster, replace the LocalCluster by the address of
its scheduler (``Client("tcp://scheduler:8786")``); the workers need
numba-ln installed, nothing else.
"""

import argparse
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import numba_ln
import numba_ln.dask


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--chunk-rows", type=int, default=16384,
                        help="rows per chunk (a chunk holds whole rows)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--check", action="store_true",
                        help="also compute numba_ln on the whole array here and compare "
                             "(the array must fit in this process's memory)")
    return parser.parse_args(argv)


def graphs(rows, cols, chunk_rows):
    """The inputs and numba_ln.dask's results, as lazy Dask arrays."""
    rng = da.random.default_rng(0)
    x = rng.standard_normal((rows, cols), chunks=(chunk_rows, cols), dtype=np.float32)
    dy = rng.standard_normal((rows, cols), chunks=(chunk_rows, cols), dtype=np.float32)
    weight = np.linspace(0.5, 1.5, cols, dtype=np.float32)
    bias = np.zeros(cols, np.float32)
    y, mean, rstd = numba_ln.dask.layer_norm(x, weight, bias, return_stats=True)
    dx, dweight, dbias = numba_ln.dask.layer_norm_backward(dy, x, mean, rstd, weight)
    return (x, dy, weight, bias), (y, mean, rstd, dx, dweight, dbias)


def check(inputs, results):
    """numba_ln on the whole arrays, in this process, against the cluster's results."""
    x, dy, weight, bias = inputs
    x, dy = dask.compute(x, dy)
    y, mean, rstd = numba_ln.layer_norm(x, weight, bias, return_stats=True)
    dx, dweight, dbias = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)
    for name, got, want in zip(("y", "mean", "rstd", "dx"), results[:4], (y, mean, rstd, dx)):
        if got.tobytes() != want.tobytes():
            raise SystemExit(f"{name} differs from numba_ln on the whole array")
    for name, got, want in zip(("dweight", "dbias"), results[4:], (dweight, dbias)):
        error = np.abs(got - want).max() / np.abs(want).max()
        if error > 1e-5:
            raise SystemExit(f"{name} differs from numba_ln on the whole array by {error:.1e}")
    print("check: y and dx: the bits of numba_ln on the whole array; dweight and dbias "
          "agree to 1e-5 (sums over chunks round otherwise)")


def main(argv=None):
    args = parse_args(argv)
    inputs, results = graphs(args.rows, args.cols, args.chunk_rows)
    x = inputs[0]
    print(f"x: {x.shape} float32, {x.nbytes / 2**20:.1f} MiB in {x.npartitions} chunks of "
          f"{args.chunk_rows} rows")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        started = time.perf_counter()
        if args.check:  # small arrays: bring everything back
            computed = client.compute(list(results), sync=True)
        else:  # large ones: keep y and dx on the workers, bring back a summary
            y, mean, rstd, dx, dweight, dbias = results
            computed = client.compute([y.std(), dx.std(), dweight, dbias], sync=True)
            print(f"std of y {computed[0]:.4f}, std of dx {computed[1]:.4f}")
        elapsed = time.perf_counter() - started
        print(f"forward and backward on {args.workers} worker processes: {elapsed:.2f} s")
        print(f"dweight[:3] {computed[-2][:3]}, dbias[:3] {computed[-1][:3]}")
    if args.check:
        check(inputs, computed)


if __name__ == "__main__":  # spawned worker processes import this file
    main()
