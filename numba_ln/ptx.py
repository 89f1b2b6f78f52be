"""Write the PTX of every shipped CUDA kernel, for one architecture, without a GPU.

``python -m numba_ln.ptx --arch sm_90 --out DIR`` writes one file per kernel
and dtype, ``DIR/<kernel>.<dtype>.ptx``: ``<kernel>`` is a name of
:data:`KERNELS` (``fwd_...`` for the forward pass, ``bwd_...`` for the
backward pass and its gradient reduction; ``rms_...`` for RMSNorm, and
``add_ln_...``/``add_rms_...`` with the residual stream), ``<dtype>`` the
storage dtype of ``x`` (float16, float32, float64; bfloat16 for the kernels
that name it, when ``ml_dtypes`` is installed). The kernels are the ones the backend
launches: the shipped tunables of ``_config`` and the exact argument types of
:func:`numba_ln.gpu.signatures`.

Only the ``[cuda]`` extra is needed (numba-cuda and its NVVM wheel): NVVM
compiles for a compute capability without asking a driver. ``tests/test_ptx.py``
compiles through :func:`kernel_ptx` too, so the files are what the tests
assemble with ``ptxas``.

numba.cuda is imported lazily, so this module imports without numba-cuda and
the command can say what to install.
"""

import argparse
import functools
import importlib.util
import pathlib
from typing import NamedTuple

#: Storage dtypes of ``x`` every kernel is compiled for (unless it names its own).
STANDARD_DTYPES = ("float16", "float32", "float64")
#: bfloat16 needs ml_dtypes' dtype (a test extra) to be named.
_BFLOAT16 = ("bfloat16",) if importlib.util.find_spec("ml_dtypes") else ()
#: Every storage dtype of ``x`` a kernel may be compiled for.
DTYPES = STANDARD_DTYPES + _BFLOAT16


class Kernel(NamedTuple):
    """One shipped kernel configuration: a factory of ``numba_ln/gpu.py`` and its flags."""

    factory: str              #: a key of ``gpu.FACTORIES``, or "reduce1_partials"
    vector: object            #: vector variant? (None: the reduction, which has one)
    centered: bool = True     #: False: RMSNorm
    residual: object = None   #: None; "x" (the residual in x's dtype); or a dtype name
    dtypes: tuple = STANDARD_DTYPES  #: dtypes of ``x`` it is compiled for


_SCHEDULES = (("fwd_warp", "forward1_warp"), ("fwd_block", "forward2_block"),
              ("fwd_split_stats", "forward3_split_stats"),
              ("fwd_split_normalize", "forward4_split_normalize"),
              ("bwd_warp", "backward1_warp"), ("bwd_block", "backward2_block"),
              ("bwd_split_sums", "backward3_split_sums"),
              ("bwd_split_dx", "backward4_split_dx"))

#: File-name kernel -> :class:`Kernel`. Layer norm's kernels in both variants; of the RMSNorm
#: and residual ones, the vector kernels that exercise code layer norm's do not (the scalar
#: ones differ only in their accesses, which layer norm's prove): RMSNorm's forward (its split
#: second kernel is layer norm's less the mean's store), the residual forward (centered: the
#: most registers; and a float32 residual with float16 ``x``), RMSNorm's backward with
#: dresidual; for float16 (eight elements a vector, the most a thread holds) and float64 (the
#: widest values), whose registers bracket float32's.
KERNELS = {
    f"{short}_{variant}": Kernel(factory, variant == "vector")
    for short, factory in _SCHEDULES for variant in ("vector", "scalar")}
KERNELS["bwd_reduce"] = Kernel("reduce1_partials", None)
_FACTORY = dict(_SCHEDULES)
_EXTREMES = ("float16", "float64")
# bfloat16: float16's kernels but for the conversions in the row accesses, so the vector
# forward and backward schedules (and the residual's rounding of s) prove them.
for _name in ("fwd_warp_vector", "fwd_block_vector", "fwd_split_stats_vector",
              "fwd_split_normalize_vector", "bwd_warp_vector", "bwd_block_vector"):
    KERNELS[_name] = KERNELS[_name]._replace(dtypes=STANDARD_DTYPES + _BFLOAT16)
KERNELS.update(
    {f"rms_{short}_vector": Kernel(_FACTORY[short], True, False, None, _EXTREMES)
     for short in ("fwd_warp", "fwd_block", "fwd_split_stats")})
KERNELS.update(
    {f"add_ln_{short}_vector": Kernel(_FACTORY[short], True, True, "x", _EXTREMES)
     for short in ("fwd_warp", "fwd_block", "fwd_split_stats")})
KERNELS["add_ln_fwd_warp_vector"] = KERNELS["add_ln_fwd_warp_vector"]._replace(
    dtypes=_EXTREMES + _BFLOAT16)
KERNELS["add_rms_fwd_warp_vector_r32"] = Kernel("forward1_warp", True, False, "float32",
                                                ("float16",))
KERNELS.update(
    {f"add_rms_{short}_vector": Kernel(_FACTORY[short], True, False, "x", _EXTREMES)
     for short in ("bwd_warp", "bwd_block", "bwd_split_dx")})

#: Architectures the command writes for, and the tests assemble without spills.
ARCHES = ("sm_80", "sm_90")

_MISSING_CUDA = ("numba-cuda is not installed; install the GPU target with "
                 "`pip install 'numba-ln[cuda]'`")


def compute_capability(arch):
    """The compute capability of an ``sm_XY`` architecture name.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHES`.

    Returns
    -------
    tuple of int
        ``(major, minor)``.

    Raises
    ------
    ValueError
        When ``arch`` is not one of :data:`ARCHES`.

    Examples
    --------
    >>> compute_capability("sm_90")
    (9, 0)
    """
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}, not {arch!r}")
    return int(arch[3:-1]), int(arch[-1])


def outputs(kernels=None, dtypes=None):
    """The PTX files the command writes, in table order, each with its kernel and dtype.

    Parameters
    ----------
    kernels, dtypes : sequence of str, optional
        Names of :data:`KERNELS` and of :data:`DTYPES` (default: all of them).

    Returns
    -------
    dict of str to tuple of str
        ``<kernel>.<dtype>.ptx`` to ``(kernel, dtype)``.

    Examples
    --------
    >>> len(outputs()) - 7 * ("bfloat16" in DTYPES)
    70
    >>> outputs(["bwd_reduce"], ["float16"])
    {'bwd_reduce.float16.ptx': ('bwd_reduce', 'float16')}
    """
    return {f"{kernel}.{dtype}.ptx": (kernel, dtype) for kernel in (kernels or KERNELS)
            for dtype in (dtypes or DTYPES) if dtype in KERNELS[kernel].dtypes}


def residual_dtype(kernel, dtype):
    """The dtype of kernel ``kernel``'s residual stream for ``x`` of ``dtype`` (None: none).

    Examples
    --------
    >>> residual_dtype("add_rms_fwd_warp_vector_r32", "float16")
    'float32'
    >>> kernels = ("add_ln_fwd_warp_vector", "fwd_warp_vector")
    >>> [residual_dtype(kernel, "float64") for kernel in kernels]
    ['float64', None]
    """
    residual = KERNELS[kernel].residual
    return dtype if residual == "x" else residual


def _signature_dtype(name):
    """``name`` as :func:`numba_ln.gpu.signatures` takes it."""
    return None if name is None else _storage_dtype(name)


def _signature(kernel, dtype):
    """The argument types ``kernel`` is launched with for ``x`` of ``dtype``."""
    from . import gpu
    factory = KERNELS[kernel].factory
    residual = residual_dtype(kernel, dtype) if factory.startswith("forward") else None
    return gpu.signatures(_storage_dtype(dtype),
                          residual_dtype=_signature_dtype(residual))[factory]


def shipped_kernel(kernel, dtype):
    """The kernel launched for ``x`` of ``dtype`` under the shipped tunables (not compiled).

    The register-heaviest configuration the plan can choose: the most
    vectors a thread holds (``gpu.max_chunks``), 32-bit column offsets.

    Parameters
    ----------
    kernel, dtype : str
        A name of :data:`KERNELS`, and one of :data:`DTYPES`.

    Returns
    -------
    numba.cuda dispatcher

    Examples
    --------
    >>> shipped_kernel("fwd_warp_vector", "float16").py_func.__name__
    '_ln_fwd_warp_vector'
    >>> shipped_kernel("add_rms_bwd_warp_vector", "float16").py_func.__name__
    '_add_rms_bwd_warp_vector'
    """
    from . import gpu
    from ._validate import compute_dtype
    factory, vector, centered = KERNELS[kernel][:3]
    storage = _storage_dtype(dtype)
    if vector is None:
        return gpu.reduction_kernel(storage, compute_dtype(storage), gpu._tunables(), centered)
    vec = gpu.VECTOR_BYTES // storage.itemsize if vector else 1
    residual = residual_dtype(kernel, dtype)
    held = residual if factory.startswith("forward") else None
    return gpu.kernel(factory, storage, vec, gpu.max_chunks(factory, storage, vec, held),
                      "uint32", gpu._tunables(), centered, residual)


def _storage_dtype(name):
    """The NumPy dtype named ``name`` (bfloat16: ml_dtypes', imported on demand)."""
    import numpy as np
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _launch_bounds(kernel):
    """The launch bounds the kernel's dispatcher compiles with (None for none)."""
    return shipped_kernel(kernel, KERNELS[kernel].dtypes[0]).targetoptions.get("launch_bounds")


@functools.cache
def _library(kernel, dtype):
    """One kernel typed and lowered once, for NVVM to compile per architecture; None
    where numba-cuda lacks the internal function (``kernel_ptx`` then compiles from scratch)."""
    try:
        from numba.cuda.compiler import _compile_pyfunc_with_fixup
    except ImportError:
        return None
    from . import _config
    # Lowered for the lowest architecture; NVVM targets each one from the same IR.
    library, _ = _compile_pyfunc_with_fixup(
        shipped_kernel(kernel, dtype).py_func, _signature(kernel, dtype),
        device=False, fastmath=_config.CUDA_FASTMATH, cc=compute_capability(ARCHES[0]),
        abi="numba", launch_bounds=_launch_bounds(kernel))
    return library


def kernel_ptx(kernel, dtype, arch):
    """The PTX of one shipped kernel for ``arch``.

    Each kernel and dtype is typed and lowered once per process, and NVVM
    runs once per architecture (numba-cuda keeps the PTX per compute
    capability), so asking again is free.

    Parameters
    ----------
    kernel, dtype : str
        A name of :data:`KERNELS`, and one of :data:`DTYPES`.
    arch : str
        One of :data:`ARCHES`.

    Returns
    -------
    str
        The PTX module: one ``.entry``, the device helpers inlined.

    Examples
    --------
    >>> code = kernel_ptx("bwd_reduce", "float32", "sm_90")
    >>> code.count(".entry"), ".target sm_90" in code
    (1, True)
    """
    cc = compute_capability(arch)
    library = _library(kernel, dtype)
    if library is not None:
        (code,) = library.get_asm_strs(cc=cc)
        return code
    from numba import cuda

    from . import _config
    code, _ = cuda.compile_ptx(shipped_kernel(kernel, dtype).py_func,
                               _signature(kernel, dtype), cc=cc,
                               fastmath=_config.CUDA_FASTMATH,
                               launch_bounds=_launch_bounds(kernel))
    return code


def write_ptx(out, arch, kernels=None, dtypes=None, compile_kernel=kernel_ptx):
    """Write ``<kernel>.<dtype>.ptx`` for each kernel and dtype into ``out``.

    Parameters
    ----------
    out : str or pathlib.Path
        Folder, created when missing; files of the same name are replaced,
        others are left alone.
    arch : str
        One of :data:`ARCHES`.
    kernels, dtypes : sequence of str, optional
        Names of :data:`KERNELS` and of :data:`DTYPES` (default: all of them).
    compile_kernel : callable, optional
        ``(kernel, dtype, arch) -> str``; :func:`kernel_ptx` unless a caller
        (a test) brings its own.

    Returns
    -------
    list of pathlib.Path
        The files written, in :func:`outputs` order.

    Examples
    --------
    >>> import tempfile
    >>> def fake(kernel, dtype, arch):
    ...     return f".target {arch}\\n.entry {kernel}()\\n"
    >>> with tempfile.TemporaryDirectory() as out:
    ...     [path.name for path in write_ptx(out, "sm_90", ["bwd_warp_scalar"], compile_kernel=fake)]
    ['bwd_warp_scalar.float16.ptx', 'bwd_warp_scalar.float32.ptx', 'bwd_warp_scalar.float64.ptx']
    """
    compute_capability(arch)  # a bad arch fails before anything is compiled
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (kernel, dtype) in outputs(kernels, dtypes).items():
        path = out / name
        path.write_text(compile_kernel(kernel, dtype, arch))
        written.append(path)
    return written


def parser():
    """The command's argument parser.

    Returns
    -------
    argparse.ArgumentParser

    Examples
    --------
    >>> parser().parse_args(["--arch", "sm_80", "--out", "ptx"]).arch
    'sm_80'
    """
    p = argparse.ArgumentParser(
        prog="python -m numba_ln.ptx",
        description=(
            "Write the PTX of every shipped numba-ln CUDA kernel (the shipped tunables, the "
            "argument types the backend launches) for one architecture: one file per kernel "
            "and dtype, DIR/<kernel>.<dtype>.ptx. Needs numba-ln[cuda], no GPU and no driver."),
        epilog="kernels: " + ", ".join(f"{name} ({kernel.factory})"
                                       for name, kernel in KERNELS.items()))
    p.add_argument("--arch", required=True, choices=ARCHES,
                   help="target architecture (compute capability 8.0 or 9.0)")
    p.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                   help="folder to write into (created when missing)")
    p.add_argument("--kernel", action="append", choices=list(KERNELS), metavar="KERNEL",
                   help="only this kernel (repeatable; default: all, named below)")
    p.add_argument("--dtype", action="append", choices=DTYPES,
                   help="only this dtype of x (repeatable; default: each kernel's own)")
    return p


def main(argv=None, compile_kernel=kernel_ptx):
    """Run the command: parse ``argv``, write the files, print one path a line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    compile_kernel : callable, optional
        Passed to :func:`write_ptx`.

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    SystemExit
        Status 2 for bad arguments (argparse's message), 1 without numba-cuda.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as out:  # doctest: +ELLIPSIS
    ...     paths = main(["--arch", "sm_90", "--out", out, "--kernel", "fwd_warp_vector",
    ...                   "--dtype", "float32"], compile_kernel=lambda *key: "")
    /.../fwd_warp_vector.float32.ptx
    """
    command = parser()
    args = command.parse_args(argv)
    if importlib.util.find_spec("numba_cuda") is None:
        command.exit(1, f"{command.prog}: {_MISSING_CUDA}\n")
    written = write_ptx(args.out, args.arch, args.kernel, args.dtype, compile_kernel)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
