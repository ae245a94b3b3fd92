"""Timing shared by the Python benchmarks (bench_sketch.py, bench_ifvp.py)."""
from __future__ import annotations

import statistics
import time


def median_seconds(fn, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
