"""Each operation the GPU kernels serve, run on device copies of NumPy inputs.

``gpu_reference.OPS``: layer norm through the public API; RMSNorm and the
fused residual add through ``_cuda_backend`` (their public forms are the
API's to add). ``add_rms`` writes ``s`` in place over ``residual``.
"""

import numpy as np
from numba import cuda

import numba_ln
from numba_ln import _cuda_backend
from numba_ln._validate import backward_spec, forward_spec


def residual_dtype(op, dtype):
    """The residual's dtype for ``op`` and ``x`` of ``dtype`` (None: no residual): ``x``'s,
    but float32 for ``add_rms`` with 16-bit ``x`` (the residual stream kept wider)."""
    if not op.startswith("add_"):
        return None
    wider = op == "add_rms" and np.dtype(dtype).name in ("float16", "bfloat16")
    return np.dtype(np.float32 if wider else dtype)


def host(a):
    """``a`` on the host (NumPy arrays as they are)."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def forward(op, x, weight, bias, residual=None, axis=-1):
    """``op``'s forward on device copies: ``(y, s, mean, rstd)`` as device arrays, None
    where there is none."""
    d_x, d_w, d_b = (None if a is None else cuda.to_device(a) for a in (x, weight, bias))
    if op == "ln":
        y, mean, rstd = numba_ln.layer_norm(d_x, d_w, d_b, axis=axis, return_stats=True)
        return y, None, mean, rstd
    centered = op.endswith("ln")
    d_b = d_b if centered else None
    spec, eps = forward_spec(x, weight, bias if centered else None, axis, 1e-5, None)
    d_r = None if residual is None else cuda.to_device(residual)
    in_place = d_r if op == "add_rms" else None
    y, s, mean, rstd = _cuda_backend.forward(spec, d_x, d_w, d_b, eps, None, centered=centered,
                                             residual=d_r, residual_out=in_place)
    assert in_place is None or s is in_place
    return y, s, mean, rstd


def backward(op, dy, x, mean, rstd, weight, dresidual=None, axis=-1):
    """``op``'s gradients on device copies: ``(dx, dweight, dbias)``, ``dbias`` None for RMSNorm."""
    d_dy, d_x, d_w = (None if a is None else cuda.to_device(a) for a in (dy, x, weight))
    d_rstd = cuda.to_device(rstd)
    if op == "ln":
        return numba_ln.layer_norm_backward(d_dy, d_x, cuda.to_device(mean), d_rstd, d_w,
                                            axis=axis)
    centered = op.endswith("ln")
    spec = backward_spec(dy, x, rstd if mean is None else mean, rstd, weight, axis)
    return _cuda_backend.backward(
        spec, d_dy, d_x, None if mean is None else cuda.to_device(mean), d_rstd, d_w,
        centered=centered, dresidual=None if dresidual is None else cuda.to_device(dresidual))
