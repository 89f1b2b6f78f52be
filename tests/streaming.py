"""A check shared by the forward and backward streaming-store tests."""

import numpy as np

#: What the output buffers hold before a kernel runs: padding must keep it.
FILL = 7


def assert_streamed_like_plain(plain, streamed, rows, cols, ld, dtype, outputs=1):
    """Both runs' results are bit-identical, and the streamed outputs' row padding is untouched.

    ``plain`` and ``streamed`` are tuples of arrays, the ``outputs`` output
    row buffers (row stride ``ld``, viewed as their storage type) first.
    """
    for a, b in zip(plain, streamed):
        np.testing.assert_array_equal(a, b)
    padding = np.ones(rows * ld, bool)
    for r in range(rows):
        padding[r * ld:r * ld + cols] = False
    for out in streamed[:outputs]:
        assert (out.view(dtype)[padding] == FILL).all(), "padding was written"
