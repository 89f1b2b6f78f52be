"""One dispatch: where the data lives and ``device=`` choose the backend.

The CPU backend takes NumPy arrays; the CUDA backend takes CUDA arrays (and
NumPy arrays with ``device="cuda"``, which it copies in and back out). Nothing
moves between host and device silently: mixing them is an error.
"""

import numpy as np

from . import _cpu_backend, _cuda_backend, _validate

DEVICES = (None, "cpu", "cuda")


class CUDAUnavailableError(RuntimeError):
    """``device="cuda"`` (or a CUDA array) was given, but no GPU can run here."""


def check_device(device):
    """``ValueError`` unless ``device`` is one of :data:`DEVICES`."""
    if device not in DEVICES:
        raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")


def _as_host(obj, native=False):
    """A NumPy array for a host array-like; with ``native``, in native byte order."""
    if obj is None:
        return obj
    if not isinstance(obj, np.ndarray):
        obj = np.asarray(obj)
    if native and not _validate.is_native(obj.dtype):  # the GPU copies bytes as they are
        obj = obj.astype(obj.dtype.newbyteorder("="))
    return obj


def select(device, x, others, names):
    """Return ``(backend module, x, others)`` for a call; host array-likes become NumPy.

    ``others`` are the remaining array arguments (None where absent), named by
    ``names`` for error messages; all must live where ``x`` lives.

    Raises
    ------
    ValueError
        An unknown ``device``; host and CUDA arrays mixed in one call;
        ``device="cpu"`` with a CUDA ``x``.
    TypeError
        A masked array; a byte-swapped array where nothing converts it (a CUDA
        array, or ``out`` with ``device="cuda"``).
    CUDAUnavailableError
        The call belongs on the GPU and none can run here.

    Examples
    --------
    >>> from numba_ln import _dispatch
    >>> backend, x, (weight,) = _dispatch.select(None, [[1.0, 2.0]], (None,), ("weight",))
    >>> backend.__name__, type(x).__name__
    ('numba_ln._cpu_backend', 'ndarray')
    >>> _dispatch.select("gpu", x, (), ())
    Traceback (most recent call last):
    ...
    ValueError: device must be None, 'cpu' or 'cuda', got 'gpu'
    """
    if (device is None or device == "cpu") and type(x) is np.ndarray:
        for other in others:  # the common case, decided cheaply
            if other is not None and type(other) is not np.ndarray:
                break
        else:
            return _cpu_backend, x, others
    check_device(device)
    _validate.check_not_masked(x, "x")
    for name, other in zip(names, others):
        _validate.check_not_masked(other, name)
    on_gpu = _cuda_backend.is_device_array(x)
    for name, other in zip(names, others):
        if other is not None and _cuda_backend.is_device_array(other) != on_gpu:
            where, there = ("a CUDA array", "a host array") if on_gpu else (
                "a host array", "a CUDA array")
            raise ValueError(
                f"x is {where} but {name} is {there}; move both to the same device "
                f"(numba-ln never copies between host and device behind your back)")
    if on_gpu and device == "cpu":
        raise ValueError("device='cpu' was given but x is a CUDA array; copy it to the "
                         "host first (e.g. x.copy_to_host()) or use device=None")
    if not on_gpu:  # inputs bound for the GPU are converted; ``out`` must be native there
        native = device == "cuda"
        x = _as_host(x, native)
        others = tuple(_as_host(other, native and name != "out")
                       for name, other in zip(names, others))
    if on_gpu or device == "cuda":
        reason = _cuda_backend.unavailable_reason()
        if reason is not None:
            raise CUDAUnavailableError(f"CUDA support is not available: {reason}")
        if on_gpu:  # zero-copy numba views, whose dtypes NumPy understands (unlike torch's)
            x = _cuda_backend.as_numba_array(x)
            others = tuple(None if other is None else _cuda_backend.as_numba_array(other)
                           for other in others)
        _validate.check_native(x, "x")
        for name, other in zip(names, others):
            if other is not None:
                _validate.check_native(other, name)
        return _cuda_backend, x, others
    return _cpu_backend, x, others
