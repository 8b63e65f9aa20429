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
from gradflow.device import single_threaded
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

    An image is built the way natural images are structured: a background with a natural 1/f
    spectrum, a colour cast of its own, and a class object, at a random place and contrast.
    The class shows at two scales: the image's overall colour leans towards its class's colour
    (`colour`, a global cue any network can pool), and the object is one of the class's
    `prototypes` patterns (`object`, a local cue only convolutions find)."""
    colour: float = 1.0  # the class colour's weight in the image's colour cast (per-image cast: 1)
    object: float = 1.0  # the object's contrast relative to the background's
    prototypes: int = 4  # objects per class: within-class variety
    radius: float = 7.0  # the object's size: the std of its Gaussian mask, in pixels
    jitter: int = 5  # the object's centre lies up to `jitter` pixels from the image's
    spectrum: float = 1.0  # amplitude falls as 1/f^spectrum (natural images: about 1)
    noise: float = 0.03  # pixel noise (std, in [0, 1] units)


CALIBRATED = StandIn()

# CIFAR-100's per-channel pixel mean and std (train set, [0, 1] units): the stand-in's pixels
# are mapped to the same first and second moments.
PIXEL_MEAN = (0.507, 0.487, 0.441)
PIXEL_STD = (0.267, 0.256, 0.276)


def _spectral_fields(n: int, channels: int, spectrum: float, g: torch.Generator) -> torch.Tensor:
    """n random (channels, 32, 32) fields with amplitude ~ 1/f^spectrum, each of unit std."""
    f = torch.sqrt(torch.fft.fftfreq(32)[:, None] ** 2 + torch.fft.rfftfreq(32)[None, :] ** 2)
    amplitude = 1.0 / f.clamp(min=1 / 32) ** spectrum
    amplitude[0, 0] = 0.0  # no DC: each field has mean zero, the image's mean comes from its cast
    out = []
    for start in range(0, n, 4096):
        m = min(4096, n - start)
        z = torch.randn(m, channels, 32, 17, 2, generator=g)
        x = torch.fft.irfft2(torch.view_as_complex(z) * amplitude, s=(32, 32))
        out.append(x / x.flatten(1).std(1).view(-1, 1, 1, 1))
    return torch.cat(out) if out else torch.empty(0, channels, 32, 32)


@single_threaded  # the same pixels whatever the thread count (gradflow.device.one_thread)
def synthetic(n: int, seed: int, stream: int, stand_in: StandIn = CALIBRATED):
    """A deterministic, CIFAR-shaped, 100-class stand-in for CIFAR-100, as hard to learn as
    CIFAR-100 over the coursework's first epochs (see `StandIn`).

    Per image, in units of CIFAR-100's pixel std: a 1/f luminance background with weaker 1/f
    chroma, scaled by a random contrast; a colour cast, `colour` x its class's colour plus a
    random colour of its own; one of its class's objects (a 1/f RGB pattern under a Gaussian
    mask), at a random offset, times `object` x a random contrast; pixel noise. Then mapped to
    CIFAR-100's per-channel mean and std. `stream` separates train (0) and test (1) images of one
    seed; the classes' colours and objects depend on the seed only.
    """
    c = stand_in
    g = torch.Generator().manual_seed(seed)
    class_colour = torch.randn(NUM_CLASSES, 3, generator=g)
    objects = _spectral_fields(NUM_CLASSES * c.prototypes, 3, c.spectrum, g)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (stream + 1))
    labels = torch.randint(NUM_CLASSES, (n,), generator=g)
    which = labels * c.prototypes + torch.randint(c.prototypes, (n,), generator=g)
    offset = torch.randint(-c.jitter, c.jitter + 1, (n, 2), generator=g)
    centre = 15.5 + offset.float()
    ar = torch.arange(32, dtype=torch.float32)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, n, 4096):
        part = slice(start, min(n, start + 4096))
        m = part.stop - part.start
        luminance = _spectral_fields(m, 1, c.spectrum, g)
        chroma = _spectral_fields(m, 3, c.spectrum, g)
        background = (luminance + 0.3 * chroma) * (0.4 + 0.8 * torch.rand(m, 1, 1, 1, generator=g))
        cast = (c.colour * class_colour[labels[part]] + torch.randn(m, 3, generator=g)) * 0.5
        dy = (ar[None, :] - centre[part, 0:1]) ** 2
        dx = (ar[None, :] - centre[part, 1:2]) ** 2
        mask = torch.exp(-(dy[:, :, None] + dx[:, None, :]) / (2 * c.radius ** 2))[:, None]
        contrast = c.object * (0.5 + torch.rand(m, 1, 1, 1, generator=g))
        # The object moves with its mask: its (periodic) pattern is rolled by the same offset.
        rows = ((ar.long()[None, :] - offset[part, 0:1]) % 32)[:, None, :, None]
        cols = ((ar.long()[None, :] - offset[part, 1:2]) % 32)[:, None, None, :]
        obj = objects[which[part, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
        x = (background * (1 - mask) + contrast * obj * mask + cast.view(m, 3, 1, 1)
             + c.noise / 0.26 * torch.randn(m, 3, 32, 32, generator=g))
        x = x / 1.2  # the sum above has about 1.2 x unit std: back to CIFAR-100's spread
        images[part] = ((mean + std * x).clamp(0, 1) * 255).round().to(torch.uint8)
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
    require_contents(path, raw, refetch)
    return Dataset.from_raw(raw, info["source"], data, actual)


def require_contents(path: Path, raw: dict, what_to_do: str) -> None:
    """DataError unless every split holds uint8 images (N, 3, 32, 32) and as many int64 labels
    in 0..NUM_CLASSES-1, N > 0: a file whose manifest matches but whose content is wrong would
    otherwise fail deep in training (or, as float images, train silently to "stuck")."""
    for split in ("train", "val", "test"):
        images, labels = raw[f"{split}_images"], raw[f"{split}_labels"]
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and tuple(images.shape[1:]) == (3, 32, 32) and len(images) > 0):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            dtype = getattr(images, "dtype", "")
            raise DataError(f"{path}: {split}_images is {shape} {dtype}, not N > 0 uint8 images of "
                            f"3 x 32 x 32; {what_to_do}")
        if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.dim() == 1
                and len(labels) == len(images)):
            raise DataError(f"{path}: {split}_labels does not hold one int64 label per image "
                            f"({len(images)}); {what_to_do}")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DataError(f"{path}: {split}_labels go outside 0..{NUM_CLASSES - 1}; {what_to_do}")


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
