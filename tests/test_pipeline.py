"""The DVC pipeline end to end: one repo, one `dvc repro`, then experiments that must rerun
exactly the branch whose params changed, bad params that must stop before anything is
deleted, and the metrics commands on the results.

The tests share one git + DVC repo (a module fixture, after one committed `dvc repro`) and
run in any order, alone or together: `Repo.exp` runs each experiment from that committed
baseline the first time a test asks for it and remembers its output for the next test that
needs it. 8 filters keep VGG_38 cheap on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import DVC, copy_project, default_params, git_init, run, write_params

PARAMS = {
    "model": {"filters": 8},
    # As params.yaml spells them: every switch listed, so `-S variants.VGG_38.<switch>=` works.
    "variants": {v: default_params()["variants"][v] for v in ("VGG_08", "VGG_38")},
    "sweep": {"depths": [8], "fixes": ["none"], "epochs": 1},
}
VARIANTS = list(PARAMS["variants"])
EVERY_STAGE = {"check", "fetch", "sweep@8-none", "plots",
               *(f"{s}@{v}" for s in ("train", "gradients") for v in VARIANTS)}
UP_TO_DATE = "Data and pipelines are up to date."


class Repo:
    def __init__(self, path: Path):
        self.path = path
        self.exps: dict[str, str] = {}  # what changed -> experiment name
        self.runs: dict[str, object] = {}  # setting -> its `dvc exp run` process

    def dvc(self, *args: str, check: bool = True):
        proc = run([DVC, *args], cwd=self.path, check=check)
        proc.output = proc.stdout + proc.stderr
        return proc

    def baseline(self) -> None:
        """Back to the committed `dvc repro`: params, dvc.lock, metrics and every cached output."""
        run(["git", "checkout", "-q", "--", "."], cwd=self.path)
        self.dvc("checkout", "--force")

    def exp_run(self, setting: str, check: bool = True):
        """`dvc exp run -S setting` on the baseline; the process gets the metrics files before
        and after it (`.before`, `.after`: variant -> bytes), which later tests can still read."""
        self.baseline()
        proc = self.dvc("exp", "run", "-S", setting, check=check)
        if proc.returncode == 0:
            self.exps[setting] = re.search(r"Ran experiment\(s\): (\S+)", proc.output).group(1)
        proc.before = {v: run(["git", "show", f"HEAD:metrics/{v}.json"], cwd=self.path).stdout.encode()
                       for v in VARIANTS}
        proc.after = {v: (self.path / "metrics" / f"{v}.json").read_bytes() for v in VARIANTS}
        proc.params_after = {v: self.num_params(v) for v in VARIANTS}
        return proc

    def run_details(self, variant: str) -> dict:
        """What models/<variant>.pt keeps about its run (status, params, ...)."""
        return torch.load(self.path / "models" / f"{variant}.pt", weights_only=True)["run"]

    def num_params(self, variant: str) -> int:
        return self.run_details(variant)["params"]

    def exp(self, setting: str):
        """The experiment `-S setting` on the baseline, run the first time a test asks for it."""
        if setting not in self.runs:
            self.runs[setting] = self.exp_run(setting)
        return self.runs[setting]

    def outputs(self) -> dict[str, str]:
        """md5 of every file the pipeline writes or reads back, and of dvc.lock."""
        files = [p for d in ("data", "models", "metrics", "plots") for p in (self.path / d).rglob("*")]
        files += [self.path / "params.ok", self.path / "dvc.lock"]
        return {str(p.relative_to(self.path)): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(files) if p.is_file()}

    def metrics(self, variant: str) -> dict:
        return json.loads((self.path / "metrics" / f"{variant}.json").read_text())


def ran(proc) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", proc.output))


def skipped(proc) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", proc.output))



@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git repo with the project, tiny params, after one full `dvc repro` (committed)."""
    path = copy_project(tmp_path_factory.mktemp("pipeline") / "project")
    write_params(path, PARAMS)
    git_init(path)
    r = Repo(path)
    r.first_repro = r.dvc("repro")  # conftest.run puts the venv first on PATH for dvc's `python`
    run(["git", "add", "-A"], cwd=path)
    run(["git", "commit", "-qm", "dvc repro"], cwd=path)
    return r


@pytest.mark.slow
def test_repro_runs_every_stage_then_nothing(repo):
    assert ran(repo.first_repro) == EVERY_STAGE
    repo.baseline()
    for v in VARIANTS:
        for out in (f"models/{v}.pt", f"metrics/{v}.json", f"plots/history/{v}.csv",
                    f"plots/grad_capture/{v}.csv", f"plots/grad_flow/{v}.csv"):
            assert (repo.path / out).is_file(), out
    assert (repo.path / "plots" / "results.md").is_file()
    assert repo.run_details("VGG_08")["status"] == repo.run_details("VGG_38")["status"] == "ok"

    assert UP_TO_DATE in repo.dvc("status").output
    again = repo.dvc("repro")
    assert ran(again) == set() and "train@VGG_08" in skipped(again)


@pytest.mark.slow
def test_exp_on_one_variant_reruns_its_branch_only(repo):
    proc = repo.exp("variants.VGG_38.depth=14")
    assert ran(proc) == {"check", "train@VGG_38", "gradients@VGG_38", "plots"}
    assert {"train@VGG_08", "gradients@VGG_08", "fetch", "sweep@8-none"} <= skipped(proc)
    assert proc.params_after["VGG_38"] < 10_000  # 13 convs of 8 filters, not 37
    assert proc.after["VGG_08"] == proc.before["VGG_08"]


@pytest.mark.slow
def test_exp_on_probe_size_reruns_no_training(repo):
    proc = repo.exp("gradients.probe_size=20")
    assert ran(proc) == {"check", "plots", *(f"gradients@{v}" for v in VARIANTS)}
    assert not any(s.startswith("train@") for s in ran(proc))


@pytest.mark.slow
def test_exp_switching_a_fix_on_reruns_its_branch_only(repo):
    proc = repo.exp("variants.VGG_38.batch_norm=true")
    assert ran(proc) == {"check", "train@VGG_38", "gradients@VGG_38", "plots"}
    repo.baseline()
    assert proc.params_after["VGG_38"] > repo.num_params("VGG_38")  # BN's scale and shift


@pytest.mark.slow
@pytest.mark.parametrize("setting, key", [
    ("train.epoch=3", "train.epoch"),             # DVC refuses a key the file lacks itself
    ("+train.epoch=3", "train.epoch"),            # added anyway: the check stage refuses it
    ("train.batch_size=0", "train.batch_size"),
    ("variants.VGG_38.depth=39", "variants.VGG_38.depth"),
    ("gradients.probe_size=-1", "gradients.probe_size"),
])
def test_bad_params_stop_before_anything_changes(repo, setting, key):
    repo.baseline()
    params = (repo.path / "params.yaml").read_text()
    before = repo.outputs()
    proc = repo.exp_run(setting, check=False)
    (repo.path / "params.yaml").write_text(params)  # a failed exp leaves its params behind
    assert proc.returncode != 0
    assert key in proc.output
    assert ran(proc) <= {"check"}  # stopped at the check, before any stage deleted its outputs
    assert repo.outputs() == before


@pytest.mark.slow
def test_metrics_show_and_diff_between_experiments(repo):
    repo.exp("variants.VGG_38.depth=14")
    repo.exp("variants.VGG_38.batch_norm=true")
    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    found = {}

    def walk(node):  # exp show's JSON: baselines with their experiments nested
        if isinstance(node, dict):
            if node.get("name") in repo.exps.values() and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"].get("metrics") or {}
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(shown)
    assert set(found) == set(repo.exps.values())
    for metrics in found.values():
        assert {f"metrics/{v}.json" for v in VARIANTS} <= set(metrics)
        assert not any(path.endswith(".gitignore") for path in metrics)  # only the metrics files
        assert metrics["metrics/VGG_08.json"]["data"]["verdict"]

    depth, bn = repo.exps["variants.VGG_38.depth=14"], repo.exps["variants.VGG_38.batch_norm=true"]
    # depth 14 vs depth 38 with batch norm, both from the baseline's depth 38
    diff = json.loads(repo.dvc("metrics", "diff", depth, bn, "--json").stdout)
    assert diff["metrics/VGG_38.json"]  # two other VGG_38 runs: other scores
    assert "metrics/VGG_08.json" not in diff  # not rerun: the very same file

    assert UP_TO_DATE in repo.dvc("status").output  # after exps and failed exps alike
