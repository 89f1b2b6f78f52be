"""The small CUDA launch configuration the GPU tests run under (see conftest).

Under ``SMALL`` (float32; the simulator runs a Python thread per CUDA
thread, so every variant is reached with a few hundred columns):

- warp kernels serve rows of up to ``WARP_MAX_COLS`` (32 lanes x 4 elements,
  one 16-byte vector or four scalars per lane), one warp per block;
- block kernels rows of up to ``BLOCK_MAX_COLS`` (64 threads x 4);
- longer rows, and rows of at least ``CUDA_SPLIT_MIN_COLS`` when there is only
  one, are split into segments of 128 (32 threads x 4);
- a backward pass writes at most 2 partial rows, so with 3 rows or more a
  warp or block loops over rows and accumulates several into its partial row.
"""

SMALL = {
    "CUDA_WARP_BLOCK_THREADS": 32,
    "CUDA_ROW_BLOCK_THREADS": 64,
    "CUDA_WARP_ROW_BYTES": 16,
    "CUDA_BLOCK_ROW_BYTES": 16,
    "CUDA_SPLIT_SEGMENT_BYTES": 64,
    "CUDA_SPLIT_MIN_COLS": 200,
    "CUDA_SPLIT_MAX_ROWS": 2,
    "CUDA_BACKWARD_MAX_PARTIALS": 2,
    "CUDA_REDUCE_GROUPS": 4,
}
#: Widest float32 row the warp kernels serve under ``SMALL``.
WARP_MAX_COLS = 128
#: Widest float32 row the block kernels serve under ``SMALL``.
BLOCK_MAX_COLS = 256
#: Row length of a split segment under ``SMALL`` (float32).
SEGMENT_COLS = 128
