"""Wall-clock timing shared by the benchmark scripts (CUDA work is synchronised before and after)."""
import time

import torch


def timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``repeats`` calls of ``fn``."""
    times = sorted(timed(fn, device) for _ in range(repeats))
    return times[len(times) // 2]
