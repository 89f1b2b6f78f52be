"""The benchmark cases: what is measured, on which inputs, and what a right answer is.

Conventions
-----------
- **Operations**: layer norm's ``forward`` and ``backward``
  (:data:`OPERATIONS`, the ones every device and the size curve measure),
  and on the CPU :data:`NORM_OPERATIONS`: ``rms_forward`` (``rms_norm``),
  and the fused residual add ``add_ln_forward`` / ``add_rms_forward``
  (``s = x + residual`` then the norm of ``s``; ``y`` and ``s`` returned).
- **Bytes moved** count the big arrays once each: forward and rms_forward
  read ``x`` and write ``y`` (``2 * x.nbytes``); backward reads ``x`` and
  ``dy`` and writes ``dx`` (``3 * x.nbytes``); the fused add reads ``x`` and
  the residual and writes ``y`` and ``s`` (``4 * x.nbytes``: twice a
  copy's). ``weight``, ``bias``, the per-row statistics and
  ``dweight``/``dbias`` are not counted (they are at most ``1 / rows`` of the
  traffic).
- **bfloat16** is ``ml_dtypes.bfloat16`` (NumPy has none; ``ml_dtypes`` is
  a test extra, imported only when a bfloat16 case runs): its inputs are the
  float32 draws rounded to it, as float16's are, and like float16 it is
  computed in float32 by numba-ln, NumPy and PyTorch alike.
- Every implementation's output is checked against a float64 reference on a
  sample of rows before it is timed: a wrong result never becomes a number.
"""

import re
from dataclasses import dataclass

import numpy as np

from numba_ln import layer_norm

#: Layer norm's: on every device, in the size curve and in ``bench/gpu.py``.
OPERATIONS = ("forward", "backward")
#: RMSNorm's forward and the fused residual add + norm (issue 17), CPU only.
NORM_OPERATIONS = ("rms_forward", "add_ln_forward", "add_rms_forward")
#: The operations that add a residual first: they return ``(y, s)``.
RESIDUAL_OPERATIONS = ("add_ln_forward", "add_rms_forward")
ALL_OPERATIONS = OPERATIONS + NORM_OPERATIONS
#: Arrays of ``x``'s size each operation streams (bytes moved = this * x.nbytes).
STREAMS = {"forward": 2, "backward": 3, "rms_forward": 2, "add_ln_forward": 4,
           "add_rms_forward": 4}
DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Stored in 16 bits, computed in float32.
HALF_DTYPES = ("float16", "bfloat16")
#: The pytest-benchmark suite's (``bench/bench_*.py``).
BENCH_DTYPES = ("float32", "float16", "bfloat16")
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
#: Where :data:`NORM_OPERATIONS` run when no ``--shapes`` are given: issue 17's
#: target shapes and one latency shape (``--quick``: the first and last of
#: :data:`QUICK_SHAPES`).
NORM_SHAPES = TARGET_SHAPES + ((1, 768),)
QUICK_NORM_SHAPES = ((16384, 1024), (1, 768))
#: Under ``pytest --benchmark-disable`` every benchmark runs once, as a test:
#: shapes small enough that the whole suite takes seconds, still covering the
#: serial and parallel kernels, an odd width and a long row.
SMOKE_SHAPES = ((64, 768), (256, 1000), (2, 4097))


# --------------------------------------------------------------------------- dtypes

#: Bytes per element of each of :data:`DTYPES` (known without importing ml_dtypes).
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def dtype_unavailable_reason(name):
    """None when the dtype ``name`` can be made here, else why not (one line).

    Examples
    --------
    >>> dtype_unavailable_reason("float16") is None
    True
    """
    if name != "bfloat16":
        return None
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return ("bfloat16 needs ml_dtypes (pip install ml_dtypes, or `make venv`: "
                "it is a test extra)")
    return None


def numpy_dtype(name):
    """The NumPy dtype of one of :data:`DTYPES`; bfloat16 is ``ml_dtypes.bfloat16``'s.

    Raises
    ------
    ImportError
        bfloat16 without ml_dtypes (the message says how to get it).

    Examples
    --------
    >>> numpy_dtype("float16")
    dtype('float16')
    """
    if name == "bfloat16":
        reason = dtype_unavailable_reason(name)
        if reason is not None:
            raise ImportError(reason)
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _compute_dtype(dtype):
    """What NumPy computes a dtype in: float32 for the 16-bit ones, else the dtype."""
    return np.dtype(np.float32) if dtype.itemsize == 2 else dtype


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One benchmark table: an operation on one shape and dtype.

    Attributes
    ----------
    operation : str
        One of :data:`ALL_OPERATIONS`.
    rows, cols : int
        The 2-D problem: ``rows`` independent rows of ``cols`` elements.
    dtype : {"float32", "float16", "bfloat16", "float64"}
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
        """Bytes the operation must move: :data:`STREAMS` arrays of ``x``'s size."""
        return STREAMS[self.operation] * self.rows * self.cols * ITEMSIZE[self.dtype]

    @property
    def residual(self):
        """True for the fused residual add (the result is ``(y, s)``)."""
        return self.operation in RESIDUAL_OPERATIONS

    @property
    def rms(self):
        """True for RMSNorm's operations (no centering, no bias)."""
        return self.operation in ("rms_forward", "add_rms_forward")

    @property
    def small(self):
        """True for the latency group, where bandwidth figures mean little."""
        return self.shape in SMALL_SHAPES or self.rows * self.cols < 1 << 14


def cases(shapes, dtypes=("float32", "float16"), operations=OPERATIONS, norm_shapes=None):
    """Every (operation, shape, dtype) combination, shapes outermost.

    Parameters
    ----------
    shapes : iterable of (int, int)
    dtypes, operations : iterable of str
    norm_shapes : iterable of (int, int), optional
        Where the operations of :data:`NORM_OPERATIONS` run (default:
        ``shapes``); shapes in it but not in ``shapes`` come last.

    Returns
    -------
    list of Case
        Ordered shape, then dtype, then operation, so that consecutive cases
        share their input arrays.

    Examples
    --------
    >>> [c.group for c in cases([(2, 8)], ["float32"], ["forward", "rms_forward"], [])]
    ['forward|2x8|float32']
    """
    shapes = [tuple(s) for s in shapes]
    norm_shapes = shapes if norm_shapes is None else [tuple(s) for s in norm_shapes]
    found = []
    for rows, cols in shapes + [s for s in norm_shapes if s not in shapes]:
        for dt in dtypes:
            for op in operations:
                if (rows, cols) in (norm_shapes if op in NORM_OPERATIONS else shapes):
                    found.append(Case(op, rows, cols, dt))
    return found


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


def shapes_text(shapes):
    """The inverse of :func:`parse_shapes`: ``"ROWSxCOLS,ROWSxCOLS,..."``.

    Examples
    --------
    >>> shapes_text(((65536, 1024), (1, 768)))
    '65536x1024,1x768'
    """
    return ",".join(f"{rows}x{cols}" for rows, cols in shapes)


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

    @property
    def residual(self):
        """The residual the fused add reads: ``dy``'s numbers (``x``'s shape and
        dtype, values of order 1), so no case holds a fifth big array. No
        operation reads both, and none writes to it."""
        return self.dy


def draw(shape, seed=0):
    """The float32 numbers every dtype of a shape is made from.

    Parameters
    ----------
    shape : (int, int)
    seed : int, optional

    Returns
    -------
    tuple of ndarray
        ``(x, dy, weight, bias)`` in float32, values of order 1 shifted off zero.
    """
    rng = np.random.default_rng(seed)
    rows, cols = shape
    draws = []
    for size, scale, offset in (((rows, cols), 4.0, -1.5), ((rows, cols), 2.0, -1.0),
                                (cols, 1.0, 0.5), (cols, 1.0, -0.5)):
        values = rng.random(size, dtype=np.float32)
        values *= scale
        values += offset
        draws.append(values)
    return tuple(draws)


def make_inputs(shape, dtype, seed=0, draws=None):
    """Random inputs for one shape and dtype.

    Parameters
    ----------
    shape : (int, int)
    dtype : str
    seed : int, optional
    draws : tuple of ndarray, optional
        What :func:`draw` returned for ``shape`` and ``seed``, to reuse them.

    Returns
    -------
    Inputs
        The same numbers (rounded to ``dtype``) for every dtype of a shape.
    """
    dt = numpy_dtype(dtype)
    draws = draw(shape, seed) if draws is None else draws
    x, dy, weight, bias = (a.astype(dt, copy=False) for a in draws)
    _, mean, rstd = layer_norm(x, weight, bias, eps=EPS, return_stats=True)
    return Inputs(x, weight, bias, dy, mean, rstd)


# --------------------------------------------------------------------------- references


def numpy_forward(x, weight, bias, eps=EPS):
    """Layer norm in plain NumPy: the baseline a user would write.

    float16 and bfloat16 are computed in float32, as numba-ln and PyTorch do. Temporaries
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
    compute = _compute_dtype(x.dtype)
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


def numpy_rms_forward(x, weight, eps=EPS):
    """RMSNorm in plain NumPy (16-bit dtypes computed in float32), temporaries in place.

    Parameters
    ----------
    x : ndarray, shape (rows, cols)
    weight : ndarray, shape (cols,)
    eps : float

    Returns
    -------
    y, rstd : ndarray
        ``y`` in ``x``'s dtype; ``rstd = 1 / sqrt(mean(x**2) + eps)`` of shape
        ``(rows, 1)``.
    """
    compute = _compute_dtype(x.dtype)
    xc = x.astype(compute, copy=False)
    ms = np.einsum("ij,ij->i", xc, xc)[:, None]
    ms /= x.shape[-1]
    ms += eps
    rstd = np.sqrt(ms)
    np.reciprocal(rstd, out=rstd)
    y = xc * rstd
    y *= weight
    return y.astype(x.dtype, copy=False), rstd


def numpy_add_forward(x, residual, weight, bias, rms=False, eps=EPS):
    """``s = x + residual``, then layer norm (or RMSNorm) of ``s``, in plain NumPy.

    Returns
    -------
    y, s : ndarray
    """
    s = np.add(x, residual)
    y = numpy_rms_forward(s, weight, eps)[0] if rms else numpy_forward(s, weight, bias, eps)[0]
    return y, s


def numpy_backward(dy, x, mean, rstd, weight):
    """Layer-norm gradients in plain NumPy (16-bit dtypes computed in float32).

    Parameters
    ----------
    dy, x : ndarray, shape (rows, cols)
    mean, rstd : ndarray, one element per row
    weight : ndarray, shape (cols,)

    Returns
    -------
    dx, dweight, dbias : ndarray
    """
    compute = _compute_dtype(x.dtype)
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
    """Row indices checked, and the float64 reference output on them (``(y, s)`` for
    the fused residual add)."""
    picks = np.unique(np.linspace(0, case.rows - 1, min(case.rows, 16)).astype(np.int64))
    x = inputs.x[picks].astype(np.float64)
    w = inputs.weight.astype(np.float64)
    b = inputs.bias.astype(np.float64)
    if case.residual:
        expected = numpy_add_forward(x, inputs.residual[picks].astype(np.float64), w, b,
                                     rms=case.rms)
    elif case.operation == "rms_forward":
        expected, _ = numpy_rms_forward(x, w)
    elif case.operation == "forward":
        expected, _, _ = numpy_forward(x, w, b)
    else:
        mean = inputs.mean.reshape(-1)[picks].astype(np.float64)
        rstd = inputs.rstd.reshape(-1)[picks].astype(np.float64)
        expected, _, _ = numpy_backward(inputs.dy[picks].astype(np.float64), x, mean, rstd, w)
    return picks, expected


#: Largest error allowed, relative to the larger of 1 and the reference's largest
#: magnitude. bfloat16's significand has 8 bits, so its spacing at 1 is 2**-7:
#: the bound is four such spacings (every competitor's worst at the smoke and
#: small shapes, computed in float32 and rounded once, was 0.64 of one).
_TOLERANCE = {"float16": 2e-2, "bfloat16": 4 * 2.0**-7, "float32": 2e-4, "float64": 1e-9}


def check_output(case, inputs, output):
    """Raise if ``output`` (an implementation's result) is wrong on sample rows.

    Parameters
    ----------
    case : Case
    inputs : Inputs
    output : array or tuple
        What the implementation returned (host or device arrays); the first
        element of a tuple is ``y`` or ``dx``, for the fused residual add the
        second is ``s`` (checked too).

    Raises
    ------
    AssertionError
        With the largest error and where it occurred.
    """
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    picks, expected = _reference_rows(case, inputs)
    checked = [("result", outputs[0], expected)]
    if case.residual:
        if len(outputs) < 2:
            raise AssertionError(f"{case.group}: no residual sum s returned beside y")
        checked = [("result", outputs[0], expected[0]), ("residual sum s", outputs[1],
                                                         expected[1])]
    for what, got, want in checked:
        got = to_host(got).reshape(case.shape)[picks].astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(want))))
        error = np.abs(got - want)
        worst = float(np.nanmax(error)) if error.size else 0.0
        tolerance = _TOLERANCE[case.dtype] * scale
        if not np.all(np.isfinite(got)) or worst > tolerance:
            raise AssertionError(f"{case.group}: {what} differs from the float64 reference "
                                 f"by {worst:.3g} (tolerance {tolerance:.3g})")


def to_host(array):
    """A NumPy copy of a NumPy, numba-device or PyTorch array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: the bits cross
            import torch
            return array.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
        return array.numpy()
    return np.asarray(array)




def figures(case, seconds, roofline_s=None):
    """The rates of a case done in ``seconds``, beside the roofline's.

    Parameters
    ----------
    case : Case
    seconds : float
        The implementation's best time.
    roofline_s : float, optional
        The roofline's best time in the same run.

    Returns
    -------
    dict
        ``gbps`` (10**9 bytes moved per second), ``roofline_gbps`` and
        ``roofline_fraction`` (the roofline's time over this one; None
        without a roofline).

    Examples
    --------
    >>> figures(Case("forward", 1, 1000, "float32"), 4e-6, 2e-6)["roofline_fraction"]
    0.5
    """
    return {"gbps": case.bytes_moved / seconds / 1e9,
            "roofline_gbps": case.bytes_moved / roofline_s / 1e9 if roofline_s else None,
            "roofline_fraction": roofline_s / seconds if roofline_s else None}
