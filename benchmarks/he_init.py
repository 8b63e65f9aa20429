"""What He initialisation does to plain VGG_38 at the default lr and at a lower one.

    .venv/bin/python benchmarks/he_init.py                # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/he_init.py --lrs 1e-3 3e-4 1e-4 --epochs 8

VGG_38_HE from params.yaml (the product's config, `init: kaiming`), trained with the train
stage's loop (gradflow.training.fit) on the calibrated synthetic stand-in, in short "epochs" of
`--images` training images so that the weights are snapshotted every few steps; each snapshot
is probed as the gradients stage probes it (gradflow.probe.probe: training mode, the first
`--probe` validation images). Per snapshot: steps taken, the training loss of the epoch that
ended there, the logits' signal share, the fraction of non-positive pre-activations of the
last two convs, and the first/last-conv gradient ratio. Writes benchmarks/he_init.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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
from gradflow.data import Augment  # noqa: E402
from gradflow.files import torch_load  # noqa: E402
from gradflow.model import LOGITS, VGG  # noqa: E402
from gradflow.probe import probe  # noqa: E402
from gradflow.report import markdown_table  # noqa: E402
from gradflow.training import fit  # noqa: E402
from stages.fetch import synthetic_source  # noqa: E402


def measure(cfg: P.RunConfig, dataset: D.Dataset, probe_images: int) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        result = fit(cfg, dataset, workdir=workdir, capture=False, progress=f"lr {cfg.train.lr:g} ")
        t = cfg.train
        x = Augment(t.mean, t.std, 0, False, torch.device("cpu")).normalize(dataset.val.images[:probe_images])
        y = dataset.val.labels[:probe_images]
        model = VGG(cfg.variant, cfg.model)
        loss = {h["epoch"]: h["train_loss"] for h in result.history}
        steps = -(-len(dataset.train) // t.batch_size)
        rows = []
        for epoch in cfg.snapshot_epochs():
            path = workdir / f"epoch_{epoch:03d}.pt"
            if not path.is_file():
                continue
            model.load_state_dict(torch_load(path, "rerun")["model"])
            probed = {name: (g, a) for name, g, a in probe(model, x, y, False, 0.0)}
            convs = [name for name in probed if name.endswith(("_conv_0", "_conv_1"))]
            ratio = probed[convs[0]][0][0] / probed[convs[-1]][0][0]
            nonpos = [probed[name][1][2] for name in convs[-2:]]
            rows.append([f"{t.lr:g}", str(epoch * steps), f"{loss[epoch]:.4f}" if epoch in loss else "–",
                         f"{probed[LOGITS][1][3]:.2g}", " / ".join(f"{v:.2f}" for v in nonpos), f"{ratio:.2g}"])
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--epochs", type=int, default=8, help="short epochs, each snapshotted")
    parser.add_argument("--images", type=int, default=2500, help="training images per short epoch")
    parser.add_argument("--probe", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "he_init.md")
    args = parser.parse_args()
    started = time.perf_counter()
    params = P.load(ROOT / "params.yaml")
    data = dataclasses.replace(params.data, source="synthetic", train_limit=args.images, eval_limit=max(args.probe, 500))
    raw, _ = synthetic_source(data)
    dataset = D.Dataset.from_raw(raw, "synthetic", data)
    rows = []
    for lr in args.lrs:
        cfg = params.run("VGG_38_HE")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=lr, epochs=args.epochs, device="cpu",
                                                                 precision="fp32"),
                                  gradients=dataclasses.replace(cfg.gradients, epochs=list(range(args.epochs + 1))))
        rows += measure(cfg, dataset, args.probe)
    header = ["lr", "steps", "train loss (epoch ending here)", "logits' signal share",
              "non-positive pre-activations, last two convs", "grad ratio first/last conv"]
    text = "\n".join([
        "# He initialisation on plain VGG_38 (benchmarks/he_init.py)", "",
        f"{datetime.date.today()}, {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"synthetic stand-in (calibrated), {args.images:,} training images per short epoch, batch "
        f"{params.train.batch_size}, Adam, fp32, cosine over {args.epochs} short epochs; probe: "
        f"{args.probe} validation images, training mode. {time.perf_counter() - started:.0f} s.", "",
        markdown_table(header, rows), ""])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
