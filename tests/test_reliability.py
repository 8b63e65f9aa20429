"""Reliability round two: every bad input the attack found gives one line and a
non-zero exit (or, for a corrupt resume checkpoint, a message and a fresh start), no output of
an earlier run deleted, no traceback, no user file removed.

- the check stage refuses, before DVC deletes anything: a device this machine lacks, a
  data.val_size not below the training set, a missing section or declared key, a variant
  without depth, an int where a boolean belongs (also through `dvc exp run -S`, and
  `git checkout HEAD -- params.yaml dvc.lock` undoes what that run left behind);
- every file a stage reads goes through gradflow.files' checked readers: a damaged manifest,
  dataset, snapshot or metrics file is one line naming it; a damaged checkpoint is set aside;
- a read-only models/<variant>/ is one line; a corrupt user archive is renamed, not deleted;
- divergence: a non-finite loss or one above 10 x ln 100 at an epoch's end; results.md prints
  such numbers as 1.7e+21.

Training here is one epoch of VGG_08 at 8 filters on 400 synthetic images.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (DVC, ROOT, TINY, copy_project, default_params, git_init, kill_after_epoch, merged,
                      project_params, run, setting, stage, write_params)

PARAMS = {"model": {"filters": 8},
          "variants": {"VGG_08": {"depth": 8}, "VGG_08_LR10": {"depth": 8, "lr": 10.0}}}
SECTIONS = ["data", "model", "train", "variants", "gradients", "sweep"]
# Stand-ins for an earlier run's outputs: a check that refuses must leave them as they are.
OUTPUTS = ["data/dataset.pt", "data/manifest.json", "models/VGG_08.pt", "models/VGG_08/epoch_000.pt",
           "metrics/VGG_08.json", "plots/history/VGG_08.csv", "plots/grad_capture/VGG_08.csv"]
STAND_IN = b"an earlier run's output\n"


def tiny() -> dict:
    return merged(merged(default_params(), TINY), PARAMS)


def one_line(proc: subprocess.CompletedProcess, *fragments: str, notes: str | None = None) -> str:
    """The refusal's shape: exit 2, one line `error: ...` on stderr holding every fragment (after
    the stage's own `notes` lines, e.g. `plots: ... is missing; drawing without it`)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if notes:
        lines = [line for line in lines if not line.startswith(notes)]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one line:\n{proc.stderr}"
    assert proc.stderr.strip().splitlines()[-1] == lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    return lines[0]


def files(project: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(project)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in project.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def flip_pickle(data: bytes) -> bytes:
    """A torch file with 16 bytes of its pickle inverted: the zip still opens, the pickle not."""
    start = data.find(b"\x80\x02", data.find(b"data.pkl"))
    assert start > 0
    out = bytearray(data)
    for i in range(start + 2, start + 18):
        out[i] ^= 0xFF
    return bytes(out)


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def trained_project(folder: Path, *stages: str) -> Path:
    """A project copy in `folder` after fetch and one epoch of train@VGG_08 (snapshots epoch 0
    and 1), then the named stages of VGG_08 (e.g. "gradients")."""
    project = copy_project(folder)
    write_params(project, base=tiny())
    stage("fetch", cwd=project)
    stage("train", "VGG_08", cwd=project)
    assert (project / "models/VGG_08/epoch_001.pt").is_file()
    for name in stages:
        stage(name, "VGG_08", cwd=project)
    return project


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A project copy after fetch and one epoch of train@VGG_08 (snapshots epoch 0 and 1)."""
    return trained_project(tmp_path_factory.mktemp("reliability") / "base")


@pytest.fixture
def copy(base: Path, tmp_path: Path) -> Path:
    """A fresh copy of `base` for a test to damage."""
    return Path(shutil.copytree(base, tmp_path / "copy", ignore=shutil.ignore_patterns("__pycache__")))


# --- 1. the check stage refuses before anything is deleted ---------------------------------

def without(path: str):
    def edit(params: dict) -> dict:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        del node[last]
        return params
    return edit


def declared_key() -> tuple[str, str]:
    """A dotted params key that dvc.yaml declares for some stage (e.g. gradients.probe_size)."""
    stages = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]
    for name, body in stages.items():
        for entry in body.get("do", body).get("params") or []:
            if isinstance(entry, str) and "." in entry and "${" not in entry:
                return name, entry
    pytest.skip("dvc.yaml declares no dotted params key")


NO_CUDA = not torch.cuda.is_available()
CASES = [
    pytest.param(setting("train.device", "cuda"), ["train.device", "'cuda'", "no CUDA device"],
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"), id="device-cuda"),
    pytest.param(setting("train.device", "cuda:7"), ["train.device", "'cuda:7'", "CUDA"],
                 marks=pytest.mark.skipif(torch.cuda.device_count() > 7, reason="8 GPUs here"),
                 id="device-cuda-7"),
    pytest.param(setting("train.device", "mps"), ["train.device", "'mps'", "not available"],
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS here"),
                 id="device-mps"),
    pytest.param(setting("data.val_size", 600), ["data.val_size", "600", "smaller", "synthetic_train_size"],
                 id="val-size-synthetic"),
    pytest.param(lambda p: setting("data.source", "cifar100")(setting("data.val_size", 50_000)(p)),
                 ["data.val_size", "50000", "smaller", "CIFAR-100"], id="val-size-cifar100"),
    *[pytest.param(without(s), [f"{s}: section missing", "params.yaml"], id=f"no-{s}-section")
      for s in SECTIONS],
    pytest.param(setting("variants.VGG_38_DSN", None), ["variants.VGG_38_DSN.depth", "missing"],
                 id="variant-with-no-keys"),
    pytest.param(setting("variants.VGG_08", {"batch_norm": True}), ["variants.VGG_08.depth", "missing"],
                 id="variant-without-depth"),
    pytest.param(setting("train.flip", 1), ["train.flip", "true or false", "got 1"], id="flip-1"),
    pytest.param(setting("variants.VGG_08.batch_norm", 0), ["variants.VGG_08.batch_norm", "got 0"],
                 id="batch-norm-0"),
    pytest.param("declared", None, id="declared-key-missing"),
    pytest.param(b"\xff\xfe\x00\x01garbage", ["params.yaml", "not a text file"], id="params-binary"),
]


@pytest.mark.parametrize("edit, fragments", CASES)
def test_check_refuses_before_anything_is_deleted(project, edit, fragments):
    if edit == "declared":
        stage_name, key = declared_key()
        edit, fragments = without(key), [key, "missing", stage_name]
    if isinstance(edit, bytes):
        (project / "params.yaml").write_bytes(edit)
    else:
        (project / "params.yaml").write_text(yaml.safe_dump(edit(tiny()), sort_keys=False))
    for rel in OUTPUTS:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(STAND_IN)
    before = files(project)
    one_line(stage("check", cwd=project, check=False), *fragments)
    assert files(project) == before, "the check wrote or deleted files"


def test_the_tiny_params_pass_the_check(project):
    """The refusals above come from the edits, not from the base params."""
    write_params(project, base=tiny())
    stage("check", cwd=project)


def test_train_refuses_a_missing_device_in_one_line(fetched):
    """Run directly (no check stage first), the train stage says the same in one line."""
    if not NO_CUDA:
        pytest.skip("this machine has CUDA")
    write_params(fetched, base=setting("train.device", "cuda")(tiny()))
    one_line(stage("train", "VGG_08", cwd=fetched, check=False), "train.device", "no CUDA device")
    assert not (fetched / "models" / "VGG_08.pt").exists()


README_RECOVERY = next(line for line in (ROOT / "README.md").read_text().splitlines()
                       if line.startswith("touch params.yaml"))


@pytest.mark.slow
def test_dvc_exp_run_with_a_bad_value_stops_at_the_check_and_the_recovery_command_works(project):
    """After a full `dvc repro`, `dvc exp run -S train.flip=1` (DVC writes `flip: 1`, which it
    alone would take for an unchanged `true`) and `-S train.device=cuda` stop in the check stage
    with the key on stderr, and no output changes; `git checkout HEAD -- params.yaml dvc.lock`
    and the README's recovery line (`touch` first, for an index that believes the file clean)
    restores params.yaml even when the failed run left it staged (where a plain `git checkout
    params.yaml` restores nothing)."""
    write_params(project, base=merged(tiny(), {"variants": {"VGG_08": {"depth": 8}},
                                               "sweep": {"depths": [8], "fixes": ["none"]}}))
    git_init(project)
    run([DVC, "repro"], cwd=project)
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", "dvc repro"], cwd=project)
    committed = (project / "params.yaml").read_bytes()

    def outputs() -> dict[str, bytes]:
        return {str(p.relative_to(project)): p.read_bytes() for d in ("data", "models", "metrics", "plots")
                for p in sorted((project / d).rglob("*")) if p.is_file()}
    before = outputs()
    assert "models/VGG_08.pt" in before and "metrics/VGG_08.json" in before

    bad = [("train.flip=1", ["train.flip", "true or false", "got 1"]),
           # a typo'd key, after DVC's own hint to add it with `+`: the key it meant
           ("+train.epoch=3", ["train.epoch: unknown key", "did you mean 'epochs'?"])]
    if NO_CUDA:
        bad.append(("train.device=cuda", ["train.device", "'cuda'", "no CUDA device"]))
    for setting_, fragments in bad:
        proc = run([DVC, "exp", "run", "-S", setting_], cwd=project, check=False)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, proc.stdout + proc.stderr
        for fragment in fragments:
            assert fragment in errors[0], errors[0]
        assert "failed to reproduce 'check'" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert outputs() == before, "outputs were deleted or rewritten"
        assert (project / "params.yaml").read_bytes() != committed  # the bad value is still there

        run(["git", "add", "params.yaml"], cwd=project)  # as a killed `dvc exp run` leaves it
        run(["git", "checkout", "params.yaml"], cwd=project)  # the old advice: restores nothing
        assert (project / "params.yaml").read_bytes() != committed
        run(["bash", "-c", README_RECOVERY], cwd=project)  # the README's line
        assert (project / "params.yaml").read_bytes() == committed
        status = run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.lock"], cwd=project)
        assert status.stdout == ""


# --- 2. every file a stage reads: one line naming it ---------------------------------------

def refetch_manifest(project: Path) -> None:
    """Point the manifest at the dataset file's current md5, as if fetch had written it."""
    import json
    from gradflow.files import md5sum
    manifest = project / "data" / "manifest.json"
    info = json.loads(manifest.read_text())
    info["dataset_md5"] = md5sum(project / "data" / "dataset.pt")
    manifest.write_text(json.dumps(info))


DATA_CASES = {
    "manifest-binary": ("data/manifest.json", lambda p: (p / "data/manifest.json").write_bytes(b"\xff\xfe\x00{"),
                        ["data/manifest.json", "UnicodeDecodeError", "fetch"]),
    "manifest-list": ("data/manifest.json", lambda p: (p / "data/manifest.json").write_text("[1, 2]\n"),
                      ["data/manifest.json", "JSON object", "list", "fetch"]),
    "manifest-empty-object": ("data/manifest.json", lambda p: (p / "data/manifest.json").write_text("{}"),
                              ["data/manifest.json", "'source'", "fetch"]),
    "dataset-pickle-flipped": ("data/dataset.pt", lambda p: (
        (p / "data/dataset.pt").write_bytes(flip_pickle((p / "data/dataset.pt").read_bytes())),
        refetch_manifest(p)), ["data/dataset.pt", "not a readable PyTorch file", "fetch"]),
    "dataset-foreign": ("data/dataset.pt", lambda p: (
        (p / "data/dataset.pt").write_bytes(torch_bytes({"x": torch.zeros(2)})),
        refetch_manifest(p)), ["data/dataset.pt", "train_images", "fetch"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_a_damaged_data_file_is_one_line_naming_it(copy, case):
    _, damage, fragments = DATA_CASES[case]
    damage(copy)
    model_before = (copy / "models/VGG_08.pt").read_bytes()
    one_line(stage("train", "VGG_08", cwd=copy, check=False), *fragments)
    assert (copy / "models/VGG_08.pt").read_bytes() == model_before


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["pickle-flipped", "truncated"])
def test_a_damaged_snapshot_is_one_line_in_the_gradients_stage(copy, damage):
    snap = copy / "models/VGG_08/epoch_001.pt"
    data = snap.read_bytes()
    snap.write_bytes(flip_pickle(data) if damage == "pickle-flipped" else data[:len(data) // 2])
    one_line(stage("gradients", "VGG_08", cwd=copy, check=False),
             "models/VGG_08/epoch_001.pt", "not a readable PyTorch file", "train@VGG_08")


@pytest.mark.slow
@pytest.mark.parametrize("rel, fragments", [
    ("metrics/VGG_08.json", ["metrics/VGG_08.json", "train@VGG_08"]),
    ("metrics/sweep/8-none.json", ["metrics/sweep/8-none.json", "sweep@8-none"]),
], ids=["variant", "sweep-point"])
def test_a_garbage_metrics_file_is_one_line_in_the_plots_stage(copy, rel, fragments):
    (copy / rel).parent.mkdir(parents=True, exist_ok=True)
    (copy / rel).write_bytes(b"\x00\x01 not json {")
    one_line(stage("plots", cwd=copy, check=False), *fragments, "not a readable JSON file", notes="plots: ")
    assert not (copy / "plots" / "results.md").exists()


# --- the resume checkpoint: set aside, start over -------------------------------------------

def checkpoint_damages() -> dict[str, bytes]:
    real = torch_bytes({"fingerprint": {}, "epoch": 1, "model": {"w": torch.randn(64, 64)}})
    return {"empty": b"", "truncated": real[:len(real) // 2], "pickle-flipped": flip_pickle(real),
            "foreign-dict": torch_bytes({"weights": torch.zeros(3)}), "text": b"not a checkpoint\n"}


@pytest.mark.parametrize("damage", list(checkpoint_damages()))
def test_a_damaged_checkpoint_is_set_aside(tmp_path, capsys, damage):
    from gradflow.resume import Checkpoint
    bad = checkpoint_damages()[damage]
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(bad)
    assert Checkpoint(path, {"config": 1}).load() is None
    assert not path.exists()
    assert (tmp_path / "checkpoint.pt.corrupt").read_bytes() == bad  # kept, for a look
    err = capsys.readouterr().err
    assert f"moved it to {tmp_path / 'checkpoint.pt.corrupt'} and starting over" in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_the_train_stage_starts_over_after_a_damaged_checkpoint(copy):
    ckpt = copy / "models/.resume/VGG_08.pt"
    bad = checkpoint_damages()["pickle-flipped"]
    ckpt.write_bytes(bad)
    proc = stage("train", "VGG_08", cwd=copy)
    assert "moved it to models/.resume/VGG_08.pt.corrupt and starting over" in proc.stderr
    assert "epoch 1/1" in proc.stderr and "resuming" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (copy / "models/.resume/VGG_08.pt.corrupt").read_bytes() == bad
    assert not ckpt.exists()  # the run completed
    assert (copy / "metrics/VGG_08.json").is_file()


def make_read_only(path: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; the immutable flag holds even for root
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    else:
        path.chmod(0o555)


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_workdir_is_one_line(copy):
    """models/VGG_08/ holds an earlier run's snapshots; the new run (no checkpoint) would
    remove them: read-only, that is one line, before any epoch, and they stay."""
    workdir = copy / "models" / "VGG_08"
    before = sorted(p.name for p in workdir.iterdir())
    assert "epoch_000.pt" in before
    make_read_only(workdir)
    try:
        proc = stage("train", "VGG_08", cwd=copy, check=False)
    finally:
        make_writable(workdir)
    one_line(proc, "models/VGG_08", "cannot write", "chmod")
    assert sorted(p.name for p in workdir.iterdir()) == before


# --- 3. a user's archive is set aside, not deleted ------------------------------------------

def test_a_corrupt_user_archive_is_renamed_not_deleted(project, monkeypatch, capsys):
    import stages.fetch
    from gradflow.errors import DataError
    monkeypatch.chdir(project)
    archive = project / "data" / "raw" / "cifar-100-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"the user's own, damaged copy")

    def offline():
        raise DataError("cannot download CIFAR-100 (offline)")
    monkeypatch.setattr(stages.fetch, "download_cifar100", offline)
    with pytest.raises(DataError, match="offline"):
        stages.fetch.cifar100_source(project_params({"data": {"source": "cifar100", "val_size": 20}}).data)
    aside = archive.with_name("cifar-100-python.tar.gz.corrupt")
    assert aside.read_bytes() == b"the user's own, damaged copy"
    assert not archive.exists()
    assert "moved it to data/raw/cifar-100-python.tar.gz.corrupt" in capsys.readouterr().err


# --- 4. divergence ---------------------------------------------------------------------------

def test_the_divergence_rule():
    from gradflow.verdict import DIVERGED_LOSS, is_divergent
    assert DIVERGED_LOSS == pytest.approx(10 * math.log(100))
    assert not is_divergent(math.log(100)) and not is_divergent(46.0)
    assert is_divergent(46.1) and is_divergent(1.7e21)
    assert is_divergent(math.nan) and is_divergent(math.inf) and is_divergent(-math.inf)


@pytest.mark.slow
def test_a_runaway_finite_loss_is_diverged_and_its_outputs_written(copy):
    """lr 10 sends this net's loss to ~1e16 in epoch 1, finite: before, status `ok`."""
    from gradflow import params as P
    from gradflow.data import load_dataset
    from gradflow.training import fit
    from gradflow.verdict import DIVERGED_LOSS
    cwd = os.getcwd()
    os.chdir(copy)
    try:
        params = P.load()
        cfg = params.run("VGG_08_LR10")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3))
        result = fit(cfg, load_dataset(params.data), capture=False)
    finally:
        os.chdir(cwd)
    assert result.status == "diverged" and result.diverged_epoch == 1
    assert len(result.history) == 1  # the runaway epoch is recorded, then the run stops
    assert math.isfinite(result.history[0]["train_loss"]) and result.history[0]["train_loss"] > DIVERGED_LOSS

    proc = stage("train", "VGG_08_LR10", cwd=copy)
    assert "diverged" in proc.stderr and "stopping this variant" in proc.stderr
    for rel in ("models/VGG_08_LR10.pt", "metrics/VGG_08_LR10.json", "plots/history/VGG_08_LR10.csv",
                "plots/grad_capture/VGG_08_LR10.csv"):
        assert (copy / rel).is_file(), rel
    assert torch.load(copy / "models/VGG_08_LR10.pt", weights_only=True)["run"]["status"] == "diverged"


def test_results_md_prints_huge_numbers_readably():
    from gradflow.report import fmt
    assert fmt(1.7e21) == "1.7e+21" and fmt(1.4e35) == "1.4e+35" and fmt(1.5e12) == "1.5e+12"
    assert fmt(4.6052) == "4.6052" and fmt(0.5, ".3f") == "0.500"  # ordinary values as before
    assert fmt(123456, ",d") == "123,456" and fmt(None) == "n/a"


# --- resume under `dvc exp run` -------------------------------------------------------------

@pytest.mark.slow
def test_resume_after_a_kill_holds_under_dvc_exp_run(tmp_path):
    """kill -9 a `dvc exp run` (dvc and its stage) after the train stage's first epoch, run the
    same command again: the train stage resumes from its checkpoint. (It used not to: two
    fetches wrote different bytes, since torch.save recorded the temporary file's name, so the
    checkpoint's data fingerprint never matched.)"""
    import signal

    project = copy_project(tmp_path / "project")
    write_params(project, {"data": {"synthetic_train_size": 2200}, "model": {"filters": 8},
                           "train": {"epochs": 4}, "variants": {"VGG_08": {"depth": 8}},
                           "sweep": {"depths": [8], "fixes": ["none"], "epochs": 1}})
    git_init(project)
    env = {**os.environ, "PYTHONPATH": str(project), "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(DVC).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ckpt = project / "models" / ".resume" / "VGG_08.pt"
    proc = subprocess.Popen([DVC, "exp", "run"], cwd=project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # dvc and the stage it runs, together: no cleanup anywhere
    killed_at = kill_after_epoch(proc, ckpt, 1, 180, kill=lambda: os.killpg(proc.pid, signal.SIGKILL))
    assert 1 <= killed_at < 4

    again = run([DVC, "exp", "run"], cwd=project)
    output = again.stdout + again.stderr
    assert f"resuming after epoch {killed_at}" in output, output[-3000:]
    assert f"VGG_08 epoch {killed_at}/4" not in output and "VGG_08 epoch 4/4" in output
    assert not ckpt.exists()
