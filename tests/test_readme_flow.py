"""The README's "Comparing experiments" flow, run as written, in order, on a fresh copy with
tiny settings: a baseline experiment (what the quick start leaves), then every command of the
README's block. Each must exit 0, the compact `dvc exp show` must fit 200 columns, and the
second experiment must start from the baseline, not from the first experiment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import DVC, ROOT, copy_project, default_params, git_init, run, write_params

PARAMS = {
    "model": {"filters": 8},
    "variants": {v: default_params()["variants"][v] for v in ("VGG_08", "VGG_38")},
    "sweep": {"depths": [], "fixes": ["none"], "epochs": 1},  # no sweep: the flow compares variants
}


def readme_flow() -> list[str]:
    """The commands of the first bash block under '## Comparing experiments', comments off."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Comparing experiments", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def test_the_flow_is_there():
    commands = readme_flow()
    assert any(c.startswith("dvc exp run") for c in commands)
    assert any(c.startswith("dvc exp show") for c in commands)
    assert any(c.startswith("dvc metrics diff") for c in commands)
    assert any(c.startswith("dvc plots diff") for c in commands)


@pytest.mark.slow
def test_readme_flow_runs_as_written(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    write_params(project, PARAMS)
    git_init(project)
    bin_dir = str(Path(DVC).parent)
    run([DVC, "exp", "run"], cwd=project)  # what the quick start leaves, tiny

    outputs = {}
    env = {"COLUMNS": "120", "PATH": f"{bin_dir}:/usr/bin:/bin"}
    for command in readme_flow():
        command = command.replace(" --open", f" -o {tmp_path / 'plots_diff'}")  # no browser here
        if command == ". .venv/bin/activate":  # this copy has no .venv: `run` puts the suite's first on PATH
            continue
        proc = run(["bash", "-c", command], cwd=project)
        outputs[command.split(" -")[0]] = proc.stdout + proc.stderr
        if command.startswith("git checkout"):
            params = yaml.safe_load((project / "params.yaml").read_text())
            assert params["variants"]["VGG_38"]["batch_norm"] is False  # back at the baseline

    shown = next(out for cmd, out in outputs.items() if cmd.startswith("dvc exp show"))
    assert "vgg38-bn" in shown and "stuck at chance" in shown and "batch_norm" in shown
    assert max(len(line) for line in shown.splitlines()) <= 120, shown
    assert "…" not in shown, "a column collapsed"
    diff = next(out for cmd, out in outputs.items() if cmd.startswith("dvc metrics diff"))
    assert re.search(r"log10_grad_ratio_init\s+-1\d\.\d+", diff), diff  # readable, not 0.0
    assert (tmp_path / "plots_diff" / "index.html").is_file()
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["lr"] == 0.003 and params["variants"]["VGG_38"]["batch_norm"] is False



def drift_line(proc) -> str:
    return next(line for line in (proc.stdout + proc.stderr).splitlines() if "differs from the last commit" in line)


@pytest.mark.slow
def test_a_failed_or_earlier_run_names_the_keys_it_leaves_behind(tmp_path: Path):
    """`dvc exp run -S` leaves its values in params.yaml. A failed run says in one line which
    keys now differ from the last commit and how to restore them; a good run that carries
    values over from an earlier one says so too, before it trains. The check stage says it
    (first in every run), so the good runs stop there: `dvc exp run ... check`."""
    project = copy_project(tmp_path / "project")
    write_params(project, PARAMS)
    git_init(project)

    # failed, then good: the failure names the bad key and the restore command
    failed = run([DVC, "exp", "run", "-S", "train.epochs=three"], cwd=project, check=False)
    assert failed.returncode != 0
    line = drift_line(failed)
    assert "train.epochs" in line and "git checkout HEAD -- params.yaml" in line
    run(["bash", "-c", line.split(": ")[-1]], cwd=project)  # the command it printed
    good = run([DVC, "exp", "run", "-S", "train.lr=0.002", "check"], cwd=project)
    assert "train.epochs" not in drift_line(good) and "train.lr" in drift_line(good)

    # good, then good with other keys: the second names the first's lr as carried over
    second = run([DVC, "exp", "run", "-S", "train.flip=false", "check"], cwd=project)
    line = drift_line(second)
    assert "train.lr" in line and "train.flip" in line
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lr"] == 0.002
