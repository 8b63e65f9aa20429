"""Where a run computes (train.device) and in which dtype (train.precision)."""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import torch

from gradflow.params import device_error


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device_error(name)  # a device this machine lacks: the ParamsError the check stage gives
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


@functools.cache  # asked by every autocast (each step, each evaluation batch); the CPU does not change
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it oneDNN
    emulates bf16: measured on a 2-core AVX2-only AMD EPYC, a VGG_38 training step was ~10x
    slower than fp32 (9 against 99 images/s)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def uses_bf16(device: torch.device, precision: str) -> bool:
    """train.precision: auto is bf16 on CUDA (tensor cores, no loss scaling), fp32 elsewhere;
    fast is bf16 wherever it is native (CUDA, a CPU with AVX512-BF16 or AMX), fp32 elsewhere."""
    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    return device.type == "cuda" or (precision == "fast" and device.type == "cpu" and native_cpu_bf16())


def uses_channels_last(setting, device: torch.device) -> bool:
    """train.channels_last: auto is NHWC on CUDA (cuDNN's tensor-core layout) and on the CPU
    (oneDNN's faster one for these 32-channel convs: VGG_08 1.31x, VGG_38 1.19x on 2 cores,
    benchmarks/throughput.py), not on MPS."""
    return setting is True or (setting == "auto" and device.type in ("cuda", "cpu"))


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    # Autocast runs convs and matmuls in bf16 and keeps the parameters, their gradients and the
    # optimizer in fp32. bf16 has fp32's exponent range, so gradients of 1e-18 stay resolvable.
    # cache_enabled=False (the training step, gradflow.fastpath): a cached bf16 copy of a weight
    # must not outlive a captured CUDA graph.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision),
                          cache_enabled=cache_enabled)


@contextmanager
def one_thread():
    """Run torch's CPU ops on one thread, then restore the caller's count.

    What is written with all its digits must not depend on how the work is split, and with
    several threads it does: a reduction adds one partial sum per thread, and an elementwise op's
    chunks end at thread boundaries, where the vectorised sin/arccos/exp hand over to the scalar
    ones, which round differently in the last bit (measured, torch 2.14: the mean-field prediction
    on an Intel Xeon, and the synthetic stand-in's FFTs on an AMD EPYC, where 2.6e-6 of the
    pixels came out 1 apart between 1 and 2 threads). On one thread every op runs in one fixed
    order, whatever the machine's thread settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def single_threaded(f):
    """`f` run under `one_thread`."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        with one_thread():
            return f(*args, **kwargs)
    return wrapper
