"""The report's figures, from every variant's tables.

The plots stage (stages/plots.py) reads, for each name under `variants` in params.yaml, metrics/V.json, plots/history/V.csv,
plots/grad_capture/V.csv and plots/grad_flow/V.csv; the depth sweep's metrics/sweep/*.json;
and the published CIFAR-100 runs in reference/ (gradflow/reference.py). Writes:

  plots/training_curves.png    Figure 1: loss and accuracy per epoch, published runs thin dashed
  plots/gradient_flow.png      Figure 2: mean |grad| per layer, every variant, init and end
  plots/gradient_flow_detail.png   the same per variant, every snapshot, the prediction
  plots/signal_flow.png        mean |grad| and the forward signal share per layer, side by side
  plots/gradient_heatmap.png   log10 mean |grad|, layer x epoch, from the training capture
  plots/activations.png        activation std per layer at initialisation
  plots/depth_sweep.png        final loss and first/last-conv gradient ratio vs depth
  plots/sweep.csv              the sweep's points, one row per (depth, fix)
  plots/results.md             every variant's metrics as a table, with links to the figures

A variant without metrics/V.json (not trained yet) is skipped with a note on stderr; one that
diverged is drawn with what it has. Nothing here trains or touches the network.
"""

from __future__ import annotations

import math

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on CI or a GPU box
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gradflow import params as P  # noqa: E402
from gradflow import paths  # noqa: E402
from gradflow.errors import DataError  # noqa: E402
from gradflow.verdict import CHANCE_ACC, CHANCE_LOSS, learns_threshold, standard_errors  # noqa: E402
from gradflow.files import atomic_write, read_json, torch_load  # noqa: E402
from gradflow.model import depth_positions as _depth_positions  # noqa: E402
from gradflow.reference import TRAIN_IMAGES, PublicRun  # noqa: E402

OUT = paths.PLOTS
MAX_DEPTH_LABELS = 40  # per-layer names on a depth axis: at most this many, the rest thinned
SWEEP_COLUMNS = ["depth", "fix", "verdict", "final_train_loss", "best_val_acc",
                 "log10_grad_ratio_init", "log10_grad_ratio_final", "log10_grad_ratio_predicted"]  # as in metrics/sweep/*.json
FIGURES = {  # file -> what results.md calls it
    "training_curves.png": "Figure 1: training curves",
    "gradient_flow.png": "Figure 2: gradient flow per layer, every variant at init and at the end",
    "gradient_flow_detail.png": "Figure 2, per variant: every snapshot and the mean-field prediction",
    "signal_flow.png": "Gradient flow and forward signal share, side by side",
    "gradient_heatmap.png": "Gradient heatmap (layer x epoch, training capture)",
    "activations.png": "Activation std per layer at initialisation",
    "depth_sweep.png": "Depth sweep",
}


# --- reading -----------------------------------------------------------------------------

def read_csv(path: Path) -> pd.DataFrame:
    """A table, or an empty frame where the file is missing (noted on stderr) or header-only."""
    if not path.is_file():
        print(f"plots: {path} is missing; drawing without it", file=sys.stderr)
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable table ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        f"rerun the stage that writes it (dvc repro -f <stage>)") from None


def load_runs(names: list[str]) -> dict[str, dict]:
    """variant -> {metrics, history, capture, flow}, in params order, for the variants that ran."""
    runs = {}
    for name in names:
        metrics_path = paths.metrics(name)
        if not metrics_path.is_file():
            print(f"plots: {name}: no {metrics_path} (not trained yet?); skipped", file=sys.stderr)
            continue
        runs[name] = {
            # the headline metrics, and what else describes the run (kept with its model)
            "metrics": {**read_json(metrics_path, f"rerun its training (dvc repro -f train@{name})"),
                        **signal_metrics(name), **run_details(name)},
            "history": read_csv(paths.history(name)),
            "capture": read_csv(paths.grad_capture(name)),
            "flow": read_csv(paths.grad_flow(name)),
        }
    return runs


def signal_metrics(name: str) -> dict:
    """The gradients stage's metrics/signal/<name>.json ({} before that stage ran)."""
    path = paths.signal_metrics(name)
    return read_json(path, f"rerun its gradients stage (dvc repro -f gradients@{name})") if path.is_file() else {}


def run_details(name: str) -> dict:
    """The `run` summary the train stage keeps in models/<name>.pt: status, data source,
    epochs, best epoch, parameter count, precision, device."""
    path = paths.model(name)
    if not path.is_file():
        print(f"plots: {path} is missing; drawing without its run details", file=sys.stderr)
        return {}
    return torch_load(path, f"rerun its training (dvc repro -f train@{name})").get("run") or {}


def load_sweep(sweep: P.SweepParams) -> tuple[pd.DataFrame, list[dict]]:
    """(one row per sweep point, the points' metrics), for the points params.yaml asks for:
    DVC leaves the files of points dropped from sweep.depths or sweep.fixes in place."""
    rows, metrics = [], []
    for depth in sweep.depths:
        for fix in sweep.fixes:
            path = paths.sweep_metrics(depth, fix)
            if path.is_file():
                metrics.append(read_json(path, f"rerun that point (dvc repro -f sweep@{depth}-{fix})"))
    rows = [[m.get(column) for column in SWEEP_COLUMNS] for m in metrics]
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    return table.sort_values(["fix", "depth"], kind="stable").reset_index(drop=True), metrics


# --- helpers -----------------------------------------------------------------------------

def variant_colours(names: list[str]) -> dict[str, tuple]:
    """One distinct colour per variant, the same in every figure (tab10 holds ten)."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def run_summary(metrics: list[dict]) -> str:
    """'data: synthetic, epochs: 5, device: cpu', from the runs' metrics (every distinct value)."""
    def distinct(key):
        values = []
        for m in metrics:
            v = m.get(key)
            if v is not None and v not in values:
                values.append(v)
        return ", ".join(str(v) for v in values) or "n/a"
    return f"data: {distinct('data_source')}, epochs: {distinct('epochs')}, device: {distinct('device')}"


def positive(values) -> np.ndarray:
    """Values for a log axis: zeros, negatives, NaN and inf become NaN (gaps, not warnings)."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, copy=True)
    v[~np.isfinite(v) | (v <= 0)] = np.nan
    return v


def save(fig, name: str) -> Path:
    path = OUT / name
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def empty_figure(name: str, title: str, message: str) -> Path:
    """A valid figure that says why there is nothing to draw, so the stage never fails on it."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    return save(fig, name)


def layer_labels(table: pd.DataFrame) -> list[str]:
    """Layer names in forward order (layer_index), one per index."""
    return table.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()


def depth_positions(layers: list[str]) -> np.ndarray:
    """x for comparing variants layer by layer (gradflow.model.depth_positions, the `depth`
    column of the probe and capture tables): the k-th conv or linear layer sits at k, so every
    variant spans 1..depth; a BN, dense-transition or auxiliary-head layer sits half a step
    after the layer it follows. (Plain layer_index would stretch a BN net to twice its depth.)"""
    return np.array(_depth_positions(list(layers)), dtype=float)


def depth_ticks(layers: list[str], max_labels: int = MAX_DEPTH_LABELS) -> tuple[list[float], list[str]]:
    """(positions, names) for a depth axis: the conv and linear layers at their integer depth,
    thinned to every n-th (first and last always kept) so that at most about `max_labels` names
    share the axis. BN and other half-step layers get no label: they sit between two names."""
    x = depth_positions(layers)
    main = [(float(p), name) for p, name in zip(x, layers) if float(p).is_integer()]
    if not main:
        return [], []
    step = max(1, -(-len(main) // max(1, max_labels)))
    kept = main[::step]
    if kept[-1] != main[-1]:
        kept.append(main[-1])
    return [p for p, _ in kept], [name for _, name in kept]


def same_curves(curves: dict[str, tuple[list[str], np.ndarray]], rtol: float = 1e-5) -> list[list[str]]:
    """Groups of variants whose curves are the same (same layers, values within rtol, NaN where
    the other has NaN), in first-seen order: e.g. two variants that differ only in their
    learning rate have one and the same network at initialisation."""
    groups: list[list[str]] = []
    for name, (layers, values) in curves.items():
        for group in groups:
            other_layers, other = curves[group[0]]
            if (other_layers == layers and len(other) == len(values)
                    and np.allclose(values, other, rtol=rtol, atol=0, equal_nan=True)):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def panel_grid(n: int, ncols: int, width: float, height: float):
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")  # room for long layer names and the titles
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat[:n])


# --- figures -----------------------------------------------------------------------------

def images_seen(run: dict) -> np.ndarray:
    """Training images seen at each point of one run's curves, in thousands."""
    return pd.to_numeric(run["history"]["images_seen"], errors="coerce").to_numpy() / 1000


CURVE_PANELS = [("train_loss", "training loss"), ("val_loss", "validation loss"),
                ("train_acc", "training accuracy"), ("val_acc", "validation accuracy")]


@dataclass(frozen=True)
class CurvesScale:
    """What the four panels of the training curves share."""
    clip: int                # the published runs are drawn up to this epoch of theirs
    right: float             # the x axis's end, thousands of training images (0: autoscale)
    few: bool                # so few points that each gets a marker
    n_val: int | None        # the runs' validation images and epochs, where all runs share them:
    epochs: int | None       # the verdict's bar for "learns" depends on both
    bar: float | None


def curves_scale(runs: dict, published: dict[str, list[PublicRun]]) -> CurvesScale:
    seen = [images_seen(r) for r in runs.values() if len(r["history"])]
    ours = max((float(np.nanmax(x)) for x in seen if np.isfinite(x).any()), default=0.0)
    ref_epochs = max((len(r.curves) for rs in published.values() for r in rs), default=0)
    # A short run beside the published runs' 100 epochs would be a few pixels wide: they are
    # shown up to the first of their epochs that covers our longest run.
    clip = min(ref_epochs, max(1, math.ceil(ours * 1000 / TRAIN_IMAGES)))
    right = max(ours, clip * TRAIN_IMAGES / 1000)
    few = max((len(r["history"]) for r in runs.values()), default=0) <= 30 and clip <= 20
    sizes = {(r["metrics"].get("val_images"), r["metrics"].get("epochs_run")) for r in runs.values()}
    n_val, epochs = next(iter(sizes)) if len(sizes) == 1 else (None, None)
    bar = learns_threshold(n_val, epochs) if n_val and epochs else None
    return CurvesScale(clip, right, few, n_val, epochs, bar)


def plot_our_curves(ax, column: str, runs: dict, colours: dict, few: bool) -> float:
    """Our variants' curves of `column`, solid; returns the highest value drawn."""
    # The legend says which variants learn, from each run's own verdict (metrics/V.json).
    highest = 0.0
    for name, run in runs.items():
        h = run["history"]
        if column in h and len(h):
            label = f"{name}: {run['metrics']['verdict']}" if run["metrics"].get("verdict") else name
            ax.plot(images_seen(run), h[column], color=colours[name], lw=1.8,
                    marker="o" if few else None, ms=4, label=label)
            highest = max(highest, float(np.nanmax(pd.to_numeric(h[column], errors="coerce"))))
    return highest


def plot_published_curves(ax, column: str, published: dict[str, list[PublicRun]], colours: dict,
                          scale: CurvesScale) -> None:
    """The published runs' curves of `column`, thin and dashed in their variant's colour."""
    for name, public_runs in published.items():
        for ref in public_runs:  # "_": one legend entry for them all, below
            shown = ref.curves[ref.curves["epoch"] <= scale.clip]
            if column in shown:
                ax.plot(shown["epoch"] * TRAIN_IMAGES / 1000, shown[column], ls="--", lw=0.9,
                        alpha=0.6, color=colours[name], marker="x" if scale.few else None, ms=4,
                        label=f"_published {name} ({ref.source})")


def finish_curves_panel(ax, column: str, label: str, highest: float, scale: CurvesScale) -> None:
    """Chance, the bar for "learns", a log scale where a run blew up, title and x range."""
    title = label
    if column.endswith("acc"):
        ax.axhline(CHANCE_ACC, color="black", lw=0.7, ls=":")
    if column == "val_acc" and scale.bar is not None:  # the verdict's bar for "learns"
        ax.axhline(scale.bar, color="tab:green", lw=0.8, ls="-.")
    if column.endswith("loss"):
        ax.axhline(CHANCE_LOSS, color="black", lw=0.7, ls=":")
        if highest > 3 * CHANCE_LOSS:  # a run that blew up would flatten every other curve
            ax.set_yscale("log")
            title += " (log scale)"
    ax.set_title(title)
    ax.set_ylabel(label)
    if scale.right > 0:  # nothing placed on the axis (no run details, no published run): autoscale
        ax.set_xlim(0, scale.right * 1.03)
    ax.grid(alpha=0.3)


def curves_legend(fig, axes, published: dict[str, list[PublicRun]], scale: CurvesScale) -> None:
    """Our variants' entries, then one each for the published runs, chance and the bar."""
    few = scale.few
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if published:
        handles.append(plt.Line2D([], [], color="grey", lw=0.9, ls="--", alpha=0.6, marker="x" if few else None))
        labels.append(f"{'x, joined thin dashed' if few else 'thin dashed'}: published CIFAR-100 runs\n"
                      f"of the variant after each epoch, in its colour\n(coursework + public: reference/README.md)")
    handles.append(plt.Line2D([], [], color="black", lw=0.7, ls=":"))
    labels.append("chance: loss ln(100), accuracy 0.01")
    if scale.bar is not None:
        handles.append(plt.Line2D([], [], color="tab:green", lw=0.8, ls="-."))
        labels.append(f"\"learns\" from {scale.bar:.4f}: chance + {standard_errors(scale.bar, scale.n_val):.1f} SE\n"
                      f"(n = {scale.n_val:,}, best of {scale.epochs} epoch{'s' if scale.epochs != 1 else ''})")
    fig.legend(handles, labels, loc="outside right center", fontsize=8)


def curves_title(runs: dict, published: dict[str, list[PublicRun]], scale: CurvesScale) -> str:
    """What ran, how much of the published runs is drawn, and their epochs as shipped."""
    clip = scale.clip
    summary = run_summary([r["metrics"] for r in runs.values()])
    note = ("" if not published else f"; published runs shown for their first {clip} epochs"
            if clip > 1 else "; published runs shown for their first epoch")
    shipped = "; ".join(f"{name} {', '.join(str(len(r.curves)) for r in rs)}"
                        for name, rs in published.items())
    caption = (f"{'x' if scale.few else 'thin dashed'}: published CIFAR-100 runs, coursework + public "
               f"(reference/README.md), {TRAIN_IMAGES:,} images per epoch\nepochs as shipped: {shipped}"
               if published else "no published CIFAR-100 run of these variants in reference/")
    return f"Training curves ({summary}){note}\n{caption}"


def training_curves(runs: dict, published: dict[str, list[PublicRun]], colours: dict) -> Path:
    """Figure 1: 2x2 panels of loss and accuracy against training images seen; our variants
    solid, and beside each the published CIFAR-100 runs of the same variant (gradflow.reference:
    the coursework's own and students' public runs) thin and dashed in its colour, at the
    coursework's TRAIN_IMAGES an epoch, so each budget is drawn beside the same amount of their
    training."""
    if not runs:
        return empty_figure("training_curves.png", "Training curves", "no variant has metrics yet")
    published = {name: published[name] for name in runs if published.get(name)}
    scale = curves_scale(runs, published)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharex=True, layout="constrained")
    for ax, (column, label) in zip(axes.flat, CURVE_PANELS):
        highest = plot_our_curves(ax, column, runs, colours, scale.few)
        plot_published_curves(ax, column, published, colours, scale)
        finish_curves_panel(ax, column, label, highest, scale)
    for ax in axes[1]:
        ax.set_xlabel("training images seen (thousands)")
    curves_legend(fig, axes, published, scale)
    fig.suptitle(curves_title(runs, published, scale), fontsize=10)
    return save(fig, "training_curves.png")


def flow_depth(flow: pd.DataFrame) -> np.ndarray:
    """A probe table's depth column, or the same computed from its layer names (tables written
    before the column existed)."""
    if "depth" in flow and flow["depth"].notna().all():
        return flow["depth"].to_numpy(dtype=float)
    return depth_positions(flow["layer"].tolist())


def init_and_end(ax, runs: dict, colours: dict, column: str) -> None:
    """Every variant's probe `column` by depth on one log axis: at initialisation solid, at its
    last probed snapshot dashed, in the variant's colour. Variants with the same network at
    initialisation share one solid line that names them all."""
    init_curves, last = {}, {}
    for name, run in runs.items():
        flow = run["flow"]
        if flow.empty or column not in flow:
            continue
        flow = flow.sort_values(["epoch", "layer_index"])
        init = flow[flow["epoch"] == 0]
        if not init.empty:
            init_curves[name] = (init["layer"].tolist(), positive(init[column]))
        final_epoch = flow["epoch"].max()
        if final_epoch > 0:
            last[name] = (int(final_epoch), flow[flow["epoch"] == final_epoch])
    for group in same_curves(init_curves):
        layers, values = init_curves[group[0]]
        verdict_ = runs[group[0]]["metrics"].get("verdict")
        label = " = ".join(group) + (" (same network at init)" if len(group) > 1 else "")
        ax.plot(depth_positions(layers), values, lw=2, color=colours[group[0]],
                label=f"{label}, init" + (f": {verdict_}" if len(group) == 1 and verdict_ else ""))
    for name, (epoch, rows) in last.items():
        ax.plot(flow_depth(rows), positive(rows[column]), lw=1.4, ls="--", color=colours[name],
                label=f"{name}, epoch {epoch}")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("layer depth (k-th conv/linear layer, input side left)")
    ax.grid(alpha=0.3)


def gradient_flow(runs: dict, colours: dict) -> Path:
    """Figure 2, the ten-second view: every variant's mean |grad| per layer on one log axis, at
    initialisation (solid) and at its last probed snapshot (dashed), by depth."""
    if not any(not r["flow"].empty for r in runs.values()):
        return empty_figure("gradient_flow.png", "Gradient flow",
                            "no gradient probes yet (plots/grad_flow/ is empty)")
    summary = run_summary([r["metrics"] for r in runs.values()])
    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    init_and_end(ax, runs, colours, "mean_abs_grad")
    ax.set_ylabel("mean |grad| of the layer's weights (probe batch)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"Gradient flow: solid at initialisation, dashed at the last snapshot ({summary})\n"
                 f"per-variant panels with every snapshot and the mean-field prediction: "
                 f"gradient_flow_detail.png", fontsize=10)
    return save(fig, "gradient_flow.png")


def signal_flow(runs: dict, colours: dict) -> Path:
    """The two faces of one decay, side by side: each variant's mean |grad| per layer (left) and
    the signal share of each layer's output (right: the part that depends on the image,
    gradflow/probe.py), at initialisation solid and at the last snapshot dashed."""
    if not any("signal_share" in r["flow"] for r in runs.values()):
        return empty_figure("signal_flow.png", "Gradient flow and forward signal",
                            "no probe tables with a signal share yet (the gradients stage)")
    summary = run_summary([r["metrics"] for r in runs.values()])
    fig, (grad_ax, share_ax) = plt.subplots(1, 2, figsize=(16, 6), layout="constrained")
    init_and_end(grad_ax, runs, colours, "mean_abs_grad")
    grad_ax.set_ylabel("mean |grad| of the layer's weights")
    grad_ax.set_title("backward: the gradient each layer gets")
    init_and_end(share_ax, runs, colours, "signal_share")
    share_ax.set_ylabel("signal share of the layer's output (0: the same for every image)")
    share_ax.set_title("forward: how much of each layer's output depends on the image")
    # Below the panels, inside the canvas: a legend beside them is cut at the figure's edge.
    handles, labels = share_ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=min(len(runs), 5))
    fig.suptitle(f"Gradient flow and forward signal on the probe batch, solid at initialisation, "
                 f"dashed at the last snapshot ({summary})", fontsize=11)
    return save(fig, "signal_flow.png")


def gradient_flow_detail(runs: dict) -> Path:
    """Figure 2's detail: one panel per variant (a line per snapshot epoch, coloured by epoch)
    with the mean-field prediction at initialisation dashed, on a shared depth range."""
    flows = {name: r["flow"] for name, r in runs.items() if not r["flow"].empty}
    if not flows:
        return empty_figure("gradient_flow_detail.png", "Gradient flow per variant",
                            "no gradient probes yet (plots/grad_flow/ is empty)")
    summary = run_summary([r["metrics"] for r in runs.values()])
    # x is the depth (BN etc. at +0.5), so VGG_38 and VGG_38_BN line up; the conv/linear names
    # label the integer depths, thinned to at most MAX_DEPTH_LABELS, slanted to stay readable.
    deepest = max(float(np.nanmax(flow_depth(f))) for f in flows.values())
    n_labels = min(deepest, MAX_DEPTH_LABELS)
    width = max(6.0, 1.2 + 0.17 * n_labels)
    fig, axes = panel_grid(len(flows), 3 if width < 8 else 2, width, 5.0)
    all_epochs = sorted({int(e) for f in flows.values() for e in f["epoch"].unique()})
    # One y scale for every panel: a plain VGG_38 falling 1e-14 and a BN one falling 10x look
    # alike on scales of their own.
    drawn = np.concatenate([positive(f[c]) for f in flows.values()
                            for c in ("mean_abs_grad", "predicted_mean_abs_grad") if c in f])
    drawn = drawn[np.isfinite(drawn)]
    y_range = (drawn.min() / 3, drawn.max() * 3) if drawn.size else None
    epoch_colour = dict(zip(all_epochs, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(all_epochs)))))
    for ax, (name, flow) in zip(axes, flows.items()):
        flow = flow.sort_values(["epoch", "layer_index"])
        for epoch, rows in flow.groupby("epoch"):
            ax.plot(flow_depth(rows), positive(rows["mean_abs_grad"]), marker="o", ms=2.5,
                    lw=1.3, color=epoch_colour[int(epoch)],
                    label="epoch 0 (init)" if epoch == 0 else f"epoch {int(epoch)}")
        init = flow[flow["epoch"] == 0]
        if "predicted_mean_abs_grad" in init and init["predicted_mean_abs_grad"].notna().any():
            # the mean-field prediction from the architecture and init alone (gradflow/theory.py)
            ax.plot(flow_depth(init), positive(init["predicted_mean_abs_grad"]), ls="--", lw=1.3,
                    color="black", label="epoch 0 predicted (mean field)")
        ticks, names = depth_ticks(layer_labels(flow))
        ax.set_yscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_xlim(0.3, deepest + 0.9)  # the same x range in every panel
        if y_range is not None:
            ax.set_ylim(*y_range)
        ax.set_title(f"{name}: {runs[name]['metrics'].get('verdict', '?')}", fontsize=11, fontweight="bold")
        ax.set_ylabel("mean |grad| of the layer's weights")
        ax.set_xlabel("layer depth (BN, transition, aux layers at +0.5)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="snapshot", title_fontsize=8)
    fig.suptitle(f"Gradient flow per variant on a fixed probe batch ({summary})", fontsize=12)
    return save(fig, "gradient_flow_detail.png")


def sample_edges(seen: np.ndarray) -> np.ndarray:
    """Cell edges around the sampled positions `seen` (sorted): halfway between neighbours."""
    if len(seen) == 1:
        return np.array([seen[0] - 0.5, seen[0] + 0.5])
    mid = (seen[1:] + seen[:-1]) / 2
    return np.concatenate([[2 * seen[0] - mid[0]], mid, [2 * seen[-1] - mid[-1]]])


def gradient_heatmap(runs: dict) -> Path:
    """log10 mean |grad|, layers down, the sampled steps across (at the curves' points, so the
    columns line up with Figure 1's x axis). One colour scale for every panel."""
    grids = {}
    for name, run in runs.items():
        cap = run["capture"]
        if cap.empty:
            continue
        cap = cap.assign(mean_abs_grad=positive(cap["mean_abs_grad"]))
        grid = cap.pivot_table(index="layer_index", columns="step", values="mean_abs_grad",
                               aggfunc="mean", dropna=False)
        batch = run["metrics"].get("batch_size")
        seen = grid.columns.to_numpy(dtype=float) * (batch / 1000 if batch else 1.0)
        grids[name] = (np.log10(grid), layer_labels(cap), seen, bool(batch))
    if not grids:
        return empty_figure("gradient_heatmap.png", "Gradient heatmap",
                            "no training capture yet (plots/grad_capture/ is empty)")
    summary = run_summary([r["metrics"] for r in runs.values()])
    values = np.concatenate([g[0].to_numpy().ravel() for g in grids.values()])
    values = values[np.isfinite(values)]
    vmin, vmax = (values.min(), values.max()) if values.size else (-1, 0)
    most_layers = max(len(g[1]) for g in grids.values())
    fig, axes = panel_grid(len(grids), 4, 4.2, 1.4 + 0.09 * most_layers)
    image = None
    for ax, (name, (grid, labels, seen, in_images)) in zip(axes, grids.items()):
        image = ax.pcolormesh(sample_edges(seen), np.arange(len(labels) + 1) - 0.5, grid.to_numpy(),
                              cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=5 if len(labels) > 20 else 7)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.set_xlabel("training images seen (thousands)" if in_images else "training step")
        ax.set_title(name, fontsize=10, fontweight="bold")
    fig.colorbar(image, ax=axes, shrink=0.5, label="log10 mean |grad| at the sampled step")
    fig.suptitle(f"Gradients during training, layer by layer ({summary})", fontsize=12)
    return save(fig, "gradient_heatmap.png")


def activations(runs: dict, colours: dict) -> Path:
    """The signal each layer passes on at initialisation: it shrinks ~1/6 per plain conv."""
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    drawn = 0
    for name, run in runs.items():
        flow = run["flow"]
        if flow.empty or "act_std" not in flow:
            continue
        init = flow[flow["epoch"] == 0].sort_values("layer_index")
        if init.empty:
            continue
        ax.plot(flow_depth(init), positive(init["act_std"]), marker="o",
                ms=2.5, lw=1.2, color=colours[name], label=name)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return empty_figure("activations.png", "Activations at initialisation",
                            "no gradient probes at epoch 0 yet (plots/grad_flow/)")
    summary = run_summary([r["metrics"] for r in runs.values()])
    ax.set_yscale("log")
    ax.set_xlabel("layer depth (k-th conv/linear; BN, transition, aux layers at +0.5)")
    ax.set_ylabel("std of the layer's output on the probe batch")
    ax.set_title(f"Activation std per layer at initialisation ({summary})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save(fig, "activations.png")


def depth_sweep(sweep: pd.DataFrame, metrics: list[dict]) -> Path:
    if sweep.empty:
        return empty_figure("depth_sweep.png", "Depth sweep",
                            "no sweep results (metrics/sweep/ is empty). Fill it with, e.g.:\n"
                            "dvc exp run -S 'sweep.depths=[8,20,38]' -S sweep.epochs=1\n"
                            "(after the quick start: python -m gradflow.quickstart --rest)")
    fig, (loss_ax, ratio_ax) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    fix_colours = variant_colours(sorted(sweep["fix"].unique()))
    for fix, rows in sweep.groupby("fix"):
        rows = rows.sort_values("depth")
        loss_ax.plot(rows["depth"], pd.to_numeric(rows["final_train_loss"]), marker="o",
                     color=fix_colours[fix], label=fix)
        ratio_ax.plot(rows["depth"], positive(10.0 ** pd.to_numeric(rows["log10_grad_ratio_init"])),
                      marker="o", color=fix_colours[fix], label=fix)
        predicted = positive(10.0 ** pd.to_numeric(rows["log10_grad_ratio_predicted"]))
        if np.isfinite(predicted).any():  # the mean-field prediction, where the fix has one
            ratio_ax.plot(rows["depth"], predicted, ls="--", marker="x", color=fix_colours[fix],
                          label=f"{fix}, predicted (mean field)")
        for _, r in rows[rows["verdict"] == "diverged"].iterrows():  # say so on the point
            loss_ax.annotate("diverged", (r["depth"], CHANCE_LOSS), fontsize=7)
    loss_ax.axhline(CHANCE_LOSS, color="black", ls=":", lw=1, label="chance, ln(100)")
    loss_ax.set_ylabel("final training loss")
    loss_ax.set_title("where training ends")
    ratio_ax.set_yscale("log")
    ratio_ax.set_ylabel("mean |grad| first conv / last conv")
    ratio_ax.set_title("gradient ratio at initialisation (first sampled step)")
    for ax in (loss_ax, ratio_ax):
        ax.set_xticks(sorted(sweep["depth"].unique()))
        ax.set_xlabel("depth (convs + linear)")
        ax.grid(alpha=0.3)
        ax.legend(title="fix", fontsize=8)
    fig.suptitle(f"Depth sweep, {len(sweep)} runs ({run_summary(metrics)})", fontsize=11)
    return save(fig, "depth_sweep.png")
