"""Calling compiled kernels by address: from the parallel kernels and the C adapters.

A jitted function that calls a kernel the usual way links the kernel's
machine code into its own and has LLVM optimize all of it again (a parallel
kernel twice: its loop body and its launcher are separate modules). That was
most of a parallel kernel's compile time, and of a C entry point's. Calling
the kernel through its address keeps the caller small; the address is a
run-time argument, so the caller is still cached.

The callee's argument types must be exactly those it was compiled for.
:func:`address` compiles (or loads) it for a signature built from dtypes
alone, and :func:`as_mutable` gives the arguments that signature's types
inside the parallel kernel: every array is ``C``-contiguous and aligned
(``_cpu_backend`` copies an unaligned one before it reaches a kernel).
"""

from numba import from_dtype, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic


@intrinsic
def call(typingctx, address, args):
    """Call the compiled function at ``address`` with the tuple ``args``; it returns nothing."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None

    def codegen(context, builder, signature, llargs):
        argtypes = list(args.types)
        function = context.call_conv.get_function_type(types.none, argtypes)
        callee = builder.inttoptr(llargs[0], function.as_pointer())
        status, _ = context.call_conv.call_function(
            builder, callee, types.none, argtypes, cgutils.unpack_tuple(builder, llargs[1]))
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(address, args), codegen


@intrinsic
def as_mutable(typingctx, array):
    """``array`` typed as writable: the kernels only read it, and one type means one callee.

    ``None`` (an absent optional array) passes through.
    """
    if isinstance(array, types.NoneType):
        return array(array), lambda context, builder, signature, llargs: llargs[0]
    if not isinstance(array, types.Array):
        return None
    target = array.copy(readonly=False)

    def codegen(context, builder, signature, llargs):
        return impl_ret_borrowed(context, builder, target, llargs[0])

    return target(array), codegen


@intrinsic
def unowned(typingctx, array):
    """``array`` without its reference count: slices and calls of it touch no shared counter.

    numba counts references to an array's memory with atomic instructions,
    and on x86 each of them waits for the thread's streaming stores to reach
    memory. A kernel's arrays outlive its call (the caller holds them), so
    inside the kernel the count has nothing to protect. ``None`` passes
    through.
    """
    if isinstance(array, types.NoneType):
        return array(array), lambda context, builder, signature, llargs: llargs[0]
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, llargs):
        view = context.make_array(array)(context, builder, llargs[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        return view._getvalue()

    return array(array), codegen


def array(dtype, ndim=1):
    """The numba type of a writable, aligned, C-contiguous array of ``dtype``."""
    return types.Array(from_dtype(dtype), ndim, "C")


def address(kernel, signature):
    """The address of ``kernel``'s machine code for ``signature``, compiled or loaded now.

    Callers keep the address (``cpu.rows_kernel`` and ``cpu.blocks_kernel``
    cache it per dtype and variant).

    Parameters
    ----------
    kernel : numba dispatcher
    signature : tuple of numba types

    Returns
    -------
    int
    """
    kernel.compile(signature)
    result = kernel.overloads[signature]
    return result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
