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
from gradflow.cli import cli
from gradflow.data import load_dataset
from gradflow.files import require_writable, write_json
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
    stamp = P.checked_stamp()  # params.yaml as the check saw it: compared before writing outputs
    cfg = (P.load_resolved(args.config) if args.config
           else P.load().sweep_run(args.depth, args.fix))
    if cfg.name != f"{args.depth}-{args.fix}":
        raise P.ParamsError(f"{args.config}: the config of sweep point {cfg.name!r}, "
                            f"not of {args.depth}-{args.fix}")
    require_writable([paths.sweep_metrics(args.depth, args.fix).parent])  # before training, not after
    dataset = load_dataset(cfg.data)
    result = fit(cfg, dataset, progress="sweep ")
    if args.config:  # params.yaml must still say what this run trained with (a concurrent dvc exp run)
        P.require_unchanged(args.config, cfg, f"sweep@{cfg.name}", stamp)
    metrics = {k: v for k, v in result.metrics().items() if not k.startswith("test_")}  # no test pass
    metrics["log10_grad_ratio_predicted"] = predicted_log10_ratio(cfg, dataset)
    run = result.summary(cfg, dataset.source)  # what the sweep figure's title says it ran on
    details = {key: run[key] for key in ("data_source", "epochs", "device")}
    write_json(paths.sweep_metrics(args.depth, args.fix), {"depth": args.depth, "fix": args.fix, **metrics, **details})
    print(f"sweep: {cfg.name}: {metrics['verdict']}, final train loss {metrics['final_train_loss']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
