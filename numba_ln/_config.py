"""Tunables, in one place.

Every kernel reads its compiler flags and size thresholds from here, so a
change of policy is one edit and a test can check that no kernel hard-codes
its own.
"""

import os

#: LLVM fast-math flags for every CPU kernel. ``reassoc`` lets reductions use
#: several vector accumulators and ``contract`` allows fused multiply-add.
#: Neither assumes the absence of NaN or Inf (``nnan``/``ninf`` would), so a
#: NaN in a row still turns that row -- and only that row -- into NaN.
FASTMATH = {"reassoc", "contract"}

#: Below this many elements (rows * cols) the serial CPU kernel runs: the
#: parallel launch costs a few microseconds, more than it saves on small work.
SERIAL_MAX_ELEMENTS = 1 << 15

#: The backward pass sums ``dweight``/``dbias`` over fixed blocks of rows, then
#: sums the blocks in order. A block holds about this many elements, and the
#: partition depends only on the shape, never on the thread count, so the
#: result is bit-identical whatever ``numba.set_num_threads`` says.
BACKWARD_BLOCK_ELEMENTS = 1 << 16

#: numba's on-disk cache of compiled kernels. Off with NUMBA_LN_NO_CACHE=1
#: (useful while editing kernels: numba does not notice edits to the helper
#: functions a cached kernel calls).
CACHE = os.environ.get("NUMBA_LN_NO_CACHE", "") in ("", "0")
