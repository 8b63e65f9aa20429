"""Output files, written atomically: a temporary file on the target's own filesystem, then a
rename over the output, so a crash or a kill never leaves half a file, nor a stray temporary
one, where DVC or the next stage looks (a temp file inside an output directory would be
committed with it, and one in plots/history/ would break `dvc plots show`).

Where the temporary goes: `.tmp/` at the project root when the target is on the same
filesystem (the usual case); else `.tmp/` in the topmost folder of the target's path that is
on the target's filesystem (`models/.tmp/` for a symlinked `models/`); else, when the target's
own folder is the mount point (`models/VGG_08` on a data disk), a hidden `.<name>.XXXX.tmp`
beside the target, removed on success and on failure (.dvcignore skips both kinds). A rename
that still crosses devices (bind mounts share a device number) falls back to the hidden
temporary beside the target. A failed write is a DataError naming the place and the remedy
(a full disk: "no space left on" that filesystem), and leaves the old file as it was."""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from gradflow.errors import DataError

TMP = Path(".tmp")  # git- and dvc-ignored; outside every output


def _device(path: Path) -> int | None:
    try:
        return path.stat().st_dev
    except OSError:
        return None


def mount_point(path: Path | str) -> Path:
    """The mount point of the filesystem that holds path (or its nearest existing parent)."""
    path = Path(os.path.realpath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    dev = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


def os_error_line(e: OSError, path: Path | str, folder: Path | str | None = None) -> str:
    """A failed write or removal of path as one line: what failed, where, and what to do
    (`folder`: the folder to make writable; default path's)."""
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent
    where = path
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        mount = mount_point(folder)
        try:
            free = shutil.disk_usage(mount).free
            free_text = f", {free / 1e6:.1f} MB free"
        except OSError:
            free_text = ""
        return (f"{path}: no space left on the filesystem mounted at {mount} ({reason}{free_text}); "
                f"free some space there and rerun (what was there before is kept)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}: cannot write there ({reason}); make {folder} writable (chmod -R u+w {folder}; "
                f"chattr -i {folder} if it is immutable; remount a read-only disk) and rerun")
    return f"{where}: cannot write it ({reason}); check {folder} and its disk, then rerun"


def _temp_dir(folder: Path) -> Path | None:
    """Where a temporary file for a target in `folder` goes: a folder on the same filesystem
    and outside every output, or None for "beside the target" (see the module docstring)."""
    dev = _device(folder)
    if dev is None or _device(TMP if TMP.is_dir() else Path(".")) == dev:
        return TMP
    try:
        rel = Path(os.path.abspath(folder)).relative_to(os.getcwd())
    except ValueError:
        return None  # outside the project: beside the target
    for i in range(1, len(rel.parts)):  # from the top down: the first folder on the target's disk
        if _device(Path(*rel.parts[:i])) == dev:
            return Path(*rel.parts[:i]) / ".tmp"
    return None


def _mkstemp(folder: Path, name: str) -> str:
    temp_dir = _temp_dir(folder)
    if temp_dir is not None:
        try:
            temp_dir.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=temp_dir, prefix=f"{name[:100]}.", suffix=".tmp")
            os.close(fd)
            return tmp
        except OSError:
            pass  # e.g. no right to make a folder there: beside the target instead
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name[:100]}.", suffix=".tmp")
    os.close(fd)
    return tmp


def atomic_write(path: Path | str, write) -> None:
    """Call write(tmp_path), then rename tmp_path over path: readers never see half a file.
    An OSError (a full disk, a read-only folder) becomes a DataError; path keeps its old bytes."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _mkstemp(path.parent, path.name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        write(tmp)
        try:
            os.replace(tmp, path)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # Same device number, different mounts (bind mounts): copy beside the target first.
            fd, beside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
            os.close(fd)
            first, tmp = tmp, beside
            shutil.copyfile(first, beside)
            os.chmod(beside, 0o666 & ~umask)
            Path(first).unlink(missing_ok=True)
            os.replace(beside, path)
        tmp = None
    except OSError as e:
        raise DataError(os_error_line(e, path)) from None
    finally:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass


# Linux's file attribute flags (chattr): an immutable or append-only file cannot be replaced
# or removed, by root neither, and its permission bits do not say so.
FS_IOC_GETFLAGS, FS_IMMUTABLE_FL, FS_APPEND_FL = 0x80086601, 0x10, 0x20


def _locked(path: Path) -> str | None:
    """"immutable" or "append-only" for a file chattr +i / +a made so; None otherwise (and where
    the filesystem or the OS has no such flags)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:  # absent, a symlink, unreadable: its write will say what is wrong
        return None
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
    except OSError:
        return None
    finally:
        os.close(fd)
    value = int.from_bytes(flags[:4], sys.byteorder)
    return "immutable" if value & FS_IMMUTABLE_FL else "append-only" if value & FS_APPEND_FL else None


def require_writable(directories, files=()) -> None:
    """DataError unless a file can be made in each directory (and in the temporary folder its
    writes use), and each of `files` that exists can be replaced: a read-only or immutable
    output folder, or an immutable output file, stops a stage before it works, in one line, not
    at its first write with a traceback (after the training it came to save)."""
    for path in files:
        how = _locked(Path(path))
        if how:
            flag = "i" if how == "immutable" else "a"
            raise DataError(f"{path}: cannot replace it (the file is {how}); chattr -{flag} {path} "
                            f"and rerun")
    for directory in directories:
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):  # unnamed where the OS allows: DVC never sees it
                pass
            temp_dir = _temp_dir(directory)
            if temp_dir is not None and temp_dir != directory:
                try:
                    temp_dir.mkdir(exist_ok=True)
                    with tempfile.TemporaryFile(dir=temp_dir):
                        pass
                except OSError:
                    pass  # atomic_write falls back to a temporary beside the target
        except OSError as e:
            raise DataError(os_error_line(e, directory, folder=directory)) from None


@contextmanager
def writing(path: Path | str):
    """Turn a failed removal or rename (a read-only folder, a full disk) into a DataError: one
    line naming `path`."""
    try:
        yield
    except OSError as e:
        raise DataError(os_error_line(e, path)) from None


def set_aside(path: Path | str, suffix: str = ".corrupt") -> Path:
    """Rename path to `<path><suffix>`, or `<path><suffix>.1`, .2, ... : the first free name,
    never over an earlier file. Returns the new name."""
    path = Path(path)
    for i in range(10_000):
        aside = path.with_name(path.name + suffix + (f".{i}" if i else ""))
        try:
            os.link(path, aside)  # fails if aside exists: nothing is overwritten
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if aside.exists() or aside.is_symlink():
                continue
            os.rename(path, aside)  # no hard links here: the name was free a moment ago
            return aside
        path.unlink()
        return aside
    raise FileExistsError(errno.EEXIST, "no free name to set it aside", str(path))


def write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


DIGEST = "sha256"  # the key torch_save adds to a dict: a digest of everything else in it


def content_digest(obj) -> str:
    """sha256 over a saved object's tensors (dtype, shape, bytes) and other leaves (repr), in
    order: torch.load reads tensor bytes without checking them, so damage there loads silently."""
    import torch

    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k, v in x.items():
                h.update(repr(k).encode())
                walk(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__}{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())
    walk(obj)
    return h.hexdigest()


def torch_save(path: Path | str, obj, digest: bool = True) -> None:
    """torch.save, byte-stable: saved to a path, the archive records that (temporary) file's
    name inside the zip, so equal tensors would give different bytes and DVC hashes; saved to a
    buffer, the record name is always `archive`. A dict gets its content digest under DIGEST,
    which torch_load checks (`digest=False`: a file checked otherwise, as the dataset by md5)."""
    import torch  # here, not at the top: the check stage writes files without importing torch

    if digest and isinstance(obj, dict):
        obj = {**obj, DIGEST: content_digest(obj)}
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
    if isinstance(value, dict) and DIGEST in value:
        stored = value.pop(DIGEST)
        if content_digest(value) != stored:
            raise DataError(f"{path}: damaged (its contents do not match the digest saved with "
                            f"them); {what_to_do}")
    return value


def require_keys(path: Path | str, value: dict, keys, what_to_do: str) -> dict:
    """value, if it has every key; else a DataError naming the file and the first key missing."""
    for key in keys:
        if key not in value:
            raise DataError(f"{path}: has no {key!r}, so it is not the file expected here; {what_to_do}")
    return value
