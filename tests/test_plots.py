"""The plots stage on a real tiny run, and the DVC-native plots that `dvc plots diff` renders.

One module-wide run (fetch, train + gradients for VGG_08 and VGG_38, two sweep points, plots)
feeds every test; the tests that change something work on a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import DVC, ROOT, copy_project, rule_verdict, run, stage, write_params
from gradflow import figures as Fg
from gradflow.files import torch_load, torch_save
from gradflow.model import VGG, depth_positions, probed_parameters
from gradflow.params import ModelParams, Variant
from gradflow.reference import COURSEWORK, PublicRun
from gradflow.verdict import verdict

FIGURES = ["training_curves.png", "gradient_flow.png", "gradient_flow_detail.png", "signal_flow.png",
           "gradient_heatmap.png", "activations.png",
           "depth_sweep.png"]
SWEEP_COLUMNS = ["depth", "fix", "verdict", "final_train_loss", "best_val_acc",
                 "log10_grad_ratio_init", "log10_grad_ratio_final", "log10_grad_ratio_predicted"]
# Smaller than TINY: these tests only need every table to exist with real numbers in it.
SMALL = {
    "data": {"synthetic_train_size": 200, "synthetic_test_size": 50, "val_size": 50},
    "model": {"filters": 8},  # a narrow net: the plots need every table, not accuracy
    # 150 training images in 15 steps, a point every 15: 10 points an epoch, as a quick start's
    "train": {"batch_size": 10, "eval_every": 15, "eval_subset": 20},
    "gradients": {"probe_size": 20},
    "sweep": {"depths": [8], "fixes": ["none", "bn_rc"], "epochs": 1},
}



@pytest.fixture(scope="module")
def plotted(tmp_path_factory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("plots") / "project")
    write_params(project, SMALL)
    stage("check", cwd=project)  # data/config/*.json: the resolved configs the stages depend on
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


def table_rows(markdown: str, first_header: str = "variant", column: str | None = None) -> dict[str, dict[str, str]]:
    """First cell -> {column: cell} for the rows of the first markdown table whose header
    starts with `first_header` (and has `column`, if given)."""
    rows, header = {}, None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            if rows:
                return rows
            header = None
        elif not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif header[0] == first_header and (column is None or column in header):
                rows[cells[0]] = dict(zip(header, cells))
    return rows


def ink(path: Path) -> tuple[float, float]:
    """(fraction of pixels that are not white, fraction that are coloured, not grey)."""
    rgb = matplotlib.image.imread(path)[..., :3].astype(float)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float((rgb.min(axis=-1) < 0.9).mean()), float((spread > 0.25).mean())


def placeholder(tmp_path: Path, monkeypatch, name: str) -> Path:
    """The figure the stage writes when there is nothing to draw (empty_figure), for `name`."""
    monkeypatch.setattr(Fg, "OUT", tmp_path / "empty")
    return Fg.empty_figure(name, name, "nothing to draw yet: a message of about this length here")


@pytest.mark.slow
def test_every_figure_is_a_real_png(plotted, tmp_path, monkeypatch):
    """Every figure is a chart, not the placeholder empty_figure writes when a table is
    missing: a placeholder is black text on white; a chart has coloured lines or cells and
    several times the placeholder's ink."""
    empty = placeholder(tmp_path, monkeypatch, "empty.png")
    empty_ink, empty_colour = ink(empty)
    assert empty_colour == 0.0 and empty_ink < 0.02, (empty_ink, empty_colour)  # the check's premise
    for name in FIGURES:
        path = plotted / "plots" / name
        assert path.is_file(), name
        assert path.read_bytes() != empty.read_bytes(), f"{name} is the empty placeholder"
        width, height = png_size(path)
        assert width >= 600 and height >= 300, f"{name}: {width}x{height}"
        assert (width, height) != png_size(empty), f"{name}: the placeholder's size"
        chart_ink, chart_colour = ink(path)
        assert chart_ink > 3 * empty_ink, f"{name}: {chart_ink:.4f} of its pixels inked, like a placeholder"
        # a single epoch or sweep point is a few markers: ~5e-4 of the pixels; a placeholder 0
        assert chart_colour > 1e-4, f"{name}: {chart_colour:.5f} of its pixels coloured: no data drawn?"


def test_ink_tells_a_placeholder_from_a_chart(tmp_path, monkeypatch):
    """The check above, on a placeholder and a one-line chart drawn here."""
    empty = placeholder(tmp_path, monkeypatch, "empty.png")
    fig, ax = Fg.plt.subplots(figsize=(8, 4))
    ax.plot([1, 2, 3], [3, 1, 2], color="tab:blue", lw=2)
    chart = Fg.save(fig, "chart.png")
    assert ink(empty)[1] == 0.0 and ink(chart)[1] > 1e-4
    assert ink(chart)[0] > 3 * ink(empty)[0]


@pytest.mark.slow
def test_results_table_has_a_row_per_variant(plotted):
    text = (plotted / "plots" / "results.md").read_text()
    rows = table_rows(text)
    assert set(rows) == {"VGG_08", "VGG_38"}
    for variant in ("VGG_08", "VGG_38"):
        row = rows[variant]
        metrics = json.loads((plotted / "metrics" / f"{variant}.json").read_text())
        run = torch.load(plotted / "models" / f"{variant}.pt", weights_only=True)["run"]
        assert row["verdict"] == metrics["verdict"] == rule_verdict(metrics, run)
        assert row["epochs"] == "1/1"
        assert row["test acc"] == f"{metrics['test_acc']:.3f}"
        assert row["params"] == f"{run['params']:,d}"
        # the forward signal: the logits' share at init and at the end (gradients stage)
        signal = json.loads((plotted / "metrics" / "signal" / f"{variant}.json").read_text())
        assert set(signal) == {"signal_share_init", "signal_share_final"}
        assert all(0 <= v <= 1 for v in signal.values()), signal
        assert row["signal share at init (probe)"] == f"{signal['signal_share_init']:.2g}"
    flow = pd.read_csv(plotted / "plots" / "grad_flow" / "VGG_38.csv")
    init = flow[flow["epoch"] == 0]
    # plain VGG_38 at init: the image's part of the signal falls from the input conv to the logits
    assert init["signal_share"].iloc[0] > 0.1 and init["signal_share"].iloc[-1] < 1e-10, init["signal_share"]
    # the coursework's runs judged after as many epochs as ours (1): VGG_38's first epoch ends
    # at train loss 4.86, outside the band of "stuck at chance" (tests/test_reference.py)
    assert rows["VGG_38"]["reference"] == "undecided (coursework run, after 1 epoch)"
    assert rows["VGG_08"]["reference"] == "learns (coursework run, after 1 epoch)"
    assert "Verdict rule" in text and "## Summary" in text
    theory = table_rows(text, column="predicted first/last conv")
    predicted, measured = (float(theory["VGG_38"][k]) for k in ("predicted first/last conv", "measured (probe)"))
    assert predicted < 1e-8 and measured < 1e-8  # the vanishing, predicted and measured
    assert 0.1 < predicted / measured < 10
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
    for row in sweep.itertuples():  # each point's verdict follows from its own numbers
        assert row.verdict == verdict(row.final_train_loss, row.best_val_acc, False,
                                      n_val=SMALL["data"]["val_size"], epochs=SMALL["sweep"]["epochs"]), row
    assert sweep["final_train_loss"].between(0, 20).all()
    assert sweep["log10_grad_ratio_init"].between(-30, 5).all()


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
    metrics.update(verdict="diverged", test_acc=None, test_loss=None, best_val_acc=None,
                   final_train_loss=None)
    (project / "metrics/VGG_38_BN_lr1e2.json").write_text(json.dumps(metrics))
    model = torch_load(project / "models/VGG_38.pt", "")  # the stage's own reader and writer:
    model["run"].update(variant="VGG_38_BN_lr1e2", status="diverged", diverged_epoch=1,
                        epochs_run=0, best_epoch=0)
    torch_save(project / "models/VGG_38_BN_lr1e2.pt", model)  # a new content digest with it
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
    assert rows["VGG_38_BN_lr1e2"]["verdict"] == "diverged (epoch 1)"
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
    assert curves["encoding"]["x"]["field"] == "images_seen"  # the points inside an epoch too
    assert curves["encoding"]["y"]["axis"]["format"] == ".4~g"  # 0.031 reads 0.031, not 0; 4.605 not 4.61
    flow = by_title["plots/grad_flow/VGG_38.csv"]
    assert flow["encoding"]["y"]["scale"]["type"] == "log"
    # aligned by depth (the k-th conv/linear), one row per snapshot epoch, revisions by colour
    assert flow["encoding"]["x"]["field"] == "depth"
    assert flow["encoding"]["row"]["field"] == "epoch" and "strokeDash" not in flow["encoding"]
    assert flow["encoding"]["color"]["field"] == "rev"
    depths = {float(v["depth"]) for v in flow["data"]["values"]}
    assert max(depths) == 38 and min(depths) == 1
    assert {v["rev"] for v in flow["data"]["values"]} == {"HEAD~1", "HEAD"}
    assert "plots/history/VGG_38.csv" in by_title and "plots/grad_flow/VGG_08.csv" in by_title
    for name in FIGURES:  # the stage's figures, as images of both revisions
        assert re.search(rf"HEAD~1[^\"]*{re.escape(name)}", html), name
    assert_drawn_offline(project / "out" / "index.html", 4)
    run([DVC, "plots", "show", "-o", "shown"], cwd=project)
    assert_drawn_offline(project / "shown" / "index.html", 4, line_points=9)  # a point every 15 of 150


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# .ci/run installs Chromium and sets this, so in CI the browser check runs or fails, never skips
REQUIRE_CHROMIUM = os.environ.get("GRADFLOW_REQUIRE_CHROMIUM") == "1"


def assert_drawn_offline(page: Path, charts: int, line_points: int = 0) -> None:
    """The page `dvc plots` wrote loads no script from the network, and in headless Chromium
    (no network either: the flags keep it from trying) every one of its `charts` Vega charts
    draws marks; and every line drawn has at least `line_points` points (its SVG path's M and L
    commands), so a curve is a line, not a dot."""
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=\"https?:", html), "a script from the network"
    assert html.count("vegaEmbed('#") == charts
    if CHROMIUM is None:
        assert not REQUIRE_CHROMIUM, "GRADFLOW_REQUIRE_CHROMIUM=1 but no chromium on PATH"
        pytest.skip("chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    embeds = dom.split('class="vega-embed')[1:]
    drawn = [e for e in embeds if re.search(r"<(svg|canvas)\b", e) and "role-mark" in e]
    assert len(embeds) == charts and len(drawn) == charts, f"{len(drawn)} of {len(embeds)} charts drawn"
    if line_points:
        lines = [d for group in re.findall(r'<g class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', dom, re.S)
                 for d in re.findall(r'<path[^>]* d="([^"]+)"', group)]
        assert lines, "no line drawn"
        assert min(len(re.findall(r"[ML]", d)) for d in lines) >= line_points, lines


# --- the plot helpers, without a run ------------------------------------------------------------

def layers_of(depth: int, **switches) -> list[str]:
    model = VGG(Variant(depth=depth, **switches), ModelParams(filters=4, stages=3))
    return [name for name, _ in probed_parameters(model)]


@pytest.mark.parametrize("switches", [{}, {"batch_norm": True}, {"dense": True},
                                      {"deep_supervision": True}, {"batch_norm": True, "residual": True}])
def test_depth_positions_span_the_depth(switches):
    """Every variant of depth 38 spans 1..38 on the depth axis, whatever it adds between its
    convs; the conv and linear layers take the integers in order, the rest sit at +0.5."""
    layers = layers_of(38, **switches)
    x = depth_positions(layers)
    assert x == sorted(x) and x[0] == 1.0 and x[-1] == 38.0
    integers = [p for p in x if p.is_integer()]
    assert integers == [float(k) for k in range(1, 39)]
    assert all(p.is_integer() == (name.endswith(("conv_0", "conv_1", "linear_layer"))
                                  and not name.startswith("aux")) for p, name in zip(x, layers))
    assert np.array_equal(Fg.depth_positions(layers), np.array(x))
    plain = dict(zip(layers_of(38), depth_positions(layers_of(38))))
    assert all(plain[name] == p for name, p in zip(layers, x) if name in plain)  # same depth, same name


def test_depth_positions_by_name():
    names = ["input_conv_conv_0", "input_conv_bn_0", "dense_0_1_transition", "block_0_1_conv_0",
             "block_0_1_conv_0_bias", "aux_head_0_linear", "logit_linear_layer"]
    assert depth_positions(names) == [1.0, 1.5, 1.5, 2.0, 2.5, 2.5, 3.0]
    assert depth_positions([]) == []


def test_depth_ticks_label_the_convs_and_thin_them():
    layers = layers_of(38, batch_norm=True)
    ticks, names = Fg.depth_ticks(layers)
    assert ticks == [float(k) for k in range(1, 39)] and names[0] == "input_conv_conv_0"
    assert names[-1] == "logit_linear_layer" and not any("bn" in n for n in names)
    ticks, names = Fg.depth_ticks(layers, max_labels=10)
    assert len(ticks) <= 11 and ticks[0] == 1.0 and ticks[-1] == 38.0
    assert names[-1] == "logit_linear_layer"
    assert Fg.depth_ticks([]) == ([], [])


def test_positive_makes_gaps_for_a_log_axis():
    v = Fg.positive([1e-18, 0, -1, float("nan"), float("inf"), "x", 2])
    assert v[0] == 1e-18 and v[-1] == 2
    assert np.isnan(v[1:6]).all()
    assert Fg.positive(pd.Series([], dtype=float)).size == 0


def test_layer_labels_in_forward_order():
    table = pd.DataFrame({"epoch": [1, 1, 0, 0], "layer_index": [1, 0, 1, 0],
                          "layer": ["b", "a", "b", "a"]})
    assert Fg.layer_labels(table) == ["a", "b"]


def test_variant_colours_distinct_and_stable():
    names = [f"V{i}" for i in range(10)]
    colours = Fg.variant_colours(names)
    assert list(colours) == names and len(set(colours.values())) == 10
    assert Fg.variant_colours(names[:3]) == {n: colours[n] for n in names[:3]}  # params order
    many = Fg.variant_colours([f"V{i}" for i in range(15)])
    assert len(set(many.values())) == 15


def test_run_summary_lists_every_distinct_value():
    metrics = [{"data_source": "synthetic", "epochs": 3, "device": "cpu"},
               {"data_source": "synthetic", "epochs": 5, "device": "cpu"}]
    assert Fg.run_summary(metrics) == "data: synthetic, epochs: 3, 5, device: cpu"
    assert Fg.run_summary([]) == "data: n/a, epochs: n/a, device: n/a"


def test_same_curves_groups_identical_initialisations():
    a, b = ["l0", "l1"], np.array([1e-3, np.nan])
    groups = Fg.same_curves({"X": (a, b), "Y": (a, b.copy()), "Z": (a, b * 2), "W": (["l0"], b[:1])})
    assert groups == [["X", "Y"], ["Z"], ["W"]]


def fake_run(name: str, epochs: int, layers: list[str], grad: float, verdict: str | None = None) -> dict:
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "images_seen": range(5000, 5000 * epochs + 1, 5000),
                            "train_loss": np.linspace(4.6, 4.0, epochs),
                            "val_loss": 4.5, "train_acc": 0.05, "val_acc": 0.04})
    flow = pd.DataFrame([{"variant": name, "epoch": e, "layer_index": i, "layer": layer,
                          "mean_abs_grad": grad * (i + 1) * (e + 1), "act_std": 1.0,
                          "depth": d}
                         for e in (0, epochs) for i, (layer, d) in enumerate(zip(layers, depth_positions(layers)))])
    metrics = {"data_source": "synthetic", "epochs": epochs, "device": "cpu", "status": "ok",
               "train_images": 5000, "val_images": 2500, "epochs_run": epochs}
    if verdict:
        metrics["verdict"] = verdict
    return {"metrics": metrics, "history": history, "capture": pd.DataFrame(), "flow": flow}


@pytest.fixture
def drawn(tmp_path, monkeypatch) -> dict:
    """Figures drawn into tmp_path; name -> the matplotlib figure, kept open for inspection."""
    figures = {}
    monkeypatch.setattr(Fg, "OUT", tmp_path)

    def keep(fig, name):
        figures[name] = fig
        fig.savefig(tmp_path / name, dpi=40)
        return tmp_path / name
    monkeypatch.setattr(Fg, "save", keep)
    yield figures
    for fig in figures.values():
        Fg.plt.close(fig)


def published_run(variant: str, source: str, epochs: int = 100) -> PublicRun:
    return PublicRun(variant, source, pd.DataFrame({"epoch": range(1, epochs + 1), "train_acc": 0.1,
                                                    "train_loss": 4.0, "val_acc": 0.1, "val_loss": 4.0}))


def test_training_curves_on_images_seen_beside_as_much_reference(drawn):
    runs = {"VGG_08": fake_run("VGG_08", 3, ["c_conv_0"], 1e-3, "learns"),
            "VGG_38": fake_run("VGG_38", 3, ["c_conv_0"], 1e-3, "stuck at chance")}
    published = {"VGG_08": [published_run("VGG_08", COURSEWORK)],
                 "VGG_38": [published_run("VGG_38", COURSEWORK), published_run("VGG_38", "someone_repo", 13)],
                 "VGG_38_BN": [published_run("VGG_38_BN", "other_repo")]}  # no run of ours: not drawn
    colours = Fg.variant_colours(list(runs))
    Fg.training_curves(runs, published, colours)
    fig = drawn["training_curves.png"]
    loss_ax = fig.axes[0]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert lines["VGG_08: learns"].get_linestyle() == "-"
    assert lines["VGG_38: stuck at chance"].get_color() == colours["VGG_38"]
    assert {label for label in lines if label.startswith("_published")} == {
        "_published VGG_08 (coursework)", "_published VGG_38 (coursework)", "_published VGG_38 (someone_repo)"}
    # 3 epochs of 5,000 images: 15,000 images, drawn beside the published runs' first epoch (47,500)
    assert list(lines["VGG_08: learns"].get_xdata()) == [5, 10, 15]
    for name, source in (("VGG_08", "coursework"), ("VGG_38", "coursework"), ("VGG_38", "someone_repo")):
        ref = lines[f"_published {name} ({source})"]
        assert ref.get_linestyle() == "--" and list(ref.get_xdata()) == [47.5]
        assert ref.get_color() == colours[name]  # thin, faint, in its variant's colour
        assert ref.get_linewidth() < lines["VGG_08: learns"].get_linewidth() and ref.get_alpha() == 0.6
    # one legend entry for every published run, none per run
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sum("published CIFAR-100 runs" in t for t in legend) == 1
    assert not any(t.startswith("_") for t in legend)
    assert "coursework + public" in fig._suptitle.get_text()
    assert any(list(line.get_ydata()) == [Fg.CHANCE_LOSS] * 2 for line in loss_ax.get_lines())
    acc_ax = fig.axes[3]
    assert any(list(line.get_ydata()) == [Fg.CHANCE_ACC] * 2 for line in acc_ax.get_lines())
    # the verdict's bar for "learns" at n = 2,500, best of 3 epochs
    assert any(list(line.get_ydata()) == [0.018] * 2 for line in acc_ax.get_lines())
    assert loss_ax.get_xlim()[1] >= 47.5 and "images seen" in fig.axes[2].get_xlabel()


def test_training_curves_draw_every_published_run_of_a_variant_drawn(drawn):
    """The real reference/: every published run of a variant we ran (coursework and public),
    each clipped to our budget or shorter where it stopped; none of the variants we did not run."""
    from gradflow import reference
    run = fake_run("VGG_38_BN_RC", 20, ["c_conv_0"], 1e-3, "learns")
    run["metrics"]["train_images"] = reference.TRAIN_IMAGES
    run["history"]["images_seen"] = run["history"]["epoch"] * reference.TRAIN_IMAGES
    Fg.training_curves({"VGG_38_BN_RC": run}, reference.load(ROOT / "reference"),
                       Fg.variant_colours(["VGG_38_BN_RC"]))
    for ax in drawn["training_curves.png"].axes[:4]:
        drawn_runs = {line.get_label(): len(line.get_xdata()) for line in ax.get_lines()
                      if line.get_label().startswith("_published")}
        assert sorted(drawn_runs.values()) == [13, 20, 20], drawn_runs  # one run stopped at 13
        assert all(label.startswith("_published VGG_38_BN_RC (") for label in drawn_runs)
    assert "published runs shown for their first 20 epochs" in drawn["training_curves.png"]._suptitle.get_text()


def test_gradient_flow_leads_with_every_variant_on_one_axis(drawn):
    """Figure 2 is one panel: each variant at init (solid; variants with the same network at init
    are one line naming them all) and at its last snapshot (dashed), aligned by depth, on one log
    axis, with a title in black; the per-variant panels are in their own file."""
    plain, bn = layers_of(38), layers_of(38, batch_norm=True)
    runs = {"VGG_38": fake_run("VGG_38", 2, plain, 1e-9, "stuck at chance"),
            "VGG_38_BN": fake_run("VGG_38_BN", 2, bn, 1e-2, "learns"),
            "VGG_38_BN_lr1e2": fake_run("VGG_38_BN_lr1e2", 2, bn, 1e-2, "learns")}
    colours = Fg.variant_colours(list(runs))
    Fg.gradient_flow(runs, colours)
    fig = drawn["gradient_flow.png"]
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.title.get_color() in ("black", "k", (0, 0, 0, 1))
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["VGG_38, init: stuck at chance",
                           "VGG_38_BN = VGG_38_BN_lr1e2 (same network at init), init",
                           "VGG_38, epoch 2", "VGG_38_BN, epoch 2", "VGG_38_BN_lr1e2, epoch 2"]
    for label, line in lines.items():
        assert max(line.get_xdata()) == 38.0 and min(line.get_xdata()) == 1.0, label
        assert line.get_linestyle() == ("-" if "init" in label else "--"), label
    assert lines["VGG_38, epoch 2"].get_color() == colours["VGG_38"]

    Fg.gradient_flow_detail(runs)
    detail = drawn["gradient_flow_detail.png"]
    bn_ax = [ax for ax in detail.axes if ax.get_title() == "VGG_38_BN: learns"][0]
    ticks = bn_ax.get_xticklabels()
    names = [t.get_text() for t in ticks]
    assert names[0] == "input_conv_conv_0" and names[-1] == "logit_linear_layer" and len(names) == 38
    assert min(t.get_fontsize() for t in ticks) >= 7 and {t.get_rotation() for t in ticks} == {45.0}
    colours = {line.get_label(): line.get_color() for line in bn_ax.get_lines()}
    assert len(set(map(str, colours.values()))) == 2 and set(colours) == {"epoch 0 (init)", "epoch 2"}
    assert {line.get_linestyle() for line in bn_ax.get_lines()} == {"-"}


def test_training_curves_clip_the_reference_by_history_without_run_details(drawn):
    """Metrics without run details: the run is placed by its own points' images seen, and the
    reference is clipped to its first epoch that covers them, so a short run is not squeezed
    beside the reference's 100 epochs."""
    run = fake_run("VGG_08", 3, ["c_conv_0"], 1e-3)
    run["metrics"] = {}
    published = {"VGG_08": [published_run("VGG_08", COURSEWORK)]}
    Fg.training_curves({"VGG_08": run}, published, Fg.variant_colours(["VGG_08"]))
    ax = drawn["training_curves.png"].axes[0]
    ref = [line for line in ax.get_lines() if line.get_label().startswith("_published")][0]
    assert list(ref.get_xdata()) == [47.5] and ax.get_xlim()[1] < 50
    ours = [line for line in ax.get_lines() if line.get_label() == "VGG_08"][0]
    assert list(ours.get_xdata()) == [5.0, 10.0, 15.0]
    assert "data: n/a" in drawn["training_curves.png"]._suptitle.get_text()


def test_gradient_heatmap_has_a_column_per_sampled_step_on_images_seen(drawn):
    """The heatmap's columns are the capture's sampled steps (at the curves' points), placed at
    the training images seen then, so a one-epoch run is not one column."""
    layers = ["c_conv_0", "c_conv_1"]
    run = fake_run("VGG_08", 1, layers, 1e-3)
    run["metrics"]["batch_size"] = 100
    run["capture"] = pd.DataFrame([{"epoch": 1, "step": step, "layer_index": i, "layer": layer,
                                    "mean_abs_grad": 1e-3 * (i + 1)}
                                   for step in range(0, 475, 50) for i, layer in enumerate(layers)])
    Fg.gradient_heatmap({"VGG_08": run})
    ax = drawn["gradient_heatmap.png"].axes[0]
    mesh = ax.collections[0]
    assert mesh.get_array().shape == (2, 10)  # layers x sampled steps
    assert ax.get_xlabel() == "training images seen (thousands)"
    assert ax.get_xlim()[0] < 0 < 45 < ax.get_xlim()[1] < 48  # steps 0..450 x 100 images
