"""The quick start (gradflow.quickstart), read as benchmarks/seeds.py reads it: its overrides give
a valid params.yaml that keeps exactly the five variants of the finding, on the full training
set; the README runs it in one short command; and the rest, run as it prints it from the
quick start committed as a baseline, trains the other variants."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PYTHON, ROOT, copy_project, git_init, run

sys.path.insert(0, str(ROOT))

from benchmarks.seeds import quick_start_overrides, quick_start_params  # noqa: E402
from gradflow.quickstart import FINDING  # noqa: E402


def test_the_quick_start_trains_the_five_variants_of_the_finding():
    params = quick_start_params(quick_start_overrides())
    assert list(params.variants) == list(FINDING)
    assert params.sweep.depths == ()  # no sweep in the quick start
    assert params.data.source == "synthetic" and params.data.train_limit is None  # 47,500 an epoch
    assert params.train.precision == "fast"  # bf16 where the CPU has it natively


def test_the_readme_runs_it_in_one_short_command():
    text = (ROOT / "README.md").read_text()
    command = re.search(r"```bash\n(python3 -m venv .*?gradflow\.quickstart.*?)\n```", text, re.S).group(1)
    setup, main_job = command.split(" && .venv/bin/python -m gradflow.quickstart")
    assert setup.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert len("python -m gradflow.quickstart" + main_job) <= 200 and "\n" not in command


TINY = ["-S", "model.filters=4", "-S", "data.synthetic_train_size=600", "-S", "data.synthetic_test_size=100",
        "-S", "data.val_size=100", "-S", "data.eval_limit=100", "-S", "gradients.probe_size=20",
        "-S", "train.eval_every=0", "-S", "train.precision=fp32",
        "-S", "sweep.fixes=[none]", "-S", "sweep.depths=[8]"]  # the rest's sweep: one point


@pytest.mark.slow
def test_the_rest_trains_the_other_variants_from_the_committed_baseline(tmp_path: Path):
    """Quick start (tiny sizes added with -S), commit it as the README's baseline, run the
    printed command for the rest: every other variant trains, the five are not retrained."""
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    others = [name for name in params["variants"] if name not in FINDING]
    for name in others[1:]:  # one other is enough to show the rest trains it, and costs less
        del params["variants"][name]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_init(project)
    first = run([PYTHON, "-m", "gradflow.quickstart", *TINY], cwd=project)
    assert "| VGG_38 |" in first.stdout
    rest = first.stdout.strip().splitlines()[-1].split("same sizes: ", 1)[1]
    assert rest.startswith("touch params.yaml && git checkout ") and "python -m gradflow.quickstart --rest" in rest
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", "baseline: the quick start"], cwd=project)
    assert set(yaml.safe_load((project / "params.yaml").read_text())["variants"]) == set(FINDING)

    second = run(["bash", "-c", rest.replace("python -m", f"{PYTHON} -m")], cwd=project)
    assert set(yaml.safe_load((project / "params.yaml").read_text())["variants"]) == {*FINDING, others[0]}
    for name in others[:1]:
        assert (project / "metrics" / f"{name}.json").is_file(), name
        assert f"stage 'train@{name}'" in second.stdout + second.stderr
    for name in FINDING:
        assert f"Running stage 'train@{name}'" not in second.stdout + second.stderr, name
