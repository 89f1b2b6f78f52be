"""Array layouts the kernels must not be handed as they are."""

import numpy as np


def unaligned_copy(a):
    """A copy of ``a`` whose data starts one byte past an element boundary."""
    copy = np.zeros(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
    copy[...] = a
    assert not copy.flags.aligned
    return copy
