"""Every CUDA kernel compiles, for every dtype, to PTX and SASS without spilling.

No GPU is needed: ``numba.cuda.compile_ptx`` targets a compute capability
without asking a driver, and ``ptxas`` (from the ``nvidia-cuda-nvcc-cu12``
wheel, found through the installed package, never PATH) assembles the PTX
and reports registers, stack frame and spill bytes per kernel. The kernels
compiled are the ones the backend launches -- the shipped tunables and the
exact argument types of ``numba_ln.gpu.signatures``.

``python tests/test_ptx.py`` prints the register table of docs/gpu.md.
"""

import functools
import importlib.util
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

DTYPES = ("float16", "float32", "float64")
ARCHES = ((8, 0), (9, 0))
KERNELS = ("forward1_warp_per_row", "forward2_block_per_row_shared",
           "forward3_block_per_row_streaming", "backward1_warp_per_row",
           "backward2_block_per_row_shared", "backward3_block_per_row_streaming",
           "reduce1_thread_per_column")

_USAGE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                    r"(\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def find_ptxas():
    """``ptxas`` from the nvidia-cuda-nvcc wheel, or None when it is not installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = pathlib.Path(root, "bin", "ptxas")
        if path.is_file():
            return path
    return None


def shipped_kernel(dtype, kernel):
    """The kernel launched for ``x`` of ``dtype`` under the shipped tunables (not compiled)."""
    from numba_ln import _config, gpu
    from numba_ln._validate import compute_dtype
    kernel_set = gpu.build_kernel_set(compute_dtype(np.dtype(dtype)),
                                      _config.CUDA_WARP_ITEMS_PER_THREAD,
                                      _config.CUDA_WARP_BLOCK_THREADS,
                                      _config.CUDA_ROW_BLOCK_THREADS, _config.CUDA_FASTMATH)
    return getattr(kernel_set, kernel)


@functools.lru_cache(maxsize=None)
def _library(dtype, kernel):
    """One kernel typed and lowered once, for NVVM to compile per architecture; None
    where numba-cuda lacks the internal function (``ptx`` then compiles from scratch)."""
    try:
        from numba.cuda.compiler import _compile_pyfunc_with_fixup
    except ImportError:
        return None
    from numba_ln import _config, gpu
    library, _ = _compile_pyfunc_with_fixup(
        shipped_kernel(dtype, kernel).py_func, gpu.signatures(dtype)[kernel], device=False,
        fastmath=_config.CUDA_FASTMATH, cc=ARCHES[0], abi="numba")
    return library


def ptx(dtype, kernel, cc):
    """The PTX of one shipped kernel for compute capability ``cc``."""
    library = _library(dtype, kernel)
    if library is not None:
        (code,) = library.get_asm_strs(cc=cc)
        return code
    from numba import cuda

    from numba_ln import _config, gpu
    code, _ = cuda.compile_ptx(shipped_kernel(dtype, kernel).py_func,
                               gpu.signatures(dtype)[kernel], cc=cc,
                               fastmath=_config.CUDA_FASTMATH)
    return code


def assemble(dtype, kernel, cc, ptxas, workdir):
    """Compile one kernel to PTX for ``cc``, assemble it; return ptxas's numbers."""
    arch = f"sm_{cc[0]}{cc[1]}"
    source = pathlib.Path(workdir, f"{kernel}_{dtype}_{arch}.ptx")
    source.write_text(ptx(dtype, kernel, cc))
    run = subprocess.run([str(ptxas), "-v", f"-arch={arch}", str(source), "-o", "/dev/null"],
                         capture_output=True, text=True, check=True)
    usage = _USAGE.findall(run.stderr)
    registers = _REGISTERS.findall(run.stderr)
    assert len(usage) == len(registers) == 1, run.stderr  # one entry, helpers inlined
    stack, spill_stores, spill_loads = map(int, usage[0])
    return {"registers": int(registers[0]), "stack": stack,
            "spill_stores": spill_stores, "spill_loads": spill_loads}


@pytest.fixture(scope="module")
def ptxas():
    path = find_ptxas()
    if path is None:
        pytest.skip("ptxas not found: install the GPU extras, pip install 'numba-ln[cuda]'")
    return path


@pytest.mark.parametrize("cc", ARCHES, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_compiles_without_spills(kernel, dtype, cc, ptxas, tmp_path):
    numbers = assemble(dtype, kernel, cc, ptxas, tmp_path)
    assert numbers["spill_stores"] == numbers["spill_loads"] == 0, numbers
    # No local-memory frame either: the warp kernels' register caches really
    # are registers (fully unrolled), not a stack array.
    assert numbers["stack"] == 0, numbers
    assert numbers["registers"] <= 255


def test_signatures_cover_every_kernel():
    from numba_ln import gpu
    for dtype in DTYPES:
        assert set(gpu.signatures(dtype)) == set(KERNELS) == set(gpu.KernelSet._fields)


def main():
    """Print the registers table (markdown) for docs/gpu.md."""
    import tempfile
    ptxas = find_ptxas()
    if ptxas is None:
        sys.exit("ptxas not found")
    header = "| kernel | dtype | " + " | ".join(
        f"sm_{a}{b} registers | sm_{a}{b} spill bytes" for a, b in ARCHES) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(ARCHES)))
    with tempfile.TemporaryDirectory() as workdir:
        for kernel in KERNELS:
            for dtype in DTYPES:
                cells = []
                for cc in ARCHES:
                    numbers = assemble(dtype, kernel, cc, ptxas, workdir)
                    cells += [str(numbers["registers"]),
                              str(numbers["spill_stores"] + numbers["spill_loads"])]
                name = shipped_kernel(dtype, kernel).py_func.__name__
                print(f"| `{kernel}` (`{name}`) | {dtype} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
