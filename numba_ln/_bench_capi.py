"""The benchmark's C-ABI competitor: ``libnumba_ln.so`` called through ctypes.

The header (capi/numba_ln.h) is the contract. The loader reads each
prototype from it and passes arguments by parameter name, so a signature
change there cannot silently turn into a garbage call here.
"""

import ctypes
import os
import re
from pathlib import Path

import numpy as np

from ._bench import EPS, Unavailable

_CAPI_NAMES = {"float32": "f32", "float16": "f16", "float64": "f64"}
_C_SCALARS = {
    "float": ctypes.c_float, "double": ctypes.c_double,
    "int": ctypes.c_int, "long": ctypes.c_long, "long long": ctypes.c_longlong,
    "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t,
    "ptrdiff_t": ctypes.c_ssize_t, "ssize_t": ctypes.c_ssize_t, "intptr_t": ctypes.c_ssize_t,
    "uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64,
}
_C_RETURNS = {**_C_SCALARS, "void": None}


def default_capi_paths():
    """Where a built ``libnumba_ln.so`` is looked for, in order."""
    root = Path(__file__).resolve().parent.parent
    found = [os.environ.get("NUMBA_LN_CAPI_LIB")]
    found += [Path.cwd() / "build" / "libnumba_ln.so", root / "build" / "libnumba_ln.so"]
    unique = []
    for path in found:
        if path and Path(path).resolve() not in [p.resolve() for p in unique]:
            unique.append(Path(path))
    return unique


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
        ``--capi-lib``; must exist when given.

    Returns
    -------
    (Path, Path)
        The shared library and ``numba_ln.h`` (next to the library, in its
        ``include/``, or the repository's ``capi/``).
    """
    if explicit is not None:
        library = Path(explicit)
        if not library.is_file():
            raise Unavailable(f"--capi-lib {explicit}: no such file")
    else:
        library = next((p for p in default_capi_paths() if p.is_file()), None)
        if library is None:
            raise Unavailable("no built C library (looked for "
                              + ", ".join(_shown(p) for p in default_capi_paths())
                              + "; build it with capi/build.py or pass --capi-lib)")
    root = Path(__file__).resolve().parent.parent
    for header in (library.parent / "numba_ln.h", library.parent / "include" / "numba_ln.h",
                   root / "capi" / "numba_ln.h"):
        if header.is_file():
            return library, header
    raise Unavailable(f"{library} found, but no numba_ln.h beside it or in capi/")


def parse_prototype(header_text, function):
    """Read one function's return type and ``[(type, name), ...]`` from a C header.

    Parameters
    ----------
    header_text : str
    function : str

    Returns
    -------
    (str, list of (str, str)) or None
        None when the header does not declare ``function``. Types are the
        declared text with ``const`` and macros such as ``NLN_API`` removed;
        pointers end in ``*``.

    Examples
    --------
    >>> parse_prototype("NLN_API int f(const float *x, int64_t n);", "f")
    ('int', [('float *', 'x'), ('int64_t', 'n')])
    """
    text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", header_text, flags=re.S)
    match = re.search(r"([\w\s\*]*?)\b" + re.escape(function) + r"\s*\(([^)]*)\)\s*;", text)
    if not match:
        return None
    words = [w for w in match[1].replace("*", " * ").split()
             if not re.fullmatch(r"[A-Z][A-Z0-9_]*", w)]
    returns = words[-1] if words else "int"
    if returns == "*":
        returns = " ".join(words[-2:])
    params = []
    for raw in match[2].split(","):
        tokens = [t for t in raw.replace("*", " * ").split()
                  if t not in ("const", "restrict", "__restrict", "__restrict__")]
        if not tokens or tokens == ["void"]:
            continue
        name = tokens.pop()
        params.append((" ".join(tokens), name))
    return returns, params


_C_POINTEES = {"float": np.float32, "double": np.float64}


def _c_function(library, header, function):
    """A ctypes function typed from the header's prototype, or :class:`Unavailable`.

    Returns ``(function, [(type, name), ...])``.
    """
    prototype = parse_prototype(header.read_text(), function)
    if prototype is None:
        raise Unavailable(f"{header.name} declares no {function}")
    returns, params = prototype
    try:
        fn = getattr(ctypes.CDLL(str(library)), function)
    except (OSError, AttributeError) as exc:
        raise Unavailable(f"{library}: {exc}") from None
    argtypes = []
    for kind, name in params:
        if kind.endswith("*"):
            argtypes.append(ctypes.c_void_p)
        elif kind in _C_SCALARS:
            argtypes.append(_C_SCALARS[kind])
        else:
            raise Unavailable(f"{function}: parameter {name} has type {kind!r}, "
                              f"which the benchmark cannot pass")
    if returns not in _C_RETURNS and not returns.startswith("nln_"):
        raise Unavailable(f"{function} returns {returns!r}, which the benchmark cannot read")
    fn.argtypes = argtypes
    fn.restype = _C_RETURNS.get(returns, ctypes.c_int)  # nln_status: an enum, an int
    return fn, params


def build(case, inputs, options):
    """The C-ABI competitor for a case: a callable, or :class:`Unavailable`."""
    library, header = find_capi_library(options.capi_lib)
    suffix = _CAPI_NAMES[case.dtype]
    function = (f"nln_layer_norm_{suffix}" if case.operation == "forward"
                else f"nln_layer_norm_backward_{suffix}")
    fn, params = _c_function(library, header, function)
    rows, cols = case.shape
    x = inputs.x
    result = np.empty_like(x)
    data = {"x": x, "weight": inputs.weight, "ldx": cols, "rows": rows, "cols": cols,
            "eps": EPS}
    if case.operation == "forward":
        data.update(bias=inputs.bias, y=result, ldy=cols,
                    mean=np.empty(rows, np.float32), rstd=np.empty(rows, np.float32))
    else:
        data.update(dy=inputs.dy, lddy=cols, dx=result, lddx=cols,
                    mean=inputs.mean.reshape(-1), rstd=inputs.rstd.reshape(-1),
                    dweight=np.empty(cols, np.float32), dbias=np.empty(cols, np.float32))
    values, keep = [], []
    for kind, name in params:
        if name not in data:
            raise Unavailable(f"{function} takes {name!r}, which the benchmark does not "
                              f"know how to fill")
        value = data[name]
        if isinstance(value, np.ndarray):
            if name not in ("x", "y", "dy", "dx"):  # vectors: the type the header declares
                pointee = kind.rstrip("* ").split()[-1]
                value = np.ascontiguousarray(value, _C_POINTEES.get(pointee, case.dtype))
                data[name] = value
            keep.append(value)
            value = value.ctypes.data
        values.append(value)

    last_error = getattr(ctypes.CDLL(str(library)), "nln_last_error", None)
    if last_error is not None:
        last_error.restype = ctypes.c_char_p

    def call():
        status = fn(*values)
        if status:
            detail = last_error().decode(errors="replace") if last_error else ""
            raise RuntimeError(f"{function} returned status {status}: {detail}")
        return result

    call.keep = keep  # the arrays the pointers point into live as long as the callable
    return call


