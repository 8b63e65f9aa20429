"""What does a fix cost per training step? Each VGG_38 variant's step time over plain VGG_38's.

    .venv/bin/python benchmarks/step_ratio.py                     # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/step_ratio.py --precision fp32 --images 2000

Times the train stage's own loop (gradflow.training.fit: whole-epoch augmentation, the steps,
the end-of-epoch sync; capture off, as the figure it reports is training only) on the calibrated
synthetic stand-in, params.yaml's settings with `train.precision` (fast by default, as the quick
start: bf16 where the CPU has it natively), one epoch of --images images per measurement. Variants alternate round by round (A B C D,
A B C D, ...) so drift hits all alike, and each variant's figure is its best round. Prints
images/s and each variant's step time over plain VGG_38's, measured side by side in this run
(the goal: BN and BN+RC at most 1.25x).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibrate import cpu_model  # noqa: E402
from gradflow import params as P  # noqa: E402
from gradflow.data import Dataset, Split, synthetic  # noqa: E402
from gradflow.training import fit  # noqa: E402
from gradflow.verdict import NUM_CLASSES  # noqa: E402

VARIANTS = ("VGG_38", "VGG_38_BN", "VGG_38_RC", "VGG_38_BN_RC")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fast", choices=["fast", "bf16", "fp32"])
    parser.add_argument("--images", type=int, default=3000, help="training images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    x, y = synthetic(args.images + 100, seed=0, stream=0)
    dataset = Dataset(Split(x[:args.images], y[:args.images]), Split(x[-100:], y[-100:]),
                      Split(x[-100:], y[-100:]), [str(i) for i in range(NUM_CLASSES)], "synthetic")
    params = P.load(ROOT / "params.yaml")
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in args.variants:
            cfg = params.run(name)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, epochs=1, device="cpu", precision=args.precision))
            rate = fit(cfg, dataset, capture=False).images_per_second
            best[name] = max(best.get(name, 0.0), rate)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.precision}, "
          f"{args.images} images per epoch, best of {args.rounds} rounds")
    print("| variant | images/s | step time / VGG_38's |\n|---|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.0f} | {best['VGG_38'] / rate:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
