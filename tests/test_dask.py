"""``numba_ln.dask``: the four functions on Dask arrays, threaded and on a two-process cluster.

Every chunk is computed by the top-level function, so ``y``, ``s``, the
statistics and ``dx`` must be the bits of that function on the whole NumPy
array; ``dweight``/``dbias`` are sums over chunks in a tree of fixed shape,
checked against the float64 reference and for the same bits from run to
run and from scheduler to scheduler. Waits on the cluster have timeouts, so
a hung worker fails the test instead of stalling the run.
"""

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

import numba_ln
import numba_ln.dask as nld
from numba_ln import api
from reference import DTYPES, TOLERANCE, layer_norm_backward as ref_layer_norm_backward
from reference import param_dtype, rel_l2, rms_norm_backward as ref_rms_norm_backward

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a cluster may take to start, compute or stop before the test calls it a hang.
TIMEOUT_S = 120

#: (shape, axis, chunks): an empty chunk and chunks of different sizes; a batch
#: chunked in two dimensions; ONNX's axis on a 3-D array (two normalized
#: axes); wide rows (the backward's pair loop) in odd-sized chunks.
CASES = {
    "uneven-and-empty": ((37, 40), -1, ((0, 3, 5, 9, 20), 40)),
    "batch-in-2-dims": ((6, 7, 48), -1, ((2, 4), (3, 4), 48)),
    "onnx-axis-1": ((9, 4, 12), 1, ((4, 5), 4, 12)),
    "wide-rows": ((23, 2051), -1, ((5, 7, 11), 2051)),
}


def assert_same_bits(got, want, name):
    """Same shape, dtype and bits; NaN matches NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f"{name}: {got.shape} {got.dtype}, expected {want.shape} {want.dtype}")
    bits = np.dtype(f"u{got.dtype.itemsize}")
    nan = np.isnan(want.astype(np.float64))
    assert (np.isnan(got.astype(np.float64)) == nan).all(), f"{name}: NaNs differ"
    differ = (got.view(bits) != want.view(bits)) & ~nan
    assert not differ.any(), f"{name}: {differ.sum()} elements differ from the whole array's"


def inputs(shape, axis, dtype, seed=0):
    """x, dy, residual, weight, bias; a residual of float32 for 16-bit data."""
    rng = np.random.default_rng(seed)
    normalized = shape[axis:]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    residual = rng.standard_normal(shape).astype(param_dtype(dtype))
    weight = rng.standard_normal(normalized).astype(param_dtype(dtype))
    bias = rng.standard_normal(normalized).astype(param_dtype(dtype))
    return x, dy, residual, weight, bias


def chunked(array, chunks):
    return da.from_array(array, chunks=chunks)


def within(timeout_s, function):
    """``function()`` in a thread: its result, what it raised, or a failure if it hangs."""
    outcome = {}

    def target():
        try:
            outcome["result"] = function()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    runner.join(timeout_s)
    if runner.is_alive():
        pytest.fail(f"still running after {timeout_s} s: a hang, not a clear failure")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.fixture(scope="module")
def client():
    """A ``distributed`` client of a LocalCluster of two worker processes, one thread each."""
    from distributed import Client, LocalCluster

    def start():
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        return cluster, Client(cluster, timeout=TIMEOUT_S, set_as_default=False)

    cluster, started = within(TIMEOUT_S, start)
    yield started
    within(TIMEOUT_S, lambda: (started.close(), cluster.close()))


def on_cluster(client, *arrays):
    """Compute ``arrays`` in one graph on the cluster; NumPy results."""
    futures = client.compute(list(arrays))
    return [future.result(timeout=TIMEOUT_S) for future in futures]


# ----------------------------------------------------------------------------- results


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES)
def test_layer_norm_gives_the_whole_arrays_bits(dtype, case):
    shape, axis, chunks = CASES[case]
    x, dy, _, weight, bias = inputs(shape, axis, dtype)
    y, mean, rstd = numba_ln.layer_norm(x, weight, bias, axis=axis, return_stats=True)
    dx, dweight, dbias = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight, axis=axis)

    lazy = nld.layer_norm(chunked(x, chunks), weight, bias, axis=axis, return_stats=True)
    lazy_grads = nld.layer_norm_backward(chunked(dy, chunks), chunked(x, chunks), *lazy[1:],
                                         weight, axis=axis)
    got = dask.compute(*lazy, *lazy_grads)
    for name, have, want in zip(("y", "mean", "rstd", "dx"), got, (y, mean, rstd, dx)):
        assert_same_bits(have, want, name)
    batch = chunked(x, chunks).chunks[:axis % x.ndim]
    assert lazy[0].chunks == chunked(x, chunks).chunks
    assert lazy[1].chunks == batch + ((1,),) * (x.ndim - axis % x.ndim)
    _, dweight_ref, dbias_ref = ref_layer_norm_backward(dy, x, weight, axis=axis, mean=mean,
                                                        rstd=rstd)
    for name, have, want, ref in (("dweight", got[4], dweight, dweight_ref),
                                  ("dbias", got[5], dbias, dbias_ref)):
        assert have.shape == want.shape and have.dtype == want.dtype, name
        assert rel_l2(have, ref) <= TOLERANCE[np.dtype(dtype)], name
    assert lazy_grads[1].dtype == dweight.dtype and lazy[1].dtype == mean.dtype


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["uneven-and-empty", "batch-in-2-dims"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_the_fused_residual_forms_give_the_whole_arrays_bits(dtype, case, norm):
    """``s`` where the top-level function returns it; ``dresidual`` added into ``dx``."""
    shape, axis, chunks = CASES[case]
    x, dy, residual, weight, bias = inputs(shape, axis, dtype, seed=1)
    if norm == "layer":
        whole = numba_ln.layer_norm(x, weight, bias, residual=residual, return_stats=True)
        lazy = nld.layer_norm(chunked(x, chunks), weight, bias, residual=residual,
                              return_stats=True)
    else:
        whole = numba_ln.rms_norm(x, weight, residual=residual, return_stats=True)
        # A residual chunked otherwise: both are brought to common chunks.
        lazy = nld.rms_norm(chunked(x, chunks), weight,
                            residual=chunked(residual, (4,) + shape[1:]), return_stats=True)
    assert len(lazy) == len(whole)
    for name, have, want in zip(("y", "s", "stat", "stat"), dask.compute(*lazy), whole):
        assert_same_bits(have, want, name)
    s, stats = whole[1], whole[2:]
    dy, dresidual = dy.astype(s.dtype), dy[::-1].astype(s.dtype)
    lazy_s = chunked(s, chunks)
    if norm == "layer":
        grads = numba_ln.layer_norm_backward(dy, s, *stats, weight, dresidual=dresidual)
        lazy_grads = nld.layer_norm_backward(dy, lazy_s, *lazy[2:], weight, dresidual=dresidual)
        ref = ref_layer_norm_backward(dy, s, weight, mean=stats[0], rstd=stats[1])
    else:
        grads = numba_ln.rms_norm_backward(dy, s, *stats, weight, dresidual=dresidual)
        lazy_grads = nld.rms_norm_backward(chunked(dy, chunks), lazy_s, lazy[2], weight,
                                           dresidual=chunked(dresidual, chunks))
        ref = ref_rms_norm_backward(dy, s, weight, rstd=stats[0])
    got = dask.compute(*lazy_grads)
    assert_same_bits(got[0], grads[0], "dx")
    for have, want, expected in zip(got[1:], grads[1:], ref[1:]):
        assert have.dtype == want.dtype and rel_l2(have, expected) <= TOLERANCE[s.dtype]


def test_one_batch_chunk_gives_the_top_level_sums():
    """The tree of one partial sum is that sum, rounded once: float16 gains included.

    The gain goes to the kernels in float32 (for float32 partial sums); ``dx``
    keeps its bits.
    """
    x, dy, _, weight, _ = inputs((50, 24), -1, np.float16)
    weight = weight.astype(np.float16)
    _, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    whole = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)
    got = dask.compute(*nld.layer_norm_backward(dy, chunked(x, (50, 24)), mean, rstd, weight))
    for name, have, want in zip(("dx", "dweight", "dbias"), got, whole):
        assert_same_bits(have, want, name)


def test_sums_are_the_same_bits_on_every_run_and_scheduler(client):
    """21 chunks: a tree of two levels. Another chunking may round otherwise, within tolerance."""
    rows, cols = 700, 96
    x, dy, _, weight, bias = inputs((rows, cols), -1, np.float32, seed=2)
    sizes = [13, 50, 2, 40] * 5 + [rows - 105 * 5]
    lazy_x, lazy_dy = chunked(x, (tuple(sizes), cols)), chunked(dy, (tuple(sizes), cols))
    y, mean, rstd = nld.layer_norm(lazy_x, weight, bias, return_stats=True)
    graph = (y, *nld.layer_norm_backward(lazy_dy, lazy_x, mean, rstd, weight))
    # Threads first: this process compiles (and caches) what the workers then load.
    first = dask.compute(*graph, scheduler="threads")
    runs = [dask.compute(*graph, scheduler="threads"), dask.compute(*graph, scheduler="sync"),
            on_cluster(client, *graph)]
    for run in runs:
        for name, have, want in zip(("y", "dx", "dweight", "dbias"), run, first):
            assert_same_bits(have, want, name)
    _, ref_dweight, ref_dbias = ref_layer_norm_backward(dy, x, weight, mean=mean.compute(),
                                                        rstd=rstd.compute())
    other = nld.layer_norm_backward(chunked(dy, (64, cols)), chunked(x, (64, cols)), mean, rstd,
                                    weight)
    for got, ref in zip((first[2:], dask.compute(*other[1:])), ((ref_dweight, ref_dbias),) * 2):
        assert all(rel_l2(g, r) <= TOLERANCE[np.dtype(np.float32)] for g, r in zip(got, ref))


def test_a_two_process_cluster_computes_the_threaded_bits(client):
    """Forward and backward of a 3-D float16 array, axis=1, a residual, on the workers."""
    x, dy, residual, weight, bias = inputs((12, 3, 40), 1, np.float16, seed=3)
    lazy_x = chunked(x, ((5, 7), 3, 40))
    y, s, mean, rstd = nld.layer_norm(lazy_x, weight, bias, axis=1, residual=residual,
                                      return_stats=True)
    graph = (y, s, mean, rstd, *nld.layer_norm_backward(
        dy.astype(np.float32), s, mean, rstd, weight, axis=1))
    threaded = dask.compute(*graph, scheduler="threads")
    workers = within(TIMEOUT_S, lambda: client.run(os.getpid))
    assert len(set(workers.values())) == 2 and os.getpid() not in workers.values()
    for name, have, want in zip(("y", "s", "mean", "rstd", "dx", "dweight", "dbias"),
                                on_cluster(client, *graph), threaded):
        assert_same_bits(have, want, name)


# ----------------------------------------------------------------------------- chunks


def test_split_rows_are_rechunked_with_a_warning():
    x, dy, _, weight, _ = inputs((20, 4, 10), 1, np.float32)
    split = chunked(x, (10, 2, 5))
    match = (r"x is split along normalized axes \(1, 2\) \(x\.chunks\[1\] = \(2, 2\), "
             r"x\.chunks\[2\] = \(5, 5\)\); .*all-to-all shuffle of x's 3\.1 KiB into chunks "
             r"of up to 1\.6 KiB.*x\.rechunk\(\{1: -1, 2: -1\}\)")
    with pytest.warns(nld.RechunkWarning, match=match):
        y, mean, rstd = nld.layer_norm(split, weight, axis=1, return_stats=True)
    assert issubclass(nld.RechunkWarning, dask.array.core.PerformanceWarning)
    assert y.chunks == ((10, 10), (4,), (10,))  # the batch keeps its chunks
    with pytest.warns(nld.RechunkWarning, match=r"^dy is split along normalized axes \(2,\)"):
        dx = nld.layer_norm_backward(chunked(dy, (5, 4, 2)), chunked(x, (10, 4, 10)), mean,
                                     rstd, weight, axis=1)[0]
    whole = numba_ln.layer_norm(x, weight, axis=1, return_stats=True)
    assert_same_bits(y.compute(), whole[0], "y")
    assert_same_bits(dx.compute(), numba_ln.layer_norm_backward(
        dy, x, *whole[1:], weight, axis=1)[0], "dx")


def test_rechunk_false_refuses_split_rows_and_says_how():
    x = chunked(np.ones((8, 6), np.float32), (4, 3))
    with pytest.raises(ValueError) as raised:
        nld.rms_norm(x, rechunk=False)
    assert str(raised.value) == (
        "x is split along normalized axes (1,) (x.chunks[1] = (3, 3)); expected each row "
        "(x.shape[1:]) in one chunk: rechunk it first, e.g. x = x.rechunk({1: -1}), or pass "
        "rechunk=True")
    rows_whole = chunked(np.ones((8, 6), np.float32), (4, 6))
    with pytest.raises(ValueError, match=r"^residual is split along normalized axes \(1,\)"):
        nld.layer_norm(rows_whole, residual=x, rechunk=False)


def test_dy_and_statistics_chunked_otherwise_are_brought_to_common_chunks():
    x, dy, _, weight, _ = inputs((21, 16), -1, np.float64)
    y, mean, rstd = numba_ln.layer_norm(x, weight, return_stats=True)
    lazy = nld.layer_norm_backward(chunked(dy, ((10, 11), 16)), chunked(x, ((5, 7, 9), 16)),
                                   mean.ravel(), chunked(rstd, ((3, 18), 1)), weight)
    assert lazy[0].chunks == ((3, 2, 5, 2, 9), (16,))
    assert_same_bits(lazy[0].compute(), numba_ln.layer_norm_backward(
        dy, x, mean, rstd, weight)[0], "dx")


def test_graphs_are_lazy_and_each_chunk_runs_once(monkeypatch):
    calls = {"forward": 0, "backward": 0}

    def counting(kind, real):
        def call(*args, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(api, "layer_norm", counting("forward", api.layer_norm))
    monkeypatch.setattr(api, "layer_norm_backward",
                        counting("backward", api.layer_norm_backward))
    x = chunked(np.ones((30, 8)), (7, 8))  # 5 chunks
    y, mean, rstd = nld.layer_norm(x, return_stats=True)
    grads = nld.layer_norm_backward(x, x, mean, rstd)
    assert calls == {"forward": 0, "backward": 0}
    dask.compute(y, *grads)
    assert calls == {"forward": 5, "backward": 5}


def test_an_array_of_no_rows_gives_the_top_level_results():
    x = np.ones((0, 8), np.float32)
    y, mean, rstd = nld.layer_norm(chunked(x, (4, 8)), return_stats=True)
    got = dask.compute(y, mean, rstd, *nld.layer_norm_backward(x, chunked(x, (4, 8)), mean, rstd))
    whole = numba_ln.layer_norm(x, return_stats=True)
    whole += numba_ln.layer_norm_backward(x, x, *whole[1:])
    for name, have, want in zip(("y", "mean", "rstd", "dx", "dweight", "dbias"), got, whole):
        assert_same_bits(have, want, name)


def test_dask_chunks_carry_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.linspace(-3, 3, 60).reshape(5, 12).astype(ml_dtypes.bfloat16)
    y = nld.layer_norm(chunked(x, (2, 12)))
    assert y.dtype == x.dtype and y._meta.dtype == x.dtype
    assert_same_bits(y.compute(), numba_ln.layer_norm(x), "y")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("function, given", [
    (nld.layer_norm, {"out": np.empty((4, 8))}),
    (nld.rms_norm, {"residual_out": np.empty((4, 8)), "residual": np.ones((4, 8))}),
    (nld.layer_norm_backward, {"out": np.empty((4, 8))}),
    (nld.rms_norm_backward, {"out": np.empty((4, 8))}),
])
def test_out_arguments_are_refused_with_what_to_do(function, given):
    x = chunked(np.ones((4, 8)), 2)
    args = (x,) if function in (nld.layer_norm, nld.rms_norm) else (
        (x, x, np.zeros(4), np.ones(4)) if function is nld.layer_norm_backward
        else (x, x, np.ones(4)))
    name = "residual_out" if "residual_out" in given else "out"
    with pytest.raises(TypeError) as raised:
        function(*args, **given)
    assert str(raised.value).startswith(
        f"numba_ln.dask.{function.__name__} takes no {name}= (expected None, got ndarray): "
        f"Dask arrays are immutable, so there is nothing to write into: use the returned "
        f"Dask array")
    assert "da.store(it, target)" in str(raised.value)


def test_a_stream_is_refused():
    with pytest.raises(TypeError, match=r"takes no stream= \(expected None, got object\): "
                                        r"chunks run in Dask's workers"):
        nld.layer_norm(chunked(np.ones((4, 8)), 2), stream=object())


def test_argument_errors_are_raised_when_the_graph_is_built():
    x = chunked(np.ones((4, 8), np.float32), (2, 8))
    with pytest.raises(ValueError, match=r"^weight has shape \(7,\); expected the normalized "
                                         r"shape \(8,\) \(x.shape\[1:\]\)$"):
        nld.layer_norm(x, np.ones(7))
    with pytest.raises(TypeError, match="^x has dtype int64; supported dtypes are"):
        nld.layer_norm(chunked(np.ones((4, 8), np.int64), 2))
    with pytest.raises(ValueError, match="^device must be None, 'cpu' or 'cuda', got 'gpu'$"):
        nld.rms_norm(x, device="gpu")
    with pytest.raises(ValueError, match=r"^rstd has 3 elements \(shape \(3,\)\); expected one "
                                         r"per row: 4"):
        nld.rms_norm_backward(x, x, np.ones(3))
    with pytest.raises(TypeError, match=r"^mean is None; expected the forward pass's mean"):
        nld.layer_norm_backward(x, x, None, np.ones(4))
    unknown = x[x[:, 0] > 0]  # rows known only once computed
    with pytest.raises(ValueError, match=r"^x has unknown chunk sizes \(shape \(nan, 8\)\); "
                                         r"expected known ones: call x.compute_chunk_sizes"):
        nld.layer_norm(unknown)


def test_import_without_dask_says_what_to_install():
    code = textwrap.dedent("""
        import sys
        sys.modules["dask"] = None  # as if Dask were not installed
        import numba_ln  # the package itself needs no Dask
        try:
            import numba_ln.dask
        except ImportError as error:
            print(error)
        else:
            print("imported")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "install numba-ln's dask extra: pip install 'numba-ln[dask]'" in done.stdout


# ----------------------------------------------------------------------------- example


def test_the_cluster_example_runs_and_checks_itself():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "dask_cluster.py"),
                           "--rows", "3000", "--cols", "64", "--chunk-rows", "700",
                           "--workers", "2", "--check"],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "y and dx: the bits of numba_ln on the whole array" in done.stdout
