"""benchmarks/calibrate.py's pass/fail rule against the published runs in reference/."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibrate import TARGET, TOLERANCE, VARIANTS, judge  # noqa: E402
from gradflow import reference as R  # noqa: E402

PUBLISHED = R.load(ROOT / "reference")


def test_every_calibrated_variant_has_published_runs_to_be_held_against():
    for name in VARIANTS:
        assert PUBLISHED.get(TARGET.get(name, name)), name


def test_a_curve_inside_the_widened_range_that_learns_passes():
    # VGG_38_BN's four public runs after epochs 1-3: 0.0252-0.0444, 0.0348-0.0508, 0.034-0.0816
    bands, ours, theirs, ok = judge("VGG_38_BN", [0.03, 0.05, 0.07], [4.3, 4.1, 4.0], PUBLISHED["VGG_38_BN"])
    assert ok and ours == "learns" and theirs == ["learns"]
    assert abs(bands[0][0] - (0.0252 - TOLERANCE)) < 1e-9 and abs(bands[2][1] - (0.0816 + TOLERANCE)) < 1e-9


def test_a_curve_outside_the_range_fails_at_any_epoch():
    runs = PUBLISHED["VGG_38_BN_RC"]  # 0.060-0.074 after epoch 1
    assert not judge("VGG_38_BN_RC", [0.035, 0.10, 0.15], [4.3, 4.0, 3.8], runs)[3]  # half the pace
    assert not judge("VGG_38_BN_RC", [0.07, 0.10, 0.20], [4.2, 4.0, 3.6], runs)[3]  # too fast at epoch 3


def test_residual_alone_is_held_against_vgg08_and_fails_at_chance():
    runs = PUBLISHED[TARGET["VGG_38_RC"]]
    assert judge("VGG_38_RC", [0.024, 0.06, 0.09], [4.39, 4.14, 3.97], runs)[3]
    _, ours, _, ok = judge("VGG_38_RC", [0.008, 0.010, 0.010], [4.6075, 4.6053, 4.6049], runs)
    assert ours == "stuck at chance" and not ok


def test_plain_vgg38_passes_at_chance_though_the_coursework_run_is_undecided_after_one_epoch():
    _, ours, theirs, ok = judge("VGG_38", [0.008, 0.010, 0.010], [4.6075, 4.6053, 4.6049], PUBLISHED["VGG_38"])
    assert ours == "stuck at chance" and theirs == ["undecided"] and ok
    # inside the accuracy band (chance + 1.5 points) but learning: the verdict check fails it
    assert not judge("VGG_38", [0.024, 0.02, 0.02], [4.5, 4.5, 4.5], PUBLISHED["VGG_38"])[3]
