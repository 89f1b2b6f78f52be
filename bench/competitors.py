"""The implementations compared: each one a zero-argument callable per case.

numba-ln (allocating, and writing into ``out=``), plain NumPy, PyTorch, the
numba-ln C ABI (``libnumba_ln.so`` through cffi), numba-ln and PyTorch on a
GPU, and the copy roofline that bounds them all. The size curve has a list of
its own (:data:`CURVE_COMPETITORS`): numba-ln and PyTorch's aten kernels, both
allocating and returning the statistics, NumPy and the roofline.

- **Roofline**: a kernel that does nothing but stream the same bytes with the
  same pattern. On the CPU, forward's (and rms_forward's) roofline is a copy
  ``x -> y``; backward's reads two arrays and writes one (``dx = x ^ dy`` on
  the raw bits); the fused residual add's reads two and writes two (``x ->
  y`` and ``residual -> s``: twice a copy's bytes). Each comes two ways --
  a numba ``prange`` kernel on every numba thread (no fast-math) and
  NumPy's single-threaded call (``np.copyto``, which is libc's ``memcpy``,
  or ``np.bitwise_xor``; ``np.copyto`` twice for the fused add) -- and the
  faster one in the same timing rounds is the roofline. On a GPU it is a
  device-to-device copy of the same number of bytes.
- **The fused residual add** (``add_ln_forward``, ``add_rms_forward``) has
  ``y`` and ``s`` preallocated in its ``out=`` row (``out=``,
  ``residual_out=``), beside *numba-ln unfused* (``np.add(x, r, out=s)``,
  then the norm of ``s`` with ``out=``: what a user writes without the
  fused form) and PyTorch (``torch.add(x, r, out=s)`` into a preallocated
  ``s``, then ``F.layer_norm`` / ``F.rms_norm``, which take no ``out=`` and
  allocate ``y``; PyTorch's CPU has no fused form).
- Layer norm's ``forward`` and ``backward`` run on every device; the
  operations of :data:`~bench.cases.NORM_OPERATIONS` on the CPU only.
- GPU callables synchronize the device before returning, so the clock covers
  the work.
- A competitor that cannot run here raises :class:`Unavailable` with the
  reason (PyTorch not installed, no C library, no GPU); the run goes on
  without it.
"""

import contextlib
import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cffi
import numba
import numpy as np
from numba import prange

from numba_ln import backends, layer_norm, layer_norm_backward

from numba_ln import rms_norm

from .cases import (ALL_OPERATIONS, EPS, HALF_DTYPES, OPERATIONS, RESIDUAL_OPERATIONS,
                    check_output, draw, make_inputs, numpy_add_forward, numpy_backward,
                    numpy_forward, numpy_rms_forward)

DEVICES = ("cpu", "cuda")
ROOT = Path(__file__).resolve().parent.parent


class Unavailable(Exception):
    """An implementation cannot run for a case here; the message says why."""


@dataclass(frozen=True)
class Competitor:
    """An implementation in the tables.

    Attributes
    ----------
    key : str
        Stable identifier (pytest ids, JSON).
    label : str
        Name printed in tables and plot legends.
    device : {"cpu", "cuda"}
    roofline : bool
        True for the copy that bounds the others.
    build : callable
        ``build(case, inputs, workspace)``: the zero-argument callable to time
        (it returns the result, checked before timing), or for the roofline a
        dict of such callables by kernel name; raises :class:`Unavailable`.
    operations : tuple of str
        The operations it implements (default: every one of
        :data:`~bench.cases.ALL_OPERATIONS`).
    """

    key: str
    label: str
    device: str
    roofline: bool
    build: Callable
    operations: tuple = ALL_OPERATIONS

    @property
    def id(self):
        """``"device-key"``, unique across competitors."""
        return f"{self.device}-{self.key}"


class Workspace:
    """The inputs of the case in hand, on the host and the GPU, and the run's options.

    Consecutive cases of one shape share their random numbers, and of one
    shape and dtype their arrays; anything older is let go, so a run holds
    one case's arrays at a time.

    Parameters
    ----------
    capi_lib : str or Path, optional
        The ``libnumba_ln.so`` for the C ABI rows (default: see
        :func:`find_capi_library`).
    """

    def __init__(self, capi_lib=None):
        self.capi_lib = capi_lib
        self.clear()

    def clear(self):
        """Let go of every array."""
        self._shape = self._draws = None
        self._dtype = self._inputs = None
        self._device = None

    def inputs(self, case):
        """The :class:`~bench.cases.Inputs` of ``case``'s shape and dtype."""
        if case.shape != self._shape:
            self.clear()
            self._shape, self._draws = case.shape, draw(case.shape)
        if case.dtype != self._dtype:
            self._inputs = self._device = None
            self._dtype = case.dtype
            self._inputs = make_inputs(case.shape, case.dtype, draws=self._draws)
        return self._inputs

    def device_inputs(self, case):
        """``case``'s inputs copied to the GPU once, as a dict of numba device arrays."""
        inputs = self.inputs(case)
        if self._device is None:
            cuda = _numba_cuda()
            self._device = {name: cuda.to_device(np.ascontiguousarray(getattr(inputs, name)))
                            for name in ("x", "weight", "bias", "dy", "mean", "rstd")}
        return self._device


# --------------------------------------------------------------------------- numba-ln, NumPy


def _norm(case, inputs):
    """The forward norm of ``case`` as ``norm(x, **options)``: layer norm or RMSNorm."""
    w, b = inputs.weight, inputs.bias
    if case.rms:
        return lambda x, **options: rms_norm(x, w, eps=EPS, **options)
    return lambda x, **options: layer_norm(x, w, b, eps=EPS, **options)


def _build_numba_ln(case, inputs, workspace):
    x, w, b = inputs.x, inputs.weight, inputs.bias
    if case.operation == "backward":
        dy, mean, rstd = inputs.dy, inputs.mean, inputs.rstd
        return lambda: layer_norm_backward(dy, x, mean, rstd, w)
    norm = _norm(case, inputs)
    if case.residual:
        r = inputs.residual
        return lambda: norm(x, residual=r)
    return lambda: norm(x)


def _build_numba_ln_stats(case, inputs, workspace):
    if case.operation == "forward":
        x, w, b = inputs.x, inputs.weight, inputs.bias
        return lambda: layer_norm(x, w, b, eps=EPS, return_stats=True)
    return _build_numba_ln(case, inputs, workspace)


def _build_numba_ln_out(case, inputs, workspace):
    x, w, b = inputs.x, inputs.weight, inputs.bias
    result = np.empty_like(x)  # y, or dx: written in place call after call
    if case.operation == "backward":
        dy, mean, rstd = inputs.dy, inputs.mean, inputs.rstd
        return lambda: layer_norm_backward(dy, x, mean, rstd, w, out=result)
    norm = _norm(case, inputs)
    if case.residual:
        r, s = inputs.residual, np.empty_like(inputs.residual)
        return lambda: norm(x, out=result, residual=r, residual_out=s)
    return lambda: norm(x, out=result)


def _build_numba_ln_unfused(case, inputs, workspace):
    """``s = x + r`` by NumPy into ``s``, then numba-ln's norm of ``s`` into ``y``."""
    x, r = inputs.x, inputs.residual
    y, s = np.empty_like(x), np.empty_like(r)
    norm = _norm(case, inputs)

    def call():
        np.add(x, r, out=s)
        return norm(s, out=y), s
    return call


def _build_numpy(case, inputs, workspace):
    x, w, b = inputs.x, inputs.weight, inputs.bias
    if case.operation == "forward":
        return lambda: numpy_forward(x, w, b)
    if case.operation == "rms_forward":
        return lambda: numpy_rms_forward(x, w)
    if case.residual:
        r = inputs.residual
        return lambda: numpy_add_forward(x, r, w, b, rms=case.rms)
    dy, mean, rstd = inputs.dy, inputs.mean, inputs.rstd
    return lambda: numpy_backward(dy, x, mean, rstd, w)


# --------------------------------------------------------------------------- PyTorch


def torch_module():
    """``torch``, or :class:`Unavailable` saying how to get it."""
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed (pip install torch, or "
                          "`make bench-deps`)") from None
    except OSError as exc:  # a wheel whose shared libraries do not load
        raise Unavailable(f"PyTorch does not load: {exc}") from None
    return torch


def torch_no_grad():
    """``torch.no_grad()``, or a context that does nothing where PyTorch is missing."""
    try:
        return torch_module().no_grad()
    except Unavailable:
        return contextlib.nullcontext()


def _torch_call(case, inputs, device, sync, kernels=False):
    """PyTorch's forward or backward as a callable; ``kernels``: aten's forward with statistics."""
    torch = torch_module()

    def tensor(a):
        a = np.ascontiguousarray(a)
        if a.dtype.name == "bfloat16":  # ml_dtypes': torch takes it through its bits
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
        return torch.from_numpy(a).to(device)

    x, w, b = tensor(inputs.x), tensor(inputs.weight), tensor(inputs.bias)
    shape = [case.cols]
    functional = torch.nn.functional
    try:
        if case.operation in ("rms_forward",) + RESIDUAL_OPERATIONS:
            if kernels:
                raise Unavailable(f"no aten kernel call for {case.operation}")
            norm = ((lambda a: functional.rms_norm(a, shape, w, EPS)) if case.rms
                    else (lambda a: functional.layer_norm(a, shape, w, b, EPS)))
            if case.residual:
                r = tensor(inputs.residual)
                s = torch.empty_like(r)

                def call():  # F.layer_norm / F.rms_norm take no out=
                    torch.add(x, r, out=s)
                    y = norm(s)
                    sync()
                    return y, s
            else:
                def call():
                    y = norm(x)
                    sync()
                    return y
        elif case.operation == "forward":
            forward = (torch.ops.aten.native_layer_norm if kernels
                       else torch.nn.functional.layer_norm)

            def call():
                y = forward(x, shape, w, b, EPS)
                sync()
                return y
        else:
            dy = tensor(inputs.dy)
            _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, w, b, EPS)
            backward = torch.ops.aten.native_layer_norm_backward

            def call():
                grads = backward(dy, x, shape, mean, rstd, w, b, [True, True, True])
                sync()
                return grads
        call()
    except RuntimeError as exc:  # e.g. a dtype this build has no kernel for
        raise Unavailable(f"PyTorch {torch.__version__}: {str(exc).splitlines()[0]}") from None
    return call


def _build_torch_cpu(case, inputs, workspace):
    return _torch_call(case, inputs, "cpu", lambda: None)


def _build_torch_kernels(case, inputs, workspace):
    return _torch_call(case, inputs, "cpu", lambda: None, kernels=True)


def _build_torch_cuda(case, inputs, workspace):
    torch = torch_module()
    if numba.config.ENABLE_CUDASIM:
        raise Unavailable("the numba CUDA simulator is on: GPU timings are skipped")
    if not torch.cuda.is_available():
        raise Unavailable(f"PyTorch {torch.__version__} sees no CUDA GPU")
    return _torch_call(case, inputs, "cuda", torch.cuda.synchronize)


# --------------------------------------------------------------------------- numba-ln on a GPU


def gpu_unavailable_reason():
    """None when numba-ln's CUDA rows can be timed here, else why not (one line)."""
    if numba.config.ENABLE_CUDASIM:
        return "the numba CUDA simulator is on: its timings mean nothing"
    backend = backends()["cuda"]
    return None if backend.available else " ".join(backend.detail.split())


def _numba_cuda():
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise Unavailable(reason)
    from numba import cuda
    return cuda


def _build_numba_ln_cuda(case, inputs, workspace, out=False):
    cuda = _numba_cuda()
    if case.dtype == "bfloat16":
        try:  # numba knows no bfloat16; numba-ln's GPU side may not take it yet
            call = _numba_ln_cuda_call(case, workspace, out, cuda)
            call()
        except (TypeError, NotImplementedError, ValueError) as exc:
            raise Unavailable(f"bfloat16 on the GPU: {str(exc).splitlines()[0]}") from None
        return call
    return _numba_ln_cuda_call(case, workspace, out, cuda)


def _numba_ln_cuda_call(case, workspace, out, cuda):
    d = workspace.device_inputs(case)
    result = {"out": cuda.device_array_like(d["x"])} if out else {}  # y, or dx
    if case.operation == "forward":
        def call():
            y = layer_norm(d["x"], d["weight"], d["bias"], eps=EPS, **result)
            cuda.synchronize()
            return y
    else:
        def call():
            grads = layer_norm_backward(d["dy"], d["x"], d["mean"], d["rstd"], d["weight"],
                                        **result)
            cuda.synchronize()
            return grads
    return call


def _build_roofline_cuda(case, inputs, workspace):
    cuda = _numba_cuda()
    nbytes = case.bytes_moved // 2  # a copy reads and writes each byte once
    src = cuda.to_device(np.zeros(nbytes, np.uint8))
    dst = cuda.device_array(nbytes, np.uint8)

    def call():
        dst.copy_to_device(src)
        cuda.synchronize()
    return {"device-to-device copy": call}


# --------------------------------------------------------------------------- CPU roofline

# Deliberately plain: no fast-math, no tricks. Each thread streams one
# contiguous chunk, the pattern that lets the hardware prefetchers run. The
# chunks are taken as views so the inner loop indexes from 0 with a known
# length: numba then drops its negative-index check and LLVM vectorizes it.


@numba.njit(inline="always")
def _chunk(n, chunks, chunk):
    step = (n + chunks - 1) // chunks
    lo = min(n, chunk * step)
    return lo, min(n, lo + step)


@numba.njit(parallel=True, cache=True)
def _copy_parallel(src, dst, chunks):
    for chunk in prange(chunks):
        lo, hi = _chunk(dst.size, chunks, chunk)
        s, d = src[lo:hi], dst[lo:hi]
        for i in range(d.size):
            d[i] = s[i]


@numba.njit(parallel=True, cache=True)
def _copy2_parallel(a, b, dst_a, dst_b, chunks):
    for chunk in prange(chunks):
        lo, hi = _chunk(dst_a.size, chunks, chunk)
        s, t, d, e = a[lo:hi], b[lo:hi], dst_a[lo:hi], dst_b[lo:hi]
        for i in range(d.size):
            d[i] = s[i]
            e[i] = t[i]


@numba.njit(parallel=True, cache=True)
def _xor_parallel(a, b, dst, chunks):
    for chunk in prange(chunks):
        lo, hi = _chunk(dst.size, chunks, chunk)
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
        pattern (forward, rms_forward: ``out = x``; backward: ``out = x ^ dy``
        on the raw bits; the fused add: ``out = x`` and a second array ``=
        residual``).
    """
    x = _raw(inputs.x)
    out = np.empty_like(x) if out is None else _raw(out).view(x.dtype)
    threads = numba.get_num_threads()
    if case.residual:  # x -> out and residual -> a second array: 2 reads, 2 writes
        r = _raw(inputs.residual)
        s = np.empty_like(r)
        return {f"numba prange 2 copies, {threads} threads":
                lambda: _copy2_parallel(x, r, out, s, threads),
                "np.copyto twice": lambda: (np.copyto(out, x), np.copyto(s, r))}
    if case.operation in ("forward", "rms_forward"):
        return {f"numba prange copy, {threads} threads":
                lambda: _copy_parallel(x, out, threads),
                "np.copyto": lambda: np.copyto(out, x)}
    dy = _raw(inputs.dy)
    return {f"numba prange x^dy, {threads} threads":
            lambda: _xor_parallel(x, dy, out, threads),
            "np.bitwise_xor": lambda: np.bitwise_xor(x, dy, out=out)}


def _build_roofline_cpu(case, inputs, workspace):
    return roofline_candidates(case, inputs)


# --------------------------------------------------------------------------- the C ABI

_C_SUFFIXES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}
_C_FLOATS = {"float": np.dtype(np.float32), "double": np.dtype(np.float64)}
#: 16-bit data crosses the C ABI as ``uint16_t`` bits (issue 18): a pointer to
#: it takes the case's dtype (float16 or bfloat16), the arrays passed as bits.
_C_BITS = "uint16_t"
#: Each function's parameters in the header's order; cffi checks the count and
#: every type against the header's declaration when the call is made.
_C_PARAMETERS = {
    "forward": ("x", "ldx", "weight", "bias", "y", "ldy", "mean", "rstd", "rows", "cols",
                "eps"),
    "rms_forward": ("x", "ldx", "weight", "y", "ldy", "rstd", "rows", "cols", "eps"),
    "add_ln_forward": ("x", "ldx", "residual", "ldr", "weight", "bias", "y", "ldy", "s", "lds",
                       "mean", "rstd", "rows", "cols", "eps"),
    "add_rms_forward": ("x", "ldx", "residual", "ldr", "weight", "y", "ldy", "s", "lds", "rstd",
                        "rows", "cols", "eps"),
    "backward": ("dy", "lddy", "x", "ldx", "mean", "rstd", "weight", "dx", "lddx", "dweight",
                 "dbias", "rows", "cols"),
}
#: Each operation's C function, less the dtype suffix (issue 17 names the new ones).
_C_FUNCTIONS = {"forward": "nln_layer_norm_", "backward": "nln_layer_norm_backward_",
                "rms_forward": "nln_rms_norm_", "add_ln_forward": "nln_add_layer_norm_",
                "add_rms_forward": "nln_add_rms_norm_"}
#: The row-major matrices, passed in the case's dtype; vectors are converted.
_C_MATRICES = ("x", "y", "dy", "dx", "residual", "s")


def default_capi_library():
    """``$NUMBA_LN_CAPI_LIB``, else the checkout's ``build/libnumba_ln.so``."""
    return Path(os.environ.get("NUMBA_LN_CAPI_LIB") or ROOT / "build" / "libnumba_ln.so")


def _shown(path):
    """A path as short as it can be said: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_capi_library(explicit=None):
    """The C library to benchmark and its header, or :class:`Unavailable`.

    Parameters
    ----------
    explicit : str or Path, optional
        ``--capi-lib``; the default is :func:`default_capi_library`.

    Returns
    -------
    (Path, Path)
        The shared library and ``numba_ln.h`` (beside the library, as
        ``capi/build.py`` writes it, else the checkout's ``capi/``).
    """
    library = Path(explicit) if explicit is not None else default_capi_library()
    if not library.is_file():
        raise Unavailable(f"no C library at {_shown(library)} (build it with `.venv/bin/python "
                          f"capi/build.py --outdir build`, or pass --capi-lib)")
    for header in (library.parent / "numba_ln.h", ROOT / "capi" / "numba_ln.h"):
        if header.is_file():
            return library, header
    raise Unavailable(f"{library} found, but no numba_ln.h beside it or in capi/")


def _capi_build_module():
    """``capi/build.py``, imported by path: it owns the header-to-cdef rule."""
    spec = importlib.util.spec_from_file_location("_numba_ln_capi_build",
                                                  ROOT / "capi" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def load_capi(library, header):
    """``(ffi, lib)`` for a built library, declared by its header as the build declares it.

    Parameters
    ----------
    library, header : Path

    Returns
    -------
    (cffi.FFI, object)

    Raises
    ------
    Unavailable
        cffi cannot parse the header or load the library.
    """
    ffi = cffi.FFI()
    try:
        ffi.cdef(_capi_build_module().cdef_text(header.read_text()))
        return ffi, ffi.dlopen(str(library))
    except (cffi.CDefError, OSError) as exc:
        raise Unavailable(f"{library}: {exc}") from None


def _build_capi(case, inputs, workspace):
    library, header = find_capi_library(workspace.capi_lib)
    ffi, lib = load_capi(library, header)
    function = _C_FUNCTIONS[case.operation] + _C_SUFFIXES[case.dtype]
    if function not in dir(lib):
        raise Unavailable(f"{header.name} declares no {function}")
    try:
        fn = getattr(lib, function)
    except AttributeError as exc:  # declared, but not in the library
        raise Unavailable(f"{library.name}: {exc}") from None

    rows, cols = case.shape
    result = np.empty_like(inputs.x)  # y, or dx
    # Output vectors start as zeros: converted to the header's type, garbage could overflow.
    data = {"x": inputs.x, "weight": inputs.weight, "ldx": cols, "rows": rows, "cols": cols,
            "eps": EPS}
    if case.operation != "backward":
        data.update(bias=inputs.bias, y=result, ldy=cols, mean=np.zeros(rows),
                    rstd=np.zeros(rows), residual=inputs.residual, ldr=cols,
                    s=np.empty_like(inputs.residual), lds=cols)
    else:
        data.update(dy=inputs.dy, lddy=cols, dx=result, lddx=cols,
                    mean=inputs.mean.reshape(-1), rstd=inputs.rstd.reshape(-1),
                    dweight=np.zeros(cols), dbias=np.zeros(cols))
    names = _C_PARAMETERS[case.operation]
    kinds = ffi.typeof(fn).args
    if len(kinds) != len(names):
        raise Unavailable(f"{function} takes {len(kinds)} arguments in {header.name}; the "
                          f"benchmark passes {len(names)}")
    arrays, values = [], []
    for name, kind in zip(names, kinds):
        value = data[name]
        if kind.kind == "pointer":
            bits = kind.item.cname == _C_BITS and case.dtype in HALF_DTYPES
            dtype = inputs.x.dtype if bits else _C_FLOATS.get(kind.item.cname)
            if dtype is None or (name in _C_MATRICES and value.dtype != dtype):
                raise Unavailable(f"{function}: {name} is {kind.cname} in {header.name}, "
                                  f"the case has {value.dtype}")
            value = np.ascontiguousarray(value, dtype)
            if bits:  # the same memory, typed as the header says
                value = value.view(np.uint16)
            arrays.append(value)  # outlives the pointer into it
            value = ffi.from_buffer(f"{kind.item.cname}[]", value)
        values.append(value)

    s = data.get("s")  # contiguous in the case's dtype: passed as it is, like y

    def call():
        status = fn(*values)
        if status:
            detail = ffi.string(lib.nln_last_error()).decode(errors="replace")
            raise RuntimeError(f"{function} returned status {status}: {detail}")
        return (result, s) if case.residual else result

    call.arrays = arrays
    return call


# --------------------------------------------------------------------------- the list


COMPETITORS = (
    Competitor("roofline", "copy roofline", "cpu", True, _build_roofline_cpu),
    Competitor("numba_ln_out", "numba-ln (out=)", "cpu", False, _build_numba_ln_out),
    Competitor("numba_ln_unfused", "numba-ln unfused", "cpu", False, _build_numba_ln_unfused,
               RESIDUAL_OPERATIONS),
    Competitor("numba_ln", "numba-ln", "cpu", False, _build_numba_ln),
    Competitor("capi", "numba-ln C ABI", "cpu", False, _build_capi),
    Competitor("torch", "PyTorch", "cpu", False, _build_torch_cpu),
    Competitor("numpy", "NumPy", "cpu", False, _build_numpy),
    Competitor("roofline", "copy roofline", "cuda", True, _build_roofline_cuda, OPERATIONS),
    Competitor("numba_ln_out", "numba-ln (out=)", "cuda", False,
               functools.partial(_build_numba_ln_cuda, out=True), OPERATIONS),
    Competitor("numba_ln", "numba-ln", "cuda", False, _build_numba_ln_cuda, OPERATIONS),
    Competitor("torch", "PyTorch", "cuda", False, _build_torch_cuda, OPERATIONS),
)


#: The size curve's: both libraries allocate their results and return the
#: statistics; PyTorch's CPU kernels are called without autograd (the curve
#: runs them inside :func:`torch_no_grad`, entered once per point: entering
#: it per call would cost PyTorch about 3 us).
CURVE_COMPETITORS = (
    Competitor("roofline", "copy roofline", "cpu", True, _build_roofline_cpu),
    Competitor("numba_ln", "numba-ln", "cpu", False, _build_numba_ln_stats),
    Competitor("torch", "PyTorch", "cpu", False, _build_torch_kernels),
    Competitor("numpy", "NumPy", "cpu", False, _build_numpy),
)


def competitors(devices=DEVICES, operation=None):
    """The competitors on ``devices``: roofline first on each device, NumPy last.

    Every competitor implements layer norm's forward and backward; the CPU's
    the other operations too, and *numba-ln unfused* only the fused residual
    add's.

    Parameters
    ----------
    devices : iterable of str
    operation : str, optional
        Only the competitors that implement it (default: all).

    Returns
    -------
    list of Competitor
    """
    return [c for c in COMPETITORS
            if c.device in devices and (operation is None or operation in c.operations)]


@dataclass
class Prepared:
    """A competitor ready to time on one case.

    Attributes
    ----------
    competitor : Competitor
    call : callable
        The zero-argument callable to time; already run once and checked.
    kernel : str or None
        For a roofline, which of its kernels this is.
    """

    competitor: Competitor
    call: Callable
    kernel: str = None


def prepare(competitor, case, workspace):
    """Build a competitor's callables for a case, warm them up and check them.

    Parameters
    ----------
    competitor : Competitor
    case : Case
    workspace : Workspace

    Returns
    -------
    list of Prepared
        One, or for a roofline one per kernel (the fastest is the roofline).

    Raises
    ------
    Unavailable
        The competitor cannot run here (the message says why).
    AssertionError
        It ran but its result is wrong.
    """
    inputs = workspace.inputs(case)
    built = competitor.build(case, inputs, workspace)
    calls = built if isinstance(built, dict) else {None: built}
    prepared = []
    for kernel, call in calls.items():
        output = call()  # warm-up: JIT compilation, GPU context, first-touch pages
        if not competitor.roofline:
            check_output(case, inputs, output)
        prepared.append(Prepared(competitor, call, kernel))
    return prepared
