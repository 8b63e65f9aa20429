"""The gradients stage's measurement: saved weights -> per-layer gradients and activations on a
fixed probe batch, forward and backward in training mode with the training loss.

Rows come in the capture's long format (gradflow.capture.COLUMNS, `depth` included) plus each
layer's output mean, std and fraction of non-positive values (its pre-activations: the
activation comes after).
"""

from __future__ import annotations

import math
import sys

import torch

from gradflow import paths, theory
from gradflow.capture import grad_stats
from gradflow.data import Augment, Dataset
from gradflow.errors import DataError
from gradflow.files import torch_load
from gradflow.loss import aux_weight_at, loss_fn
from gradflow.model import VGG, depth_positions, probed_parameters
from gradflow.params import RunConfig
from gradflow.tables import ACTIVATION_COLUMNS, PROBE_COLUMNS  # noqa: F401  (the columns: gradflow/tables.py)


def probe(model: VGG, x: torch.Tensor, y: torch.Tensor, include_bias: bool, aux_weight: float):
    """Per probed layer: (name, [mean|g|, ||g||, max|g|, ||w||], [act mean, std, nonpos frac])."""
    probed = probed_parameters(model, include_bias)
    owners = {name.rsplit(".", 1)[0] for name, p in model.named_parameters()}
    outputs: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(
        lambda m, inp, out, key=key.replace(".", "_"): outputs.__setitem__(key, out.detach().float()))
        for key, module in model.named_modules() if key in owners]
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
        out = outputs.get(name.removesuffix("_bias"))
        acts = ([out.mean().item(), out.std().item(), (out <= 0).float().mean().item()]
                if out is not None else [math.nan] * 3)
        rows.append((name, s, acts))
    return rows


def probe_run(cfg: RunConfig, dataset: Dataset, probe_size: int, device: torch.device) -> tuple[list, int]:
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
    predicted = predicted.mean_abs_grad() if predicted is not None else {}

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
        aux_weight = aux_weight_at(cfg.variant.aux_weight, epoch + 1, t.epochs)
        probed = probe(model, x, y, cfg.gradients.include_bias, aux_weight)
        depths = depth_positions([name for name, _, _ in probed])
        for i, (name, g, a) in enumerate(probed):
            # update_ratio belongs to an optimizer step; a probe takes none.
            theory_value = predicted.get(name, math.nan) if epoch == 0 else math.nan
            rows.append((cfg.name, epoch, epoch * steps_per_epoch, i, name, *g, math.nan, depths[i], *a,
                         theory_value))
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
