"""streamscore's benchmark suite: ``python -m benchmarks`` (``make bench``) or ``streamscore bench``.

See BENCHMARKS.md for the workload, the runs and how each figure is measured.
"""
