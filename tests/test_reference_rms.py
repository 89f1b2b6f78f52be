"""The float64 references for RMSNorm and the fused residual add, checked on their own.

Every backend will be compared against these, so they are checked here
without any numba-ln kernel: central finite differences for the backwards,
PyTorch (when importable) for the forward and autograd, RMSNorm's scale
invariance beside layer norm's shift invariance, and the residual forms'
definitions.
"""

import doctest
import inspect

import numpy as np
import pytest

import reference
from reference import (TOLERANCE, add_layer_norm, add_layer_norm_backward, add_rms_norm,
                       add_rms_norm_backward, layer_norm, rel_l2, rms_norm, rms_norm_backward)

#: Rank 3, so that axis=-2 normalizes over two axes and leaves a leading one.
SHAPE = (3, 4, 5)
AXES = [-1, -2]
F64_TOLERANCE = TOLERANCE[np.dtype(np.float64)]

#: Central differences in float64 with O(1) inputs: truncation ~STEP**2 and
#: rounding ~1e-16 * |loss| / STEP are both near 1e-10 relative.
STEP = 1e-5
#: 1000x above those errors, and a wrong formula misses by 1e-2 or more
#: (test_a_wrong_gradient_misses_the_finite_differences measures it).
FD_TOLERANCE = 1e-7

#: The fused residual forms, each with the names of its parameters, whose
#: gradients its backward returns after dx in this order.
RESIDUAL_NORMS = {
    "layer_norm": (add_layer_norm, add_layer_norm_backward, ("weight", "bias")),
    "rms_norm": (add_rms_norm, add_rms_norm_backward, ("weight",)),
}


def numerical_gradient(loss, a):
    """Central differences of ``loss()`` for each element of ``a`` (changed, then restored)."""
    grad = np.empty_like(a)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + STEP
        up = loss()
        a[i] = saved - STEP
        down = loss()
        a[i] = saved
        grad[i] = (up - down) / (2 * STEP)
    return grad


def normalized_shape(axis):
    return SHAPE[axis % len(SHAPE):]


def random_params(rng, axis, names):
    """Gain near 1 and bias near 0, with ``SHAPE[axis:]``, by name."""
    shape = normalized_shape(axis)
    centre = {"weight": 1.0, "bias": 0.0}
    return {name: centre[name] + 0.5 * rng.standard_normal(shape) for name in names}


def test_reference_examples_run():
    # test_docs covers the package only; these examples document the tests' reference.
    result = doctest.testmod(reference, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 6


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "no_weight"])
def test_rms_norm_backward_matches_finite_differences(rng, axis, with_weight):
    x = rng.standard_normal(SHAPE)
    dy = rng.standard_normal(SHAPE)
    weight = random_params(rng, axis, ["weight"])["weight"] if with_weight else None
    dx, dweight = rms_norm_backward(dy, x, weight, axis)
    assert dx.shape == SHAPE and dweight.shape == normalized_shape(axis)
    assert rel_l2(dx, numerical_gradient(lambda: (dy * rms_norm(x, weight, axis)[0]).sum(),
                                         x)) < FD_TOLERANCE
    # Without a weight, dweight is still the gradient for a gain of ones.
    gain = np.ones(normalized_shape(axis)) if weight is None else weight
    assert rel_l2(dweight, numerical_gradient(lambda: (dy * rms_norm(x, gain, axis)[0]).sum(),
                                              gain)) < FD_TOLERANCE


def _wrong_rms_dx(kind, dy, x, weight, axis):
    """dx by one of the mistakes a kernel could make, on the same rows the reference sees."""
    cols = int(np.prod(normalized_shape(axis)))
    xs, grads = x.reshape(-1, cols), dy.reshape(-1, cols)
    g = grads * weight.reshape(-1)
    mean_square_divisor = cols - 1 if kind == "bessel" else cols  # "bessel": the unbiased n - 1
    rstd = 1.0 / np.sqrt((xs ** 2).sum(1, keepdims=True) / mean_square_divisor + 1e-5)
    xhat = xs * rstd
    dx = {
        "layer_norm_formula": rstd * (g - g.mean(1, keepdims=True)
                                      - xhat * (g * xhat).mean(1, keepdims=True)),
        "no_rstd_term": rstd * g,
        "bessel": rstd * (g - xhat * (g * xhat).mean(1, keepdims=True)),
    }[kind]
    return dx.reshape(x.shape)


@pytest.mark.parametrize("kind", ["layer_norm_formula", "no_rstd_term", "bessel"])
def test_a_wrong_gradient_misses_the_finite_differences(rng, kind):
    x = rng.standard_normal(SHAPE)
    dy = rng.standard_normal(SHAPE)
    weight = random_params(rng, -2, ["weight"])["weight"]
    expected = numerical_gradient(lambda: (dy * rms_norm(x, weight, -2)[0]).sum(), x)
    assert rel_l2(_wrong_rms_dx(kind, dy, x, weight, -2), expected) > 1e5 * FD_TOLERANCE


@pytest.mark.parametrize("axis", AXES)
def test_rms_norm_backward_uses_the_given_rstd(rng, axis):
    x = rng.standard_normal(SHAPE)
    dy = rng.standard_normal(SHAPE)
    _, rstd = rms_norm(x, axis=axis, eps=0.5)
    assert rstd.shape == layer_norm(x, axis=axis)[2].shape
    given = rms_norm_backward(dy, x, axis=axis, rstd=rstd)  # eps left at 1e-5
    recomputed = rms_norm_backward(dy, x, axis=axis, eps=0.5)
    default_eps = rms_norm_backward(dy, x, axis=axis)
    for a, b, other in zip(given, recomputed, default_eps):
        assert rel_l2(a, b) < F64_TOLERANCE
        assert rel_l2(a, other) > 1e-3


@pytest.mark.parametrize("norm", RESIDUAL_NORMS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("with_params", [True, False], ids=["params", "no_params"])
def test_residual_backward_matches_finite_differences(rng, norm, axis, with_params):
    forward, backward, names = RESIDUAL_NORMS[norm]
    x, residual, dy, dresidual = (rng.standard_normal(SHAPE) for _ in range(4))
    given = random_params(rng, axis, names) if with_params else {}
    # Params left out act as the identity ones: their gradients are checked at those.
    shape = normalized_shape(axis)
    identity = {"weight": np.ones(shape), "bias": np.zeros(shape)}
    params = {name: given.get(name, identity[name]) for name in names}

    def loss():
        # What reaches the fused op's outputs: dy at y, dresidual at s.
        y, s = forward(x, residual, **params, axis=axis)[:2]
        return (dy * y).sum() + (dresidual * s).sum()

    s = forward(x, residual, **given, axis=axis)[1]
    dx, *param_grads = backward(dy, s, given.get("weight"), axis=axis, dresidual=dresidual)
    assert rel_l2(dx, numerical_gradient(loss, x)) < FD_TOLERANCE
    assert rel_l2(dx, numerical_gradient(loss, residual)) < FD_TOLERANCE
    for name, grad in zip(names, param_grads):
        assert rel_l2(grad, numerical_gradient(loss, params[name])) < FD_TOLERANCE, name


@pytest.mark.parametrize("c", [1e-3, 0.5, 7.0, 1e4])
def test_rms_norm_is_scale_invariant_when_eps_is_negligible(rng, c):
    x = rng.standard_normal(SHAPE)
    # y moves by about eps / (2 * mean(x**2)); 1e-20 keeps that near 1e-14 at c = 1e-3.
    for eps in (0.0, 1e-20):
        assert rel_l2(rms_norm(c * x, eps=eps)[0], rms_norm(x, eps=eps)[0]) < F64_TOLERANCE


def test_scale_invariance_holds_only_up_to_eps(rng):
    x = rng.standard_normal(SHAPE)
    # The default 1e-5 against mean((1e-3 * x)**2) near 1e-6 is not negligible.
    assert rel_l2(rms_norm(1e-3 * x)[0], rms_norm(x)[0]) > 0.5


def test_layer_norm_is_shift_invariant_and_rms_norm_is_not(rng):
    x = rng.standard_normal(SHAPE)
    assert rel_l2(layer_norm(x + 3.0)[0], layer_norm(x)[0]) < F64_TOLERANCE
    assert rel_l2(rms_norm(x + 3.0)[0], rms_norm(x)[0]) > 0.5
    # Centered rows are where the two agree, rstd included.
    y, mean, rstd = layer_norm(x)
    y_rms, rstd_rms = rms_norm(x - mean)
    assert rel_l2(y_rms, y) < F64_TOLERANCE and rel_l2(rstd_rms, rstd) < F64_TOLERANCE


@pytest.mark.parametrize("axis", AXES)
def test_add_rms_norm_is_rms_norm_of_the_sum(rng, axis):
    x, residual = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    weight = random_params(rng, axis, ["weight"])["weight"]
    y, s, rstd = add_rms_norm(x, residual, weight, axis)
    np.testing.assert_array_equal(s, x + residual)
    y_sum, rstd_sum = rms_norm(x + residual, weight, axis)
    assert rel_l2(y, y_sum) < F64_TOLERANCE and rel_l2(rstd, rstd_sum) < F64_TOLERANCE


@pytest.mark.parametrize("axis", AXES)
def test_add_layer_norm_is_layer_norm_of_the_sum(rng, axis):
    x, residual = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    params = random_params(rng, axis, ["weight", "bias"])
    y, s, mean, rstd = add_layer_norm(x, residual, **params, axis=axis)
    np.testing.assert_array_equal(s, x + residual)
    for ours, theirs in zip((y, mean, rstd), layer_norm(x + residual, **params, axis=axis)):
        assert rel_l2(ours, theirs) < F64_TOLERANCE


@pytest.mark.parametrize("norm", RESIDUAL_NORMS)
def test_the_sum_is_float64_from_the_inputs_values(rng, norm):
    # A float16 x with a float32 residual stream: s must not round to either dtype.
    x = rng.standard_normal(SHAPE).astype(np.float16)
    residual = (rng.standard_normal(SHAPE) * 1e3).astype(np.float32)
    s = RESIDUAL_NORMS[norm][0](x, residual)[1]
    assert s.dtype == np.float64
    np.testing.assert_array_equal(s, x.astype(np.float64) + residual.astype(np.float64))
    assert not np.array_equal(s, (x + residual).astype(np.float64))


@pytest.mark.parametrize("norm", RESIDUAL_NORMS)
@pytest.mark.parametrize("axis", AXES)
def test_dresidual_adds_to_dx_only(rng, norm, axis):
    forward, backward, _ = RESIDUAL_NORMS[norm]
    x, residual, dy, dresidual = (rng.standard_normal(SHAPE) for _ in range(4))
    weight = random_params(rng, axis, ["weight"])["weight"]
    s = forward(x, residual, weight, axis=axis)[1]
    dx, *param_grads = backward(dy, s, weight, axis=axis, dresidual=dresidual)
    dx_norm, *param_grads_norm = backward(dy, s, weight, axis=axis)
    assert rel_l2(dx, dx_norm + dresidual) < F64_TOLERANCE
    assert rel_l2(dx, dx_norm) > 0.1
    for grad, grad_norm in zip(param_grads, param_grads_norm):
        np.testing.assert_array_equal(grad, grad_norm)


@pytest.mark.parametrize("norm", RESIDUAL_NORMS)
def test_a_residual_of_another_shape_is_refused(norm):
    # Broadcasting would otherwise give a plausible s.
    with pytest.raises(ValueError, match=r"residual has shape \(1, 5\), expected x's shape "
                                         r"\(3, 4, 5\)"):
        RESIDUAL_NORMS[norm][0](np.ones(SHAPE), np.ones((1, 5)))


def test_default_eps_is_onnxs():
    # ONNX RMSNormalization (opset 23): epsilon defaults to 1e-5, as layer_norm's does.
    for function in (rms_norm, add_rms_norm, layer_norm, add_layer_norm):
        assert inspect.signature(function).parameters["eps"].default == 1e-5


def _torch_rms_norm(torch, x, weight, axis, eps):
    """PyTorch's F.rms_norm over ``x.shape[axis:]`` (ONNX's axis is a shape there)."""
    return torch.nn.functional.rms_norm(x, list(x.shape[axis % x.dim():]), weight, eps)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "no_weight"])
def test_rms_norm_matches_pytorch(rng, axis, with_weight):
    torch = pytest.importorskip("torch")
    x, dy = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    weight = random_params(rng, axis, ["weight"])["weight"] if with_weight else None
    y, _ = rms_norm(x, weight, axis, eps=1e-5)
    dx, dweight = rms_norm_backward(dy, x, weight, axis, eps=1e-5)

    x_t = torch.tensor(x, requires_grad=True)
    weight_t = torch.tensor(weight, requires_grad=True) if with_weight else None
    y_t = _torch_rms_norm(torch, x_t, weight_t, axis, 1e-5)
    y_t.backward(torch.tensor(dy))
    assert rel_l2(y, y_t.detach().numpy()) < F64_TOLERANCE
    assert rel_l2(dx, x_t.grad.numpy()) < F64_TOLERANCE
    if with_weight:
        assert rel_l2(dweight, weight_t.grad.numpy()) < F64_TOLERANCE


def test_pytorch_default_eps_is_machine_epsilon_not_onnxs(rng):
    torch = pytest.importorskip("torch")
    # mean(x**2) near 1e-6: ONNX's 1e-5 dominates it, float64's epsilon does not.
    x = 1e-3 * rng.standard_normal(SHAPE)
    y_torch_default = _torch_rms_norm(torch, torch.tensor(x), None, -1, None).numpy()
    machine_eps = torch.finfo(torch.float64).eps
    assert rel_l2(rms_norm(x, eps=machine_eps)[0], y_torch_default) < F64_TOLERANCE
    assert rel_l2(rms_norm(x)[0], y_torch_default) > 0.5
    # So a comparison with PyTorch passes eps explicitly, and then they agree.
    y_torch_onnx_eps = _torch_rms_norm(torch, torch.tensor(x), None, -1, 1e-5).numpy()
    assert rel_l2(rms_norm(x)[0], y_torch_onnx_eps) < F64_TOLERANCE


@pytest.mark.parametrize("norm", RESIDUAL_NORMS)
@pytest.mark.parametrize("axis", AXES)
def test_residual_forms_match_pytorch_autograd(rng, norm, axis):
    torch = pytest.importorskip("torch")
    forward, backward, names = RESIDUAL_NORMS[norm]
    x, residual, dy, dresidual = (rng.standard_normal(SHAPE) for _ in range(4))
    params = random_params(rng, axis, names)
    y, s = forward(x, residual, **params, axis=axis)[:2]
    dx, *param_grads = backward(dy, s, params["weight"], axis=axis, dresidual=dresidual)

    x_t, residual_t = (torch.tensor(a, requires_grad=True) for a in (x, residual))
    params_t = {name: torch.tensor(p, requires_grad=True) for name, p in params.items()}
    s_t = x_t + residual_t
    shape = list(normalized_shape(axis))
    if norm == "layer_norm":
        y_t = torch.nn.functional.layer_norm(s_t, shape, params_t["weight"], params_t["bias"],
                                             1e-5)
    else:
        y_t = torch.nn.functional.rms_norm(s_t, shape, params_t["weight"], 1e-5)
    # s also feeds the next block: its gradient there is dresidual.
    ((y_t * torch.tensor(dy)).sum() + (s_t * torch.tensor(dresidual)).sum()).backward()
    assert rel_l2(y, y_t.detach().numpy()) < F64_TOLERANCE
    assert rel_l2(dx, x_t.grad.numpy()) < F64_TOLERANCE
    assert rel_l2(dx, residual_t.grad.numpy()) < F64_TOLERANCE
    for name, grad in zip(names, param_grads):
        assert rel_l2(grad, params_t[name].grad.numpy()) < F64_TOLERANCE, name
