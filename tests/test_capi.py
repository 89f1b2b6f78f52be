"""The C ABI: build libnumba_ln.so, compile C programs against it, run them.

Every C program is compiled with ``gcc -Wall -Werror`` and the flags
``pkg-config`` reads from the built ``numba_ln.pc``, and runs in a clean
environment (no variables at all, as ``env -i``): the library must find its
Python and numba_ln by itself. Results are compared with the Python API, bit
for bit -- both run the same kernels.
"""

import ctypes
import importlib.util
import inspect
import os
import pathlib
import re
import shlex
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import numba_ln
import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
C_TESTS = ROOT / "tests" / "c"
SENTINEL = 1234.5

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


# --------------------------------------------------------------------------- set-up

def _pkg_config():
    """The pkg-config program: the PyPI ``pkgconf`` of this environment, else the system's."""
    local = pathlib.Path(sys.executable).parent / "pkgconf"
    if local.exists():
        return str(local)
    found = shutil.which("pkg-config") or shutil.which("pkgconf")
    if found is None:
        pytest.skip("no pkg-config (install the test extras: pkgconf)")
    return found


@pytest.fixture(scope="session")
def libdir(tmp_path_factory):
    """``python capi/build.py --outdir DIR``, once per session."""
    outdir = tmp_path_factory.mktemp("capi")
    result = subprocess.run(
        [sys.executable, str(ROOT / "capi" / "build.py"), "--outdir", str(outdir)],
        capture_output=True, text=True)
    assert result.returncode == 0, f"capi/build.py failed:\n{result.stdout}\n{result.stderr}"
    return outdir


@pytest.fixture(scope="session")
def cflags(libdir):
    """The compile and link flags pkg-config gives for numba_ln.pc."""
    out = subprocess.run([_pkg_config(), "--cflags", "--libs", str(libdir / "numba_ln.pc")],
                         check=True, capture_output=True, text=True).stdout
    return shlex.split(out)


@pytest.fixture(scope="session")
def compile_c(libdir, cflags):
    """``compile_c(source) -> executable``: gcc -Wall -Werror with the pkg-config flags."""
    built = {}

    def compile_one(source, flags=None):
        source = pathlib.Path(source)
        key = (source, tuple(flags or cflags))
        if key not in built:
            exe = libdir / f"{source.stem}-{len(built)}"
            result = subprocess.run(
                ["gcc", "-O2", "-Wall", "-Werror", "-pthread", str(source),
                 "-o", str(exe), *(flags or cflags)], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            built[key] = exe
        return built[key]

    return compile_one


def run_clean(exe, *args, stdin=b"", env=None, timeout=600):
    """Run ``exe`` with no environment variables but ``env``; return the CompletedProcess."""
    return subprocess.run([str(exe), *map(str, args)], input=stdin, capture_output=True,
                          env=dict(env or {}), timeout=timeout)


# --------------------------------------------------------------------------- the build

def test_build_writes_library_header_and_pkg_config(libdir, cflags):
    assert (libdir / "libnumba_ln.so").is_file()
    assert (libdir / "numba_ln.h").read_text() == (ROOT / "capi" / "numba_ln.h").read_text()
    pc = (libdir / "numba_ln.pc").read_text()
    assert f"Version: {numba_ln.__version__}" in pc
    assert f"-I{libdir}" in cflags and "-lnumba_ln" in cflags
    assert f"-Wl,-rpath,{libdir}" in cflags


def test_library_exports_exactly_the_header_functions(libdir):
    header = (ROOT / "capi" / "numba_ln.h").read_text()
    declared = set(re.findall(r"NLN_API\s+[^;(]*?\b(nln_\w+)\s*\(", header))
    assert {"nln_version", "nln_layer_norm_f32", "nln_cuda_layer_norm_backward_f32",
            "nln_cuda_layer_norm_f64"} <= declared
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("needs nm (binutils)")
    symbols = subprocess.run([nm, "-D", "--defined-only", str(libdir / "libnumba_ln.so")],
                             check=True, capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert {name for name in exported if name.startswith("nln")} == declared
    assert exported - declared == {"PyInit__numba_ln_capi"}


@pytest.mark.parametrize("std", ["c99", "c++11"])
def test_header_stands_alone_in_c_and_cxx(tmp_path, std):
    compiler = "gcc" if std == "c99" else "g++"
    if shutil.which(compiler) is None:
        pytest.skip(f"needs {compiler}")
    source = tmp_path / ("check.c" if std == "c99" else "check.cpp")
    source.write_text('#include "numba_ln.h"\n'
                      'int main(void) { nln_status s = NLN_OK; '
                      'return (int)s + NLN_VERSION_NUMBER - NLN_VERSION_NUMBER; }\n')
    result = subprocess.run(
        [compiler, f"-std={std}", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only",
         f"-I{ROOT / 'capi'}", str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- the example

def test_example_normalizes_stdin(compile_c, libdir):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 17)) * 3 + 1
    rows = (" ".join(repr(float(v)) for v in row) for row in x)
    text = f"{x.shape[0]} {x.shape[1]}\n" + "\n".join(rows)
    expected, mean, rstd = numba_ln.layer_norm(x, eps=1e-3, return_stats=True)
    # Both ways the README shows: pkg-config, and plain -I/-L/-rpath flags.
    for flags in (None, [f"-I{libdir}", f"-L{libdir}", "-lnumba_ln", f"-Wl,-rpath,{libdir}"]):
        exe = compile_c(ROOT / "capi" / "examples" / "normalize.c", flags)
        result = run_clean(exe, "1e-3", stdin=text.encode())
        assert result.returncode == 0, result.stderr.decode()
        body, stats = result.stdout.decode().split("# mean rstd\n")
        np.testing.assert_array_equal(np.loadtxt(body.splitlines(), ndmin=2), expected)
        np.testing.assert_array_equal(np.loadtxt(stats.splitlines(), ndmin=2),
                                      np.hstack([mean, rstd]))


def test_example_reports_bad_input(compile_c):
    exe = compile_c(ROOT / "capi" / "examples" / "normalize.c")
    result = run_clean(exe, stdin=b"2 0\n")
    assert result.returncode == 2 and b"ROWS COLS" in result.stderr


def test_residual_stream_example_matches_python(compile_c):
    """capi/examples/residual_stream.c: three fused blocks in place, then a backward."""
    result = run_clean(compile_c(ROOT / "capi" / "examples" / "residual_stream.c"))
    assert result.returncode == 0, result.stderr.decode()
    got = {label: np.array(values.split(), np.float32)
           for label, _, values in (line.partition(" ")
                                    for line in result.stdout.decode().splitlines())}
    i = np.arange(4 * 8)
    h = (((i * 37) % 11) / np.float32(4) - 1).astype(np.float32).reshape(4, 8)
    out = (((i * 13) % 7) / np.float32(8)).astype(np.float32).reshape(4, 8)
    weight = (1 + 0.125 * np.arange(8)).astype(np.float32)
    for _ in range(3):
        y, h, rstd = numba_ln.rms_norm(out, weight, residual=h, residual_out=h,
                                       return_stats=True)
        out = np.float32(0.5) * y
    dx, dweight = numba_ln.rms_norm_backward(np.ones_like(h), h, rstd, weight,
                                             dresidual=np.full_like(h, 0.1))
    for label, expected in (("h", h), ("y", y), ("dx", dx), ("dweight", dweight)):
        np.testing.assert_array_equal(got[label], expected.ravel(), label)


# --------------------------------------------------------------------------- forward and backward

HAS_WEIGHT, HAS_BIAS, HAS_MEAN, HAS_RSTD, HAS_DWEIGHT, HAS_DBIAS = 1, 2, 4, 8, 16, 32
DTYPES = {32: np.float32, 64: np.float64}

# (rows, cols, ld_in, ld_out): contiguous, padded, one column, one row, and
# large enough for the parallel kernels (more than SERIAL_MAX_ELEMENTS).
SHAPES = [(5, 7, 7, 7), (9, 33, 40, 35), (4, 1, 3, 1), (1, 64, 64, 70),
          (500, 200, 256, 210), (0, 8, 8, 8)]
# eps = 0 only where rows have a spread (cols > 1): a constant row has var = 0.
FORWARD_CASES = [(bits, shape, flags, eps)
                 for bits in (32, 64) for shape in SHAPES
                 for flags, eps in ((HAS_WEIGHT | HAS_BIAS | HAS_MEAN | HAS_RSTD, 1e-5),
                                    (0, 0.1), (HAS_BIAS | HAS_MEAN, 0.0 if shape[1] > 1 else 1e-3),
                                    (HAS_WEIGHT | HAS_RSTD, 1e-5))]
# Large enough (>= 16 MiB of y) for the streaming stores, with rows that are
# not aligned to a cache line in either buffer.
FORWARD_CASES.append((32, (2048, 2051, 2051, 2053), HAS_WEIGHT | HAS_BIAS | HAS_MEAN | HAS_RSTD,
                      1e-5))
BACKWARD_CASES = [(bits, shape, flags)
                  for bits in (32, 64) for shape in SHAPES
                  for flags in (HAS_WEIGHT | HAS_DWEIGHT | HAS_DBIAS, 0, HAS_WEIGHT,
                                HAS_DBIAS)]
# Large, rows not aligned to a cache line: 4096x1027 runs threaded, a row at a
# time, with ordinary stores; 2048x2051 (>= 16 MiB of dx, >= 2048 columns)
# takes the rows in pairs and streams dx.
BACKWARD_CASES += [(32, shape, HAS_WEIGHT | HAS_DWEIGHT | HAS_DBIAS)
                   for shape in ((4096, 1027, 1027, 1029), (2048, 2051, 2053, 2051))]


def _extent(rows, cols, ld):
    return (rows - 1) * ld + cols if rows else 0


def _rows_view(buffer, rows, cols, ld):
    return as_strided(buffer, (rows, cols), (ld * buffer.itemsize, buffer.itemsize))


def _padded(values, ld, dtype, fill=np.nan):
    """``values`` (rows x cols) in a buffer with row stride ``ld``, padding = ``fill``."""
    rows, cols = values.shape
    buffer = np.full(_extent(rows, cols, ld), fill, dtype)
    _rows_view(buffer, rows, cols, ld)[...] = values
    return buffer


class _Case:
    """One call for capi_driver: what to send and the reference to compare with."""

    def __init__(self, rng, op, bits, shape, flags, eps):
        self.op, self.bits, self.flags, self.eps = op, bits, flags, eps
        self.dtype = DTYPES[bits]
        rows, cols, ld_in, ld_out = self.rows, self.cols, self.ld_in, self.ld_out = shape
        dt = self.dtype
        x = (rng.standard_normal((rows, cols)) * 2 + 0.5).astype(dt)
        weight = (1 + 0.1 * rng.standard_normal(cols)).astype(dt)
        bias = (0.1 * rng.standard_normal(cols)).astype(dt)
        self.x = _padded(x, ld_in, dt)
        self.sent = [self.x]
        if op == 0:
            self.weight = weight if flags & HAS_WEIGHT else None
            self.bias = bias if flags & HAS_BIAS else None
            self.sent += [p for p in (self.weight, self.bias) if p is not None]
            self.out = [np.full(_extent(rows, cols, ld_out), SENTINEL, dt)]
            self.out += [np.full(rows, SENTINEL, dt) for flag in (HAS_MEAN, HAS_RSTD)
                         if flags & flag]
            self.lds = (ld_in, ld_out, 0)
        else:
            dy = rng.standard_normal((rows, cols)).astype(dt)
            self.dy = _padded(dy, ld_out + 1, dt)
            _, mean, rstd = numba_ln.layer_norm(x, weight, bias, return_stats=True)
            self.mean, self.rstd = mean.ravel(), rstd.ravel()
            self.weight = weight if flags & HAS_WEIGHT else None
            self.sent = [self.dy, self.x, self.mean, self.rstd]
            self.sent += [self.weight] if self.weight is not None else []
            self.out = [np.full(_extent(rows, cols, ld_out), SENTINEL, dt)]
            self.out += [np.full(cols, SENTINEL, dt) for flag in (HAS_DWEIGHT, HAS_DBIAS)
                         if flags & flag]
            self.lds = (ld_out + 1, ld_in, ld_out)

    def request(self):
        head = struct.pack("=8qd", self.op, self.bits, self.rows, self.cols, *self.lds,
                           self.flags, self.eps)
        return head + b"".join(a.tobytes() for a in self.sent + self.out)

    def read_reply(self, reply, offset):
        (self.status,) = struct.unpack_from("=q", reply, offset)
        offset += 8
        self.got = []
        for template in self.out:
            nbytes = template.nbytes
            self.got.append(np.frombuffer(reply[offset:offset + nbytes], self.dtype))
            offset += nbytes
        return offset

    def check(self):
        assert self.status == 0
        rows, cols, ld_out = self.rows, self.cols, self.ld_out
        y = self.got[0]
        x2d = _rows_view(self.x, rows, cols, self.ld_in)
        if self.op == 0:
            ref_y, ref_mean, ref_rstd = numba_ln.layer_norm(
                x2d, self.weight, self.bias, eps=self.eps, return_stats=True)
            wanted = [ref_mean.ravel() if self.flags & HAS_MEAN else None,
                      ref_rstd.ravel() if self.flags & HAS_RSTD else None]
        else:
            dy2d = _rows_view(self.dy, rows, cols, self.lds[0])
            ref_y, ref_dweight, ref_dbias = numba_ln.layer_norm_backward(
                dy2d, x2d, self.mean, self.rstd, self.weight)
            wanted = [ref_dweight if self.flags & HAS_DWEIGHT else None,
                      ref_dbias if self.flags & HAS_DBIAS else None]
        np.testing.assert_array_equal(_rows_view(y, rows, cols, ld_out), ref_y)
        padding = np.ones(y.shape, bool)
        _rows_view(padding, rows, cols, ld_out)[...] = False
        assert (y[padding] == self.dtype(SENTINEL)).all(), "padding was written"
        for got, ref in zip(self.got[1:], [w for w in wanted if w is not None]):
            np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def driver_results(compile_c):
    """All forward and backward cases, run by one capi_driver process."""
    rng = np.random.default_rng(20261122)
    cases = {}
    for bits, shape, flags, eps in FORWARD_CASES:
        cases[("forward", bits, shape, flags, eps)] = _Case(rng, 0, bits, shape, flags, eps)
    for bits, shape, flags in BACKWARD_CASES:
        cases[("backward", bits, shape, flags)] = _Case(rng, 1, bits, shape, flags, 0.0)
    exe = compile_c(C_TESTS / "capi_driver.c")
    result = run_clean(exe, stdin=b"".join(case.request() for case in cases.values()))
    assert result.returncode == 0, result.stderr.decode()
    offset = 0
    for case in cases.values():
        offset = case.read_reply(result.stdout, offset)
    assert offset == len(result.stdout)
    return cases


@pytest.mark.parametrize("bits, shape, flags, eps", FORWARD_CASES)
def test_forward_matches_python(driver_results, bits, shape, flags, eps):
    driver_results[("forward", bits, shape, flags, eps)].check()


@pytest.mark.parametrize("bits, shape, flags", BACKWARD_CASES)
def test_backward_matches_python(driver_results, bits, shape, flags):
    driver_results[("backward", bits, shape, flags)].check()


# --------------------------------------------------------------------------- every function, by name
#
# The functions of issue 17 (RMSNorm, residual add) and every float16 and
# bfloat16 function (issue 18), called in this process through cffi's ABI
# mode: their prototypes are read from numba_ln.h (the header is the
# contract), so a call names its arguments and every other pointer is NULL.
# A host that runs Python already lends it to the library, as
# test_python_host_* shows.

NEW_FUNCTIONS = ("rms_norm", "rms_norm_backward", "add_layer_norm", "add_layer_norm_backward",
                 "add_rms_norm", "add_rms_norm_backward")
#: Every function name; the float32 and float64 layer norm are also run by capi_driver.
FUNCTIONS = ("layer_norm", "layer_norm_backward") + NEW_FUNCTIONS


def _precisions():
    """``{suffix: (the Python API's data dtype, dtype of statistics and parameter
    gradients)}`` from ``numba_ln._cabi.PRECISIONS``; bfloat16 is ``ml_dtypes.bfloat16``
    (absent without ml_dtypes: its cases skip)."""
    from numba_ln import _cabi

    api_dtypes = {np.dtype(np.uint16): np.dtype(np.float16), np.dtype(np.int16): reference.BFLOAT16}
    return {p.suffix: (api_dtypes.get(np.dtype(p.storage), np.dtype(p.storage)),
                       np.dtype(p.compute)) for p in _cabi.PRECISIONS}


PRECISIONS = _precisions()
HALF = ("f16", "bf16")


def _needs_dtype(suffix):
    """Skip a bfloat16 case when ml_dtypes is not installed."""
    if PRECISIONS[suffix][0] is None:
        pytest.skip("bfloat16 needs ml_dtypes (a test extra)")


def _suffix(symbol):
    """The precision of a C function's name: ``"bf16"`` of ``nln_layer_norm_bf16``."""
    return symbol.rsplit("_", 1)[1]


def _draw(rng, shape, dtype):
    """Standard normal values in ``dtype`` (drawn in float32 for the 16-bit ones)."""
    if dtype.itemsize == 2:
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    return rng.standard_normal(shape, dtype=dtype)
#: Pointers a new function never takes as NULL (mean and rstd: in its backward).
REQUIRED = {"x", "residual", "y", "s", "dy", "dx"}
BACKWARD_REQUIRED = REQUIRED | {"mean", "rstd"}


def _load_build():
    spec = importlib.util.spec_from_file_location("capi_build", ROOT / "capi" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prototypes():
    """``{function: [(C type, parameter name)]}`` for every function of numba_ln.h."""
    header = _load_build().cdef_text((ROOT / "capi" / "numba_ln.h").read_text())
    found = {}
    for name, parameters in re.findall(r"\b(nln_\w+)\s*\(([^)]*)\)\s*;", header):
        pairs = []
        for declaration in parameters.split(","):
            if declaration.strip() != "void":
                ctype, parameter = declaration.replace("*", "* ").rsplit(None, 1)
                pairs.append((" ".join(ctype.split()), parameter))
        found[name] = pairs
    return found


PROTOTYPES = _prototypes()


class _Library:
    """libnumba_ln.so loaded here with cffi; :meth:`call` passes arguments by name."""

    def __init__(self, path):
        import cffi

        self.ffi = cffi.FFI()
        self.ffi.cdef(_load_build().cdef_text((ROOT / "capi" / "numba_ln.h").read_text()))
        self.lib = self.ffi.dlopen(str(path))

    def call(self, function, values):
        """``function(...)`` with ``values[name]`` for each parameter: for a pointer
        an array (its address), an address, or NULL when absent or None."""
        args = []
        for ctype, name in PROTOTYPES[function]:
            if ctype.endswith("*"):
                value = _address(values.get(name))
                args.append(self.ffi.cast(ctype, value) if value else self.ffi.NULL)
            else:
                args.append(values[name])
        return getattr(self.lib, function)(*args)

    def last_error(self):
        return self.ffi.string(self.lib.nln_last_error()).decode()


def _address(value):
    """The address of an array (host: NumPy; device: ``__cuda_array_interface__``); 0 for None."""
    if value is None or isinstance(value, int):
        return value or 0
    if isinstance(value, np.ndarray):
        return value.ctypes.data
    return value.__cuda_array_interface__["data"][0]


@pytest.fixture(scope="module")
def capi(libdir):
    library = _Library(libdir / "libnumba_ln.so")
    assert library.lib.nln_init() == 0, library.last_error()
    return library


def _matrices(function):
    """``[(matrix, its row stride)]`` of a function, in parameter order."""
    parameters = PROTOTYPES[function]
    return [(name, parameters[i + 1][1]) for i, (ctype, name) in enumerate(parameters[:-1])
            if ctype.endswith("*") and parameters[i + 1][1].startswith("ld")]


# What the Python API and tests/reference.py return for each function here,
# from its inputs by parameter name: (outputs in order, API call, reference call).
_API = {
    "layer_norm": (("y", "mean", "rstd"), lambda a, eps: numba_ln.layer_norm(
        a["x"], a["weight"], a["bias"], eps=eps, return_stats=True),
        lambda a, eps: reference.layer_norm(a["x"], a["weight"], a["bias"], eps=eps)),
    "layer_norm_backward": (("dx", "dweight", "dbias"),
                            lambda a, eps: numba_ln.layer_norm_backward(
        a["dy"], a["x"], a["mean"], a["rstd"], a["weight"]),
        lambda a, eps: reference.layer_norm_backward(a["dy"], a["x"], a["weight"],
                                                     mean=a["mean"], rstd=a["rstd"])),
    "rms_norm": (("y", "rstd"), lambda a, eps: numba_ln.rms_norm(
        a["x"], a["weight"], eps=eps, return_stats=True),
        lambda a, eps: reference.rms_norm(a["x"], a["weight"], eps=eps)),
    "add_layer_norm": (("y", "s", "mean", "rstd"), lambda a, eps: numba_ln.layer_norm(
        a["x"], a["weight"], a["bias"], eps=eps, return_stats=True, residual=a["residual"]),
        lambda a, eps: reference.add_layer_norm(a["x"], a["residual"], a["weight"],
                                                a["bias"], eps=eps)),
    "add_rms_norm": (("y", "s", "rstd"), lambda a, eps: numba_ln.rms_norm(
        a["x"], a["weight"], eps=eps, return_stats=True, residual=a["residual"]),
        lambda a, eps: reference.add_rms_norm(a["x"], a["residual"], a["weight"], eps=eps)),
    "rms_norm_backward": (("dx", "dweight"), lambda a, eps: numba_ln.rms_norm_backward(
        a["dy"], a["x"], a["rstd"], a["weight"]),
        lambda a, eps: reference.rms_norm_backward(a["dy"], a["x"], a["weight"],
                                                   rstd=a["rstd"])),
    "add_layer_norm_backward": (("dx", "dweight", "dbias"),
                                lambda a, eps: numba_ln.layer_norm_backward(
        a["dy"], a["s"], a["mean"], a["rstd"], a["weight"], dresidual=a["dresidual"]),
        lambda a, eps: reference.add_layer_norm_backward(
            a["dy"], a["s"], a["weight"], mean=a["mean"], rstd=a["rstd"],
            dresidual=a["dresidual"])),
    "add_rms_norm_backward": (("dx", "dweight"), lambda a, eps: numba_ln.rms_norm_backward(
        a["dy"], a["s"], a["rstd"], a["weight"], dresidual=a["dresidual"]),
        lambda a, eps: reference.add_rms_norm_backward(
            a["dy"], a["s"], a["weight"], rstd=a["rstd"], dresidual=a["dresidual"])),
}

# "all": every optional input and output given; "none": every one NULL (and
# lddres 0: ignored without dresidual); "in_place": s is residual and y is x
# (forward), dx is dresidual, or dy without one (backward); "in_place_x": s
# is x, or y without a residual (forward), dx is dy (backward). The aliases
# numba_ln.h allows. The value is the forward's eps.
VARIANTS = {"all": 1e-5, "none": 0.1, "in_place": 1e-3, "in_place_x": 1e-4}
IN_PLACE = {  # variant: {(backward, fused): ((output, the input it is), ...)}
    "in_place": {(False, False): (("y", "x"),), (False, True): (("y", "x"), ("s", "residual")),
                 (True, False): (("dx", "dy"),), (True, True): (("dx", "dresidual"),)},
    "in_place_x": {(False, False): (("y", "x"),), (False, True): (("s", "x"),),
                   (True, False): (("dx", "dy"),), (True, True): (("dx", "dy"),)},
}
NEW_CASES = [(function, suffix, shape, variant)
             for function in NEW_FUNCTIONS for suffix in ("f32", "f64") for shape in SHAPES
             for variant in VARIANTS]
# float16 and bfloat16: every function, on the shapes that differ in kind
# (padded, one column, threaded, no rows).
HALF_SHAPES = [(9, 33, 40, 35), (4, 1, 3, 1), (500, 200, 256, 210), (0, 8, 8, 8)]
NEW_CASES += [(function, suffix, shape, variant) for function in FUNCTIONS for suffix in HALF
              for shape in HALF_SHAPES for variant in VARIANTS]
# Large enough (>= 16 MiB) to stream y and s, or dx with wide rows taken in
# pairs (16-bit rows stream from 1024 columns: cpu.plan); for 16-bit data one
# forward and one backward, one of each format (a second each).
NEW_CASES += [(function, "f32", (2048, 2051, 2051, 2053), "all") for function in NEW_FUNCTIONS]
NEW_CASES += [("add_layer_norm", "bf16", (4096, 2051, 2051, 2053), "all"),
              ("add_rms_norm_backward", "f16", (4096, 2051, 2051, 2053), "all")]


class _NewCase:
    """One call of a new function on padded buffers, and what it must return."""

    def __init__(self, function, suffix, shape, variant):
        _needs_dtype(suffix)
        self.function, self.variant = function, variant
        self.backward = function.endswith("backward")
        self.dtype = dt = PRECISIONS[suffix][0]
        stat_dtype = PRECISIONS[suffix][1]
        self.rows, self.cols, ld_in, ld_out = shape
        self.eps = VARIANTS[variant]
        self.ld = dict(_matrices(f"nln_{function}_{suffix}"))
        parameters = {name for _, name in PROTOTYPES[f"nln_{function}_{suffix}"]}
        rng = np.random.default_rng(zlib.crc32(repr((function, suffix, shape, variant)).encode()))
        values = {"rows": self.rows, "cols": self.cols, "eps": self.eps,
                  "weight": (1 + 0.1 * rng.standard_normal(self.cols)).astype(dt),
                  "bias": (0.1 * rng.standard_normal(self.cols)).astype(dt)}
        strides = {"x": ld_in, "residual": ld_in + 1, "s": ld_in if self.backward else ld_out + 2,
                   "dy": ld_out + 1, "dresidual": ld_in + 2}
        for name, ld_name in self.ld.items():
            values[ld_name] = strides.get(name, ld_out)
            matrix = (_draw(rng, (self.rows, self.cols), dt) * 2 + 0.5).astype(dt)
            values[name] = _padded(matrix, values[ld_name], dt, SENTINEL)
        self.outputs = _API[function][0]
        if self.backward:  # the statistics of the forward pass
            source = self.view(values, "s" if "s" in values else "x")
            if "mean" in parameters:
                _, mean, rstd = numba_ln.layer_norm(source, values["weight"], return_stats=True)
                values["mean"] = mean.ravel()
            else:
                rstd = numba_ln.rms_norm(source, values["weight"], return_stats=True)[1]
            values["rstd"] = rstd.ravel()
        for name in self.outputs:  # statistics and parameter gradients
            values.setdefault(name, np.full(self.rows if name in ("mean", "rstd") else self.cols,
                                            SENTINEL, stat_dtype))
        if variant == "none":
            for name in ("weight", "bias", "mean", "rstd", "dweight", "dbias", "dresidual"):
                if not (self.backward and name in BACKWARD_REQUIRED):
                    values[name] = None
            values["lddres"] = 0
        else:
            for out, source in IN_PLACE.get(variant, {}).get(
                    (self.backward, "add_" in function), ()):
                values[out] = values[source]
                values[self.ld[out]] = values[self.ld[source]]
        self.values = {name: value for name, value in values.items()
                       if name in parameters or name == "eps"}
        api_inputs = {name: self.view(values, name) if name in self.ld else values.get(name)
                      for name in ("x", "residual", "dy", "s", "dresidual", "weight", "bias",
                                   "mean", "rstd")}
        api_inputs = {name: None if a is None else a.copy() for name, a in api_inputs.items()}
        _, api, ref = _API[function]
        api_weight = api_inputs["weight"]
        if self.backward and api_weight is not None:
            # The API returns dweight and dbias in weight's dtype, the C ABI in
            # float: the API's float32 result for the same gains, widened.
            api_inputs["weight"] = api_weight.astype(stat_dtype)
        self.expected = dict(zip(self.outputs, api(api_inputs, self.eps)))
        api_inputs["weight"] = api_weight
        self.reference = dict(zip(self.outputs, ref(api_inputs, self.eps)))
        self.before = {name: a.copy() for name, a in self.values.items()
                       if isinstance(a, np.ndarray)}

    def view(self, values, name):
        """Matrix ``name`` of ``values`` as a rows x cols view, or None."""
        if values.get(name) is None:
            return None
        return _rows_view(values[name], self.rows, self.cols, values[self.ld[name]])

    def check(self, status, message):
        assert status == 0, message
        written = set()
        for name in self.outputs:
            got = self.values.get(name)
            if got is None:
                continue
            written.add(id(got))
            if name in self.ld:
                padding = np.ones(got.shape, bool)
                _rows_view(padding, self.rows, self.cols, self.values[self.ld[name]])[...] = False
                assert (got[padding] == self.before[name][padding]).all(), f"{name}'s padding"
                got = self.view(self.values, name)
            expected = np.reshape(self.expected[name], got.shape)
            np.testing.assert_array_equal(got, expected, name)
            assert got.dtype == expected.dtype and (  # the bits, signed zeros included
                np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes())
            if self.cols == 1 and self.backward:
                continue  # dx = rstd * g * (1 - xhat**2), xhat**2 ~ 1: any rounding is all of it
            error = reference.rel_l2(got, np.reshape(self.reference[name], got.shape))
            assert error <= reference.TOLERANCE[np.dtype(self.dtype)], (name, error)
        for name, before in self.before.items():
            if id(self.values[name]) not in written:
                np.testing.assert_array_equal(self.values[name], before, f"input {name}")


@pytest.mark.parametrize("function, suffix, shape, variant", NEW_CASES)
def test_function_matches_python_and_reference(capi, function, suffix, shape, variant):
    case = _NewCase(function, suffix, shape, variant)
    status = capi.call(f"nln_{function}_{suffix}", case.values)
    case.check(status, capi.last_error())


# --------------------------------------------------------------------------- errors

INVALID, NO_DEVICE, INIT = 1, 3, 4
ERROR_CASES = {
    "fwd_x_null": "nln_layer_norm_f32: x is NULL",
    "fwd_y_null": "y is NULL",
    "fwd_rows_negative": "rows (-1) must be >= 0",
    "fwd_cols_zero": "cols (0) must be > 0",
    "fwd_cols_negative": "cols (-3) must be > 0",
    "fwd_ldx_small": "ldx (3) must be >= cols (4)",
    "fwd_ldy_small": "ldy (3) must be >= cols (4)",
    "fwd_ldx_negative": "ldx (-6) must be >= cols (4)",
    "fwd_eps_negative": "eps (-1) must be >= 0",
    "fwd_eps_nan": "eps is NaN",
    "fwd_eps_inf": "eps is infinite",
    "fwd_eps_minus_inf": "eps is infinite",
    "fwd_extent_overflow": "nln_layer_norm_f32: x spans (rows - 1) * ldx + cols = "
                           f"{((1 << 40) - 1) * (1 << 40) + 4} elements of 4 bytes, more than "
                           "the address space",
    "fwd64_x_null": "nln_layer_norm_f64: x is NULL",
    "fwd64_ldy_small": "ldy (2) must be >= cols (4)",
    "fwd64_eps_nan": "nln_layer_norm_f64: eps is NaN",
    "fwd64_eps_negative": "eps (-1e-300) must be >= 0",
    "bwd_dy_null": "nln_layer_norm_backward_f32: dy is NULL",
    "bwd_x_null": "x is NULL",
    "bwd_mean_null": "mean is NULL",
    "bwd_rstd_null": "rstd is NULL",
    "bwd_dx_null": "dx is NULL",
    "bwd_lddy_small": "lddy (1) must be >= cols (4)",
    "bwd_ldx_small": "ldx (1) must be >= cols (4)",
    "bwd_lddx_small": "lddx (1) must be >= cols (4)",
    "bwd_rows_negative": "rows (-5) must be >= 0",
    "bwd_cols_zero": "cols (0) must be > 0",
    "bwd_extent_overflow": "dx spans (rows - 1) * lddx + cols = "
                           f"{((1 << 40) - 1) * (1 << 40) + 4} elements of 4 bytes, more",
    "bwd64_mean_null": "nln_layer_norm_backward_f64: mean is NULL",
    "bwd64_cols_negative": "cols (-1) must be > 0",
    "cuda_fwd_x_null": "nln_cuda_layer_norm_f32: x is NULL",
    "cuda_fwd64_eps_nan": "nln_cuda_layer_norm_f64: eps is NaN",
    "cuda_bwd_ldx_small": "nln_cuda_layer_norm_backward_f32: ldx (2) must be >= cols (4)",
    "cuda_bwd64_rstd_null": "nln_cuda_layer_norm_backward_f64: rstd is NULL",
    "fwd_x_wraps": "nln_layer_norm_f32: x spans (rows - 1) * ldx + cols = 16 elements of 4 "
                   "bytes from 0xfffffffffffffff8, past the end of the address space",
    "fwd_weight_wraps": "weight spans cols = 4 elements of 4 bytes from 0xfffffffffffffff8, past",
    "fwd64_rstd_wraps": "nln_layer_norm_f64: rstd spans rows = 3 elements of 8 bytes from 0xf",
    "bwd_mean_wraps": "nln_layer_norm_backward_f32: mean spans rows = 3 elements of 4 bytes",
    "bwd64_dbias_wraps": "dbias spans cols = 4 elements of 8 bytes from 0xfffffffffffffff8",
    "cuda_bwd_dx_wraps": "nln_cuda_layer_norm_backward_f32: dx spans (rows - 1) * lddx + cols"
                         " = 16 elements of 4 bytes from 0xfffffffffffffff8, past the end",
}

# capi_errors' overflow cases: each function with one matrix's stride past the
# address space (2 rows of 4 columns), and with 2**62 rows of stride 4.
OVERFLOW_FUNCTIONS = {  # label: (function, item size, its matrices and their strides)
    "fwd": ("nln_layer_norm_f32", 4, [("x", "ldx"), ("y", "ldy")]),
    "fwd64": ("nln_layer_norm_f64", 8, [("x", "ldx"), ("y", "ldy")]),
    "bwd": ("nln_layer_norm_backward_f32", 4, [("dy", "lddy"), ("x", "ldx"), ("dx", "lddx")]),
    "bwd64": ("nln_layer_norm_backward_f64", 8, [("dy", "lddy"), ("x", "ldx"), ("dx", "lddx")]),
}
OVERFLOW_FUNCTIONS.update({f"cuda_{label}": (function.replace("nln_", "nln_cuda_"), *rest)
                           for label, (function, *rest) in OVERFLOW_FUNCTIONS.items()})
OVERFLOW_LDS = {"ld62": 1 << 62, "ld61": 1 << 61, "ldmax": 2**63 - 1}


def _overflow_cases():
    """{case name: the message it must give} for capi_errors' overflow cases."""
    def message(function, itemsize, matrix, ld_name, rows, ld):
        count = (rows - 1) * ld + 4
        assert count * itemsize > 2**63 - 1  # more bytes than PTRDIFF_MAX
        return (f"{function}: {matrix} spans (rows - 1) * {ld_name} + cols = {count} "
                f"elements of {itemsize} bytes, more than the address space")

    cases = {}
    for label, (function, itemsize, matrices) in OVERFLOW_FUNCTIONS.items():
        for matrix, ld_name in matrices:
            for name, ld in OVERFLOW_LDS.items():
                cases[f"overflow_{label}_{matrix}_{name}"] = message(
                    function, itemsize, matrix, ld_name, 2, ld)
        # Every matrix has stride 4: the first one checked is named.
        cases[f"overflow_{label}_rows"] = message(function, itemsize, *matrices[0], 1 << 62, 4)
    return cases


ERROR_CASES.update(_overflow_cases())
NO_DEVICE_CASES = ["cuda_fwd_no_device", "cuda_fwd64_no_device", "cuda_bwd_no_device",
                   "cuda_bwd64_no_device", "cuda_fwd_rows_zero_no_device"]
ROWS_ZERO_CASES = ["fwd_rows_zero", "fwd64_rows_zero", "bwd_rows_zero", "bwd64_rows_zero"]


@pytest.fixture(scope="module")
def error_report(compile_c):
    """capi_errors' output: {"CASE": {name: (status, untouched, message)}, other keys: text}."""
    result = run_clean(compile_c(C_TESTS / "capi_errors.c"))
    assert result.returncode == 0, result.stderr.decode()
    report = {"CASE": {}, "STATUS": {}}
    for line in result.stdout.decode().splitlines():
        key, _, rest = line.partition(" ")
        if key == "CASE":
            name, status, untouched, message = (rest.split(" ", 3) + [""])[:4]
            report["CASE"][name] = (int(status), untouched == "1", message)
        elif key == "STATUS":
            code, _, text = rest.partition(" ")
            report["STATUS"][int(code)] = text
        else:
            report[key] = rest
    return report


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_invalid_argument(error_report, name):
    status, untouched, message = error_report["CASE"][name]
    assert status == INVALID
    assert ERROR_CASES[name] in message
    assert untouched, "an output was written by a failing call"


def test_every_error_case_printed_is_checked(error_report):
    expected = set(ERROR_CASES) | set(ROWS_ZERO_CASES)
    if error_report["CUDA_AVAILABLE"] == "0":
        expected |= set(NO_DEVICE_CASES)
    assert set(error_report["CASE"]) == expected


@pytest.mark.parametrize("name", ROWS_ZERO_CASES)
def test_zero_rows_is_ok_and_writes_nothing(error_report, name):
    status, untouched, _ = error_report["CASE"][name]
    assert status == 0 and untouched


def test_gpu_functions_without_a_gpu_say_why(error_report):
    if error_report["CUDA_AVAILABLE"] != "0":
        pytest.skip("a GPU is available here")
    from numba_ln import _cuda_backend

    reason = _cuda_backend.unavailable_reason()
    for name in NO_DEVICE_CASES:
        status, untouched, message = error_report["CASE"][name]
        assert status == NO_DEVICE and untouched, name
        assert "no usable GPU" in message, message
        if reason is not None:
            assert reason in message


def test_version_and_status_strings(error_report):
    assert error_report["VERSION"] == numba_ln.__version__
    strings = error_report["STATUS"]
    for code, name in enumerate(["NLN_OK", "NLN_ERR_INVALID_ARGUMENT", "NLN_ERR_UNSUPPORTED",
                                 "NLN_ERR_NO_DEVICE", "NLN_ERR_INIT", "NLN_ERR_INTERNAL"]):
        assert strings[code].startswith(name + ":")
    assert strings[42] == "unknown nln_status"
    assert error_report["INIT"] == "0"


def test_last_error_is_per_thread_and_survives_success(error_report):
    assert error_report["FIRST_ERROR"] == ""
    assert error_report["AFTER_SUCCESS"] == "0 nln_layer_norm_f32: x is NULL"
    assert error_report["THREAD_ERROR"] == "nln_layer_norm_f32: cols (0) must be > 0"
    assert error_report["OTHER_THREAD"] == "0 nln_layer_norm_f32: x is NULL"


# The functions of issue 17 (CPU and GPU, float32 and float64), called wrongly
# in this process: each required pointer NULL, each stride too small or past
# the address space, bad rows, cols and eps. The GPU functions check their
# arguments before they look for a device.
NEW_SYMBOLS = [f"nln_{device}{function}_{suffix}" for device in ("", "cuda_")
               for function, suffix in [(function, suffix) for function in NEW_FUNCTIONS
                                        for suffix in ("f32", "f64")]
               + [(function, suffix) for function in FUNCTIONS for suffix in HALF]]
SMALL = {"rows": 3, "cols": 4, "ld": 6}


def _small_call(function):
    """Arguments of a valid call of ``function`` on 3 x 4 host buffers of row stride 6."""
    _needs_dtype(_suffix(function))
    dtype, stat_dtype = PRECISIONS[_suffix(function)]
    rows, cols, ld = SMALL["rows"], SMALL["cols"], SMALL["ld"]
    matrices = dict(_matrices(function))
    values = {"rows": rows, "cols": cols, "eps": 1e-5}
    for ctype, name in PROTOTYPES[function]:
        if name.startswith("ld"):
            values[name] = ld
        elif ctype.endswith("*") and name != "stream":
            size = (rows - 1) * ld + cols if name in matrices else (
                rows if name in ("mean", "rstd") else cols)
            values[name] = np.linspace(0.5, 2.0, size).astype(
                stat_dtype if name in STATISTICS else dtype)
    return values


#: Pointers of the compute type (float for float16 and bfloat16 data).
STATISTICS = ("mean", "rstd", "dweight", "dbias")
#: An address whose buffer of 8 bytes or more runs past the end of the address space.
WRAPS = 0xfffffffffffffff8


def _bad_calls(function):
    """``(label, changes, message)`` for each invalid call of ``function``."""
    backward = "backward" in function
    itemsize, stat_itemsize = (dtype.itemsize for dtype in PRECISIONS[_suffix(function)])
    required = BACKWARD_REQUIRED if backward else REQUIRED
    for ctype, name in PROTOTYPES[function]:
        if ctype.endswith("*") and name in required:
            yield f"{name}_null", {name: None}, f"{function}: {name} is NULL"
    huge = 1 << 62
    for matrix, ld in _matrices(function):
        yield f"{ld}_small", {ld: 3}, f"{function}: {ld} (3) must be >= cols (4)"
        yield (f"{ld}_huge", {ld: huge},
               f"{function}: {matrix} spans (rows - 1) * {ld} + cols = {2 * huge + 4} elements "
               f"of {itemsize} bytes, more than the address space")
    # Vectors are checked in their own element size: weight in the data's,
    # rstd in the statistics'.
    yield ("weight_wraps", {"weight": WRAPS}, f"{function}: weight spans cols = 4 elements of "
           f"{itemsize} bytes from {WRAPS:#x}, past the end of the address space")
    yield ("rstd_wraps", {"rstd": WRAPS}, f"{function}: rstd spans rows = 3 elements of "
           f"{stat_itemsize} bytes from {WRAPS:#x}, past the end of the address space")
    yield "rows_negative", {"rows": -1}, f"{function}: rows (-1) must be >= 0"
    yield "cols_zero", {"cols": 0}, f"{function}: cols (0) must be > 0"
    if not backward:
        yield "eps_nan", {"eps": float("nan")}, f"{function}: eps is NaN"
        yield "eps_inf", {"eps": float("inf")}, f"{function}: eps is infinite"
        yield "eps_negative", {"eps": -1.0}, f"{function}: eps (-1) must be >= 0"


def _call_small(capi, function, changes):
    """``(status, message, untouched)`` of a small call with ``changes``."""
    values = _small_call(function)
    values.update(changes)
    before = {name: a.copy() for name, a in values.items() if isinstance(a, np.ndarray)}
    status = capi.call(function, values)
    untouched = all(np.array_equal(values[name], a) for name, a in before.items())
    return status, capi.last_error(), untouched


@pytest.mark.parametrize("function", NEW_SYMBOLS)
def test_new_function_rejects_bad_arguments(capi, function):
    for label, changes, message in _bad_calls(function):
        status, got, untouched = _call_small(capi, function, changes)
        assert (label, status) == (label, INVALID), got
        assert message in got, (label, got)
        assert untouched, f"{label}: a buffer was written by a failing call"


@pytest.mark.parametrize("function", NEW_SYMBOLS)
def test_new_function_optional_arguments(capi, function):
    """A valid small call succeeds, with a NULL dresidual whatever lddres says; a
    GPU function without a GPU says why and writes nothing."""
    fused_backward = "add_" in function and "backward" in function
    for changes in [{}] + ([{"dresidual": None, "lddres": -1}] if fused_backward else []):
        status, message, untouched = _call_small(capi, function, changes)
        if "cuda_" not in function:
            assert status == 0, message
        elif capi.lib.nln_cuda_available():
            pytest.skip("a GPU is available: host pointers are not device pointers")
        else:
            assert status == NO_DEVICE and untouched, message
            assert f"{function}: no usable GPU" in message, message


# The GPU glue (numba_ln._cabi.cuda_forward and cuda_backward), run here
# without a GPU: device arrays are replaced by NumPy views of the same host
# buffers, so the public API it calls runs on the CPU and must give the bits
# of the CPU function of the same name. Each buffer must be described by the
# typestr of its dtype; a bfloat16 one by "<V2", as PyTorch exports it. The
# stand-in gives the API an ml_dtypes.bfloat16 view for it: the CPU API
# does not take "<V2" arrays. That a numba device array of typestr "<V2"
# reaches the CUDA backend as bfloat16 is only tested on a GPU
# (test_new_gpu_functions_match_the_cpu), once the CUDA backend's bfloat16
# branch is merged. The 16-bit backward passes widen weight to float32 on the
# device first (so that dweight and dbias come back in float): here with
# NumPy; the kernels themselves run in test_gpu_widening_kernels_on_the_simulator.
GLUE_CASES = [(function, "f32", shape, variant) for function in FUNCTIONS
              for shape in ((9, 33, 40, 35), (0, 8, 8, 8)) for variant in VARIANTS]
GLUE_CASES += [(function, suffix, (9, 33, 40, 35), variant) for function in FUNCTIONS
               for suffix in HALF for variant in VARIANTS]
TYPESTR = {np.dtype(np.float16): "<f2", np.dtype(np.float32): "<f4",
           np.dtype(np.float64): "<f8", reference.BFLOAT16: "<V2"}


@pytest.mark.parametrize("function, suffix, shape, variant", GLUE_CASES)
def test_gpu_glue_calls_the_public_api(capi, monkeypatch, function, suffix, shape, variant):
    from numba_ln import _cabi

    expected = _NewCase(function, suffix, shape, variant)
    assert capi.call(f"nln_{function}_{suffix}", expected.values) == 0, capi.last_error()
    case = _NewCase(function, suffix, shape, variant)
    buffers = {a.ctypes.data: a for a in case.values.values() if isinstance(a, np.ndarray)}

    def host_array(address, shape, ld, typestr, readonly=False):
        if not address:
            return None
        buffer = buffers[address]
        assert typestr == TYPESTR[buffer.dtype], (typestr, buffer.dtype)
        view = (_rows_view(buffer, *shape, ld) if len(shape) == 2 else buffer[:shape[0]]).view()
        view.flags.writeable = not readonly
        return view

    monkeypatch.setattr(_cabi, "_device_array", host_array)
    monkeypatch.setattr(_cabi, "_stream", lambda handle: None)
    monkeypatch.setattr(_cabi, "_copy_into",
                        lambda src, dst, stream: dst.__setitem__(..., np.reshape(src, dst.shape)))
    monkeypatch.setattr(_cabi, "_zero",
                        lambda address, count, typestr, stream: buffers[address][:count].fill(0))
    monkeypatch.setattr(_cabi, "_widened_gains", lambda address, cols, precision, stream: (
        buffers[address][:cols].astype(np.float32) if address else None))
    backward = function.endswith("backward")
    glue = _cabi.cuda_backward if backward else _cabi.cuda_forward
    # The C side passes a fused backward's s as x (nln_shim.h).
    renamed = {"x": "s", "ldx": "lds"} if backward and "add_" in function else {}
    special = {"precision": suffix, "centered": int("layer_norm" in function), "stream": 0}

    def argument(name):
        if name in special:
            return special[name]
        value = case.values.get(renamed.get(name, name))
        return value if isinstance(value, (int, float)) else _address(value)

    glue(*map(argument, inspect.signature(glue).parameters))
    for name, got in case.values.items():
        np.testing.assert_array_equal(got, expected.values[name], name)
        if isinstance(got, np.ndarray):
            assert got.tobytes() == expected.values[name].tobytes(), name


# --------------------------------------------------------------------------- threads

def test_eight_threads_match_serial_calls_bit_for_bit(compile_c):
    result = run_clean(compile_c(C_TESTS / "capi_threads.c"), 4)
    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    assert re.fullmatch(r"OK \d+\n", output), output


@pytest.mark.parametrize("threads", [None, "3"], ids=["one-per-cpu", "omp-num-threads-3"])
def test_forked_children_call_with_the_parents_bits(compile_c, threads):
    """A child forked after large calls, or while another thread is inside one,
    calls the library (from 16 threads too) and gets the parent's bits.

    A hang is a failure: each child stops itself with alarm(), and the
    timeout stops the whole program.
    """
    env = {"OMP_NUM_THREADS": threads} if threads else {}
    result = run_clean(compile_c(C_TESTS / "capi_fork.c"), env=env, timeout=300)
    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    assert output == "OK 5\n", output


@pytest.mark.parametrize("scale", [1, 4], ids=["serial", "threaded"])
def test_calls_never_take_the_gil(compile_c, cflags, scale):
    from numba_ln._config import SERIAL_MAX_ELEMENTS

    # scale 1: the largest serial call (1024 columns a row); 4: a threaded one.
    rows = scale * SERIAL_MAX_ELEMENTS // 1024
    assert rows >= 2
    result = run_clean(compile_c(C_TESTS / "capi_nogil.c", [*cflags, "-ldl"]), rows,
                       timeout=120)
    assert result.stdout.decode() == "OK\n", result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0


# --------------------------------------------------------------------------- start-up

def test_first_call_loads_kernels_from_cache(compile_c, driver_results):
    """After one process compiled the entry points, the next one only loads them."""
    exe = compile_c(C_TESTS / "capi_bench.c")
    # Observation only: numba's cache log, unbuffered (the embedded Python is
    # never finalized, so buffered output would be lost at exit).
    result = run_clean(exe, 1, 64, 10, env={"NUMBA_DEBUG_CACHE": "1", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr.decode()
    log = result.stdout.decode()
    loaded = re.findall(r"\[cache\] data loaded from .*_cabi\.(\w+)-", log)
    from numba_ln import _cabi

    assert sorted(loaded) == sorted(_cabi.entry_point_names()), log
    assert "data saved" not in log, log
    assert re.search(r"^first_call_s \d+\.\d+$", log, re.M)


def test_bench_program_reports_timings(compile_c, driver_results):
    result = run_clean(compile_c(C_TESTS / "capi_bench.c"), 64, 1024, 5)
    assert result.returncode == 0, result.stderr.decode()
    values = dict(line.split() for line in result.stdout.decode().splitlines())
    assert float(values["per_call_ns"]) > 0 and float(values["gbytes_per_s"]) > 0


# --------------------------------------------------------------------------- failed start

@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    """A virtual environment with nothing installed: no cffi, no numba_ln."""
    path = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


@pytest.mark.parametrize("broken", ["no interpreter", "no cffi", "python raises"])
def test_failed_start_never_reads_as_success(compile_c, bare_venv, broken, tmp_path):
    shadow = tmp_path / "numba_ln"  # a numba_ln that raises as it is imported
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise RuntimeError('simulated import failure')\n")
    env, fragment = {
        # The C side cannot even start Python.
        "no interpreter": ({"NUMBA_LN_PYTHON": "/nonexistent/python"},
                           "/nonexistent/python (NUMBA_LN_PYTHON) is not an executable"),
        # Python starts but cffi's module set-up fails: cffi would return 0 (NLN_OK).
        "no cffi": ({"NUMBA_LN_PYTHON": str(bare_venv)},
                    "could not load the numba_ln C ABI module"),
        # cffi works but loading the kernels raises inside the Python side.
        "python raises": ({"PYTHONPATH": str(tmp_path)},
                          "RuntimeError: simulated import failure"),
    }[broken]
    result = run_clean(compile_c(C_TESTS / "capi_init_fail.c"), env=env)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    calls = [line.split(" ", 4) for line in lines if line.startswith("CALL ")]
    assert len(calls) == 8
    for _, label, status, untouched, message in calls:
        assert int(status) == INIT, (label, message)
        assert untouched == "1", label
        assert fragment in message, message
        assert re.match(r"nln_\w+: ", message), message
    assert "CUDA_AVAILABLE 0" in lines
    assert f"VERSION {numba_ln.__version__}" in lines


# --------------------------------------------------------------------------- Python hosts

PYTHON_HOST_SCRIPT = r"""
import ctypes, datetime, sys
import numpy as np
import numba_ln

# An attribute lookup on any capsule gives PyCapsule_Type a version tag
# (importing torch does the same). cffi < 3.12's start-up lock is that field.
getattr(datetime.datetime_CAPI, "no_such_attribute", None)
lib = ctypes.CDLL(sys.argv[1])
i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
lib.nln_layer_norm_f32.argtypes = [ptr, i64, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, f32]
x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
y = np.empty_like(x)
status = lib.nln_layer_norm_f32(x.ctypes.data, 40, None, None, y.ctypes.data, 40, None,
                                None, 3, 40, 1e-5)
assert status == 0, status
assert np.array_equal(y, numba_ln.layer_norm(x)), "C ABI and Python API differ"
print("HOST OK")
"""


def test_python_host_after_a_capsule_lookup(libdir, tmp_path):
    """A Python program may load the library with ctypes whatever it imported first.

    The first call starts cffi inside the running interpreter; before the fix
    it spun forever when the program had looked up an attribute on a capsule
    (as importing torch does), so the timeout is the failure.
    """
    script = tmp_path / "host.py"
    script.write_text(PYTHON_HOST_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(libdir / "libnumba_ln.so")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "HOST OK" in result.stdout, result.stderr


PYTHON_HOST_RACE_SCRIPT = r"""
import ctypes, sys, threading
import numpy as np

# PyDLL keeps the GIL during a call, as a C extension that does not release it
# would. numba_ln is not imported yet: the library's start-up imports it, runs
# Python for a good while, and so hands the GIL to the other threads.
lib = ctypes.PyDLL(sys.argv[1])
threads, init_every = int(sys.argv[2]), int(sys.argv[3])
i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
lib.nln_layer_norm_f32.argtypes = [ptr, i64, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, f32]
x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
outputs = [np.zeros_like(x) for _ in range(threads)]
statuses = [None] * threads
start = threading.Barrier(threads)


def first_call(i):
    start.wait()
    if init_every and i % init_every == 1:
        statuses[i] = lib.nln_init()
        outputs[i] = None
    else:
        statuses[i] = lib.nln_layer_norm_f32(x.ctypes.data, 40, None, None,
                                             outputs[i].ctypes.data, 40, None, None, 3, 40,
                                             1e-5)


workers = [threading.Thread(target=first_call, args=(i,)) for i in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
import numba_ln

assert statuses == [0] * threads, statuses
expected = numba_ln.layer_norm(x)
assert all(y is None or np.array_equal(y, expected) for y in outputs), "results differ"
print("HOST OK", sum(y is None for y in outputs))
"""


@pytest.mark.parametrize("threads, init_every", [(2, 0), (8, 0), (2, 2), (8, 2)],
                         ids=["2-calls", "8-calls", "2-init-and-call", "8-init-and-calls"])
def test_python_threads_holding_the_gil_start_the_library_together(libdir, tmp_path,
                                                                   threads, init_every):
    """Python threads that keep the GIL (ctypes.PyDLL) make the first calls at once.

    The start-up runs Python; a thread that waits for it must not hold the GIL
    meanwhile, or the two wait for each other. The timeout is the failure.
    With ``init_every = 2``, every second thread calls ``nln_init()`` instead.
    """
    script = tmp_path / "race.py"
    script.write_text(PYTHON_HOST_RACE_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(libdir / "libnumba_ln.so"),
                             str(threads), str(init_every)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"HOST OK {threads // 2 if init_every else 0}\n", result.stdout


# --------------------------------------------------------------------------- GPU

GPU_SCRIPT = r"""
import ctypes, sys
import numpy as np
from numba import cuda
import numba_ln

lib = ctypes.CDLL(sys.argv[1])
i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
lib.nln_cuda_layer_norm_f32.argtypes = [ptr, i64, ptr, ptr, ptr, i64, ptr, ptr, i64, i64,
                                        f32, ptr]
lib.nln_cuda_layer_norm_backward_f32.argtypes = [ptr, i64, ptr, i64, ptr, ptr, ptr, ptr,
                                                 i64, ptr, ptr, i64, i64, ptr]
lib.nln_last_error.restype = ctypes.c_char_p
assert lib.nln_cuda_available() == 1, lib.nln_last_error()
rows, cols, ld = 300, 200, 208
rng = np.random.default_rng(0)
x = np.full((rows, ld), 7.0, np.float32); x[:, :cols] = rng.standard_normal((rows, cols))
w = rng.standard_normal(cols).astype(np.float32)
b = rng.standard_normal(cols).astype(np.float32)
dy = rng.standard_normal((rows, cols)).astype(np.float32)
stream = cuda.stream()
d_x, d_w, d_b, d_dy = (cuda.to_device(a, stream=stream) for a in (x, w, b, dy))
d_y = cuda.to_device(np.full((rows, ld), 7.0, np.float32), stream=stream)
d_mean, d_rstd = cuda.device_array(rows, np.float32), cuda.device_array(rows, np.float32)
d_dx = cuda.to_device(np.full((rows, ld), 7.0, np.float32), stream=stream)
d_dw, d_db = cuda.device_array(cols, np.float32), cuda.device_array(cols, np.float32)
a = lambda d: d.__cuda_array_interface__["data"][0]
handle = getattr(stream.handle, "value", None) or int(stream.handle)
status = lib.nln_cuda_layer_norm_f32(a(d_x), ld, a(d_w), a(d_b), a(d_y), ld, a(d_mean),
                                     a(d_rstd), rows, cols, 1e-5, handle)
assert status == 0, lib.nln_last_error()
status = lib.nln_cuda_layer_norm_backward_f32(a(d_dy), cols, a(d_x), ld, a(d_mean),
                                              a(d_rstd), a(d_w), a(d_dx), ld, a(d_dw),
                                              a(d_db), rows, cols, handle)
assert status == 0, lib.nln_last_error()
stream.synchronize()
y_ref, mean_ref, rstd_ref = numba_ln.layer_norm(x[:, :cols], w, b, return_stats=True)
y = d_y.copy_to_host()
np.testing.assert_allclose(y[:, :cols], y_ref, rtol=1e-4, atol=1e-4)
assert (y[:, cols:] == 7.0).all()
np.testing.assert_allclose(d_mean.copy_to_host(), mean_ref.ravel(), rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(d_rstd.copy_to_host(), rstd_ref.ravel(), rtol=1e-4)
dx_ref, dw_ref, db_ref = numba_ln.layer_norm_backward(dy, x[:, :cols], mean_ref, rstd_ref, w)
dx = d_dx.copy_to_host()
np.testing.assert_allclose(dx[:, :cols], dx_ref, rtol=1e-3, atol=1e-3)
assert (dx[:, cols:] == 7.0).all()
np.testing.assert_allclose(d_dw.copy_to_host(), dw_ref, rtol=1e-3, atol=1e-3)
np.testing.assert_allclose(d_db.copy_to_host(), db_ref, rtol=1e-3, atol=1e-3)
print("GPU OK")
"""


def test_gpu_entry_points_on_device_pointers(libdir, tmp_path):
    from numba_ln import _cabi

    if _cabi.cuda_unavailable_reason() is not None:
        pytest.skip(f"no GPU: {_cabi.cuda_unavailable_reason()}")
    script = tmp_path / "gpu_capi.py"
    script.write_text(GPU_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(libdir / "libnumba_ln.so")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "GPU OK" in result.stdout, result.stderr


UNSUPPORTED = 2
GPU_CASES = [(function, suffix) for function in NEW_FUNCTIONS for suffix in ("f32", "f64")]
GPU_CASES += [(function, suffix) for function in FUNCTIONS for suffix in HALF]
#: The GPU's results against the CPU's: one or two roundings of the data type apart.
GPU_TOLERANCE = {"f32": 1e-3, "f64": 1e-9, "f16": 4e-3, "bf16": 3e-2}


@pytest.mark.parametrize("function, suffix", GPU_CASES)
def test_new_gpu_functions_match_the_cpu(capi, function, suffix):
    """The nln_cuda_* functions of issues 17 and 18 on device copies of a CPU call's buffers.

    Needs a GPU; skips while the CUDA backend has no RMSNorm and residual
    kernels (the function then returns NLN_ERR_UNSUPPORTED). The bfloat16
    functions hand the CUDA backend numba device arrays of typestr "<V2": on
    main that backend does not take them yet, and they skip (with its
    message) until the CUDA backend's bfloat16 branch is merged.
    """
    from numba_ln import _cabi

    if _cabi.cuda_unavailable_reason() is not None:
        pytest.skip(f"no GPU: {_cabi.cuda_unavailable_reason()}")
    from numba import cuda

    def raw(a):  # numba knows no bfloat16: 16-bit buffers travel as their bits
        return a.view(np.uint16) if a.itemsize == 2 else a

    for variant in VARIANTS:
        shape = (300, 200, 208, 210)
        expected = _NewCase(function, suffix, shape, variant)
        assert capi.call(f"nln_{function}_{suffix}", expected.values) == 0, capi.last_error()
        case = _NewCase(function, suffix, shape, variant)
        copies = {id(a): cuda.to_device(raw(a)) for a in case.values.values()
                  if isinstance(a, np.ndarray)}  # one per buffer: in place stays in place
        on_device = {name: copies.get(id(value), value) for name, value in case.values.items()}
        status = capi.call(f"nln_cuda_{function}_{suffix}", on_device)
        if status == UNSUPPORTED:
            pytest.skip(f"needs the GPU kernels of issue 17: {capi.last_error()}")
        if suffix == "bf16" and status == INVALID:
            pytest.skip("needs the CUDA backend's bfloat16 (<V2) from its branch: "
                        + capi.last_error())
        assert status == 0, (variant, capi.last_error())
        cuda.synchronize()
        tolerance = GPU_TOLERANCE[suffix]
        for name, value in expected.values.items():
            if isinstance(value, np.ndarray):
                got = on_device[name].copy_to_host().view(value.dtype)
                np.testing.assert_allclose(np.asarray(got, np.float64),
                                           np.asarray(value, np.float64),
                                           rtol=tolerance, atol=tolerance,
                                           err_msg=f"{variant}: {name}")

def test_cpu_entry_points_are_compiled_c_functions():
    from numba_ln import _cabi

    points = _cabi.entry_points()
    assert list(points) == _cabi.exported_names()
    assert all(isinstance(address, int) and address for address in points.values())
    # Call one directly, as the C side does: compiled code, no Python objects.
    x = np.arange(8, dtype=np.float32)
    y = np.empty_like(x)
    mean = np.empty(2, np.float32)
    rstd = np.empty(2, np.float32)
    one = np.ones(1, np.float32)
    forward = _cabi._compiled["forward_f32"].ctypes
    as_ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    no_residual = None
    assert forward(points["forward_rows_f32"], as_ptr(x), 4, no_residual, 0, as_ptr(one),
                   as_ptr(one), 0, 0, as_ptr(y), 4, no_residual, 0, as_ptr(mean), as_ptr(rstd),
                   0, 1, 1, 2, 4, 0.0, 1, 0) == _cabi.OK
    ref, ref_mean, ref_rstd = numba_ln.layer_norm(x.reshape(2, 4), eps=0.0, return_stats=True)
    np.testing.assert_array_equal(y.reshape(2, 4), ref)
    np.testing.assert_array_equal(mean, ref_mean.ravel())


@pytest.mark.parametrize("suffix", HALF)
def test_widen_entry_points_match_numpy_for_every_bit_pattern(suffix):
    """The 16-bit functions' gains are widened by ``widen_f16`` / ``widen_bf16``:
    every one of the 65,536 bit patterns gives NumPy's (ml_dtypes') float32."""
    from numba_ln import _cabi

    _needs_dtype(suffix)
    _cabi.entry_points()
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.size, np.float32)
    as_ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    assert _cabi._compiled[f"widen_{suffix}"].ctypes(as_ptr(bits), bits.size,
                                                     as_ptr(out)) == _cabi.OK
    expected = bits.view(PRECISIONS[suffix][0]).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))


GPU_WIDEN_SCRIPT = r"""
import numpy as np, ml_dtypes
from numba import cuda
from numba_ln import _cabi

top_half, convert = _cabi._widen_kernels()
bits = np.concatenate([np.arange(0, 1 << 16, 97).astype(np.uint16), np.array(
    [0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x7d00, 0x007f,
     0x0080, 0x7f7f, 0x7f80, 0xff80, 0x7fc0, 0x7f81, 0xffff], np.uint16)])
out_bits = np.zeros(bits.size, np.uint32)
top_half.forall(bits.size)(bits, out_bits)
assert np.array_equal(out_bits.view(np.float32), bits.view(ml_dtypes.bfloat16).astype(np.float32),
                      equal_nan=True)
halves = bits.view(np.float16)
out = np.zeros(bits.size, np.float32)
convert.forall(bits.size)(halves, out)
assert np.array_equal(out, halves.astype(np.float32), equal_nan=True)
print("WIDEN OK", bits.size)
"""


def test_gpu_widening_kernels_on_the_simulator(tmp_path):
    """The kernels that widen 16-bit gains on the device, on a sample of bit
    patterns (a Python thread per CUDA thread: not all 65,536)."""
    _needs_dtype("bf16")
    script = tmp_path / "widen.py"
    script.write_text(GPU_WIDEN_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, timeout=300)
    assert result.returncode == 0 and "WIDEN OK" in result.stdout, result.stderr


def test_entry_points_share_the_guarded_kernel_cache():
    """numba keys a cache on the entry point's own file; ``_cache`` empties the
    directory when a kernel source changes, and the entry points live there too."""
    from numba_ln import _cabi, cpu

    if not numba_ln._config.CACHE:
        pytest.skip("the on-disk cache is off")
    guarded = cpu.ln_fwd_rows._cache._cache_path
    _cabi.entry_points()
    for entry in _cabi._compiled.values():
        assert entry._cache._cache_path == guarded


def test_readme_c_example_compiles_and_runs(compile_c, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- section: c -->")[1].split("<!-- end section: c -->")[0]
    blocks = re.findall(r"```c\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    source = tmp_path / "readme_example.c"
    source.write_text(blocks[0])
    result = run_clean(compile_c(source))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == "-1.22474 0 1.22474 (mean 2)\n"


def test_read_only_install(compile_c, tmp_path):
    """The C library in a read-only install: no writable package, home or cache directory.

    The embedded interpreter imports a read-only copy of numba_ln (PYTHONPATH)
    as a process without the capabilities that let root ignore file modes;
    the kernels come from the cache the copy ships, or are compiled in memory.
    """
    from test_readonly_install import (_make_read_only, _unprivileged, copy_install,
                                       install_environment)

    import numba_ln._cabi  # noqa: F401  (fills the package's cache with the entry points)

    site, home = copy_install(tmp_path)
    _make_read_only(site)
    _make_read_only(home)
    x = np.random.default_rng(6).standard_normal((300, 200))  # threaded: 60000 elements
    text = f"{x.shape[0]} {x.shape[1]}\n" + "\n".join(
        " ".join(repr(float(v)) for v in row) for row in x)
    exe = compile_c(ROOT / "capi" / "examples" / "normalize.c")
    env = install_environment(site, home)
    result = subprocess.run(_unprivileged([str(exe), "1e-3"]), input=text.encode(),
                            capture_output=True, env=env, timeout=600)
    for directory, _, _ in os.walk(tmp_path):
        os.chmod(directory, 0o755)
    assert result.returncode == 0, result.stderr.decode()
    body = result.stdout.decode().split("# mean rstd\n")[0]
    np.testing.assert_array_equal(np.loadtxt(body.splitlines(), ndmin=2),
                                  numba_ln.layer_norm(x, eps=1e-3))
    assert b"Warning" not in result.stderr, result.stderr.decode()


DLCLOSE_SCRIPT = r"""
import ctypes, sys, time, _ctypes
import numpy as np

x = np.ones((4096, 64), np.float32)  # large: the pool's workers start, then spin
y = np.empty_like(x)
for cycle in range(5):
    lib = ctypes.CDLL(sys.argv[1])
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    lib.nln_layer_norm_f32.argtypes = [ptr, i64, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, f32]
    status = lib.nln_layer_norm_f32(x.ctypes.data, 64, None, None, y.ctypes.data, 64, None,
                                    None, 4096, 64, 1e-5)
    assert status == 0, status
    _ctypes.dlclose(lib._handle)
    time.sleep(0.05)  # the workers spin, then sleep: both in the library's code
print("DLCLOSE OK")
"""


def test_dlclose_after_a_large_call(libdir, tmp_path):
    """A host that unloads the library while its idle workers exist must not crash."""
    script = tmp_path / "dlclose.py"
    script.write_text(DLCLOSE_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(libdir / "libnumba_ln.so")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "DLCLOSE OK" in result.stdout, result.stderr
