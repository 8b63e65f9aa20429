"""Shared fixtures: a copy of the project in a temporary folder with a tiny synthetic config.

Tests never touch the network: the synthetic source, or CIFAR-100 archives the tests write
themselves in the official pickle format.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradflow.paths import PLOTS_PAGE
from gradflow.verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tiny project (TINY params, the copy, params.yaml's merge) is shared with benchmarks/throughput.py.
from benchmarks.tiny import TINY, copy_files, default_params, merged, write_params  # noqa: E402,F401

# pytest -n auto runs one worker per core. A torch process with more compute threads than its
# share of the cores waits on each descheduled thread (the other worker's processes hold the
# other core), so each worker, and every stage process it starts, computes on its share.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

PYTHON = sys.executable
DVC = str(Path(sys.executable).with_name("dvc"))

# The workers take whole modules (--dist loadfile) in collection order, this order: the longest
# first, so that neither worker is left running a long module alone at the end. By the seconds
# each module took in a full run (2-core AMD EPYC, 2026-12-06: 1,204 s of tests, 681 s on two
# workers in xdist's default order, by number of tests); the others follow in file order.
LONGEST_FIRST = ["test_reliability.py", "test_reliability_round3.py", "test_pipeline.py",
                 "test_dependencies.py", "test_quickstart.py", "test_readme_flow.py",
                 "test_reliability_round4.py", "test_fixes.py", "test_theory.py", "test_scale.py",
                 "test_plots.py", "test_training.py", "test_distributed.py", "test_gpu_paths.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order stays


def setting(path: str, value):
    """A params edit: set `a.b.c` to value (creating nothing but the last key)."""
    def edit(params: dict) -> dict:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
        return params
    return edit


def project_params(overrides: dict | None = None):
    """The project's params.yaml with `overrides` merged in (benchmarks.tiny.merged), parsed: how
    a test gets a whole, valid Params when it cares about a few values (params.yaml is the one
    place the others are stated)."""
    from gradflow.params import parse
    return parse(merged(default_params(), overrides or {}))


def rule_verdict(metrics: dict, run: dict) -> str:
    """The verdict gradflow.verdict's rule gives for a run's own numbers: its metrics file and
    the summary kept with its model (models/V.pt's "run"). A metrics verdict must equal it."""
    return verdict(metrics["final_train_loss"], metrics["best_val_acc"], run["status"] == "diverged",
                   n_val=run["val_images"], epochs=run["epochs_run"])


@functools.cache
def offline_page() -> Path:
    """The offline `dvc plots` page (gradflow/vega.py), built once per session in the checkout
    (as its check stage would) and copied into every project copy: each copy's check would
    otherwise spend seconds building the same bytes."""
    run([PYTHON, "-c", "from gradflow.vega import write_page; write_page()"], cwd=ROOT)
    return ROOT / PLOTS_PAGE


def copy_project(dst: Path) -> Path:
    """The project's files in dst (benchmarks/tiny.py), with the offline plots page."""
    copy_files(dst)
    (dst / PLOTS_PAGE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(offline_page(), dst / PLOTS_PAGE)
    return dst


def run(args: list[str], cwd: Path, check: bool = True, timeout: float = 600, extra_env: dict | None = None,
        **kw) -> subprocess.CompletedProcess:
    """Run a command in the project copy; the copy's `stages` package wins over the installed one."""
    # The venv's bin first: dvc runs each stage's `python -m stages...` through PATH.
    env = {**os.environ, "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LOCAL_RANK", None)
    env.update(extra_env or {})
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def checkpoint_epoch(path: Path) -> int:
    """The epoch a resume checkpoint holds; 0 while there is none, or it is half written."""
    import torch

    try:
        return torch.load(path, weights_only=True)["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError, KeyError):
        return 0


def kill_after_epoch(proc: subprocess.Popen, checkpoint: Path, epoch: int, timeout: float,
                     kill=None) -> int:
    """SIGKILL `proc` (or call `kill()`) once `checkpoint` holds `epoch`; the epoch it held."""
    import time

    try:
        deadline = time.monotonic() + timeout
        while checkpoint_epoch(checkpoint) < epoch:
            assert proc.poll() is None, f"{proc.args} ended before the kill:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} after {timeout} s"
            time.sleep(0.02)
    finally:
        (kill or proc.kill)()  # no handler, no cleanup
        proc.wait()
    return checkpoint_epoch(checkpoint)


def stage(name: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([PYTHON, "-m", f"stages.{name}", *args], cwd=cwd, check=check)


def git_init(project: Path) -> None:
    run(["git", "init", "-q"], cwd=project)
    run(["git", "config", "user.email", "test@example.com"], cwd=project)
    run(["git", "config", "user.name", "test"], cwd=project)
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", "init"], cwd=project)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project with the tiny synthetic params (not a git repo)."""
    path = copy_project(tmp_path / "project")
    write_params(path)
    return path


@pytest.fixture
def fetched(project: Path) -> Path:
    """The project copy after the fetch stage."""
    stage("fetch", cwd=project)
    return project
