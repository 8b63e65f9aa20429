"""The train stage end to end (outputs, determinism, resume after a kill, divergence) and the
gradient statistics against a direct computation.

The training runs share one small config: VGG_08 at 8 filters on 1,000 synthetic images,
4 epochs, about a second an epoch on 2 CPU cores.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import PYTHON, copy_project, kill_after_epoch, project_params, rule_verdict, stage, write_params
from gradflow.capture import COLUMNS, CaptureRow, GradientCapture, first_last_conv_ratio
from gradflow.data import Augment, Dataset, Split, synthetic
from gradflow.probe import probe
from gradflow.model import VGG, depth_positions, probed_parameters
from gradflow.params import ModelParams, Variant
from gradflow.loss import loss_fn
from gradflow.training import evaluate

VARIANT = "VGG_08"
DIVERGE = "VGG_08_DIVERGE"
# Adam at lr 1e3 does not reliably blow up this 8-filter net (the loss reaches ~1e29 and
# stays finite); at lr 1e6 the first epoch's loss is NaN.
DIVERGE_LR = 1.0e6
PARAMS = {
    "data": {"synthetic_train_size": 1200},  # 1,000 train / 200 val / 200 test
    "model": {"filters": 8},
    # A point of the curves every 300 images: three inside each 1,000-image epoch, and its end.
    "train": {"epochs": 4, "eval_every": 300, "eval_subset": 100},
    "variants": {VARIANT: {"depth": 8}, DIVERGE: {"depth": 8, "lr": DIVERGE_LR}},
    # A snapshot at every epoch, so models/V.pt can be compared with the snapshot of whichever
    # epoch turns out best.
    "gradients": {"epochs": [0, 1, 2, 3, "last"], "probe_size": 50},
}
SNAPSHOTS = [0, 1, 2, 3, 4]
HEADLINE = ("verdict", "test_acc", "test_loss", "best_val_acc", "final_train_loss",
            "log10_grad_ratio_init", "log10_grad_ratio_final")
METRIC_SPLITS = ("train_loss", "train_acc", "val_loss", "val_acc")


def outputs(project: Path, variant: str = VARIANT) -> dict[str, Path]:
    return {"model": project / "models" / f"{variant}.pt",
            "workdir": project / "models" / variant,
            "metrics": project / "metrics" / f"{variant}.json",
            "history": project / "plots" / "history" / f"{variant}.csv",
            "capture": project / "plots" / "grad_capture" / f"{variant}.csv"}


def new_copy(root: Path, name: str, data_from: Path | None = None, overrides: dict | None = None) -> Path:
    """A project copy with PARAMS (+ overrides); data/ copied from another copy, or fetched."""
    project = copy_project(root / name)
    write_params(project, PARAMS if overrides is None else _merge(PARAMS, overrides))
    if data_from is not None:
        shutil.copytree(data_from / "data", project / "data")
    else:
        stage("fetch", cwd=project)
    return project


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) and k != "variants" else v
    return out


def metrics_without_timing(project: Path, variant: str = VARIANT) -> dict:
    """The headline metrics and the run details: no timings are in either (they live in
    dvclive/), so equal runs give equal files."""
    m = json.loads(outputs(project, variant)["metrics"].read_text())
    assert tuple(m) == HEADLINE
    return {**m, **torch.load(outputs(project, variant)["model"], weights_only=True)["run"]}


def tables(project: Path, variant: str = VARIANT) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = outputs(project, variant)
    return pd.read_csv(out["history"]), pd.read_csv(out["capture"])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_same_run(a: Path, b: Path) -> None:
    """Two projects' train outputs for VARIANT agree on everything but timing."""
    assert metrics_without_timing(a) == metrics_without_timing(b)
    for ta, tb in zip(tables(a), tables(b)):
        pd.testing.assert_frame_equal(ta, tb, check_exact=True)
    assert_same_weights(weights(outputs(a)["model"]), weights(outputs(b)["model"]))
    for e in SNAPSHOTS:
        snap = f"epoch_{e:03d}.pt"
        assert_same_weights(weights(outputs(a)["workdir"] / snap), weights(outputs(b)["workdir"] / snap))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One project copy after fetch, train@VGG_08 and train@VGG_08_DIVERGE."""
    project = new_copy(tmp_path_factory.mktemp("training"), "a")
    stage("train", VARIANT, cwd=project)
    return project


# --- one run's outputs ---------------------------------------------------------------------

@pytest.mark.slow
def test_train_writes_every_output(trained):
    out = outputs(trained)
    for path in out.values():
        assert path.exists(), path
    assert not (trained / "models" / ".resume" / f"{VARIANT}.pt").exists()  # a finished run leaves nothing to resume
    assert sorted(p.name for p in out["workdir"].glob("epoch_*.pt")) == [f"epoch_{e:03d}.pt" for e in SNAPSHOTS]

    m = json.loads(out["metrics"].read_text())
    assert tuple(m) == HEADLINE
    assert all(math.isfinite(m[k]) for k in HEADLINE[1:])
    # plain VGG_08 at init: its first conv gets about a tenth of its last conv's gradient
    assert -3 < m["log10_grad_ratio_init"] < 1
    saved = torch.load(out["model"], weights_only=True)
    run = saved["run"]
    assert m["verdict"] == rule_verdict(m, run)
    assert run["status"] == "ok" and run["diverged_epoch"] is None
    assert run["epochs"] == run["epochs_run"] == 4 and 1 <= run["best_epoch"] <= 4
    assert run["data_source"] == "synthetic" and run["device"] == "cpu" and run["precision"] == "fp32"
    # the timings: beside DVCLive's metrics, outside every DVC output; DVCLive's metrics.json
    # (an output) holds the last epoch's numbers and no timing
    timings = json.loads((trained / "dvclive" / VARIANT / "timings.json").read_text())
    assert timings["seconds_per_epoch"] > 0 and timings["images_per_second"] > 0
    live = json.loads((trained / "dvclive" / VARIANT / "metrics.json").read_text())
    last = pd.read_csv(out["history"]).iloc[-1]
    assert live == {"train_loss": last["train_loss"], "train_acc": last["train_acc"], "val_loss": last["val_loss"],
                    "val_acc": last["val_acc"], "lr": last["lr"], "step": 4000}

    # models/V.pt: the best-validation weights, loadable without pickle, into the model its
    # resolved config describes; evaluated on test they give the metrics' test scores.
    config = saved["config"]
    assert config["name"] == VARIANT and config["model"]["filters"] == 8 and config["train"]["epochs"] == 4
    model = VGG(Variant(**config["variant"]), ModelParams(**config["model"]))
    model.load_state_dict(saved["model"])
    # Every epoch has a snapshot (PARAMS): the saved weights are exactly the best epoch's.
    assert_same_weights(saved["model"], weights(out["workdir"] / f"epoch_{run['best_epoch']:03d}.pt"))
    data = torch.load(trained / "data" / "dataset.pt", weights_only=True)
    t = config["train"]
    test = evaluate(model, Split(data["test_images"], data["test_labels"]),
                    Augment(t["mean"], t["std"], 0, False, torch.device("cpu")), 500,
                    torch.device("cpu"), False)
    assert test["loss"] == pytest.approx(m["test_loss"], rel=1e-5)
    assert test["acc"] == pytest.approx(m["test_acc"], rel=1e-5)

    # history: a point every 300 images (100 validation images) and at each epoch's end (all
    # 200); each point's training loss covers the images since the one before, so an epoch's
    # points average to its mean loss, the metrics' final_train_loss.
    history = pd.read_csv(out["history"])
    assert list(history.columns) == ["variant", "epoch", "images_seen", *METRIC_SPLITS, "val_images", "lr"]
    assert history["images_seen"].tolist() == [e * 1000 + k for e in range(4) for k in (300, 600, 900, 1000)]
    assert history["epoch"].tolist() == [e for e in (1, 2, 3, 4) for _ in range(4)]
    assert history["val_images"].tolist() == [100, 100, 100, 200] * 4 and (history["variant"] == VARIANT).all()
    last_epoch = history[history["epoch"] == 4]
    assert m["final_train_loss"] == pytest.approx(
        (last_epoch["train_loss"] * [300, 300, 300, 100]).sum() / 1000, rel=1e-5)
    ends = history[history["val_images"] == 200]
    best = ends[ends["epoch"] == run["best_epoch"]].iloc[0]
    assert m["best_val_acc"] == pytest.approx(best["val_acc"], rel=1e-5)
    assert best["val_acc"] == ends["val_acc"].max()
    assert history["lr"].iloc[0] == pytest.approx(1e-3)  # cosine annealing, stepped per epoch
    assert history["lr"].is_monotonic_decreasing

    # grad capture: long format, every probed layer at every sampled step
    capture = pd.read_csv(out["capture"])
    assert tuple(capture.columns) == COLUMNS == (
        "variant", "epoch", "step", "layer_index", "layer", "mean_abs_grad", "grad_norm",
        "max_abs_grad", "weight_norm", "update_ratio", "depth")
    layers = [name for name, _ in probed_parameters(model)]
    steps_per_epoch = 1000 // 100  # train images / batch size
    # auto: sampled at the curves' points, every 300 // 100 = 3 steps: steps 0, 3, 6, 9 an epoch
    assert sorted(capture["step"].unique()) == [e * steps_per_epoch + i for e in range(4) for i in (0, 3, 6, 9)]
    assert len(capture) == 4 * 4 * len(layers)
    for (epoch, step), rows in capture.groupby(["epoch", "step"]):
        assert rows["layer"].tolist() == layers and rows["layer_index"].tolist() == list(range(len(layers)))
        assert rows["depth"].tolist() == depth_positions(layers)
        assert (epoch - 1) * steps_per_epoch <= step < epoch * steps_per_epoch
    assert capture[["mean_abs_grad", "grad_norm", "max_abs_grad", "weight_norm"]].gt(0).all().all()
    assert (capture["mean_abs_grad"] <= capture["max_abs_grad"]).all()
    assert (capture["variant"] == VARIANT).all()


# --- the statistics themselves --------------------------------------------------------------

def small_model(**switches) -> VGG:
    torch.manual_seed(0)
    return VGG(Variant(depth=8, **switches), ModelParams(filters=8, stages=3))


def test_capture_matches_direct_computation():
    """GradientCapture's rows equal torch's own norms of the same gradients and weights, and
    its update ratio is ||w_after - w_before|| / ||w_before|| of a real Adam step."""
    model = small_model()
    names, params = zip(*probed_parameters(model))
    steps, every = 4, 2
    capture = GradientCapture(list(names), list(params), every, steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    expected = []
    for step in range(steps):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(100, (16,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x)[0], y).backward()
        sample = capture.wants(step)
        if sample:
            direct = [[p.grad.abs().mean().item(), p.grad.norm().item(), p.grad.abs().max().item(),
                       p.norm().item()] for p in params]
            before = [p.detach().clone() for p in params]
            capture.before_step(10 + step)
        optimizer.step()
        if sample:
            capture.after_step()
            for d, p, b in zip(direct, params, before):
                d.append(((p.detach() - b).norm() / b.norm()).item())
            expected.append((10 + step, direct))
    capture.end_epoch(3)

    assert len(capture.rows) == 2 * len(params)  # steps 0 and 2 sampled
    rows = iter(capture.rows)
    for step, direct in expected:
        for i, (name, stats) in enumerate(zip(names, direct)):
            row = next(rows)
            assert row[:4] == (3, step, i, name)
            assert row[4:9] == pytest.approx(stats, rel=1e-5)
            assert row[8] > 0  # Adam moved every probed tensor


def test_probe_matches_direct_computation():
    """stages.gradients.probe: the training loss's gradients on the probe batch, per layer,
    plus each layer's output statistics, as computing them by hand gives."""
    for switches, aux_weight in (({}, 0.0), ({"deep_supervision": True}, 0.3)):
        model = small_model(**switches)
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(20, 3, 32, 32, generator=g), torch.randint(100, (20,), generator=g)

        direct = copy.deepcopy(model).train()
        logits, aux = direct(x)
        # deep supervision: one auxiliary head after each stage but the last (3 stages)
        assert len(aux) == (2 if switches.get("deep_supervision") else 0)
        loss = F.cross_entropy(logits, y) + sum(aux_weight / len(aux) * F.cross_entropy(a, y) for a in aux)
        loss.backward()
        entry = direct.input_conv.conv_0(x)

        rows = probe(model, x, y, include_bias=False, aux_weight=aux_weight)
        probed = probed_parameters(direct)
        assert [r[0] for r in rows] == [name for name, _ in probed]
        for (name, stats, acts), (_, p) in zip(rows, probed):
            want = [p.grad.abs().mean().item(), p.grad.norm().item(), p.grad.abs().max().item(), p.norm().item()]
            assert stats == pytest.approx(want, rel=1e-4), name
        acts = dict((r[0], r[2]) for r in rows)["input_conv_conv_0"]
        # signal share: per channel, variance across the images over the second moment (the
        # positions summed), averaged over channels
        a = entry.detach().double().flatten(2)
        share = (a.var(0, unbiased=False).sum(-1) / a.pow(2).mean(0).sum(-1)).mean().item()
        assert acts == pytest.approx([entry.mean().item(), entry.std().item(),
                                      (entry <= 0).float().mean().item(), share], rel=1e-4)


# The names probed_parameters gives a small VGG_08 with biases (the order of the model).
NAMES = ["input_conv_conv_0", "input_conv_bn_0", "input_conv_conv_0_bias", "reduction_block_0_conv_0",
         "reduction_block_0_conv_1", "reduction_block_2_conv_1", "reduction_block_2_conv_1_bias",
         "logit_linear_layer"]


def capture_rows(epoch: int, step: int, mean_abs: dict[str, float]) -> list[tuple]:
    """Capture rows (epoch, step, layer_index, layer, mean_abs_grad, ..., depth) for these layers."""
    return [CaptureRow(epoch, step, NAMES.index(name), name, value, 1.0, 1.0, 1.0, 0.1, float(NAMES.index(name)))
            for name, value in mean_abs.items()]


def test_named_rows_have_the_tables_columns():
    """Capture and probe rows are named tuples whose fields are the CSV columns, in order."""
    from gradflow.probe import PROBE_COLUMNS, ProbeRow
    assert CaptureRow._fields == COLUMNS[1:]  # the train stage writes (variant, *row)
    assert ProbeRow._fields == PROBE_COLUMNS


def test_resume_checkpoint_stores_capture_rows_as_plain_tuples(tmp_path):
    """weights_only loading admits no class of ours: the checkpoint holds plain tuples, and
    loading gives the named rows back."""
    from gradflow.resume import Checkpoint, ResumeState
    rows = capture_rows(1, 0, {"input_conv_conv_0": 1.0, "reduction_block_2_conv_1": 4.0})
    ckpt = Checkpoint(tmp_path / "V.pt", {"config": 1})
    ckpt.save(ResumeState(epoch=1, model={}, optimizer={}, scheduler={}, rng=torch.get_rng_state(),
                          train_seconds=0.0, history=[], points=[], best_epoch=0, best_state=None,
                          capture_rows=rows, snapshots={}))
    saved = torch.load(tmp_path / "V.pt", weights_only=True)["capture_rows"]
    assert [type(r) for r in saved] == [tuple, tuple] and saved == [tuple(r) for r in rows]
    loaded = ckpt.load().capture_rows
    assert loaded == rows and all(type(r) is CaptureRow for r in loaded)


def test_first_last_conv_ratio_uses_the_first_and_last_conv_in_model_order():
    rows = capture_rows(1, 0, {"logit_linear_layer": 100.0, "reduction_block_2_conv_1_bias": 50.0,
                               "reduction_block_2_conv_1": 4.0, "reduction_block_0_conv_0": 7.0,
                               "input_conv_conv_0_bias": 9.0, "input_conv_bn_0": 3.0,
                               "input_conv_conv_0": 1.0})
    rows += capture_rows(2, 5, {"input_conv_conv_0": 6.0, "reduction_block_2_conv_1": 2.0})
    # Rows in any order; biases, batch norm and the linear layer are not convs.
    assert first_last_conv_ratio(rows[::-1], NAMES, (1, 0)) == 0.25
    assert first_last_conv_ratio(rows, NAMES, (2, 5)) == 3.0  # only that step's rows count
    # "first" and "last" follow `names`, not the rows: reversed names swap them.
    assert first_last_conv_ratio(rows, NAMES[::-1], (1, 0)) == 4.0


def test_first_last_conv_ratio_is_none_when_it_cannot_be_computed():
    both = {"input_conv_conv_0": 1.0, "reduction_block_2_conv_1": 4.0}
    rows = capture_rows(1, 0, both)
    assert first_last_conv_ratio(rows, NAMES, (1, 1)) is None  # no such step
    assert first_last_conv_ratio(capture_rows(1, 0, {"input_conv_conv_0": 1.0}), NAMES, (1, 0)) is None
    assert first_last_conv_ratio(capture_rows(1, 0, {"reduction_block_2_conv_1": 1.0}), NAMES, (1, 0)) is None
    assert first_last_conv_ratio(rows, ["input_conv_conv_0", "logit_linear_layer"], (1, 0)) is None  # one conv
    assert first_last_conv_ratio([], NAMES, (1, 0)) is None
    # A zero last gradient would divide by zero; NaN and inf (a diverged run) are not JSON.
    for first, last in ((1.0, 0.0), (0.0, 0.0), (math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0)):
        rows = capture_rows(1, 0, {"input_conv_conv_0": first, "reduction_block_2_conv_1": last})
        assert first_last_conv_ratio(rows, NAMES, (1, 0)) is None, (first, last)
    # A vanished first-layer gradient is a real measurement: 0, not None.
    rows = capture_rows(1, 0, {"input_conv_conv_0": 0.0, "reduction_block_2_conv_1": 4.0})
    assert first_last_conv_ratio(rows, NAMES, (1, 0)) == 0.0


def test_loss_fn_weights_the_auxiliary_heads():
    g = torch.Generator().manual_seed(3)
    logits, a1, a2 = (torch.randn(6, 100, generator=g) for _ in range(3))
    y = torch.randint(100, (6,), generator=g)
    ce = (lambda z: F.cross_entropy(z, y, reduction="sum"))
    total, main = loss_fn(logits, [a1, a2], y, 0.3, 6)
    assert main == pytest.approx(ce(logits).item(), rel=1e-6)
    assert total.item() == pytest.approx((ce(logits) + 0.15 * (ce(a1) + ce(a2))).item() / 6, rel=1e-6)
    assert loss_fn(logits, [], y, 0.3, 6)[0].item() == pytest.approx(ce(logits).item() / 6, rel=1e-6)


def test_aux_weight_decays_linearly_over_the_epochs(monkeypatch):
    """Deep supervision: the weight of the auxiliary losses in epoch e of E is
    aux_weight * (1 - (e - 1) / E), the same for every step of the epoch, observed on the
    weights `fit` hands to the loss (through the training step, gradflow.fastpath)."""
    import gradflow.fastpath as fastpath
    import gradflow.training as training

    assert [training.aux_weight_at(0.4, e, 4) for e in (1, 2, 3, 4)] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    real = fastpath.loss_fn
    seen: list[tuple[int, float]] = []  # (number of aux heads, aux weight) per step

    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs).arguments
        seen.append((len(bound["aux"]), bound["aux_weight"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastpath, "loss_fn", spy)
    epochs, steps = 4, 2
    cfg = project_params({"model": {"filters": 4},
                          "train": {"epochs": epochs, "batch_size": 20, "device": "cpu", "eval_batch_size": 20},
                          "gradients": {"epochs": [0]},
                          "variants": {"DSN": {"depth": 8, "deep_supervision": True, "aux_weight": 0.4}}}).run("DSN")
    x, y = synthetic(80, 0, stream=0)
    dataset = Dataset(Split(x[:40], y[:40]), Split(x[40:60], y[40:60]), Split(x[60:], y[60:]),
                      [f"c{i}" for i in range(100)], "synthetic")
    result = training.fit(cfg, dataset, capture=False)
    assert result.status == "ok" and len(result.history) == epochs
    expected = [0.4 * (1 - (e - 1) / epochs) for e in range(1, epochs + 1) for _ in range(steps)]
    assert [n for n, _ in seen] == [2] * len(expected)
    assert [w for _, w in seen] == pytest.approx(expected)  # 0.4, 0.3, 0.2, 0.1


# --- determinism and resume -----------------------------------------------------------------

@pytest.mark.slow
def test_same_params_same_results(trained, tmp_path):
    """A second run of the train stage with the same params and seed, in another copy,
    reproduces every metric, table and weight (timing aside)."""
    again = new_copy(tmp_path, "b", data_from=trained)
    stage("train", VARIANT, cwd=again)
    assert_same_run(trained, again)


@pytest.mark.slow
def test_bf16_is_deterministic_too_and_differs_from_fp32(trained, tmp_path):
    """train.precision: bf16 (autocast on the CPU): two runs with the same params and seed agree
    exactly, and differ from the fp32 run (so the switch is really on)."""
    bf16 = {"train": {"epochs": 4, "precision": "bf16"}}
    one = new_copy(tmp_path, "bf16_a", data_from=trained, overrides=bf16)
    two = new_copy(tmp_path, "bf16_b", data_from=trained, overrides=bf16)
    for project in (one, two):
        stage("train", VARIANT, cwd=project)
    assert_same_run(one, two)
    assert metrics_without_timing(one)["precision"] == "bf16"
    assert tables(one)[0]["train_loss"].tolist() != tables(trained)[0]["train_loss"].tolist()


def stage_env(cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(cwd), "PYTHONUNBUFFERED": "1"}
    env.pop("LOCAL_RANK", None)
    return env


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(trained, tmp_path):
    """SIGKILL the train stage after epoch 2, run it again: it resumes from the checkpoint and
    ends with exactly what the uninterrupted run in `trained` wrote."""
    project = new_copy(tmp_path, "killed", data_from=trained)
    ckpt = project / "models" / ".resume" / f"{VARIANT}.pt"
    proc = subprocess.Popen([PYTHON, "-m", "stages.train", VARIANT], cwd=project, env=stage_env(project),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed_at = kill_after_epoch(proc, ckpt, 2, 120)
    assert 2 <= killed_at < 4
    assert not outputs(project)["metrics"].exists()
    saved = ckpt.read_bytes()

    resumed = stage("train", VARIANT, cwd=project)
    assert f"resuming after epoch {killed_at}" in resumed.stderr
    assert f"epoch {killed_at}/4" not in resumed.stderr and "epoch 4/4" in resumed.stderr
    assert not ckpt.exists()
    assert_same_run(trained, project)

    # A checkpoint made with other params is not resumed: training starts from scratch.
    ckpt.write_bytes(saved)
    write_params(project, _merge(PARAMS, {"train": {"epochs": 2}, "gradients": {"epochs": [0, "last"]}}))
    fresh = stage("train", VARIANT, cwd=project)
    assert "made with other params" in fresh.stderr and "resuming after" not in fresh.stderr
    assert "epoch 1/2" in fresh.stderr
    assert pd.read_csv(outputs(project)["history"])["epoch"].unique().tolist() == [1, 2]
    assert not ckpt.exists()


@pytest.mark.slow
def test_dvc_exp_show_moves_inside_the_first_epoch(trained, tmp_path, monkeypatch):
    """While the train stage is inside its first epoch, after each point DVCLive's metrics.json
    and the history table already hold that point, and `dvc exp show` prints it."""
    from conftest import DVC, git_init, run
    from stages import train as train_stage

    project = new_copy(tmp_path, "live", data_from=trained,
                       overrides={"train": {"epochs": 1}, "gradients": {"epochs": [0, "last"]}})
    git_init(project)
    monkeypatch.chdir(project)
    seen = []

    def spying_fit(cfg, dataset, **kw):
        def spy(points):
            kw_on_point(points)
            live = json.loads((project / "dvclive" / VARIANT / "metrics.json").read_text())
            rows = pd.read_csv(project / "plots" / "history" / f"{VARIANT}.csv")
            shown = ""
            if points[-1]["images_seen"] == 300:  # the first point: ask DVC, as a user would
                shown = run([DVC, "exp", "show", "--json"], cwd=project).stdout
            seen.append((points[-1]["images_seen"], live["step"], len(rows), live["val_acc"], shown))
        kw_on_point, kw["on_point"] = kw["on_point"], spy
        return real_fit(cfg, dataset, **kw)

    real_fit = train_stage.fit
    monkeypatch.setattr(train_stage, "fit", spying_fit)
    train_stage.main([VARIANT])
    assert [(s[0], s[1], s[2]) for s in seen] == [(300, 300, 1), (600, 600, 2), (900, 900, 3), (1000, 1000, 4)]
    shown = json.loads(seen[0][4])
    workspace = next(e for e in shown if e["rev"] == "workspace")
    live = workspace["data"]["metrics"][f"dvclive/{VARIANT}/metrics.json"]["data"]
    assert live["step"] == 300 and live["val_acc"] == seen[0][3]


# --- divergence ----------------------------------------------------------------------------

@pytest.mark.slow
def test_diverged_variant_ends_cleanly(trained):
    """Adam at lr 1e6 turns the loss into NaN in epoch 1: the stage says so, exits 0 with
    status 'diverged', writes its tables, and the gradients stage still probes what is there."""
    before = metrics_without_timing(trained)
    proc = stage("train", DIVERGE, cwd=trained)
    assert "stopping this variant" in proc.stderr
    out = outputs(trained, DIVERGE)
    m = metrics_without_timing(trained, DIVERGE)
    assert m["verdict"] == "diverged"
    assert m["status"] == "diverged" and m["diverged_epoch"] == 1 and m["epochs_run"] == 0
    json.loads(out["metrics"].read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    assert m["log10_grad_ratio_final"] is None
    assert out["history"].is_file() and out["capture"].is_file() and out["model"].is_file()
    assert not (trained / "models" / ".resume" / f"{DIVERGE}.pt").exists()
    capture = pd.read_csv(out["capture"])
    assert not capture.empty and not capture["grad_norm"].map(math.isfinite).all()

    grads = stage("gradients", DIVERGE, cwd=trained)
    flow = pd.read_csv(trained / "plots" / "grad_flow" / f"{DIVERGE}.csv")
    assert flow["epoch"].unique().tolist() == [0]  # only the initialisation snapshot exists
    assert flow["mean_abs_grad"].map(math.isfinite).all()
    assert "no snapshot" in grads.stderr
    assert metrics_without_timing(trained) == before  # VGG_08's outputs untouched
