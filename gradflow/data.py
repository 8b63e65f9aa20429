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

DATASET_FILE, MANIFEST_FILE, RAW_DIR = paths.DATASET, paths.MANIFEST, paths.RAW

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_FILENAME = "cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
NUM_CLASSES = 100




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


def synthetic(n: int, seed: int, stream: int):
    """A deterministic, CIFAR-shaped, 100-class dataset that a shallow CNN learns quickly.

    Each class has a smooth colour pattern (a random 4x4 RGB grid, upsampled to 32x32);
    an image is its class pattern at a random brightness, shifted by up to 3 pixels and
    buried in pixel noise. `stream` separates train (0) and test (1) images of one seed;
    the class patterns depend on the seed only.
    """
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(NUM_CLASSES, 3, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(grid, size=(38, 38), mode="bicubic", align_corners=False)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (stream + 1))
    labels = torch.randint(NUM_CLASSES, (n,), generator=g)
    dx, dy = torch.randint(7, (2, n), generator=g)
    rows = dy[:, None] + torch.arange(32)
    cols = dx[:, None] + torch.arange(32)
    base = patterns[labels[:, None, None, None], torch.arange(3)[None, :, None, None],
                    rows[:, None, :, None], cols[:, None, None, :]]
    brightness = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    noise = 0.15 * torch.randn(n, 3, 32, 32, generator=g)
    images = ((base * brightness + noise).clamp(0, 1) * 255).round().to(torch.uint8)
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
    return Dataset(
        train=Split(raw["train_images"], raw["train_labels"]).head(data.train_limit),
        val=Split(raw["val_images"], raw["val_labels"]).head(data.eval_limit),
        test=Split(raw["test_images"], raw["test_labels"]).head(data.eval_limit),
        classes=raw["classes"],
        source=info["source"],
        md5=actual,
    )


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
