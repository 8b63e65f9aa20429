"""Training throughput on the current device, against a reference-style loop.

    .venv/bin/python benchmarks/throughput.py              # ~2.5 minutes on 2 quiet CPU cores
    .venv/bin/python benchmarks/throughput.py --seconds 2 --skip-dvc     # quicker
    .venv/bin/python benchmarks/throughput.py --seconds 10 --rounds 3    # steadier
    .venv/bin/python benchmarks/throughput.py --train channels_last=true # time a proposal

What it measures, all in one run so the ratios hold even when absolute speed drifts:

  ours       the project's real training loop: `gradflow.training.fit` on an in-memory
             `gradflow.data.Dataset` of synthetic CIFAR-shaped images (train.* settings from
             params.yaml, or --train overrides; one epoch; capture off, like the reference).
             The figure is fit's own `images_per_second`: the epoch's train time only
             (whole-set augmentation, the steps, the end-of-epoch host sync), not the
             validation pass, model building or the test pass (100-image splits anyway).
             A short calibration fit sizes the epoch to take about --seconds.
  reference  what the coursework framework does (pytorch_mlp_framework): a Dataset of
             HWC uint8 arrays turned into PIL images, RandomCrop(32, padding=4),
             RandomHorizontalFlip, ToTensor, Normalize in a shuffling DataLoader with
             num_workers=4 (the framework's value), and per step x.float().to(device),
             loss.cpu().data.numpy() and np.mean(list(predicted.eq(y).cpu())) for accuracy.
             Same images, same model (gradflow.model.VGG), same Adam settings, fp32. It runs
             for about --seconds after two untimed batches (worker start-up, which the
             reference pays once per 475-step epoch, would otherwise dominate a short run).
  ratio      ours / reference images/s; measurements alternate (ours, reference, ours, ...)
             and each side's figure pools its rounds, to cancel drift.

Also: the device's matmul rate (2048^3 fp32 on CPU; 8192^3 bf16 on CUDA, the dtype training
autocasts to there) and the FLOP limit it puts on training, rate / (3 x forward FLOPs per
image), forward FLOPs counted from the model (conv and linear multiply-adds x 2, by hooks);
gradient capture on vs off at the default sampling of a full CIFAR-100 run (every_n_steps
auto over 475 steps = every 47), on VGG_08 (the cheapest step, so the largest relative
overhead), in on/off pairs ordered ABBA over epochs of whole sampling intervals, after an
untimed epoch of the same size; an estimate of the same for every model from timing the
capture calls alone; peak memory per path (the process's peak RSS, reset between paths
through /proc/self/clear_refs; the largest DataLoader worker's, which counts pages shared with
the main process; torch.cuda.max_memory_allocated on CUDA); and a no-op `dvc repro` of the
whole pipeline in a temporary copy of the project (tiny synthetic params, 11 stages; the
real DAG, ~40 stages, with --dvc-full-dag) against a bare `dvc version`, median of 3 each.

Every measurement records `other_load_cores`, the CPU other processes used meanwhile: on a
2-core machine PyTorch's two threads wait on each other whenever one is descheduled, so even
one busy core elsewhere can halve the figures; the table warns when that happened.

Each model runs in its own subprocess so its memory peak is its own. Results go to
benchmarks/results.json (atomically) and a short table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from gradflow import params as P  # noqa: E402
from gradflow.capture import GradientCapture  # noqa: E402
from gradflow.data import Dataset, Split, synthetic  # noqa: E402
from gradflow.files import write_json  # noqa: E402
from gradflow.model import VGG, probed_parameters  # noqa: E402
from gradflow.device import pick_device  # noqa: E402
from gradflow.training import capture_every, fit  # noqa: E402
from benchmarks.measure import matmul_gflops, memory, reset_peak, sync  # noqa: E402
from benchmarks.tiny import copy_files, write_params  # noqa: E402
from gradflow.reference import TRAIN_IMAGES  # noqa: E402
from gradflow.verdict import NUM_CLASSES  # noqa: E402

MODELS = ("VGG_08", "VGG_38", "VGG_38_BN_RC")
GOALS = {"VGG_08": 2.5, "VGG_38": 1.8}  # CPU: ours / reference at least this
CAPTURE_GOAL = 0.03  # capture on at most 3% slower than off
DVC_GOAL = 2.0  # no-op dvc repro at most 2x a bare dvc version
REFERENCE_WORKERS = 4  # pytorch_mlp_framework's DataLoader(num_workers=4)
RESULTS = ROOT / "benchmarks" / "results.json"
QUIET_CORES = 0.2  # other processes' load above which a measurement is flagged


# --- helpers ------------------------------------------------------------------------------

class OtherLoad:
    """Cores kept busy by other processes during a measurement: the machine's busy CPU time
    (/proc/stat) minus this process's and its reaped children's. Other jobs on a 2-core
    machine change the figures a lot; this says when they did."""

    def __enter__(self):
        self.start = (self._machine(), self._ours(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        machine, ours, wall = self._machine(), self._ours(), time.perf_counter()
        if machine is None or self.start[0] is None:
            self.cores = None
        else:
            other = (machine - self.start[0]) - (ours - self.start[1])
            self.cores = round(max(0.0, other) / (wall - self.start[2]), 2)

    @staticmethod
    def _machine() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def config(name: str, device: str, every: int | None = None, overrides: list[str] = ()) -> P.RunConfig:
    """params.yaml's settings for `name`, one epoch, on `device`, with `train` KEY=VALUE
    overrides (to time a proposed setting); capture every `every` steps."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update({k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)})
    raw["train"].update(epochs=1, device=device)
    cfg = P.parse(raw).run(name)
    every = every or full_run_every(cfg)
    return dataclasses.replace(cfg, gradients=dataclasses.replace(cfg.gradients, every_n_steps=every))


def full_run_every(cfg: P.RunConfig) -> int:
    """The sampling interval `every_n_steps` gives in a full CIFAR-100 run (47 for auto)."""
    return capture_every(cfg, -(-TRAIN_IMAGES // cfg.train.batch_size))


class Images:
    """A pool of synthetic CIFAR-shaped images, tiled to any length (the data's content does
    not change the speed, only its size does)."""

    def __init__(self, pool: int = 5000, seed: int = 0):
        self.x, self.y = synthetic(pool, seed, 0)
        self.hold_x, self.hold_y = synthetic(200, seed, 1)

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(n) % len(self.y)
        return self.x[idx], self.y[idx]

    def dataset(self, n: int) -> Dataset:
        x, y = self.take(n)
        small = Split(self.hold_x[:100], self.hold_y[:100])  # val and test: one cheap pass each
        return Dataset(Split(x, y), small, Split(self.hold_x[100:], self.hold_y[100:]),
                       [str(c) for c in range(NUM_CLASSES)], "synthetic")


def round_to(n: float, batch: int, least: int) -> int:
    return max(least, int(round(n / batch)) * batch)


# --- the two training loops ---------------------------------------------------------------

def time_ours(cfg: P.RunConfig, images: Images, n: int, capture: bool = False) -> float:
    """images/s of one epoch of the real training loop over n images."""
    return fit(cfg, images.dataset(n), capture=capture).images_per_second


class ReferenceCIFAR(torch.utils.data.Dataset):
    """What torchvision's CIFAR100 and the coursework's data provider do per image."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = self.data[index], int(self.targets[index])
        return self.transform(Image.fromarray(img)), target


def time_reference(cfg: P.RunConfig, images: Images, n_max: int, seconds: float,
                   device: torch.device, workers: int) -> tuple[float, float]:
    """(images/s, worker peak RSS MiB) of the reference-style loop, timed for about `seconds`
    after two untimed batches."""
    from torchvision import transforms
    t = cfg.train
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=t.crop_padding),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(t.mean, t.std),
    ])
    x, y = images.take(n_max)
    dataset = ReferenceCIFAR(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, shuffle=True,
                                         num_workers=workers)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # the framework leaves PyTorch's defaults
    torch.manual_seed(t.seed)
    model = VGG(cfg.variant, cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, amsgrad=False, weight_decay=t.weight_decay)
    losses, accuracies = [], []

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # ExperimentBuilder.run_train_iter
        model.train()
        x, y = x.float().to(device=device), y.long().to(device=device)
        out, _ = model(x)
        loss = F.cross_entropy(input=out, target=y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _, predicted = torch.max(out.data, 1)
        accuracies.append(np.mean(list(predicted.eq(y.data).cpu())))
        losses.append(loss.cpu().data.numpy())

    batches = iter(loader)
    for _ in range(2):
        step(*next(batches))
    sync(device)
    started, count = time.perf_counter(), 0
    for x, y in batches:
        step(x, y)
        count += len(y)
        if time.perf_counter() - started >= seconds:
            break
    sync(device)
    elapsed = time.perf_counter() - started
    del batches  # shuts the workers down, so their peak RSS is in RUSAGE_CHILDREN
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return count / elapsed, worker_rss


def capture_seconds(cfg: P.RunConfig, images: Images, device: torch.device, reps: int = 5) -> float:
    """Seconds one gradient-capture sample adds to a step (the before/after_step calls)."""
    torch.manual_seed(0)
    model = VGG(cfg.variant, cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    probed = probed_parameters(model, cfg.gradients.include_bias)
    grad_capture = GradientCapture([nm for nm, _ in probed], [p for _, p in probed], 1, reps + 1)
    x, y = images.take(cfg.train.batch_size)
    logits, _ = model(x.to(device).float() / 255)
    F.cross_entropy(logits, y.to(device)).backward()
    grad_capture.before_step(0)  # warm-up: first calls allocate
    grad_capture.after_step()
    sync(device)
    started = time.perf_counter()
    for i in range(reps):
        grad_capture.before_step(i + 1)
        grad_capture.after_step()
    sync(device)
    return (time.perf_counter() - started) / reps


# --- subprocess workers -------------------------------------------------------------------

def calibrate(cfg: P.RunConfig, images: Images, seconds: float, capture: bool = False) -> float:
    """A warm-up epoch (kernels, allocator), then a rough images/s to size the timed epochs."""
    n = 2 * cfg.train.batch_size
    time_ours(cfg, images, n, capture)
    rate = time_ours(cfg, images, n, capture)
    if n / rate < seconds / 8:  # a fast device: refine on a longer epoch
        n = round_to(rate * seconds / 4, cfg.train.batch_size, n)
        rate = time_ours(cfg, images, n, capture)
    return rate


def worker_model(args) -> dict:
    """ours vs reference for one model, alternating rounds; memory per path."""
    cfg = config(args.worker, args.device, overrides=args.train)
    device = pick_device(cfg.train.device)
    images, batch = Images(), cfg.train.batch_size
    n = round_to(calibrate(cfg, images, args.seconds) * args.seconds, batch, 3 * batch)
    ours, reference, mem, other = [], [], {}, []
    for _ in range(args.rounds):
        reset_peak(device)
        with OtherLoad() as load:
            ours.append(time_ours(cfg, images, n))
        other.append(load.cores)
        mem["ours"] = memory(device)
        reset_peak(device)
        with OtherLoad() as load:
            ips, worker_rss = time_reference(cfg, images, max(n, 10 * batch), args.seconds, device, args.workers)
        other.append(load.cores)
        reference.append(ips)
        mem["reference"] = {**memory(device), "largest_worker_rss_mb": round(worker_rss, 1)}
    # Pool the rounds: total images / total seconds on each side (ours: equal images per
    # round, a harmonic mean; reference: equal seconds per round, a plain mean).
    pooled = (lambda rates, each: len(rates) * each / sum(each / r for r in rates))
    return {"images_per_epoch": n, "ours_rounds": ours, "reference_rounds": reference,
            "ours": pooled(ours, n), "reference": statistics.fmean(reference),
            "memory": mem, "other_load_cores": other, "capture_seconds_per_sample": capture_seconds(cfg, images, device),
            "every_n_steps": cfg.gradients.every_n_steps, "batch_size": batch,
            "device": str(device), "threads": torch.get_num_threads()}


def worker_capture(args) -> dict:
    """Capture on vs off at default sampling, in ABBA pairs; each epoch spans whole sampling
    intervals (at least one), so the sampling density is the real run's."""
    cfg = config(args.capture_model, args.device, overrides=args.train)
    images, batch, every = Images(), cfg.train.batch_size, cfg.gradients.every_n_steps
    rate = calibrate(cfg, images, args.seconds, capture=True)
    n = every * batch * max(1, round(rate * args.seconds / (every * batch)))
    time_ours(cfg, images, n, capture=True)  # first touch of an epoch this size: untimed
    pairs = []
    for i in range(args.capture_pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        with OtherLoad() as load:
            rate = {on: time_ours(cfg, images, n, capture=on) for on in order}
        pairs.append({"on": rate[True], "off": rate[False], "overhead": rate[False] / rate[True] - 1,
                      "other_load_cores": load.cores})
    overheads = [p["overhead"] for p in pairs]
    # Run-to-run noise of fit() here is several percent, far above the capture's own cost:
    # the standard error says how far the median can be trusted.
    stderr = statistics.stdev(overheads) / math.sqrt(len(overheads)) if len(overheads) > 1 else None
    return {"model": cfg.name, "every_n_steps": every, "images_per_run": n, "pairs": pairs,
            "overhead": statistics.median(overheads), "overhead_stderr": stderr}


def run_worker(kind: str, value: str, args) -> dict:
    cmd = [sys.executable, __file__, f"--{kind}", value, "--device", args.device,
           "--seconds", str(args.seconds), "--rounds", str(args.rounds),
           "--workers", str(args.workers), "--capture-pairs", str(args.capture_pairs)]
    cmd += [f"--train={o}" for o in args.train]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --- device and model facts ---------------------------------------------------------------

def matmul_rate(device: torch.device, min_seconds: float = 1.0) -> dict:
    """GFLOP/s of one large matmul in the dtype training computes in on this device."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    return {"size": size, "dtype": str(dtype).removeprefix("torch."),
            "gflops": matmul_gflops(device, dtype, size, min_seconds)}


def forward_flops(cfg: P.RunConfig) -> int:
    """Forward FLOPs per image: 2 x the multiply-adds of every conv and linear layer."""
    model = VGG(cfg.variant, cfg.model).eval()
    macs = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * math.prod(module.kernel_size)
            macs.append(output.numel() * k)
        else:
            macs.append(output.numel() * module.in_features)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return 2 * sum(macs)


# --- dvc ----------------------------------------------------------------------------------

DVC = str(Path(sys.executable).with_name("dvc"))


def tiny_project(dst: Path, overrides: dict) -> Path:
    """The tiny project of the tests (benchmarks/tiny.py) with overrides, as a git repo with one commit."""
    write_params(copy_files(dst), overrides)
    for cmd in (["init", "-q"], ["-c", "user.email=bench@example.com", "-c", "user.name=bench", "add", "-A"],
                ["-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=dst, check=True, capture_output=True)
    return dst


def dvc_noop(full_dag: bool, reps: int = 3) -> dict:
    """Median wall time of a no-op `dvc repro` vs a bare `dvc version`, in a temporary copy
    of the project with tiny synthetic params, after one full `dvc repro`."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LOCAL_RANK", None)
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as tmp:
        real = yaml.safe_load((ROOT / "params.yaml").read_text())
        # --dvc-full-dag: every variant and sweep point of params.yaml, tiny data
        overrides = {"variants": real["variants"],
                     "sweep": {**real["sweep"], "epochs": 1}} if full_dag else {}
        project = tiny_project(Path(tmp) / "project", overrides)
        env["PYTHONPATH"] = str(project)

        def dvc(*cmd: str) -> tuple[float, subprocess.CompletedProcess]:
            started = time.perf_counter()
            proc = subprocess.run([DVC, *cmd], cwd=project, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"dvc {' '.join(cmd)} exited {proc.returncode}\n"
                                   f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            return time.perf_counter() - started, proc

        first, _ = dvc("repro")
        repro, version = [], []
        for _ in range(reps):  # interleaved, so drift hits both alike
            seconds, proc = dvc("repro")
            if "Running stage" in proc.stdout:
                raise RuntimeError(f"the second dvc repro was not a no-op:\n{proc.stdout[-2000:]}")
            repro.append(seconds)
            version.append(dvc("version")[0])
        stages = dvc("stage", "list")[1].stdout.strip().splitlines()
    r, v = statistics.median(repro), statistics.median(version)
    return {"stages": len(stages),
            "first_repro_seconds": round(first, 2), "repro_noop_seconds": [round(s, 3) for s in repro],
            "version_seconds": [round(s, 3) for s in version], "repro_noop_median": round(r, 3),
            "version_median": round(v, 3), "ratio": round(r / v, 2), "goal": DVC_GOAL,
            "goal_met": r / v <= DVC_GOAL}


# --- the report ---------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(prog="benchmarks/throughput.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ap.add_argument("--seconds", type=float, default=4.0, help="target seconds per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="ours/reference rounds per model")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--workers", type=int, default=REFERENCE_WORKERS,
                    help="reference DataLoader workers (the framework uses 4)")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="override a train.* param for our loop, e.g. channels_last=true")
    ap.add_argument("--capture-model", default="VGG_08")
    ap.add_argument("--capture-pairs", type=int, default=3, help="on/off pairs, ABBA order")
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--skip-dvc", action="store_true")
    ap.add_argument("--dvc-full-dag", action="store_true",
                    help="time dvc on params.yaml's variants and sweep (~40 stages; minutes more)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--capture-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker_model(args)))
        return
    if args.capture_worker:
        args.capture_model = args.capture_worker
        print("RESULT " + json.dumps(worker_capture(args)))
        return

    started = time.perf_counter()
    device = pick_device(args.device)
    load_before = os.getloadavg()
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average {load_before[0]:.2f}", flush=True)
    mm = matmul_rate(device)
    print(f"matmul {mm['size']}^3 {mm['dtype']}: {mm['gflops']:.0f} GFLOP/s", flush=True)

    models = {}
    for name in args.models:
        cfg = config(name, args.device, overrides=args.train)
        flops = forward_flops(cfg)
        w = run_worker("worker", name, args)
        limit = mm["gflops"] * 1e9 / (3 * flops)
        step_seconds = w["batch_size"] / w["ours"]
        models[name] = {
            "ours_images_per_second": round(w["ours"], 1),
            "reference_images_per_second": round(w["reference"], 1),
            "ratio": round(w["ours"] / w["reference"], 2),
            "goal": GOALS.get(name) if device.type == "cpu" else None,
            "goal_met": (w["ours"] / w["reference"] >= GOALS[name]) if name in GOALS and device.type == "cpu" else None,
            "ours_rounds": [round(r, 1) for r in w["ours_rounds"]],
            "reference_rounds": [round(r, 1) for r in w["reference_rounds"]],
            "images_per_epoch": w["images_per_epoch"],
            "forward_mflop_per_image": round(flops / 1e6, 1),
            "flop_limit_images_per_second": round(limit, 1),
            "flop_limit_share": round(w["ours"] / limit, 3),
            "memory": w["memory"],
            "other_load_cores": w["other_load_cores"],  # per measurement: ours, ref, ours, ...
            # What one capture sample adds, spread over the steps between samples.
            "capture_overhead_estimate": round(w["capture_seconds_per_sample"] / (w["every_n_steps"] * step_seconds), 4),
        }
        m = models[name]
        print(f"{name}: ours {m['ours_images_per_second']:.0f} img/s, reference "
              f"{m['reference_images_per_second']:.0f} img/s, ratio {m['ratio']:.2f}", flush=True)

    capture = None
    if not args.skip_capture:
        capture = run_worker("capture-worker", args.capture_model, args)
        capture.update(goal=CAPTURE_GOAL, goal_met=capture["overhead"] <= CAPTURE_GOAL)
        print(f"capture on vs off ({capture['model']}, every {capture['every_n_steps']} steps): "
              f"{100 * capture['overhead']:+.1f}%", flush=True)

    dvc = None
    if not args.skip_dvc:
        dvc = dvc_noop(args.dvc_full_dag)
        print(f"dvc: no-op repro {dvc['repro_noop_median']:.2f}s vs version {dvc['version_median']:.2f}s "
              f"({dvc['stages']} stages)", flush=True)

    results = {
        "device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "data": "synthetic (CIFAR-shaped)", "seconds_per_measurement": args.seconds,
        "rounds": args.rounds, "reference_workers": args.workers, "train_overrides": args.train,
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
        "matmul": mm, "models": models, "capture": capture, "dvc": dvc,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, results)
    print_table(results, args.out)


def print_table(r: dict, out: Path) -> None:
    print(f"\n{'model':<14}{'ours img/s':>11}{'ref img/s':>10}{'ratio':>7}{'goal':>6}"
          f"{'MFLOP/img':>10}{'limit img/s':>12}{'share':>7}{'RSS MiB ours/ref':>18}")
    for name, m in r["models"].items():
        goal = f"{m['goal']:.1f}" if m["goal"] else "-"
        mem = m["memory"]
        print(f"{name:<14}{m['ours_images_per_second']:>11.0f}{m['reference_images_per_second']:>10.0f}"
              f"{m['ratio']:>7.2f}{goal:>6}{m['forward_mflop_per_image']:>10.1f}"
              f"{m['flop_limit_images_per_second']:>12.0f}{m['flop_limit_share']:>7.2f}"
              f"{mem['ours']['peak_rss_mb']:>9.0f}/{mem['reference']['peak_rss_mb']:.0f}")
        if "cuda_max_memory_allocated_mb" in mem["ours"]:
            print(f"{'':<14}cuda max allocated MiB: ours {mem['ours']['cuda_max_memory_allocated_mb']:.0f}, "
                  f"reference {mem['reference']['cuda_max_memory_allocated_mb']:.0f}")
    print(f"matmul: {r['matmul']['gflops']:.0f} GFLOP/s ({r['matmul']['size']}^3 {r['matmul']['dtype']})")
    if r["capture"]:
        c = r["capture"]
        est = ", ".join(f"{n} {100 * m['capture_overhead_estimate']:.2f}%" for n, m in r["models"].items())
        noise = f" +- {100 * c['overhead_stderr']:.1f}" if c["overhead_stderr"] is not None else ""
        print(f"gradient capture, every {c['every_n_steps']} steps, on vs off ({c['model']}, "
              f"{len(c['pairs'])} pairs ABBA): {100 * c['overhead']:+.2f}%{noise} (goal <= "
              f"{100 * c['goal']:.0f}%); from timing the capture calls alone: {est}")
    if r["dvc"]:
        d = r["dvc"]
        print(f"dvc no-op repro (whole pipeline, {d['stages']} stages): {d['repro_noop_median']:.2f}s vs "
              f"dvc version {d['version_median']:.2f}s = {d['ratio']:.2f}x (goal <= {d['goal']:.0f}x)")
    busy = [c for m in r["models"].values() for c in m["other_load_cores"] if c is not None]
    busy += [p["other_load_cores"] for p in (r["capture"] or {}).get("pairs", []) if p["other_load_cores"] is not None]
    if busy and max(busy) > QUIET_CORES:
        print(f"WARNING: other processes kept up to {max(busy):.2f} cores busy during the measurements; "
              f"the figures are unreliable, rerun on a quiet machine")
    la = r["load_average"]
    print(f"load average {la['start'][0]:.2f} -> {la['end'][0]:.2f}; {r['total_seconds']:.0f}s in all; "
          f"written to {out}")


if __name__ == "__main__":
    main()
