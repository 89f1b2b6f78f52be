"""Every CUDA kernel compiles, for every dtype, to PTX and SASS without spilling.

No GPU is needed: NVVM targets a compute capability without asking a driver,
and ``ptxas`` (from the ``nvidia-cuda-nvcc-cu12`` wheel, found through the
installed package, never PATH) assembles the PTX and reports registers,
stack frame and spill bytes per kernel (``ptx_metrics.ptxas_usage``, which
``python tests/ptx_metrics.py`` shares). The PTX is what ``python -m
numba_ln.ptx`` writes: the tests compile through ``numba_ln.ptx``, whose
cache types and lowers each kernel once per process and runs NVVM once per
architecture, so the command's own checks below cost no compilation.

``python tests/test_ptx.py`` prints the register table of docs/gpu.md.
"""

import re
import subprocess
import sys

import pytest

from numba_ln import ptx
from ptx_metrics import find_ptxas, ptxas_usage


def assemble(kernel, dtype, arch, ptxas, workdir):
    """Write one kernel's PTX for ``arch`` as the command does, assemble it; return ptxas's numbers."""
    (source,) = ptx.write_ptx(workdir, arch, [kernel], [dtype])
    return ptxas_usage(source, arch, ptxas)


@pytest.fixture(scope="module")
def ptxas():
    path = find_ptxas()
    if path is None:
        pytest.skip("ptxas not found: install the GPU extras, pip install 'numba-ln[cuda]'")
    return path


@pytest.mark.parametrize("arch", ptx.ARCHES)
@pytest.mark.parametrize("dtype", ptx.DTYPES)
@pytest.mark.parametrize("kernel", ptx.KERNELS)
def test_kernel_compiles_without_spills(kernel, dtype, arch, ptxas, tmp_path):
    numbers = assemble(kernel, dtype, arch, ptxas, tmp_path)
    assert numbers["spill_stores"] == numbers["spill_loads"] == 0, numbers
    # No local-memory frame either: the warp kernels' register caches really
    # are registers (fully unrolled), not a stack array.
    assert numbers["stack"] == 0, numbers
    assert numbers["registers"] <= 255


def test_signatures_cover_every_kernel():
    from numba_ln import gpu
    for dtype in ptx.DTYPES:
        assert (set(gpu.signatures(dtype)) == set(ptx.KERNELS.values())
                == set(gpu.KernelSet._fields))


def test_kernel_names_say_pass_and_variant():
    assert len(set(ptx.KERNELS)) == len(ptx.KERNELS) == 7
    for name, factory in ptx.KERNELS.items():
        assert name.startswith("bwd_" if factory.startswith(("backward", "reduce")) else "fwd_")
    assert ptx.KERNELS["bwd_reduce_column"] == "reduce1_thread_per_column"


# Defined after the spill tests: pytest runs them first, so the kernels are
# already compiled for both architectures and this test only writes files.
@pytest.mark.parametrize("arch", ptx.ARCHES)
def test_command_writes_one_file_per_kernel_and_dtype(arch, tmp_path, capsys):
    written = ptx.main(["--arch", arch, "--out", str(tmp_path / "ptx")])
    names = {f"{kernel}.{dtype}.ptx" for kernel in ptx.KERNELS for dtype in ptx.DTYPES}
    assert len(names) == 21
    assert {path.name for path in (tmp_path / "ptx").iterdir()} == names
    assert capsys.readouterr().out.split() == [str(path) for path in written]
    for path in written:
        code = path.read_text()
        assert len(re.findall(r"^(?:\.visible\s+)?\.entry\s", code, re.M)) == 1, path.name
        assert re.findall(r"^\.target (\S+)", code, re.M) == [arch], path.name


def _no_compile(*key):
    pytest.fail(f"a bad --arch must fail before anything compiles, not compile {key}")


def test_command_rejects_an_unknown_arch(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        ptx.main(["--arch", "sm_75", "--out", str(tmp_path)],
                 compile_kernel=_no_compile)
    assert exit_.value.code == 2
    assert "argument --arch: invalid choice: 'sm_75'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="sm_80, sm_90"):
        ptx.write_ptx(tmp_path, "sm_75", compile_kernel=_no_compile)


def test_help_names_every_kernel(capsys):
    with pytest.raises(SystemExit) as exit_:
        ptx.main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "<kernel>.<dtype>.ptx" in text
    assert all(f"{name} ({factory})" in text for name, factory in ptx.KERNELS.items())


def test_command_without_numba_cuda_names_the_extra(tmp_path):
    # The real entry point in a fresh process where numba-cuda cannot be
    # imported (runpy is what `python -m` runs): one line, no traceback.
    hide_numba_cuda = ("import runpy, sys; sys.modules['numba_cuda'] = None; "
                       "runpy.run_module('numba_ln.ptx', run_name='__main__', alter_sys=True)")
    run = subprocess.run([sys.executable, "-c", hide_numba_cuda, "--arch", "sm_90",
                          "--out", str(tmp_path / "ptx")], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("python -m numba_ln.ptx: numba-cuda is not installed")
    assert "pip install 'numba-ln[cuda]'" in run.stderr
    assert not (tmp_path / "ptx").exists()


def main():
    """Print the registers table (markdown) for docs/gpu.md."""
    import tempfile
    ptxas = find_ptxas()
    if ptxas is None:
        sys.exit("ptxas not found")
    header = "| kernel | dtype | " + " | ".join(
        f"{arch} registers | {arch} spill bytes" for arch in ptx.ARCHES) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(ptx.ARCHES)))
    with tempfile.TemporaryDirectory() as workdir:
        for kernel, factory in ptx.KERNELS.items():
            for dtype in ptx.DTYPES:
                cells = []
                for arch in ptx.ARCHES:
                    numbers = assemble(kernel, dtype, arch, ptxas, workdir)
                    cells += [str(numbers["registers"]),
                              str(numbers["spill_stores"] + numbers["spill_loads"])]
                name = ptx.shipped_kernel(kernel, dtype).py_func.__name__
                print(f"| `{factory}` (`{name}`) | {dtype} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
