"""gradflow.reference: the published CIFAR-100 runs in reference/ (the coursework's own and
students' public ones), read once, and judged in results.md at our run's budget."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import ROOT
from gradflow import reference as R
from gradflow.params import Variant
from gradflow.report import results_markdown

COLUMNS = ["train_acc", "train_loss", "val_acc", "val_loss"]


@pytest.fixture(scope="module")
def published() -> dict[str, list[R.PublicRun]]:
    return R.load(ROOT / "reference")


def test_load_gives_the_coursework_first_then_the_public_runs(published):
    assert set(published) == {"VGG_08", "VGG_38", "VGG_38_BN", "VGG_38_BN_RC"}
    for name in ("VGG_08", "VGG_38"):
        assert [r.source for r in published[name]] == [R.COURSEWORK]
    assert len(published["VGG_38_BN"]) == 4 and len(published["VGG_38_BN_RC"]) == 3
    for name in ("VGG_38_BN", "VGG_38_BN_RC"):
        assert all(r.source != R.COURSEWORK and r.variant == name for r in published[name])
    assert sorted(len(r.curves) for r in published["VGG_38_BN_RC"]) == [13, 100, 100]  # one run was stopped


def test_every_curve_is_numbered_from_epoch_1(published):
    for runs in published.values():
        for run in runs:
            curves = run.curves
            assert list(curves.columns) == ["epoch", *COLUMNS], (run.variant, run.source)
            assert list(curves["epoch"]) == list(range(1, len(curves) + 1)), (run.variant, run.source)


def test_verdict_after_judges_the_first_epochs_by_our_rule(published):
    assert [r.verdict_after(1) for r in published["VGG_38_BN_RC"]] == ["learns"] * 3
    assert [r.verdict_after(1) for r in published["VGG_38_BN"]] == ["learns"] * 4
    vgg38 = published["VGG_38"][0]
    # Epoch 1 ends at train loss 4.865, 0.26 above ln 100: outside the rule's 0.02 band for "stuck
    # at chance", and not above chance either; from epoch 3 it sits in the band.
    assert vgg38.verdict_after(1) == "undecided"
    assert vgg38.verdict_after(3) == "stuck at chance"
    assert vgg38.verdict_after(len(vgg38.curves)) == "stuck at chance"
    short = min(published["VGG_38_BN_RC"], key=lambda r: len(r.curves))
    assert short.verdict_after(100) == short.verdict_after(13)  # all it has


def test_load_test_gives_the_coursework_test_scores():
    test = R.load_test(ROOT / "reference")
    assert set(test) == {"VGG_08", "VGG_38"}
    assert test["VGG_08"]["test_acc"] == pytest.approx(0.4995)
    assert test["VGG_38"]["test_acc"] == pytest.approx(0.01)


def write_summary(path, val_acc: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(val_acc)
    pd.DataFrame({"train_acc": [0.02] * n, "train_loss": [4.5] * n, "val_acc": val_acc,
                  "val_loss": [4.4] * n}).to_csv(path, index=False)


def test_val_acc_range_on_two_runs(tmp_path):
    write_summary(tmp_path / "VGG_X" / "summary.csv", [0.05, 0.20, 0.30])
    write_summary(tmp_path / "public" / "VGG_X" / "someone_repo" / "summary.csv", [0.10, 0.15, 0.40])
    published = R.load(tmp_path)
    assert list(published) == ["VGG_X"]
    assert [r.source for r in published["VGG_X"]] == [R.COURSEWORK, "someone_repo"]
    assert R.val_acc_range(published["VGG_X"], 2) == [(0.05, 0.10), (0.15, 0.20)]
    assert R.val_acc_range(published["VGG_X"], 3)[-1] == (0.30, 0.40)


def test_load_of_an_empty_folder_is_empty(tmp_path, capsys):
    assert R.load(tmp_path) == {} and R.load_test(tmp_path) == {}
    assert "no published runs" in capsys.readouterr().err


def fake_run(verdict: str, epochs: int) -> dict:
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "train_loss": 4.0, "val_loss": 4.0,
                            "train_acc": 0.05, "val_acc": 0.05})
    metrics = {"verdict": verdict, "epochs": epochs, "epochs_run": epochs, "val_images": 2500,
               "train_images": 47_500, "final_train_loss": 4.0, "best_val_acc": 0.05,
               "data_source": "synthetic", "device": "cpu"}
    return {"metrics": metrics, "history": history, "capture": pd.DataFrame(), "flow": pd.DataFrame()}


def reference_column(markdown: str) -> dict[str, str]:
    """variant -> its `reference` cell in results.md's first table (the variants')."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant |"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    header, rows = table[0], table[2:]  # table[1]: the |---| line
    return {row[0]: row[header.index("reference")] for row in rows}


def test_results_reference_column_judges_the_published_runs_at_our_budget(published):
    variants = {"VGG_38": Variant(depth=38), "VGG_38_BN_RC": Variant(depth=38, batch_norm=True, residual=True),
                "VGG_38_BN_RC_lr1e2": Variant(depth=38, batch_norm=True, residual=True, lr=1e-2)}
    # ours "stuck", the coursework's "undecided" after one epoch: neither learns, so they agree
    runs = {"VGG_38": fake_run("stuck at chance", 1), "VGG_38_BN_RC": fake_run("learns", 1),
            "VGG_38_BN_RC_lr1e2": fake_run("learns", 1)}
    text = results_markdown(runs, pd.DataFrame(), published, R.load_test(ROOT / "reference"), variants)
    cells = reference_column(text)
    assert cells["VGG_38"] == "undecided (coursework run, after 1 epoch)"
    assert cells["VGG_38_BN_RC"] == "learns (3 public runs, after 1 epoch)"
    assert cells["VGG_38_BN_RC_lr1e2"] == "learns (coursework's conclusion)"  # no published run of it
    assert "Variants that learn exactly where the reference's do: 3 of 3" in text
    # the coursework's shipped results, judged on all their epochs
    assert "| reference VGG_08 (coursework) | learns |" in text
    assert "| reference VGG_38 (coursework) | stuck at chance |" in text

    runs = {"VGG_38": fake_run("stuck at chance", 3)}
    cells = reference_column(results_markdown(runs, pd.DataFrame(), published, {}, variants))
    assert cells["VGG_38"] == "stuck at chance (coursework run, after 3 epochs)"


def test_results_reference_column_when_the_published_runs_disagree(tmp_path):
    """A split: the verdict most runs give, how many give it, and whose runs they are; the
    summary counts a run that agrees with that verdict as matching."""
    write_summary(tmp_path / "VGG_X" / "summary.csv", [0.01])  # at chance: train loss 4.5 is not
    for repo in ("a_r", "b_r"):
        write_summary(tmp_path / "public" / "VGG_X" / repo / "summary.csv", [0.30])
    published = R.load(tmp_path)
    assert [r.verdict_after(1) for r in published["VGG_X"]] == ["undecided", "learns", "learns"]
    text = results_markdown({"VGG_X": fake_run("learns", 1)}, pd.DataFrame(), published, {},
                            {"VGG_X": Variant(depth=38, batch_norm=True)})
    assert reference_column(text)["VGG_X"] == "learns in 2 of 3 (coursework run + 2 public runs, after 1 epoch)"
    assert "Variants that learn exactly where the reference's do: 1 of 1" in text
    text = results_markdown({"VGG_X": fake_run("undecided", 1)}, pd.DataFrame(), published, {},
                            {"VGG_X": Variant(depth=38, batch_norm=True)})
    assert "Variants that learn exactly where the reference's do: 0 of 1 (differ: VGG_X)" in text


def test_results_say_the_data_is_the_stand_in_and_where_its_calibration_is(published):
    variants = {"VGG_38": Variant(depth=38)}
    synthetic = results_markdown({"VGG_38": fake_run("stuck at chance", 1)}, pd.DataFrame(), published, {}, variants)
    assert "not CIFAR-100" in synthetic and "benchmarks/calibration.md" in synthetic
    real = fake_run("stuck at chance", 1)
    real["metrics"]["data_source"] = "cifar100"
    assert "benchmarks/calibration.md" not in results_markdown({"VGG_38": real}, pd.DataFrame(), published, {}, variants)


def test_results_explain_each_verdict_that_differs_from_its_reference(published):
    """A sentence per differing verdict, from the run's own numbers: a collapsed forward signal,
    or healthy gradients and signal that just have not learned yet; none for an agreeing one."""
    variants = {"VGG_38": Variant(depth=38), "VGG_38_RC": Variant(depth=38, residual=True),
                "VGG_38_BN": Variant(depth=38, batch_norm=True)}
    plain, rc, bn = fake_run("stuck at chance", 1), fake_run("stuck at chance", 1), fake_run("learns", 1)
    plain["metrics"].update(final_train_loss=4.6095, best_val_acc=0.008, log10_grad_ratio_init=-13.55,
                            signal_share_init=7.8e-29, signal_share_final=1.6e-29)
    rc["metrics"].update(final_train_loss=4.6070, best_val_acc=0.012, log10_grad_ratio_init=-0.96,
                         signal_share_init=4e-4, signal_share_final=0.2)
    text = results_markdown({"VGG_38": plain, "VGG_38_RC": rc, "VGG_38_BN": bn}, pd.DataFrame(), published, {},
                            variants)
    why = text.split("## Where a verdict differs from its reference, and why", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in why.splitlines() if line.startswith("- ")]
    assert [line.split(":", 1)[0] for line in lines] == ["- VGG_38", "- VGG_38_RC"]  # BN agrees
    assert "say undecided (coursework run: training loss 4.865" in lines[0]
    assert "2.8e-14" in lines[0] and "from 7.8e-29 at initialisation to 1.6e-29" in lines[0]
    assert "0.260 or more from ln 100" in lines[0]
    assert "the reference says learns (coursework's conclusion)" in lines[1]
    assert "first/last conv 1.1e-01" in lines[1] and "signal share 0.2 at the end" in lines[1]
    assert "has not learned enough yet at this budget" in lines[1]
    assert "grad ratio at init (training)" in text and "measured (probe)" not in text  # no probe table here
