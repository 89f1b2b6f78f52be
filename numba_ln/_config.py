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

#: The parallel forward kernel splits the rows into this many contiguous chunks
#: (fewer for fewer rows) and threads take them in order: enough to balance
#: 256 threads, few enough that a chunk is many rows. A constant, because a
#: kernel that read the thread count could not be cached.
FORWARD_CHUNKS = 256

#: A forward whose output has at least this many bytes writes it with
#: non-temporal (streaming) stores: each 64-byte line goes to memory without
#: first being read into the cache and without evicting the input rows the
#: kernel is still working on. On the development machine (2 cores, 32 MiB
#: L3), interleaved with the copy roofline: float32 (65536, 1024) 0.74 -> 1.1,
#: (16384, 4096) 0.68 -> 0.9, (131072, 512) 0.78 -> 0.94; float64 (65536,
#: 1024) 0.74 -> 0.94. At 4 MiB outputs the two were level and below that
#: ordinary stores win, as they leave ``y`` in cache for whatever reads it
#: next. The results are bit-identical either way (``cpu.streams_output``).
STREAM_MIN_BYTES = 16 << 20

#: float16 outputs stream only from this many columns. Streamed float16 rows
#: prefetch the next row while writing (``cpu._normalize_streaming``); with
#: that, on 2 threads, (65536, 1024) went 0.94 -> 1.04 of the roofline
#: (median of 30 interleaved rounds) and (32768, 2048) 0.79 -> 1.11, while
#: (32768, 768) lost (0.75 -> 0.65): a 768-column row is one staging tile and
#: a ragged half, and its arithmetic, not memory, is the limit there.
STREAM_MIN_HALF_COLS = 1024

#: Bytes of the small staging row a streaming forward fills (in cache) before
#: copying it out with non-temporal stores. Short tiles keep the streaming
#: stores flowing while the next tile is computed (4 KiB tiles measured
#: 10-20 % slower than 1 KiB ones).
STREAM_STAGE_BYTES = 1024

#: The backward pass sums ``dweight``/``dbias`` over fixed blocks of rows, then
#: sums the blocks in order: rows are split into at most this many blocks of
#: equal size. The partition depends only on the shape, never on the thread
#: count, so the result is bit-identical whatever ``numba.set_num_threads``
#: says. 64 blocks keep up to 64 threads busy while the partial rows stay
#: small next to the data (64 * cols elements each for dweight and dbias).
BACKWARD_BLOCKS = 64

#: Backward rows at least this long are "wide": pass one takes them in pairs
#: (each load of ``weight`` and of the partial ``dweight``/``dbias``, from L2
#: at this width, serves two rows), and large outputs of them write ``dx``
#: with streaming stores (``cpu.streams_input_gradient``). On the development
#: machine, float32, in one process against the same roofline: (16384, 4096)
#: 0.69 -> 0.83-0.85 (pairs alone 0.74, streaming alone 0.62-0.74); (32768,
#: 2048) 0.71 -> 0.77 with streaming. Narrower rows lost: (65536, 1024) with
#: both, 20.6-32.5 GB/s against 16.7-33.8 in five A/B runs, no clear winner,
#: and streaming alone 0.79 -> 0.67; (131072, 512) 23-26 against 33-34 GB/s.
BACKWARD_WIDE_COLS = 2048

#: Columns each task sums when a threaded backward adds up its blocks' partial
#: ``dweight``/``dbias`` rows: a few KiB of each partial row per task.
BACKWARD_REDUCE_COLS = 512

#: numba's on-disk cache of compiled kernels. Off with NUMBA_LN_NO_CACHE=1
#: (useful while editing kernels: numba does not notice edits to the helper
#: functions a cached kernel calls).
CACHE = os.environ.get("NUMBA_LN_NO_CACHE", "") in ("", "0")

# ---------------------------------------------------------------------------
# CUDA (numba_ln/gpu.py). ``gpu.plan`` reads these at every call, so a test
# may monkeypatch them small and the simulator runs every kernel variant fast.
# The block sizes must be powers of two: the reductions are shared-memory
# trees.
# ---------------------------------------------------------------------------

#: Row elements each thread of a warp-per-row kernel holds in registers. A
#: row of up to ``32 * CUDA_WARP_ITEMS_PER_THREAD`` elements (256) is served by
#: a warp, or by a power-of-two part of one for rows shorter than 32; longer
#: rows get a block each. This is the warp-vs-block and register-vs-shared
#: switch. 8 keeps the warp kernels near 56 (forward) and 92 (backward)
#: registers in float32; 16 would nearly double both.
CUDA_WARP_ITEMS_PER_THREAD = 8

#: Threads per block of the warp-per-row kernels (several rows per block).
CUDA_WARP_BLOCK_THREADS = 128

#: Most threads per block of the block-per-row kernels. A row gets the
#: smallest power of two >= 32 that gives each thread at most
#: ``CUDA_WARP_ITEMS_PER_THREAD`` elements, up to this.
CUDA_ROW_BLOCK_THREADS = 256

#: Dynamic shared memory a block-per-row kernel may use to cache a row (the
#: forward pass caches ``cols`` values of the compute type, the backward pass
#: ``4 * cols``: xhat, w * dy and the two column accumulators). Rows that do
#: not fit are streamed from global memory (L2) instead. 32 KiB plus the
#: reduction buffers stays under the 48 KiB a block gets without opting in.
CUDA_SHARED_CACHE_BYTES = 32 * 1024

#: Most blocks of a backward pass, hence most partial ``dweight``/``dbias``
#: rows that the second kernel sums. The count is a function of the shape
#: alone (never of the GPU), so the gradients are bit-identical on any device.
CUDA_BACKWARD_MAX_BLOCKS = 512

#: Threads per block of the partial-sum reduction (one thread per column).
CUDA_REDUCE_THREADS = 256

#: numba-cuda ``fastmath``: off, so division and ``sqrt`` are IEEE-rounded and
#: denormals are kept; the kernels are memory-bound, the approximations would
#: buy nothing.
CUDA_FASTMATH = False
