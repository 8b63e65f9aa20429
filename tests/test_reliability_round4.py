"""Reliability round four: whatever the user put at the CIFAR-100 archive's path stays there;
values and files that passed the checks and then broke training are refused up front.

A symlink (to a missing file or a folder), a FIFO or a directory at data/raw/ is not an archive
the fetch stage wrote: it says what is there in one line, exit 2, and leaves it as it is
(no download over it, nothing set aside, nothing removed). A symlink to a real file is a copy
on another disk, and is read through (its md5 is checked as any archive's).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import PYTHON, run, stage, write_params
from test_reliability import one_line

ARCHIVE = Path("data/raw/cifar-100-python.tar.gz")


@pytest.fixture
def cifar_project(project: Path) -> Path:
    write_params(project, {"data": {"source": "cifar100"}})
    (project / ARCHIVE).parent.mkdir(parents=True, exist_ok=True)
    return project


@pytest.mark.parametrize("kind", ["dangling symlink", "symlink to a folder", "fifo", "directory"])
def test_what_is_not_a_file_at_the_archive_path_is_left_alone(cifar_project: Path, tmp_path: Path, kind: str):
    path = cifar_project / ARCHIVE
    if kind == "dangling symlink":
        path.symlink_to(tmp_path / "usb" / "cifar-100-python.tar.gz")
    elif kind == "symlink to a folder":
        (tmp_path / "usb").mkdir()
        path.symlink_to(tmp_path / "usb")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    before = sorted(p.name for p in path.parent.iterdir())
    proc = stage("fetch", cwd=cifar_project, check=False)
    word = {"fifo": "FIFO", "directory": "a directory"}.get(kind, "a symlink to")
    one_line(proc, str(ARCHIVE), word, "left as it is", "data.source=synthetic")
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing set aside or removed
    assert path.is_symlink() or path.exists()
    if kind == "directory":
        assert (path / "notes.txt").read_text() == "mine"


# --- values the check let through, then a traceback after DVC had deleted the outputs -----------

@pytest.mark.parametrize("key, value, fragment", [
    ("train.seed", 2**63 - 1, "must be <= 4294967295"),
    ("data.seed", 10**14, "must be <= 4294967295"),
    ("train.lr", 1e39, "must be <= 1e+30"),
    ("train.weight_decay", 1e300, "must be <= 1e+30"),
    ("train.eta_min", 1e300, "must be <= 1e+30"),
], ids=["train.seed", "data.seed", "lr", "weight_decay", "eta_min"])
def test_values_past_what_training_can_hold_are_refused_by_the_check(project: Path, key, value, fragment):
    import yaml
    from conftest import setting
    from test_reliability import tiny
    from test_reliability_round3 import check_refuses
    check_refuses(project, yaml.safe_dump(setting(key, value)(tiny()), sort_keys=False), key, fragment)


def test_a_name_longer_than_100_bytes_in_utf8_is_refused(project: Path):
    """40 CJK characters are 120 bytes: within 100 characters, past what a file name holds."""
    import yaml
    from test_reliability import tiny
    from test_reliability_round3 import check_refuses
    params = tiny()
    params["variants"]["深" * 40] = {"depth": 8}
    check_refuses(project, yaml.safe_dump(params, sort_keys=False, allow_unicode=True), "120 bytes", "at most 100")


TRICKY_YAML = "a: 1:00\nb: yes\nc: no\nd: on\ne: 1e-3\nf: 017\ng: 0o17\nh: ~\ni: .inf\nj: 2.0e-05\n"


def test_params_are_read_as_dvc_reads_them():
    """YAML 1.1 (PyYAML) reads `1:00` as 60 and `yes` as true; DVC's parser (YAML 1.2) as
    strings. The check reads what DVC records, so `-S train.epochs=1:00` is refused, not 60 epochs."""
    from dvc.utils.serialize import parse_yaml
    from gradflow.params import read_yaml
    assert read_yaml(TRICKY_YAML) == parse_yaml(TRICKY_YAML, "params.yaml")
    assert read_yaml(TRICKY_YAML)["a"] == "1:00" and read_yaml(TRICKY_YAML)["b"] == "yes"


@pytest.mark.parametrize("key, text, fragment", [
    ("train.epochs", "1:00", "expected an integer, got '1:00'"),
    ("train.compile", "yes", "got 'yes'"),
    ("train.flip", "no", "expected true or false, got 'no'"),
    ("train.distributed", "on", "got 'on'"),
])
def test_yaml_1_1_spellings_are_refused_as_dvc_records_them(tmp_path: Path, key, text, fragment):
    import yaml
    from conftest import default_params
    from gradflow.params import ParamsError, load
    section, name = key.split(".")
    lines = yaml.safe_dump(default_params(), sort_keys=False).splitlines()
    start = lines.index(f"{section}:")
    at = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {name}:"))
    lines[at] = f"  {name}: {text}"
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamsError) as refused:
        load(tmp_path / "params.yaml")
    assert str(refused.value).startswith(key) and fragment in str(refused.value)


def test_a_huge_bad_value_is_not_echoed_whole():
    from conftest import default_params, merged
    from gradflow.params import ParamsError, parse
    with pytest.raises(ParamsError) as refused:
        parse(merged(default_params(), {"train": {"device": "x" * 200_000}}))
    assert len(str(refused.value)) < 300 and "200,002 characters" in str(refused.value)


@pytest.mark.parametrize("damage", ["16x16 images", "labels past 99", "unequal lengths", "empty split",
                                    "float images"])
def test_a_dataset_whose_manifest_matches_but_content_is_wrong_is_one_line(fetched: Path, damage: str):
    """The file is rewritten and its manifest's md5 updated, as a hand-made dataset would be: the
    train stage refuses it in one line before training, and writes nothing."""
    import json

    import torch

    from gradflow.files import md5sum
    path, manifest = fetched / "data" / "dataset.pt", fetched / "data" / "manifest.json"
    raw = torch.load(path, weights_only=True)
    if damage == "16x16 images":
        raw["train_images"] = raw["train_images"][:, :, :16, :16].contiguous()
    elif damage == "labels past 99":
        raw["val_labels"] = raw["val_labels"] + 100
    elif damage == "unequal lengths":
        raw["train_labels"] = raw["train_labels"][:-1]
    elif damage == "empty split":
        raw["test_images"], raw["test_labels"] = raw["test_images"][:0], raw["test_labels"][:0]
    else:
        raw["train_images"] = raw["train_images"].float()
    torch.save(raw, path)
    info = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**info, "dataset_md5": md5sum(path)}))
    proc = stage("train", "VGG_08", cwd=fetched, check=False)
    one_line(proc, "data/dataset.pt", "dvc repro -f fetch")
    assert not (fetched / "models" / "VGG_08.pt").exists() and not (fetched / "dvclive" / "VGG_08").exists()


def test_damage_inside_a_saved_tensor_is_found_on_load(tmp_path: Path):
    """torch.load reads tensor bytes unchecked: 64 bytes flipped mid-file loaded as other weights
    (a resume went on to 'diverged'). torch_save's digest finds it; the resume checkpoint is then
    set aside and training starts over (gradflow.resume.Checkpoint.load)."""
    import torch

    from gradflow.errors import DataError
    from gradflow.files import torch_load, torch_save
    path = tmp_path / "weights.pt"
    torch_save(path, {"epoch": 1, "model": {"w": torch.arange(300_000, dtype=torch.float32)}})
    assert torch.equal(torch_load(path, "")["model"]["w"], torch.arange(300_000, dtype=torch.float32))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged"):
        torch_load(path, "rerun it")


# --- a user's files where a variant's outputs go -------------------------------------------------

def test_a_new_variant_over_a_users_files_is_refused_and_they_stay(project: Path):
    write_params(project, {"variants": {"VGG_08": {"depth": 8}, "MYNET": {"depth": 8}}})
    (project / "models" / "MYNET").mkdir(parents=True)
    (project / "models" / "MYNET" / "notes.txt").write_text("mine")
    (project / "models" / "MYNET.pt").write_bytes(b"my own weights")
    proc = stage("check", cwd=project, check=False)
    one_line(proc, "variants.MYNET", "models/MYNET/notes.txt", "models/MYNET.pt", "not written by this pipeline")
    assert (project / "models" / "MYNET" / "notes.txt").read_text() == "mine"
    assert (project / "models" / "MYNET.pt").read_bytes() == b"my own weights"


def test_what_a_killed_first_run_left_is_not_refused(project: Path):
    """A snapshot, a killed write's temporary and the live history of a run not in dvc.lock yet
    are the pipeline's: the rerun resumes over them."""
    from gradflow.tables import HISTORY_COLUMNS
    (project / "models" / "VGG_08").mkdir(parents=True)
    (project / "models" / "VGG_08" / "epoch_000.pt").write_bytes(b"x")
    (project / "models" / "VGG_08" / ".epoch_001.pt.abc123.tmp").write_bytes(b"x")
    (project / "plots" / "history").mkdir(parents=True)
    (project / "plots" / "history" / "VGG_08.csv").write_text(",".join(HISTORY_COLUMNS) + "\n")
    stage("check", cwd=project)


def test_a_snapshot_folder_that_is_a_mount_point_is_refused(tmp_path: Path, monkeypatch):
    from gradflow import workspace
    from gradflow.errors import DataError
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "VGG_08").mkdir(parents=True)
    monkeypatch.setattr(workspace.os.path, "ismount", lambda p: Path(p) == Path("models/VGG_08"))
    with pytest.raises(DataError, match="models/VGG_08: a mount point"):
        workspace.require_safe_outputs(["VGG_08"])
    workspace.require_safe_outputs(["VGG_38"])


@pytest.mark.slow
def test_a_dvc_lock_truncated_by_an_interrupted_dvc_is_restored_from_git(project: Path):
    """DVC writes dvc.lock itself; a Ctrl-C during that write can leave it cut short. README's
    advice, `git checkout HEAD -- dvc.lock`, brings back a lock DVC reads."""
    from conftest import DVC, git_init, run
    git_init(project)
    run([DVC, "repro", "check"], cwd=project)
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", "check"], cwd=project)
    lock = project / "dvc.lock"
    text = lock.read_text()
    lock.write_text(text[:text.index("deps:") + 2])  # cut inside a key, as a killed write leaves it
    broken = run([DVC, "repro", "check"], cwd=project, check=False)
    assert broken.returncode != 0 and "dvc.lock" in broken.stderr
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "git checkout HEAD -- dvc.lock" in readme
    run(["git", "checkout", "HEAD", "--", "dvc.lock"], cwd=project)
    assert run([DVC, "repro", "check"], cwd=project).returncode == 0


def test_a_refusal_under_dvc_says_its_outputs_were_removed_and_how_to_restore_them(project: Path):
    """DVC removes a stage's outputs before its command runs (DVC_STAGE names the stage): the
    refusal of a bad input says so, and gives the command that brings back the recorded ones."""
    from conftest import run, PYTHON
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "config").mkdir(exist_ok=True)
    (project / "data" / "config" / "VGG_08.json").write_text("{not json")
    proc = run([PYTHON, "-m", "stages.train", "VGG_08", "--config", "data/config/VGG_08.json"], cwd=project,
               check=False, extra_env={"DVC_STAGE": "train@VGG_08"})
    one_line(proc, "data/config/VGG_08.json", "DVC removed train@VGG_08's outputs before it ran",
             "`dvc checkout train@VGG_08`")
    alone = run([PYTHON, "-m", "stages.train", "VGG_08", "--config", "data/config/VGG_08.json"], cwd=project,
                check=False)
    assert "dvc checkout" not in one_line(alone, "data/config/VGG_08.json")


@pytest.mark.parametrize("key", ["data.synthetic_test_size", "data.synthetic_train_size"])
def test_a_dataset_too_big_for_memory_is_refused_by_the_check(project: Path, key):
    """10^8 synthetic images are 286 GiB as uint8: the check refuses them before DVC deletes
    data/dataset.pt, instead of the fetch stage failing to allocate them."""
    import yaml
    from conftest import setting
    from test_reliability import tiny
    from test_reliability_round3 import check_refuses
    check_refuses(project, yaml.safe_dump(setting(key, 10**8)(tiny()), sort_keys=False), key,
                  "the fetch stage would need at least")


@pytest.mark.parametrize("switches", [{}, {"batch_norm": True, "residual": True}, {"dense": True},
                                      {"deep_supervision": True}, {"residual": True, "residual_reduction": True},
                                      {"init": "kaiming"}])
@pytest.mark.parametrize("depth", [8, 14, 98])
def test_the_quick_memory_bound_is_never_below_the_exact_count(switches, depth):
    """The check skips the exact (forward) count where the bound fits; so the bound must hold."""
    from gradflow.memory import activation_bound, model_sizes
    from gradflow.params import ModelParams, ParamsError, Variant, depth_error
    for model in (ModelParams(filters=32, stages=3), ModelParams(filters=4, stages=2)):
        try:
            depth_error(depth, model.stages, "depth")
        except ParamsError:
            continue  # 8 has no 2-stage form
        v = Variant(depth=depth, **switches)
        assert activation_bound(v, model) >= model_sizes(v, model)[1]


def test_a_stage_that_fails_on_a_bug_ends_with_its_traceback_and_no_shutdown_noise(fetched: Path):
    """An unexpected error (a bug: here `fit` raising, after DVCLive started) prints its
    traceback, exit 1, and nothing after it: the stage exits without the interpreter's teardown,
    where libraries print "Exception ignored ..." lines (gradflow.cli)."""
    code = ("import sys, stages.train as s\n"
            "def boom(*args, **kwargs): raise RuntimeError('a bug')\n"
            "s.fit = boom\n"
            "sys.argv = ['stages.train', 'VGG_08']\n"
            "s.main()\n"
            "print('not reached')\n")
    proc = run([PYTHON, "-c", code], cwd=fetched, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("Traceback") and lines[-1] == "RuntimeError: a bug", proc.stderr
    assert "Exception ignored" not in proc.stderr and "not reached" not in proc.stdout
