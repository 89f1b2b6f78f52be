"""numba-ln: layer normalization on the CPU (numba) and NVIDIA GPUs (numba.cuda).

>>> import numpy as np, numba_ln
>>> y = numba_ln.layer_norm(np.ones((2, 8), np.float32))
"""

from . import _threading

_threading.configure()

from ._dispatch import CUDAUnavailableError  # noqa: E402
from .api import (Backend, backends, layer_norm, layer_norm_backward, rms_norm,  # noqa: E402
                  rms_norm_backward)

__version__ = "0.1.0"

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward", "backends",
           "Backend",
           "CUDAUnavailableError", "__version__"]
