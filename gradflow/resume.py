"""What a run keeps so that, killed, it continues where it was: the resume checkpoint
(models/.resume/<variant>.pt, rewritten after every epoch, not a DVC output) and the weight
snapshots the gradients stage probes (models/<variant>/epoch_XXX.pt)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from gradflow import paths
from gradflow.capture import CaptureRow
from gradflow.errors import DataError
from gradflow.files import require_keys, torch_load, torch_save, writing
from gradflow.files import set_aside as set_aside_file


@dataclass
class ResumeState:
    """What resuming after `epoch` needs; its fields are the checkpoint's keys, and everything
    in it loads with weights_only=True."""
    epoch: int
    model: dict
    optimizer: dict
    scheduler: dict
    rng: torch.Tensor
    train_seconds: float
    history: list
    points: list
    best_epoch: int
    best_state: dict | None
    capture_rows: list[CaptureRow]
    snapshots: dict  # epoch -> weights: the snapshots so far, to rewrite them from


def cpu_weights(model: torch.nn.Module) -> dict:
    """A copy of the model's weights on the CPU (a snapshot, the best-validation weights)."""
    return {k: x.detach().to("cpu", copy=True) for k, x in model.state_dict().items()}


def save_snapshot(workdir: Path, epoch: int, weights: dict) -> None:
    """models/V/epoch_XXX.pt: the weights the gradients stage probes at that epoch."""
    torch_save(workdir / paths.snapshot_name(epoch), {"epoch": epoch, "model": weights})


@dataclass
class Checkpoint:
    """The resume checkpoint: a ResumeState and the fingerprint of the run it belongs to."""
    path: Path | None
    fingerprint: dict  # config + data identity; a checkpoint for other params is not resumed

    KEYS = ("fingerprint", *(f.name for f in fields(ResumeState)))

    def load(self, set_aside: bool = True) -> ResumeState | None:
        """The saved state, or None: no checkpoint, one for other params or data (ignored), or
        one that cannot be read (truncated, damaged, empty, foreign). That one is renamed to
        `<file>.corrupt` (by rank 0: `set_aside`) so the next run does not trip on it."""
        if self.path is None or not self.path.is_file():
            return None
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            state = require_keys(self.path, torch_load(self.path, "", map_location="cpu"), self.KEYS, "")
        except DataError as e:
            if set_aside:  # to the first free name: an earlier .corrupt one is kept too
                with writing(self.path):
                    aside = set_aside_file(self.path)
            print(f"train: {str(e).rstrip('; ')}; moved it to {aside} and starting over", file=sys.stderr)
            return None
        if state.get("fingerprint") != self.fingerprint:
            print(f"train: {self.path} was made with other params or data; not resuming it",
                  file=sys.stderr)
            return None
        state["capture_rows"] = [CaptureRow(*r) for r in state["capture_rows"]]
        return ResumeState(**{f.name: state[f.name] for f in fields(ResumeState)})

    def save(self, state: ResumeState) -> None:
        if self.path is not None:  # a failed write is a DataError already (gradflow.files)
            saved = {f.name: getattr(state, f.name) for f in fields(ResumeState)}
            # Plain tuples: weights_only loading admits no class of ours, a NamedTuple's included.
            saved["capture_rows"] = [tuple(r) for r in state.capture_rows]
            torch_save(self.path, {"fingerprint": self.fingerprint, **saved})
