"""Is the synthetic stand-in as hard as CIFAR-100? The calibration measurement (issue 21).

    .venv/bin/python benchmarks/calibrate.py                       # bf16 and fp32: ~15 min, 2 CPU cores
    .venv/bin/python benchmarks/calibrate.py --precision bf16      # one precision
    .venv/bin/python benchmarks/calibrate.py --signal 0.55         # try another difficulty

Trains VGG_08 and plain VGG_38 with the coursework's recipe, as the pipeline does (params.yaml's
defaults: 47,500 training images an epoch, batch 100, Adam 1e-3, cosine annealing over 100
epochs, random crop + flip; 2,500 validation images) on `data.source: synthetic`, the stand-in
`dvc repro` uses (gradflow.data.synthetic, made by the fetch stage's own code), for the first 3
of the 100 epochs, and puts each epoch's validation accuracy beside the coursework's
(reference/*/summary.csv). The stand-in passes when VGG_08 is within 1.5 points of the
coursework at each of epochs 1-3 and plain VGG_38 is at chance (the verdict rule says "stuck at
chance" or at least not "learns").

Writes benchmarks/calibration.md (the table, with the machine, date and times) and
benchmarks/calibration.png (the curves); exits 1 if the stand-in fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradflow import data as D  # noqa: E402
from gradflow import params as P  # noqa: E402
from gradflow.training import fit  # noqa: E402
from gradflow.verdict import verdict  # noqa: E402
from stages.fetch import synthetic_source  # noqa: E402

EPOCHS = 3
TOLERANCE = 0.015  # the issue's +-1.5 points
VARIANTS = ("VGG_08", "VGG_38")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def stand_in_dataset(stand_in: D.StandIn, data: P.DataParams) -> D.Dataset:
    """The fetch stage's synthetic source (params.yaml's data sizes), in memory."""
    data = dataclasses.replace(data, source="synthetic")
    raw, _ = synthetic_source(data, stand_in)
    raw["test_images"], raw["test_labels"] = raw["test_images"][:100], raw["test_labels"][:100]  # unused
    return D.Dataset.from_raw(raw, "synthetic", data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["bf16", "fp32"], action="append",
                        help="default: both")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--signal", type=float, help=f"the stand-in's signal (default {D.CALIBRATED.signal})")
    parser.add_argument("--seed", type=int, default=0, help="train.seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "calibration")
    args = parser.parse_args()
    precisions = args.precision or ["bf16", "fp32"]

    started = time.perf_counter()
    stand_in = D.CALIBRATED if args.signal is None else dataclasses.replace(D.CALIBRATED, signal=args.signal)
    params = P.load(ROOT / "params.yaml")
    dataset = stand_in_dataset(stand_in, params.data)
    print(f"calibrate: {stand_in}: "
          f"{len(dataset.train):,} train / {len(dataset.val):,} val images "
          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    reference = {name: pd.read_csv(ROOT / "reference" / name / "summary.csv").head(EPOCHS) for name in VARIANTS}
    rows, curves = [], {}
    for precision in precisions:
        for name in args.variants:
            cfg = params.run(name)  # params.yaml's settings: the coursework's recipe
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, device="cpu", precision=precision, seed=args.seed))
            t0 = time.perf_counter()
            result = fit(cfg, dataset, capture=False, progress=f"{precision} ", stop_after=EPOCHS)
            seconds = time.perf_counter() - t0
            accs = [h["val_acc"] for h in result.history]
            curves[(name, precision)] = accs
            ref = reference[name]["val_acc"].tolist() if name in reference else [None] * EPOCHS
            word = verdict(result.history[-1]["train_loss"], max(accs), False, n_val=len(dataset.val),
                           epochs=len(accs))
            if name == "VGG_08":
                ok = all(abs(a - r) <= TOLERANCE for a, r in zip(accs, ref))
            else:
                ok = word != "learns"
            rows.append([name, precision, *(f"{a:.3f} ({r:.3f})" for a, r in zip(accs, ref)),
                         f"{result.history[-1]['train_loss']:.3f}", word, "pass" if ok else "FAIL",
                         f"{seconds:.0f}"])
            print(f"calibrate: {rows[-1]}", file=sys.stderr)

    header = ["variant", "precision", *(f"val acc epoch {e} (coursework)" for e in range(1, EPOCHS + 1)),
              "train loss epoch 3", "verdict", "check", "seconds"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(r) + " |" for r in rows])
    passed = all(r[-2] == "pass" for r in rows)
    text = (f"# The stand-in against CIFAR-100 (benchmarks/calibrate.py)\n\n"
            f"{datetime.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; stand-in {stand_in}; the coursework's recipe, first {EPOCHS} of 100 "
            f"epochs, 47,500 training and 2,500 validation images, train.seed {args.seed}. In brackets: "
            f"the coursework's own runs on CIFAR-100 (reference/*/summary.csv). VGG_08 passes within "
            f"{TOLERANCE:.3f} of the coursework at every epoch; VGG_38 when its verdict is not "
            f"\"learns\". Total {time.perf_counter() - started:.0f} s.\n\n{table}\n\n"
            f"Overall: {'pass' if passed else 'FAIL'}\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    epochs = list(range(1, EPOCHS + 1))
    for name, colour in zip(VARIANTS, ("tab:blue", "tab:red")):
        ax.plot(epochs, reference[name]["val_acc"], ls="--", color=colour, marker="x",
                label=f"{name}, coursework (CIFAR-100)")
        for precision, marker in zip(("bf16", "fp32"), ("o", "s")):
            if (name, precision) in curves:
                ax.plot(epochs, curves[(name, precision)], color=colour, marker=marker,
                        label=f"{name}, stand-in, {precision}")
    ax.fill_between(epochs, reference["VGG_08"]["val_acc"] - TOLERANCE,
                    reference["VGG_08"]["val_acc"] + TOLERANCE, color="tab:blue", alpha=0.12,
                    label=f"coursework VGG_08 +- {TOLERANCE}")
    ax.set(xlabel="epoch (47,500 images each)", ylabel="validation accuracy", xticks=epochs,
           title="Stand-in vs CIFAR-100, the coursework's recipe")
    ax.legend(fontsize=7)
    fig.savefig(args.out.with_suffix(".png"), dpi=100)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
