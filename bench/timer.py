"""The benchmark timer: best of samples, batched for short calls, rivals interleaved.

``python -m bench`` times every case with it (the tables by budget, the size
curve by a fixed number of rounds); the pytest-benchmark suite times its rows
with pytest-benchmark and the roofline they are compared with here.
"""

import gc
import math
import time
from dataclasses import dataclass

import numpy as np

#: Seconds of timed calls per measurement (at least :data:`MIN_SAMPLES`
#: samples, or two when the calls are slower than the budget).
DEFAULT_BUDGET_S = 0.15
MIN_SAMPLES = 3
MAX_SAMPLES = 40
#: Calls shorter than this are timed in batches, so the clock's own cost is noise.
_MIN_SAMPLE_S = 1e-3
#: Calls slower than this are not settled: a switch's stall is small beside
#: them, and a settling call would double the cost of the largest points.
SETTLE_MAX_S = 0.01


@dataclass(frozen=True)
class Timing:
    """Seconds per call.

    Attributes
    ----------
    best_s, median_s : float
    samples : int
        Timed samples.
    loops : int
        Calls per sample (more than one for calls shorter than a millisecond).
    """

    best_s: float
    median_s: float
    samples: int
    loops: int


def _loops(sample_s, single):
    """Calls of ``single`` seconds in a sample of ``sample_s`` (1 to 10,000)."""
    return max(1, min(10_000, math.ceil(sample_s / max(single, 1e-8))))


class _Sampler:
    """Samples of one callable, and the rule that says when there are enough."""

    def __init__(self, call, budget_s, min_samples, max_samples, settle=0,
                 sample_s=_MIN_SAMPLE_S):
        self.call, self.budget_s = call, budget_s
        self.min_samples, self.max_samples = min_samples, max_samples
        start = time.perf_counter()
        call()
        single = self.spent = time.perf_counter() - start
        if single < sample_s:
            # The first call after a pause is slow (sleeping threads): size on a batch.
            batch = _loops(sample_s, single)
            start = time.perf_counter()
            for _ in range(batch):
                call()
            single = (time.perf_counter() - start) / batch
        self.loops = 1 if single >= sample_s else _loops(sample_s, single)
        self.settle = settle if single < SETTLE_MAX_S else 0
        # This first call was not settled, so it counts only where none are.
        self.samples = [single] if self.loops == 1 and not self.settle else []

    def done(self):
        n = len(self.samples)
        return ((n >= self.min_samples and (self.spent >= self.budget_s
                                            or n >= self.max_samples))
                or (n >= 2 and self.spent >= 2 * self.budget_s))

    def sample(self):
        for _ in range(self.settle):
            self.call()
        start = time.perf_counter()
        for _ in range(self.loops):
            self.call()
        elapsed = time.perf_counter() - start
        self.spent += elapsed
        self.samples.append(elapsed / self.loops)

    def timing(self):
        return Timing(min(self.samples), float(np.median(self.samples)),
                      len(self.samples), self.loops)


def measure(calls, budget_s=DEFAULT_BUDGET_S, followers=(), min_samples=MIN_SAMPLES,
            max_samples=MAX_SAMPLES, settle=0, sample_s=_MIN_SAMPLE_S):
    """Time warmed-up zero-argument callables in rounds, one sample of each per round.

    Each callable is sampled until it has at least ``min_samples`` samples
    and either ``budget_s`` seconds have been spent on it or it has
    ``max_samples``; a call slower than the budget stops after two samples
    once twice the budget is spent (never after one: a single hiccup of the
    machine must not become the figure). Calls under ``sample_s`` (a
    millisecond) are looped and the loop time divided by the count. The
    garbage collector is off while the clock runs.

    Interleaving puts every competitor through the same moments of the
    machine (another process waking, the clock frequency changing), so their
    ratios hold even where absolute times drift. A *follower* (the roofline)
    keeps sampling as long as any other callable does, so its best time is
    drawn from the whole window the others were measured in.

    Parameters
    ----------
    calls : list of callable
        Warmed up (run once, so compilation and first-touch are behind them).
    budget_s : float
        Seconds per callable.
    followers : collection of int
        Indices into ``calls``.
    min_samples, max_samples : int
    settle : int, optional
        Untimed calls before each sample of a callable faster than
        :data:`SETTLE_MAX_S` (see :func:`measure_rounds`).
    sample_s : float, optional
        Calls shorter than this are looped to about this long a sample.

    Returns
    -------
    list of Timing
        In the order of ``calls``.

    Examples
    --------
    >>> [timing] = measure([lambda: None], budget_s=0.005)
    >>> timing.samples >= MIN_SAMPLES and timing.best_s <= timing.median_s
    True
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        samplers = [_Sampler(call, budget_s, min_samples, max_samples, settle, sample_s)
                    for call in calls]
        while True:
            leaders_busy = any(not s.done() for i, s in enumerate(samplers)
                               if i not in followers)
            busy = [s for i, s in enumerate(samplers)
                    if not s.done() or (i in followers and leaders_busy)]
            if not busy:
                break
            for sampler in busy:
                sampler.sample()
    finally:
        if enabled:
            gc.enable()
    return [s.timing() for s in samplers]


def measure_rounds(calls, rounds, settle=1, sample_s=_MIN_SAMPLE_S):
    """Time warmed-up callables in exactly ``rounds`` interleaved rounds.

    Each round samples every callable once, in turn, so all of them meet the
    same moments of the machine; the rules for short calls (looped to
    ``sample_s`` a sample) and the collector are those of
    :func:`measure`, with no time budget. Each sample of a call faster than
    :data:`SETTLE_MAX_S` follows ``settle`` untimed calls of the same
    callable: two libraries with thread pools of their own (numba's TBB,
    PyTorch's OpenMP) leave their threads spinning after a call, and the
    first call of the other one after a switch can stall on 2 cores.

    Parameters
    ----------
    calls : list of callable
        Warmed up (run once).
    rounds : int
        Samples per callable, at least 1.
    settle : int, optional
        Untimed calls before each sample (of calls under :data:`SETTLE_MAX_S`).
    sample_s : float, optional
        Calls shorter than this are looped to about this long a sample.

    Returns
    -------
    list of Timing
        In the order of ``calls``; ``median_s`` is the median of the rounds.

    Examples
    --------
    >>> [timing] = measure_rounds([lambda: None], 4)
    >>> timing.samples
    4
    """
    # An endless budget leaves the sample count as the only rule that ends it.
    return measure(calls, budget_s=math.inf, min_samples=rounds, max_samples=rounds,
                   settle=settle, sample_s=sample_s)
