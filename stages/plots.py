"""plots stage: every variant's tables -> the report's figures and plots/results.md.

    python -m stages.plots                 (dvc.yaml runs it as plots)
"""

from __future__ import annotations

import argparse
import sys

from gradflow import figures as Fg
from gradflow import params as P
from gradflow.cli import cli
from gradflow.files import atomic_write, write_text
from gradflow.report import results_markdown


@cli
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.plots", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    params = P.load()
    names = list(params.variants)
    runs = Fg.load_runs(names)
    colours = Fg.variant_colours(names)  # by params order, so a colour means the same variant everywhere
    reference = Fg.load_reference()
    sweep, sweep_metrics = Fg.load_sweep(params.sweep)

    written = [Fg.training_curves(runs, reference, colours), Fg.gradient_flow(runs, colours),
               Fg.gradient_heatmap(runs), Fg.activations(runs, colours), Fg.depth_sweep(sweep, sweep_metrics)]
    atomic_write(Fg.OUT / "sweep.csv", lambda tmp: sweep.to_csv(tmp, index=False))
    write_text(Fg.OUT / "results.md", results_markdown(runs, sweep, reference, Fg.load_reference_test(),
                                                       params.variants))
    written += [Fg.OUT / "sweep.csv", Fg.OUT / "results.md"]
    print(f"plots: {len(runs)} of {len(names)} variants, {len(sweep)} sweep points -> "
          f"{', '.join(str(p) for p in written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
