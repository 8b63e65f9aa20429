"""The gradients stage's measurement: saved weights -> per-layer gradients and activations on a
fixed probe batch, forward and backward in training mode with the training loss.

Rows come in the capture's long format (gradflow.capture.COLUMNS, `depth` included) plus each
layer's output mean, std and fraction of non-positive values (its pre-activations: the
activation comes after).
"""

from __future__ import annotations

import math

import torch

from gradflow.capture import COLUMNS, grad_stats
from gradflow.model import VGG, probed_parameters
from gradflow.loss import loss_fn

ACTIVATION_COLUMNS = ("act_mean", "act_std", "act_nonpos_frac")
PROBE_COLUMNS = COLUMNS + ACTIVATION_COLUMNS


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
