"""Write a small cifar-100-python.tar.gz in the official format, for tests that must not download.

The official archive (https://www.cs.toronto.edu/~kriz/cifar-100.html) holds three Python 2
pickles under `cifar-100-python/`: `train` and `test`, dicts with
  'data'           uint8 numpy array (N, 3072): per image the red, green and blue 32x32 planes,
                   each row-major
  'fine_labels'    list of N ints in 0..99
  'coarse_labels'  list of N ints in 0..19
  'filenames'      list of N names
  'batch_label'    a description string
and `meta`, a dict with 'fine_label_names' (100 names) and 'coarse_label_names' (20 names).
Python 2 wrote the keys as byte strings; `pickle.load(f, encoding="latin1")` turns them into
str, which is what readers see, so we write str keys with pickle protocol 2.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FINE = [f"fine_{i:02d}" for i in range(100)]
COARSE = [f"coarse_{i:02d}" for i in range(20)]


@dataclass
class Archive:
    path: Path
    md5: str
    train_images: np.ndarray  # uint8 (N, 3, 32, 32)
    train_labels: list[int]
    test_images: np.ndarray
    test_labels: list[int]
    classes: list[str]


def _batch(images: np.ndarray, labels: list[int], name: str) -> dict:
    return {
        "filenames": [f"{name}_{i:05d}.png" for i in range(len(labels))],
        "batch_label": f"{name} batch 1 of 1",
        "fine_labels": list(labels),
        "coarse_labels": [label // 5 for label in labels],
        "data": images.reshape(len(images), 3 * 32 * 32),  # RGB planes, row-major
    }


def write_cifar100_archive(path: Path, n_train: int = 100, n_test: int = 40, seed: int = 0) -> Archive:
    """Write random images with labels cycling through all 100 classes; return what was written
    (images as (N, 3, 32, 32)) and the archive's md5."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    test_x = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    train_y = [int(v) for v in rng.permutation(n_train) % 100]
    test_y = [int(v) for v in rng.permutation(n_test) % 100]
    members = {
        "train": _batch(train_x, train_y, "train"),
        "test": _batch(test_x, test_y, "test"),
        "meta": {"fine_label_names": FINE, "coarse_label_names": COARSE},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return Archive(path, md5, train_x, train_y, test_x, test_y, list(FINE))
