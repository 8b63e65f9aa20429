"""Does the quick start show the finding whatever the seed? The three-seed check.

    .venv/bin/python benchmarks/seeds.py                 # seeds 0, 1, 2: ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/seeds.py --seeds 3 4

Reads the quick start's settings where the quick start itself does (gradflow.quickstart: its
`-S` overrides, `~` deletions included, applied to params.yaml with DVC's own override code,
with the synthetic source, what it picks where CIFAR-100 cannot be had); then, for each
`train.seed`, trains every variant the quick start keeps with the train stage's loop
(gradflow.training.fit) on the same data (the fetch stage's synthetic source) and judges it by
the verdict rule. Writes benchmarks/seeds.md (the table, machine, date, times) and exits 1 if
any verdict differs from the finding (gradflow.quickstart.FINDING): VGG_08 and the BN / RC /
BN+RC fixes learn, plain VGG_38 is stuck at chance.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibrate import cpu_model  # noqa: E402
from gradflow import data as D  # noqa: E402
from gradflow import params as P  # noqa: E402
from gradflow.quickstart import FINDING, overrides as quick_start  # noqa: E402
from gradflow.training import fit  # noqa: E402
from stages.fetch import synthetic_source  # noqa: E402


def quick_start_overrides() -> list[str]:
    """The quick start's `-S` values on a machine without CIFAR-100."""
    return quick_start("synthetic", list(P.load(ROOT / "params.yaml").variants))


def quick_start_params(overrides: list[str]) -> P.Params:
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        shutil.copy(ROOT / "params.yaml", path)
        apply_overrides(str(path), overrides)
        return P.load(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "seeds.md")
    args = parser.parse_args()
    started = time.perf_counter()
    overrides = quick_start_overrides()
    params = quick_start_params(overrides)
    raw, _ = synthetic_source(params.data)
    dataset = D.Dataset.from_raw(raw, "synthetic", params.data)
    print(f"seeds: the quick start: {' '.join(overrides)}; {len(dataset.train):,} train / "
          f"{len(dataset.val):,} val images; variants {', '.join(params.variants)}", file=sys.stderr)
    rows, ok = [], True
    for seed in args.seeds:
        for name in params.variants:
            cfg = params.run(name)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed, device="cpu"))
            t0 = time.perf_counter()
            result = fit(cfg, dataset, capture=False, progress=f"seed {seed} ")
            m = result.metrics()
            expected = FINDING.get(name)
            good = expected is None or m["verdict"] == expected
            ok &= good
            rows.append([str(seed), name, m["verdict"], expected or "–", f"{m['best_val_acc']:.4f}",
                         f"{m['final_train_loss']:.4f}", f"{time.perf_counter() - t0:.0f}",
                         "yes" if good else "NO"])
            print(f"seeds: {rows[-1]}", file=sys.stderr)
    header = ["train.seed", "variant", "verdict", "the finding", "best val acc", "final train loss",
              "seconds", "as the finding"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(r) + " |" for r in rows])
    text = (f"# The quick start at three seeds (benchmarks/seeds.py)\n\n"
            f"{datetime.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; synthetic data (the calibrated stand-in); the quick start's "
            f"settings (gradflow.quickstart): `{' '.join('-S ' + shlex.quote(o) for o in overrides)}`; "
            f"{len(dataset.train):,} training and {len(dataset.val):,} validation images. Total "
            f"{time.perf_counter() - started:.0f} s.\n\n{table}\n\n"
            f"Overall: {'every verdict as the finding' if ok else 'NOT the finding'}\n")
    args.out.write_text(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
