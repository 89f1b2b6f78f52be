"""bfloat16 storage: the CPU kernels' conversions, against ``ml_dtypes``."""

import os

import numpy as np
import pytest
from numba import njit

from numba_ln import _storage

ml_dtypes = pytest.importorskip("ml_dtypes")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


@njit
def _widen(bits, out):
    for i in range(bits.size):
        out[i] = _storage.load(bits, i)


@njit
def _narrow(values, out):
    for i in range(values.size):
        _storage.store(out, i, values[i])


def _all_bfloat16_bits():
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16)


def test_every_bfloat16_widens_exactly():
    bits = _all_bfloat16_bits()
    wide = np.empty(bits.size, np.float32)
    _widen(bits, wide)
    expected = bits.view(BFLOAT16).astype(np.float32)
    np.testing.assert_array_equal(wide.view(np.uint32), expected.view(np.uint32))


def _narrowing_cases():
    """Every bfloat16 value, the midpoints between neighbours (ties), the floats
    just either side of them, and random float32 bit patterns."""
    exact = _all_bfloat16_bits().view(BFLOAT16).astype(np.float32)
    exact = exact[np.isfinite(exact)]
    bits = exact.view(np.uint32)
    tie = (bits + 0x8000).view(np.float32)
    below, above = tie.view(np.uint32) - np.uint32(1), tie.view(np.uint32) + np.uint32(1)
    rng = np.random.default_rng(16)
    random = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    edges = np.array([3.3895314e38, 3.3961776e38, 3.4028235e38, np.inf, -np.inf, 1e-45,
                      -1e-45, 0.0, -0.0], np.float32)
    return np.concatenate([exact, tie, below.view(np.float32), above.view(np.float32),
                           random.view(np.float32), edges])


def test_float32_narrows_to_nearest_even_like_ml_dtypes():
    values = _narrowing_cases()
    out = np.empty(values.size, np.int16)
    _narrow(values, out)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = values.astype(BFLOAT16).view(np.int16)
    nan = np.isnan(values)
    assert nan.any() and (~nan).sum() > 300_000
    np.testing.assert_array_equal(out[~nan], expected[~nan])
    # A NaN stays a NaN of its sign (the payload's top bits kept, made quiet).
    result = out[nan].view(BFLOAT16).astype(np.float32)
    assert np.isnan(result).all()
    np.testing.assert_array_equal(np.signbit(result), np.signbit(values[nan]))


# --------------------------------------------------------------------------- the API

import pickle  # noqa: E402

import numba_ln  # noqa: E402
import reference as ref  # noqa: E402
from reference import TOLERANCE, rel_l2  # noqa: E402

TOL = TOLERANCE[BFLOAT16]
#: Serial; threaded; threaded with streamed outputs; wide backward rows.
SIZES = [(5, 33), (600, 257), (2048, 2304), (40, 5000)]


def _bf16(rng, shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(BFLOAT16)


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


@pytest.mark.parametrize("shape", SIZES, ids=str)
@pytest.mark.parametrize("param_dtype", [BFLOAT16, np.float32], ids=["bf16", "f32"])
def test_layer_norm_forward_and_backward_match_reference(rng, shape, param_dtype):
    x, dy = _bf16(rng, shape, 3, 1), _bf16(rng, shape)
    weight = rng.standard_normal(shape[-1]).astype(param_dtype)
    bias = rng.standard_normal(shape[-1]).astype(param_dtype)
    y, mean, rstd = numba_ln.layer_norm(x, weight, bias, return_stats=True)
    y_ref, mean_ref, rstd_ref = ref.layer_norm(_f64(x), _f64(weight), _f64(bias))
    assert y.dtype == BFLOAT16 and mean.dtype == rstd.dtype == np.float32
    assert rel_l2(y, y_ref) <= TOL
    assert rel_l2(mean, mean_ref) <= 1e-6 and rel_l2(rstd, rstd_ref) <= 1e-6
    dx, dweight, dbias = numba_ln.layer_norm_backward(dy, x, mean, rstd, weight)
    dx_ref, dweight_ref, dbias_ref = ref.layer_norm_backward(_f64(dy), _f64(x), _f64(weight))
    assert dx.dtype == BFLOAT16 and dweight.dtype == dbias.dtype == param_dtype
    assert rel_l2(dx, dx_ref) <= TOL
    assert rel_l2(dweight, dweight_ref) <= TOL and rel_l2(dbias, dbias_ref) <= TOL


@pytest.mark.parametrize("shape", [(3, 4, 17), (600, 257)], ids=str)
def test_every_axis(rng, shape):
    x = _bf16(rng, shape)
    for axis in range(-len(shape), len(shape)):
        y = numba_ln.layer_norm(x, axis=axis)
        assert rel_l2(y, ref.layer_norm(_f64(x), axis=axis)[0]) <= TOL, axis


@pytest.mark.parametrize("residual_dtype", [BFLOAT16, np.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("shape", [(5, 33), (2048, 2304)], ids=str)
def test_rms_norm_with_a_residual(rng, residual_dtype, shape):
    x = _bf16(rng, shape)
    residual = rng.standard_normal(shape).astype(residual_dtype)
    weight = _bf16(rng, shape[-1:])
    y, s, rstd = numba_ln.rms_norm(x, weight, residual=residual, return_stats=True)
    assert y.dtype == BFLOAT16 and s.dtype == residual_dtype
    np.testing.assert_array_equal(s, (_f64(x) + _f64(residual)).astype(residual_dtype))
    y_ref, rstd_ref = ref.rms_norm(_f64(s), _f64(weight))
    assert rel_l2(y, y_ref) <= TOL and rel_l2(rstd, rstd_ref) <= 1e-6
    dy = _bf16(rng, shape)
    if residual_dtype is BFLOAT16:
        dx, dweight = numba_ln.rms_norm_backward(dy, s, rstd, weight, dresidual=dy)
        dx_ref, dweight_ref = ref.add_rms_norm_backward(_f64(dy), _f64(s), _f64(weight),
                                                        dresidual=_f64(dy))
        assert rel_l2(dx, dx_ref) <= TOL and rel_l2(dweight, dweight_ref) <= TOL


@pytest.mark.parametrize("layout", ["padded-rows", "fortran", "out", "in-place"])
def test_layouts_and_outputs_give_the_same_bits(rng, layout):
    x = _bf16(rng, (600, 96))
    expected = numba_ln.layer_norm(x)
    if layout == "padded-rows":
        padded = np.zeros((600, 100), BFLOAT16)
        padded[:, :96] = x
        result = numba_ln.layer_norm(padded[:, :96])
    elif layout == "fortran":
        result = numba_ln.layer_norm(np.asfortranarray(x))
    elif layout == "out":
        out = np.empty_like(x)
        assert numba_ln.layer_norm(x, out=out) is out
        result = out
    else:
        x = x.copy()
        numba_ln.layer_norm(x, out=x)
        result = x
    np.testing.assert_array_equal(result.view(np.int16), expected.view(np.int16))


def test_pickled_arrays_are_welcome(rng):
    x = _bf16(rng, (4, 40))
    np.testing.assert_array_equal(numba_ln.layer_norm(pickle.loads(pickle.dumps(x))),
                                  numba_ln.layer_norm(x))


def test_nan_and_inf_stay_in_their_row(rng):
    x = _bf16(rng, (600, 96))
    clean = numba_ln.layer_norm(x)
    dirty = x.copy()
    dirty[3, 5], dirty[10, 0], dirty[12, 7] = np.nan, np.inf, -np.inf
    y = numba_ln.layer_norm(dirty)
    assert np.isnan(y[[3, 10, 12]].astype(np.float32)).all()
    good = np.setdiff1d(np.arange(600), [3, 10, 12])
    np.testing.assert_array_equal(y[good].view(np.int16), clean[good].view(np.int16))


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_huge_values_do_not_overflow_the_float32_sums(norm):
    # bfloat16 reaches 3.39e38, as float32 does: the squares overflow float32.
    x = np.array([[3e38, -3e38, 1e38, 0.0]], BFLOAT16)
    y = (numba_ln.layer_norm(x, eps=0.0) if norm == "layer"
         else numba_ln.rms_norm(x, eps=0.0))
    scaled = _f64(x) / 1e38
    expected = ref.layer_norm(scaled, eps=0.0)[0] if norm == "layer" else ref.rms_norm(
        scaled, eps=0.0)[0]
    assert np.isfinite(y.astype(np.float32)).all() and rel_l2(y, expected) <= TOL


def test_subnormal_rows_are_normalized():
    x = (np.array([[1.0, -2.0, 3.0, 0.5]]) * 1e-39).astype(BFLOAT16)
    assert (np.abs(_f64(x)) < np.finfo(np.float32).tiny).all()  # every element subnormal
    y = numba_ln.rms_norm(x, eps=0.0)
    assert rel_l2(y, ref.rms_norm(_f64(x) * 1e39, eps=0.0)[0]) <= TOL


def test_bfloat16_is_recognised_without_numba_ln_importing_ml_dtypes():
    import subprocess
    import sys
    code = ("import sys, numba_ln; assert 'ml_dtypes' not in sys.modules; "
            "import numpy as np, ml_dtypes; "
            "print(numba_ln.layer_norm(np.ones((1, 2), ml_dtypes.bfloat16)).dtype)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bfloat16"


# --------------------------------------------------------------------------- rounding in hardware

@njit
def _lines_and_elements(x, weight, bias, by_lines, by_elements):
    """The same outputs through ``normalize_bfloat16_line`` and element by element."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(0, x.size, 32):
        _storage.normalize_bfloat16_line(x, weight, bias, True, True, one, zero, one, j,
                                         by_lines, j)
    for j in range(x.size):
        _storage.store(by_elements, j, _storage.narrow_affine(
            _storage.load(x, j), one, zero, one, weight[j], bias[j]))


@pytest.mark.skipif(not _storage.HARDWARE_BFLOAT16,
                    reason="this CPU has no vcvtneps2bf16; the kernels round in software")
def test_lines_rounded_in_hardware_give_the_bits_of_the_integer_rounding():
    """Every narrowing case, subnormals, ties and NaNs included, through the line kernel.

    ``x`` is zero, so each output is its ``bias`` exactly: the values that
    reach ``vcvtneps2bf16`` are the narrowing cases themselves. Lines holding a
    float32 subnormal (which the instruction flushes to zero) must come out
    as the integer rounding gives them.
    """
    values = _narrowing_cases()
    values = np.concatenate([values, np.zeros(-values.size % 32, np.float32)])
    x = np.zeros(values.size, np.int16)
    weight = np.ones(values.size, np.float32)
    by_lines, by_elements = np.empty(values.size, np.int16), np.empty(values.size, np.int16)
    _lines_and_elements(x, weight, values, by_lines, by_elements)
    np.testing.assert_array_equal(by_lines, by_elements)
    subnormal = (values != 0) & (np.abs(values) < np.finfo(np.float32).tiny)
    assert subnormal.sum() > 1000 and (by_lines[subnormal] & 0x7FFF).any()
    with np.errstate(invalid="ignore", over="ignore"):
        expected = values.astype(BFLOAT16).view(np.int16)
    numbers = ~np.isnan(values) & (values != 0)  # 0 + -0.0 is +0.0: signs of zero differ
    np.testing.assert_array_equal(by_lines[numbers], expected[numbers])


def test_hardware_rounding_needs_the_features_numba_compiles_for(monkeypatch):
    from numba.core import config
    for features, expected in [("+avx512f,+avx512dq,+avx512vl,+avx512bf16", True),
                               ("+avx512f,+avx512dq,+avx512vl,-avx512bf16", False),
                               ("+avx512f,+avx512dq,-avx512vl,+avx512bf16", False),
                               ("+avx2,+avxneconvert", False), ("", False)]:
        monkeypatch.setattr(config, "CPU_FEATURES", features)
        assert _storage._compiles_bfloat16_rounding() is expected, features


@pytest.mark.skipif(not _storage.HARDWARE_BFLOAT16,
                    reason="this CPU has no vcvtneps2bf16: there is only the integer rounding")
def test_kernels_without_hardware_rounding_give_the_same_bits(rng, tmp_path):
    """A process compiling for this CPU without AVX512-BF16 takes the integer
    rounding everywhere; its outputs (ordinary and streamed, rows joined across
    misaligned line boundaries) have this process's bits."""
    import subprocess
    import sys

    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features().flatten().replace("+avx512bf16", "-avx512bf16")
    shapes = [(64, 1000), (8192, 1024)]  # the second streams its 16 MiB output
    inputs = []
    for k, shape in enumerate(shapes):
        x = _bf16(rng, shape)
        weight, bias = rng.standard_normal((2, shape[1])).astype(np.float32)
        np.save(tmp_path / f"x{k}.npy", x.view(np.int16))
        np.save(tmp_path / f"w{k}.npy", np.stack([weight, bias]))
        inputs.append((x, weight, bias))
    code = (
        "import sys, numpy as np, ml_dtypes, numba_ln\n"
        "from numba_ln import _storage\n"
        "assert not _storage.HARDWARE_BFLOAT16\n"
        f"for k in range({len(shapes)}):\n"
        "    x = np.load(sys.argv[1] + f'/x{k}.npy').view(ml_dtypes.bfloat16)\n"
        "    w, b = np.load(sys.argv[1] + f'/w{k}.npy')\n"
        "    np.save(sys.argv[1] + f'/y{k}.npy', numba_ln.layer_norm(x, w, b).view(np.int16))\n")
    env = dict(os.environ, NUMBA_CPU_FEATURES=features,
               NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for k, (x, weight, bias) in enumerate(inputs):
        np.testing.assert_array_equal(np.load(tmp_path / f"y{k}.npy"),
                                      numba_ln.layer_norm(x, weight, bias).view(np.int16))
