"""What both benchmarks (throughput.py, gpu_check.py) read off the device: a host sync before
a clock is read, peak memory, and the matmul rate. The training they time is the library's own
(gradflow.training); only these readings are the benchmarks'."""

from __future__ import annotations

import re
import resource
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA runs asynchronously, so a clock read without
    this times the launches, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak: the process's peak RSS (Linux: VmHWM := current RSS) and, on CUDA,
    torch.cuda's peak allocation."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the RSS peak stays process-wide
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_mb() -> float:
    """This process's peak RSS since the last reset_peak() (VmHWM), else since it started."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory(device: torch.device) -> dict:
    """Peak memory since the last reset_peak(), in MiB."""
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        out["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, min_seconds: float) -> float:
    """GFLOP/s of a size^3 matmul in `dtype`, repeated for at least `min_seconds` (and 3 times)
    after one untimed warm-up."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps, started = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - started < min_seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:  # keep the queue short, read the clock
            sync(device)
    sync(device)
    return round(2 * size**3 * reps / (time.perf_counter() - started) / 1e9, 1)
