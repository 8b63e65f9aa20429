"""Output files, written atomically: a temporary file in `.tmp/` at the project root, then a
rename over the output, so a crash or a kill never leaves half a file, nor a stray temporary
one, where DVC or the next stage looks (a temp file inside an output directory would be
committed with it, and one in plots/history/ would break `dvc plots show`)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch


TMP = Path(".tmp")  # git- and dvc-ignored; outside every output


def atomic_write(path: Path | str, write) -> None:
    """Call write(tmp_path), then rename tmp_path over path: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    TMP.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=TMP, prefix=f"{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save(path: Path | str, obj) -> None:
    """torch.save, byte-stable: saved to a path, the archive records that (temporary) file's
    name inside the zip, so equal tensors would give different bytes and DVC hashes; saved to a
    buffer, the record name is always `archive`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def md5sum(path: Path | str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_csv(path: Path | str, columns, rows) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(rows)
    atomic_write(path, write)
