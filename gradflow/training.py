"""The training loop shared by the train and sweep stages.

`fit` reads top to bottom: `build` (pick a device, put the uint8 dataset on it, build the model
and the optimizer), `restore` (resume from the checkpoint, or start over), then per epoch
`train_epoch` (augment the whole training set with a few tensor ops, take the optimizer steps
without syncing with the host), `end_of_epoch` (evaluate, keep the best-validation weights;
stop on divergence: gradflow.verdict.is_divergent) and `save` (snapshot, resume checkpoint),
and last `finish` (the test set). The host reads the device once per epoch, and once at each
point of the curves inside it (train.eval_every).

What `build` sets up once is a `Run`; what carries from one epoch to the next (the history,
the best weights, the snapshots so far) is its `Progress`, the part a resume restores. The
resume checkpoint and the weight snapshots are gradflow/resume.py. Under torchrun
(gradflow/distributed.py) each process takes its shard of every global batch and
DistributedDataParallel all-reduces the gradients; only rank 0 writes anything.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gradflow import fastpath, paths
from gradflow.capture import CaptureRow, GradientCapture, first_last_conv_ratio
from gradflow.cli import Interrupted, signal_number
from gradflow.data import Augment, Dataset, Split
from gradflow.device import autocast, pick_device, uses_bf16, uses_channels_last
from gradflow.distributed import Dist, init_distributed, wrap
from gradflow.files import require_writable, writing
from gradflow.loss import aux_weight_at
from gradflow.model import VGG, probed_parameters
from gradflow.params import RunConfig
from gradflow.resume import Checkpoint, ResumeState, cpu_weights, save_snapshot
from gradflow.verdict import DIVERGED_LOSS, is_divergent, verdict

PROGRESS_SECONDS = 15  # within an epoch, a progress line this often where stderr is no terminal


@dataclass
class Run:
    """What `build` sets up once: where the run computes, the model, its optimizer and schedule,
    the data on the device. The epochs train the weights; they reassign none of these."""
    cfg: RunConfig
    device: torch.device
    dist: Dist
    channels_last: bool
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    augment: Augment
    train: Split  # on the device, as is val
    val: Split
    grad_capture: GradientCapture

    def evaluate(self, split: Split) -> dict:
        t = self.cfg.train
        return evaluate(self.model, split, self.augment, t.eval_batch_size, self.device,
                        self.channels_last, t.precision)


@dataclass
class Progress:
    """What the run carries from one epoch to the next (and its resume checkpoint keeps)."""
    result: Result  # the history, the points, the best weights so far
    train_seconds: float  # the steps' own time so far
    best_acc: float  # the best validation accuracy so far (-1: none yet)
    snapshots: dict  # epoch -> weights saved for the gradients stage, to rewrite them on resume
    saved_epoch: int  # the epoch the resume checkpoint holds (0: none)


def fit(cfg: RunConfig, dataset: Dataset, *, workdir: Path | None = None, checkpoint: Path | None = None,
        capture: bool = True, progress: str = "", on_point=None, stop_after: int | None = None,
        on_phase=None) -> Result:
    """Train one variant. With `workdir`, save weight snapshots at the configured epochs and a
    resume checkpoint after every epoch there. With `on_point`, the run also stops every
    train.eval_every images inside an epoch to evaluate a point of its curves, and calls
    `on_point(points)` (rank 0) after each point and each epoch's end. `stop_after` ends the run
    after that many epochs of its schedule (the calibration: the first 3 of the coursework's
    100). `on_phase(phase, epoch)`, if given, is called as each part of the run ends: "build"
    (restore included; the epoch it continues after), then per epoch "steps" and "end" (its
    evaluation, and its save with `workdir`; none after a divergence), then "test" (`finish`):
    benchmarks/gpu_check.py times this very loop by it."""
    run = build(cfg, dataset)
    # Every rank resumes from the same file (optimizer state included); only rank 0 writes it.
    ckpt = Checkpoint(checkpoint if workdir else None,
                      {"config": cfg.to_dict(), "data": dataset.fingerprint(), "world": run.dist.world})
    state = restore(run, ckpt, workdir)
    # Wrapped for the steps only now: DDP broadcasts rank 0's (restored) weights as it wraps.
    mode = fastpath.resolve(cfg.train.compile, run.device, run.dist.world)
    train_step = fastpath.TrainStep(wrap(run.model, run.dist, run.device), run.optimizer, run.device,
                                    cfg.train.precision, mode=mode)
    phase = on_phase or (lambda name, epoch: None)
    epoch = state.saved_epoch  # 0, or the epoch the checkpoint was saved after
    phase("build", epoch)
    try:
        for epoch in range(epoch + 1, min(cfg.train.epochs, stop_after or cfg.train.epochs) + 1):
            totals = train_epoch(run, state, train_step, epoch, capture, progress, on_point)
            phase("steps", epoch)
            if not end_of_epoch(run, state, epoch, totals, progress, on_point):
                break
            if workdir and run.dist.main:
                save(run, state, epoch, workdir, ckpt)
            phase("end", epoch)
        result = finish(run, state, train_step, workdir, dataset)
        phase("test", epoch)
        return result
    except (KeyboardInterrupt, Interrupted) as e:  # Ctrl-C, SIGTERM: say where it stopped (gradflow.cli)
        raise Interrupted(signal_number(e), interrupted_message(cfg, ckpt, workdir, state.saved_epoch, epoch)) from None


# --- 1. build: device, model, optimizer, the data on the device; 2. restore ----------------

def build(cfg: RunConfig, dataset: Dataset) -> Run:
    t = cfg.train
    device = pick_device(t.device)
    dist = init_distributed(cfg, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    channels_last = uses_channels_last(t.channels_last, device)

    torch.manual_seed(t.seed)  # the initial weights: the only draw from the global generator
    model = VGG(cfg.variant, cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    probed = probed_parameters(model, cfg.gradients.include_bias)
    if t.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                                    weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps,
                                     weight_decay=t.weight_decay, fused=device.type == "cuda")
    # Stepped once per epoch, as the reference does: T_max = epochs.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs, eta_min=t.eta_min)

    train = Split(dataset.train.images.to(device), dataset.train.labels.to(device))
    val = Split(dataset.val.images.to(device), dataset.val.labels.to(device))
    steps_per_epoch = -(-len(train) // t.batch_size)
    grad_capture = GradientCapture([nm for nm, _ in probed], [p for _, p in probed],
                                   capture_every(cfg, steps_per_epoch), steps_per_epoch)
    return Run(cfg, device, dist, channels_last, model, optimizer, scheduler,
               Augment(t.mean, t.std, t.crop_padding, t.flip, device), train, val, grad_capture)


def restore(run: Run, ckpt: Checkpoint, workdir: Path | None) -> Progress:
    """Continue after the checkpoint's epoch if it belongs to this run; else start over and
    save the initial weights as epoch 0 (an earlier run's other snapshots go in `finish`)."""
    cfg, dist, model = run.cfg, run.dist, run.model
    result = Result([], [], list(run.grad_capture.names), None, 0,
                    num_params=sum(p.numel() for p in model.parameters()), device=str(run.device),
                    n_train=len(run.train), n_val=len(run.val))
    state = Progress(result, train_seconds=0.0, best_acc=-1.0, snapshots={}, saved_epoch=0)
    writes = workdir is not None and dist.main
    if writes:
        require_writable([workdir] + ([ckpt.path.parent] if ckpt.path is not None else []))
    saved = ckpt.load(set_aside=dist.main)
    if saved is None:
        if writes and 0 in cfg.snapshot_epochs():
            state.snapshots[0] = cpu_weights(model)
            save_snapshot(workdir, 0, state.snapshots[0])
        return state
    model.load_state_dict(saved.model)
    run.optimizer.load_state_dict(saved.optimizer)
    run.scheduler.load_state_dict(saved.scheduler)
    torch.set_rng_state(saved.rng)
    result.history, result.best_epoch, result.best_state = saved.history, saved.best_epoch, saved.best_state
    result.points = saved.points
    run.grad_capture.rows = saved.capture_rows
    state.snapshots, state.train_seconds, state.saved_epoch = saved.snapshots, saved.train_seconds, saved.epoch
    state.best_acc = max((h["val_acc"] for h in result.history), default=-1.0)
    if writes:  # the snapshots so far: DVC may have removed them with the output folder
        for epoch, weights in state.snapshots.items():
            save_snapshot(workdir, epoch, weights)
    print(f"train: {cfg.name}: resuming after epoch {saved.epoch} from {ckpt.path}", file=sys.stderr)
    return state


# --- 3. one epoch: augment the training set, take the optimizer steps ---------------------

@dataclass
class EpochTotals:
    """What one epoch of optimizer steps leaves for its end: the training loss and accuracy
    (read from the device once), the learning rate it used, and when it started; `since` holds
    the loss sum, correct count and images at the epoch's last point inside it (zeros: none)."""
    train_loss: float
    train_acc: float
    lr: float
    started: float
    since: tuple[float, float, int] = (0.0, 0.0, 0)


def train_epoch(run: Run, state: Progress, train_step: fastpath.TrainStep, epoch: int, capture: bool,
                progress: str, on_point) -> EpochTotals:
    """All of an epoch's steps without a host sync; the loss and accuracy are read once,
    and once more at each point inside the epoch (with `on_point`)."""
    t, dist, capturer = run.cfg.train, run.dist, run.grad_capture
    started = time.perf_counter()
    run.model.train()
    aux_weight = aux_weight_at(t.aux_weight, epoch, t.epochs)
    images, perm = run.augment.epoch(run.train.images, torch.Generator().manual_seed(t.seed * 1_000_003 + epoch))
    labels = run.train.labels[perm]
    n, batch = len(run.train), t.batch_size
    steps = -(-n // batch)
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    points = point_steps(n, batch, t.eval_every) if on_point is not None else set()
    lr = run.scheduler.get_last_lr()[0]
    since = (0.0, 0.0, 0)
    for i in progress_bar(steps, f"{progress}{run.cfg.name} epoch {epoch}/{t.epochs}", dist.main, started):
        lo = i * batch  # this process's share of the global batch: every world-th image from its rank
        x = run.augment.normalize(images[lo + dist.rank:lo + batch:dist.world])
        y = labels[lo + dist.rank:lo + batch:dist.world]
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits, main_sum = train_step(x, y, aux_weight, min(batch, n - lo) / dist.world)
        sample = capture and dist.main and capturer.wants(i)
        if sample:
            capturer.before_step((epoch - 1) * steps + i)
        run.optimizer.step()
        if sample:
            capturer.after_step()
        loss_sum += main_sum
        correct += (logits.detach().argmax(1) == y).sum()
        if i in points:
            since = point(run, state, epoch, lo + batch, loss_sum, correct, since, lr, on_point)
    dist.all_reduce(loss_sum, correct)
    train_loss, train_acc = loss_sum.item() / n, correct.item() / n  # the epoch's host sync
    state.train_seconds += time.perf_counter() - started
    run.scheduler.step()
    capturer.end_epoch(epoch)
    return EpochTotals(train_loss, train_acc, lr, started, since)


def progress_bar(steps: int, desc: str, main: bool, started: float):
    """range(steps), shown (rank 0): a bar in a terminal; where stderr is not one (DVC's log,
    CI, a file) a line every PROGRESS_SECONDS instead. Both count steps only: no host sync."""
    tty = main and sys.stderr.isatty()
    last_line = started
    for i in tqdm(range(steps), desc=desc, leave=False, disable=not tty, file=sys.stderr):
        if main and not tty and time.perf_counter() - last_line >= PROGRESS_SECONDS:
            last_line = time.perf_counter()
            print(f"train: {desc}: step {i}/{steps}, {last_line - started:.0f} s", file=sys.stderr, flush=True)
        yield i


def point_steps(n: int, batch: int, every: int) -> set[int]:
    """The steps of an epoch (0-based) after which `every` more training images have been seen:
    a point of the curves follows each. The last step is left out: the epoch's end is a point."""
    if every <= 0:
        return set()
    steps = -(-n // batch)
    return {i for i in range(steps - 1) if (i + 1) * batch // every > i * batch // every}


def point(run: Run, state: Progress, epoch: int, seen: int, loss_sum: torch.Tensor, correct: torch.Tensor,
          since: tuple[float, float, int], lr: float, on_point) -> tuple[float, float, int]:
    """A point of the curves after `seen` images of the epoch: the training loss and
    accuracy since the last point and the first train.eval_subset validation images; the
    steps' own time excludes it. Returns the sums it was taken at, for the next one."""
    paused = time.perf_counter()
    sums = torch.stack([loss_sum, correct.to(loss_sum.dtype)])
    run.dist.all_reduce(sums)
    loss_total, correct_total = sums.tolist()  # the point's host sync
    subset = run.val.head(run.cfg.train.eval_subset)
    v = run.evaluate(subset)
    run.model.train()
    add_point(run, state, epoch, (loss_total, correct_total, seen), since, v, len(subset), lr, on_point)
    state.train_seconds -= time.perf_counter() - paused
    return loss_total, correct_total, seen


def add_point(run: Run, state: Progress, epoch: int, now: tuple[float, float, int],
              since: tuple[float, float, int], v: dict, val_images: int, lr: float, on_point) -> None:
    """Record a point: `now` and `since` are (loss sum, correct count, images) of the epoch
    at this point and at the last one; the training loss and accuracy cover what lies between."""
    (loss, correct, seen), (loss_before, correct_before, seen_before) = now, since
    points = state.result.points
    points.append({
        "epoch": epoch, "images_seen": (epoch - 1) * len(run.train) + seen,
        "train_loss": (loss - loss_before) / (seen - seen_before),
        "train_acc": (correct - correct_before) / (seen - seen_before),
        "val_loss": v["loss"], "val_acc": v["acc"], "val_images": val_images, "lr": lr})
    if run.dist.main and on_point is not None:  # live progress (rank 0): the points so far
        on_point(points)


# --- 4. end of epoch: validate, record, keep the best; stop on divergence; save -----------

def end_of_epoch(run: Run, state: Progress, epoch: int, totals: EpochTotals, progress: str, on_point) -> bool:
    """Record the epoch. False: the run diverged and stops (a non-finite loss leaves no record;
    a finite one far above chance is recorded first)."""
    t, result, name = run.cfg.train, state.result, run.cfg.name
    if not math.isfinite(totals.train_loss):
        return stop_diverged(name, result, epoch, totals.train_loss)
    v = run.evaluate(run.val)
    result.history.append({"epoch": epoch, "train_loss": totals.train_loss, "train_acc": totals.train_acc,
                           "val_loss": v["loss"], "val_acc": v["acc"], "lr": totals.lr,
                           "epoch_seconds": time.perf_counter() - totals.started})
    if v["acc"] > state.best_acc:
        state.best_acc, result.best_epoch = v["acc"], epoch
        result.best_state = cpu_weights(run.model)
    if run.dist.main:
        print(f"train: {progress}{name} epoch {epoch}/{t.epochs}: loss {totals.train_loss:.4f} "
              f"acc {totals.train_acc:.4f} | val loss {v['loss']:.4f} acc {v['acc']:.4f} | "
              f"{result.history[-1]['epoch_seconds']:.1f}s", file=sys.stderr)
    n = len(run.train)
    add_point(run, state, epoch, (totals.train_loss * n, totals.train_acc * n, n), totals.since, v,
              len(run.val), totals.lr, on_point)
    if is_divergent(totals.train_loss):  # the rule in gradflow/verdict.py; the run stops here
        return stop_diverged(name, result, epoch, totals.train_loss)
    return True


def stop_diverged(name: str, result: Result, epoch: int, train_loss: float) -> bool:
    result.status, result.diverged_epoch = "diverged", epoch
    print(f"train: {name}: loss is {train_loss:.4g} in epoch {epoch} (diverged: not finite "
          f"or > 10 x ln 100 = {DIVERGED_LOSS:.1f}); stopping this variant", file=sys.stderr)
    return False


def save(run: Run, state: Progress, epoch: int, workdir: Path, ckpt: Checkpoint) -> None:
    """Rank 0, after a complete epoch: its snapshot (models/V/epoch_XXX.pt, at gradients.epochs,
    a copy kept to rewrite it from) and what a resume needs."""
    if epoch in run.cfg.snapshot_epochs():
        state.snapshots[epoch] = cpu_weights(run.model)
        save_snapshot(workdir, epoch, state.snapshots[epoch])
    result = state.result
    ckpt.save(ResumeState(
        epoch=epoch, model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(), rng=torch.get_rng_state(), train_seconds=state.train_seconds,
        history=result.history, points=result.points, best_epoch=result.best_epoch,
        best_state=result.best_state, capture_rows=run.grad_capture.rows, snapshots=state.snapshots))
    state.saved_epoch = epoch


def interrupted_message(cfg: RunConfig, ckpt: Checkpoint, workdir: Path | None, saved_epoch: int,
                        epoch: int) -> str:
    """Where an interruption in `epoch` leaves the run: the checkpoint holds the last
    complete epoch (its write is atomic, so it is never half an epoch)."""
    if ckpt.path is None or not workdir:
        return (f"{cfg.name}: interrupted in epoch {epoch} of {cfg.train.epochs}; "
                f"rerun to train it again (this run keeps no resume state)")
    if not saved_epoch:
        return (f"{cfg.name}: interrupted before the end of epoch 1 of {cfg.train.epochs}; "
                f"rerun to start it again")
    return (f"{cfg.name}: interrupted after epoch {saved_epoch} of {cfg.train.epochs}; "
            f"rerun to resume (from {ckpt.path})")


# --- 5. finish: speed, and the best-validation weights on the test set --------------------

def finish(run: Run, state: Progress, train_step: fastpath.TrainStep, workdir: Path | None,
           dataset: Dataset) -> Result:
    result, model = state.result, run.model
    if workdir and run.dist.main:
        # Snapshots of an earlier run with other params that this one did not rewrite. Only
        # now: removed at the start, a failed write (a full disk) would have lost them all.
        keep = {paths.snapshot_name(epoch) for epoch in state.snapshots}
        for stale in sorted(workdir.glob(paths.SNAPSHOT_GLOB)):
            if stale.name not in keep:
                with writing(stale):
                    stale.unlink()
    result.capture_rows = run.grad_capture.rows
    result.step_mode, result.step_note = train_step.mode, train_step.note
    epochs_run = max(1, len(result.history))
    result.seconds_per_epoch = state.train_seconds / epochs_run
    result.images_per_second = len(run.train) * epochs_run / state.train_seconds if state.train_seconds else 0.0
    if result.best_state is not None and run.dist.main:
        final_state = {k: x.detach().clone() for k, x in model.state_dict().items()}
        model.load_state_dict(result.best_state)
        result.test = run.evaluate(Split(dataset.test.images.to(run.device), dataset.test.labels.to(run.device)))
        model.load_state_dict(final_state)
    return result


# --- what a run gives back, and the helpers it shares with the benchmarks -----------------

@dataclass
class Result:
    history: list[dict]  # one row per epoch: what the verdict, the metrics and the best weights read
    capture_rows: list[CaptureRow]
    layer_names: list[str]
    best_state: dict | None
    best_epoch: int
    status: str = "ok"
    diverged_epoch: int | None = None
    test: dict = field(default_factory=dict)
    num_params: int = 0
    seconds_per_epoch: float = 0.0
    images_per_second: float = 0.0
    device: str = "cpu"
    n_train: int = 0  # training images per epoch
    n_val: int = 0  # validation images each epoch is evaluated on (the verdict's n)
    points: list[dict] = field(default_factory=list)  # the curves' points: see `point`
    step_mode: str = "eager"  # how the steps ran (gradflow.fastpath: after any fallback) and why
    step_note: str = ""

    def grad_ratios(self) -> dict:
        """first/last conv mean |grad| at the first and the last sampled step, as log10."""
        steps = sorted({(r.epoch, r.step) for r in self.capture_rows})
        out = {}
        for key, step in (("init", steps[0] if steps else None), ("final", steps[-1] if steps else None)):
            ratio = first_last_conv_ratio(self.capture_rows, self.layer_names, step) if step else None
            out[key] = round(math.log10(ratio), 2) if ratio else None
        return out

    def metrics(self) -> dict:
        """The headline numbers a person compares across experiments (the DVC metrics file):
        deterministic for a given config and seed, so equal runs give equal files."""
        last = self.history[-1] if self.history else {}
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        ratios = self.grad_ratios()
        return {
            "verdict": verdict(last.get("train_loss"), best.get("val_acc"), self.status == "diverged",
                               n_val=self.n_val, epochs=len(self.history)),
            "test_acc": _round(self.test.get("acc")),
            "test_loss": _round(self.test.get("loss")),
            "best_val_acc": _round(best.get("val_acc")),
            "final_train_loss": _round(last.get("train_loss")),
            "log10_grad_ratio_init": ratios["init"],
            "log10_grad_ratio_final": ratios["final"],
        }

    def summary(self, cfg: RunConfig, source: str) -> dict:
        """What else describes the run, deterministically (kept with the model, not a metric)."""
        return {"variant": cfg.name, "status": self.status, "diverged_epoch": self.diverged_epoch,
                "data_source": source, "epochs": cfg.train.epochs, "epochs_run": len(self.history),
                "best_epoch": self.best_epoch, "params": self.num_params, "device": self.device,
                "batch_size": cfg.train.batch_size,
                "train_images": self.n_train, "val_images": self.n_val,
                "precision": "bf16" if uses_bf16(torch.device(self.device), cfg.train.precision) else "fp32"}

    def timings(self) -> dict:
        """Wall-clock figures: they differ on every run, so they stay out of DVC's outputs."""
        return {"device": self.device, "epochs_run": len(self.history),
                "seconds_per_epoch": round(self.seconds_per_epoch, 3),
                "images_per_second": round(self.images_per_second, 1)}


def _round(x: float | None, digits: int = 6) -> float | None:
    """Six significant digits: readable in `dvc exp show`, and no false precision."""
    if x is None or not math.isfinite(x) or x == 0:
        return x if x is None or x == 0 else None  # JSON has no NaN or inf
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, split: Split, augment: Augment, batch_size: int,
             device: torch.device, channels_last: bool, precision: str = "fp32") -> dict:
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(split), batch_size):
        x = augment.normalize(split.images[start:start + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = split.labels[start:start + batch_size]
        with autocast(device, precision):
            logits, _ = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(1, len(split))
    return {"loss": loss.item() / n, "acc": correct.item() / n}


def capture_every(cfg: RunConfig, steps_per_epoch: int) -> int:
    """gradients.every_n_steps; auto: at the curves' points (train.eval_every images apart),
    else about 10 samples an epoch."""
    every, t = cfg.gradients.every_n_steps, cfg.train
    if every != "auto":
        return every
    return max(1, t.eval_every // t.batch_size if t.eval_every else steps_per_epoch // 10)
