"""The published CIFAR-100 runs our runs are compared with (reference/README.md).

Two kinds, both `summary.csv` files with one row per epoch (`train_acc, train_loss, val_acc,
val_loss`), read here once:

  reference/<variant>/summary.csv                     the coursework's own runs (VGG_08, VGG_38),
                                                      with reference/<variant>/test_summary.csv
  reference/public/<variant>/<owner>_<repo>/summary.csv   students' public runs of the same recipe

Figure 1 draws them beside our curves, results.md judges them at our run's budget, and
benchmarks/calibrate.py holds the synthetic stand-in against them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gradflow import paths
from gradflow.verdict import verdict

TRAIN_IMAGES = 47_500  # the coursework's training split: one epoch of every curve here
VAL_IMAGES = 2_500  # its validation split: the n behind each val_acc
COURSEWORK = "coursework"  # the source name of the coursework's own runs


@dataclass(frozen=True)
class PublicRun:
    variant: str
    source: str  # "coursework", or the folder name under public/<variant>/ (owner_repository)
    curves: pd.DataFrame  # summary.csv with an `epoch` column in front, numbered from 1

    def verdict_after(self, epochs: int) -> str:
        """Our verdict rule applied to this run's first `epochs` epochs (all it has if fewer)."""
        head = self.curves.head(epochs)
        return verdict(float(head["train_loss"].iloc[-1]), float(head["val_acc"].max()),
                       diverged=False, n_val=VAL_IMAGES, epochs=len(head))


def read_curves(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    return table


def load(root: Path = paths.REFERENCE) -> dict[str, list[PublicRun]]:
    """Every published run under `root`, by variant: the coursework's first, then the public
    runs in folder order."""
    runs: dict[str, list[PublicRun]] = {}
    for path in sorted(root.glob("*/summary.csv")):
        variant = path.parent.name
        runs.setdefault(variant, []).append(PublicRun(variant, COURSEWORK, read_curves(path)))
    for path in sorted((root / "public").glob("*/*/summary.csv")):
        variant = path.parent.parent.name
        runs.setdefault(variant, []).append(PublicRun(variant, path.parent.name, read_curves(path)))
    if not runs:
        print(f"plots: no published runs under {root}; drawing without them", file=sys.stderr)
    return runs


def load_test(root: Path = paths.REFERENCE) -> dict[str, dict]:
    """The coursework's test scores (test_acc, test_loss) by variant."""
    return {path.parent.name: pd.read_csv(path).iloc[-1].to_dict()
            for path in sorted(root.glob("*/test_summary.csv"))}


def val_acc_range(runs: list[PublicRun], epochs: int) -> list[tuple[float, float]]:
    """(lowest, highest) validation accuracy of `runs` after each of the first `epochs` epochs."""
    return [(min(float(r.curves["val_acc"].iloc[e]) for r in runs),
             max(float(r.curves["val_acc"].iloc[e]) for r in runs)) for e in range(epochs)]
