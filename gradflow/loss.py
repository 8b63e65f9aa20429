"""The training objective: cross-entropy of the main head plus, with deep supervision, the
auxiliary heads' losses at a weight that decays over training."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def aux_weight_at(weight: float, epoch: int, epochs: int) -> float:
    """Deep supervision's companion-loss weight in epoch `epoch` (1-based): `aux_weight` in
    the first epoch, decaying linearly towards 0 over the run."""
    return weight * (1 - (epoch - 1) / epochs)


def loss_fn(logits: torch.Tensor, aux: list[torch.Tensor], labels: torch.Tensor,
            aux_weight: float, denominator: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, main-head loss summed over the batch). Losses are sums divided by the
    global batch size, so DDP's gradient averaging over equal shards gives the global mean."""
    main = F.cross_entropy(logits.float(), labels, reduction="sum")
    total = main
    for a in aux:  # deep supervision: companion losses, their weight decaying over training
        total = total + aux_weight / len(aux) * F.cross_entropy(a.float(), labels, reduction="sum")
    return total / denominator, main.detach()
