import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


@pytest.fixture
def general_calls(monkeypatch):
    """``count(name)``: start counting calls of ``numba_ln._validate.<name>``.

    ``forward_spec`` and ``backward_spec`` are where every call that takes
    the general path (not a small call's short one) begins. ``count``
    returns the list the calls are appended to.
    """
    from numba_ln import _validate

    def count(name):
        calls = []
        real = getattr(_validate, name)

        def counting(*args):
            calls.append(args)
            return real(*args)

        monkeypatch.setattr(_validate, name, counting)
        return calls

    return count
