"""Wall-clock timing shared by the benchmark scripts (CUDA work is synchronised before and after)."""
from __future__ import annotations

import time

import torch


# datasheet dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of the device name
DATASHEET_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L4": 121.0, "T4": 65.0, "V100": 125.0, "A10G": 125.0}


def datasheet_peak(name: str) -> float | None:
    """The datasheet fp16 rate of the device called ``name`` (e.g. ``torch.cuda.get_device_name()``)."""
    return next((tflops for key, tflops in DATASHEET_TFLOPS.items() if key in name), None)


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
