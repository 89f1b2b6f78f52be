"""Device building blocks of the CUDA kernels: vector loads and stores, warp and block sums.

The kernels in ``gpu.py`` move row data through :func:`vector_load` and
:func:`vector_store` only. On a GPU each is one ``ld.global.v*`` /
``st.global.v*`` of ``width`` elements (16 bytes for the vector kernels, one
element for the scalar ones) at ``array[row_base + col]``: ``row_base`` is
the row's 64-bit start, computed once per row; ``col`` is an unsigned
column offset, 32-bit where the plan allows, so the per-element address
arithmetic is one 32-bit multiply-add. Loaded values are converted to the
type of the local array they land in (float16 widens to float32 on load),
stored ones to the array's type (round to nearest even).

bfloat16 reaches the kernels as ``int16`` arrays of its bits (numba has no
bfloat16 type; ``_validate.storage_dtype`` makes the same choice for the
CPU), so an ``int16`` row array always means bfloat16 here. It moves like
float16 (8 elements, one 16-byte access) and is converted by the CPU's own
``_storage.bfloat16_bits_to_float32`` (a shift) and
``_storage.float32_to_bfloat16_bits`` (round to nearest even, a NaN stays a
quiet NaN of its sign): integer-only intrinsics that numba-cuda compiles as
well, so the bit formula is written once for both targets and the simulator
(which runs them as CPU-compiled functions).

Under numba's CUDA simulator the same kernels call plain Python stand-ins
that go through :func:`simulated_load` and :func:`simulated_store`; the
test set-up replaces those two (``tests/gpu/sim_shims.py``) to assert the
16-byte alignment a GPU requires and to count every element read and
written.

Reductions: :func:`warp_sum` is a ``shfl.sync.bfly`` butterfly, so every lane
ends with the same bits; :func:`block_sum` adds the warps' sums in warp
order after one barrier. Both are fixed-order: results are bit-identical
from run to run.
"""

import functools
import os

import numpy as np
from numba import cuda, float32, njit

from . import _storage

#: Threads in a warp.
WARP_SIZE = 32
#: Every lane of a warp takes part in each shuffle.
FULL_MASK = 0xFFFFFFFF
#: Bytes per vector access: the widest global load and store a thread can issue.
VECTOR_BYTES = 16

_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _widen_bits(bits):
    """bfloat16 bits (an int16) to float32: the shipped intrinsic, compiled for any target."""
    return _storage.bfloat16_bits_to_float32(bits)


def _narrow_bits(value):
    """A value to bfloat16 bits (an int16) via float32: the shipped intrinsic."""
    return _storage.float32_to_bfloat16_bits(float32(value))


@functools.cache
def _host_conversions():
    """The two conversions compiled for the CPU, callable from the simulator's Python."""
    return njit(_widen_bits), njit(_narrow_bits)


def _converts_bfloat16(array, local):
    """Whether an access between a simulator array and a local one converts bfloat16 bits:
    ``int16`` holds them (see the module docstring); between two ``int16`` they move as is."""
    return array.dtype == np.int16 and local.dtype != np.int16


def simulated_load(array, index, dest, start, width):
    """Simulator: ``dest[start + t] = array[index + t]`` for ``t < width``."""
    if _converts_bfloat16(array, dest):
        widen = _host_conversions()[0]
        for t in range(width):
            dest[start + t] = widen(array[index + t])
        return
    for t in range(width):
        dest[start + t] = array[index + t]


def simulated_store(array, index, src, start, width):
    """Simulator: ``array[index + t] = src[start + t]`` for ``t < width``."""
    if _converts_bfloat16(array, src):
        narrow = _host_conversions()[1]
        for t in range(width):
            array[index + t] = narrow(src[start + t])
        return
    for t in range(width):
        array[index + t] = src[start + t]


def bfloat16_conversions():
    """Device functions ``(narrow, widen)``: a value to bfloat16 bits (an int16, rounded to
    nearest even), and such bits to float32.

    For a kernel that keeps bfloat16 bits in an ``int16`` local array (the
    residual add rounds ``s`` once and both stores and normalizes the
    result); an access between two ``int16`` arrays moves bits unconverted.
    CPU-compiled functions under the simulator.

    Returns
    -------
    tuple of callable

    Examples
    --------
    >>> narrow, widen = bfloat16_conversions()
    >>> callable(narrow) and callable(widen)
    True
    """
    if _SIMULATOR:
        return _host_conversions()[::-1]
    return _device_conversions()


@functools.cache
def _device_conversions():
    return tuple(cuda.jit(device=True, inline="always")(function)
                 for function in (_narrow_bits, _widen_bits))


def _simulated_access(width, function_name):
    """A Python stand-in for the vector access of ``width`` elements."""
    import numba_ln._gpu_ops as ops  # looked up per call: the test shims replace it

    def access(array, row_base, col, local, start):
        getattr(ops, function_name)(array, int(row_base) + int(col), local, int(start), width)
    return access


def _element_pointer(context, builder, array_type, array, row_base, col):
    """``&array[row_base + col]`` of a 1-D C-contiguous array, without the wraparound fix-up.

    The row's start comes first (the same ``getelementptr`` for a whole row,
    so it is computed once); the column offset is zero-extended when
    unsigned.
    """
    from llvmlite import ir
    intp = ir.IntType(64)
    data = context.make_array(array_type)(context, builder, array).data
    row = row_base if row_base.type.width == 64 else builder.zext(row_base, intp)
    offset = col if col.type.width == 64 else builder.zext(col, intp)
    return builder.gep(builder.gep(data, [row]), [offset])


def _packed(element, width, itemsize):
    """Whether a vector of ``width`` 16-bit elements moves as 32-bit words.

    PTX vector accesses have at most 4 lanes, so 8 float16 as ``<8 x half>``
    (or bfloat16 bits as ``<8 x i16>``) are two 8-byte accesses; as ``<4 x i32>`` they are one of 16 bytes. The
    words are split with shifts (a plain bitcast is folded back by NVVM).
    """
    return itemsize == 2 and width > 4


def _lanes_of_words(builder, words, element, width):
    """The ``width`` 16-bit lanes of a ``<width/2 x i32>`` vector, as ``element`` values."""
    from llvmlite import ir
    lanes = []
    for t in range(width):
        word = builder.extract_element(words, ir.Constant(ir.IntType(32), t // 2))
        if t % 2:
            word = builder.lshr(word, ir.Constant(ir.IntType(32), 16))
        lanes.append(builder.bitcast(builder.trunc(word, ir.IntType(16)), element))
    return lanes


def _words_of_lanes(builder, lanes):
    """A ``<len/2 x i32>`` vector packing 16-bit ``lanes`` (little end first)."""
    from llvmlite import ir
    i32 = ir.IntType(32)
    words = ir.Constant(ir.VectorType(i32, len(lanes) // 2), ir.Undefined)
    for w in range(len(lanes) // 2):
        low, high = (builder.zext(builder.bitcast(lane, ir.IntType(16)), i32)
                     for lane in lanes[2 * w:2 * w + 2])
        word = builder.or_(low, builder.shl(high, ir.Constant(i32, 16)))
        words = builder.insert_element(words, word, ir.Constant(i32, w))
    return words


def _to_element(context, builder, value, from_type, array_type):
    """``value`` converted to ``array_type``'s element (to bfloat16 bits: rounded, as float32;
    bits to bits: unchanged)."""
    from numba import types
    if array_type == types.int16 and from_type != types.int16:  # bfloat16 bits
        value = context.cast(builder, value, from_type, types.float32)
        return context.compile_internal(builder, _narrow_bits, types.int16(types.float32),
                                        [value])
    return context.cast(builder, value, from_type, array_type)


def _from_element(context, builder, value, array_type, to_type):
    """An element of ``array_type`` converted to ``to_type`` (bfloat16 bits: widened, unless
    to bits)."""
    from numba import types
    if array_type == types.int16 and to_type != types.int16:  # bfloat16 bits
        value = context.compile_internal(builder, _widen_bits, types.float32(types.int16),
                                         [value])
        array_type = types.float32
    return context.cast(builder, value, array_type, to_type)


def _access(context, builder, sig, args):
    """What both intrinsics start from: the element pointer, the element's LLVM type and
    size, the local array, and its first index."""
    from numba import types
    array_type, _, _, local_type, start_type = sig.args
    pointer = _element_pointer(context, builder, array_type, args[0], args[1], args[2])
    element = context.get_data_type(array_type.dtype)
    local = context.make_array(local_type)(context, builder, args[3])
    first = context.cast(builder, args[4], start_type, types.intp)
    return pointer, element, context.get_abi_sizeof(element), local, first


@functools.cache
def vector_load(width):
    """``load(array, row_base, col, dest, start)``: ``width`` elements into a local array.

    ``dest[start:start + width] = array[row_base + col:][:width]``, one
    access of ``width * itemsize`` bytes, aligned to that many (at most 16):
    the caller guarantees the alignment. ``row_base`` is an integer,
    ``col`` an unsigned integer, ``start`` a compile-time constant in the
    unrolled loops (so ``dest`` stays in registers).

    Parameters
    ----------
    width : int
        Elements per access: 1, 2, 4 or 8.

    Returns
    -------
    callable
        A numba-cuda intrinsic, or a Python function under the simulator.

    Examples
    --------
    >>> load = vector_load(4)
    >>> callable(load)
    True
    """
    if _SIMULATOR:
        return _simulated_access(width, "simulated_load")
    from llvmlite import ir
    from numba import types
    from numba.cuda.cgutils import get_item_pointer
    from numba.cuda.extending import intrinsic

    @intrinsic
    def load(typingctx, array, row_base, col, dest, start):
        def codegen(context, builder, sig, args):
            array_type, _, _, dest_type, _ = sig.args
            pointer, element, itemsize, local, first = _access(context, builder, sig, args)
            align = min(VECTOR_BYTES, width * itemsize)
            if _packed(element, width, itemsize):
                words_type = ir.VectorType(ir.IntType(32), width // 2)
                words = builder.load(builder.bitcast(pointer, words_type.as_pointer()),
                                     align=align)
                lanes = _lanes_of_words(builder, words, element, width)
            else:
                vector_type = ir.VectorType(element, width)
                vector = builder.load(builder.bitcast(pointer, vector_type.as_pointer()),
                                      align=align)
                lanes = [builder.extract_element(vector, ir.Constant(ir.IntType(32), t))
                         for t in range(width)]
            for t in range(width):
                value = _from_element(context, builder, lanes[t], array_type.dtype,
                                      dest_type.dtype)
                index = builder.add(first, ir.Constant(first.type, t))
                builder.store(value, get_item_pointer(context, builder, dest_type, local,
                                                      [index]))
            return context.get_dummy_value()
        return types.void(array, row_base, col, dest, start), codegen
    return load


@functools.cache
def vector_store(width):
    """``store(array, row_base, col, src, start)``: ``width`` elements from a local array.

    The mirror of :func:`vector_load`: ``array[row_base + col:][:width] =
    src[start:start + width]``, converted to ``array``'s type, one aligned
    access.

    Parameters
    ----------
    width : int
        Elements per access: 1, 2, 4 or 8.

    Returns
    -------
    callable
        A numba-cuda intrinsic, or a Python function under the simulator.

    Examples
    --------
    >>> store = vector_store(4)
    >>> callable(store)
    True
    """
    if _SIMULATOR:
        return _simulated_access(width, "simulated_store")
    from llvmlite import ir
    from numba import types
    from numba.cuda.cgutils import get_item_pointer
    from numba.cuda.extending import intrinsic

    @intrinsic
    def store(typingctx, array, row_base, col, src, start):
        def codegen(context, builder, sig, args):
            array_type, _, _, src_type, _ = sig.args
            pointer, element, itemsize, local, first = _access(context, builder, sig, args)
            lanes = []
            for t in range(width):
                index = builder.add(first, ir.Constant(first.type, t))
                value = builder.load(get_item_pointer(context, builder, src_type, local,
                                                      [index]))
                lanes.append(_to_element(context, builder, value, src_type.dtype,
                                         array_type.dtype))
            if _packed(element, width, itemsize):
                vector = _words_of_lanes(builder, lanes)
            else:
                vector = ir.Constant(ir.VectorType(element, width), ir.Undefined)
                for t, value in enumerate(lanes):
                    vector = builder.insert_element(vector, value,
                                                    ir.Constant(ir.IntType(32), t))
            builder.store(vector, builder.bitcast(pointer, vector.type.as_pointer()),
                          align=min(VECTOR_BYTES, width * itemsize))
            return context.get_dummy_value()
        return types.void(array, row_base, col, src, start), codegen
    return store


@cuda.jit(device=True, inline="always")
def warp_sum(value, lanes):
    """Sum ``value`` over aligned groups of ``lanes`` lanes (a power of two <= 32).

    A butterfly of ``shfl_xor_sync``, unrolled (each step guarded by
    ``lanes``, the same in every lane): every lane of a group ends with the
    same bits. Every lane of the warp must call it, with the same ``lanes``.
    """
    for step in range(5):
        offset = 16 >> step
        if offset < lanes:
            value += cuda.shfl_xor_sync(FULL_MASK, value, offset)
    return value


@cuda.jit(device=True, inline="always")
def block_sum(buf, value, warps):
    """Sum ``value`` over a block of ``warps`` full warps; every thread gets the total.

    One barrier: each warp's sum goes to ``buf[warp]``, then every thread adds
    ``buf[0..warps)`` in warp order (unrolled to ``len(buf)``, guarded by
    ``warps``). Consecutive sums alternate between two buffers, so a slow
    thread still reading one cannot see it overwritten (the barrier of the
    sum in between orders them). Every thread of the block must call it.
    """
    total = warp_sum(value, WARP_SIZE)
    tid = cuda.threadIdx.x
    if tid % WARP_SIZE == 0:
        buf[tid // WARP_SIZE] = total
    cuda.syncthreads()
    total = buf[0]
    for warp in range(1, buf.size):
        if warp < warps:
            total += buf[warp]
    return total


@cuda.jit(device=True, inline="always")
def block_sum2(buf, first, second, warps):
    """Two :func:`block_sum` behind one barrier; ``buf`` holds two values a warp."""
    first = warp_sum(first, WARP_SIZE)
    second = warp_sum(second, WARP_SIZE)
    tid = cuda.threadIdx.x
    if tid % WARP_SIZE == 0:
        buf[2 * (tid // WARP_SIZE)] = first
        buf[2 * (tid // WARP_SIZE) + 1] = second
    cuda.syncthreads()
    first = buf[0]
    second = buf[1]
    for warp in range(1, buf.size // 2):
        if warp < warps:
            first += buf[2 * warp]
            second += buf[2 * warp + 1]
    return first, second
