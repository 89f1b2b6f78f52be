"""The CUDA backend: availability, device-array detection, host glue for ``cuda.py``.

numba.cuda is imported lazily: a CPU-only user never pays for it.
"""

import functools
import importlib.util
import os


def simulator_enabled():
    """True when numba's CUDA simulator stands in for a GPU."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def is_device_array(obj):
    """True for any array that lives on a CUDA device (or the simulator's stand-in)."""
    if obj is None:
        return False
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    if simulator_enabled() and "numba.cuda" in type(obj).__module__:
        from numba import cuda
        return cuda.is_cuda_array(obj)
    return False


@functools.cache
def unavailable_reason():
    """None when kernels can run on a GPU here; otherwise why not, and what to do."""
    if importlib.util.find_spec("numba_cuda") is None:
        return ("numba-cuda is not installed; install the GPU target with "
                "`pip install 'numba-ln[cuda]'`")
    from numba import cuda
    if simulator_enabled():
        return None
    try:
        from numba.cuda.cudadrv.driver import driver
        driver.get_device_count()
    except Exception as exc:  # the driver's own words say what is missing
        message = " ".join(str(exc).split())
        return f"no usable CUDA driver: {message}"
    if not cuda.is_available():
        return "the CUDA driver reports no usable GPU"
    return None


def device_name():
    """The current GPU, as the driver names it, with its compute capability."""
    from numba import cuda
    device = cuda.get_current_device()
    major, minor = device.compute_capability
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return f"{name} (sm_{major}{minor})"
