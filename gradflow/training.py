"""The training loop shared by the train and sweep stages.

`fit` runs the steps of `Training`, which read top to bottom: build (pick a device, put the
uint8 dataset on it, build the model and the optimizer), restore (resume from a checkpoint, or
start over), one epoch (augment the whole training set with a few tensor ops, take optimizer
steps without syncing with the host), end of epoch (evaluate, keep the best-validation
weights, save; stop on divergence: see `diverged`), finish (the test set). The host reads the
device once per epoch, and once at each point of the curves inside it (train.eval_every).

Under torchrun (WORLD_SIZE > 1) each process takes its shard of every global batch and
DistributedDataParallel all-reduces the gradients; only rank 0 writes anything.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gradflow import fastpath, paths
from gradflow.loss import aux_weight_at
from gradflow.device import autocast, pick_device, uses_bf16, uses_channels_last
from gradflow.cli import Interrupted, signal_number
from gradflow.capture import GradientCapture, first_last_conv_ratio
from gradflow.data import Augment, Dataset, Split
from gradflow.errors import DataError
from gradflow.files import require_keys, require_writable, torch_load, torch_save, writing
from gradflow.files import set_aside as set_aside_file
from gradflow.model import VGG, probed_parameters
from gradflow.params import RunConfig, device_error
from gradflow.verdict import DIVERGED_LOSS, is_divergent, verdict

PROGRESS_SECONDS = 15  # within an epoch, a progress line this often where stderr is no terminal


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 when run alone)."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: RunConfig, device: torch.device) -> Dist:
    """Join torchrun's process group. torchrun's environment decides: train.distributed only
    makes the train stage launch itself under torchrun (stages/train.py); without torchrun a
    process trains alone, as a sweep point does."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist()
    if cfg.train.batch_size < world:  # some ranks would get no images, every step
        from gradflow.params import ParamsError
        raise ParamsError(f"{cfg.name}: batch_size {cfg.train.batch_size} is smaller than the "
                          f"{world} processes sharing each batch")
    import torch.distributed as dist
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicator uses the current device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


@dataclass
class ResumeState:
    """What resuming after `epoch` needs (models/.resume/<variant>.pt); its fields are the
    checkpoint's keys, and everything in it loads with weights_only=True."""
    epoch: int
    model: dict
    optimizer: dict
    scheduler: dict
    rng: torch.Tensor
    train_seconds: float
    history: list
    points: list
    best_epoch: int
    best_state: dict | None
    capture_rows: list
    snapshots: dict  # epoch -> weights: the snapshots so far, to rewrite them from


def cpu_weights(model: torch.nn.Module) -> dict:
    """A copy of the model's weights on the CPU (a snapshot, the best-validation weights)."""
    return {k: x.detach().to("cpu", copy=True) for k, x in model.state_dict().items()}


@dataclass
class Checkpoint:
    """The resume checkpoint: a ResumeState and the fingerprint of the run it belongs to."""
    path: Path | None
    fingerprint: dict  # config + data identity; a checkpoint for other params is not resumed

    KEYS = ("fingerprint", *(f.name for f in fields(ResumeState)))

    def load(self, set_aside: bool = True) -> ResumeState | None:
        """The saved state, or None: no checkpoint, one for other params or data (ignored), or
        one that cannot be read (truncated, damaged, empty, foreign). That one is renamed to
        `<file>.corrupt` (by rank 0: `set_aside`) so the next run does not trip on it."""
        if self.path is None or not self.path.is_file():
            return None
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            state = require_keys(self.path, torch_load(self.path, "", map_location="cpu"), self.KEYS, "")
        except DataError as e:
            if set_aside:  # to the first free name: an earlier .corrupt one is kept too
                with writing(self.path):
                    aside = set_aside_file(self.path)
            print(f"train: {str(e).rstrip('; ')}; moved it to {aside} and starting over", file=sys.stderr)
            return None
        if state.get("fingerprint") != self.fingerprint:
            print(f"train: {self.path} was made with other params or data; not resuming it",
                  file=sys.stderr)
            return None
        return ResumeState(**{f.name: state[f.name] for f in fields(ResumeState)})

    def save(self, state: ResumeState) -> None:
        if self.path is not None:  # a failed write is a DataError already (gradflow.files)
            torch_save(self.path, {"fingerprint": self.fingerprint,
                                   **{f.name: getattr(state, f.name) for f in fields(ResumeState)}})


@dataclass
class Result:
    history: list[dict]  # one row per epoch: what the verdict, the metrics and the best weights read
    capture_rows: list[tuple]
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
    points: list[dict] = field(default_factory=list)  # the curves' points: see Training.point

    def grad_ratios(self) -> dict:
        """first/last conv mean |grad| at the first and the last sampled step, as log10."""
        steps = sorted({(r[0], r[1]) for r in self.capture_rows})
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


def fit(cfg: RunConfig, dataset: Dataset, *, workdir: Path | None = None, checkpoint: Path | None = None,
        capture: bool = True, progress: str = "", on_point=None, stop_after: int | None = None) -> Result:
    """Train one variant. With `workdir`, save weight snapshots at the configured epochs and a
    resume checkpoint after every epoch there. With `on_point`, the run also stops every
    train.eval_every images inside an epoch to evaluate a point of its curves, and calls
    `on_point(points)` (rank 0) after each point and each epoch's end. `stop_after` ends the run
    after that many epochs of its schedule (the calibration: the first 3 of the coursework's 100). The steps below, in the order they run:
    build (and restore), then one epoch and its end until the last epoch or a divergence, then finish."""
    run = Training.build(cfg, dataset, workdir, progress, checkpoint)
    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch + 1, min(cfg.train.epochs, stop_after or cfg.train.epochs) + 1):
            totals = run.one_epoch(epoch, capture, on_point)
            if not run.end_of_epoch(epoch, totals, on_point):
                break
        return run.finish()
    except (KeyboardInterrupt, Interrupted) as e:  # Ctrl-C, SIGTERM: say where it stopped (gradflow.cli)
        raise Interrupted(signal_number(e), run.interrupted_message(epoch)) from None


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


def point_steps(n: int, batch: int, every: int) -> set[int]:
    """The steps of an epoch (0-based) after which `every` more training images have been seen:
    a point of the curves follows each. The last step is left out: the epoch's end is a point."""
    if every <= 0:
        return set()
    steps = -(-n // batch)
    return {i for i in range(steps - 1) if (i + 1) * batch // every > i * batch // every}


def save_snapshot(workdir: Path, epoch: int, weights: dict) -> None:
    """models/V/epoch_XXX.pt: the weights the gradients stage probes at that epoch."""
    torch_save(workdir / paths.snapshot_name(epoch), {"epoch": epoch, "model": weights})


@dataclass
class Training:
    """One run while it trains, whole from the moment `build` makes it (restored from its
    checkpoint, or started over); fit() then calls one_epoch / end_of_epoch and finish."""
    cfg: RunConfig
    dataset: Dataset
    workdir: Path | None
    progress: str
    device: torch.device
    dist: Dist
    channels_last: bool
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model as the steps call it (DDP under torchrun)
    train_step: fastpath.TrainStep  # zero_grad, forward, loss, backward
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_x: torch.Tensor
    train_y: torch.Tensor
    val: Split
    augment: Augment
    grad_capture: GradientCapture
    snapshots: set[int]  # the epochs whose weights are saved for the gradients stage
    ckpt: Checkpoint
    result: Result
    start_epoch: int  # the epoch the run continues after (0: a fresh start)
    train_seconds: float
    best_acc: float
    snapshot_states: dict  # epoch -> weights, for the checkpoint
    saved_epoch: int  # the epoch the resume checkpoint holds

    # --- 1. build: device, model, optimizer, the data on the device; 2. restore -------------

    @classmethod
    def build(cls, cfg: RunConfig, dataset: Dataset, workdir: Path | None, progress: str,
              checkpoint: Path | None = None) -> "Training":
        t = cfg.train
        device = pick_device(t.device)
        dist = init_distributed(cfg, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        channels_last = uses_channels_last(t.channels_last, device)

        torch.manual_seed(t.seed)
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

        train_x, train_y = dataset.train.images.to(device), dataset.train.labels.to(device)
        val = Split(dataset.val.images.to(device), dataset.val.labels.to(device))
        steps_per_epoch = -(-len(train_y) // t.batch_size)
        grad_capture = GradientCapture([nm for nm, _ in probed], [p for _, p in probed],
                                       capture_every(cfg, steps_per_epoch), steps_per_epoch)
        # Every rank resumes from the same file (optimizer state included); only rank 0 writes it.
        ckpt = Checkpoint(checkpoint if workdir else None,
                          {"config": cfg.to_dict(), "data": dataset.fingerprint(), "world": dist.world})
        result = Result([], [], [nm for nm, _ in probed], None, 0,
                        num_params=sum(p.numel() for p in model.parameters()), device=str(device),
                        n_train=len(train_y), n_val=len(val))

        # 2. Continue after the checkpoint's epoch if it belongs to this run; else start over
        # and save the initial weights as epoch 0 (an earlier run's other snapshots go in finish).
        snapshots = set(cfg.snapshot_epochs())
        writes = workdir is not None and dist.main
        if writes:
            require_writable([workdir] + ([ckpt.path.parent] if ckpt.path is not None else []))
        state = ckpt.load(set_aside=dist.main)
        snapshot_states = {}
        if state is not None:
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            torch.set_rng_state(state.rng)
            result.history, result.best_epoch, result.best_state = state.history, state.best_epoch, state.best_state
            result.points = state.points
            grad_capture.rows = [tuple(r) for r in state.capture_rows]
            snapshot_states = state.snapshots
            if writes:  # the snapshots so far: DVC may have removed them with the output folder
                for epoch, weights in snapshot_states.items():
                    save_snapshot(workdir, epoch, weights)
            print(f"train: {cfg.name}: resuming after epoch {state.epoch} from {ckpt.path}", file=sys.stderr)
        elif writes and 0 in snapshots:
            snapshot_states[0] = cpu_weights(model)
            save_snapshot(workdir, 0, snapshot_states[0])

        # Wrapped for the steps only now: DDP broadcasts rank 0's (restored) weights as it wraps.
        step_model = model
        if dist.world > 1:
            step_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        train_step = fastpath.TrainStep(step_model, optimizer, device, t.precision,
                                        mode=fastpath.resolve(t.compile, device, dist.world))
        start = state.epoch if state is not None else 0
        return cls(cfg=cfg, dataset=dataset, workdir=workdir, progress=progress, device=device, dist=dist,
                   channels_last=channels_last, model=model, step_model=step_model, train_step=train_step,
                   optimizer=optimizer, scheduler=scheduler, train_x=train_x, train_y=train_y, val=val,
                   augment=Augment(t.mean, t.std, t.crop_padding, t.flip, device), grad_capture=grad_capture,
                   snapshots=snapshots, ckpt=ckpt, result=result, start_epoch=start,
                   train_seconds=state.train_seconds if state is not None else 0.0,
                   best_acc=max((h["val_acc"] for h in result.history), default=-1.0),
                   snapshot_states=snapshot_states, saved_epoch=start)

    # --- 3. one epoch: augment the training set, take the optimizer steps -------------------

    def one_epoch(self, epoch: int, capture: bool, on_point=None) -> EpochTotals:
        """All of an epoch's steps without a host sync; the loss and accuracy are read once,
        and once more at each point inside the epoch (with `on_point`)."""
        t, dist, device = self.cfg.train, self.dist, self.device
        started = time.perf_counter()
        self.model.train()
        aux_weight = aux_weight_at(self.cfg.train.aux_weight, epoch, t.epochs)
        images, perm = self.augment.epoch(self.train_x, torch.Generator().manual_seed(t.seed * 1_000_003 + epoch))
        labels = self.train_y[perm]
        n, batch = len(self.train_y), t.batch_size
        steps_per_epoch = -(-n // batch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        points = point_steps(n, batch, t.eval_every) if on_point is not None else set()
        lr = self.scheduler.get_last_lr()[0]
        since = (0.0, 0.0, 0)
        desc = f"{self.progress}{self.cfg.name} epoch {epoch}/{t.epochs}"
        # A bar in a terminal; where stderr is not one (DVC's log, CI, a file) a line every
        # PROGRESS_SECONDS instead. Both count steps only: no host sync.
        tty = dist.main and sys.stderr.isatty()
        bar = tqdm(range(steps_per_epoch), desc=desc, leave=False, disable=not tty, file=sys.stderr)
        last_line = started
        for i in bar:
            if dist.main and not tty and time.perf_counter() - last_line >= PROGRESS_SECONDS:
                last_line = time.perf_counter()
                print(f"train: {desc}: step {i}/{steps_per_epoch}, {last_line - started:.0f} s",
                      file=sys.stderr, flush=True)
            lo = i * batch
            x = self.augment.normalize(images[lo + dist.rank:lo + batch:dist.world])
            y = labels[lo + dist.rank:lo + batch:dist.world]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits, main_sum = self.train_step(x, y, aux_weight, min(batch, n - lo) / dist.world)
            sample = capture and dist.main and self.grad_capture.wants(i)
            if sample:
                self.grad_capture.before_step((epoch - 1) * steps_per_epoch + i)
            self.optimizer.step()
            if sample:
                self.grad_capture.after_step()
            loss_sum += main_sum
            correct += (logits.detach().argmax(1) == y).sum()
            if i in points:
                since = self.point(epoch, lo + batch, loss_sum, correct, since, lr, on_point)
        if dist.world > 1:
            import torch.distributed as tdist
            tdist.all_reduce(loss_sum)
            tdist.all_reduce(correct)
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n  # the epoch's host sync
        self.train_seconds += time.perf_counter() - started
        self.scheduler.step()
        self.grad_capture.end_epoch(epoch)
        return EpochTotals(train_loss, train_acc, lr, started, since)

    def point(self, epoch: int, seen: int, loss_sum: torch.Tensor, correct: torch.Tensor,
              since: tuple[float, float, int], lr: float, on_point) -> tuple[float, float, int]:
        """A point of the curves after `seen` images of the epoch: the training loss and
        accuracy since the last point and the first train.eval_subset validation images; the
        steps' own time excludes it. Returns the sums it was taken at, for the next one."""
        paused = time.perf_counter()
        sums = torch.stack([loss_sum, correct.to(loss_sum.dtype)])
        if self.dist.world > 1:
            import torch.distributed as tdist
            tdist.all_reduce(sums)
        loss_total, correct_total = sums.tolist()  # the point's host sync
        t = self.cfg.train
        subset = Split(self.val.images[:t.eval_subset], self.val.labels[:t.eval_subset])
        v = evaluate(self.model, subset, self.augment, t.eval_batch_size, self.device,
                     self.channels_last, t.precision)
        self.model.train()
        self._add_point(epoch, (loss_total, correct_total, seen), since, v, len(subset), lr, on_point)
        self.train_seconds -= time.perf_counter() - paused
        return loss_total, correct_total, seen

    def _add_point(self, epoch: int, now: tuple[float, float, int], since: tuple[float, float, int],
                   v: dict, val_images: int, lr: float, on_point) -> None:
        """Record a point: `now` and `since` are (loss sum, correct count, images) of the epoch
        at this point and at the last one; the training loss and accuracy cover what lies between."""
        (loss, correct, seen), (loss_before, correct_before, seen_before) = now, since
        self.result.points.append({
            "epoch": epoch, "images_seen": (epoch - 1) * len(self.train_y) + seen,
            "train_loss": (loss - loss_before) / (seen - seen_before),
            "train_acc": (correct - correct_before) / (seen - seen_before),
            "val_loss": v["loss"], "val_acc": v["acc"], "val_images": val_images, "lr": lr})
        if self.dist.main and on_point is not None:  # live progress (rank 0): the points so far
            on_point(self.result.points)

    # --- 4. end of epoch: validate, record, keep the best, save; stop on divergence ---------

    def end_of_epoch(self, epoch: int, totals: EpochTotals, on_point=None) -> bool:
        """Record the epoch and save what a resume needs. False: the run diverged and stops (a
        non-finite loss leaves no record; a finite one far above chance is recorded first)."""
        t, result, name = self.cfg.train, self.result, self.cfg.name
        if not math.isfinite(totals.train_loss):
            return self._stop_diverged(epoch, totals.train_loss)
        v = evaluate(self.model, self.val, self.augment, t.eval_batch_size, self.device,
                     self.channels_last, t.precision)
        result.history.append({"epoch": epoch, "train_loss": totals.train_loss, "train_acc": totals.train_acc,
                               "val_loss": v["loss"], "val_acc": v["acc"], "lr": totals.lr,
                               "epoch_seconds": time.perf_counter() - totals.started})
        if v["acc"] > self.best_acc:
            self.best_acc, result.best_epoch = v["acc"], epoch
            result.best_state = cpu_weights(self.model)
        if self.dist.main:
            print(f"train: {self.progress}{name} epoch {epoch}/{t.epochs}: loss {totals.train_loss:.4f} "
                  f"acc {totals.train_acc:.4f} | val loss {v['loss']:.4f} acc {v['acc']:.4f} | "
                  f"{result.history[-1]['epoch_seconds']:.1f}s", file=sys.stderr)
        n = len(self.train_y)
        self._add_point(epoch, (totals.train_loss * n, totals.train_acc * n, n), totals.since, v,
                        len(self.val), totals.lr, on_point)
        if is_divergent(totals.train_loss):  # the rule in gradflow/verdict.py; the run stops here
            return self._stop_diverged(epoch, totals.train_loss)
        if self.workdir and self.dist.main:
            if epoch in self.snapshots:
                self._snapshot(epoch)
            self.ckpt.save(ResumeState(
                epoch=epoch, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), rng=torch.get_rng_state(),
                train_seconds=self.train_seconds, history=result.history, points=result.points,
                best_epoch=result.best_epoch,
                best_state=result.best_state, capture_rows=self.grad_capture.rows,
                snapshots=self.snapshot_states))
            self.saved_epoch = epoch
        return True

    def interrupted_message(self, epoch: int) -> str:
        """Where an interruption in `epoch` leaves the run: the checkpoint holds the last
        complete epoch (its write is atomic, so it is never half an epoch)."""
        done = self.saved_epoch
        if self.ckpt.path is None or not self.workdir:
            return (f"{self.cfg.name}: interrupted in epoch {epoch} of {self.cfg.train.epochs}; "
                    f"rerun to train it again (this run keeps no resume state)")
        if not done:
            return (f"{self.cfg.name}: interrupted before the end of epoch 1 of {self.cfg.train.epochs}; "
                    f"rerun to start it again")
        return (f"{self.cfg.name}: interrupted after epoch {done} of {self.cfg.train.epochs}; "
                f"rerun to resume (from {self.ckpt.path})")

    def _snapshot(self, epoch: int) -> None:
        """models/V/epoch_XXX.pt, and a copy in the resume state to rewrite it from."""
        self.snapshot_states[epoch] = cpu_weights(self.model)
        save_snapshot(self.workdir, epoch, self.snapshot_states[epoch])

    def _stop_diverged(self, epoch: int, train_loss: float) -> bool:
        self.result.status, self.result.diverged_epoch = "diverged", epoch
        print(f"train: {self.cfg.name}: loss is {train_loss:.4g} in epoch {epoch} (diverged: not finite "
              f"or > 10 x ln 100 = {DIVERGED_LOSS:.1f}); stopping this variant", file=sys.stderr)
        return False

    # --- 5. finish: speed, and the best-validation weights on the test set ------------------

    def finish(self) -> Result:
        result, t = self.result, self.cfg.train
        if self.workdir and self.dist.main:
            # Snapshots of an earlier run with other params that this one did not rewrite. Only
            # now: removed at the start, a failed write (a full disk) would have lost them all.
            keep = {paths.snapshot_name(epoch) for epoch in self.snapshot_states}
            for stale in sorted(self.workdir.glob(paths.SNAPSHOT_GLOB)):
                if stale.name not in keep:
                    with writing(stale):
                        stale.unlink()
        result.capture_rows = self.grad_capture.rows
        epochs_run = max(1, len(result.history))
        result.seconds_per_epoch = self.train_seconds / epochs_run
        result.images_per_second = (len(self.train_y) * epochs_run / self.train_seconds
                                    if self.train_seconds else 0.0)
        if result.best_state is not None and self.dist.main:
            final_state = {k: x.detach().clone() for k, x in self.model.state_dict().items()}
            self.model.load_state_dict(result.best_state)
            test = Split(self.dataset.test.images.to(self.device), self.dataset.test.labels.to(self.device))
            result.test = evaluate(self.model, test, self.augment, t.eval_batch_size, self.device,
                                   self.channels_last, t.precision)
            self.model.load_state_dict(final_state)
        return result
