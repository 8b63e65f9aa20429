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
from gradflow.params import CIFAR100_TEST_SIZE, CIFAR100_TRAIN_SIZE, ModelParams, Variant

BYTES = 4  # fp32
GIB = 1 << 30
IMAGE = (3, 32, 32)  # one image of the data (gradflow/data.py checks every split has this shape)
IMAGE_BYTES = IMAGE[0] * IMAGE[1] * IMAGE[2]  # as uint8
BATCH = 2  # the counting forward's: two images tell a per-image tensor from a per-channel one
GPU_FLOOR = 8 << 30  # no run below this needs CUDA initialised to read the GPU's size


@functools.lru_cache(maxsize=None)  # variants and sweep points share networks
def _built(variant: Variant, model: ModelParams) -> torch.nn.Module:
    with torch.device("meta"):
        return VGG(variant, model).train()


def parameter_count(variant: Variant, model: ModelParams) -> int:
    return sum(p.numel() for p in _built(variant, model).parameters())


def activation_bound(variant: Variant, model: ModelParams) -> int:
    """An upper bound of model_sizes' activations per image from the built network's layers
    alone, without the forward pass (the first meta forward of a process costs ~1 s): twice
    every conv's input and output at the image's full resolution (a conv keeps its input, its
    norm and activation their own, a pooling its input: at most 2 x (in + out) channels of
    them), and each linear layer's input. 3-5x the exact count for these networks."""
    pixels = IMAGE[1] * IMAGE[2]
    net = _built(variant, model)
    return sum(2 * (m.in_channels + m.out_channels) * pixels if isinstance(m, torch.nn.Conv2d)
               else m.in_features if isinstance(m, torch.nn.Linear) else 0 for m in net.modules())


@functools.lru_cache(maxsize=None)
def model_sizes(variant: Variant, model: ModelParams) -> tuple[int, int]:
    """(parameters, activation values per image) of the network gradflow.model.VGG builds.

    Activations: the tensors autograd saves for the backward pass during a training-mode
    forward (saved_tensors_hooks), each counted once (a tensor two operations save, a view of
    one), the parameters left out (counted as such), and only those with the batch as their
    first dimension: per-channel statistics (BN's 1-D mean and inverse std) do not grow with
    the batch."""
    net = _built(variant, model)
    weights = {id(p) for p in net.parameters()}
    kept = {}  # id -> tensor, holding each one so that no id is reused while counting

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in weights and base.dim() >= 2 and base.shape[0] == BATCH:
            kept[id(base)] = base
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.empty(BATCH, *IMAGE, device="meta"))
    return parameter_count(variant, model), sum(t.numel() for t in kept.values()) // BATCH


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


def dataset_bytes(data) -> tuple[int, str]:
    """(bytes, its largest part's key) of the dataset as uint8 images: what the fetch stage
    holds while it writes data/dataset.pt and what a training run holds in memory."""
    if data.source == "cifar100":
        return (CIFAR100_TRAIN_SIZE + CIFAR100_TEST_SIZE) * IMAGE_BYTES, "data.source"
    key = max(("data.synthetic_train_size", "data.synthetic_test_size"),
              key=lambda k: getattr(data, k.split(".")[1]))
    return (data.synthetic_train_size + data.synthetic_test_size) * IMAGE_BYTES, key


def require_fits(params) -> None:
    """ParamsError naming the key, for the dataset the fetch stage makes, or the first run
    (variant or sweep point) that cannot fit."""
    data, key = dataset_bytes(params.data)
    need = 2 * data  # the images, and the file's bytes as torch.save writes them
    have = memory_of("cpu", need)  # the fetch stage runs on the CPU
    if have is not None and need > have[0]:
        raise ParamsError(f"{key}: the fetch stage would need at least {need / GIB:,.1f} GiB for the "
                          f"dataset's images ({data / GIB:,.1f} GiB as uint8, and as much again to write "
                          f"them), more than the {have[0] / GIB:,.0f} GiB of {have[1]}; lower {key}")
    for name, run in params.runs().items():
        _require_run_fits(params, name, run, data)


def _require_run_fits(params, name: str, run, data: int) -> None:
    d, v, t = params.data, run.variant, run.train
    n_train = (CIFAR100_TRAIN_SIZE if d.source == "cifar100" else d.synthetic_train_size) - d.val_size
    n_train = min(n_train, d.train_limit or n_train)
    n_eval = max(d.val_size, CIFAR100_TEST_SIZE if d.source == "cifar100" else d.synthetic_test_size)
    n_eval = min(n_eval, d.eval_limit or n_eval)
    batches = {  # key -> images whose activations are kept at once
        (f"variants.{name}.batch_size" if name in params.variants and v.batch_size is not None
         else "train.batch_size"): min(t.batch_size, n_train),  # a batch is at most the data
        "train.eval_batch_size": -(-min(t.eval_batch_size, n_eval) // 3),  # no backward: a third kept
    }
    if name in params.variants:  # the gradients stage probes variants, not sweep points
        batches["gradients.probe_size"] = min(params.gradients.probe_size, d.val_size, n_eval)
    batch_key = max(batches, key=batches.get)
    n_params = parameter_count(v, run.model)
    weights = 4 * n_params * BYTES
    # The bound first: exact counting only where the bound would not fit.
    for count in (activation_bound, lambda *a: model_sizes(*a)[1]):
        activations = batches[batch_key] * count(v, run.model) * BYTES
        need = weights + activations + data
        have = memory_of(t.device, need)
        if have is None or need <= have[0]:
            return
    key = "model.filters" if weights > activations else batch_key
    what = name if name in params.variants else f"sweep point {name.removeprefix('sweep-')}"
    raise ParamsError(
        f"{key}: {what} would need at least {need / GIB:,.0f} GiB (model.filters {run.model.filters}: "
        f"{n_params:,} parameters, {weights / GIB:,.1f} GiB with gradients and Adam's state; "
        f"activations of {batches[batch_key]} images ({batch_key}): {activations / GIB:,.1f} GiB; the "
        f"dataset {data / GIB:,.1f} GiB), more than the {have[0] / GIB:,.0f} GiB of {have[1]}; lower {key}")
