"""Every file the pipeline reads or writes, in one place. dvc.yaml spells the same paths (a
test holds the two together); stages and tests take them from here."""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
# What the check stage saw of params.yaml (size, mtime, inode): a stage compares it with the
# file's stat and rereads params.yaml only when they differ (gradflow.params.require_unchanged).
# In .tmp/: not an output, not a dependency, never an input to any output's bytes.
CHECKED_PARAMS = Path(".tmp") / "checked-params.json"
DVC_YAML = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")

DATA = Path("data")
RAW = DATA / "raw"                       # the CIFAR-100 archive, the user's or downloaded
DATASET = DATA / "dataset.pt"            # fetch: uint8 images + labels, split
MANIFEST = DATA / "manifest.json"        # fetch: the dataset's source and md5
CONFIG = DATA / "config"                 # check: one resolved config per run


def data_config() -> Path:
    """The resolved `data` section: what the fetch stage reads."""
    return CONFIG / "data.json"


def run_config(name: str) -> Path:
    """The resolved config of a variant or a sweep point (`sweep-38-bn_rc`)."""
    return CONFIG / f"{name}.json"


MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
RESULTS = PLOTS / "results.md"  # the plots stage's report
REFERENCE = Path("reference")


def model(variant: str) -> Path:
    return MODELS / f"{variant}.pt"      # best-validation weights + resolved config


def workdir(variant: str) -> Path:
    return MODELS / variant              # weight snapshots (the resume state: RESUME, below)


SNAPSHOT_GLOB = "epoch_*.pt"  # the weight snapshots in a variant's workdir


def snapshot_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def snapshot(variant: str, epoch: int) -> Path:
    return workdir(variant) / snapshot_name(epoch)


RESUME = MODELS / ".resume"              # resume checkpoints: outside every DVC output


def checkpoint(variant: str) -> Path:
    """The resume state of a run in progress. Not a DVC output on purpose: `dvc exp run` checks
    out every output before it runs and removes what the lock does not list, so a checkpoint
    inside one would be gone on the rerun after a kill. Keyed by a fingerprint of the config and
    data, so a stale one is never resumed."""
    return RESUME / f"{variant}.pt"


def metrics(variant: str) -> Path:
    return METRICS / f"{variant}.json"


def signal_metrics(variant: str) -> Path:
    return METRICS / "signal" / f"{variant}.json"   # gradients: the logits' signal share


def sweep_metrics(depth: int, fix: str) -> Path:
    return METRICS / "sweep" / f"{depth}-{fix}.json"


def history(variant: str) -> Path:
    return PLOTS / "history" / f"{variant}.csv"


def grad_capture(variant: str) -> Path:
    return PLOTS / "grad_capture" / f"{variant}.csv"


def grad_flow(variant: str) -> Path:
    return PLOTS / "grad_flow" / f"{variant}.csv"


LIVE = Path("dvclive")                   # DVCLive: per-epoch progress (metrics.json, an output)


def live(name: str) -> Path:
    return LIVE / name


def live_metrics(name: str) -> Path:
    """DVCLive's metrics.json of the run: an output of train@ (the latest point's numbers)."""
    return live(name) / "metrics.json"


def live_timings(name: str) -> Path:
    """The run's timings: they differ on every run, so not an output (git-ignored)."""
    return live(name) / "timings.json"

# The page `dvc plots show/diff` fill (.dvc/config: plots.html_template, relative to .dvc/):
# Vega inlined from the installed vl-convert-python, written by gradflow.vega; git-ignored by
# DVC's own .dvc/.gitignore (/tmp).
PLOTS_PAGE = Path(".dvc") / "tmp" / "plots_page.html"
