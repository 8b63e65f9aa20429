"""What do the curves' points inside an epoch cost? The train stage's loop with and without them.

    .venv/bin/python benchmarks/points.py                 # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/points.py --images 4750 --rounds 1

Times gradflow.training.fit, the train stage's loop, on the calibrated synthetic stand-in with
params.yaml's settings and `train.precision: fast` (as the quick start), one epoch of --images
images, with a point every train.eval_every images (`on_point` given, as the train stage does)
and without (`on_point=None`: the epoch's end only, as the sweep and the benchmarks do). The
epoch is shortened, and eval_every and eval_subset with it, so the points' share of the work is
a 47,500-image epoch's at params.yaml's values (as many points, each evaluating as many images
per training image). Variants and the two ways alternate
round by round, and each figure is its best round. Prints the wall time of each and the extra
share the points cost (the goal: at most 5% of the training time). Writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibrate import cpu_model  # noqa: E402
from gradflow import params as P  # noqa: E402
from gradflow import reference as R  # noqa: E402
from gradflow.data import Dataset, Split, synthetic  # noqa: E402
from gradflow.training import fit  # noqa: E402
from gradflow.verdict import NUM_CLASSES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=9500, help="training images in the epoch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["VGG_08", "VGG_38_BN_RC"])
    args = parser.parse_args()
    params = P.load(ROOT / "params.yaml")
    val = R.VAL_IMAGES
    x, y = synthetic(args.images + val, seed=0, stream=0)
    dataset = Dataset(Split(x[:args.images], y[:args.images]), Split(x[-val:], y[-val:]),
                      Split(x[-100:], y[-100:]), [str(i) for i in range(NUM_CLASSES)], "synthetic")
    every = params.train.eval_every * args.images // R.TRAIN_IMAGES
    subset = max(1, params.train.eval_subset * args.images // R.TRAIN_IMAGES)
    best: dict[tuple[str, bool], float] = {}
    points = {}
    for _ in range(args.rounds):
        for name in args.variants:
            for with_points in (False, True):
                cfg = params.run(name)
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                    cfg.train, epochs=1, device="cpu", precision="fast", eval_every=every, eval_subset=subset))
                seen = []
                t0 = time.perf_counter()
                fit(cfg, dataset, capture=False, on_point=seen.append if with_points else None)
                seconds = time.perf_counter() - t0
                best[name, with_points] = min(best.get((name, with_points), seconds), seconds)
                points[name] = max(points.get(name, 0), len(seen))
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, fast precision, "
          f"{args.images:,} training images, a point every {every:,} (as every "
          f"{params.train.eval_every:,} of {R.TRAIN_IMAGES:,}), {subset} validation images a point (as "
          f"{params.train.eval_subset}), {val:,} at the end; best of {args.rounds} rounds")
    print("| variant | points | fit without points, s | with, s | extra |\n|---|---|---|---|---|")
    for name in args.variants:
        off, on = best[name, False], best[name, True]
        print(f"| {name} | {points[name]} | {off:.1f} | {on:.1f} | {on / off - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
