import numpy as np
import pytest

DTYPES = [np.float16, np.float32, np.float64]


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def param_dtype(dtype):
    """A gain/bias dtype that differs from x's where that is the realistic case."""
    return np.float32 if dtype == np.float16 else dtype
