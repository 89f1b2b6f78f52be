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

Where the CPU has AVX512-BF16 (:data:`HARDWARE_BFLOAT16`), the forward
writes bfloat16 a 64-byte line at a time with :func:`normalize_bfloat16_line`:
explicit vectors rounded by ``vcvtneps2bf16``, which LLVM's loop vectorizer
does not emit for a loop of scalar conversions. The instruction flushes
float32 subnormals to zero, so a line holding one is rounded in integer
arithmetic: the bits are the same on every CPU.

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

import functools

import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import config
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
        return _round_to_bfloat16(builder, args[0])

    return types.int16(types.float32), codegen


class _BFloatType(ir.Type):
    """LLVM's ``bfloat``, which llvmlite's IR builder does not name."""

    def __str__(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloatType)

    def __hash__(self):
        return hash(_BFloatType)


def _compiles_bfloat16_rounding():
    """Whether numba's CPU target has ``vcvtneps2bf16`` and ``vfpclassps`` in 512-bit vectors.

    AVX512-BF16 with AVX512F, -DQ and -VL. Elsewhere LLVM would round to
    bfloat16 by calling ``__truncsfbf2``, which numba does not link. The
    features are the ones numba compiles for (``NUMBA_CPU_FEATURES`` or the
    host's), so the answer matches the machine code in numba's cache.
    """
    features = config.CPU_FEATURES
    if features is None:
        llvm.initialize_native_target()
        features = llvm.get_host_cpu_features().flatten()
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    return {"avx512f", "avx512dq", "avx512vl", "avx512bf16"} <= enabled


#: Whether the CPU kernels round float32 to bfloat16 with ``vcvtneps2bf16``
#: (:func:`normalize_bfloat16_line`); elsewhere they use integer arithmetic.
HARDWARE_BFLOAT16 = _compiles_bfloat16_rounding()


def _round_to_bfloat16(builder, value):
    """IR for bfloat16 bits (``i16``, or a vector of them) of float32 ``value``.

    Adding ``0x7fff`` plus the kept part's lowest bit, then dropping the low
    half, is round-to-nearest-even, and carries into the exponent (up to
    infinity) where it should. A NaN keeps its sign and top payload bits,
    made quiet. Branch-free, so loops of it vectorize.
    """
    int32, int16 = ir.IntType(32), ir.IntType(16)
    if isinstance(value.type, ir.VectorType):
        int32, int16 = (ir.VectorType(t, value.type.count) for t in (int32, int16))
    bits = builder.bitcast(value, int32)
    upper = builder.lshr(bits, _splat(int32, 16))
    rounded = builder.lshr(builder.add(builder.add(bits, _splat(int32, 0x7FFF)),
                                       builder.and_(upper, _splat(int32, 1))),
                           _splat(int32, 16))
    quiet = builder.or_(upper, _splat(int32, 0x0040))
    is_nan = builder.fcmp_unordered("uno", value, value)
    return builder.trunc(builder.select(is_nan, quiet, rounded), int16)


def _splat(ty, value):
    """A constant of ``ty`` (a scalar type or a vector type) with every element ``value``."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def _broadcast(builder, value, ty):
    """``value`` (a scalar) in every lane of vector type ``ty``; a scalar ``ty`` takes it as is."""
    if not isinstance(ty, ir.VectorType):
        return value
    lanes = builder.insert_element(ir.Constant(ty, ir.Undefined), value, ir.IntType(32)(0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), ty.count), [ir.IntType(32)(0)] * ty.count)
    return builder.shuffle_vector(lanes, ir.Constant(ty, ir.Undefined), zeros)


def _narrow_affine_ir(builder, value, scale, center, rstd, weight, bias):
    """IR of :func:`narrow_affine` for float32 scalars, or vectors (``scale``,
    ``center`` and ``rstd`` scalars, broadcast)."""
    ty = value.type
    suffix = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
    fma = builder.module.declare_intrinsic(f"llvm.fma.{suffix}",
                                           fnty=ir.FunctionType(ty, [ty, ty, ty]))
    scale, center, rstd = (_broadcast(builder, v, ty) for v in (scale, center, rstd))
    deviation = builder.call(fma, [value, scale, builder.fneg(center)])
    return builder.call(fma, [deviation, builder.fmul(rstd, weight), bias])


@intrinsic
def narrow_affine(typingctx, value, scale, center, rstd, weight, bias):
    """``(value * scale - center) * (rstd * weight) + bias`` for outputs rounded to 16 bits.

    float32; both multiply-adds fused (one rounding each), written out so
    that a loop of these and :func:`normalize_bfloat16_line` give the same
    bits. Against ``_math.affine_output`` it leaves out the center's
    correction and the low part of ``rstd``: both lie below float32's
    precision, far below the 8 or 11 bits a 16-bit output keeps.
    """
    if not all(arg == types.float32 for arg in (value, scale, center, rstd, weight, bias)):
        return None

    def codegen(context, builder, signature, args):
        return _narrow_affine_ir(builder, *args)

    return types.float32(*[types.float32] * 6), codegen


#: float32 lanes :func:`normalize_bfloat16_line` computes at a time: 512-bit
#: vectors, half the conversions and class tests of 256-bit ones (bench/NOTES.md).
_PIECE_LANES = 16


def _normalize_line(nontemporal):
    """Codegen of :func:`normalize_bfloat16_line` (or its streaming form)."""
    def codegen(context, builder, signature, args):
        x_ty, weight_ty, bias_ty = signature.args[:3]
        y_ty = signature.args[9]
        x_arg, weight_arg, bias_arg, has_weight, has_bias, scale, center, rstd, j, y_arg, \
            y_index = args
        count, piece = LINE_BYTES // 2, _PIECE_LANES
        floats = ir.VectorType(ir.FloatType(), piece)
        words = ir.VectorType(ir.IntType(16), piece)
        wide = ir.VectorType(ir.IntType(32), piece)

        def pieces(array_ty, array_arg, element_ty):
            data = context.make_array(array_ty)(context, builder, array_arg).data
            start = builder.gep(data, [j])
            return [builder.load(builder.bitcast(builder.gep(start, [ir.IntType(64)(k)]),
                                                 element_ty.as_pointer()),
                                 align=context.get_abi_sizeof(element_ty.element))
                    for k in range(0, count, piece)]

        def optional_pieces(array_ty, array_arg, present, absent):
            with builder.if_else(present) as (load, skip):
                with load:
                    loaded = pieces(array_ty, array_arg, floats)
                    load_block = builder.block
                with skip:
                    skip_block = builder.block
            merged = []
            for value in loaded:
                merged.append(builder.phi(floats))
                merged[-1].add_incoming(value, load_block)
                merged[-1].add_incoming(_splat(floats, absent), skip_block)
            return merged

        weights = optional_pieces(weight_ty, weight_arg, has_weight, 1.0)
        biases = optional_pieces(bias_ty, bias_arg, has_bias, 0.0)
        if x_ty.dtype == types.float32:  # a float32 sum of a residual, normalized
            inputs = pieces(x_ty, x_arg, floats)
        else:
            inputs = [builder.bitcast(builder.shl(builder.zext(bits, wide), _splat(wide, 16)),
                                      floats) for bits in pieces(x_ty, x_arg, words)]
        values = [_narrow_affine_ir(builder, value, scale, center, rstd, w, b)
                  for value, w, b in zip(inputs, weights, biases)]
        y_data = context.make_array(y_ty)(context, builder, y_arg).data
        _store_bfloat16_pieces(builder, values, builder.gep(y_data, [y_index]), nontemporal)
        return context.get_dummy_value()
    return codegen


def _store_bfloat16_pieces(builder, values, target, nontemporal):
    """Round float32 vectors to bfloat16 and store them one after another from ``target``.

    ``vcvtneps2bf16`` rounds them, but flushes float32 subnormals to zero: a
    group holding one is rounded in integer arithmetic instead, for the bits
    of every other path.
    """
    int1, int32, int64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
    floats = values[0].type
    piece = floats.count
    words = ir.VectorType(ir.IntType(16), piece)
    fpclass = builder.module.declare_intrinsic(
        f"llvm.x86.avx512.fpclass.ps.{32 * piece}",
        fnty=ir.FunctionType(ir.VectorType(int1, piece), [floats, int32]))
    subnormal = functools.reduce(builder.or_, [
        builder.call(fpclass, [v, int32(0x20)]) for v in values])
    any_of = builder.module.declare_intrinsic(
        f"llvm.vector.reduce.or.v{piece}i1", fnty=ir.FunctionType(int1, [subnormal.type]))
    expect = builder.module.declare_intrinsic(
        "llvm.expect.i1", fnty=ir.FunctionType(int1, [int1, int1]))
    rare = builder.call(expect, [builder.call(any_of, [subnormal]), int1(0)])
    with builder.if_else(rare) as (slow, fast):
        with fast:
            fast_bits = [builder.bitcast(builder.fptrunc(v, ir.VectorType(_BFloatType(), piece)),
                                         words) for v in values]
            fast_block = builder.block
        with slow:
            slow_bits = [_round_to_bfloat16(builder, v) for v in values]
            slow_block = builder.block
    merged = []
    for fast_piece, slow_piece in zip(fast_bits, slow_bits):
        merged.append(builder.phi(words))
        merged[-1].add_incoming(fast_piece, fast_block)
        merged[-1].add_incoming(slow_piece, slow_block)
    if nontemporal:  # one whole line: partial lines would be read back from memory
        line = ir.VectorType(ir.IntType(16), piece * len(merged))
        stored = builder.store(_concatenate(builder, merged),
                               builder.bitcast(target, line.as_pointer()), align=LINE_BYTES)
        stored.set_metadata("nontemporal", builder.module.add_metadata([int32(1)]))
    else:
        for k, bits in enumerate(merged):
            address = builder.bitcast(builder.gep(target, [int64(k * piece)]),
                                      words.as_pointer())
            builder.store(bits, address, align=2)


def _concatenate(builder, vectors):
    """One vector of the elements of equally long ``vectors``, in order."""
    while len(vectors) > 1:
        lanes = vectors[0].type.count
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes),
                           [ir.Constant(ir.IntType(32), k) for k in range(2 * lanes)])
        vectors = [builder.shuffle_vector(a, b, mask)
                   for a, b in zip(vectors[0::2], vectors[1::2])]
    return vectors[0]


def _line_signature(x, weight, bias, has_weight, has_bias, scale, center, rstd, j, y,
                    y_index):
    arrays = (x, weight, bias, y)
    if not (all(isinstance(a, types.Array) for a in arrays)
            and x.dtype in (types.int16, types.float32) and y.dtype == types.int16
            and weight.dtype == bias.dtype == types.float32):
        return None
    return types.none(x, weight, bias, types.boolean, types.boolean, types.float32,
                      types.float32, types.float32, types.intp, y, types.intp)


@intrinsic
def normalize_bfloat16_line(typingctx, x, weight, bias, has_weight, has_bias, scale, center,
                            rstd, j, y, y_index):
    """``y[y_index + k]`` = :func:`narrow_affine` of ``x[j + k]``, in bfloat16, ``k < 32``.

    One 64-byte line of bfloat16 output from bfloat16 (or float32) ``x``, float32
    ``weight[j + k]`` and ``bias[j + k]`` (ones and zeros without
    ``has_weight``/``has_bias``), in explicit 512-bit vectors: rounded by
    ``vcvtneps2bf16``, which a loop of scalar conversions does not vectorize
    to. Only where ``HARDWARE_BFLOAT16``. The bits are those of
    :func:`narrow_affine` and :func:`float32_to_bfloat16_bits` element by
    element.
    """
    signature = _line_signature(x, weight, bias, has_weight, has_bias, scale, center, rstd, j,
                                y, y_index)
    return None if signature is None else (signature, _normalize_line(False))


@intrinsic
def stream_normalized_bfloat16_line(typingctx, x, weight, bias, has_weight, has_bias, scale,
                                    center, rstd, j, y, y_index):
    """:func:`normalize_bfloat16_line` with a non-temporal store, as :func:`stream_line`.

    ``y[y_index]`` must lie on a 64-byte boundary.
    """
    signature = _line_signature(x, weight, bias, has_weight, has_bias, scale, center, rstd, j,
                                y, y_index)
    return None if signature is None else (signature, _normalize_line(True))


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
           "element_bytes", "line_elements", "HARDWARE_BFLOAT16", "narrow_affine",
           "normalize_bfloat16_line", "stream_normalized_bfloat16_line"]
