"""Benchmark machinery shared by ``python -m numba_ln bench`` and ``bench/``.

Everything a benchmark needs except the clock lives here, once: the cases
(operation, shape, dtype), the competing implementations as zero-argument
callables, the bytes each case moves, the roofline kernels, the correctness
check run before any timing, and the timer the command line uses. The
pytest-benchmark files in ``bench/`` time the same callables with their own
fixture; the command line times them with :func:`measure`.

Conventions
-----------
- **Bytes moved** count the big arrays once each: forward reads ``x`` and
  writes ``y`` (``2 * x.nbytes``); backward reads ``x`` and ``dy`` and writes
  ``dx`` (``3 * x.nbytes``). ``weight``, ``bias``, the per-row statistics and
  ``dweight``/``dbias`` are not counted (they are at most ``1 / rows`` of the
  traffic).
- **Roofline**: a kernel that does nothing but stream the same bytes with the
  same pattern, measured in the same run. On the CPU, forward's roofline is a
  copy ``x -> y``; backward's reads two arrays and writes one (``dx = x ^ dy``
  on the raw bits). Each is measured two ways -- a numba ``prange`` kernel on
  every numba thread (compiled before timing, without fast-math) and NumPy's
  single-threaded call (``np.copyto``, which is libc's ``memcpy``, or
  ``np.bitwise_xor``) -- and the faster one is the roofline. On a GPU it is a
  device-to-device copy of the same number of bytes.
- **Times** are the best of several samples taken after a warm-up call (the
  warm-up compiles numba kernels and initialises GPU contexts); GPU callables
  synchronize the device before returning, so the clock covers the work. The
  command line times a case's implementations in interleaved rounds, the
  roofline sampled throughout, so that a noisy moment of the machine hits
  them all alike.
- Every implementation's output is checked against a float64 reference on a
  sample of rows before it is timed: a wrong result never becomes a number.
"""

import datetime
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numba
import numpy as np
from numba import prange

from . import _cache
from ._bench_timing import DEFAULT_BUDGET_S, Timing, measure, measure_interleaved
from ._cuda_backend import simulator_enabled
from .api import backends, layer_norm, layer_norm_backward

#: Schema tag of the JSON the command writes.
SCHEMA = "numba-ln-bench/1"

OPERATIONS = ("forward", "backward")
DTYPES = ("float32", "float16", "float64")
DEVICES = ("cpu", "cuda")
EPS = 1e-5

#: Transformer hidden sizes with many rows, odd sizes, and very long rows with
#: few rows. The two 64 Mi-element shapes (256 MiB per float32 array) are the
#: follow-up issue's CPU targets; the others hold about 32 Mi elements (64 MiB
#: per float16 array), so even float16 streams several times a large L3 cache,
#: while the default run stays short.
THROUGHPUT_SHAPES = ((32768, 768), (65536, 1024), (16384, 4096), (4096, 8192),
                     (32768, 1000), (8192, 4097), (512, 65536))
#: Where the call overhead dominates: latency, not bandwidth.
SMALL_SHAPES = ((1, 64), (1, 768), (8, 768))
#: The shapes at which the follow-up issue sets its CPU targets.
TARGET_SHAPES = ((65536, 1024), (16384, 4096))

#: ``--quick``: one target shape, one odd shape, one long-row shape, and latency.
QUICK_SHAPES = ((16384, 1024), (4096, 4097), (128, 65536), (1, 768))
#: Under ``pytest --benchmark-disable`` every benchmark runs once, as a test:
#: shapes small enough that the whole suite takes seconds, still covering the
#: serial and parallel kernels, an odd width and a long row.
SMOKE_SHAPES = ((64, 768), (256, 1000), (2, 4097))

#: Seconds of timed calls per measurement with ``--quick``.
QUICK_BUDGET_S = 0.1


class Unavailable(Exception):
    """An implementation cannot run for a case here; the message says why."""


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One benchmark table: an operation on one shape and dtype.

    Attributes
    ----------
    operation : {"forward", "backward"}
    rows, cols : int
        The 2-D problem: ``rows`` independent rows of ``cols`` elements.
    dtype : {"float32", "float16", "float64"}
    """

    operation: str
    rows: int
    cols: int
    dtype: str

    @property
    def shape(self):
        """``(rows, cols)``."""
        return (self.rows, self.cols)

    @property
    def label(self):
        """The shape as ``"ROWSxCOLS"``."""
        return f"{self.rows}x{self.cols}"

    @property
    def group(self):
        """pytest-benchmark group: ``"operation|ROWSxCOLS|dtype"``."""
        return f"{self.operation}|{self.label}|{self.dtype}"

    @property
    def bytes_moved(self):
        """Bytes the operation must move: ``x`` and ``y``, or ``x``, ``dy`` and ``dx``."""
        streams = 2 if self.operation == "forward" else 3
        return streams * self.rows * self.cols * np.dtype(self.dtype).itemsize

    @property
    def small(self):
        """True for the latency group, where bandwidth figures mean little."""
        return self.shape in SMALL_SHAPES or self.rows * self.cols < 1 << 14


def cases(shapes, dtypes=("float32", "float16"), operations=OPERATIONS):
    """Every (operation, shape, dtype) combination, shapes outermost.

    Parameters
    ----------
    shapes : iterable of (int, int)
    dtypes, operations : iterable of str

    Returns
    -------
    list of Case
        Ordered shape, then dtype, then operation, so that consecutive cases
        share their input arrays.
    """
    return [Case(op, rows, cols, dt) for rows, cols in shapes for dt in dtypes
            for op in operations]


def default_shapes():
    """The shapes of the default command-line run: throughput, then latency."""
    return THROUGHPUT_SHAPES + SMALL_SHAPES


def parse_shapes(text):
    """Parse ``"ROWSxCOLS,ROWSxCOLS,..."``.

    Parameters
    ----------
    text : str

    Returns
    -------
    tuple of (int, int)

    Raises
    ------
    ValueError
        An entry that is not two positive integers joined by ``x``.

    Examples
    --------
    >>> parse_shapes("65536x1024, 1x768")
    ((65536, 1024), (1, 768))
    """
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        match = re.fullmatch(r"(\d+)\s*x\s*(\d+)", item)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise ValueError(f"{item!r} is not ROWSxCOLS with positive integers "
                             f"(e.g. 65536x1024)")
        shapes.append((int(match[1]), int(match[2])))
    return tuple(shapes)


def parse_choices(text, allowed, what):
    """Parse a comma-separated subset of ``allowed``.

    Parameters
    ----------
    text : str
    allowed : sequence of str
    what : str
        The option's name, for the error message.

    Returns
    -------
    tuple of str
        In the order given, without repeats.

    Raises
    ------
    ValueError
        An entry not in ``allowed`` (the message lists the allowed values).

    Examples
    --------
    >>> parse_choices("float16,float32", DTYPES, "dtype")
    ('float16', 'float32')
    """
    chosen = []
    for item in text.split(","):
        item = item.strip()
        if item not in allowed:
            raise ValueError(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
        if item not in chosen:
            chosen.append(item)
    return tuple(chosen)


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The host arrays a case reads; ``mean``/``rstd`` come from numba-ln's forward."""

    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    dy: np.ndarray
    mean: np.ndarray
    rstd: np.ndarray


_BASE = {}


def _float32_draws(shape, seed):
    """``(x, dy, weight, bias)`` in float32 for a shape; the last shape's are kept,
    so the cases of one shape in several dtypes draw their numbers once."""
    key = (tuple(shape), seed)
    if key not in _BASE:
        _BASE.clear()
        rng = np.random.default_rng(seed)
        rows, cols = shape
        draws = []
        for size, scale, offset in (((rows, cols), 4.0, -1.5), ((rows, cols), 2.0, -1.0),
                                    (cols, 1.0, 0.5), (cols, 1.0, -0.5)):
            values = rng.random(size, dtype=np.float32)
            values *= scale
            values += offset
            draws.append(values)
        _BASE[key] = tuple(draws)
    return _BASE[key]


def make_inputs(shape, dtype, seed=0):
    """Random inputs for one shape and dtype (values of order 1, shifted off zero).

    Parameters
    ----------
    shape : (int, int)
    dtype : str
    seed : int, optional

    Returns
    -------
    Inputs
        The same numbers (rounded to ``dtype``) for every dtype of a shape.
    """
    dt = np.dtype(dtype)
    x, dy, weight, bias = (a.astype(dt, copy=False) for a in _float32_draws(shape, seed))
    _, mean, rstd = layer_norm(x, weight, bias, eps=EPS, return_stats=True)
    return Inputs(x, weight, bias, dy, mean, rstd)


# --------------------------------------------------------------------------- references


def numpy_forward(x, weight, bias, eps=EPS):
    """Layer norm in plain NumPy: the baseline a user would write.

    float16 is computed in float32, as numba-ln and PyTorch do. Temporaries
    are reused in place, so this is a fair NumPy program, not a slow one.

    Parameters
    ----------
    x : ndarray, shape (rows, cols)
    weight, bias : ndarray, shape (cols,)
    eps : float

    Returns
    -------
    y, mean, rstd : ndarray
        ``y`` in ``x``'s dtype; ``mean``/``rstd`` of shape ``(rows, 1)``.
    """
    compute = np.float32 if x.dtype == np.float16 else x.dtype
    mean = x.mean(axis=-1, keepdims=True, dtype=compute)
    xhat = np.subtract(x, mean, dtype=compute)
    var = np.einsum("ij,ij->i", xhat, xhat)[:, None]
    var /= x.shape[-1]
    var += eps
    rstd = np.sqrt(var)
    np.reciprocal(rstd, out=rstd)
    xhat *= rstd
    xhat *= weight
    xhat += bias
    return xhat.astype(x.dtype, copy=False), mean, rstd


def numpy_backward(dy, x, mean, rstd, weight):
    """Layer-norm gradients in plain NumPy (float16 computed in float32).

    Parameters
    ----------
    dy, x : ndarray, shape (rows, cols)
    mean, rstd : ndarray, one element per row
    weight : ndarray, shape (cols,)

    Returns
    -------
    dx, dweight, dbias : ndarray
    """
    compute = np.float32 if x.dtype == np.float16 else x.dtype
    mean = mean.reshape(-1, 1).astype(compute, copy=False)
    rstd = rstd.reshape(-1, 1).astype(compute, copy=False)
    xhat = np.subtract(x, mean, dtype=compute)
    xhat *= rstd
    dyc = dy.astype(compute, copy=False)
    dbias = dyc.sum(axis=0)
    dweight = np.einsum("ij,ij->j", dyc, xhat)
    g = dyc * weight.astype(compute, copy=False)
    cols = x.shape[-1]
    c1 = g.sum(axis=-1, keepdims=True) / cols
    c2 = np.einsum("ij,ij->i", g, xhat)[:, None] / cols
    g -= c1
    xhat *= c2
    g -= xhat
    g *= rstd
    return g.astype(x.dtype, copy=False), dweight, dbias


def _reference_rows(case, inputs):
    """Row indices checked, and the float64 reference output on them."""
    picks = np.unique(np.linspace(0, case.rows - 1, min(case.rows, 16)).astype(np.int64))
    x = inputs.x[picks].astype(np.float64)
    w = inputs.weight.astype(np.float64)
    b = inputs.bias.astype(np.float64)
    if case.operation == "forward":
        expected, _, _ = numpy_forward(x, w, b)
    else:
        mean = inputs.mean.reshape(-1)[picks].astype(np.float64)
        rstd = inputs.rstd.reshape(-1)[picks].astype(np.float64)
        expected, _, _ = numpy_backward(inputs.dy[picks].astype(np.float64), x, mean, rstd, w)
    return picks, expected


_TOLERANCE = {"float16": 2e-2, "float32": 2e-4, "float64": 1e-9}


def check_output(case, inputs, output):
    """Raise if ``output`` (an implementation's result) is wrong on sample rows.

    Parameters
    ----------
    case : Case
    inputs : Inputs
    output : array or tuple
        What the implementation returned (host or device arrays); the first
        element of a tuple is ``y`` or ``dx``.

    Raises
    ------
    AssertionError
        With the largest error and where it occurred.
    """
    first = output[0] if isinstance(output, (tuple, list)) else output
    picks, expected = _reference_rows(case, inputs)
    got = to_host(first).reshape(case.shape)[picks].astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(expected))))
    error = np.abs(got - expected)
    worst = float(np.nanmax(error)) if error.size else 0.0
    if not np.all(np.isfinite(got)) or worst > _TOLERANCE[case.dtype] * scale:
        raise AssertionError(f"{case.group}: result differs from the float64 reference "
                             f"by {worst:.3g} (tolerance {_TOLERANCE[case.dtype] * scale:.3g})")


def to_host(array):
    """A NumPy copy of a NumPy, numba-device or PyTorch array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


# --------------------------------------------------------------------------- roofline kernels

# Deliberately plain: no fast-math, no tricks. Each thread streams one
# contiguous chunk, the pattern that lets the hardware prefetchers run. The
# chunks are taken as views so the inner loop indexes from 0 with a known
# length: numba then drops its negative-index check and LLVM vectorizes it.


@_cache.jit(parallel=True)
def _copy_parallel(src, dst, chunks):
    n = dst.size
    step = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        lo = min(n, chunk * step)
        hi = min(n, lo + step)
        s, d = src[lo:hi], dst[lo:hi]
        for i in range(d.size):
            d[i] = s[i]


@_cache.jit(parallel=True)
def _xor_parallel(a, b, dst, chunks):
    n = dst.size
    step = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        lo = min(n, chunk * step)
        hi = min(n, lo + step)
        s, t, d = a[lo:hi], b[lo:hi], dst[lo:hi]
        for i in range(d.size):
            d[i] = s[i] ^ t[i]


def _raw(array):
    """A contiguous array's bytes as 1-D unsigned integers, as wide as evenly divides."""
    flat = array.reshape(-1).view(np.uint8)
    for wide in (np.uint64, np.uint32, np.uint16):
        if flat.size % np.dtype(wide).itemsize == 0:
            return flat.view(wide)
    return flat


def roofline_candidates(case, inputs, out=None):
    """The CPU roofline kernels for a case, as ``{name: callable}``.

    Parameters
    ----------
    case : Case
    inputs : Inputs
    out : ndarray, optional
        Where the kernels write: ``x.nbytes`` bytes, C-contiguous (default: a
        new array).

    Returns
    -------
    dict of str to callable
        Each callable moves :attr:`Case.bytes_moved` bytes in the case's
        pattern (forward: ``out = x``; backward: ``out = x ^ dy`` on the raw
        bits); all have been run once, so the numba kernels are compiled.
    """
    x = _raw(inputs.x)
    out = np.empty_like(x) if out is None else _raw(out).view(x.dtype)
    threads = numba.get_num_threads()
    if case.operation == "forward":
        found = {f"numba prange copy, {threads} threads":
                 lambda: _copy_parallel(x, out, threads),
                 "np.copyto": lambda: np.copyto(out, x)}
    else:
        dy = _raw(inputs.dy)
        found = {f"numba prange x^dy, {threads} threads":
                 lambda: _xor_parallel(x, dy, out, threads),
                 "np.bitwise_xor": lambda: np.bitwise_xor(x, dy, out=out)}
    for call in found.values():
        call()
    return found


# --------------------------------------------------------------------------- implementations


@dataclass(frozen=True)
class Implementation:
    """A competitor in the tables.

    Attributes
    ----------
    key : str
        Stable identifier (pytest ids, JSON).
    label : str
        Name printed in tables and plot legends.
    device : {"cpu", "cuda"}
    operations : tuple of str
    roofline : bool
        True for the copy that bounds the others.
    build : callable
        ``build(case, inputs, options) -> callable``: returns the timed
        zero-argument callable (it returns the result, checked before timing),
        or raises :class:`Unavailable`.
    """

    key: str
    label: str
    device: str
    operations: tuple
    roofline: bool
    build: Callable

    @property
    def id(self):
        """``"device-key"``, unique across implementations."""
        return f"{self.device}-{self.key}"


@dataclass
class Options:
    """Settings that change which implementations can run.

    Attributes
    ----------
    capi_lib : str or None
        Path to ``libnumba_ln.so``; None looks in the default places.
    choose_roofline : bool
        Time the roofline candidates and keep the faster (True), or take the
        first without timing (False: for runs that time nothing).
    """

    capi_lib: str = None
    choose_roofline: bool = True
    _cache: dict = field(default_factory=dict, repr=False)


def _build_numba_ln(case, inputs, options):
    x, w, b = inputs.x, inputs.weight, inputs.bias
    if case.operation == "forward":
        return lambda: layer_norm(x, w, b, eps=EPS)
    dy, mean, rstd = inputs.dy, inputs.mean, inputs.rstd
    return lambda: layer_norm_backward(dy, x, mean, rstd, w)


def _build_numba_ln_out(case, inputs, options):
    x, w, b = inputs.x, inputs.weight, inputs.bias
    result = np.empty_like(x)  # y, or dx: written in place call after call
    if case.operation == "forward":
        return lambda: layer_norm(x, w, b, eps=EPS, out=result)
    dy, mean, rstd = inputs.dy, inputs.mean, inputs.rstd
    return lambda: layer_norm_backward(dy, x, mean, rstd, w, out=result)


def _build_numpy(case, inputs, options):
    x, w, b = inputs.x, inputs.weight, inputs.bias
    if case.operation == "forward":
        return lambda: numpy_forward(x, w, b)
    dy, mean, rstd = inputs.dy, inputs.mean, inputs.rstd
    return lambda: numpy_backward(dy, x, mean, rstd, w)


def torch_module():
    """``torch``, or :class:`Unavailable` saying how to get it."""
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed (pip install torch, or "
                          "`make bench-deps`)") from None
    return torch


def _torch_call(case, inputs, device, sync):
    torch = torch_module()

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    x, w, b = tensor(inputs.x), tensor(inputs.weight), tensor(inputs.bias)
    shape = [case.cols]
    try:
        if case.operation == "forward":
            def call():
                y = torch.nn.functional.layer_norm(x, shape, w, b, EPS)
                sync()
                return y
        else:
            dy = tensor(inputs.dy)
            _, mean, rstd = torch.native_layer_norm(x, shape, w, b, EPS)
            backward = torch.ops.aten.native_layer_norm_backward

            def call():
                grads = backward(dy, x, shape, mean, rstd, w, b, [True, True, True])
                sync()
                return grads
        call()
    except RuntimeError as exc:  # e.g. a dtype this build has no kernel for
        raise Unavailable(f"PyTorch {torch.__version__}: {str(exc).splitlines()[0]}") from None
    return call


def _build_torch_cpu(case, inputs, options):
    return _torch_call(case, inputs, "cpu", lambda: None)


def gpu_unavailable_reason():
    """None when numba-ln's CUDA rows can be timed here, else why not."""
    if simulator_enabled():
        return "the numba CUDA simulator is on: its timings mean nothing"
    backend = backends()["cuda"]
    return None if backend.available else backend.detail


def _build_torch_cuda(case, inputs, options):
    torch = torch_module()
    if simulator_enabled():
        raise Unavailable("the numba CUDA simulator is on: GPU timings are skipped")
    if not torch.cuda.is_available():
        raise Unavailable(f"PyTorch {torch.__version__} sees no CUDA GPU")
    return _torch_call(case, inputs, "cuda", torch.cuda.synchronize)


def _numba_cuda():
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise Unavailable(reason)
    from numba import cuda
    return cuda


def _device_inputs(case, inputs, options):
    """The case's inputs on the GPU, kept while consecutive implementations use them."""
    key = ("cuda-inputs", id(inputs))
    if key not in options._cache:
        cuda = _numba_cuda()
        options._cache.clear()
        options._cache[key] = {name: cuda.to_device(np.ascontiguousarray(getattr(inputs, name)))
                               for name in ("x", "weight", "bias", "dy", "mean", "rstd")}
        options._cache[key]["_inputs"] = inputs  # keeps id(inputs) from being reused
    return options._cache[key]


def _build_numba_ln_cuda(case, inputs, options):
    cuda = _numba_cuda()
    d = _device_inputs(case, inputs, options)
    if case.operation == "forward":
        def call():
            y = layer_norm(d["x"], d["weight"], d["bias"], eps=EPS)
            cuda.synchronize()
            return y
    else:
        def call():
            grads = layer_norm_backward(d["dy"], d["x"], d["mean"], d["rstd"], d["weight"])
            cuda.synchronize()
            return grads
    return call


def _build_numba_ln_cuda_out(case, inputs, options):
    cuda = _numba_cuda()
    d = _device_inputs(case, inputs, options)
    result = cuda.device_array_like(d["x"])  # y, or dx

    if case.operation == "forward":
        def call():
            layer_norm(d["x"], d["weight"], d["bias"], eps=EPS, out=result)
            cuda.synchronize()
            return result
    else:
        def call():
            grads = layer_norm_backward(d["dy"], d["x"], d["mean"], d["rstd"], d["weight"],
                                        out=result)
            cuda.synchronize()
            return grads
    return call


def _build_roofline_cuda(case, inputs, options):
    cuda = _numba_cuda()
    nbytes = case.bytes_moved // 2  # a copy reads and writes each byte once
    src = cuda.to_device(np.zeros(nbytes, np.uint8))
    dst = cuda.device_array(nbytes, np.uint8)

    def call():
        dst.copy_to_device(src)
        cuda.synchronize()
    return call


def _build_roofline_cpu(case, inputs, options):
    """The faster of the roofline candidates, measured now (best of a few calls).

    :func:`run` does not come here: it times every candidate in its rounds.
    """
    candidates = roofline_candidates(case, inputs)
    if not options.choose_roofline:
        call = next(iter(candidates.values()))
        call.kernel = next(iter(candidates))
        return call
    best = min(candidates, key=lambda name: measure(candidates[name], budget_s=0.1,
                                                    max_samples=10).best_s)
    call = candidates[best]
    call.kernel = best
    return call


def _build_capi(case, inputs, options):
    from . import _bench_capi  # imports this module: loaded on first use

    return _bench_capi.build(case, inputs, options)


IMPLEMENTATIONS = (
    Implementation("roofline", "copy roofline", "cpu", OPERATIONS, True, _build_roofline_cpu),
    Implementation("numba_ln_out", "numba-ln (out=)", "cpu", OPERATIONS, False,
                   _build_numba_ln_out),
    Implementation("numba_ln", "numba-ln", "cpu", OPERATIONS, False, _build_numba_ln),
    Implementation("capi", "numba-ln C ABI", "cpu", OPERATIONS, False, _build_capi),
    Implementation("torch", "PyTorch", "cpu", OPERATIONS, False, _build_torch_cpu),
    Implementation("numpy", "NumPy", "cpu", OPERATIONS, False, _build_numpy),
    Implementation("roofline", "copy roofline", "cuda", OPERATIONS, True, _build_roofline_cuda),
    Implementation("numba_ln_out", "numba-ln (out=)", "cuda", OPERATIONS, False,
                   _build_numba_ln_cuda_out),
    Implementation("numba_ln", "numba-ln", "cuda", OPERATIONS, False, _build_numba_ln_cuda),
    Implementation("torch", "PyTorch", "cuda", OPERATIONS, False, _build_torch_cuda),
)


def implementations(operation=None, devices=DEVICES):
    """The implementations, optionally only those for an operation and devices.

    Parameters
    ----------
    operation : str, optional
    devices : iterable of str

    Returns
    -------
    list of Implementation
        Roofline first on each device, NumPy last.
    """
    return [impl for impl in IMPLEMENTATIONS if impl.device in devices
            and (operation is None or operation in impl.operations)]


@dataclass
class Prepared:
    """An implementation ready to time on one case.

    Attributes
    ----------
    impl : Implementation
    case : Case
    call : callable
        The zero-argument callable to time; already run once and checked.
    kernel : str or None
        For the roofline, which candidate won.
    """

    impl: Implementation
    case: Case
    call: Callable
    kernel: str = None


def prepare(impl, case, inputs, options=None):
    """Build an implementation's callable for a case, warm it up and check it.

    Parameters
    ----------
    impl : Implementation
    case : Case
    inputs : Inputs
    options : Options, optional

    Returns
    -------
    Prepared

    Raises
    ------
    Unavailable
        The implementation cannot run here (the message says why).
    AssertionError
        It ran but its result is wrong.
    """
    options = options or Options()
    call = impl.build(case, inputs, options)
    output = call()  # warm-up: JIT compilation, GPU context, first-touch pages
    if not impl.roofline:
        check_output(case, inputs, output)
    return Prepared(impl, case, call, getattr(call, "kernel", None))


def gbps(case, seconds):
    """GB/s (10**9 bytes per second) for a case done in ``seconds``."""
    return case.bytes_moved / seconds / 1e9


def extra_info(case, seconds=None, roofline=None, kernel=None):
    """The figures a benchmark records beside its time.

    Parameters
    ----------
    case : Case
    seconds : float, optional
        The implementation's time; without it only the bytes are recorded.
    roofline : Timing, optional
        The roofline measured in the same run.
    kernel : str, optional
        For a roofline row: the kernel that won.

    Returns
    -------
    dict
        ``bytes``, and with ``seconds`` ``gbps``; with ``roofline`` also
        ``roofline_gbps`` and ``roofline_fraction``.
    """
    info = {"bytes": case.bytes_moved, "operation": case.operation,
            "shape": case.label, "dtype": case.dtype}
    if kernel:
        info["kernel"] = kernel
    if seconds:
        info["gbps"] = gbps(case, seconds)
        if roofline is not None:
            info["roofline_gbps"] = gbps(case, roofline.best_s)
            info["roofline_fraction"] = roofline.best_s / seconds
    return info


# --------------------------------------------------------------------------- whole runs


class Progress:
    """A one-line progress bar on stderr (one line per step when not a terminal).

    Parameters
    ----------
    total : int
    stream : file, optional
    """

    def __init__(self, total, stream=None):
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def show(self, label, detail=None):
        """Show the step about to run (``detail``: the part of it, on a terminal only)."""
        if detail is not None:
            if not self.tty:
                return
            label = f"{label}: {detail}"
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"
        if self.tty:
            self.stream.write("\r" + line[:119].ljust(119))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step(self):
        """Count a finished step."""
        self.done += 1

    def close(self):
        """End the line."""
        if self.tty:
            self.stream.write("\r" + " " * 119 + "\r")
            self.stream.flush()


def run(case_list, devices=("cpu",), options=None, budget_s=DEFAULT_BUDGET_S,
        progress=None, skipped=None):
    """Measure every implementation on every case.

    Parameters
    ----------
    case_list : list of Case
    devices : iterable of str
    options : Options, optional
    budget_s : float
        Seconds of timed calls per implementation; the implementations of a
        case are timed in interleaved rounds (:func:`measure_interleaved`).
    progress : Progress, optional
    skipped : dict, optional
        Filled with ``{"label (device)": reasons}`` for implementations that
        could not run for some case (distinct reasons joined by ``"; "``).

    Returns
    -------
    list of dict
        One record per (case, implementation): the case, ``implementation``,
        ``device``, ``bytes``, ``best_s``, ``median_s``, ``samples``, ``loops``,
        ``gbps``, ``roofline_gbps``, ``roofline_fraction`` and the speedups
        over NumPy and PyTorch on the same device (None where absent).
    """
    options = options or Options()
    skipped = {} if skipped is None else skipped
    records = []
    inputs_key, inputs = None, None
    for case in case_list:
        if progress:
            progress.show(f"{case.group}")
        if inputs_key != (case.shape, case.dtype):
            inputs = None
            options._cache.clear()
            inputs_key, inputs = (case.shape, case.dtype), make_inputs(case.shape, case.dtype)
        entries = []  # (implementation, roofline kernel or None, warmed-up callable)
        for impl in implementations(case.operation, devices):
            if progress:
                progress.show(case.group, f"preparing {impl.label} ({impl.device})")
            if impl.roofline and impl.device == "cpu":
                # Every candidate is timed in the rounds; the fastest is the roofline.
                entries += [(impl, name, call) for name, call
                            in roofline_candidates(case, inputs).items()]
                continue
            try:
                prepared = prepare(impl, case, inputs, options)
            except Unavailable as exc:
                _note(skipped, f"{impl.label} ({impl.device})", str(exc))
                continue
            entries.append((impl, prepared.kernel, prepared.call))
        if progress:
            progress.show(case.group, f"timing {len(entries)} implementations")
        timings = measure_interleaved(
            [call for _, _, call in entries], budget_s,
            followers={i for i, (impl, _, _) in enumerate(entries) if impl.roofline})
        best = {}
        for (impl, kernel, _), timing in zip(entries, timings):
            if impl.id not in best or timing.best_s < best[impl.id][2].best_s:
                best[impl.id] = (impl, kernel, timing)
        group = list(best.values())
        del entries
        records.extend(_records(case, group))
        if progress:
            progress.step()
    options._cache.clear()
    _BASE.clear()
    if progress:
        progress.close()
    return records


def _note(skipped, name, reason):
    """Add a reason to ``skipped[name]`` unless it is there already."""
    known = skipped.get(name)
    if known is None:
        skipped[name] = reason
    elif reason not in known:
        skipped[name] = f"{known}; {reason}"


def _records(case, group):
    """Turn one case's timings into records with GB/s, roofline fraction, speedups."""
    by_key = {(impl.device, impl.key): timing for impl, _, timing in group}
    records = []
    for impl, kernel, timing in group:
        roofline = by_key.get((impl.device, "roofline"))
        numpy_t = by_key.get(("cpu", "numpy"))
        torch_t = by_key.get((impl.device, "torch"))
        records.append({
            "operation": case.operation, "rows": case.rows, "cols": case.cols,
            "shape": case.label, "dtype": case.dtype, "group": case.group,
            "small": case.small, "implementation": impl.label, "key": impl.key,
            "device": impl.device, "roofline": impl.roofline, "kernel": kernel,
            "bytes": case.bytes_moved, "best_s": timing.best_s,
            "median_s": timing.median_s, "samples": timing.samples, "loops": timing.loops,
            "gbps": gbps(case, timing.best_s),
            "roofline_gbps": gbps(case, roofline.best_s) if roofline else None,
            "roofline_fraction": roofline.best_s / timing.best_s if roofline else None,
            "speedup_vs_numpy": numpy_t.best_s / timing.best_s if numpy_t else None,
            "speedup_vs_torch": torch_t.best_s / timing.best_s if torch_t else None,
        })
    return records


def cpu_model():
    """The CPU's marketing name, as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """The 1-, 5- and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment():
    """Machine, versions and date, for the JSON and the README.

    Returns
    -------
    dict
        ``date`` (UTC, ISO 8601), ``machine`` (system, CPU model, cores,
        threads, threading layer, memory, GPU) and ``versions``.
    """
    versions = {"numba_ln": sys.modules["numba_ln"].__version__,
                "python": platform.python_version(), "numba": numba.__version__,
                "numpy": np.__version__}
    machine = {"system": platform.platform(), "architecture": platform.machine(),
               "cpu_model": cpu_model(), "cores": os.cpu_count(),
               "numba_threads": numba.get_num_threads()}
    try:
        machine["threading_layer"] = numba.threading_layer()
    except ValueError:
        machine["threading_layer"] = str(numba.config.THREADING_LAYER)
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        machine["memory_bytes"] = pages * page_size
    except (ValueError, OSError, AttributeError):
        machine["memory_bytes"] = None
    try:
        import torch
        versions["torch"] = torch.__version__
        machine["torch_threads"] = torch.get_num_threads()
    except ImportError:
        versions["torch"] = None
    try:
        import numba_cuda
        versions["numba_cuda"] = getattr(numba_cuda, "__version__", "unknown")
    except ImportError:
        versions["numba_cuda"] = None
    cuda = backends()["cuda"]
    machine["gpu"] = cuda.detail if cuda.available and not simulator_enabled() else None
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"date": date.isoformat(), "machine": machine, "versions": versions}
