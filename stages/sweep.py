"""sweep stage: one (depth, fix) point of the depth sweep -> metrics/sweep/<depth>-<fix>.json.

    python -m stages.sweep 38 bn_rc        (dvc.yaml runs it as sweep@38-bn_rc)

Trains the plain design at that depth, with the fix's switches on, for `sweep.epochs` epochs
with the shared training settings, and records where it ends and how its gradients flow.
"""

from __future__ import annotations

import argparse
import sys

from gradflow import params as P
from gradflow import paths
from gradflow.cli import cli, stage_run
from gradflow.data import load_dataset
from gradflow.files import write_json
from gradflow.probe import predicted_log10_ratio
from gradflow.training import fit


@cli
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("depth", type=int)
    parser.add_argument("fix", help=f"one of {', '.join(P.sweep_names())}, or several joined by _ (bn_rc)")
    parser.add_argument("--config", help="the point's resolved config, written by the check stage "
                        "(dvc.yaml passes data/config/sweep-<depth>-<fix>.json); default: params.yaml")
    args = parser.parse_args(argv)
    point = f"{args.depth}-{args.fix}"
    run = stage_run("sweep", args.config, point, what="sweep point ",
                    resolve=lambda params: params.sweep_run(args.depth, args.fix),
                    files=[paths.sweep_metrics(args.depth, args.fix)])
    dataset = load_dataset(run.cfg.data)
    result = fit(run.cfg, dataset, progress="sweep ")
    run.before_writing()
    metrics = {k: v for k, v in result.metrics().items() if not k.startswith("test_")}  # no test pass
    metrics["log10_grad_ratio_predicted"] = predicted_log10_ratio(run.cfg, dataset)
    summary = result.summary(run.cfg, dataset.source)  # what the sweep figure's title says it ran on
    details = {key: summary[key] for key in ("data_source", "epochs", "device")}
    write_json(paths.sweep_metrics(args.depth, args.fix), {"depth": args.depth, "fix": args.fix, **metrics, **details})
    print(f"sweep: {point}: {metrics['verdict']}, final train loss {metrics['final_train_loss']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
