"""gradients stage: one variant's weight snapshots -> per-layer gradients and activations on a
fixed probe batch.

    python -m stages.gradients VGG_38       (dvc.yaml runs it as gradients@VGG_38)

For each snapshot epoch in `gradients.epochs` (0 = initialisation), it loads
models/V/epoch_XXX.pt, runs the first `gradients.probe_size` validation images (the same
images for every variant, un-augmented) forward and backward in training mode with the
training loss, and records per layer the gradient statistics of the training capture plus the
layer's output mean, std and fraction of non-positive values (its pre-activations: the
activation comes after). Writes plots/grad_flow/V.csv, rows in the capture's long format.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from gradflow import params as P
from gradflow import paths
from gradflow.cli import cli
from gradflow.data import Augment, load_dataset
from gradflow.errors import DataError
from gradflow.files import torch_load, write_csv
from gradflow.model import VGG, depth_positions
from gradflow.probe import PROBE_COLUMNS, probe
from gradflow.device import pick_device


@cli
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.gradients", description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    parser.add_argument("--config", help="the variant's resolved config, written by the check stage "
                        "(dvc.yaml passes data/config/<variant>.json); default: resolve params.yaml")
    parser.add_argument("--probe-size", type=int, help="probe images (dvc.yaml passes "
                        "gradients.probe_size); default: params.yaml's")
    args = parser.parse_args(argv)
    params = None if args.config and args.probe_size else P.load()
    cfg = P.load_resolved(args.config) if args.config else params.run(args.variant)
    if cfg.name != args.variant:
        raise P.ParamsError(f"{args.config}: the config of {cfg.name!r}, not of {args.variant!r}")
    probe_size = args.probe_size or params.gradients.probe_size
    if probe_size < 1:
        raise P.ParamsError(f"gradients.probe_size: must be >= 1, got {probe_size}")
    dataset = load_dataset(cfg.data)
    device = pick_device(cfg.train.device)
    n_probe = min(probe_size, len(dataset.val))
    t = cfg.train
    augment = Augment(t.mean, t.std, 0, False, device)
    x = augment.normalize(dataset.val.images[:n_probe].to(device))
    y = dataset.val.labels[:n_probe].to(device)
    steps_per_epoch = -(-len(dataset.train) // t.batch_size)

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
        except (RuntimeError, KeyError) as e:
            raise DataError(f"{path}: not a snapshot of variant {cfg.name} ({e})") from None
        aux_weight = cfg.variant.aux_weight * (1 - epoch / t.epochs)
        probed = probe(model, x, y, cfg.gradients.include_bias, aux_weight)
        depths = depth_positions([name for name, _, _ in probed])
        for i, (name, g, a) in enumerate(probed):
            # update_ratio belongs to an optimizer step; a probe takes none.
            rows.append((cfg.name, epoch, epoch * steps_per_epoch, i, name, *g, math.nan, depths[i], *a))
    write_csv(paths.grad_flow(cfg.name), PROBE_COLUMNS, rows)
    print(f"gradients: {cfg.name}: {len(rows)} rows on {n_probe} probe images -> {paths.grad_flow(cfg.name)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
