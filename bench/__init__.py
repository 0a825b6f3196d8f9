"""Grain's benchmark harness: Grain side by side with Dask, Ray and a ProcessPool floor.

``python -m bench.run`` (``make bench``) runs every workload on every system, interleaved
and repeated, each measurement in a fresh subprocess; ``python -m bench.placement_sim``
simulates the executor's placement code at cluster scale. See ``docs/benchmarks.md``.
Nothing here is imported by Grain itself.
"""
