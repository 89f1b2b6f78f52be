"""A check shared by the forward and backward streaming-store tests."""

import numpy as np

#: What the output buffers hold before a kernel runs: padding must keep it.
FILL = 7


def assert_streamed_like_plain(plain, streamed, rows, cols, ld, dtype):
    """Both runs' results are bit-identical, and the streamed output's row padding is untouched.

    ``plain`` and ``streamed`` are tuples of arrays, the output rows (row
    stride ``ld``, viewed as its storage type) first.
    """
    for a, b in zip(plain, streamed):
        np.testing.assert_array_equal(a, b)
    padding = np.ones(rows * ld, bool)
    for r in range(rows):
        padding[r * ld:r * ld + cols] = False
    assert (streamed[0].view(dtype)[padding] == FILL).all(), "padding was written"
