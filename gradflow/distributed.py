"""A run under torchrun (WORLD_SIZE > 1): each process takes its shard of every global batch
and DistributedDataParallel all-reduces the gradients; only rank 0 writes anything. Alone, a
process is rank 0 of a world of 1 and nothing here does any communication."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gradflow.errors import ParamsError
from gradflow.params import RunConfig


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 when run alone)."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the processes, in place (alone: nothing to do)."""
        if self.world > 1:
            import torch.distributed as tdist
            for t in tensors:
                tdist.all_reduce(t)


def init_distributed(cfg: RunConfig, device: torch.device) -> Dist:
    """Join torchrun's process group. torchrun's environment decides: train.distributed only
    makes the train stage launch itself under torchrun (stages/train.py); without torchrun a
    process trains alone, as a sweep point does."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist()
    if cfg.train.batch_size < world:  # some ranks would get no images, every step
        raise ParamsError(f"{cfg.name}: batch_size {cfg.train.batch_size} is smaller than the "
                          f"{world} processes sharing each batch")
    import torch.distributed as dist
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicator uses the current device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def wrap(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """The model as the training steps call it: under torchrun, DistributedDataParallel, which
    broadcasts rank 0's weights as it wraps (so wrap after restoring them)."""
    if dist.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
