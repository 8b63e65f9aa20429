"""Where a run computes (train.device) and in which dtype (train.precision)."""

from __future__ import annotations

import os

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


def uses_bf16(device: torch.device, precision: str) -> bool:
    """train.precision: auto is bf16 on CUDA (tensor cores, no loss scaling), fp32 elsewhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str):
    # Autocast runs convs and matmuls in bf16 and keeps the parameters, their gradients and the
    # optimizer in fp32. bf16 has fp32's exponent range, so gradients of 1e-18 stay resolvable.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))
