"""Is the synthetic stand-in as hard as CIFAR-100, for every variant? The calibration measurement.

    .venv/bin/python benchmarks/calibrate.py                         # five variants, bf16: ~12 min, 2 CPU cores
    .venv/bin/python benchmarks/calibrate.py --variants VGG_08 VGG_38_RC --object 0.5   # a search step

Trains the five headline variants with the coursework's recipe, as the pipeline does
(params.yaml's defaults: 47,500 training images an epoch, batch 100, Adam 1e-3, cosine annealing
over 100 epochs, random crop + flip; 2,500 validation images) on `data.source: synthetic`, the
stand-in `dvc repro` uses (gradflow.data.synthetic, made by the fetch stage's own code), for the
first 3 of the 100 epochs, and holds each epoch's validation accuracy against the published
CIFAR-100 runs of the same recipe (gradflow.reference: the coursework's own and students' public
runs, reference/README.md).

A variant passes when, after each epoch, its validation accuracy lies inside the published runs'
range widened by TOLERANCE on each side, and after epoch 1 it "learns" exactly when they do (the
project's verdict rule, gradflow.verdict). VGG_38_RC has no published curve here; real runs of it
learn from epoch 1 at about VGG_08's pace, so it is held against VGG_08's (TARGET). The published
VGG_38's epoch-1 word is "undecided" (its first epoch's mean training loss, 4.86, still carries the
initial transient), so the epoch-1 check is learns / does not learn, not the exact word.

Every field of the stand-in (gradflow.data.StandIn) is an option (`--colour 0.4`), so a search
can call this. Writes benchmarks/calibration.md (the table, machine, date, times; its section
"## The search", the candidates tried, is kept) and
benchmarks/calibration.png (the curves beside the published ones); exits 1 if any variant fails.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradflow import data as D  # noqa: E402
from gradflow import params as P  # noqa: E402
from gradflow import paths  # noqa: E402
from gradflow import reference as R  # noqa: E402
from gradflow.training import fit  # noqa: E402
from gradflow.verdict import verdict  # noqa: E402
from stages.fetch import synthetic_source  # noqa: E402

EPOCHS = 3
TOLERANCE = 0.015  # 1.5 points either side of the published range
VARIANTS = ("VGG_08", "VGG_38", "VGG_38_BN", "VGG_38_RC", "VGG_38_BN_RC")
SEARCH = "## The search"  # calibration.md keeps this section and what follows when it is rewritten
TARGET = {"VGG_38_RC": "VGG_08"}  # whose published curves a variant without its own is held against


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["bf16", "fp32"], action="append", help="default: bf16")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0, help="train.seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "calibration")
    stand_in = parser.add_argument_group("the stand-in (gradflow.data.StandIn; default: CALIBRATED)")
    for field in dataclasses.fields(D.StandIn):
        stand_in.add_argument(f"--{field.name}", type=type(getattr(D.CALIBRATED, field.name)),
                              default=getattr(D.CALIBRATED, field.name))
    return parser.parse_args()


def judge(name: str, accs: list[float], losses: list[float], published: list[R.PublicRun]):
    """(bands, our epoch-1 word, theirs, pass) for one variant's curve."""
    bands = [(max(0.0, lo - TOLERANCE), hi + TOLERANCE) for lo, hi in R.val_acc_range(published, len(accs))]
    ours = verdict(losses[0], accs[0], False, n_val=R.VAL_IMAGES, epochs=1)
    theirs = sorted({r.verdict_after(1) for r in published})
    inside = all(lo <= a <= hi for a, (lo, hi) in zip(accs, bands))
    agrees = all((ours == "learns") == (word == "learns") for word in theirs)
    return bands, ours, theirs, inside and agrees


def main() -> int:
    args = parse_args()
    precisions = args.precision or ["bf16"]
    stand_in = D.StandIn(**{f.name: getattr(args, f.name) for f in dataclasses.fields(D.StandIn)})
    started = time.perf_counter()
    params = P.load(ROOT / "params.yaml")
    dataset = stand_in_dataset(stand_in, params.data)
    if len(dataset.val) != R.VAL_IMAGES or len(dataset.train) != R.TRAIN_IMAGES:
        raise SystemExit(f"calibrate: params.yaml's data sizes ({len(dataset.train)} / {len(dataset.val)}) "
                         f"are not the coursework's ({R.TRAIN_IMAGES} / {R.VAL_IMAGES})")
    print(f"calibrate: {stand_in} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    published = R.load(ROOT / paths.REFERENCE)  # from any working directory
    rows, curves, bands = [], {}, {}
    for precision in precisions:
        for name in args.variants:
            cfg = params.run(name)  # params.yaml's settings: the coursework's recipe
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, device="cpu", precision=precision, seed=args.seed))
            t0 = time.perf_counter()
            result = fit(cfg, dataset, capture=False, progress=f"{precision} ", stop_after=EPOCHS)
            seconds = time.perf_counter() - t0
            accs = [h["val_acc"] for h in result.history]
            losses = [h["train_loss"] for h in result.history]
            runs = published[TARGET.get(name, name)]
            bands[name], ours, theirs, ok = judge(name, accs, losses, runs)
            curves[(name, precision)] = accs
            rows.append([name, precision,
                         *(f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, (lo, hi) in zip(accs, bands[name])),
                         f"{losses[-1]:.3f}", f"{ours} ({', '.join(theirs)})",
                         f"{TARGET.get(name, name)}: {len(runs)}", "pass" if ok else "FAIL", f"{seconds:.0f}"])
            print(f"calibrate: {rows[-1]}", file=sys.stderr)

    header = ["variant", "precision", *(f"val acc epoch {e} [band]" for e in range(1, EPOCHS + 1)),
              f"train loss epoch {EPOCHS}", "verdict after epoch 1 (published)", "held against: runs",
              "check", "seconds"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(r) + " |" for r in rows])
    passed = all(r[-2] == "pass" for r in rows)
    text = (f"# The stand-in against CIFAR-100 (benchmarks/calibrate.py)\n\n"
            f"{datetime.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; synthetic stand-in {stand_in}; the coursework's recipe, first "
            f"{EPOCHS} of 100 epochs, {R.TRAIN_IMAGES:,} training and {R.VAL_IMAGES:,} validation images, "
            f"train.seed {args.seed}. Band: the published CIFAR-100 runs' range after that epoch "
            f"(reference/README.md), widened by {TOLERANCE} each side; VGG_38_RC is held against "
            f"VGG_08's. A variant passes inside every band and when after epoch 1 it learns exactly "
            f"when the published runs do. Total {time.perf_counter() - started:.0f} s.\n\n{table}\n\n"
            f"Overall: {'pass' if passed else 'FAIL'}\n")
    md = args.out.with_suffix(".md")
    kept = md.read_text() if md.is_file() else ""  # the hand-written record of the search, below
    text += "\n" + kept[kept.index(SEARCH):] if SEARCH in kept else ""
    md.write_text(text)
    print(text)
    plot(args.out.with_suffix(".png"), curves, bands, published)
    return 0 if passed else 1


def plot(path: Path, curves: dict, bands: dict, published: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for name, _ in curves))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), sharey=True,
                             layout="constrained", squeeze=False)
    epochs = list(range(1, EPOCHS + 1))
    for ax, name in zip(axes[0], names):
        lo, hi = zip(*bands[name])
        ax.fill_between(epochs, lo, hi, color="tab:grey", alpha=0.2, label=f"band (+-{TOLERANCE})")
        for run in published[TARGET.get(name, name)]:
            ax.plot(run.curves["epoch"].head(EPOCHS), run.curves["val_acc"].head(EPOCHS), ls="--",
                    lw=1, color="tab:grey", label="published CIFAR-100 runs" if run is published[
                        TARGET.get(name, name)][0] else None)
        for (n, precision), accs in curves.items():
            if n == name:
                ax.plot(epochs, accs, marker="o", label=f"stand-in, {precision}")
        target = TARGET.get(name)
        ax.set(title=f"{name} (held against {target}'s)" if target else name,
               xlabel=f"epoch ({R.TRAIN_IMAGES:,} images)", xticks=epochs)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation accuracy")
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
