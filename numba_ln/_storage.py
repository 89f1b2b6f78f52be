"""Storage types and compute types for the CPU kernels.

numba's CPU target has no float16 type, so float16 arrays reach the CPU
kernels viewed as ``uint16`` (the raw IEEE binary16 bits); it knows no
bfloat16 either, and bfloat16 arrays arrive viewed as ``int16``, so that the
two 16-bit formats are two numba types and every kernel tells them apart at
compile time. The intrinsics
below reinterpret those bits as LLVM's ``half`` and convert with ``fpext`` /
``fptrunc``: on x86 with F16C that is one ``vcvtph2ps``/``vcvtps2ph`` per
vector, so the kernels convert in registers while streaming and never make a
float32 copy of the array. Rounding is IEEE round-to-nearest-even, as NumPy's
``astype(np.float16)``. bfloat16 is the top half of a float32: widening is
a shift, and narrowing rounds to nearest even in integer arithmetic (a NaN
stays a quiet NaN of its sign), as ``ml_dtypes`` does.

``load`` and ``store`` give the kernels one spelling for every storage type:
they read an element as its compute type (float32 for float16 and float32,
float64 for float64) and write a compute value back in the storage type.

``stream_line`` and ``stream_fence`` are the non-temporal ("streaming") stores
of large forward outputs: a whole 64-byte line written straight to memory,
with no read-for-ownership and no cache line taken from the rows still in use.
``prefetch_line`` asks for a line of the next row ahead of its use.

Examples
--------
A kernel reads and writes float16 through the uint16 view, in float32:

>>> import numpy as np
>>> from numba import njit
>>> from numba_ln import _storage
>>> @njit
... def double_all(a):
...     for i in range(a.size):
...         value = _storage.load(a, i)
...         _storage.store(a, i, value + value)
>>> h = np.array([1.5, -0.25, 65504.0], np.float16)
>>> double_all(h.view(np.uint16))
>>> h
array([  3. ,  -0.5,   inf], dtype=float16)
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


@intrinsic
def bfloat16_bits_to_float32(typingctx, bits):
    """Widen bfloat16 bits (an int16) to float32, exactly: they are its top half."""
    if bits != types.int16:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def float32_to_bfloat16_bits(typingctx, value):
    """Round a float32 to the nearest bfloat16, ties to even, and return its bits (an int16).

    Adding ``0x7fff`` plus the kept part's lowest bit, then dropping the low
    half, is round-to-nearest-even, and carries into the exponent (up to
    infinity) where it should. A NaN keeps its sign and top payload bits,
    made quiet. Branch-free, so loops of it vectorize.
    """
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        int32 = ir.IntType(32)
        bits = builder.bitcast(args[0], int32)
        upper = builder.lshr(bits, int32(16))
        rounded = builder.lshr(
            builder.add(builder.add(bits, int32(0x7FFF)), builder.and_(upper, int32(1))),
            int32(16))
        quiet = builder.or_(upper, int32(0x0040))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.trunc(builder.select(is_nan, quiet, rounded), ir.IntType(16))

    return types.int16(types.float32), codegen


#: Bytes one ``stream_line`` writes: a cache line.
LINE_BYTES = 64


def element_bytes(array):
    """Bytes per element of ``array`` (a compile-time constant in kernels)."""
    return array.itemsize


def line_elements(array):
    """Elements of ``array`` in one 64-byte line (a compile-time constant in kernels)."""
    return LINE_BYTES // array.itemsize


@overload(element_bytes, inline="always")
def _element_bytes_impl(array):
    size = array.dtype.bitwidth // 8
    return lambda array: size


@overload(line_elements, inline="always")
def _line_elements_impl(array):
    lanes = LINE_BYTES * 8 // array.dtype.bitwidth
    return lambda array: lanes


@intrinsic
def stream_line(typingctx, dst, dst_index, src, src_index):
    """Copy one 64-byte line ``src[src_index:]`` to ``dst[dst_index:]`` with a non-temporal store.

    ``dst[dst_index]`` must lie on a 64-byte boundary (the caller checks);
    ``src`` (a small staging row, in cache) may have any alignment. Both
    arrays have the same element type.
    """
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.dtype == src.dtype):
        return None

    def codegen(context, builder, signature, args):
        dst_ty, _, src_ty, _ = signature.args
        element = context.get_data_type(dst_ty.dtype)
        lanes = LINE_BYTES // context.get_abi_sizeof(element)
        line = ir.VectorType(element, lanes)
        dst_array = context.make_array(dst_ty)(context, builder, args[0])
        src_array = context.make_array(src_ty)(context, builder, args[2])
        source = builder.bitcast(builder.gep(src_array.data, [args[3]]), line.as_pointer())
        target = builder.bitcast(builder.gep(dst_array.data, [args[1]]), line.as_pointer())
        value = builder.load(source, align=context.get_abi_sizeof(element))
        stored = builder.store(value, target, align=LINE_BYTES)
        stored.set_metadata("nontemporal", builder.module.add_metadata(
            [ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.none(dst, types.intp, src, types.intp), codegen


@intrinsic
def stream_fence(typingctx):
    """Order the streaming stores before anything this thread does next.

    Non-temporal stores are weakly ordered: without a fence another thread
    could read a row before its lines reach memory. A sequentially consistent
    fence (``mfence`` on x86) drains them.
    """
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def prefetch_line(typingctx, array, index):
    """Ask for the 64-byte line holding ``array[index]`` to be brought into L2.

    A hint (``llvm.prefetch``, read, locality 2): it never faults, not even
    for an address past the end of ``array``.
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        array_ty = signature.args[0]
        data = context.make_array(array_ty)(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        int32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), int32, int32, int32])
        prefetch = builder.module.declare_intrinsic("llvm.prefetch.p0", fnty=fnty)
        builder.call(prefetch, [address, int32(0), int32(2), int32(1)])
        return context.get_dummy_value()

    return types.none(array, types.intp), codegen


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
    if array.dtype == types.int16:
        return lambda array, index: bfloat16_bits_to_float32(array[index])
    return lambda array, index: array[index]


@overload(store, inline="always")
def _store_impl(array, index, value):
    if array.dtype == types.uint16:
        def impl(array, index, value):
            array[index] = float32_to_half_bits(types.float32(value))
        return impl
    if array.dtype == types.int16:
        def impl(array, index, value):
            array[index] = float32_to_bfloat16_bits(types.float32(value))
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


__all__ = ["half_bits_to_float32", "float32_to_half_bits", "bfloat16_bits_to_float32",
           "float32_to_bfloat16_bits", "load", "store",
           "to_compute", "stream_line", "stream_fence", "prefetch_line", "LINE_BYTES",
           "element_bytes", "line_elements"]
