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

from gradflow.errors import DataError

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
    import torch  # here, not at the top: the check stage writes files without importing torch

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


# --- checked reads -------------------------------------------------------------------------
# Every file a stage reads comes through here. A missing, corrupt or foreign file is a
# DataError naming the file and what to do (one line and exit 2, via gradflow.cli), never a
# traceback from json, zipfile or pickle.

def _why(e: BaseException) -> str:
    """An exception as a short single line (torch's messages run to many lines)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # weights_only's advice is noise; its cause follows this
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    first = " ".join(text.split())
    first = first.split(". ")[0].rstrip(".")  # miniz: "...central directory. This is an internal..."
    first = first if len(first) <= 160 else first[:157] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def read_json(path: Path | str, what_to_do: str, kind: type = dict):
    """The JSON object (or `kind`) in path; DataError if it is missing, not JSON, or another kind."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {what_to_do}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({_why(e)}); {what_to_do}") from None
    if not isinstance(value, kind):
        raise DataError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__}, "
                        f"got {type(value).__name__}; {what_to_do}")
    return value


def torch_load(path: Path | str, what_to_do: str, map_location="cpu", kind: type = dict):
    """torch.load(weights_only=True): tensors and plain containers only, nothing unpickled that
    could run code. DataError if the file is missing, truncated, damaged or not a `kind`."""
    import torch
    try:
        value = torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {what_to_do}") from None
    except Exception as e:  # damaged bytes make zipfile, pickle or torch raise almost anything
        raise DataError(f"{path}: not a readable PyTorch file ({_why(e)}); {what_to_do}") from None
    if not isinstance(value, kind):
        raise DataError(f"{path}: expected a saved {kind.__name__}, got {type(value).__name__}; "
                        f"{what_to_do}")
    return value


def require_keys(path: Path | str, value: dict, keys, what_to_do: str) -> dict:
    """value, if it has every key; else a DataError naming the file and the first key missing."""
    for key in keys:
        if key not in value:
            raise DataError(f"{path}: has no {key!r}, so it is not the file expected here; {what_to_do}")
    return value
