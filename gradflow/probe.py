"""The gradients stage's measurement: saved weights -> per-layer gradients and activations on a
fixed probe batch, forward and backward in training mode with the training loss.

Rows come in the capture's long format (gradflow.capture.COLUMNS, `depth` included) plus each
layer's output mean, std and fraction of non-positive values (its pre-activations: the
activation comes after), its signal share, and at epoch 0 the mean-field prediction: a
`ProbeRow`, the columns of plots/grad_flow/V.csv (gradflow.tables.PROBE_COLUMNS).
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from collections import namedtuple
from typing import NamedTuple

import torch

from gradflow import paths, theory
from gradflow.capture import grad_stats
from gradflow.data import Augment, Dataset
from gradflow.errors import DataError
from gradflow.files import torch_load
from gradflow.loss import aux_weight_at, loss_fn
from gradflow.model import LOGITS, VGG, depth_positions, probed_parameters
from gradflow.params import RunConfig
from gradflow.tables import ACTIVATION_COLUMNS, PROBE_COLUMNS  # noqa: F401  (the columns: gradflow/tables.py)


class LayerProbe(NamedTuple):
    """What `probe` measures of one probed layer."""
    layer: str
    grads: list[float]  # mean |g|, ||g||, max |g|, ||w||
    acts: list[float]  # its output's mean, std, fraction <= 0, signal share


# A row of plots/grad_flow/V.csv, its fields named by the table's columns (gradflow/tables.py).
ProbeRow = namedtuple("ProbeRow", PROBE_COLUMNS)


def signal_share(out: torch.Tensor) -> float:
    """The share of a layer's output that depends on the image. Per channel c (a logit is a
    channel of one position): sum over positions p of Var_n a[n, c, p], the variance across the
    probe images, over sum over p of E_n a[n, c, p]^2, the total second moment; then the mean
    over channels (a channel that is 0 for every image counts as 0). 0 when every image gives
    the same output, 1 when the output averages to 0 over the images at every position. In
    float64: plain VGG_38's shares reach 1e-30, far below float32's resolution."""
    a = out.detach().double()
    a = a.flatten(2) if a.dim() > 2 else a.unsqueeze(-1)  # (images, channels, positions)
    between = a.var(dim=0, unbiased=False).sum(-1)
    total = a.pow(2).mean(dim=0).sum(-1)
    share = torch.where(total > 0, between / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return float(share.mean())


def _outputs(model: VGG, owners: set[str]):
    """Hooks that keep each parameter-owning module's output (by its name, dots as _)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(
        lambda m, inp, out, key=key.replace(".", "_"): outputs.__setitem__(key, out.detach()))
        for key, module in model.named_modules() if key in owners]
    return outputs, hooks


# Images per float64 convolution call. PyTorch's float64 convolution on the CPU unfolds its whole
# input at once: 200 probe images of 32 channels at 32x32 take 470 MB, far past the caches.
# In chunks of 10 the same arithmetic (each image's own unfold and matrix product: the results
# are bit-identical) ran 2.2x faster at 32x32 and 3.4x at 16x16 on a 2-core AMD EPYC.
CONV_CHUNK = 10


def _chunked_conv(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([conv._conv_forward(part, conv.weight, conv.bias) for part in x.split(CONV_CHUNK)])


def signal_shares(model: VGG, x: torch.Tensor, owners: set[str]) -> dict[str, float]:
    """signal_share of every parameter-owning layer's output, from a float64 copy of the model
    run forward on the probe batch in training mode (as the probe runs)."""
    model64 = copy.deepcopy(model).double()
    for module in model64.modules():
        if isinstance(module, torch.nn.Conv2d):  # batch norm still sees the whole batch
            module.forward = functools.partial(_chunked_conv, module)
    outputs, hooks = _outputs(model64, owners)
    model64.train()
    try:
        with torch.no_grad():
            model64(x.double())
    finally:
        for h in hooks:
            h.remove()
    return {name: signal_share(out) for name, out in outputs.items()}


def probe(model: VGG, x: torch.Tensor, y: torch.Tensor, include_bias: bool, aux_weight: float) -> list[LayerProbe]:
    """Per probed layer, in the model's order: its gradient and output statistics."""
    probed = probed_parameters(model, include_bias)
    owners = {name.rsplit(".", 1)[0] for name, p in model.named_parameters()}
    shares = signal_shares(model, x, owners)
    outputs, hooks = _outputs(model, owners)
    model.train()  # batch statistics in BN, auxiliary heads on: what training sees
    model.zero_grad(set_to_none=True)
    try:
        logits, aux = model(x)
        loss, _ = loss_fn(logits, aux, y, aux_weight, len(y))
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    stats = grad_stats([p for _, p in probed]).cpu().tolist()
    rows = []
    for (name, _), s in zip(probed, stats):
        key = name.removesuffix("_bias")
        out = outputs.get(key)
        acts = ([out.float().mean().item(), out.float().std().item(), (out <= 0).float().mean().item(),
                 shares[key]] if out is not None else [math.nan] * 4)
        rows.append(LayerProbe(name, s, acts))
    return rows


def logits_signal_share(rows: list[ProbeRow], epoch: int) -> float | None:
    """The logits' signal share at one probed epoch (the last layer's row), 6 significant digits."""
    share = [r.signal_share for r in rows if r.epoch == epoch and r.layer.startswith(LOGITS)]
    if not share or not math.isfinite(share[0]):
        return None
    return float(f"{share[0]:.6g}")


def probe_run(cfg: RunConfig, dataset: Dataset, probe_size: int, device: torch.device) -> tuple[list[ProbeRow], int]:
    """Every weight snapshot of a run (gradients.epochs) probed on the first `probe_size`
    validation images, un-augmented; at epoch 0 the mean-field prediction (gradflow.theory)
    rides along in `predicted_mean_abs_grad` where the variant has one. (rows, probe images)."""
    n_probe = min(probe_size, len(dataset.val))
    t = cfg.train
    augment = Augment(t.mean, t.std, 0, False, device)
    x = augment.normalize(dataset.val.images[:n_probe].to(device))
    y = dataset.val.labels[:n_probe].to(device)
    steps_per_epoch = -(-len(dataset.train) // t.batch_size)
    predicted = theory.predict(cfg.variant, cfg.model, input_kernel=theory.input_kernel(x.cpu()),
                               batch_size=n_probe, include_bias=cfg.gradients.include_bias)
    predicted = {layer.name: (layer.mean_abs_grad, layer.signal_share)
                 for layer in (predicted.layers if predicted is not None else [])}

    torch.manual_seed(t.seed)
    model = VGG(cfg.variant, cfg.model).to(device)
    rows = []
    for epoch in cfg.snapshot_epochs():
        path = paths.snapshot(cfg.name, epoch)
        if not path.is_file():  # e.g. the run diverged before this epoch
            print(f"gradients: {cfg.name}: no snapshot {path}; skipped", file=sys.stderr)
            continue
        try:
            model.load_state_dict(torch_load(path, f"rerun its training (dvc repro -f train@{cfg.name})",
                                             map_location=device)["model"])
        except DataError:
            raise  # the file itself is unreadable: torch_load's line names it
        except (RuntimeError, KeyError) as e:  # torch's message lists every key, ~30 lines: not here
            why = "no 'model' in it" if isinstance(e, KeyError) else "its weights do not fit this variant's layers"
            raise DataError(f"{path}: not a snapshot of variant {cfg.name} ({why}: another variant's, "
                            f"or of other model settings); rerun its training (dvc repro -f train@{cfg.name})") from None
        aux_weight = aux_weight_at(cfg.train.aux_weight, epoch + 1, t.epochs)
        probed = probe(model, x, y, cfg.gradients.include_bias, aux_weight)
        depths = depth_positions([p.layer for p in probed])
        for i, (name, g, a) in enumerate(probed):
            # update_ratio belongs to an optimizer step; a probe takes none.
            expected = predicted.get(name, (math.nan, math.nan)) if epoch == 0 else (math.nan, math.nan)
            rows.append(ProbeRow(cfg.name, epoch, epoch * steps_per_epoch, i, name, *g, math.nan, depths[i], *a,
                                 *expected))
    return rows, n_probe


def predicted_log10_ratio(cfg: RunConfig, dataset: Dataset, n_images: int = 100) -> float | None:
    """log10 of the mean-field prediction of the first/last conv gradient ratio at
    initialisation, from the input statistics of the first `n_images` validation images (None
    where the variant has no mean-field form)."""
    t = cfg.train
    x = Augment(t.mean, t.std, 0, False, torch.device("cpu")).normalize(dataset.val.images[:n_images])
    predicted = theory.predict(cfg.variant, cfg.model, input_kernel=theory.input_kernel(x),
                               batch_size=len(x))
    return None if predicted is None else round(math.log10(predicted.first_last_ratio()), 2)
