"""Will a run fit in memory? The check stage's estimate, before DVC deletes any output: a
`model.filters: 100000` would otherwise pass the check and fail in training, trying to allocate
hundreds of GB, after its outputs were gone.

The estimate counts, in fp32: the parameters four times (weights, gradients, Adam's two
moments) and the activations autograd keeps for the backward pass at the largest batch a stage
runs (training, evaluation without a backward pass, the gradients probe). Both are counted on
the network the train stage builds (gradflow.model.VGG), built on the meta device: shapes
only, no memory, no random numbers drawn. It is a lower bound of what PyTorch takes (no loss,
no gradients of activations, no workspace), so it refuses only what cannot fit: more than the
device's whole memory (RAM for the CPU and MPS, the GPU's for CUDA)."""

from __future__ import annotations

import functools
import os

import torch

from gradflow.errors import ParamsError
from gradflow.model import VGG
from gradflow.params import CIFAR100_TRAIN_SIZE, ModelParams, Variant

BYTES = 4  # fp32
IMAGE = (3, 32, 32)  # one image of the data (gradflow/data.py checks every split has this shape)
BATCH = 2  # the counting forward's: two images tell a per-image tensor from a per-channel one
GPU_FLOOR = 8 << 30  # no run below this needs CUDA initialised to read the GPU's size


@functools.lru_cache(maxsize=None)  # variants and sweep points share networks; each costs a meta forward
def model_sizes(variant: Variant, model: ModelParams) -> tuple[int, int]:
    """(parameters, activation values per image) of the network gradflow.model.VGG builds.

    Activations: the tensors autograd saves for the backward pass during a training-mode
    forward (saved_tensors_hooks), each counted once (a tensor two operations save, a view of
    one), the parameters left out (counted as such), and only those with the batch as their
    first dimension: per-channel statistics (BN's 1-D mean and inverse std) do not grow with
    the batch."""
    with torch.device("meta"):
        net = VGG(variant, model).train()
    weights = {id(p) for p in net.parameters()}
    kept = {}  # id -> tensor, holding each one so that no id is reused while counting

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in weights and base.dim() >= 2 and base.shape[0] == BATCH:
            kept[id(base)] = base
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.empty(BATCH, *IMAGE, device="meta"))
    return sum(p.numel() for p in net.parameters()), sum(t.numel() for t in kept.values()) // BATCH


def memory_of(device: str, need: int) -> tuple[int, str] | None:
    """(bytes, what) of the device a run trains on; None where it cannot be told cheaply."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    if device in ("cpu", "mps") or (device == "auto" and need <= GPU_FLOOR):
        return (ram, "this machine's RAM") if ram else None
    try:
        if torch.cuda.is_available():
            index = int(device[5:]) if device.startswith("cuda:") else 0
            if index < torch.cuda.device_count():
                props = torch.cuda.get_device_properties(index)
                return props.total_memory, f"the GPU cuda:{index} ({props.name})"
    except Exception:  # no driver, a broken one: fall back to the RAM
        pass
    return (ram, "this machine's RAM") if ram else None


def require_fits(params) -> None:
    """ParamsError naming the key, for the first run (variant or sweep point) that cannot fit."""
    gib = 1 << 30
    d = params.data
    n_train = (CIFAR100_TRAIN_SIZE if d.source == "cifar100" else d.synthetic_train_size) - d.val_size
    n_train = min(n_train, d.train_limit or n_train)
    n_eval = max(d.val_size, 10_000 if d.source == "cifar100" else d.synthetic_test_size)
    n_eval = min(n_eval, d.eval_limit or n_eval)
    for name, run in params.runs().items():
        v, t = run.variant, run.train
        n_params, acts = model_sizes(v, run.model)
        batches = {  # key -> (images, how many activation copies per image)
            (f"variants.{name}.batch_size" if name in params.variants and v.batch_size is not None
             else "train.batch_size"): min(t.batch_size, n_train),  # a batch is at most the data
            "train.eval_batch_size": -(-min(t.eval_batch_size, n_eval) // 3),  # no backward: a third kept
        }
        if name in params.variants:  # the gradients stage probes variants, not sweep points
            batches["gradients.probe_size"] = min(params.gradients.probe_size, d.val_size, n_eval)
        batch_key = max(batches, key=batches.get)
        weights, activations = 4 * n_params * BYTES, batches[batch_key] * acts * BYTES
        need = weights + activations
        have = memory_of(t.device, need)
        if have is None or need <= have[0]:
            continue
        key = "model.filters" if weights > activations else batch_key
        what = name if name in params.variants else f"sweep point {name.removeprefix('sweep-')}"
        raise ParamsError(
            f"{key}: {what} would need at least {need / gib:,.0f} GiB (model.filters {run.model.filters}: "
            f"{n_params:,} parameters, {weights / gib:,.1f} GiB with gradients and Adam's state; "
            f"activations of {batches[batch_key]} images ({batch_key}): {activations / gib:,.1f} GiB), "
            f"more than the {have[0] / gib:,.0f} GiB of {have[1]}; lower {key}")
