"""sweep stage: one (depth, fix) point of the depth sweep -> metrics/sweep/<depth>-<fix>.json.

    python -m stages.sweep 38 bn_rc        (dvc.yaml runs it as sweep@38-bn_rc)

Trains the plain design at that depth, with the fix's switches on, for `sweep.epochs` epochs
with the shared training settings, and records where it ends and how its gradients flow.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from gradflow import params as P
from gradflow.cli import cli
from gradflow.data import load_dataset
from gradflow.files import write_json
from gradflow.training import fit


def output(depth: int, fix: str) -> Path:
    return Path("metrics/sweep") / f"{depth}-{fix}.json"


@cli
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.sweep")
    parser.add_argument("depth", type=int)
    parser.add_argument("fix")
    args = parser.parse_args(argv)
    params = P.load()
    if args.fix not in P.SWEEP_FIXES:
        raise P.ParamsError(f"sweep fix {args.fix!r}: unknown (known: {', '.join(P.SWEEP_FIXES)})")
    P.depth_error(args.depth, params.model.stages, "sweep depth")
    variant = P.Variant(depth=args.depth, **P.SWEEP_FIXES[args.fix])
    name = f"{args.depth}-{args.fix}"
    cfg = P.RunConfig(name, variant, params.model,
                      replace(params.train, epochs=params.sweep.epochs), params.gradients)
    dataset = load_dataset(params.data)
    result = fit(cfg, dataset, progress="sweep ")
    metrics = result.metrics(cfg, dataset.source)
    write_json(output(args.depth, args.fix), {"depth": args.depth, "fix": args.fix, **metrics})
    print(f"sweep: {name}: final train loss {metrics['final'].get('train_loss')}", file=sys.stderr)


if __name__ == "__main__":
    main()
