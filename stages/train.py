"""train stage: one variant -> its model, metrics, per-epoch history and gradient capture.

    python -m stages.train VGG_38          (dvc.yaml runs it as train@VGG_38)
    torchrun --standalone --nproc_per_node 2 -m stages.train VGG_38

With `train.distributed: true` the plain command relaunches itself under torchrun, one process
per GPU (PET_NPROC_PER_NODE=N picks N), so `dvc repro` / `dvc exp run` train with DDP too.

Outputs, for variant V:
  models/V.pt                    best-validation weights + the resolved config
  models/V/epoch_XXX.pt          weight snapshots at gradients.epochs (the gradients stage)
  models/V/checkpoint.pt         resume state, rewritten every epoch (persisted by DVC)
  metrics/V.json                 final / best / test scores, speed, gradient ratios
  plots/history/V.csv            one row per epoch
  plots/grad_capture/V.csv       sampled per-layer gradient statistics, long format
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gradflow import params as P
from gradflow.cli import cli
from gradflow.capture import COLUMNS
from gradflow.data import load_dataset
from gradflow.files import torch_save, write_csv, write_json
from gradflow.training import Result, fit

HISTORY_COLUMNS = ("variant", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                   "epoch_seconds")


def outputs(variant: str) -> dict[str, Path]:
    return {
        "model": Path("models") / f"{variant}.pt",
        "workdir": Path("models") / variant,
        "metrics": Path("metrics") / f"{variant}.json",
        "history": Path("plots/history") / f"{variant}.csv",
        "capture": Path("plots/grad_capture") / f"{variant}.csv",
    }


def write_outputs(cfg: P.RunConfig, result: Result, source: str) -> dict:
    out = outputs(cfg.name)
    metrics = result.metrics(cfg, source)
    torch_save(out["model"], {"model": result.best_state, "config": cfg.to_dict(),
                              "best_epoch": result.best_epoch, "status": result.status})
    write_csv(out["history"], HISTORY_COLUMNS,
              [[cfg.name] + [h[c] for c in HISTORY_COLUMNS[1:]] for h in result.history])
    write_csv(out["capture"], COLUMNS, [(cfg.name, *r) for r in result.capture_rows])
    write_json(out["metrics"], metrics)  # last: its presence means the rest is complete
    return metrics


def relaunch_under_torchrun(variant: str) -> None:
    """Become `torchrun --standalone --nproc_per_node N -m stages.train <variant>` (never returns).
    N: torchrun's own PET_NPROC_PER_NODE if set, else `auto` (one per GPU; per CPU core without)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", os.environ.get("PET_NPROC_PER_NODE", "auto"), "-m", "stages.train", variant]
    print(f"train: train.distributed is on: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


@cli
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    args = parser.parse_args(argv)
    params = P.load()
    cfg = params.run(args.variant)
    if cfg.train.distributed and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(cfg.name)
    dataset = load_dataset(params.data)
    workdir = outputs(cfg.name)["workdir"]
    workdir.mkdir(parents=True, exist_ok=True)
    result = fit(cfg, dataset, workdir=workdir)
    import torch.distributed as dist
    if dist.is_initialized():  # under torchrun: the collectives are over; only rank 0 writes
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    metrics = write_outputs(cfg, result, dataset.source)
    (workdir / "checkpoint.pt").unlink(missing_ok=True)  # the run is complete: nothing to resume
    test = metrics["test"]
    print(f"train: {cfg.name}: {metrics['status']}, best epoch {metrics['best_epoch']}, "
          f"test acc {test.get('acc', float('nan')):.4f} loss {test.get('loss', float('nan')):.4f}, "
          f"{metrics['seconds_per_epoch']:.1f} s/epoch on {metrics['device']}", file=sys.stderr)


if __name__ == "__main__":
    main()
