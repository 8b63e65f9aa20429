"""Data sources, the compact dataset file, and batched augmentation.

The fetch stage turns a source (the official CIFAR-100 archive, or a seeded synthetic
stand-in) into one file, `data/dataset.pt`: uint8 images (N, 3, 32, 32), int64 labels and
class names, already split into train / val / test. Everything after fetch reads only that
file, so both sources take the same code path.

Training keeps the uint8 tensors on the device and augments whole batches with tensor ops
(the airbench way): no PIL, no DataLoader workers, no per-image Python.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gradflow import paths
from gradflow.errors import DataError
from gradflow.files import md5sum, read_json, require_keys, torch_load
from gradflow.params import DataLimits, data_sources
from gradflow.verdict import NUM_CLASSES

DATASET_FILE, MANIFEST_FILE, RAW_DIR = paths.DATASET, paths.MANIFEST, paths.RAW

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_FILENAME = "cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"


# --- sources ------------------------------------------------------------------------------

@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.images[:n], self.labels[:n])


def read_cifar100_archive(archive: Path | str, md5: str = CIFAR100_MD5):
    """(train images, train labels, test images, test labels, class names) from the official
    `cifar-100-python.tar.gz`. The md5 is checked before anything in it is unpickled."""
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"{archive}: no such file")
    actual = md5sum(archive)
    if actual != md5:
        raise DataError(f"{archive}: md5 is {actual}, expected {md5} "
                        "(corrupt or partial download; delete it and fetch again)")

    def load(tar: tarfile.TarFile, member: str) -> dict:
        f = tar.extractfile(f"cifar-100-python/{member}")
        if f is None:
            raise DataError(f"{archive}: cifar-100-python/{member} is not a file")
        return pickle.load(f, encoding="latin1")  # trusted: the archive's md5 matched

    def images(batch: dict) -> torch.Tensor:
        return torch.as_tensor(batch["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)

    def labels(batch: dict) -> torch.Tensor:
        return torch.as_tensor(batch["fine_labels"], dtype=torch.int64)

    try:
        with tarfile.open(archive, "r:gz") as tar:
            train, test, meta = load(tar, "train"), load(tar, "test"), load(tar, "meta")
        return images(train), labels(train), images(test), labels(test), list(meta["fine_label_names"])
    except DataError:
        raise
    except Exception as e:  # damaged bytes make tarfile, zlib or pickle raise almost anything
        raise DataError(f"{archive}: not a readable CIFAR-100 python archive "
                        f"({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class StandIn:
    """How the synthetic stand-in is made, and so how hard it is (see `synthetic`).

    The default is calibrated against the coursework's CIFAR-100 curve: VGG_08 trained with the
    coursework's recipe (47,500 images an epoch, batch 100, Adam 1e-3, cosine over 100 epochs,
    crop + flip) reaches its validation accuracy at epochs 1-3 (0.025 / 0.060 / 0.095) within
    1.5 points, and plain VGG_38 stays at chance: `benchmarks/calibrate.py` measures it and
    benchmarks/README.md has the table. `signal` is the knob that sets the difficulty."""
    signal: float = 0.57  # the class pattern's share of an image; the rest is clutter
    prototypes: int = 4  # patterns per class: within-class variety
    grid: int = 6  # a pattern is a random grid x grid RGB field, upsampled bicubic
    noise: float = 0.1  # pixel noise (std, in [0, 1] units)
    shift: int = 3  # a pattern is placed at a random offset of up to `shift` pixels


CALIBRATED = StandIn()


def _smooth_fields(n: int, grid: int, size: int, g: torch.Generator) -> torch.Tensor:
    """n random smooth RGB fields in about [0, 1], (n, 3, size, size): a uniform random
    grid x grid upsampled bicubic (in chunks, to keep the memory small)."""
    out = []
    for start in range(0, n, 4096):
        coarse = torch.rand(min(4096, n - start), 3, grid, grid, generator=g)
        out.append(torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                                   align_corners=False))
    return torch.cat(out) if out else torch.empty(0, 3, size, size)


def synthetic(n: int, seed: int, stream: int, stand_in: StandIn = CALIBRATED):
    """A deterministic, CIFAR-shaped, 100-class stand-in for CIFAR-100, as hard to learn as
    CIFAR-100 over the coursework's first epochs (see `StandIn`).

    Each class has `prototypes` smooth colour patterns; an image is one of its class's patterns,
    shifted by up to `shift` pixels, mixed with `1 - signal` of clutter (a smooth random field
    of the same kind as the patterns, its own for every image), at a random brightness, plus
    pixel noise. The clutter is what makes it hard: it looks like a pattern of no class.
    `stream` separates train (0) and test (1) images of one seed; the class patterns depend on
    the seed only.
    """
    c = stand_in
    size = 32 + 2 * c.shift
    g = torch.Generator().manual_seed(seed)
    patterns = _smooth_fields(NUM_CLASSES * c.prototypes, c.grid, size, g)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (stream + 1))
    labels = torch.randint(NUM_CLASSES, (n,), generator=g)
    which = labels * c.prototypes + torch.randint(c.prototypes, (n,), generator=g)
    dx, dy = torch.randint(2 * c.shift + 1, (2, n), generator=g)
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, n, 4096):
        part = slice(start, min(n, start + 4096))
        m = part.stop - part.start
        rows = (dy[part, None] + torch.arange(32))[:, None, :, None]
        cols = (dx[part, None] + torch.arange(32))[:, None, None, :]
        pattern = patterns[which[part, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
        x = c.signal * pattern + (1 - c.signal) * _smooth_fields(m, c.grid, 32, g)
        x = x * (0.7 + 0.6 * torch.rand(m, 1, 1, 1, generator=g)) + c.noise * torch.randn(m, 3, 32, 32, generator=g)
        images[part] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


def build_dataset(train_images, train_labels, test_images, test_labels, classes,
                  *, seed: int, val_size: int) -> dict:
    """Split the training set into train / validation with a seeded permutation."""
    if val_size >= len(train_labels):
        raise DataError(f"data.val_size ({val_size}) must be smaller than the "
                        f"training set ({len(train_labels)} images)")
    perm = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    return {
        "train_images": train_images[train_idx].contiguous(), "train_labels": train_labels[train_idx],
        "val_images": train_images[val_idx].contiguous(), "val_labels": train_labels[val_idx],
        "test_images": test_images.contiguous(), "test_labels": test_labels,
        "classes": list(classes),
    }


# --- the dataset file ---------------------------------------------------------------------

@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    source: str
    md5: str = ""

    @classmethod
    def from_raw(cls, raw: dict, source: str, data: DataLimits, md5: str = "") -> "Dataset":
        """From the fetch stage's dict (build_dataset's), with the limits applied."""
        return cls(
            train=Split(raw["train_images"], raw["train_labels"]).head(data.train_limit),
            val=Split(raw["val_images"], raw["val_labels"]).head(data.eval_limit),
            test=Split(raw["test_images"], raw["test_labels"]).head(data.eval_limit),
            classes=raw["classes"], source=source, md5=md5)

    def fingerprint(self) -> dict:
        """Identifies the data a run saw: the file and the limits applied to it."""
        return {"md5": self.md5, "train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_dataset(data: DataLimits, path: Path = DATASET_FILE, manifest: Path = MANIFEST_FILE) -> Dataset:
    """Load the fetch stage's file after checking it against its manifest."""
    refetch = "rerun the fetch stage (dvc repro -f fetch)"
    info = require_keys(manifest, read_json(manifest, refetch), ("source", "dataset_md5"), refetch)
    if info["source"] not in data_sources():  # the values of params' data.source
        raise DataError(f"{manifest}: source {info['source']!r} is not one the fetch stage writes "
                        f"({', '.join(data_sources())}); {refetch}")
    if not Path(path).is_file():
        raise DataError(f"{path}: missing; {refetch}")
    actual = md5sum(path)
    if actual != info.get("dataset_md5"):
        raise DataError(f"{path}: md5 {actual} does not match {manifest} "
                        f"({info.get('dataset_md5')}); {refetch}")
    raw = require_keys(path, torch_load(path, refetch),
                       [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]
                       + ["classes"], refetch)
    return Dataset.from_raw(raw, info["source"], data, actual)


# --- batched augmentation -----------------------------------------------------------------

class Augment:
    """Random crop with zero padding, horizontal flip and normalisation for whole batches.

    The random numbers come from a generator seeded by (seed, epoch), so an epoch's batches are
    the same whether training ran straight through or resumed from a checkpoint.
    """

    def __init__(self, mean, std, padding: int, flip: bool, device: torch.device):
        std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        # x_norm = (x / 255 - mean) / std = x * scale + shift
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.padding, self.flip, self.device = padding, flip, device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)

    def epoch(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A permutation of the training set and its cropped, flipped uint8 images, in the order
        training visits them. Augmenting a whole epoch in uint8 takes a handful of tensor ops."""
        n, p = len(images), self.padding
        perm = torch.randperm(n, generator=generator)
        shifts = torch.randint(2 * p + 1, (2, n), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        perm, shifts, flips = (t.to(self.device, non_blocking=True) for t in (perm, shifts, flips))
        out = images[perm]
        if p:
            padded = torch.nn.functional.pad(out, (p, p, p, p))
            ar = torch.arange(32, device=self.device)
            rows = (shifts[0][:, None] + ar)[:, None, :, None]
            cols = (shifts[1][:, None] + ar)[:, None, None, :]
            out = padded[torch.arange(n, device=self.device)[:, None, None, None],
                         torch.arange(3, device=self.device)[None, :, None, None], rows, cols]
        if self.flip:
            out = torch.where(flips[:, None, None, None], out.flip(3), out)
        return out, perm
