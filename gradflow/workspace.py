"""What the check stage refuses about the workspace, before DVC deletes any output.

DVC removes a stage's outputs before its command runs, whatever they hold. Two cases cost a
user's files: files DVC does not track where a variant's outputs go (a new variant `MYNET`
while `models/MYNET.pt` or `models/MYNET/notes.txt` are someone's own), and an output folder
that is a mount point (DVC removes what is inside, then fails to remove the folder itself).
The check refuses both, naming the paths; `dvc repro -s <stage>` skips the check, and DVC's
removal then happens as it always does.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradflow import paths
from gradflow.errors import DataError
from gradflow.tables import HISTORY_COLUMNS, CAPTURE_COLUMNS, PROBE_COLUMNS


def _header(path: Path) -> tuple[str, ...] | None:
    try:
        with open(path, newline="") as f:
            return tuple(f.readline().rstrip("\r\n").split(","))
    except (OSError, UnicodeDecodeError):
        return None


def _is_our_model(path: Path, variant: str) -> bool:
    """A model file the train stage wrote for `variant`: it loads with its digest and names it."""
    from gradflow.files import torch_load
    try:
        saved = torch_load(path, "")
    except DataError:
        return False
    config = saved.get("config")
    return isinstance(config, dict) and config.get("name") == variant


def _is_ours_in_workdir(name: str) -> bool:
    """A snapshot, or the hidden temporary of one a killed write left (gradflow.files)."""
    return Path(name).match(paths.SNAPSHOT_GLOB) or (name.startswith(".epoch_") and name.endswith(".tmp"))


def foreign_files(variant: str, recorded: bool) -> list[Path]:
    """Files at `variant`'s output paths that its stages did not write. In the snapshot folder
    only snapshots are the stage's; the other outputs count only where dvc.lock has no record
    of the variant (`recorded` False: DVC tracks none of them yet), by their marks: a model that
    loads with its digest and names the variant, a table with the stage's header."""
    workdir = paths.workdir(variant)
    if workdir.is_dir():
        found = [p for p in sorted(workdir.iterdir()) if not (p.is_file() and _is_ours_in_workdir(p.name))]
    else:
        found = [workdir] if workdir.exists() or workdir.is_symlink() else []
    if recorded:
        return found
    model = paths.model(variant)
    if model.exists() and not _is_our_model(model, variant):
        found.append(model)
    for table, columns in ((paths.history(variant), HISTORY_COLUMNS), (paths.grad_capture(variant), CAPTURE_COLUMNS),
                           (paths.grad_flow(variant), PROBE_COLUMNS)):
        if table.exists() and _header(table) != columns:
            found.append(table)
    return found


def recorded_variants(lock: Path = paths.DVC_LOCK) -> set[str]:
    """The variants whose train stage dvc.lock records (none without a dvc.lock)."""
    from gradflow.params import read_yaml
    try:
        stages = (read_yaml(lock.read_text()) or {}).get("stages") or {}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return set()  # no lock yet, or one DVC itself will refuse
    return {name.split("@", 1)[1] for name in stages if name.startswith("train@")}


def require_safe_outputs(variants) -> None:
    """DataError naming the first variant whose outputs would land on a user's files, or
    whose snapshot folder is a mount point."""
    recorded = recorded_variants()
    for name in variants:
        folder = paths.workdir(name)
        if os.path.ismount(folder):
            raise DataError(f"{folder}: a mount point, and a DVC output (train@{name} removes it and "
                              f"everything in it before it runs); mount the disk at models/ or above instead")
        found = foreign_files(name, name in recorded)
        if found:
            shown = ", ".join(str(p) for p in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            raise DataError(f"variants.{name}: {shown}: not written by this pipeline, where train@{name} "
                              f"writes its outputs (DVC would delete or overwrite them); move them away "
                              f"or name the variant otherwise")
