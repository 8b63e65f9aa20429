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
        proc = run(["bash", "-c", command], cwd=project, extra_env=env)
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

