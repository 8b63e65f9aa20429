"""Will a run fit in memory? The check stage's estimate, before DVC deletes any output: a
`model.filters: 100000` would otherwise pass the check and fail in training, trying to allocate
hundreds of GB, after its outputs were gone.

The estimate counts, in fp32: the parameters four times (weights, gradients, Adam's two
moments) and the activations autograd keeps for the backward pass, about three tensors per
conv (conv, BN, activation outputs) at the largest batch a stage runs (training, evaluation
without a backward pass, the gradients probe). It is a lower bound of what PyTorch takes, so it
refuses only what cannot fit: more than the device's whole memory (RAM for the CPU and MPS, the
GPU's for CUDA). No torch import unless a GPU's size is needed for a big run."""

from __future__ import annotations

import os

from gradflow.errors import ParamsError
from gradflow.params import CIFAR100_TRAIN_SIZE

BYTES = 4  # fp32
GPU_FLOOR = 8 << 30  # no run below this needs torch imported to read the GPU's size


def model_sizes(depth: int, stages: int, filters: int, dense: bool, deep_supervision: bool,
                residual_reduction: bool = False) -> tuple[int, int]:
    """(parameters, activation values per image) of gradflow.model.VGG, counted from its
    layout (without building it: the check stage imports no torch)."""
    f = filters
    n_blocks = (depth - 2 - 2 * stages) // (2 * stages)
    params = 27 * f + 2 * f                      # input conv + BN
    side = 32
    acts = 3 * f * side * side                   # input conv, BN, activation
    for s in range(stages):
        for i in range(n_blocks + 1):
            reduce = i == n_blocks
            if dense and i > 0:
                params += (i + 1) * f * f
                acts += (i + 1) * f * side * side + f * side * side  # the concat and its 1x1 conv
            params += 2 * (9 * f * f + 2 * f) + (2 * f if reduce else 0)
            out_side = side // 2 if reduce else side
            acts += 3 * f * side * side + 3 * f * out_side * out_side
            side = out_side
        if deep_supervision and s < stages - 1:
            params += f * 100 + 100
    params += f * 100 + 100                      # the classifier
    return params, acts


def memory_of(device: str, need: int) -> tuple[int, str] | None:
    """(bytes, what) of the device a run trains on; None where it cannot be told cheaply."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    if device in ("cpu", "mps") or (device == "auto" and need <= GPU_FLOOR):
        return (ram, "this machine's RAM") if ram else None
    try:
        import torch
        if torch.cuda.is_available():
            index = int(device[5:]) if device.startswith("cuda:") else 0
            if index < torch.cuda.device_count():
                props = torch.cuda.get_device_properties(index)
                return props.total_memory, f"the GPU cuda:{index} ({props.name})"
    except Exception:  # no torch, no driver: fall back to the RAM
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
        n_params, acts = model_sizes(v.depth, run.model.stages, run.model.filters, v.dense,
                                     v.deep_supervision, v.residual_reduction)
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
