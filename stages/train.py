"""train stage: one variant -> its model, metrics, learning curves and gradient capture.

    python -m stages.train VGG_38          (dvc.yaml runs it as train@VGG_38)
    torchrun --standalone --nproc_per_node 2 -m stages.train VGG_38

With `train.distributed: true` the plain command relaunches itself under torchrun, one process
per GPU (PET_NPROC_PER_NODE=N picks N), so `dvc repro` / `dvc exp run` train with DDP too.

Outputs, for variant V:
  models/V.pt                    best-validation weights + the resolved config
  models/V/epoch_XXX.pt          weight snapshots at gradients.epochs (the gradients stage)
  models/.resume/V.pt            resume state, rewritten every epoch (not a DVC output)
  metrics/V.json                 the headline: verdict, test / best val / final train scores,
                                 log10 first/last-conv gradient ratio at init and at the end
  plots/history/V.csv            a row per point: every train.eval_every images and at each
                                 epoch's end (rewritten after every point)
  dvclive/V/metrics.json         DVCLive: the latest point's numbers, from the start of the run
  dvclive/V/timings.json         seconds per epoch, images per second (not an output)
  plots/grad_capture/V.csv       sampled per-layer gradient statistics, long format
"""

from __future__ import annotations

import os
import sys

from gradflow import params as P
from gradflow import paths
from gradflow.capture import COLUMNS
from gradflow.cli import cli, stage_run, variant_parser
from gradflow.data import load_dataset
from gradflow.errors import DataError
from gradflow.files import torch_save, write_csv, write_json
from gradflow.live import LiveLog
from gradflow.tables import HISTORY_COLUMNS
from gradflow.training import Result, fit


def write_history(name: str, points: list[dict]) -> None:
    write_csv(paths.history(name), HISTORY_COLUMNS, [[name] + [p[c] for c in HISTORY_COLUMNS[1:]] for p in points])


def write_outputs(cfg: P.RunConfig, result: Result, source: str) -> dict:
    """Every DVC output of the stage; all deterministic for a given config and seed."""
    metrics = result.metrics()
    torch_save(paths.model(cfg.name), {"model": result.best_state, "config": cfg.to_dict(),
                                       "run": result.summary(cfg, source)})
    write_history(cfg.name, result.points)
    write_csv(paths.grad_capture(cfg.name), COLUMNS, [(cfg.name, *r) for r in result.capture_rows])
    write_json(paths.metrics(cfg.name), metrics)  # last: its presence means the rest is complete
    return metrics


def relaunch_under_torchrun(variant: str, config: str | None) -> None:
    """Become `torchrun --standalone --nproc_per_node N -m stages.train <variant>` (never returns).
    N: torchrun's own PET_NPROC_PER_NODE if set, else `auto` (one per GPU; per CPU core without)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", os.environ.get("PET_NPROC_PER_NODE", "auto"), "-m", "stages.train", variant]
    cmd += ["--config", config] if config else []
    print(f"train: train.distributed is on: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def writes_outputs() -> bool:
    """Whether this process writes the outputs: under torchrun only rank 0 does, once it has
    left the process group (the collectives are over); without torchrun, the one process."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return True
    rank = dist.get_rank()
    dist.destroy_process_group()
    return rank == 0


@cli
def main(argv: list[str]) -> None:
    args = variant_parser("train", __doc__).parse_args(argv)
    name = args.variant
    outputs = [paths.model(name), paths.checkpoint(name), paths.metrics(name), paths.history(name),
               paths.grad_capture(name)]
    run = stage_run("train", args.config, name, resolve=lambda params: params.run(name),
                    files=[*outputs, paths.live_metrics(name), *sorted(paths.workdir(name).glob("*"))],
                    folders=[*dict.fromkeys(f.parent for f in outputs), paths.workdir(name), paths.LIVE])
    cfg = run.cfg
    if cfg.train.distributed and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(name, args.config)
    dataset = load_dataset(cfg.data)
    live = LiveLog(name, enabled=int(os.environ.get("RANK", 0)) == 0)

    def on_point(points: list[dict]) -> None:  # rank 0, after every point: what a run in progress shows
        # A run whose params.yaml changed under it (a second `dvc exp run`) stops here, before it
        # writes more under the other run's name; what it wrote so far is said in its one line.
        run.before_writing(f"it stopped before writing its point at {points[-1]['images_seen']:,} images: "
                           f"{paths.history(name)}, {paths.live_metrics(name)} and {paths.workdir(name)}/ "
                           f"hold its earlier points and snapshots, its other outputs are not written")
        write_history(name, points)             # `dvc plots show`
        live.point(points)                      # `dvc exp show`, `dvc metrics show`
        written[:] = [points[-1]["images_seen"]]

    written = []  # the images seen at the last point this run wrote
    try:
        result = fit(cfg, dataset, workdir=paths.workdir(name), checkpoint=paths.checkpoint(name),
                     on_point=on_point)
        if not writes_outputs():
            return
        run.before_writing()
        metrics = write_outputs(cfg, result, dataset.source)
        timings = result.timings()
        live.end(timings)
    except DataError as e:  # a full disk, say, after this run replaced the previous run's curves
        if not written:
            raise
        raise DataError(f"{e}; {paths.history(name)} and {paths.live_metrics(name)} hold this run's "
                        f"points up to {written[0]:,} images, not the previous run's") from None
    paths.checkpoint(name).unlink(missing_ok=True)  # the run is complete: nothing to resume
    print(f"train: {name}: {metrics['verdict']}, best val acc {metrics['best_val_acc']}, "
          f"test acc {metrics['test_acc']} loss {metrics['test_loss']}, "
          f"{timings['seconds_per_epoch']:.1f} s/epoch on {timings['device']} "
          f"(timings: {paths.live_timings(name)})", file=sys.stderr)


if __name__ == "__main__":
    main()
