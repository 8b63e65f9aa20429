"""Reliability round three: outputs on another filesystem, a full disk, an immutable
folder, Ctrl-C and SIGTERM, the tables the plots stage reads, more params and arguments, a
user's set-aside archive, and params.yaml changed under a running experiment.

Each case: one line naming the culprit and what to do, the conventional non-zero exit (2 for
bad input, 130 / 143 for SIGINT / SIGTERM), no traceback, nothing lost. The filesystem cases
use a real second filesystem (a tmpfs, which needs root: skipped elsewhere, saying so); the
signal cases send real signals to a real `dvc repro`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import (DVC, PYTHON, copy_project, git_init, kill_after_epoch, project_params, run, setting, stage,
                      write_params)
from test_reliability import files, make_read_only, make_writable, one_line, tiny, trained_project

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A project copy after fetch, one epoch of train@VGG_08 (snapshots 0 and 1), its gradients."""
    return trained_project(tmp_path_factory.mktemp("round3") / "base", "gradients")


@pytest.fixture
def copy(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "copy", ignore=shutil.ignore_patterns("__pycache__")))


@pytest.fixture
def tmpfs():
    """mount(path, size): a tmpfs on path (made if missing), unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a second filesystem (a tmpfs)")
    mounted = []

    def mount(path: Path, size: str = "50m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def stray_temporaries(*folders: Path) -> list[str]:
    """Temporary files of the atomic writes left in these folders (or a .tmp/ in them)."""
    return [str(p) for folder in folders for p in folder.rglob("*")
            if p.name.endswith(".tmp") or ".tmp" in p.parts[len(folder.parts):]]


# --- filesystems -----------------------------------------------------------------------------

def test_outputs_on_another_filesystem_train_and_leave_no_temporary(copy, tmpfs):
    """models/VGG_08 and models/.resume on their own mounts: the temporaries of the atomic
    writes cannot be renamed from .tmp/ across filesystems, so they go on the target's disk."""
    workdir, resume = tmpfs(copy / "models" / "VGG_08"), tmpfs(copy / "models" / ".resume")
    proc = stage("train", "VGG_08", cwd=copy)
    assert "Traceback" not in proc.stderr and "cross-device" not in proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["epoch_000.pt", "epoch_001.pt"]
    assert list(resume.iterdir()) == []  # the run completed: no checkpoint, no temporary
    assert stray_temporaries(workdir, resume, copy / "models") == []
    assert (copy / "metrics" / "VGG_08.json").is_file()


def test_a_symlinked_models_folder_on_another_filesystem(copy, tmpfs, tmp_path):
    """models/ a symlink to a data disk: the temporaries go to models/.tmp/ there, outside
    every DVC output (models/VGG_08/ stays clean even after a kill, by construction)."""
    disk = tmpfs(tmp_path / "disk")
    shutil.copytree(copy / "models", disk / "models")
    shutil.rmtree(copy / "models")
    (copy / "models").symlink_to(disk / "models")
    proc = stage("train", "VGG_08", cwd=copy)
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (disk / "models" / "VGG_08").iterdir()) == ["epoch_000.pt", "epoch_001.pt"]
    assert stray_temporaries(disk / "models" / "VGG_08") == []
    assert list((disk / "models" / ".tmp").iterdir()) == []


def test_a_bind_mount_rename_falls_back_beside_the_target(tmp_path, tmpfs, monkeypatch):
    """A bind mount shares its device number with the project's disk, yet a rename into it
    fails with EXDEV: the write falls back to a temporary beside the target."""
    from gradflow.files import write_text
    project, elsewhere = tmp_path / "p", tmp_path / "elsewhere"
    (project / "out").mkdir(parents=True)
    elsewhere.mkdir()
    tmpfs(tmp_path / "dummy", "1m")  # skips unless root (and mounts work)
    if subprocess.run(["mount", "--bind", str(elsewhere), str(project / "out")]).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        monkeypatch.chdir(project)
        write_text(Path("out") / "a.txt", "hello\n")
        assert (elsewhere / "a.txt").read_text() == "hello\n"
        assert stray_temporaries(elsewhere, project / ".tmp") == []
    finally:
        subprocess.run(["umount", "-l", str(project / "out")])


def test_a_full_disk_is_one_line_naming_it_and_keeps_the_earlier_snapshots(copy, tmpfs):
    workdir = copy / "models" / "VGG_08"
    earlier = {p.name: p.read_bytes() for p in workdir.iterdir()}
    assert set(earlier) == {"epoch_000.pt", "epoch_001.pt"}
    tmpfs(workdir, "100k")
    for name, data in earlier.items():
        (workdir / name).write_bytes(data)
    fd = os.open(workdir / "filler", os.O_WRONLY | os.O_CREAT)  # the rest of the disk: another's files
    try:
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    proc = stage("train", "VGG_08", cwd=copy, check=False)
    line = one_line(proc, "models/VGG_08/epoch_000.pt", "no space left on", str(workdir), "free some space")
    assert "writable" not in line and "chmod" not in line
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.name != "filler"} == earlier
    assert stray_temporaries(workdir) == []


def test_a_full_disk_after_a_point_says_the_curves_hold_this_run(copy, tmpfs):
    """Room for the first snapshot, not the second: the epoch's point was written (the curves
    now hold this run), so the line says so rather than only "what was there is kept"."""
    workdir = copy / "models" / "VGG_08"
    size = (workdir / "epoch_000.pt").stat().st_size
    for path in workdir.iterdir():
        path.unlink()
    tmpfs(workdir, f"{size * 3 // 2 // 1024 + 4}k")  # epoch_000.pt fits, epoch_001.pt not beside it
    proc = stage("train", "VGG_08", cwd=copy, check=False)
    line = one_line(proc, "models/VGG_08/epoch_001.pt", "no space left on", notes="train: VGG_08 epoch")
    assert ("plots/history/VGG_08.csv and dvclive/VGG_08/metrics.json hold this run's points up to "
            in line), line


def test_an_immutable_models_folder_is_one_line_before_training(copy):
    models = copy / "models"
    before = files(copy)
    make_read_only(models)  # chattr +i as root
    try:
        proc = stage("train", "VGG_08", cwd=copy, check=False)
    finally:
        make_writable(models)
    one_line(proc, "models: cannot write there", "chattr -i models")
    assert "epoch 1/1" not in proc.stderr  # refused before training, not after it
    assert files(copy) == before


def test_an_immutable_output_file_is_one_line_before_training(copy):
    """metrics/VGG_08.json made immutable (chattr +i: not even root replaces it) is found
    before training, not when the trained run comes to write it."""
    metrics = copy / "metrics" / "VGG_08.json"
    before = files(copy)
    if subprocess.run(["chattr", "+i", str(metrics)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root (CAP_LINUX_IMMUTABLE) and an ext4/xfs/btrfs/tmpfs disk")
    try:
        proc = stage("train", "VGG_08", cwd=copy, check=False)
    finally:
        subprocess.run(["chattr", "-i", str(metrics)], capture_output=True)
    one_line(proc, "metrics/VGG_08.json: cannot replace it (the file is immutable)",
             "chattr -i metrics/VGG_08.json")
    assert "epoch 1/1" not in proc.stderr
    assert files(copy) == before


# --- signals ---------------------------------------------------------------------------------

@pytest.fixture
def repro_project(tmp_path) -> Path:
    """A git + DVC project whose train@VGG_08 takes 3 epochs of a second or two each."""
    project = copy_project(tmp_path / "project")
    write_params(project, {"data": {"synthetic_train_size": 2200}, "model": {"filters": 8},
                           "train": {"epochs": 3}, "variants": {"VGG_08": {"depth": 8}},
                           "sweep": {"depths": [8], "fixes": ["none"], "epochs": 1}})
    git_init(project)
    return project


def default_sigint() -> None:
    """Ctrl-C's default in the child: a shell's background job (`cmd &` without job control)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so the
    signal would do nothing (seen: .ci/run started with `&`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_repro(project: Path, signum: int) -> tuple[int, str, int]:
    """Start `dvc repro`, send `signum` to its process group (as Ctrl-C or `kill -- -PGID`
    does) in the train stage's second epoch; (dvc's exit code, its output, the epoch the
    checkpoint held)."""
    # dvc runs a stage's cmd as `$SHELL -c cmd`, /bin/sh when SHELL is unset (as in CI). Debian's
    # /bin/sh is dash, which on SIGINT waits for its child and then kills itself with SIGINT
    # whatever the child returned, so dvc reports "exited with -2" there; bash passes the stage's
    # own 130 on. Pin bash, a user's usual shell, so the code dvc reports is the stage's.
    env = {**os.environ, "PYTHONPATH": str(project), "DVC_NO_ANALYTICS": "1", "SHELL": shutil.which("bash"),
           "PATH": f"{Path(DVC).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ckpt = project / "models" / ".resume" / "VGG_08.pt"
    proc = subprocess.Popen([DVC, "repro", "train@VGG_08"], cwd=project, env=env, start_new_session=True,
                            preexec_fn=default_sigint,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def send():
        time.sleep(0.3)  # into the next epoch: mid-epoch
        os.killpg(proc.pid, signum)
    held = kill_after_epoch(proc, ckpt, 1, 180, kill=send)
    output = proc.stdout.read()
    return proc.returncode, output, held


# Ctrl-C through dvc, the user's case. SIGTERM reaches the stage the same way (the stage-level
# test below checks its line, exit code and checkpoint; the resume is the same code).
@pytest.mark.slow
def test_an_interrupted_dvc_repro_says_so_in_one_line_and_resumes(repro_project):
    signum, code = signal.SIGINT, 130
    rc, output, held = interrupt_repro(repro_project, signum)
    assert rc != 0
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    name = signal.Signals(signum).name
    lines = [line for line in output.splitlines() if "interrupted" in line]
    assert lines and lines[0] == (f"train: VGG_08: interrupted ({name}) after epoch {held} of 3; "
                                  f"rerun to resume (from models/.resume/VGG_08.pt)"), output[-3000:]
    # dvc ignores Ctrl-C while a stage runs, reports the stage's exit code, and exits 255 (README)
    assert f"exited with {code}" in output or f"code {code}" in output, output[-3000:]
    assert rc == 255
    again = run([DVC, "repro", "train@VGG_08"], cwd=repro_project)
    out = again.stdout + again.stderr
    assert f"resuming after epoch {held}" in out and "VGG_08 epoch 3/3" in out, out[-3000:]
    assert not (repro_project / "models" / ".resume" / "VGG_08.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum, shell", [(signal.SIGTERM, "bash"), (signal.SIGKILL, None)],
                         ids=["SIGTERM-bash", "SIGKILL-sh"])
def test_the_stage_dies_with_the_dvc_that_started_it(repro_project, signum, shell):
    """`kill <dvc pid>` or `timeout` signal dvc alone: its stage must not train on as an orphan
    that writes outputs no dvc.lock records. dvc runs the stage through $SHELL: bash execs it (dvc
    is its parent), /bin/sh without SHELL (CI) forks it (a shell stands between)."""
    env = {**os.environ, "PYTHONPATH": str(repro_project), "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(DVC).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SHELL", None)
    if shell:
        env["SHELL"] = shutil.which(shell)
    proc = subprocess.Popen([DVC, "repro", "train@VGG_08"], cwd=repro_project, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children = []

    def kill_dvc_alone():
        children.extend(int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                           text=True).stdout.split())
        os.kill(proc.pid, signum)
    kill_after_epoch(proc, repro_project / "models" / ".resume" / "VGG_08.pt", 1, 180, kill=kill_dvc_alone)
    assert children, "no stage process under dvc"
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
              for pid in children):
        assert time.monotonic() < deadline, "the stage outlived dvc by 30 s"
        time.sleep(0.1)
    assert not (repro_project / "metrics" / "VGG_08.json").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_train_stage_exits_with_the_conventional_code(copy, signum, code):
    """The stage alone: exit 128 + signal, one line, the checkpoint consistent (loadable)."""
    import torch
    write_params(copy, base=setting("train.epochs", 3)(setting("data.synthetic_train_size", 2200)(tiny())))
    stage("fetch", cwd=copy)
    env = {**os.environ, "PYTHONPATH": str(copy)}
    ckpt = copy / "models" / ".resume" / "VGG_08.pt"
    proc = subprocess.Popen([PYTHON, "-m", "stages.train", "VGG_08"], cwd=copy, env=env, preexec_fn=default_sigint,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    held = kill_after_epoch(proc, ckpt, 1, 180, kill=lambda: (time.sleep(0.2), proc.send_signal(signum)))
    err = proc.stderr.read()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"train: VGG_08: interrupted ({signal.Signals(signum).name}) "
                                                  f"after epoch {held} of 3; rerun to resume"), err
    assert torch.load(ckpt, weights_only=True)["epoch"] == held
    assert stray_temporaries(copy / ".tmp", copy / "models") == []


# --- the plots stage checks what it reads ------------------------------------------------------

def truncate_to(rel: str, size: int):
    def damage(project: Path) -> None:
        data = (project / rel).read_bytes()
        assert len(data) > size
        (project / rel).write_bytes(data[:size])
    return damage


PLOTS_INPUTS = {
    "metrics-foreign-keys": (lambda p: (p / "metrics/VGG_08.json").write_text('{"a": 1}\n'),
                             ["metrics/VGG_08.json", "'verdict'", "dvc repro -f train@VGG_08"]),
    "metrics-verdict-number": (lambda p: (p / "metrics/VGG_08.json").write_text(json.dumps(
        {**json.loads((p / "metrics/VGG_08.json").read_text()), "verdict": 3})),
        ["metrics/VGG_08.json", "verdict is 3", "train@VGG_08"]),
    "history-empty": (lambda p: (p / "plots/history/VGG_08.csv").write_bytes(b""),
                      ["plots/history/VGG_08.csv", "empty", "dvc repro -f train@VGG_08"]),
    "grad-flow-truncated": (truncate_to("plots/grad_flow/VGG_08.csv", 100),
                            ["plots/grad_flow/VGG_08.csv", "truncated", "dvc repro -f gradients@VGG_08"]),
    "grad-capture-foreign": (lambda p: (p / "plots/grad_capture/VGG_08.csv").write_bytes(
        (p / "plots/history/VGG_08.csv").read_bytes()),
        ["plots/grad_capture/VGG_08.csv", "columns", "train@VGG_08"]),
    "history-other-variant": (lambda p: (p / "plots/history/VGG_08.csv").write_text(
        (p / "plots/history/VGG_08.csv").read_text().replace("VGG_08,", "VGG_38,")),
        ["plots/history/VGG_08.csv", "'VGG_38'", "train@VGG_08"]),
    "sweep-point-foreign": (lambda p: ((p / "metrics/sweep").mkdir(exist_ok=True),
                                       (p / "metrics/sweep/8-none.json").write_text('{"depth": 8}')),
                            ["metrics/sweep/8-none.json", "'fix'", "sweep@8-none"]),
}


@pytest.mark.parametrize("case", list(PLOTS_INPUTS))
def test_the_plots_stage_refuses_a_damaged_input_in_one_line(copy, case):
    damage, fragments = PLOTS_INPUTS[case]
    damage(copy)
    proc = stage("plots", cwd=copy, check=False)
    one_line(proc, *fragments, notes="plots: ")
    assert not (copy / "plots" / "results.md").exists()  # nothing drawn from it


def test_the_plots_stage_still_draws_the_undamaged_base(copy):
    """The refusals above come from the damage, not from the base tables."""
    proc = stage("plots", cwd=copy)
    assert "1 of 2 variants" in proc.stderr and (copy / "plots" / "results.md").is_file()


# --- params and arguments ----------------------------------------------------------------------

def test_probe_size_zero_is_refused_not_replaced(copy):
    one_line(stage("gradients", "VGG_08", "--probe-size", "0", cwd=copy, check=False),
             "--probe-size", "must be >= 1", "got 0")


def test_a_snapshot_of_another_variant_is_one_line_with_a_remedy(copy):
    import torch
    from gradflow import params as P
    from gradflow.model import VGG
    cfg = P.parse(yaml.safe_load((copy / "params.yaml").read_text())).run("VGG_08")
    other = VGG(P.Variant(depth=14), cfg.model)
    torch.save({"epoch": 1, "model": other.state_dict()}, copy / "models/VGG_08/epoch_001.pt")
    line = one_line(stage("gradients", "VGG_08", cwd=copy, check=False), "models/VGG_08/epoch_001.pt",
                    "not a snapshot of variant VGG_08", "dvc repro -f train@VGG_08")
    assert "Unexpected key" not in line and len(line) < 400


def test_a_config_folder_is_one_line(copy):
    (copy / "data" / "config").mkdir(parents=True, exist_ok=True)
    one_line(stage("train", "VGG_08", "--config", "data/config", cwd=copy, check=False),
             "data/config", "not a resolved config", "dvc repro check")


@pytest.mark.parametrize("args, fragment", [
    (("train", "VGG_08"), "the config of 'VGG_38', not of 'VGG_08'"),
    (("gradients", "VGG_08", "--probe-size", "10"), "the config of 'VGG_38', not of 'VGG_08'"),
    (("sweep", "8", "none"), "the config of sweep point 'VGG_38', not of '8-none'"),
])
def test_the_config_of_another_run_is_one_line_before_any_work(project, args, fragment):
    """Every stage that takes --config refuses another run's resolved config the same way
    (gradflow.cli.stage_run), before it reads the data: none is fetched here."""
    stage("check", cwd=project)
    before = files(project)
    one_line(stage(*args, "--config", "data/config/VGG_38.json", cwd=project, check=False),
             "data/config/VGG_38.json", fragment)
    assert files(project) == before


def test_a_manifest_with_an_unknown_source_is_one_line(copy):
    manifest = copy / "data" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "source": "x"}))
    one_line(stage("train", "VGG_08", cwd=copy, check=False), "data/manifest.json", "'x'",
             "dvc repro -f fetch")


def check_refuses(project: Path, text: str, *fragments: str) -> str:
    """params.yaml = text: the check stage refuses in one line, and writes or deletes nothing."""
    (project / "params.yaml").write_text(text)
    before = files(project)
    line = one_line(stage("check", cwd=project, check=False), *fragments)
    assert files(project) == before
    return line


def test_a_run_too_big_for_memory_is_refused_by_the_check(project):
    """-S model.filters=100000: about 9,500 GiB, refused naming the key (it used to pass the
    check, and training tracebacked allocating 360 GB after DVC had deleted the outputs)."""
    line = check_refuses(project, yaml.safe_dump(setting("model.filters", 100_000)(tiny()), sort_keys=False),
                         "model.filters", "GiB", "lower model.filters")
    assert line.startswith("error: model.filters: ")


def test_the_memory_estimate_passes_the_shipped_params():
    """The refusal is for what cannot fit: the default params.yaml passes on a CPU with 8 GiB."""
    import dataclasses
    from gradflow import memory
    from gradflow import params as P
    params = P.load(ROOT / "params.yaml")
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, device="cpu"))
    real = memory.memory_of
    memory.memory_of = lambda device, need: (8 << 30, "an 8 GiB machine")
    try:
        memory.require_fits(params)
    finally:
        memory.memory_of = real


@pytest.mark.parametrize("switches", [{}, {"batch_norm": True, "residual": True}, {"dense": True},
                                      {"deep_supervision": True}])
def test_the_memory_estimate_counts_the_built_network(switches):
    """model_sizes counts, on the meta device, what a real training forward keeps: the same
    parameters, and a per-image share of the saved tensors' storage that never exceeds the
    real one's (a lower bound: the refusal is only for what cannot fit)."""
    import torch
    from gradflow import memory
    from gradflow import params as P
    from gradflow.model import VGG
    variant, model, batch = P.Variant(depth=14, **switches), P.ModelParams(filters=8, stages=2), 4
    n_params, acts = memory.model_sizes(variant, model)
    net = VGG(variant, model).train()
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.zeros(batch, 3, 32, 32))
    assert n_params == sum(p.numel() for p in net.parameters())
    kept = sum(storages.values())
    assert batch * acts * memory.BYTES <= kept < 1.05 * batch * acts * memory.BYTES


def test_a_250_character_variant_name_is_one_line(project):
    params = tiny()
    params["variants"]["V" * 250] = {"depth": 8}
    check_refuses(project, yaml.safe_dump(params, sort_keys=False), "variants.VVVV", "250 bytes", "at most 100")


def test_a_duplicate_key_is_refused_by_the_projects_own_loader(project):
    text = yaml.safe_dump(tiny(), sort_keys=False).replace("  batch_size: 100\n",
                                                           "  batch_size: 100\n  batch_size: 50\n", 1)
    assert text.count("batch_size: ") >= 2
    check_refuses(project, text, "train.batch_size", "given twice", "keep one")


# --- user files --------------------------------------------------------------------------------

def test_a_second_bad_archive_never_overwrites_the_first_set_aside(project, monkeypatch, capsys):
    import stages.fetch
    from gradflow.errors import DataError
    monkeypatch.chdir(project)
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "cifar-100-python.tar.gz.corrupt").write_bytes(b"the user's earlier copy")
    (raw / "cifar-100-python.tar.gz").write_bytes(b"a new bad archive")

    def offline():
        raise DataError("cannot download CIFAR-100 (offline)")
    monkeypatch.setattr(stages.fetch, "download_cifar100", offline)
    with pytest.raises(DataError, match="offline"):
        stages.fetch.cifar100_source(project_params({"data": {"source": "cifar100", "val_size": 20}}).data)
    assert (raw / "cifar-100-python.tar.gz.corrupt").read_bytes() == b"the user's earlier copy"
    assert (raw / "cifar-100-python.tar.gz.corrupt.1").read_bytes() == b"a new bad archive"
    assert "moved it to data/raw/cifar-100-python.tar.gz.corrupt.1" in capsys.readouterr().err


def test_a_second_damaged_checkpoint_keeps_the_first_set_aside(tmp_path, capsys):
    from gradflow.resume import Checkpoint
    path = tmp_path / "VGG_08.pt"
    (tmp_path / "VGG_08.pt.corrupt").write_bytes(b"first")
    path.write_bytes(b"second")
    assert Checkpoint(path, {}).load() is None
    assert (tmp_path / "VGG_08.pt.corrupt").read_bytes() == b"first"
    assert (tmp_path / "VGG_08.pt.corrupt.1").read_bytes() == b"second"
    assert f"moved it to {tmp_path / 'VGG_08.pt.corrupt.1'}" in capsys.readouterr().err


# --- params.yaml changed under a running experiment ----------------------------------------------

def test_params_changed_while_training_writes_no_outputs_and_says_so(copy):
    """What a second `dvc exp run -S train.lr=0.003` in the same workspace does to a running one
    (DVC writes -S into params.yaml before it takes its lock): the running train stage sees that
    params.yaml no longer resolves to the config it trained with and writes no outputs, so no
    experiment records the other run's params with these outputs."""
    write_params(copy, base=setting("train.epochs", 3)(setting("data.synthetic_train_size", 2200)(tiny())))
    stage("fetch", cwd=copy)
    stage("check", cwd=copy)
    before = {rel: (copy / rel).read_bytes() for rel in ("models/VGG_08.pt", "metrics/VGG_08.json")}
    env = {**os.environ, "PYTHONPATH": str(copy)}
    proc = subprocess.Popen([PYTHON, "-m", "stages.train", "VGG_08", "--config", "data/config/VGG_08.json"],
                            cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = copy / "models" / ".resume" / "VGG_08.pt"
    kill_after_epoch(proc, ckpt, 1, 180, kill=lambda: write_params(
        copy, base=setting("train.lr", 0.003)(setting("train.epochs", 3)(setting("data.synthetic_train_size", 2200)(tiny())))))
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.read())
    one_line(result, "params.yaml changed while train@VGG_08 ran", "train.lr: 0.001 -> 0.003",
             "dvc queue start", "it stopped before writing its point at", notes="train: ")
    assert {rel: (copy / rel).read_bytes() for rel in before} == before  # the earlier outputs, untouched
    # stopped at the first point after the change: no third epoch, the curves end before it
    assert "epoch 3/3" not in result.stderr
    assert "\nVGG_08,3," not in (copy / "plots" / "history" / "VGG_08.csv").read_text()
    assert ckpt.is_file()  # the trained epochs are kept


def test_params_touched_but_resolving_the_same_passes_and_a_change_is_named(project, monkeypatch):
    """The guard compares resolved configs, not bytes: a touch or a comment passes; it rereads
    params.yaml only when its stat differs from what the check stage recorded."""
    from gradflow import params as P
    monkeypatch.chdir(project)
    stage("check", cwd=project)
    stamp = P.checked_stamp()
    assert stamp == P.params_stamp()  # recorded by the check, equal to the file's now
    cfg = P.load_resolved("data/config/VGG_08.json")
    P.require_unchanged("data/config/VGG_08.json", cfg, "train@VGG_08", stamp)
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "# a comment\n")
    assert P.params_stamp() != stamp
    P.require_unchanged("data/config/VGG_08.json", cfg, "train@VGG_08", stamp)
    write_params(project, base=setting("model.filters", 16)(tiny()))
    with pytest.raises(P.ParamsError, match=rf"model\.filters: {cfg.model.filters} -> 16"):
        P.require_unchanged("data/config/VGG_08.json", cfg, "train@VGG_08", stamp)
