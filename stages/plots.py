"""plots stage: every variant's tables -> the report's figures and plots/results.md.

    python -m stages.plots                 (dvc.yaml runs it as plots)
"""

from __future__ import annotations

import argparse
import sys

from gradflow import figures as Fg
from gradflow import params as P
from gradflow import paths
from gradflow import reference
from gradflow import tables as T
from gradflow.cli import cli
from gradflow.files import atomic_write, read_json, require_writable, write_text
from gradflow.report import results_markdown
from gradflow.vega import write_page


def check_inputs(params: P.Params) -> None:
    """Every table and metrics file the figures will read, checked first (gradflow.tables): a
    damaged one is one line naming it and the command that remakes it, not a figure of it."""
    for name in params.variants:
        train = f"rerun its training (dvc repro -f train@{name})"
        if not paths.metrics(name).is_file():
            continue  # not trained yet: load_runs notes it and skips the variant
        T.check_metrics(paths.metrics(name), read_json(paths.metrics(name), train), T.METRICS_KEYS, train)
        T.check_table(paths.history(name), T.HISTORY_COLUMNS, name, train)
        T.check_table(paths.grad_capture(name), T.CAPTURE_COLUMNS, name, train)
        probe = f"rerun its gradients stage (dvc repro -f gradients@{name})"
        T.check_table(paths.grad_flow(name), T.PROBE_COLUMNS, name, probe)
        if paths.signal_metrics(name).is_file():
            T.check_metrics(paths.signal_metrics(name), read_json(paths.signal_metrics(name), probe),
                            T.SIGNAL_KEYS, probe)
    for depth in params.sweep.depths:
        for fix in params.sweep.fixes:
            path, redo = paths.sweep_metrics(depth, fix), f"rerun that point (dvc repro -f sweep@{depth}-{fix})"
            if path.is_file():
                T.check_metrics(path, read_json(path, redo), T.SWEEP_KEYS, redo)


@cli
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.plots", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    params = P.load()
    check_inputs(params)
    require_writable([Fg.OUT])
    names = list(params.variants)
    runs = Fg.load_runs(names)
    colours = Fg.variant_colours(names)  # by params order, so a colour means the same variant everywhere
    published = reference.load()  # the published CIFAR-100 runs, by variant (reference/)
    sweep, sweep_metrics = Fg.load_sweep(params.sweep)

    written = [Fg.training_curves(runs, published, colours), Fg.gradient_flow(runs, colours),
               Fg.gradient_flow_detail(runs), Fg.signal_flow(runs, colours), Fg.gradient_heatmap(runs),
               Fg.activations(runs, colours), Fg.depth_sweep(sweep, sweep_metrics)]
    atomic_write(Fg.OUT / "sweep.csv", lambda tmp: sweep.to_csv(tmp, index=False))
    write_text(Fg.OUT / paths.RESULTS.name, results_markdown(runs, sweep, published, reference.load_test(),
                                                       params.variants))
    written += [Fg.OUT / "sweep.csv", Fg.OUT / paths.RESULTS.name]
    if write_page():  # `dvc plots show` / `diff` draw offline (gradflow/vega.py); missing in a new clone
        written.append(paths.PLOTS_PAGE)
    print(f"plots: {len(runs)} of {len(names)} variants, {len(sweep)} sweep points -> "
          f"{', '.join(str(p) for p in written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
