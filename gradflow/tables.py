"""The tables and metrics files the stages write and the plots stage reads: their columns and
keys, in one place, and the checks the plots stage makes before it draws from them.

A file that is there but empty, truncated, foreign (another variant's, another table's) or a
metrics file without its keys is a DataError: one line naming the file and the command that
remakes it (gradflow.cli: exit 2), never a figure drawn from it. A missing table stays a note
(`plots: ... is missing; drawing without it`): a variant not probed yet, for example."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from gradflow.errors import DataError

# plots/history/<variant>.csv: a row per point of the curves (gradflow.training.point),
# every train.eval_every images and at each epoch's end (val_images: all of validation there).
HISTORY_COLUMNS = ("variant", "epoch", "images_seen", "train_loss", "train_acc", "val_loss", "val_acc",
                   "val_images", "lr")
STATS = ("mean_abs_grad", "grad_norm", "max_abs_grad", "weight_norm", "update_ratio")
CAPTURE_COLUMNS = ("variant", "epoch", "step", "layer_index", "layer") + STATS + ("depth",)
ACTIVATION_COLUMNS = ("act_mean", "act_std", "act_nonpos_frac", "signal_share")  # gradflow/probe.py
PROBE_COLUMNS = CAPTURE_COLUMNS + ACTIVATION_COLUMNS + ("predicted_mean_abs_grad", "predicted_signal_share")
TEXT_COLUMNS = ("variant", "layer")  # every other column holds numbers (nan allowed)

METRICS_KEYS = ("verdict", "test_acc", "test_loss", "best_val_acc", "final_train_loss",
                "log10_grad_ratio_init", "log10_grad_ratio_final")  # metrics/<variant>.json
SIGNAL_KEYS = ("signal_share_init", "signal_share_final")  # metrics/signal/<variant>.json
SWEEP_KEYS = ("depth", "fix", "verdict", "final_train_loss", "best_val_acc", "log10_grad_ratio_init",
              "log10_grad_ratio_final", "log10_grad_ratio_predicted")  # metrics/sweep/<point>.json


def check_table(path: Path | str, columns: tuple[str, ...], variant: str, what_to_do: str) -> None:
    """DataError unless path (if it exists) is a complete table of `columns` for `variant`:
    a header, whole rows ending in a line end, numbers where numbers belong."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path}: empty (0 bytes), not a table; {what_to_do}")
    if not data.endswith(b"\n"):
        raise DataError(f"{path}: truncated (it ends mid-line, after {len(data)} bytes); {what_to_do}")
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable table ({type(e).__name__}); {what_to_do}") from None
    if tuple(rows[0]) != columns:
        raise DataError(f"{path}: its columns are not this table's (expected {', '.join(columns[:4])}, ...; "
                        f"got {', '.join(rows[0][:4]) or 'none'}{', ...' if len(rows[0]) > 4 else ''}); "
                        f"{what_to_do}")
    numeric = [i for i, c in enumerate(columns) if c not in TEXT_COLUMNS]
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(columns):
            raise DataError(f"{path}: line {line} has {len(row)} of {len(columns)} fields (truncated or "
                            f"damaged); {what_to_do}")
        if row[0] != variant:
            raise DataError(f"{path}: line {line} is of variant {row[0]!r}, not {variant!r}; {what_to_do}")
        for i in numeric:
            try:
                float(row[i]) if row[i] != "" else None
            except ValueError:
                raise DataError(f"{path}: line {line}, {columns[i]}: {row[i][:20]!r} is not a number; "
                                f"{what_to_do}") from None


def check_metrics(path: Path | str, value: dict, keys: tuple[str, ...], what_to_do: str) -> dict:
    """value (read from path), if it has every key with a value of the right kind."""
    for key in keys:
        if key not in value:
            raise DataError(f"{path}: has no {key!r}, so it is not a metrics file of this pipeline; "
                            f"{what_to_do}")
        v = value[key]
        if key in ("verdict", "fix"):
            ok = isinstance(v, str) and v != ""
        elif key == "depth":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if not ok:
            raise DataError(f"{path}: {key} is {v!r}, not a {'name' if key in ('verdict', 'fix') else 'number'}; "
                            f"{what_to_do}")
    return value
