"""Benchmarks of numba-ln, run from a source checkout (not installed with the package).

``python -m bench`` measures numba-ln against NumPy, PyTorch, its C ABI and a
copy roofline and prints the tables, then the size curve; ``pytest bench
--benchmark-enable`` times the same cases with pytest-benchmark. The modules:

- :mod:`bench.cases`: the cases, their inputs, the NumPy baseline and the
  output check;
- :mod:`bench.competitors`: the implementations being compared, each a
  zero-argument callable per case;
- :mod:`bench.timer`: the one timer;
- :mod:`bench.runner`: a whole run, from cases to result records, with the
  machine it ran on;
- :mod:`bench.curve`: the size curve, numba-ln against PyTorch from one row
  to past the L3 cache, medians of interleaved rounds;
- :mod:`bench.report`: text and Markdown tables, the plot, the written files;
- :mod:`bench.__main__`: the command line.
"""
