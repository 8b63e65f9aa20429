"""The README's quick start, read as benchmarks/seeds.py reads it: its overrides give a valid
params.yaml that keeps exactly the five variants of the finding, on the full training set, and
the command it prints for the rest names the same sizes."""

from __future__ import annotations

import re
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.seeds import FINDING, quick_start_overrides, quick_start_params  # noqa: E402


def test_the_quick_start_trains_the_five_variants_of_the_finding():
    params = quick_start_params(quick_start_overrides())
    assert list(params.variants) == list(FINDING)
    assert params.sweep.depths == ()  # no sweep in the quick start
    assert params.data.source == "synthetic" and params.data.train_limit is None  # 47,500 an epoch
    assert params.train.precision == "fast"  # bf16 where the CPU has it natively


def test_the_rest_is_one_printed_command_with_the_same_sizes():
    text = (ROOT / "README.md").read_text()
    command = re.search(r"```bash\n(python3 -m venv .*?dvc exp run.*?)\n```", text, re.S).group(1)
    printed = re.search(r'echo "([^"]*)"', command).group(1)
    assert "git checkout HEAD -- params.yaml && dvc exp run $SIZES" in printed
    assert command.count("dvc exp run $SIZES") == 2  # the run and the printed rest share $SIZES
