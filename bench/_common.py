"""Timing shared by the Python benchmarks (bench_sketch.py, bench_ifvp.py, ...)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Mapping


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


def interleaved_medians(fns: Mapping[str, Callable[[], object]], reps: int,
                        warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Median time of each ``fns[name]()``, timed in ``reps`` rounds that call every
    function once, in turn (after ``warmup`` untimed rounds): on a shared machine a change
    of load then falls on all of them alike, so their ratios hold even when the absolute
    times drift. ``clock``: wall time by default; ``time.thread_time`` counts only the CPU
    time of the calling thread, which on an oversubscribed machine leaves out the time a
    single-threaded call spends descheduled (that wait inflates short calls the most)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}
