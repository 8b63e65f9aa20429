"""fetch stage: params `data` -> data/dataset.pt + data/manifest.json.

`data.source: cifar100` uses data/raw/cifar-100-python.tar.gz when it is there (md5 checked),
and downloads it with torchvision otherwise. `data.source: synthetic` generates the seeded
stand-in that tests, CI and offline runs use.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
import urllib.error
import urllib.request

from gradflow import params as P
from gradflow.cli import cli
from gradflow.data import (CALIBRATED, CIFAR100_FILENAME, CIFAR100_MD5, CIFAR100_URL, DATASET_FILE,
                           MANIFEST_FILE, RAW_DIR, DataError, StandIn, build_dataset, read_cifar100_archive,
                           synthetic)
from gradflow.files import md5sum, set_aside, torch_save, write_json
from gradflow.verdict import NUM_CLASSES


def download_cifar100() -> None:
    """Download the archive with torchvision (which checks the md5); remove a bad copy."""
    from torchvision.datasets.utils import download_url

    archive = RAW_DIR / CIFAR100_FILENAME
    print(f"fetch: downloading {CIFAR100_URL} -> {archive}", file=sys.stderr)
    try:
        download_url(CIFAR100_URL, str(RAW_DIR), CIFAR100_FILENAME, md5=CIFAR100_MD5)
    except (urllib.error.URLError, OSError) as e:
        archive.unlink(missing_ok=True)
        raise DataError(
            f"cannot download CIFAR-100 ({e}). Put {CIFAR100_FILENAME} (md5 {CIFAR100_MD5}) "
            f"at {archive}, or run with -S data.source=synthetic") from None
    except RuntimeError as e:  # torchvision: "File not found or corrupted."
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive}: download corrupted ({e}); removed it, try again") from None


def not_a_file(archive: Path) -> str | None:
    """What is at the archive path if it is neither nothing nor a regular file (a symlink to one
    counts as one: a copy on another disk), else None. Such a thing is the user's: never
    downloaded over, set aside or removed."""
    if archive.is_file() or not (archive.exists() or archive.is_symlink()):
        return None
    if archive.is_symlink():
        return f"a symlink to {os.readlink(archive)}, which is not a file (missing, or a folder)"
    return "a directory" if archive.is_dir() else "not a regular file (a FIFO, socket or device)"


def cifar100_source(data: P.DataParams) -> tuple[dict, dict]:
    archive = RAW_DIR / CIFAR100_FILENAME
    problem = not_a_file(archive)
    if problem:
        raise DataError(f"{archive} is {problem}; left as it is. Put the archive there (md5 "
                        f"{CIFAR100_MD5}; a symlink to it is fine), or run with -S data.source=synthetic")
    if archive.is_file() and md5sum(archive) != CIFAR100_MD5:
        # Perhaps the user's own copy: set it aside, never delete it, nor rename it over an
        # earlier .corrupt one (that may be the user's too): the first free name.
        aside = set_aside(archive)
        print(f"fetch: {archive} failed its md5 check (partial or corrupt); moved it to {aside}",
              file=sys.stderr)
    if not archive.is_file():
        download_cifar100()
    train_x, train_y, test_x, test_y, classes = read_cifar100_archive(archive, CIFAR100_MD5)
    dataset = build_dataset(train_x, train_y, test_x, test_y, classes,
                            seed=data.seed, val_size=data.val_size)
    return dataset, {"archive": CIFAR100_FILENAME, "archive_md5": CIFAR100_MD5, "url": CIFAR100_URL}


def synthetic_source(data: P.DataParams, stand_in: StandIn = CALIBRATED) -> tuple[dict, dict]:
    train_x, train_y = synthetic(data.synthetic_train_size, data.seed, stream=0, stand_in=stand_in)
    test_x, test_y = synthetic(data.synthetic_test_size, data.seed, stream=1, stand_in=stand_in)
    classes = [f"class_{i:02d}" for i in range(NUM_CLASSES)]
    dataset = build_dataset(train_x, train_y, test_x, test_y, classes,
                            seed=data.seed, val_size=data.val_size)
    return dataset, {"generator": "gradflow.data.synthetic", "seed": data.seed}


SOURCES = {"cifar100": cifar100_source, "synthetic": synthetic_source}


def cifar100_available(timeout: float = 10.0) -> bool:
    """True when the archive lies in data/raw/ or its URL answers: the quick start's test of
    whether to run on CIFAR-100 or fall back to the synthetic source."""
    if (RAW_DIR / CIFAR100_FILENAME).is_file():
        return True
    try:
        urllib.request.urlopen(urllib.request.Request(CIFAR100_URL, method="HEAD"), timeout=timeout).close()
        return True
    except (urllib.error.URLError, OSError) as e:
        print(f"CIFAR-100 cannot be downloaded here ({getattr(e, 'reason', e)}): "
              f"running the same experiment on the synthetic source", file=sys.stderr)
        return False


@cli
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--available", action="store_true",
                        help="only test whether CIFAR-100 is here or downloadable (exit 0) or not (exit 1)")
    parser.add_argument("--config", help="the resolved data section the check stage wrote "
                        "(dvc.yaml passes data/config/data.json); default: params.yaml's data")
    args = parser.parse_args(argv)
    if args.available:
        raise SystemExit(0 if cifar100_available() else 1)
    data = P.load_resolved(args.config, P.DataParams) if args.config else P.load().data
    dataset, origin = SOURCES[data.source](data)
    torch_save(DATASET_FILE, dataset, digest=False)  # its md5 is in the manifest
    write_json(MANIFEST_FILE, {
        "source": data.source,
        **origin,
        "sizes": {split: len(dataset[f"{split}_labels"]) for split in ("train", "val", "test")},
        "num_classes": len(dataset["classes"]),
        "dataset_file": DATASET_FILE.name,
        "dataset_md5": md5sum(DATASET_FILE),
    })
    print(f"fetch: {data.source}: {len(dataset['train_labels'])} train, "
          f"{len(dataset['val_labels'])} val, {len(dataset['test_labels'])} test -> {DATASET_FILE}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
