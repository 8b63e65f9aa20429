"""The training loop shared by the train and sweep stages.

Read top to bottom: pick a device, put the uint8 dataset on it, build the model and the
optimizer, maybe resume from a checkpoint, then for each epoch augment the whole training set
with a few tensor ops, take optimizer steps without syncing with the host, evaluate, and keep
the best-validation weights. The host reads the device once per epoch.

Under torchrun (WORLD_SIZE > 1) each process takes its shard of every global batch and
DistributedDataParallel all-reduces the gradients; only rank 0 writes anything.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gradflow.capture import GradientCapture, first_last_conv_ratio
from gradflow.data import Augment, Dataset, Split
from gradflow.files import torch_save
from gradflow.model import VGG, probed_parameters
from gradflow.params import RunConfig


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


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
class Checkpoint:
    """What resuming needs; everything in it loads with weights_only=True."""
    path: Path | None
    fingerprint: dict  # config + data identity; a checkpoint for other params is not resumed

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True, map_location="cpu")
        if state.get("fingerprint") != self.fingerprint:
            print(f"train: {self.path} was made with other params or data; not resuming it",
                  file=sys.stderr)
            return None
        return state

    def save(self, state: dict) -> None:
        if self.path is not None:
            torch_save(self.path, {"fingerprint": self.fingerprint, **state})


@dataclass
class Result:
    history: list[dict]
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

    def metrics(self, cfg: RunConfig, source: str) -> dict:
        last = self.history[-1] if self.history else {}
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        names = self.layer_names
        first_step = min(((r[0], r[1]) for r in self.capture_rows), default=None)
        last_step = max(((r[0], r[1]) for r in self.capture_rows), default=None)
        ratio = (lambda key: first_last_conv_ratio(self.capture_rows, names, key) if key else None)
        pick = (lambda h: {k: h.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc")})
        return {
            "variant": cfg.name,
            "status": self.status,
            "diverged_epoch": self.diverged_epoch,
            "data_source": source,
            "device": self.device,
            "epochs": cfg.train.epochs,
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "final": pick(last),
            "best": pick(best),
            "test": self.test,
            "params": self.num_params,
            "seconds_per_epoch": round(self.seconds_per_epoch, 3),
            "images_per_second": round(self.images_per_second, 1),
            "grad_ratio_first_last_conv": {"init": ratio(first_step), "final": ratio(last_step)},
        }


def loss_fn(logits: torch.Tensor, aux: list[torch.Tensor], labels: torch.Tensor,
            aux_weight: float, denominator: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, main-head loss summed over the batch). Losses are sums divided by the
    global batch size, so DDP's gradient averaging over equal shards gives the global mean."""
    main = F.cross_entropy(logits.float(), labels, reduction="sum")
    total = main
    for a in aux:  # deep supervision: companion losses, their weight decaying over training
        total = total + aux_weight / len(aux) * F.cross_entropy(a.float(), labels, reduction="sum")
    return total / denominator, main.detach()


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


def uses_bf16(device: torch.device, precision: str) -> bool:
    """train.precision: auto is bf16 on CUDA (tensor cores, no loss scaling), fp32 elsewhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str):
    # Autocast runs convs and matmuls in bf16 and keeps the parameters, their gradients and the
    # optimizer in fp32. bf16 has fp32's exponent range, so gradients of 1e-18 stay resolvable.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def capture_every(cfg: RunConfig, steps_per_epoch: int) -> int:
    every = cfg.gradients.every_n_steps
    return max(1, steps_per_epoch // 10) if every == "auto" else every


def fit(cfg: RunConfig, dataset: Dataset, *, workdir: Path | None = None,
        capture: bool = True, progress: str = "") -> Result:
    """Train one variant. With `workdir`, save weight snapshots at the configured epochs and a
    resume checkpoint after every epoch there."""
    t = cfg.train
    device = pick_device(t.device)
    dist = init_distributed(cfg, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # NHWC is cuDNN's tensor-core layout, and oneDNN's faster one for these 32-channel convs on
    # the CPU too (VGG_08 1.31x, VGG_38 1.19x on 2 cores, benchmarks/throughput.py).
    channels_last = t.channels_last is True or (t.channels_last == "auto" and device.type in ("cuda", "cpu"))

    torch.manual_seed(t.seed)
    model = VGG(cfg.variant, cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    probed = probed_parameters(model, cfg.gradients.include_bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                 fused=device.type == "cuda")
    # Stepped once per epoch, as the reference does: T_max = epochs.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs, eta_min=t.eta_min)

    train_x, train_y = dataset.train.images.to(device), dataset.train.labels.to(device)
    val = Split(dataset.val.images.to(device), dataset.val.labels.to(device))
    augment = Augment(t.mean, t.std, t.crop_padding, t.flip, device)
    n, batch = len(train_y), t.batch_size
    steps_per_epoch = -(-n // batch)
    grad_capture = GradientCapture([nm for nm, _ in probed], [p for _, p in probed],
                                   capture_every(cfg, steps_per_epoch), steps_per_epoch)
    snapshots = set(cfg.snapshot_epochs())

    # Every rank resumes from the same file (optimizer state included); only rank 0 writes it.
    ckpt = Checkpoint(workdir / "checkpoint.pt" if workdir else None,
                      {"config": cfg.to_dict(), "data": dataset.fingerprint(), "world": dist.world})
    state = ckpt.load()
    result = Result([], [], [nm for nm, _ in probed], None, 0,
                    num_params=sum(p.numel() for p in model.parameters()), device=str(device))
    start_epoch, train_seconds = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, train_seconds = state["epoch"], state["train_seconds"]
        result.history, result.best_epoch = state["history"], state["best_epoch"]
        result.best_state, grad_capture.rows = state["best_state"], [tuple(r) for r in state["capture_rows"]]
        print(f"train: {cfg.name}: resuming after epoch {start_epoch} from {ckpt.path}", file=sys.stderr)
    if workdir and dist.main and state is None:
        for stale in workdir.glob("epoch_*.pt"):  # from a run with other params
            stale.unlink()
    if workdir and dist.main and 0 in snapshots and start_epoch == 0:
        torch_save(workdir / "epoch_000.pt", {"epoch": 0, "model": model.state_dict()})

    step_model = model
    if dist.world > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        step_model = torch.compile(step_model)

    best_acc = max((h["val_acc"] for h in result.history), default=-1.0)
    for epoch in range(start_epoch + 1, t.epochs + 1):
        started = time.perf_counter()
        model.train()
        aux_weight = cfg.variant.aux_weight * (1 - (epoch - 1) / t.epochs)
        images, perm = augment.epoch(train_x, torch.Generator().manual_seed(t.seed * 1_000_003 + epoch))
        labels = train_y[perm]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        steps = range(steps_per_epoch)
        bar = tqdm(steps, desc=f"{progress}{cfg.name} {epoch}/{t.epochs}", leave=False,
                   disable=None if dist.main else True, file=sys.stderr)
        for i in bar:
            lo = i * batch
            x = augment.normalize(images[lo + dist.rank:lo + batch:dist.world])
            y = labels[lo + dist.rank:lo + batch:dist.world]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, t.precision):
                logits, aux = step_model(x)
            loss, main_sum = loss_fn(logits, aux, y, aux_weight, min(batch, n - lo) / dist.world)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sample = capture and dist.main and grad_capture.wants(i)
            if sample:
                grad_capture.before_step((epoch - 1) * steps_per_epoch + i)
            optimizer.step()
            if sample:
                grad_capture.after_step()
            loss_sum += main_sum
            correct += (logits.detach().argmax(1) == y).sum()
        if dist.world > 1:
            import torch.distributed as tdist
            tdist.all_reduce(loss_sum)
            tdist.all_reduce(correct)
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n  # the epoch's host sync
        train_seconds += time.perf_counter() - started
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        grad_capture.end_epoch(epoch)

        if not math.isfinite(train_loss):
            result.status, result.diverged_epoch = "diverged", epoch
            print(f"train: {cfg.name}: loss is {train_loss} in epoch {epoch}; stopping this variant",
                  file=sys.stderr)
            break
        v = evaluate(model, val, augment, t.eval_batch_size, device, channels_last, t.precision)
        result.history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                               "val_loss": v["loss"], "val_acc": v["acc"], "lr": lr,
                               "epoch_seconds": time.perf_counter() - started})
        if v["acc"] > best_acc:
            best_acc, result.best_epoch = v["acc"], epoch
            result.best_state = {k: x.detach().to("cpu", copy=True) for k, x in model.state_dict().items()}
        if dist.main:
            print(f"train: {progress}{cfg.name} epoch {epoch}/{t.epochs}: loss {train_loss:.4f} "
                  f"acc {train_acc:.4f} | val loss {v['loss']:.4f} acc {v['acc']:.4f} | "
                  f"{result.history[-1]['epoch_seconds']:.1f}s", file=sys.stderr)
        if workdir and dist.main:
            if epoch in snapshots:
                torch_save(workdir / f"epoch_{epoch:03d}.pt", {"epoch": epoch, "model": model.state_dict()})
            ckpt.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                       "train_seconds": train_seconds, "history": result.history,
                       "best_epoch": result.best_epoch, "best_state": result.best_state,
                       "capture_rows": grad_capture.rows})

    result.capture_rows = grad_capture.rows
    epochs_run = max(1, len(result.history))
    result.seconds_per_epoch = train_seconds / epochs_run
    result.images_per_second = n * epochs_run / train_seconds if train_seconds else 0.0
    if result.best_state is not None and dist.main:
        final_state = {k: x.detach().clone() for k, x in model.state_dict().items()}
        model.load_state_dict(result.best_state)
        test = Split(dataset.test.images.to(device), dataset.test.labels.to(device))
        result.test = evaluate(model, test, augment, t.eval_batch_size, device, channels_last, t.precision)
        model.load_state_dict(final_state)
    return result
