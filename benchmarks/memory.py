"""Peak-memory measurement for benchmarks: a thread samples this process's RSS while a call runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psutil


def peak_rss_delta(fn: Callable[[], Any], interval: float = 0.002) -> tuple[Any, float, float]:
    """Run `fn()`; return (result, seconds, peak RSS above the starting RSS in MiB)."""
    proc = psutil.Process()
    start_rss = proc.memory_info().rss
    peak = [start_rss]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return result, seconds, (peak[0] - start_rss) / 2**20
