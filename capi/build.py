"""Build libnumba_ln.so, the C interface of numba-ln, with cffi's embedding mode.

Usage::

    python capi/build.py [--outdir DIR]        # DIR defaults to build/

Run it with the python of the environment where numba_ln is installed (the
project's .venv): the library records that python and, when a C program
first calls it, starts an embedded interpreter exactly as that python starts
-- same standard library, same site-packages -- with no environment
variables. ``NUMBA_LN_PYTHON`` overrides the recorded python at run time.

Writes into DIR:

- ``libnumba_ln.so``: the library (links libpython with an rpath to it),
- ``numba_ln.h``: the header, capi/numba_ln.h,
- ``numba_ln.pc``: pkg-config metadata, so a program builds with
  ``gcc prog.c $(pkg-config --cflags --libs DIR/numba_ln.pc)``.

The header is the single description of the interface. Its declarations
(preprocessor lines, comments and the export macro removed) are fed to cffi's
``cdef``, so cffi checks the C definitions against them; the private
boundary between the C shim and the embedded Python is nln_shim.h, read the
same way with ``NLN_PYTHON_SIDE`` as ``extern "Python"``. The table of compiled
entry points (their function-pointer types, ``struct nln_runtime`` and the
X-macros the shim is built with) is written from ``numba_ln._cabi``'s one
list, before the shim's source and into the cdef. The public functions
are not ``embedding_api`` declarations: cffi implements those by calling
into Python, and the CPU functions must run without the interpreter.
"""

import argparse
import os
import pathlib
import re
import shutil
import sys
import sysconfig
import tempfile

CAPI = pathlib.Path(__file__).resolve().parent
MODULE = "_numba_ln_capi"
LIBRARY = "libnumba_ln"


def cdef_text(header, python_side=None):
    """The declarations of a C header in the subset of C that cffi's cdef parses.

    Parameters
    ----------
    header : str
        Header source.
    python_side : str, optional
        What the ``NLN_PYTHON_SIDE`` marker becomes (``'extern "Python"'``).

    Returns
    -------
    str
        The header without comments, ``#ifdef __cplusplus`` blocks,
        preprocessor lines and ``NLN_API``; ``#define NAME <integer>`` lines
        are kept (cffi exposes them as constants).
    """
    text = re.sub(r"/\*.*?\*/", " ", header, flags=re.S)
    text = re.sub(r"\\\n", " ", text)
    text = re.sub(r"^#ifdef __cplusplus\n.*?^#endif[^\n]*\n", "", text, flags=re.S | re.M)
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if re.fullmatch(r"#define\s+NLN_\w+\s+-?\d+", stripped):
                kept.append(stripped)
            continue
        kept.append(line)
    text = "\n".join(kept)
    text = re.sub(r"\bNLN_API\b", "", text)
    if python_side is not None:
        text = re.sub(r"\bNLN_PYTHON_SIDE\b", python_side, text)
    return text


def c_string(value):
    """``value`` as a C string literal (UTF-8; quotes, backslashes and controls escaped)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def header_version(header):
    """The ``NLN_VERSION_STRING`` of a header."""
    match = re.search(r'#define\s+NLN_VERSION_STRING\s+"([^"]+)"', header)
    if match is None:
        raise SystemExit("capi/numba_ln.h defines no NLN_VERSION_STRING")
    return match.group(1)


def pkg_config_text(outdir, version):
    """The contents of numba_ln.pc for a library and header in ``outdir``."""
    return (f"prefix={outdir}\n"
            "libdir=${prefix}\n"
            "includedir=${prefix}\n"
            "\n"
            "Name: numba_ln\n"
            "Description: Layer normalization on CPUs and NVIDIA GPUs "
            "(C interface of numba-ln)\n"
            f"Version: {version}\n"
            "Cflags: -I${includedir}\n"
            "Libs: -L${libdir} -lnumba_ln -Wl,-rpath,${libdir}\n")


def build(outdir, python=None, verbose=False):
    """Build the library, header and pkg-config file into ``outdir``.

    Parameters
    ----------
    outdir : path-like
        Created if missing.
    python : str, optional
        The python executable the library will embed; this build's
        ``sys.executable`` by default (it must have numba_ln installed).
    verbose : bool, default False
        Show the compiler's command lines.

    Returns
    -------
    pathlib.Path
        The built ``libnumba_ln.so``.

    Raises
    ------
    SystemExit
        numba_ln is not importable here, or its version differs from the
        header's.
    """
    import cffi

    try:
        import numba_ln
    except ImportError as exc:
        raise SystemExit(f"numba_ln is not importable by {sys.executable} ({exc}); run this "
                         "script with the python of the environment where it is installed")
    header = (CAPI / "numba_ln.h").read_text()
    version = header_version(header)
    if version != numba_ln.__version__:
        raise SystemExit(f"capi/numba_ln.h says version {version}, numba_ln is "
                         f"{numba_ln.__version__}: update NLN_VERSION_* in the header")
    python = python or sys.executable
    outdir = pathlib.Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)

    from numba_ln import _cabi

    entry_points = _cabi.c_declarations()
    ffibuilder = cffi.FFI()
    ffibuilder.cdef(cdef_text(header))
    ffibuilder.cdef(cdef_text(entry_points))
    ffibuilder.cdef(cdef_text((CAPI / "nln_shim.h").read_text(), 'extern "Python"'))
    ffibuilder.embedding_init_code((CAPI / "embedded_init.py").read_text())
    libdir = sysconfig.get_config_var("LIBDIR")
    source = (f"#define NLN_BUILD_PYTHON {c_string(python)}\n#include <stdint.h>\n"
              + entry_points + (CAPI / "nln_shim.c").read_text())
    ffibuilder.set_source(
        MODULE, source,
        include_dirs=[str(CAPI)],
        extra_compile_args=["-O2", "-Wall", "-fvisibility=hidden", "-pthread"],
        # nodelete: dlclose must not unmap code the pool's idle workers still run.
        extra_link_args=["-pthread", "-Wl,-z,nodelete"]
        + ([f"-Wl,-rpath,{libdir}"] if libdir else []),
    )
    with tempfile.TemporaryDirectory(prefix="numba_ln_capi_") as tmp:
        built = ffibuilder.compile(tmpdir=tmp, target=f"{LIBRARY}.*", verbose=verbose)
        library = outdir / pathlib.Path(built).name
        tmp_copy = library.with_suffix(".tmp")
        shutil.copyfile(built, tmp_copy)
        os.replace(tmp_copy, library)  # atomic: a running program keeps the old inode
    shutil.copyfile(CAPI / "numba_ln.h", outdir / "numba_ln.h")
    (outdir / "numba_ln.pc").write_text(pkg_config_text(outdir, version))
    return library


def main(argv=None):
    """Command-line entry point: ``python capi/build.py [--outdir DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", default="build",
                        help="where to write libnumba_ln.so, numba_ln.h and numba_ln.pc "
                             "(default: build/)")
    parser.add_argument("--python", default=None,
                        help="the python executable to embed (default: this one)")
    parser.add_argument("--verbose", action="store_true", help="show compiler commands")
    args = parser.parse_args(argv)
    library = build(args.outdir, args.python, args.verbose)
    print(f"built {library}")
    print(f"compile with: gcc prog.c $(pkg-config --cflags --libs "
          f"{library.parent / 'numba_ln.pc'})")


if __name__ == "__main__":
    main()
