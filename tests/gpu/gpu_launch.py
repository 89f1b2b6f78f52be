"""The small CUDA launch configuration the GPU tests run under (see conftest)."""

#: The simulator's configuration: the warp kernels serve rows of up to
#: 32 * 2 = 64 elements; block-per-row kernels get one warp (a test raises it
#: to two); a backward pass uses at most 2 blocks, so with 3 rows or more a
#: block loops over rows and accumulates several into its partial.
SMALL = {
    "CUDA_WARP_ITEMS_PER_THREAD": 2,
    "CUDA_WARP_BLOCK_THREADS": 32,
    "CUDA_ROW_BLOCK_THREADS": 32,
    "CUDA_BACKWARD_MAX_BLOCKS": 2,
    "CUDA_REDUCE_THREADS": 32,
}
#: Widest row the warp kernels serve under ``SMALL``.
WARP_MAX_COLS = 32 * SMALL["CUDA_WARP_ITEMS_PER_THREAD"]
#: Widest row the block kernels cache in shared memory (the ``small_launch`` fixture
#: moves the shared/streaming switch here).
SHARED_MAX_COLS = 96
