"""Process pools for CPU-bound preprocessing (numpy and soxr hold the GIL for
much of their work, so threads would not scale)."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def map_jobs(function, jobs: list, workers: int, chunksize: int = 1):
    """Yield function(job) for every job in order, in a process pool when workers > 1."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        yield from pool.map(function, jobs, chunksize=chunksize)
