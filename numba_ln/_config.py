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

#: Calls of at most this many elements (rows * cols) run on the calling
#: thread: below it, waking the pool's threads costs more than they save
#: (bench/NOTES.md).
SERIAL_MAX_ELEMENTS = 96 * 1024

#: A threaded forward cuts its rows into at most this many contiguous chunks:
#: enough to balance 256 threads, and a constant so that the kernels cache.
FORWARD_CHUNKS = 256

#: Fewest elements in a threaded forward's chunk: each chunk is a call
#: through the pool, which costs as much as a few rows of 768.
FORWARD_MIN_CHUNK_ELEMENTS = 16 * 1024

#: The forward's sum of squares adds blocks of this many elements in vector
#: lanes of the compute type, then the blocks' sums in float64: accurate at
#: any row length for less than float64 lanes cost (bench/NOTES.md).
STATS_BLOCK = 128

#: 16-bit rows take their statistics in one pass, from a pilot: the mean of
#: this many first elements (``cpu._narrow_row_moments``).
STATS_PILOT_ELEMENTS = 64

#: ... while the row's mean lies within ``sqrt(STATS_PILOT_REACH)`` standard
#: deviations of the pilot; further, the cancellation in the one-pass variance
#: costs more than two bits, and the row is measured again in two passes.
STATS_PILOT_REACH = 4.0

#: A streaming forward prefetches the row at least this many bytes ahead of
#: the one it works on (at least the next): the prefetch of a short row's
#: successor would arrive after it is needed (bench/NOTES.md).
PREFETCH_AHEAD_BYTES = 4096

#: Outputs of at least this many bytes are written with streaming stores,
#: which neither read ``y`` into the cache nor evict the rows in use; smaller
#: ones stay in cache for whoever reads them next (bench/NOTES.md).
STREAM_MIN_BYTES = 16 << 20

#: float16 forwards stream only rows this wide: narrower ones are limited by
#: their arithmetic, not by memory (bench/NOTES.md).
STREAM_MIN_HALF_COLS = 1024

#: Bytes of the staging row a streaming pass fills in cache before writing it
#: out: short tiles keep the streaming stores flowing.
STREAM_STAGE_BYTES = 1024

#: A backward sums ``dweight``/``dbias`` over at most this many fixed blocks of
#: rows, then adds the blocks in order. The partition depends on the shape
#: alone, so the bits never depend on the thread count.
BACKWARD_BLOCKS = 64

#: Fewest rows in a backward block: each block zeroes, fills and hands on a
#: partial ``dweight``/``dbias`` row, which costs as much as a row's own work.
BACKWARD_MIN_BLOCK_ROWS = 16

#: Backward rows at least this wide take pass one in pairs (one load of
#: ``weight`` and of the partial sums serves two rows) and may stream ``dx``;
#: narrower rows lost with either (bench/NOTES.md).
BACKWARD_WIDE_COLS = 2048

#: Columns each task sums when a threaded backward adds up its blocks' partial
#: ``dweight``/``dbias`` rows.
BACKWARD_REDUCE_COLS = 512

#: numba's on-disk cache of compiled kernels. Off with NUMBA_LN_NO_CACHE=1
#: (useful while editing kernels: numba does not notice edits to the helper
#: functions a cached kernel calls).
CACHE = os.environ.get("NUMBA_LN_NO_CACHE", "") in ("", "0")

# ---------------------------------------------------------------------------
# CUDA (numba_ln/gpu.py). ``gpu.plan`` reads these at every call, so a test
# may monkeypatch them small and the simulator runs every kernel variant fast.
# The block sizes must be powers of two: a row's group of lanes is an aligned
# power-of-two part of a warp, and block reductions take whole warps.
# ---------------------------------------------------------------------------

#: Bytes of a row each lane of a warp-per-row kernel holds in registers (the
#: backward half as much per array: it holds ``x`` and ``dy``). 128 bytes is
#: 8 vectors of 16 bytes: a warp serves rows of up to 1024 float32, 2048
#: float16 or 512 float64 elements (the backward half that).
CUDA_WARP_ROW_BYTES = 128

#: Threads per block of the warp-per-row kernels (several rows per block).
CUDA_WARP_BLOCK_THREADS = 128

#: Bytes of a row each thread of a block-per-row kernel holds in registers
#: (the backward half as much per array), as for the warp kernels.
CUDA_BLOCK_ROW_BYTES = 128

#: Most threads per block of the block-per-row and split kernels (a power of
#: two). A row gets the smallest power of two >= 32 that holds it within
#: ``CUDA_BLOCK_ROW_BYTES`` per thread; 512 x 128 bytes serves rows of up to
#: 16384 float32 elements, and leaves ``ptxas`` 128 registers a thread.
CUDA_ROW_BLOCK_THREADS = 512

#: Rows of at least this many elements, when there are fewer than
#: ``CUDA_SPLIT_MAX_ROWS`` of them, are split across several blocks so that a
#: few long rows still fill the GPU (1 x 65536 would otherwise run on one SM).
CUDA_SPLIT_MIN_COLS = 16384
CUDA_SPLIT_MAX_ROWS = 64

#: Bytes of a row (per array) each block of a split row covers.
CUDA_SPLIT_SEGMENT_BYTES = 4 * 1024

#: Most partial ``dweight``/``dbias`` rows a backward pass writes (one per warp
#: of the warp kernel, per block of the others), hence the most that the
#: reduction adds. The count is a function of the shape and the tunables
#: alone, never of the GPU.
CUDA_BACKWARD_MAX_PARTIALS = 512

#: Threads per block of the gradient reduction (a power of two), as a tile of
#: columns times groups of partial rows ...
CUDA_REDUCE_THREADS = 512
#: ... with at most this many groups (each adds every ``groups``-th partial
#: row; then the groups are added in order): 512 partial rows give tiles of 8
#: columns (a 32-byte sector of float32), 96 blocks at 768 columns; fewer
#: partial rows give wider tiles.
CUDA_REDUCE_GROUPS = 64

#: numba-cuda ``fastmath``: off, so division and ``sqrt`` are IEEE-rounded and
#: denormals are kept; the kernels are memory-bound, the approximations would
#: buy nothing.
CUDA_FASTMATH = False
