"""The plots stage on a real tiny run, and the DVC-native plots that `dvc plots diff` renders.

One module-wide run (fetch, train + gradients for VGG_08 and VGG_38, two sweep points, plots)
feeds every test; the tests that change something work on a copy of it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import DVC, copy_project, run, stage, write_params

FIGURES = ["training_curves.png", "gradient_flow.png", "gradient_heatmap.png", "activations.png",
           "depth_sweep.png"]
SWEEP_COLUMNS = ["depth", "fix", "final_train_loss", "final_val_acc", "grad_ratio_init",
                 "grad_ratio_final", "status"]
# Smaller than TINY: these tests only need every table to exist with real numbers in it.
SMALL = {
    "data": {"synthetic_train_size": 200, "synthetic_test_size": 50, "val_size": 50},
    "model": {"filters": 8},  # a narrow net: the plots need every table, not accuracy
    "gradients": {"probe_size": 20},
    "sweep": {"depths": [8], "fixes": ["none", "bn_rc"], "epochs": 1},
}


@pytest.fixture(scope="module")
def plotted(tmp_path_factory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("plots") / "project")
    write_params(project, SMALL)
    stage("fetch", cwd=project)
    for variant in ("VGG_08", "VGG_38"):
        stage("train", variant, cwd=project)
        stage("gradients", variant, cwd=project)
    for fix in ("none", "bn_rc"):
        stage("sweep", "8", fix, cwd=project)
    stage("plots", cwd=project)
    return project


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path}: no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


def table_rows(markdown: str, first_header: str = "variant") -> dict[str, dict[str, str]]:
    """First cell -> {column: cell} for the rows of the markdown table whose header starts
    with `first_header`."""
    rows, header = {}, None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
        elif not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif header[0] == first_header:
                rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.slow
def test_every_figure_is_a_real_png(plotted):
    for name in FIGURES:
        path = plotted / "plots" / name
        assert path.is_file(), name
        assert path.stat().st_size > 10_000, f"{name}: {path.stat().st_size} bytes, too small to hold a plot"
        width, height = png_size(path)
        assert width >= 600 and height >= 300, f"{name}: {width}x{height}"


@pytest.mark.slow
def test_results_table_has_a_row_per_variant(plotted):
    text = (plotted / "plots" / "results.md").read_text()
    rows = table_rows(text)
    assert set(rows) == {"VGG_08", "VGG_38"}
    for variant in ("VGG_08", "VGG_38"):
        row = rows[variant]
        metrics = json.loads((plotted / "metrics" / f"{variant}.json").read_text())
        assert row["status"] == "ok"
        assert row["data source"] == "synthetic" and row["device"] == "cpu"
        assert row["epochs"] == "1/1"
        assert row["test acc"] == f"{metrics['test']['acc']:.4f}"
        assert row["params"] == f"{metrics['params']:,d}"
    assert set(table_rows(text, "reference")) == {"reference VGG_08 (coursework)",
                                                  "reference VGG_38 (coursework)"}
    assert "data: synthetic, epochs: 1, device: cpu" in text
    for name in FIGURES:
        assert f"]({name})" in text, name


@pytest.mark.slow
def test_sweep_csv_has_a_row_per_point(plotted):
    sweep = pd.read_csv(plotted / "plots" / "sweep.csv")
    assert list(sweep.columns) == SWEEP_COLUMNS
    assert sorted(zip(sweep["depth"], sweep["fix"])) == [(8, "bn_rc"), (8, "none")]
    assert (sweep["status"] == "ok").all()
    assert sweep["final_train_loss"].between(0, 20).all()
    assert (sweep["grad_ratio_init"] > 0).all()


@pytest.mark.slow
def test_missing_and_diverged_variants_and_no_sweep(plotted, tmp_path):
    """A variant with no files is skipped with a note; one that diverged in its first epoch
    (empty history) is still listed; no sweep results gives a header-only CSV."""
    project = copy_run(plotted, tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["variants"].update({"VGG_14": {"depth": 14}, "VGG_38_BN_lr1e2": {"depth": 38, "batch_norm": True}})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # A diverged run: what train writes when the loss turns NaN in epoch 1.
    metrics = json.loads((project / "metrics/VGG_38.json").read_text())
    metrics.update(variant="VGG_38_BN_lr1e2", status="diverged", diverged_epoch=1, epochs_run=0,
                   best_epoch=0, final={}, best={}, test={})
    (project / "metrics/VGG_38_BN_lr1e2.json").write_text(json.dumps(metrics))
    (project / "plots/history/VGG_38_BN_lr1e2.csv").write_text(
        (project / "plots/history/VGG_38.csv").read_text().splitlines()[0] + "\n")
    flow = pd.read_csv(project / "plots/grad_flow/VGG_38.csv")
    flow[flow["epoch"] == 0].assign(variant="VGG_38_BN_lr1e2").to_csv(
        project / "plots/grad_flow/VGG_38_BN_lr1e2.csv", index=False)
    shutil.rmtree(project / "metrics/sweep")

    proc = stage("plots", cwd=project)
    assert "VGG_14" in proc.stderr and "skipped" in proc.stderr
    assert "grad_capture/VGG_38_BN_lr1e2.csv is missing" in proc.stderr
    rows = table_rows((project / "plots/results.md").read_text())
    assert "VGG_14" not in rows
    assert rows["VGG_38_BN_lr1e2"]["status"] == "diverged (epoch 1)"
    assert {"VGG_08", "VGG_38"} <= set(rows)
    assert (project / "plots/sweep.csv").read_text().strip() == ",".join(SWEEP_COLUMNS)
    for name in FIGURES:
        assert png_size(project / "plots" / name)[0] > 300, name


def html_specs(html: str) -> list[dict]:
    return [json.loads(s) for s in re.findall(r"var spec = (\{.*?\});\s*vegaEmbed", html, re.S)]


@pytest.mark.slow
def test_dvc_plots_diff_overlays_two_commits(plotted, tmp_path):
    """Two commits of the pipeline's outputs (the second stands for an experiment with other
    numbers): `dvc plots diff` draws both in each variant's chart, with our templates."""
    project = copy_run(plotted, tmp_path / "project")
    run(["git", "init", "-q"], cwd=project)
    run(["git", "config", "user.email", "test@example.com"], cwd=project)
    run(["git", "config", "user.name", "test"], cwd=project)

    def commit(message):
        # The stages behind the plots: their outputs into the cache, dvc.lock written.
        run([DVC, "commit", "-f", "-q", "train", "gradients", "plots"], cwd=project)
        run(["git", "add", "-A"], cwd=project)
        run(["git", "commit", "-qm", message], cwd=project)

    commit("first")
    history = project / "plots/history/VGG_08.csv"
    table = pd.read_csv(history)
    table.assign(train_loss=table["train_loss"] + 1.0).to_csv(history, index=False)
    commit("second")

    run([DVC, "plots", "diff", "HEAD~1", "HEAD", "-o", "out"], cwd=project)
    html = (project / "out" / "index.html").read_text()
    specs = html_specs(html)
    assert all(s.get("data", {}).get("values") for s in specs), "an empty chart (e.g. a .gitignore)"
    by_title = {s["title"]["text"]: s for s in specs}
    assert len(by_title) == 4, sorted(by_title)  # history and grad_flow of both variants
    curves = by_title["plots/history/VGG_08.csv"]
    values = curves["data"]["values"]
    assert {v["rev"] for v in values} == {"HEAD~1", "HEAD"}
    loss = {v["rev"]: float(v["dvc_inferred_y_value"]) for v in values if v["field"] == "train_loss"}
    assert loss["HEAD"] == pytest.approx(loss["HEAD~1"] + 1.0)
    assert curves["encoding"]["color"]["field"] == "rev"  # the epoch_curves template, filled
    assert curves["encoding"]["column"]["field"] == "field"
    flow = by_title["plots/grad_flow/VGG_38.csv"]
    assert flow["encoding"]["y"]["scale"]["type"] == "log"
    assert {v["rev"] for v in flow["data"]["values"]} == {"HEAD~1", "HEAD"}
    assert "plots/history/VGG_38.csv" in by_title and "plots/grad_flow/VGG_08.csv" in by_title
    for name in FIGURES:  # the stage's figures, as images of both revisions
        assert re.search(rf"HEAD~1[^\"]*{re.escape(name)}", html), name
