"""Per-layer gradient statistics, computed with fused multi-tensor ops.

The same statistics serve the training-time capture (sampled optimizer steps) and the
gradients stage (a fixed probe batch on saved snapshots), so their rows line up:

  mean_abs_grad  mean |g|           grad_norm  ||g||_2          max_abs_grad  max |g|
  weight_norm    ||w||_2            update_ratio  ||w_after - w_before|| / ||w_before||

and each row's `depth`: the layer's position for comparing variants (gradflow.model.depth_positions:
the k-th conv/linear layer at k, BN/transition/aux layers at +0.5), appended last.
"""

from __future__ import annotations

import math
from collections import namedtuple

import torch

from gradflow.model import depth_positions, is_conv
from gradflow.tables import CAPTURE_COLUMNS as COLUMNS  # noqa: F401  (the columns: gradflow/tables.py)
from gradflow.tables import STATS


# One layer at one sampled step: a row of plots/grad_capture/V.csv without the variant (the
# train stage writes `(variant, *row)`), its fields named by the table's columns (gradflow/tables.py).
CaptureRow = namedtuple("CaptureRow", COLUMNS[1:])


def grad_stats(params: list[torch.Tensor], numel: torch.Tensor | None = None) -> torch.Tensor:
    """(layers, 4): mean |g|, ||g||, max |g|, ||w|| for each tensor, on the tensors' device.
    A parameter with no gradient counts as a zero gradient. Pass `numel` (the tensors' sizes,
    already on the device) in a loop: building it from a list is a host-to-device copy."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if numel is None:
        numel = torch.tensor([p.numel() for p in params], device=params[0].device, dtype=torch.float32)
    l1 = torch.stack(torch._foreach_norm(grads, 1)).float()
    l2 = torch.stack(torch._foreach_norm(grads, 2)).float()
    linf = torch.stack(torch._foreach_norm(grads, math.inf)).float()
    w = torch.stack(torch._foreach_norm([p.detach() for p in params], 2)).float()
    return torch.stack([l1 / numel, l2, linf, w], dim=1)


class GradientCapture:
    """Samples the statistics every `every` optimizer steps into a buffer that stays on the
    training device; `end_epoch` copies one epoch's samples to the host in a single transfer."""

    def __init__(self, names: list[str], params: list[torch.Tensor], every: int, steps_per_epoch: int):
        self.names, self.params, self.every = names, params, every
        self.depths = depth_positions(names)
        slots = max(1, -(-steps_per_epoch // every))
        self.buffer = torch.full((slots, len(params), len(STATS)), math.nan, device=params[0].device)
        self.numel = torch.tensor([p.numel() for p in params], device=params[0].device, dtype=torch.float32)
        self.steps: list[int] = []
        self._before: list[torch.Tensor] | None = None
        self.rows: list[CaptureRow] = []  # on the host

    def wants(self, step_in_epoch: int) -> bool:
        return step_in_epoch % self.every == 0

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        """After backward (and DDP's all-reduce), before optimizer.step()."""
        slot = len(self.steps)
        self.buffer[slot, :, :4] = grad_stats(self.params, self.numel)
        self._before = [p.detach().clone() for p in self.params]
        self.steps.append(step)

    @torch.no_grad()
    def after_step(self) -> None:
        delta = torch._foreach_sub([p.detach() for p in self.params], self._before)
        slot = len(self.steps) - 1
        moved = torch.stack(torch._foreach_norm(delta, 2)).float()
        self.buffer[slot, :, 4] = moved / self.buffer[slot, :, 3].clamp_min(1e-30)
        self._before = None

    def end_epoch(self, epoch: int) -> None:
        host = self.buffer[: len(self.steps)].cpu().tolist()  # the epoch's only transfer
        for step, layers in zip(self.steps, host):
            for i, (name, stats) in enumerate(zip(self.names, layers)):
                self.rows.append(CaptureRow(epoch, step, i, name, *stats, self.depths[i]))
        self.steps = []


def first_last_conv_ratio(rows: list[CaptureRow], names: list[str], epoch_step: tuple[int, int]) -> float | None:
    """mean |grad| of the first conv over that of the last conv, for one sampled step."""
    return conv_ratio({r.layer: r.mean_abs_grad for r in rows if (r.epoch, r.step) == epoch_step}, names)


def conv_ratio(mean_abs_grad: dict[str, float], names: list[str]) -> float | None:
    """mean |grad| of the first conv over that of the last conv, first and last in `names`'
    order (the model's), from each layer's mean |grad|; None where either is missing."""
    convs = [n for n in names if is_conv(n)]
    if len(convs) < 2:
        return None
    first, last = mean_abs_grad.get(convs[0]), mean_abs_grad.get(convs[-1])
    if first is None or not last:
        return None
    ratio = first / last
    return ratio if math.isfinite(ratio) else None  # NaN after a divergence; JSON has no NaN
