"""gradients stage: one variant's weight snapshots -> per-layer gradients and activations on a
fixed probe batch.

    python -m stages.gradients VGG_38       (dvc.yaml runs it as gradients@VGG_38)

For each snapshot epoch in `gradients.epochs` (0 = initialisation), it loads
models/V/epoch_XXX.pt, runs the first `gradients.probe_size` validation images (the same
images for every variant, un-augmented) forward and backward in training mode with the
training loss, and records per layer the gradient statistics of the training capture plus the
layer's output mean, std and fraction of non-positive values (its pre-activations: the
activation comes after), and at epoch 0 the mean-field prediction of each layer's mean |grad|
(gradflow/theory.py; empty where the variant has no mean-field form), and each layer's signal
share (the part of its output that depends on the image, in float64: gradflow/probe.py).
Writes plots/grad_flow/V.csv, rows in the capture's long format, and metrics/signal/V.json:
the logits' signal share at initialisation and at the last snapshot.
"""

from __future__ import annotations

import sys

from gradflow import params as P
from gradflow import paths
from gradflow.cli import cli, stage_run, variant_parser
from gradflow.data import load_dataset
from gradflow.device import pick_device
from gradflow.files import write_csv, write_json
from gradflow.probe import PROBE_COLUMNS, logits_signal_share, probe_run


@cli
def main(argv: list[str]) -> None:
    parser = variant_parser("gradients", __doc__)
    parser.add_argument("--probe-size", type=int, help="probe images (dvc.yaml passes "
                        "gradients.probe_size); default: params.yaml's")
    args = parser.parse_args(argv)
    name = args.variant
    run = stage_run("gradients", args.config, name, resolve=lambda params: params.run(name),
                    files=[paths.grad_flow(name), paths.signal_metrics(name)])
    probe_size = args.probe_size if args.probe_size is not None else run.params.gradients.probe_size
    if probe_size < 1:  # 0 too: it used to mean "params.yaml's value"
        raise P.ParamsError(f"--probe-size / gradients.probe_size: must be >= 1, got {probe_size}")
    dataset = load_dataset(run.cfg.data)
    rows, n_probe = probe_run(run.cfg, dataset, probe_size, pick_device(run.cfg.train.device))
    run.before_writing()
    write_csv(paths.grad_flow(name), PROBE_COLUMNS, rows)
    epochs = sorted({r[1] for r in rows})
    write_json(paths.signal_metrics(name),  # the headline of the forward signal (gradflow/probe.py)
               {"signal_share_init": logits_signal_share(rows, 0) if 0 in epochs else None,
                "signal_share_final": logits_signal_share(rows, epochs[-1]) if epochs else None})
    print(f"gradients: {name}: {len(rows)} rows on {n_probe} probe images -> {paths.grad_flow(name)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
