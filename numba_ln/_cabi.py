"""The C ABI's Python half: ``@cfunc`` entry points and the GPU glue.

``libnumba_ln.so`` (built by ``capi/build.py``) checks every argument in C,
then calls the CPU kernels through the function pointers in
:func:`entry_points`: numba ``@cfunc`` wrappers around the *serial* pieces of
``numba_ln.cpu`` (``ln_fwd_serial``, ``ln_bwd_serial``, ``ln_bwd_blocks``,
``ln_bwd_reduce``) and its decisions (``runs_parallel``, ``streams_output``). For a
large call the C side runs those pieces on a fork-safe thread pool of its own,
in the schedule of ``cpu.ln_fwd_parallel`` / ``cpu.ln_bwd_parallel``, instead of
numba's parallel launcher, which takes the GIL around every parallel region. So a call
runs compiled code only: it never executes Python and never takes the GIL.
If a kernel raises (an allocation failure), numba takes the GIL to print the
error and the entry point returns 0.

The entry points see raw pointers. Each buffer becomes a 1-D array of
``(rows - 1) * ld + cols`` elements with ``numba.carray``, the layout the
kernels take. The C side replaces a NULL ``weight``/``bias`` with a pointer
to one element and clears the matching ``has_*`` flag. A NULL ``mean`` or
``rstd`` becomes an empty array (that statistic is not stored); a NULL
``dweight`` or ``dbias`` becomes scratch allocated here.

Every entry point returns ``OK`` (1) on success; numba's wrapper returns 0
when the compiled code raised, so 0 can never read as success.

The GPU functions (:func:`cuda_forward`, :func:`cuda_backward`) are called
with the GIL held, from the embedded interpreter: they wrap device pointers
in objects exposing ``__cuda_array_interface__`` and call the public API.
"""

import numpy as np
from numba import carray, from_dtype, njit, types

from . import cpu  # first: it empties numba's cache if a kernel source changed
from ._cache import cfunc

#: What an entry point returns on success (numba's wrapper returns 0 on error).
OK = 1


_i32 = types.int32
_i64 = types.int64


@njit(inline="always")
def _rows(pointer, rows, ld, cols):
    """The kernels' 1-D view of a ``rows x cols`` matrix with row stride ``ld``."""
    return carray(pointer, (rows - 1) * ld + cols)


def _forward_signature(scalar):
    ptr = types.CPointer(scalar)
    #   x    ldx   weight bias has_w has_b y    ldy   mean rstd has_m has_r rows cols eps
    return _i32(ptr, _i64, ptr, ptr, _i32, _i32, ptr, _i64, ptr, ptr, _i32, _i32,
                #  eps     stream_out
                _i64, _i64, scalar, _i32)


def _backward_signature(scalar):
    ptr = types.CPointer(scalar)
    #   dy   lddy  x    ldx   mean rstd weight has_w dx   lddx  dweight dbias
    return _i32(ptr, _i64, ptr, _i64, ptr, ptr, ptr, _i32, ptr, _i64, ptr, ptr,
                #  has_dw has_db rows cols
                _i32, _i32, _i64, _i64)


def _make_forward(dtype):
    """The forward entry point for one dtype (float32 or float64)."""
    def forward(x, ldx, weight, bias, has_weight, has_bias, y, ldy, mean, rstd,
                has_mean, has_rstd, rows, cols, eps, stream_out):
        x_buf = _rows(x, rows, ldx, cols)
        y_buf = _rows(y, rows, ldy, cols)
        w = carray(weight, cols if has_weight else 1)
        b = carray(bias, cols if has_bias else 1)
        mean_buf = carray(mean, rows) if has_mean else np.empty(0, dtype)
        rstd_buf = carray(rstd, rows) if has_rstd else np.empty(0, dtype)
        cpu.ln_fwd_serial(x_buf, ldx, w, b, has_weight != 0, has_bias != 0, y_buf, ldy,
                          mean_buf, rstd_buf, rows, cols, np.float64(eps), stream_out != 0)
        return OK

    forward.__qualname__ = forward.__name__ = f"forward_{np.dtype(dtype).name}"
    return cfunc(_forward_signature(from_dtype(dtype)))(forward)


def _make_backward(dtype):
    """The backward entry point for one dtype (float32 or float64)."""
    def backward(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                 dweight, dbias, has_dweight, has_dbias, rows, cols):
        dy_buf = _rows(dy, rows, lddy, cols)
        x_buf = _rows(x, rows, ldx, cols)
        dx_buf = _rows(dx, rows, lddx, cols)
        mean_buf = carray(mean, rows)
        rstd_buf = carray(rstd, rows)
        w = carray(weight, cols if has_weight else 1)
        dweight_buf = carray(dweight, cols) if has_dweight else np.empty(cols, dtype)
        dbias_buf = carray(dbias, cols) if has_dbias else np.empty(cols, dtype)
        cpu.ln_bwd_serial(dy_buf, lddy, x_buf, ldx, mean_buf, rstd_buf, w,
                          has_weight != 0, dx_buf, lddx, dweight_buf, dbias_buf, rows, cols)
        return OK

    backward.__qualname__ = backward.__name__ = f"backward_{np.dtype(dtype).name}"
    return cfunc(_backward_signature(from_dtype(dtype)))(backward)


def _blocks_signature(scalar):
    ptr = types.CPointer(scalar)
    #   dy   lddy  x    ldx   mean rstd weight has_w dx   lddx  dw_part db_part
    return _i32(ptr, _i64, ptr, _i64, ptr, ptr, ptr, _i32, ptr, _i64, ptr, ptr,
                #  rows cols first_block stop_block
                _i64, _i64, _i64, _i64)


def _make_backward_blocks(dtype):
    """Backward blocks ``first .. stop - 1`` into the caller's partial-sum rows."""
    def backward_blocks(dy, lddy, x, ldx, mean, rstd, weight, has_weight, dx, lddx,
                        dweight_part, dbias_part, rows, cols, first_block, stop_block):
        blocks = cpu.backward_blocks(rows)
        cpu.ln_bwd_blocks(_rows(dy, rows, lddy, cols), lddy,
                          _rows(x, rows, ldx, cols), ldx,
                          carray(mean, rows), carray(rstd, rows),
                          carray(weight, cols if has_weight else 1), has_weight != 0,
                          _rows(dx, rows, lddx, cols), lddx,
                          carray(dweight_part, (blocks, cols)),
                          carray(dbias_part, (blocks, cols)), rows, cols,
                          first_block, stop_block)
        return OK

    backward_blocks.__qualname__ = backward_blocks.__name__ = (
        f"backward_blocks_{np.dtype(dtype).name}")
    return cfunc(_blocks_signature(from_dtype(dtype)))(backward_blocks)


def _make_reduce(dtype):
    """Columns ``first .. stop - 1`` of the partial-sum rows, summed in block order."""
    ptr = types.CPointer(from_dtype(dtype))

    def reduce(part, blocks, cols, out, first_col, stop_col):
        cpu.ln_bwd_reduce(carray(part, (blocks, cols)), carray(out, cols), first_col,
                          stop_col)
        return OK

    reduce.__qualname__ = reduce.__name__ = f"reduce_{np.dtype(dtype).name}"
    return cfunc(_i32(ptr, _i64, _i64, ptr, _i64, _i64))(reduce)


@cfunc(_i32(_i64, _i64))
def runs_parallel(rows, cols):
    """``cpu.runs_parallel`` for C: 1 when a call is worth spreading over threads."""
    return 1 if cpu.runs_parallel(rows, cols) else 0


@cfunc(_i32(_i64, _i64, _i64))
def streams_output(rows, cols, itemsize):
    """``cpu.streams_output`` for C: 1 when a forward's ``y`` is written with streaming stores."""
    return 1 if cpu.streams_output(rows, cols, itemsize) else 0


@cfunc(_i64(_i64))
def backward_blocks(rows):
    """``cpu.backward_blocks`` for C: rows of partial sums a backward pass needs."""
    return cpu.backward_blocks(rows)


forward_float32 = _make_forward(np.float32)
forward_float64 = _make_forward(np.float64)
backward_float32 = _make_backward(np.float32)
backward_float64 = _make_backward(np.float64)
backward_blocks_float32 = _make_backward_blocks(np.float32)
backward_blocks_float64 = _make_backward_blocks(np.float64)
reduce_float32 = _make_reduce(np.float32)
reduce_float64 = _make_reduce(np.float64)


def entry_points():
    """The addresses of the compiled CPU entry points.

    Returns
    -------
    dict of str to int
        Each address is a C function pointer: ``forward_*`` / ``backward_*``
        (a whole call on the calling thread), ``backward_blocks_*`` and
        ``reduce_*`` (the pieces a threaded backward runs), ``runs_parallel``,
        ``streams_output`` and ``backward_blocks`` (the schedule's decisions).

    Examples
    --------
    >>> from numba_ln import _cabi
    >>> sorted(_cabi.entry_points())[:4]
    ['backward_blocks', 'backward_blocks_f32', 'backward_blocks_f64', 'backward_f32']
    """
    return {"forward_f32": forward_float32.address,
            "forward_f64": forward_float64.address,
            "backward_f32": backward_float32.address,
            "backward_f64": backward_float64.address,
            "backward_blocks_f32": backward_blocks_float32.address,
            "backward_blocks_f64": backward_blocks_float64.address,
            "reduce_f32": reduce_float32.address,
            "reduce_f64": reduce_float64.address,
            "runs_parallel": runs_parallel.address,
            "streams_output": streams_output.address,
            "backward_blocks": backward_blocks.address}


# --------------------------------------------------------------------------- GPU

#: ``__cuda_array_interface__`` type strings, by the dtype code the C side passes.
_TYPESTR = {32: "<f4", 64: "<f8"}


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
    bits : {32, 64}
        Element size: float32 or float64.
    readonly : bool
        Marks inputs read-only.
    """

    def __init__(self, address, shape, ld, bits, readonly):
        itemsize = bits // 8
        strides = (ld * itemsize, itemsize) if len(shape) == 2 else (itemsize,)
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "strides": strides, "typestr": _TYPESTR[bits],
            "data": (int(address), bool(readonly)), "version": 3, "stream": None}


def _device_array(address, shape, ld, bits, readonly=False):
    """A numba device array over raw device memory (no copy), or None for NULL.

    The public API validates ``shape``/``dtype``, which a bare
    ``__cuda_array_interface__`` object does not have; numba's view has both.
    """
    if not address:
        return None
    from numba import cuda

    return cuda.as_cuda_array(DeviceBuffer(address, shape, ld, bits, readonly), sync=False)


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


def _zero(address, count, bits, stream):
    """Set ``count`` elements of device memory to +0.0 (all bits zero)."""
    from numba.cuda.cudadrv.driver import device_memset

    device_memset(_device_array(address, (count,), 1, bits), 0, count * bits // 8,
                  stream=stream)


def _copy_into(src, dst, stream):
    """Copy the device array ``src`` into ``dst`` (a view of the caller's buffer)."""
    from numba import cuda

    src = cuda.as_cuda_array(src, sync=False).reshape(dst.shape)
    if dst.is_c_contiguous():
        dst.copy_to_device(src, stream=stream)
    else:  # padded rows: numba's strided copy kernel leaves the padding alone
        dst.setitem(tuple(slice(None) for _ in dst.shape), src, stream=stream)


def cuda_forward(bits, x, ldx, weight, bias, y, ldy, mean, rstd, rows, cols, eps,
                 stream):
    """The GPU forward pass on raw device pointers (0 for NULL).

    Parameters
    ----------
    bits : {32, 64}
        float32 or float64.
    x, weight, bias, y, mean, rstd : int
        Device pointers, as in ``nln_cuda_layer_norm_f32``; ``weight``,
        ``bias``, ``mean`` and ``rstd`` may be 0.
    ldx, ldy, rows, cols : int
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
    s = _stream(stream)
    _, mean_out, rstd_out = numba_ln.layer_norm(
        _device_array(x, (rows, cols), ldx, bits, True),
        _device_array(weight, (cols,), cols, bits, True),
        _device_array(bias, (cols,), cols, bits, True),
        eps=eps, out=_device_array(y, (rows, cols), ldy, bits), return_stats=True, stream=s)
    for address, result in ((mean, mean_out), (rstd, rstd_out)):
        if address:
            _copy_into(result, _device_array(address, (rows,), 1, bits), s)


def cuda_backward(bits, dy, lddy, x, ldx, mean, rstd, weight, dx, lddx, dweight, dbias,
                  rows, cols, stream):
    """The GPU backward pass on raw device pointers (0 for NULL).

    Parameters
    ----------
    bits : {32, 64}
        float32 or float64.
    dy, x, mean, rstd, weight, dx, dweight, dbias : int
        Device pointers, as in ``nln_cuda_layer_norm_backward_f32``;
        ``weight``, ``dweight`` and ``dbias`` may be 0.
    lddy, ldx, lddx, rows, cols : int
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

    s = _stream(stream)
    if rows == 0:  # sums over no rows
        for address in (dweight, dbias):
            if address:
                _zero(address, cols, bits, s)
        return
    dx_out, dweight_out, dbias_out = numba_ln.layer_norm_backward(
        _device_array(dy, (rows, cols), lddy, bits, True),
        _device_array(x, (rows, cols), ldx, bits, True),
        _device_array(mean, (rows,), 1, bits, True),
        _device_array(rstd, (rows,), 1, bits, True),
        _device_array(weight, (cols,), cols, bits, True), stream=s)
    _copy_into(dx_out, _device_array(dx, (rows, cols), lddx, bits), s)
    for address, result in ((dweight, dweight_out), (dbias, dbias_out)):
        if address:
            _copy_into(result, _device_array(address, (cols,), 1, bits), s)
