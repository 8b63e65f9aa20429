"""One-shot GPU check: the speed of the training `dvc repro` runs, per step mode, with
its memory, the matmul rate, a projection of the full reproduction, and the init gradient ratio
on the device next to the CPU's.

    python benchmarks/gpu_check.py                          # on the GPU machine: a 360 s budget
    python benchmarks/gpu_check.py --device cpu --tiny      # dry run (CI): under a minute on 2 cores

The benchmark is the training code: each measurement builds the variant's run config with the
params code (params.yaml's `params.run(name)`, on this device, with the step mode as
`train.compile`) and times the library's own loop, `gradflow.training.fit` for two epochs
(`stop_after`), between the marks its `on_phase` callback gets, gradient capture on as in the
train stage. No DVC, no network: synthetic CIFAR-shaped data (gradflow.data.synthetic); imports
nothing from tests/. Needs torch, pyyaml, tqdm.

Per variant (default VGG_08, VGG_38, VGG_38_BN_RC) and step mode (eager; compile = torch.compile,
mode reduce-overhead on CUDA; graph = the step as one CUDA graph, "n/a on cpu"):

  first_epoch_s  epoch 1: the warm-up the real run pays once (compilation, graph capture, cuDNN
                 autotuning) plus its steps and validation
  s_per_epoch    epoch 2, as every later epoch of the run: train_s (whole-set augmentation and
                 the steps, one host sync) + eval_s (validation, keeping the best weights)
  test_s         the test pass of `finish`
  peak memory    torch.cuda.max_memory_allocated on CUDA, the process's peak RSS (VmHWM)
  grad ratio     log10 first/last conv mean |grad| of the run's first captured step, in the
                 run's precision (train.precision: bf16 autocast on CUDA)

Also per variant the first/last conv ratio at initialisation from the gradients stage's probe
(gradflow.probe.probe) on the CPU in fp32 (the README's reference) and on the device in fp32
(TF32 off), with TF32 on and under bf16 autocast: bf16 must not lose plain VGG_38's ~1e-14.
A global budget (--budget-s) skips what would not fit, and says so.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.measure import matmul_gflops, memory, reset_peak, sync  # noqa: E402
from gradflow import fastpath  # noqa: E402
from gradflow import params as P  # noqa: E402
from gradflow.capture import conv_ratio  # noqa: E402
from gradflow.data import Augment, Dataset, Split, synthetic  # noqa: E402
from gradflow.device import autocast, uses_bf16, uses_channels_last  # noqa: E402
from gradflow.files import write_json  # noqa: E402
from gradflow.model import VGG  # noqa: E402
from gradflow.probe import probe  # noqa: E402
from gradflow.training import fit  # noqa: E402
from gradflow.verdict import NUM_CLASSES  # noqa: E402

IMPORT_S = time.perf_counter() - STARTED
DEFAULT_VARIANTS = ("VGG_08", "VGG_38", "VGG_38_BN_RC")
STEP_MODES = ("eager", "graph", "compile")  # measured in this order: compile is the slow one
EXPECTED_KEYS = ("device", "tiny", "torch", "variants", "timings", "matmul", "grad_ratio_init",
                 "projection", "wall_s", "notes")


def budget_left(seconds: float) -> float:
    return seconds - (time.perf_counter() - STARTED)


def matmul_rate(device: torch.device, tiny: bool, seconds: float) -> dict:
    """TFLOP/s of a square matmul: bf16 and fp32 (TF32 off) on CUDA, fp32 on the CPU."""
    n = 512 if tiny else (8192 if device.type == "cuda" else 2048)
    out = {"n": n}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    for dtype in [torch.bfloat16, torch.float32] if device.type == "cuda" else [torch.float32]:
        gflops = matmul_gflops(device, dtype, n, seconds)
        out[f"{str(dtype).removeprefix('torch.')}_tflops"] = round(gflops / 1e3, 2)
    return out


def run_config(params: P.Params, name: str, device: torch.device, step_mode, batch: int | None) -> P.RunConfig:
    """The variant's config as `dvc repro` trains it, on `device`, with `train.compile` = step_mode."""
    cfg = params.run(name)
    train = dataclasses.replace(cfg.train, device=device.type, compile=step_mode,
                                batch_size=batch or cfg.train.batch_size)
    return dataclasses.replace(cfg, train=train)


def probe_ratio(rows) -> float | None:
    """first/last conv mean |grad| from gradflow.probe.probe's rows."""
    return conv_ratio({r.layer: r.grads[0] for r in rows}, [r.layer for r in rows])


def grad_ratios(params: P.Params, names: list[str], device: torch.device, n: int) -> dict:
    """First/last conv ratio at init by the gradients stage's probe: CPU fp32, and on the device
    fp32 (TF32 off), TF32 (CUDA) and bf16 autocast."""
    images, labels = synthetic(n, params.data.seed, 1)  # a fixed batch: the synthetic test stream
    cpu = torch.device("cpu")
    settings = [("cpu_fp32", cpu, "fp32", False)]
    if device.type == "cuda":
        settings += [("cuda_fp32", device, "fp32", False), ("cuda_tf32", device, "fp32", True)]
    settings += [(f"{device.type}_bf16", device, "bf16", False)]
    out = {}
    for name in names:
        cfg = params.run(name)
        t, row = cfg.train, {}
        for key, dev, precision, tf32 in settings:
            if dev.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            x, y = Augment(t.mean, t.std, 0, False, dev).normalize(images.to(dev)), labels.to(dev)
            torch.manual_seed(t.seed)  # the run's initial weights
            model = VGG(cfg.variant, cfg.model).to(dev)
            if uses_channels_last(t.channels_last, dev):
                model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, precision):
                ratio = probe_ratio(probe(model, x, y, cfg.gradients.include_bias, cfg.variant.aux_weight))
            row[key] = {"ratio_first_last": ratio}
        base = row["cpu_fp32"]["ratio_first_last"]
        for key, r in row.items():  # how far each is from the CPU's fp32 value, in decades
            if key != "cpu_fp32" and base and r["ratio_first_last"]:
                r["log10_vs_cpu_fp32"] = round(math.log10(r["ratio_first_last"] / base), 3)
        out[name] = row
    return out


def measure(cfg: P.RunConfig, dataset: Dataset, device: torch.device) -> dict:
    """Two epochs and the test pass of the library's training: `fit` itself, timed at the
    end of each of its phases (build; per epoch the steps, which end with the epoch's one host
    sync, and the evaluation; the test pass)."""
    requested = fastpath.resolve(cfg.train.compile, device)
    mode, note = fastpath.starts_as(requested, device)
    if mode != requested:  # "graph" off CUDA
        return {"status": f"n/a on {device.type}", "note": note}
    reset_peak(device)
    sync(device)
    marks = {("start", 0): time.perf_counter()}

    def mark(phase: str, epoch: int) -> None:
        marks[phase, epoch] = time.perf_counter()

    result = fit(cfg, dataset, stop_after=2, on_phase=mark)
    if result.status == "diverged":  # a non-finite loss leaves no history row
        loss = {h["epoch"]: h["train_loss"] for h in result.history}.get(result.diverged_epoch, math.nan)
        return {"status": f"diverged in epoch {result.diverged_epoch} (loss {loss:.4g})"}
    build_s = marks["build", 0] - marks["start", 0]
    epochs, before = [], marks["build", 0]
    for epoch in (1, 2):
        epochs.append({"train_s": marks["steps", epoch] - before,
                       "eval_s": marks["end", epoch] - marks["steps", epoch],
                       "train_loss": result.history[epoch - 1]["train_loss"]})
        before = marks["end", epoch]
    test_s = marks["test", 2] - before
    first, second = (e["train_s"] + e["eval_s"] for e in epochs)
    return {"status": "ok", "mode": result.step_mode, "note": result.step_note,
            "precision": "bf16" if uses_bf16(device, cfg.train.precision) else "fp32",
            "batch_size": cfg.train.batch_size, "build_s": round(build_s, 3),
            "first_epoch_s": round(first, 3), "s_per_epoch": round(second, 3),
            "setup_extra_s": round(max(0.0, first - second), 3),
            "train_s": round(epochs[1]["train_s"], 3), "eval_s": round(epochs[1]["eval_s"], 4),
            "test_s": round(test_s, 4), "images_per_s": round(result.n_train / epochs[1]["train_s"], 1),
            "train_loss_epoch_2": round(epochs[1]["train_loss"], 4),
            "log10_grad_ratio_init": result.grad_ratios()["init"], "memory": memory(device)}


def project(params: P.Params, timings: dict, modes, overhead_s: float, scale: float) -> dict:
    """Serial wall time of the default reproduction (as `dvc repro` runs it: one stage at a
    time) for each step mode, from the measured epochs."""
    method = (
        "Per-epoch time t(depth, fix) from the measured variants: plain networks linear in depth "
        "through VGG_08 (8) and VGG_38 (38), extrapolated linearly beyond 38; variants with "
        "batch_norm scale that by the measured VGG_38_BN_RC / VGG_38 ratio; rc, he, dense and dsn "
        "are costed as plain (dense and dsn are not measured: an underestimate). Measured on "
        f"fewer images than the full run, every time scales by {scale:.4g} (the image count's "
        "ratio). Each train stage: epochs x s_per_epoch (steps + validation), the mode's warm-up "
        "beyond its steps (setup_extra_s) once, the test pass, and a per-process overhead (this "
        f"script's import + device init, {overhead_s:.1f} s here) for it and for its gradients "
        "stage; each sweep point the same without a gradients stage. Runs: params.yaml's "
        "variants and sweep (params.runs()). Not counted: fetch, check, plots, DVC itself, and "
        "running several stages at once.")
    base = [timings.get(name, {}) for name in ("VGG_08", "VGG_38", "VGG_38_BN_RC")]

    def per_epoch(cfg: P.RunConfig, mode: str, key: str) -> float | None:
        try:
            t08, t38 = base[0][mode][key], base[1][mode][key]
            t = t08 + (t38 - t08) * (cfg.variant.depth - 8) / 30
            return t * (base[2][mode][key] / t38 if cfg.variant.batch_norm and t38 else 1.0)
        except (KeyError, TypeError):
            return None

    out = {"method": method, "serial_s": {}, "train_s": {}, "sweep_s": {}}
    for mode in modes:
        total = {"train": 0.0, "sweep": 0.0}
        for name, cfg in params.runs().items():
            kind = "sweep" if name.startswith("sweep-") else "train"
            parts = [per_epoch(cfg, mode, key) for key in ("s_per_epoch", "setup_extra_s", "test_s")]
            if None in parts:
                total = None
                break
            epoch_s, setup_s, test_s = parts
            total[kind] += (cfg.train.epochs * epoch_s + test_s) * scale + setup_s + overhead_s * (
                2 if kind == "train" else 1)
        for key in ("train", "sweep"):
            out[f"{key}_s"][mode] = round(total[key], 1) if total else None
        out["serial_s"][mode] = round(total["train"] + total["sweep"], 1) if total else None
    return out


def table(result: dict) -> str:
    lines = [f"gpu_check on {result['device']} ({result['device_name']}), torch {result['torch']}"
             f"{', TINY dry run' if result['tiny'] else ''}: {result['train_images']} train images"]
    lines.append(f"{'variant':<14}{'mode':<9}{'s/epoch':>9}{'epoch 1':>9}{'img/s':>9}{'peak MB':>9}  note")
    for name, per_mode in result["timings"].items():
        for mode, m in per_mode.items():
            if m.get("status") == "ok":
                mem = m["memory"].get("cuda_max_memory_allocated_mb", m["memory"]["peak_rss_mb"])
                lines.append(f"{name:<14}{mode:<9}{m['s_per_epoch']:>9.2f}{m['first_epoch_s']:>9.2f}"
                             f"{m['images_per_s']:>9.0f}{mem:>9.0f}  {m['precision']}; eval "
                             f"{m['eval_s']:.2f}s, test {m['test_s']:.2f}s {m['note']}")
            else:
                lines.append(f"{name:<14}{mode:<9}{'-':>9}{'-':>9}{'-':>9}{'-':>9}  {m.get('status')}")
    lines.append("matmul " + ", ".join(f"{k} {v}" for k, v in result["matmul"].items()))
    lines.append("grad ratio first/last conv at init (probe):")
    for name, row in result["grad_ratio_init"].items():
        lines.append(f"  {name:<14}" + "  ".join(f"{k} {r['ratio_first_last']:.2e}" for k, r in row.items()))
    lines.append("projected default reproduction, serial: " + ", ".join(
        f"{m} {s / 60:.1f} min" if s is not None else f"{m} n/a"
        for m, s in result["projection"]["serial_s"].items()))
    lines.append(f"wall {result['wall_s']:.1f} s; JSON: {result['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--tiny", action="store_true", help="dry run: 100 train images in batches of "
                    "25, compile on the first variant only")
    ap.add_argument("--batch", type=int, default=None, help="training batch size (default: the "
                    "variant's from params.yaml; --tiny 25)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="images per epoch (default: the full run's 47,500; --tiny 100)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check.json"), help="JSON path")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--modes", default=",".join(STEP_MODES), help="subset of eager,graph,compile")
    ap.add_argument("--compile-mode", choices=("auto", "compile", "reduce-overhead"), default="auto",
                    help="torch.compile mode of the compile column; auto: reduce-overhead on CUDA")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip measurements that would start after this many seconds "
                    "(default 360; --tiny 240)")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    torch.zeros(1, device=device) + 1
    sync(device)
    init_s = time.perf_counter() - t0
    budget = args.budget_s if args.budget_s is not None else (240 if args.tiny else 360)
    compile_mode = args.compile_mode if args.compile_mode != "auto" else (
        "reduce-overhead" if device.type == "cuda" else "compile")
    step_modes = {"eager": False, "graph": "graph", "compile": True if compile_mode == "compile" else compile_mode}
    names = [s for s in args.variants.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    params = P.load(args.params)
    for name in names:
        if name not in params.variants:
            raise SystemExit(f"gpu_check: {args.params} has no variant {name!r} "
                             f"(defined: {', '.join(params.variants)})")
    notes = []

    full_train_n = params.data.synthetic_train_size - params.data.val_size
    train_n = args.train_images or (100 if args.tiny else full_train_n)
    val_n, test_n = (50, 50) if args.tiny else (params.data.val_size, params.data.synthetic_test_size)
    batch = args.batch or (25 if args.tiny else None)
    t0 = time.perf_counter()
    images, labels = synthetic(train_n + val_n, params.data.seed, 0)
    test_images, test_labels = synthetic(test_n, params.data.seed, 1)
    dataset = Dataset(Split(images[:train_n], labels[:train_n]), Split(images[train_n:], labels[train_n:]),
                      Split(test_images, test_labels), [str(c) for c in range(NUM_CLASSES)], "synthetic")
    data_s = time.perf_counter() - t0

    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device)
              if device.type == "cuda" else platform.processor() or platform.machine(),
              "tiny": args.tiny, "torch": torch.__version__, "python": platform.python_version(),
              "cpu_threads": torch.get_num_threads(), "variants": names, "modes": modes,
              "compile_mode": compile_mode, "train_images": train_n, "val_images": val_n,
              "test_images": test_n, "full_train_images": full_train_n,
              "import_s": round(IMPORT_S, 2), "device_init_s": round(init_s, 2),
              "data_s": round(data_s, 2), "timings": {}, "out": args.out, "notes": notes}
    result["matmul"] = matmul_rate(device, args.tiny, 0.5 if args.tiny else 3)
    t0 = time.perf_counter()
    result["grad_ratio_batch"] = 8 if args.tiny else 100
    result["grad_ratio_init"] = grad_ratios(params, names, device, result["grad_ratio_batch"])
    result["grad_ratio_s"] = round(time.perf_counter() - t0, 1)

    for mode in modes:
        for k, name in enumerate(names):
            per = result["timings"].setdefault(name, {})
            if mode == "compile" and args.tiny and k > 0:
                per[mode] = {"status": "skipped (--tiny compiles the first variant only)"}
                continue
            if budget_left(budget) < (150 if mode == "compile" and not args.tiny else 20):
                per[mode] = {"status": "skipped (time budget)"}
                notes.append(f"{name} {mode}: skipped, {budget_left(budget):.0f} s of the budget left")
                continue
            try:
                per[mode] = measure(run_config(params, name, device, step_modes[mode], batch), dataset, device)
            except Exception as e:  # one failure must not lose the other figures
                per[mode] = {"status": f"error: {type(e).__name__}: {str(e)[:300]}"}
            print(f"gpu_check: {name} {mode}: {per[mode].get('s_per_epoch', per[mode]['status'])}"
                  f" ({time.perf_counter() - STARTED:.0f} s)", file=sys.stderr, flush=True)
            gc.collect()
            if mode == "compile":
                torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    result["projection"] = project(params, result["timings"], modes, IMPORT_S + init_s,
                                   full_train_n / train_n)
    if args.tiny:
        notes.append("--tiny: figures exercise the code paths; they are not a measurement")
    if device.type != "cuda":
        notes.append("graph: n/a on cpu (CUDA graphs need CUDA); compile on cpu is inductor "
                     "without CUDA graphs")
    result["wall_s"] = round(time.perf_counter() - STARTED, 1)
    missing = [k for k in EXPECTED_KEYS if k not in result]
    assert not missing, missing
    write_json(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
