"""A throwaway copy of the project with tiny synthetic params: what the tests (tests/conftest.py)
and benchmarks/throughput.py's dvc timing run the pipeline in. Seconds, not minutes, on 2 CPU
cores: a few hundred images, one epoch. Needs no pytest, so the benchmark runs from the main
install."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"source": "synthetic", "synthetic_train_size": 600, "synthetic_test_size": 200,
             "val_size": 200},
    "train": {"epochs": 1, "eval_batch_size": 500, "device": "cpu"},
    "variants": {"VGG_08": {"depth": 8}, "VGG_38": {"depth": 38}},
    "gradients": {"probe_size": 50},
    "sweep": {"depths": [8, 14], "fixes": ["none", "bn_rc"], "epochs": 1},
}

# What a copy of the project needs (the files git would check out).
PROJECT_FILES = ["stages", "gradflow", "reference", "params.yaml", "dvc.yaml", "pyproject.toml", ".dvcignore",
                 ".dvc/config", ".dvc/.gitignore", ".dvc/plots", ".gitignore"]


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def merged(base: dict, overrides: dict) -> dict:
    """base with overrides applied section by section; `variants` is replaced whole."""
    out = copy.deepcopy(base)
    for section, values in overrides.items():
        if isinstance(values, dict) and section != "variants" and isinstance(out.get(section), dict):
            out[section].update(copy.deepcopy(values))
        else:
            out[section] = copy.deepcopy(values)
    return out


def copy_files(dst: Path) -> Path:
    """The project's files (PROJECT_FILES) copied to dst, without byte code."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def write_params(project: Path, overrides: dict | None = None, base: dict | None = None) -> dict:
    """params.yaml of the copy: base (default: params.yaml's, then TINY) with overrides."""
    params = merged(base if base is not None else merged(default_params(), TINY), overrides or {})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params
