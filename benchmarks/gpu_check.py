"""One-shot GPU check (issue 16): epoch times per step mode, memory, matmul rate, a projection of
the full reproduction, and the init gradient ratio on the device next to the CPU's.

    python benchmarks/gpu_check.py                          # on the GPU machine: <= ~7 minutes
    python benchmarks/gpu_check.py --device cpu --tiny      # dry run (CI): under a minute on 2 cores

Runs the library directly: no DVC, no network, synthetic CIFAR-shaped data
(gradflow.data.synthetic), imports nothing from tests/. Needs torch, pyyaml, tqdm.

What it measures, per variant (default VGG_08, VGG_38, VGG_38_BN_RC, settings from params.yaml):

  s/epoch    one training epoch over 47,500 images (--tiny: 100, batch 25) as gradflow.training.fit runs
             it: whole-set augmentation on the device, then per step normalise, channels_last,
             forward + loss + backward (gradflow.fastpath.TrainStep), Adam (fused on CUDA),
             loss/accuracy accumulated on the device, one host sync at the end. For each step
             mode: eager, compile (torch.compile; --compile-mode, default reduce-overhead on
             CUDA) and graph (the whole forward+loss+backward as one CUDA graph; "n/a on cpu").
             Untimed warm-up steps first (compilation, graph capture, cuDNN autotuning: their
             time is `setup_s`), then timed steps until the epoch ends or --step-cap-s passes;
             s/epoch = augmentation time + steps_per_epoch x mean step time (`extrapolated`
             says whether the timed steps covered less than the epoch). Validation (2,500
             images, eager, inference mode) is timed separately as `eval_s`.
  peak_mem   torch.cuda.max_memory_allocated per measurement on CUDA; on CPU the process's
             peak RSS (VmHWM, reset before each measurement where /proc allows).
  grad ratio mean |grad| of the first conv / of the last conv at initialisation (seed 0) on a
             fixed batch of synthetic images (gradflow.probe.probe, training mode), on the CPU
             in fp32 (the README's reference) and on the device in fp32 (TF32 off), with TF32
             on (what precision fp32 trains with on CUDA) and under bf16 autocast (precision
             auto on CUDA): bf16 must not lose plain VGG_38's ~1e-14.

Also the device's matmul rate and a projection of the default `dvc repro` (see `projection`
in the JSON: the method is written there). Every measurement is time-boxed; a global budget
(--budget-s) skips what would not fit, and says so, rather than overrun the machine's 7 minutes.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gradflow import fastpath  # noqa: E402
from gradflow import params as P  # noqa: E402
from gradflow.data import Augment, Split, synthetic  # noqa: E402
from gradflow.model import VGG  # noqa: E402
from gradflow.probe import probe  # noqa: E402
from gradflow.training import evaluate  # noqa: E402

IMPORT_S = time.perf_counter() - STARTED
DEFAULT_VARIANTS = ("VGG_08", "VGG_38", "VGG_38_BN_RC")
STEP_MODES = ("eager", "graph", "compile")  # measured in this order: compile is the slow one
EXPECTED_KEYS = ("device", "tiny", "torch", "variants", "timings", "matmul", "grad_ratio_init",
                 "projection", "wall_s", "notes")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - STARTED)


def matmul_rate(device: torch.device, tiny: bool, cap_s: float) -> dict:
    """TFLOP/s of a square matmul: bf16 and fp32 (TF32 off) on CUDA, fp32 on the CPU."""
    n = 512 if tiny else (8192 if device.type == "cuda" else 2048)
    out = {"n": n}
    dtypes = [torch.bfloat16, torch.float32] if device.type == "cuda" else [torch.float32]
    for dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            if reps % 5 == 0:
                sync(device)
                if time.perf_counter() - t0 > cap_s or reps >= 200:
                    break
        sync(device)
        dt = time.perf_counter() - t0
        out[f"{str(dtype).removeprefix('torch.')}_tflops"] = round(2 * n**3 * reps / dt / 1e12, 2)
    return out


def variant_settings(params: P.Params, name: str) -> tuple[P.Variant, int, float, float, int]:
    """(variant, batch size, lr, weight decay, epochs) with the variant's overrides."""
    if name not in params.variants:
        raise SystemExit(f"gpu_check: params.yaml has no variant {name!r} "
                         f"(defined: {', '.join(params.variants)})")
    v, t = params.variants[name], params.train
    pick = (lambda key: getattr(v, key) if getattr(v, key, None) is not None else getattr(t, key))
    return v, pick("batch_size"), pick("lr"), pick("weight_decay"), pick("epochs")


def channels_last_for(params: P.Params, device: torch.device) -> bool:
    cl = params.train.channels_last  # as gradflow.training.fit decides
    return cl is True or (cl == "auto" and device.type in ("cuda", "cpu"))


def conv_ratio(rows) -> tuple[float, float]:
    """(first-conv mean |grad|, first/last conv ratio) from gradflow.probe.probe rows."""
    convs = [(name, s[0]) for name, s, _ in rows if re.search(r"conv_\d+$", name)]
    first, last = convs[0][1], convs[-1][1]
    return first, (first / last if last else math.nan)


def grad_ratios(params: P.Params, names: list[str], device: torch.device, n: int) -> dict:
    """First/last conv ratio at init: CPU fp32, and on the device fp32 / tf32 / bf16 autocast."""
    images, labels = synthetic(n, params.data.seed, 1)  # a fixed batch: the synthetic test stream
    out = {}
    settings = [("cpu_fp32", torch.device("cpu"), False, False)]
    if device.type == "cuda":
        settings += [(f"{device.type}_fp32", device, False, False), (f"{device.type}_tf32", device, False, True)]
    settings += [(f"{device.type}_bf16", device, True, False)]
    for name in names:
        v = variant_settings(params, name)[0]
        row = {}
        for key, dev, bf16, tf32 in settings:
            if dev.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            aug = Augment(params.train.mean, params.train.std, 0, False, dev)
            x, y = aug.normalize(images.to(dev)), labels.to(dev)
            torch.manual_seed(params.train.seed)
            model = VGG(v, params.model).to(dev)
            if channels_last_for(params, dev):
                model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                rows = probe(model, x, y, False, v.aux_weight)
            first, ratio = conv_ratio(rows)
            row[key] = {"first_conv_mean_abs_grad": first, "ratio_first_last": ratio}
        cpu = row["cpu_fp32"]["ratio_first_last"]
        for key, r in row.items():  # how far each is from the CPU's fp32 value, in decades
            if key != "cpu_fp32" and cpu > 0 and r["ratio_first_last"] > 0:
                r["log10_vs_cpu_fp32"] = round(math.log10(r["ratio_first_last"] / cpu), 3)
        out[name] = row
    if device.type == "cuda":  # back to what fit sets
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return out


def measure(params: P.Params, name: str, mode: str, device: torch.device, data: dict, *,
            warmup: int, cap_s: float, compile_mode: str, with_eval: bool, batch: int | None) -> dict:
    """One variant, one step mode: setup (warm-up) time, step time, s/epoch, peak memory."""
    v, own_batch, lr, wd, _ = variant_settings(params, name)
    batch = batch or own_batch
    t = params.train
    train_x, train_y, val = data["train_x"], data["train_y"], data["val"]
    n = len(train_y)
    steps_per_epoch = -(-n // batch)
    cl = channels_last_for(params, device)
    torch.manual_seed(t.seed)
    model = VGG(v, params.model).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd, fused=device.type == "cuda")
    augment = Augment(t.mean, t.std, t.crop_padding, t.flip, device)
    step_mode = compile_mode if mode == "compile" else mode
    step = fastpath.TrainStep(model, optimizer, device, t.precision, mode=step_mode)
    if step.mode != step_mode:  # "graph" off CUDA
        return {"status": f"n/a on {device.type}", "note": step.note}
    reset_peak(device)
    model.train()
    sync(device)
    t0 = time.perf_counter()
    images, perm = augment.epoch(train_x, torch.Generator().manual_seed(t.seed * 1_000_003 + 1))
    labels = train_y[perm]
    sync(device)
    augment_s = time.perf_counter() - t0
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)

    def run_step(i: int) -> None:
        nonlocal loss_sum, correct
        lo = (i % steps_per_epoch) * batch
        x = augment.normalize(images[lo:lo + batch])
        y = labels[lo:lo + batch]
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        logits, main_sum = step(x, y, v.aux_weight, min(batch, n - lo))
        optimizer.step()
        loss_sum += main_sum
        correct += (logits.detach().argmax(1) == y).sum()

    t0 = time.perf_counter()
    for i in range(warmup):
        run_step(i)
    sync(device)
    setup_s = time.perf_counter() - t0
    loss_sum.zero_()
    timed, t0 = 0, time.perf_counter()
    while timed < steps_per_epoch:
        run_step(warmup + timed)
        timed += 1
        if timed % 10 == 0 or device.type == "cpu":
            if time.perf_counter() - t0 > cap_s:
                break
    sync(device)
    step_s = (time.perf_counter() - t0) / timed
    mean_loss = loss_sum.item() / (timed * batch)
    out = {"status": "ok", "mode": step.mode, "setup_s": round(setup_s, 3), "warmup_steps": warmup,
           "setup_extra_s": round(max(0.0, setup_s - warmup * step_s), 3),
           "step_ms": round(step_s * 1e3, 3), "steps_timed": timed, "steps_per_epoch": steps_per_epoch,
           "extrapolated": timed < steps_per_epoch, "augment_s": round(augment_s, 4),
           "s_per_epoch": round(augment_s + step_s * steps_per_epoch, 3),
           "images_per_s": round(batch / step_s, 1), "mean_train_loss": round(mean_loss, 4),
           "peak_mem_mb": round(peak_mb(device), 1), "peak_mem_kind":
           "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)"}
    if not math.isfinite(mean_loss):
        out["status"] = "non-finite loss"
    if with_eval:
        sync(device)
        t0 = time.perf_counter()
        evaluate(model, val, augment, t.eval_batch_size, device, cl, t.precision)  # .item(): synced
        out["eval_s"] = round(time.perf_counter() - t0, 4)
        out["eval_images"] = len(val)
    return out


def fix_class(v: P.Variant) -> str:
    """Which measured variant's cost a (depth, switches) point is projected from."""
    return "bn" if v.batch_norm else "plain"


def project(params: P.Params, timings: dict, modes, overhead_s: float, train_n: int,
            full_train_n: int, val_full: int, test_full: int) -> dict:
    """Serial wall time of the default reproduction (as `dvc repro` runs it: one stage at a time)
    for each step mode, from the measured s/epoch."""
    method = (
        "Per-epoch train time t(depth, fix) from the measured variants: plain networks linear in "
        "depth through VGG_08 (8) and VGG_38 (38), extrapolated linearly beyond 38 (every 6 depth "
        "adds one block per stage); variants with batch_norm scale that by the measured "
        "VGG_38_BN_RC / VGG_38 ratio; rc, he, dense and dsn are costed as plain (dense and dsn "
        "are not measured: an underestimate). Epoch times measured on fewer images than the "
        f"full {full_train_n} scale linearly; a variant's own batch size is costed "
        "at the measured per-image cost. Each train stage: epochs x (t + validation pass), one "
        "test pass (test/val images x the validation time), the mode's setup (compile/capture: warm-up time beyond its steps) "
        "once, and a fixed per-process overhead (this script's import + device init, "
        f"{overhead_s:.1f} s here); each gradients stage: that overhead once. Variants: "
        "params.yaml `variants` with their epochs; sweep: depths x fixes x sweep.epochs. "
        "Not counted: fetch, check, plots, DVC itself, and running several stages at once.")
    scale = full_train_n / max(1, train_n)
    out = {"method": method, "serial_s": {}, "train_s": {}, "sweep_s": {}, "points": []}
    base = timings.get("VGG_08", {}), timings.get("VGG_38", {}), timings.get("VGG_38_BN_RC", {})

    def per_epoch(depth: int, cls: str, mode: str, key: str):
        try:
            t08, t38 = base[0][mode][key], base[1][mode][key]
            t = t08 + (t38 - t08) * (depth - 8) / 30
            if cls == "bn":
                t *= base[2][mode][key] / t38 if t38 else 1.0
            return t
        except (KeyError, TypeError):
            return None

    points = []
    for name, v in params.variants.items():
        _, batch, _, _, epochs = variant_settings(params, name)
        points.append(("train", name, v.depth, fix_class(v), epochs, batch))
    for depth in params.sweep.depths:
        for fix in params.sweep.fixes:
            v = P.Variant(depth=depth, **P.SWEEP_FIXES[fix])
            points.append(("sweep", f"{depth}-{fix}", depth, fix_class(v), params.sweep.epochs,
                           params.train.batch_size))
    out["points"] = [{"kind": k, "name": nm, "depth": d, "cost_class": c, "epochs": e}
                     for k, nm, d, c, e, _ in points]
    for mode in modes:
        total = {"train": 0.0, "sweep": 0.0}
        ok = True
        for kind, _, depth, cls, epochs, batch in points:
            t = per_epoch(depth, cls, mode, "s_per_epoch")
            ev = per_epoch(depth, cls, "eager", "eval_s")
            setup = per_epoch(depth, cls, mode, "setup_extra_s")
            if t is None or ev is None or setup is None:
                ok = False
                break
            t_epoch = t * scale  # the same per-image cost at any batch size (an assumption)
            ev_full = ev * val_full / max(1, timings_eval_images(timings))
            total[kind] += (epochs * (t_epoch + ev_full) + ev_full * test_full / max(1, val_full)
                            + setup + overhead_s + (overhead_s if kind == "train" else 0.0))
        if ok:
            out["train_s"][mode] = round(total["train"], 1)
            out["sweep_s"][mode] = round(total["sweep"], 1)
            out["serial_s"][mode] = round(total["train"] + total["sweep"], 1)
        else:
            out["serial_s"][mode] = None
    return out


def timings_eval_images(timings: dict) -> int:
    for per_mode in timings.values():
        e = per_mode.get("eager", {})
        if "eval_images" in e:
            return e["eval_images"]
    return 1


def table(result: dict) -> str:
    lines = [f"gpu_check on {result['device']} ({result['device_name']}), torch {result['torch']}"
             f"{', TINY dry run' if result['tiny'] else ''}: {result['train_images']} train images"]
    lines.append(f"{'variant':<14}{'mode':<9}{'s/epoch':>9}{'step ms':>9}{'setup s':>9}"
                 f"{'peak MB':>9}  note")
    for name, per_mode in result["timings"].items():
        for mode, m in per_mode.items():
            if m.get("status") == "ok":
                note = "extrapolated" if m["extrapolated"] else "full epoch"
                if "eval_s" in m:
                    note += f"; eval {m['eval_s']:.2f}s"
                lines.append(f"{name:<14}{mode:<9}{m['s_per_epoch']:>9.2f}{m['step_ms']:>9.2f}"
                             f"{m['setup_s']:>9.2f}{m['peak_mem_mb']:>9.0f}  {note}")
            else:
                lines.append(f"{name:<14}{mode:<9}{'-':>9}{'-':>9}{'-':>9}{'-':>9}  {m.get('status')}")
    mm = result["matmul"]
    lines.append("matmul " + ", ".join(f"{k} {v}" for k, v in mm.items()))
    lines.append("grad ratio first/last conv at init:")
    for name, row in result["grad_ratio_init"].items():
        lines.append(f"  {name:<14}" + "  ".join(f"{k} {r['ratio_first_last']:.2e}" for k, r in row.items()))
    proj = result["projection"]
    lines.append("projected default reproduction, serial: " + ", ".join(
        f"{m} {s / 60:.1f} min" if s is not None else f"{m} n/a" for m, s in proj["serial_s"].items()))
    lines.append(f"wall {result['wall_s']:.1f} s; JSON: {result['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--tiny", action="store_true", help="dry run: 100 train images in batches of "
                    "25, short caps, compile on the first variant only")
    ap.add_argument("--batch", type=int, default=None, help="training batch size (default: the "
                    "variant's from params.yaml; --tiny 25)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check.json"), help="JSON path")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--modes", default=",".join(STEP_MODES), help="subset of eager,graph,compile")
    ap.add_argument("--compile-mode", choices=("auto", "compile", "reduce-overhead"), default="auto",
                    help="torch.compile mode of the compile column; auto: reduce-overhead on CUDA")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip measurements that would start after this many seconds "
                    "(default 360; --tiny 240)")
    ap.add_argument("--step-cap-s", type=float, default=None,
                    help="timed seconds per measurement (default 12; --tiny 1)")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    torch.zeros(1, device=device) + 1
    sync(device)
    init_s = time.perf_counter() - t0
    if device.type == "cuda":  # as fit
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    budget = Budget(args.budget_s if args.budget_s is not None else (240 if args.tiny else 360))
    cap_s = args.step_cap_s if args.step_cap_s is not None else (1 if args.tiny else 12)
    compile_mode = ("reduce-overhead" if device.type == "cuda" else "compile") \
        if args.compile_mode == "auto" else args.compile_mode
    names = [s for s in args.variants.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    params = P.load(args.params)
    notes = []

    full_train_n = params.data.synthetic_train_size - params.data.val_size
    train_n, val_n = (100, 50) if args.tiny else (full_train_n, params.data.val_size)
    batch = args.batch or (25 if args.tiny else None)
    t0 = time.perf_counter()
    images, labels = synthetic(train_n + val_n, params.data.seed, 0)
    data = {"train_x": images[:train_n].to(device), "train_y": labels[:train_n].to(device),
            "val": Split(images[train_n:].to(device), labels[train_n:].to(device))}
    data_s = time.perf_counter() - t0

    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device)
              if device.type == "cuda" else platform.processor() or platform.machine(),
              "tiny": args.tiny, "torch": torch.__version__, "python": platform.python_version(),
              "cpu_threads": torch.get_num_threads(), "variants": names, "modes": modes,
              "compile_mode": compile_mode, "precision": params.train.precision,
              "train_images": train_n, "batch_size": batch or params.train.batch_size, "val_images": val_n, "full_train_images": full_train_n,
              "import_s": round(IMPORT_S, 2), "device_init_s": round(init_s, 2),
              "data_s": round(data_s, 2), "timings": {}, "out": args.out, "notes": notes}

    result["matmul"] = matmul_rate(device, args.tiny, 0.5 if args.tiny else 3)
    t0 = time.perf_counter()
    result["grad_ratio_init"] = grad_ratios(params, names, device, 8 if args.tiny else 100)
    result["grad_ratio_s"] = round(time.perf_counter() - t0, 1)
    result["grad_ratio_batch"] = 8 if args.tiny else 100

    warmup = 1 if args.tiny else 5  # graph: 3 more warm-up passes inside the capture
    for mode in modes:
        for k, name in enumerate(names):
            per = result["timings"].setdefault(name, {})
            if mode == "compile" and args.tiny and k > 0:
                per[mode] = {"status": "skipped (--tiny compiles the first variant only)"}
                continue
            if budget.left() < (120 if mode == "compile" and not args.tiny else cap_s + 5):
                per[mode] = {"status": "skipped (time budget)"}
                notes.append(f"{name} {mode}: skipped, {budget.left():.0f} s of the budget left")
                continue
            try:
                per[mode] = measure(params, name, mode, device, data, warmup=warmup, cap_s=cap_s,
                                    compile_mode=compile_mode, with_eval=mode == "eager", batch=batch)
            except Exception as e:  # one failure must not lose the other figures
                per[mode] = {"status": f"error: {type(e).__name__}: {str(e)[:300]}"}
            print(f"gpu_check: {name} {mode}: {per[mode].get('s_per_epoch', per[mode]['status'])}"
                  f" ({time.perf_counter() - STARTED:.0f} s)", file=sys.stderr, flush=True)
            gc.collect()
            if mode == "compile":
                torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    result["projection"] = project(
        params, result["timings"], modes, IMPORT_S + init_s, train_n, full_train_n,
        params.data.val_size, params.data.synthetic_test_size)
    if args.tiny:
        notes.append("--tiny: figures exercise the code paths; they are not a measurement")
    if device.type != "cuda":
        notes.append("graph: n/a on cpu (CUDA graphs need CUDA); compile on cpu is inductor "
                     "without CUDA graphs")
    result["wall_s"] = round(time.perf_counter() - STARTED, 1)
    missing = [k for k in EXPECTED_KEYS if k not in result]
    assert not missing, missing
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, out)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
