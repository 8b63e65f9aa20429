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

    .venv/bin/python benchmarks/step_ratio.py --modes eager compile max-autotune

compares the step modes of `train.compile` instead, each variant and mode in a process of its
own (inductor's cache in a fresh folder: "cold", then the same folder again: "warm"): the
steps of two epochs through the same loop, the second one's images/s (steady state), the first
one's extra time (compiling), and the training FLOPs (torch.utils.flop_counter, forward and
backward) per second as a fraction of this machine's matmul rate in the same precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
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
MODE_VARIANTS = ("VGG_08", "VGG_38", "VGG_38_BN", "VGG_38_BN_RC")


def dataset_of(images: int) -> Dataset:
    x, y = synthetic(images + 100, seed=0, stream=0)
    return Dataset(Split(x[:images], y[:images]), Split(x[-100:], y[-100:]),
                   Split(x[-100:], y[-100:]), [str(i) for i in range(NUM_CLASSES)], "synthetic")


def config(name: str, precision: str, epochs: int, compile_mode=False):
    cfg = P.load(ROOT / "params.yaml").run(name)
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=epochs, device="cpu", precision=precision, compile=compile_mode))


def train_flops_per_image(cfg) -> float:
    """Forward + backward FLOPs of one training image (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode
    from gradflow.model import VGG
    model = VGG(cfg.variant, cfg.model).train()
    with FlopCounterMode(display=False) as counter:
        logits, aux = model(torch.zeros(4, 3, 32, 32))
        (logits.sum() + sum(a.sum() for a in aux)).backward()
    return counter.get_total_flops() / 4


def measure_one(name: str, mode: str, precision: str, images: int) -> dict:
    """Two epochs of `name` in step mode `mode`: the seconds of each epoch's steps."""
    cfg = config(name, precision, epochs=2, compile_mode={"eager": False, "compile": True}.get(mode, mode))
    marks = {}
    fit(cfg, dataset_of(images), capture=False,
        on_phase=lambda phase, epoch: marks.setdefault(f"{phase}{epoch}", time.perf_counter()))
    return {"epoch1": marks["steps1"] - marks["build0"], "epoch2": marks["steps2"] - marks["end1"],
            "flops": train_flops_per_image(cfg)}


def compare_modes(args) -> None:
    from benchmarks.measure import matmul_gflops
    from gradflow.device import uses_bf16
    bf16 = uses_bf16(torch.device("cpu"), args.precision)
    rate = matmul_gflops(torch.device("cpu"), torch.bfloat16 if bf16 else torch.float32, 1024, 2.0)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{'bf16' if bf16 else 'fp32'}, {args.images} images per epoch; matmul {rate:.0f} GFLOP/s")
    print("| variant | mode | images/s | vs eager | compile s (cold) | compile s (warm) | of matmul rate |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        eager = None
        for mode in args.modes:
            runs = []
            with tempfile.TemporaryDirectory() as cache:
                for _ in range(1 if mode == "eager" else 2):  # cold, then warm
                    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                    out = subprocess.run([sys.executable, __file__, "--one", name, mode, "--precision",
                                          args.precision, "--images", str(args.images)],
                                         env=env, capture_output=True, text=True)
                    if out.returncode:
                        runs = None
                        print(f"| {name} | {mode} | failed: {out.stderr.strip().splitlines()[-1][:100]} |||||")
                        break
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if not runs:
                continue
            steady = args.images / runs[0]["epoch2"]
            eager = eager or (steady if mode == "eager" else None)
            compiled = [f"{r['epoch1'] - r['epoch2']:.0f}" for r in runs] if mode != "eager" else ["–", "–"]
            print(f"| {name} | {mode} | {steady:.0f} | {steady / eager if eager else float('nan'):.2f} | "
                  f"{compiled[0]} | {compiled[-1]} | {steady * runs[0]['flops'] / 1e9 / rate:.1%} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fast", choices=["fast", "bf16", "fp32"])
    parser.add_argument("--images", type=int, default=3000, help="training images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compile", "max-autotune"],
                        help="compare these step modes (eager first) instead of the variants' ratios")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one measurement of --modes, in a process of its own
        print(json.dumps(measure_one(*args.one, args.precision, args.images)))
        return 0
    if args.modes:
        args.variants = args.variants or list(MODE_VARIANTS)
        compare_modes(args)
        return 0
    dataset = dataset_of(args.images)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in args.variants or VARIANTS:
            rate = fit(config(name, args.precision, epochs=1), dataset, capture=False).images_per_second
            best[name] = max(best.get(name, 0.0), rate)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.precision}, "
          f"{args.images} images per epoch, best of {args.rounds} rounds")
    print("| variant | images/s | step time / VGG_38's |\n|---|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.0f} | {best['VGG_38'] / rate:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
