"""The C library's compiled entry points, listed once, and its GPU glue.

``libnumba_ln.so`` (built by ``capi/build.py``) checks every argument in C,
then calls compiled code through the addresses :func:`entry_points` gives:
``numba_ln.cpu``'s kernels (``ln_fwd_rows``, ``ln_bwd_blocks``,
``ln_bwd_reduce``, each variant compiled for the precision's arrays), small
numba ``@cfunc`` adapters that turn C pointers into the kernels' arrays and
call the kernel whose address the C side hands them, the
:func:`~numba_ln.cpu.plan` and the ``eps`` rule. For a threaded call (the
plan says so) the C side runs the kernels on a fork-safe thread pool of its
own, in the plan's tasks, instead of numba's parallel launcher, which takes
the GIL around every parallel region. So a call runs compiled code only: it
never executes Python and never takes the GIL. If a kernel raises (an
allocation failure), numba takes the GIL to print the error and the entry
point returns 0.

:data:`ENTRY_POINTS` and :data:`KERNELS` are the one list of them.
``capi/build.py`` writes the shim's function-pointer types, its ``struct
nln_runtime`` and the X-macros its per-precision table is built with
(:func:`c_declarations`); the ``@cfunc`` signatures are parsed from the same
C parameter lists. An adapter calls its kernel by address, not by linking
it, so each is compiled in a fraction of a second.

The adapters see raw pointers. Each buffer becomes a 1-D array of
``(rows - 1) * ld + cols`` elements with ``numba.carray``, the layout the
kernels take: the data (``x``, ``y``, ``residual``, ``s``, ``dy``, ``dx``,
``dresidual``) in the precision's storage type, everything else in its
compute type (:data:`PRECISIONS`). The kernels take gains and biases in the
compute type, so for float16 and bfloat16 the C side widens the 16-bit
``weight``/``bias`` once per call, before any task runs, with the ``widen``
entry point (``cols`` elements each). It replaces a NULL ``weight``/``bias``
with a pointer to one compute element and clears the matching ``has_*``
flag; a NULL ``mean`` or ``rstd`` becomes an empty array (that statistic is
not stored). ``centered`` is 0 for RMSNorm (no ``mean``: an empty array).
``has_residual`` (forward: ``residual`` and ``s``) and ``has_dresidual``
(backward) say whether those buffers exist; the C side then hands over the
kernel variant compiled for them (:data:`KERNELS`), and the adapter passes
the arrays or ``None``.

The GPU functions (:func:`cuda_forward`, :func:`cuda_backward`) are called
with the GIL held, from the embedded interpreter: they wrap device pointers
in objects exposing ``__cuda_array_interface__`` (bfloat16 as ``<V2``) and
call the public API. A 16-bit backward pass widens ``weight`` to float32 on
the device first (:func:`_widened_gains`): the API returns ``dweight`` and
``dbias`` in the gains' dtype, the C ABI in float.
"""

import functools
import inspect
from collections import namedtuple

import numpy as np
from numba import carray, njit, types

from . import _native, cpu  # cpu first: it empties numba's cache if a kernel source changed
from ._cache import cfunc
from ._storage import load
from ._validate import eps_fault as _eps_rule

#: What an entry point returns on success (numba's wrapper returns 0 on error).
OK = 1

#: The C library's compiled entry points: ``(name, C result, C parameters,
#: one per precision)``. A per-precision entry ``forward`` is exported as
#: ``forward_f32``, ``forward_f64``, ``forward_f16`` and ``forward_bf16``; data
#: pointers are ``void *`` so that one C body serves every precision.
#: ``kernel`` is one of :data:`KERNELS`. ``widen`` converts ``count`` elements
#: of the storage type to the compute type (the C side calls it for 16-bit
#: gains only).
ENTRY_POINTS = (
    ("plan", "int32_t", "int32_t backward, int64_t rows, int64_t cols, int64_t itemsize, "
                        "int64_t *fields", False),
    ("eps_fault", "int32_t", "double eps", False),
    ("forward", "int32_t",
     "uintptr_t kernel, const void *x, int64_t ldx, const void *residual, int64_t ldr, "
     "const void *weight, const void *bias, int32_t has_weight, int32_t has_bias, void *y, "
     "int64_t ldy, void *s, int64_t lds, void *mean, void *rstd, int32_t has_residual, "
     "int32_t has_mean, int32_t has_rstd, int64_t rows, int64_t cols, double eps, "
     "int32_t centered, int32_t stream", True),
    ("backward_blocks", "int32_t",
     "uintptr_t kernel, const void *dy, int64_t lddy, const void *x, int64_t ldx, "
     "const void *mean, const void *rstd, const void *weight, int32_t has_weight, "
     "int32_t centered, const void *dresidual, int64_t lddres, int32_t has_dresidual, "
     "void *dx, int64_t lddx, void *dweight_part, void *dbias_part, int64_t rows, "
     "int64_t cols, int64_t block_rows, int64_t first_block, int64_t stop_block, "
     "int32_t wide, int32_t stream", True),
    ("reduce", "int32_t", "uintptr_t kernel, const void *part, int64_t blocks, int64_t cols, "
                          "void *out, int64_t first_col, int64_t stop_col", True),
    ("widen", "int32_t", "const void *source, int64_t count, void *target", True),
)

#: The kernels the C side hands to the per-precision entry points, by the
#: address of their machine code: ``(name, entry point, variant)``. The
#: variant names the kernel arguments that are arrays rather than ``None``
#: (``numba_ln.cpu``): ``"stage"`` (the forward's streaming stores, the
#: backward's wide rows) and ``"residual"`` (the forward's ``residual`` and
#: ``s``, the backward's ``dresidual``).
KERNELS = (
    ("forward_rows", "forward", ()),
    ("forward_rows_streaming", "forward", ("stage",)),
    ("forward_rows_residual", "forward", ("residual",)),
    ("forward_rows_streaming_residual", "forward", ("stage", "residual")),
    ("backward_rows", "backward_blocks", ()),
    ("backward_rows_wide", "backward_blocks", ("stage",)),
    ("backward_rows_dresidual", "backward_blocks", ("residual",)),
    ("backward_rows_wide_dresidual", "backward_blocks", ("stage", "residual")),
    ("block_sums", "reduce", ()),
)

#: One precision of the C library: ``suffix`` of its functions; ``c_type``
#: of its data, gains and biases (float16 and bfloat16 as their bits, in a
#: ``uint16_t``); ``c_compute``, the C type of its statistics, ``eps`` and
#: parameter gradients; the kernels' ``storage`` and ``compute`` dtypes
#: (``_validate.storage_dtype``: float16 is viewed as uint16, bfloat16 as
#: int16); ``typestr``, the data's ``__cuda_array_interface__`` type string
#: (bfloat16 is ``<V2``, as PyTorch exports it).
Precision = namedtuple("Precision", "suffix c_type c_compute storage compute typestr")

#: The C library's precisions.
PRECISIONS = (Precision("f32", "float", "float", np.float32, np.float32, "<f4"),
              Precision("f64", "double", "double", np.float64, np.float64, "<f8"),
              Precision("f16", "uint16_t", "float", np.uint16, np.float32, "<f2"),
              Precision("bf16", "uint16_t", "float", np.int16, np.float32, "<V2"))
_BY_SUFFIX = {precision.suffix: precision for precision in PRECISIONS}

_C_TYPES = {"int32_t": types.int32, "int64_t": types.int64, "uintptr_t": types.uintp,
            "double": types.float64, "void *": types.voidptr,
            "int64_t *": types.CPointer(types.int64)}


def _parameters(text):
    """``[(C type, name)]`` of a C parameter list such as ``"const void *x, int64_t n"``."""
    pairs = []
    for declaration in text.split(","):
        ctype, name = declaration.replace("const ", "").replace("*", "* ").rsplit(None, 1)
        pairs.append((" ".join(ctype.split()), name))
    return pairs


def _signature(result, parameters):
    """The numba signature of a C prototype."""
    return _C_TYPES[result](*(_C_TYPES[ctype] for ctype, _ in _parameters(parameters)))


def c_declarations():
    """The C text ``capi/build.py`` puts before the shim: types, runtime struct, X-macros.

    Returns
    -------
    str
        A function-pointer type ``nln__NAME_fn`` per entry point, ``struct
        nln__plan`` (the fields of :data:`numba_ln.cpu.PLAN_FIELDS`),
        ``struct nln_runtime`` (one address per name of
        :func:`exported_names`, the struct the Python side fills in) and the
        X-macros ``NLN__SHARED_ENTRIES(X)``, ``NLN__PRECISION_ENTRIES(X,
        suffix)``, ``NLN__PRECISION_KERNELS(X, suffix)`` and
        ``NLN__PRECISIONS(X)`` (``X(suffix, C type, C compute type)``).

    Examples
    --------
    >>> from numba_ln import _cabi
    >>> print(_cabi.c_declarations().splitlines()[2])
    typedef int32_t (*nln__eps_fault_fn)(double eps);
    """
    lines = ["/* Written by capi/build.py from numba_ln._cabi.ENTRY_POINTS and KERNELS. */"]
    for name, result, parameters, _ in ENTRY_POINTS:
        lines.append(f"typedef {result} (*nln__{name}_fn)({parameters});")
    lines.append("struct nln__plan {")
    lines += [f"    int64_t {field};" for field in cpu.PLAN_FIELDS]
    lines.append("};")
    lines.append("struct nln_runtime {")
    lines.append("    int32_t ready;")
    lines += [f"    uintptr_t {name};" for name in exported_names()]
    lines.append("};")
    shared = " ".join(f"X({name})" for name, _, _, each in ENTRY_POINTS if not each)
    lines.append(f"#define NLN__SHARED_ENTRIES(X) {shared}")
    each = " ".join(f"X({name}, suffix)" for name, _, _, each in ENTRY_POINTS if each)
    lines.append(f"#define NLN__PRECISION_ENTRIES(X, suffix) {each}")
    kernels = " ".join(f"X({name}, suffix)" for name, _, _ in KERNELS)
    lines.append(f"#define NLN__PRECISION_KERNELS(X, suffix) {kernels}")
    precisions = " ".join(f"X({p.suffix}, {p.c_type}, {p.c_compute})" for p in PRECISIONS)
    lines.append(f"#define NLN__PRECISIONS(X) {precisions}")
    return "\n".join(lines) + "\n"


def exported_names():
    """The name of every address the C library loads, in table order: the ``@cfunc``
    entry points (:func:`entry_point_names`), then the kernels they call.

    Examples
    --------
    >>> from numba_ln import _cabi
    >>> _cabi.exported_names()[:4]
    ['plan', 'eps_fault', 'forward_f32', 'forward_f64']
    >>> _cabi.exported_names()[-1]
    'block_sums_bf16'
    """
    suffixes = [precision.suffix for precision in PRECISIONS]
    return entry_point_names() + [f"{name}_{suffix}" for name, _, _ in KERNELS
                                  for suffix in suffixes]


def entry_point_names():
    """The names of the ``@cfunc`` entry points, in table order.

    Examples
    --------
    >>> from numba_ln import _cabi
    >>> _cabi.entry_point_names()[-2:]
    ['widen_f16', 'widen_bf16']
    """
    suffixes = [precision.suffix for precision in PRECISIONS]
    names = [name for name, _, _, each in ENTRY_POINTS if not each]
    return names + [f"{name}_{suffix}" for name, _, _, each in ENTRY_POINTS if each
                    for suffix in suffixes]


@njit(inline="always")
def _rows(pointer, rows, ld, cols, dtype):
    """The kernels' 1-D view of a ``rows x cols`` matrix with row stride ``ld``."""
    return carray(pointer, (rows - 1) * ld + cols, dtype)


def _plan():
    def plan(backward, rows, cols, itemsize, fields):
        decided = cpu.plan(backward, rows, cols, itemsize)
        out = carray(fields, len(decided))
        for i in range(len(decided)):
            out[i] = decided[i]
        return OK
    return plan


_eps_rule_compiled = njit(_eps_rule)


def _eps_fault():
    def eps_fault(eps):
        return _eps_rule_compiled(eps)
    return eps_fault


@njit(inline="always")
def _call_staged(kernel, arguments, like, staged, stream):
    """Call ``kernel`` with ``arguments`` and, last, its ``stage``.

    That is ``None`` unless ``staged``; else a staging row for ``like``'s
    type, empty unless ``stream`` (``cpu.ln_fwd_rows`` is staged only to
    stream; ``cpu.ln_bwd_blocks`` is staged for wide rows, and streams
    from a non-empty row).
    """
    if staged:
        stage = np.empty(cpu.stage_elements(like) if stream else 0, like.dtype)
        _native.call(kernel, arguments + (stage,))
    else:
        _native.call(kernel, arguments + (None,))


def _forward(storage, compute):
    def forward(kernel, x, ldx, residual, ldr, weight, bias, has_weight, has_bias, y, ldy, s,
                lds, mean, rstd, has_residual, has_mean, has_rstd, rows, cols, eps, centered,
                stream):
        x_buf = _rows(x, rows, ldx, cols, storage)
        y_buf = _rows(y, rows, ldy, cols, storage)
        w = carray(weight, cols if has_weight else 1, compute)
        b = carray(bias, cols if has_bias else 1, compute)
        mean_buf = carray(mean, rows, compute) if has_mean else np.empty(0, compute)
        rstd_buf = carray(rstd, rows, compute) if has_rstd else np.empty(0, compute)
        params = (w, b, has_weight != 0, has_bias != 0, y_buf, ldy)
        stats = (mean_buf, rstd_buf, rows, cols, eps, centered != 0)
        if has_residual:
            _call_staged(kernel, (x_buf, ldx, _rows(residual, rows, ldr, cols, storage), ldr)
                         + params + (_rows(s, rows, lds, cols, storage), lds) + stats,
                         y_buf, stream, stream)
        else:
            _call_staged(kernel, (x_buf, ldx, None, ldr) + params + (None, lds) + stats,
                         y_buf, stream, stream)
        return OK
    return forward


def _backward_blocks(storage, compute):
    def backward_blocks(kernel, dy, lddy, x, ldx, mean, rstd, weight, has_weight, centered,
                        dresidual, lddres, has_dresidual, dx, lddx, dweight_part, dbias_part,
                        rows, cols, block_rows, first_block, stop_block, wide, stream):
        blocks = (rows + block_rows - 1) // block_rows
        dx_buf = _rows(dx, rows, lddx, cols, storage)
        no_sums = np.empty(0, compute)  # the C side sums the blocks with `reduce`
        inputs = (_rows(dy, rows, lddy, cols, storage), lddy,
                  _rows(x, rows, ldx, cols, storage), ldx,
                  carray(mean, rows, compute) if centered else no_sums,
                  carray(rstd, rows, compute),
                  carray(weight, cols if has_weight else 1, compute), has_weight != 0,
                  centered != 0)
        outputs = (dx_buf, lddx, carray(dweight_part, (blocks, cols), compute),
                   carray(dbias_part, (blocks, cols), compute), no_sums, no_sums, rows, cols,
                   block_rows, first_block, stop_block)
        if has_dresidual:
            _call_staged(kernel, inputs + (_rows(dresidual, rows, lddres, cols, storage),
                                           lddres)
                         + outputs, dx_buf, wide, stream)
        else:
            _call_staged(kernel, inputs + (None, lddres) + outputs, dx_buf, wide, stream)
        return OK
    return backward_blocks


def _reduce(storage, compute):
    def reduce(kernel, part, blocks, cols, out, first_col, stop_col):
        _native.call(kernel, (carray(part, (blocks, cols), compute),
                              carray(out, cols, compute), first_col, stop_col))
        return OK
    return reduce


def _widen(storage, compute):
    def widen(source, count, target):
        values = carray(source, count, storage)
        out = carray(target, count, compute)
        for i in range(count):
            out[i] = load(values, i)
        return OK
    return widen


_MAKERS = {"plan": _plan, "eps_fault": _eps_fault, "forward": _forward,
           "backward_blocks": _backward_blocks, "reduce": _reduce, "widen": _widen}
_compiled = {}


def _compile(name, result, parameters, precision=None):
    """The ``@cfunc`` of one table entry, its parameter names checked against the table."""
    if precision is None:
        python, suffix = _MAKERS[name](), ""
    else:
        python = _MAKERS[name](precision.storage, precision.compute)
        suffix = precision.suffix
    expected = [name for _, name in _parameters(parameters)]
    if list(inspect.signature(python).parameters) != expected:
        raise TypeError(f"_cabi.{name} takes {list(inspect.signature(python).parameters)}, "
                        f"the table says {expected}")
    python.__name__ = python.__qualname__ = f"{name}_{suffix}" if suffix else name
    return cfunc(_signature(result, parameters))(python)


def _kernel_address(entry, variant, precision):
    """The address of the kernel an entry point of ``precision`` calls, in one variant."""
    storage, compute = np.dtype(precision.storage), np.dtype(precision.compute)
    staged, residual = "stage" in variant, "residual" in variant
    if entry == "forward":
        return cpu.rows_kernel(storage, compute, staged, storage if residual else None)
    blocks, block_sums = cpu.blocks_kernel(storage, compute, staged, residual)
    return blocks if entry == "backward_blocks" else block_sums


def entry_points():
    """The addresses the C library calls, compiling (or loading) them once.

    Returns
    -------
    dict of str to int
        Keyed by :func:`exported_names`: the ``@cfunc`` entry points (C
        function pointers) and the kernels they call. ``embedded_init.py``
        stores them in the C library's ``struct nln_runtime``;
        ``tests/test_capi.py`` calls one through ctypes.
    """
    if not _compiled:
        for name, result, parameters, each in ENTRY_POINTS:
            if each:
                for precision in PRECISIONS:
                    _compiled[f"{name}_{precision.suffix}"] = _compile(name, result,
                                                                       parameters, precision)
            else:
                _compiled[name] = _compile(name, result, parameters)
    addresses = {name: entry.address for name, entry in _compiled.items()}
    for name, entry, variant in KERNELS:
        for precision in PRECISIONS:
            addresses[f"{name}_{precision.suffix}"] = _kernel_address(entry, variant, precision)
    return {name: addresses[name] for name in exported_names()}


# --------------------------------------------------------------------------- GPU

class DeviceBuffer:
    """A strided 2-D (or 1-D) view of raw device memory, for the public API.

    Parameters
    ----------
    address : int
        Device pointer.
    shape : tuple of int
        ``(rows, cols)`` or ``(n,)``.
    ld : int
        Row stride in elements (ignored for 1-D).
    typestr : str
        The element type: ``"<f4"``, ``"<f8"``, ``"<f2"`` or ``"<V2"``
        (bfloat16, as PyTorch exports it).
    readonly : bool
        Marks inputs read-only.
    """

    def __init__(self, address, shape, ld, typestr, readonly):
        itemsize = int(typestr[2:])
        strides = (ld * itemsize, itemsize) if len(shape) == 2 else (itemsize,)
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "strides": strides, "typestr": typestr,
            "data": (int(address), bool(readonly)), "version": 3, "stream": None}


def _device_array(address, shape, ld, typestr, readonly=False):
    """A numba device array over raw device memory (no copy), or None for NULL.

    The public API validates ``shape``/``dtype``, which a bare
    ``__cuda_array_interface__`` object does not have; numba's view has both.
    """
    if not address:
        return None
    from numba import cuda

    return cuda.as_cuda_array(DeviceBuffer(address, shape, ld, typestr, readonly),
                              sync=False)


def cuda_unavailable_reason():
    """Why the C ABI's GPU functions cannot run here; None when they can.

    Returns
    -------
    str or None
        The CUDA backend's own reason, or a note that the CUDA simulator
        (which has no device memory) cannot take raw device pointers.
    """
    from . import _cuda_backend

    reason = _cuda_backend.unavailable_reason()
    if reason is None and _cuda_backend.simulator_enabled():
        return ("the numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1) cannot take raw "
                "device pointers; unset it to use a GPU")
    return reason


def _stream(handle):
    from numba import cuda

    return cuda.external_stream(handle) if handle else cuda.default_stream()


def _zero(address, count, typestr, stream):
    """Set ``count`` elements of device memory to +0.0 (all bits zero)."""
    from numba.cuda.cudadrv.driver import device_memset

    device_memset(_device_array(address, (count,), 1, typestr), 0,
                  count * int(typestr[2:]), stream=stream)


def _copy_into(src, dst, stream):
    """Copy the device array ``src`` into ``dst`` (a view of the caller's buffer)."""
    from numba import cuda

    src = cuda.as_cuda_array(src, sync=False).reshape(dst.shape)
    if dst.is_c_contiguous():
        dst.copy_to_device(src, stream=stream)
    else:  # padded rows: numba's strided copy kernel leaves the padding alone
        dst.setitem(tuple(slice(None) for _ in dst.shape), src, stream=stream)


def cuda_forward(precision, centered, x, ldx, residual, ldr, weight, bias, y, ldy, s, lds, mean,
                 rstd, rows, cols, eps, stream):
    """The GPU forward pass on raw device pointers (0 for NULL).

    Parameters
    ----------
    precision : str
        The suffix of the C function (:data:`PRECISIONS`): ``x``,
        ``residual``, ``weight``, ``bias``, ``y`` and ``s`` are of its data
        type, ``mean`` and ``rstd`` of its compute type.
    centered : int
        1 for layer norm (``numba_ln.layer_norm``), 0 for RMSNorm
        (``numba_ln.rms_norm``; ``bias`` and ``mean`` are then 0).
    x, residual, weight, bias, y, s, mean, rstd : int
        Device pointers, as in ``nln_cuda_add_layer_norm_f32``; ``residual``
        and ``s`` are 0 or both given (then ``s = x + residual`` is stored
        and normalized; ``s`` may equal ``residual``); ``weight``, ``bias``,
        ``mean`` and ``rstd`` may be 0.
    ldx, ldr, ldy, lds, rows, cols : int
        Row strides and shape, already checked by the C side; ``rows == 0``
        does nothing.
    eps : float
        Already checked: finite and >= 0.
    stream : int
        A ``CUstream`` handle, 0 for the default stream.

    Raises
    ------
    numba_ln.CUDAUnavailableError
        No usable GPU.
    """
    import numba_ln

    if rows == 0:
        return
    st = _stream(stream)
    data, stat = _typestrs(precision)
    matrix = _matrices(data, rows, cols)
    params = (_device_array(weight, (cols,), cols, data, True),)
    if centered:
        params += (_device_array(bias, (cols,), cols, data, True),)
    results = (numba_ln.layer_norm if centered else numba_ln.rms_norm)(
        matrix(x, ldx, True), *params, eps=eps, out=matrix(y, ldy), return_stats=True,
        stream=st, residual=matrix(residual, ldr, True), residual_out=matrix(s, lds))
    stats = results[2:] if residual else results[1:]
    for address, result in zip((mean, rstd) if centered else (rstd,), stats):
        if address:
            _copy_into(result, _device_array(address, (rows,), 1, stat), st)


def cuda_backward(precision, centered, dy, lddy, x, ldx, mean, rstd, weight, dresidual, lddres,
                  dx, lddx, dweight, dbias, rows, cols, stream):
    """The GPU backward pass on raw device pointers (0 for NULL).

    Parameters
    ----------
    precision : str
        The suffix of the C function (:data:`PRECISIONS`): ``dy``, ``x``,
        ``weight``, ``dresidual`` and ``dx`` are of its data type, ``mean``,
        ``rstd``, ``dweight`` and ``dbias`` of its compute type.
    centered : int
        1 for layer norm (``numba_ln.layer_norm_backward``), 0 for RMSNorm
        (``numba_ln.rms_norm_backward``; ``mean`` and ``dbias`` are then 0).
    dy, x, mean, rstd, weight, dresidual, dx, dweight, dbias : int
        Device pointers, as in ``nln_cuda_add_layer_norm_backward_f32``
        (``x`` is ``s`` there); ``weight``, ``dresidual``, ``dweight`` and
        ``dbias`` may be 0.
    lddy, ldx, lddres, lddx, rows, cols : int
        Row strides and shape, already checked by the C side; with
        ``rows == 0`` only ``dweight`` and ``dbias`` are written (zeros).
    stream : int
        A ``CUstream`` handle, 0 for the default stream.

    Raises
    ------
    numba_ln.CUDAUnavailableError
        No usable GPU.
    """
    import numba_ln

    st = _stream(stream)
    data, stat = _typestrs(precision)
    if rows == 0:  # sums over no rows
        for address in (dweight, dbias):
            if address:
                _zero(address, cols, stat, st)
        return
    matrix = _matrices(data, rows, cols)
    stats = (mean, rstd) if centered else (rstd,)
    grads = (numba_ln.layer_norm_backward if centered else numba_ln.rms_norm_backward)(
        matrix(dy, lddy, True), matrix(x, ldx, True),
        *(_device_array(address, (rows,), 1, stat, True) for address in stats),
        _device_array(weight, (cols,), cols, data, True) if data == stat
        else _widened_gains(weight, cols, precision, st), stream=st,
        dresidual=matrix(dresidual, lddres, True))
    _copy_into(grads[0], matrix(dx, lddx), st)
    for address, result in zip((dweight, dbias), grads[1:]):
        if address:
            _copy_into(result, _device_array(address, (cols,), 1, stat), st)


def _widened_gains(address, cols, precision, stream):
    """``cols`` 16-bit gains at a device address, widened to a new float32 device array.

    The API returns ``dweight`` and ``dbias`` in ``weight``'s dtype; the C
    ABI promises them in float, which the API gives for float32 gains. One
    small kernel a call, on ``stream`` (None for a NULL ``address``).
    """
    if not address:
        return None
    from numba import cuda

    widened = cuda.device_array(cols, np.float32, stream=stream)
    top_half, convert = _widen_kernels()
    if precision == "bf16":  # bfloat16 is the top half of a float32
        top_half.forall(cols, stream=stream)(
            _device_array(address, (cols,), cols, "<u2", True), widened.view(np.uint32))
    else:  # float16: the hardware's conversion, exact
        convert.forall(cols, stream=stream)(
            _device_array(address, (cols,), cols, "<f2", True), widened)
    return widened


def _top_half(bits, out_bits):
    """CUDA kernel: bfloat16 bits (uint16) to float32 bits (uint32), the top half."""
    i = cuda.grid(1)
    if i < bits.shape[0]:
        out_bits[i] = uint32(bits[i]) << uint32(16)


def _convert(halves, out):
    """CUDA kernel: float16 to float32, exactly (every binary16 value is a float32)."""
    i = cuda.grid(1)
    if i < halves.shape[0]:
        out[i] = float32(halves[i])


@functools.lru_cache(maxsize=None)
def _widen_kernels():
    """``(top_half, convert)``, compiled by ``cuda.jit`` on the first GPU call.

    numba.cuda is imported here, not with this module: the C library's CPU
    functions never need it. It becomes a module global, which the kernels
    read as ``cuda`` (the CUDA simulator swaps that global for its own).
    """
    global cuda, float32, uint32
    from numba import cuda, float32, uint32

    return cuda.jit(_top_half), cuda.jit(_convert)


def _typestrs(precision):
    """The ``__cuda_array_interface__`` type strings of a precision's data and statistics."""
    found = _BY_SUFFIX[precision]
    return found.typestr, np.dtype(found.compute).str


def _matrices(typestr, rows, cols):
    """``matrix(address, ld, readonly=False)``: a ``rows x cols`` device view, or None for 0."""
    def matrix(address, ld, readonly=False):
        return _device_array(address, (rows, cols), ld, typestr, readonly)
    return matrix
