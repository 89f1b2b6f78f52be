"""The small CUDA launch configuration the GPU tests run under (see conftest).

Under ``SMALL`` (float32; the simulator runs a Python thread per CUDA
thread, so every variant is reached with a few hundred columns):

- warp kernels serve rows of up to 128 elements (32 lanes x 4: one 16-byte
  vector or four scalars a lane), one warp per block;
- block kernels rows of up to 256 (64 threads x 4);
- longer rows, and rows of at least ``CUDA_SPLIT_MIN_COLS`` when there is only
  one, are split into segments of 128 columns (64 in the scalar backward);
- a backward pass writes at most 2 partial rows, so with 3 rows or more a
  warp or block loops over rows and accumulates several into its partial row.
"""

SMALL = {
    "CUDA_WARP_BLOCK_THREADS": 32,
    "CUDA_ROW_BLOCK_THREADS": 64,
    "CUDA_WARP_ROW_BYTES": 16,
    "CUDA_BLOCK_ROW_BYTES": 16,
    "CUDA_SPLIT_SEGMENT_BYTES": 512,
    "CUDA_SPLIT_MIN_COLS": 200,
    "CUDA_SPLIT_MAX_ROWS": 2,
    "CUDA_BACKWARD_MAX_PARTIALS": 2,
    "CUDA_REDUCE_THREADS": 32,
    "CUDA_REDUCE_GROUPS": 4,
}
