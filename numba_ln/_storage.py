"""Storage types and compute types for the CPU kernels.

numba's CPU target has no float16 type, so float16 arrays reach the CPU
kernels viewed as ``uint16`` (the raw IEEE binary16 bits). The intrinsics
below reinterpret those bits as LLVM's ``half`` and convert with ``fpext`` /
``fptrunc``: on x86 with F16C that is one ``vcvtph2ps``/``vcvtps2ph`` per
vector, so the kernels convert in registers while streaming and never make a
float32 copy of the array. Rounding is IEEE round-to-nearest-even, as NumPy's
``astype(np.float16)``.

``load`` and ``store`` give the kernels one spelling for every storage type:
they read an element as its compute type (float32 for float16 and float32,
float64 for float64) and write a compute value back in the storage type.
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def half_bits_to_float32(typingctx, bits):
    """Widen IEEE binary16 bits (a uint16) to float32, exactly."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def float32_to_half_bits(typingctx, value):
    """Round a float32 to the nearest binary16 and return its bits."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return types.uint16(types.float32), codegen


def load(array, index):
    """``array[index]`` as the compute type (pure-Python stand-in)."""
    return array[index]


def store(array, index, value):
    """``array[index] = value`` in the storage type (pure-Python stand-in)."""
    array[index] = value


def to_compute(array, value):
    """``value`` cast to the compute type of ``array``'s storage type."""
    return array.dtype.type(value)


@overload(load, inline="always")
def _load_impl(array, index):
    if array.dtype == types.uint16:
        return lambda array, index: half_bits_to_float32(array[index])
    return lambda array, index: array[index]


@overload(store, inline="always")
def _store_impl(array, index, value):
    if array.dtype == types.uint16:
        def impl(array, index, value):
            array[index] = float32_to_half_bits(types.float32(value))
        return impl
    dtype = array.dtype

    def impl(array, index, value):
        array[index] = dtype(value)
    return impl


@overload(to_compute, inline="always")
def _to_compute_impl(array, value):
    if array.dtype == types.float64:
        return lambda array, value: types.float64(value)
    return lambda array, value: types.float32(value)


__all__ = ["half_bits_to_float32", "float32_to_half_bits", "load", "store",
           "to_compute"]
