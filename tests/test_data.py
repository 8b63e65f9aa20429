"""Data sources and the dataset file: the CIFAR-100 archive reader on a small
archive in the official format, the fetch stage's md5 handling without a network, the seeded
synthetic source, the train / validation split, the limits, the manifest check, and the batched
augmentation."""

from __future__ import annotations

import json
import pickle
import urllib.error
import urllib.request

import pytest
import torch

import stages.fetch
from cifar_archive import write_cifar100_archive
from conftest import project_params, stage, write_params
from gradflow.data import (CIFAR100_FILENAME, CIFAR100_URL, DataError, Augment, build_dataset, load_dataset,
                         read_cifar100_archive, synthetic)
from gradflow.files import md5sum

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_cifar100_archive(tmp_path_factory.mktemp("cifar") / CIFAR100_FILENAME)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything is unpickled: a bad archive must be refused before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle.load was called on an archive that should have been refused")
    monkeypatch.setattr(pickle, "load", refuse)


# --- the CIFAR-100 archive ------------------------------------------------------------------

def test_archive_reader_returns_images_labels_and_classes(archive):
    train_x, train_y, test_x, test_y, classes = read_cifar100_archive(archive.path, archive.md5)
    assert train_x.dtype == torch.uint8 and train_x.shape == (100, 3, 32, 32)
    assert test_x.shape == (40, 3, 32, 32)
    assert train_y.dtype == torch.int64
    # Pixels land in (channel, row, column) exactly as written: R, G, B planes, row-major.
    assert torch.equal(train_x, torch.from_numpy(archive.train_images))
    assert torch.equal(test_x, torch.from_numpy(archive.test_images))
    assert train_y.tolist() == archive.train_labels and test_y.tolist() == archive.test_labels
    assert classes == archive.classes and len(classes) == 100


def test_archive_with_wrong_md5_is_refused_before_unpickling(archive, no_unpickling):
    with pytest.raises(DataError, match=str(archive.path)) as e:
        read_cifar100_archive(archive.path, "0" * 32)
    assert "md5" in str(e.value)


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_damaged_archive_is_refused_before_unpickling(archive, tmp_path, damage, no_unpickling):
    raw = archive.path.read_bytes()
    middle = len(raw) // 2
    bad = (raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64]) + raw[middle + 64:]
           if damage == "flipped" else raw[:middle])
    path = tmp_path / CIFAR100_FILENAME
    path.write_bytes(bad)
    with pytest.raises(DataError, match=str(path)):
        read_cifar100_archive(path, archive.md5)  # the good archive's md5, as in the stage


@pytest.mark.parametrize("damage", ["flipped", "truncated", "not gzip"])
def test_damaged_archive_with_matching_md5_is_still_a_data_error(archive, tmp_path, damage):
    """Even if the md5 were right, a damaged file is a DataError naming it, not a traceback."""
    raw = archive.path.read_bytes()
    middle = len(raw) // 2
    bad = {"flipped": raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64]) + raw[middle + 64:],
           "truncated": raw[:middle], "not gzip": b"<html>404</html>"}[damage]
    path = tmp_path / CIFAR100_FILENAME
    path.write_bytes(bad)
    with pytest.raises(DataError, match=str(path)):
        read_cifar100_archive(path, md5sum(path))


def test_missing_archive_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_cifar100_archive(tmp_path / CIFAR100_FILENAME)


# --- the fetch stage with CIFAR-100 -----------------------------------------------------------

@pytest.mark.slow
def test_fetch_removes_a_wrong_md5_archive_and_fails_offline_with_one_line(project, archive, monkeypatch):
    """The test archive cannot match the real md5: fetch must delete it, try to download,
    fail fast (a proxy that refuses connections stands in for no network) and say what to do."""
    write_params(project, {"data": {"source": "cifar100", "val_size": 20}})
    raw = project / "data" / "raw" / CIFAR100_FILENAME
    raw.parent.mkdir(parents=True)
    raw.write_bytes(archive.path.read_bytes())
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    proc = stage("fetch", cwd=project, check=False)
    assert proc.returncode == 2, proc.stderr
    assert not raw.exists(), "the archive that failed its md5 check is still there"
    assert not (project / "data" / "dataset.pt").exists()
    assert not (project / "data" / "manifest.json").exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().splitlines()[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"data/raw/{CIFAR100_FILENAME}" in errors[0]
    assert "data.source=synthetic" in errors[0]
    assert "failed its md5 check" in proc.stderr  # the removal is announced


def test_fetch_reads_a_placed_archive_into_the_dataset_file(project, archive, monkeypatch):
    """The happy path, in-process: the stage trusts the md5 constant, so point it at ours."""
    monkeypatch.chdir(project)
    write_params(project, {"data": {"source": "cifar100", "val_size": 20}})
    raw = project / "data" / "raw" / CIFAR100_FILENAME
    raw.parent.mkdir(parents=True)
    raw.write_bytes(archive.path.read_bytes())
    monkeypatch.setattr(stages.fetch, "CIFAR100_MD5", archive.md5)

    def no_download():
        raise AssertionError("fetch tried to download although the archive is in place")
    monkeypatch.setattr(stages.fetch, "download_cifar100", no_download)
    stages.fetch.main([])

    manifest = json.loads((project / "data" / "manifest.json").read_text())
    assert manifest["source"] == "cifar100"
    assert manifest["sizes"] == {"train": 80, "val": 20, "test": 40}
    assert manifest["num_classes"] == 100
    assert manifest["archive_md5"] == archive.md5
    assert manifest["dataset_md5"] == md5sum(project / "data" / "dataset.pt")
    assert raw.exists(), "a good archive is kept"

    data = load_dataset(project_params({"data": {"source": "cifar100", "val_size": 20}}).data)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 40)
    assert data.classes == archive.classes
    assert torch.equal(data.test.images, torch.from_numpy(archive.test_images))
    # train + val are the archive's training images, each exactly once, labels attached.
    images = torch.cat([data.train.images, data.val.images]).flatten(1)
    labels = torch.cat([data.train.labels, data.val.labels])
    original = torch.from_numpy(archive.train_images).flatten(1)
    order = [next(j for j in range(len(original)) if torch.equal(original[j], img)) for img in images]
    assert sorted(order) == list(range(100))
    assert labels.tolist() == [archive.train_labels[j] for j in order]


# --- fetch --available: the quick start's "CIFAR-100 or synthetic?" ------------------------------

def available(monkeypatch, capsys, urlopen) -> tuple[int, str]:
    """`python -m stages.fetch --available` in-process, with urllib's urlopen replaced."""
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(SystemExit) as exit_:
        stages.fetch.main(["--available"])
    return exit_.value.code, capsys.readouterr().err


def no_network(request, timeout=None):
    raise urllib.error.URLError(OSError(101, "Network is unreachable"))


def test_available_with_the_archive_in_place_asks_no_network(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: --available needs none
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / CIFAR100_FILENAME).write_bytes(b"any archive")

    def urlopen(*args, **kwargs):
        raise AssertionError("--available went to the network although the archive is here")
    code, err = available(monkeypatch, capsys, urlopen)
    assert code == 0 and err == ""


def test_available_without_archive_or_network_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = available(monkeypatch, capsys, no_network)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("CIFAR-100 cannot be downloaded here (")
    assert "Network is unreachable" in lines[0] and "synthetic" in lines[0]
    assert not (tmp_path / "data").exists()  # it only asks; it writes nothing


def test_available_without_archive_asks_the_dataset_url(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    asked = []

    class Answer:
        def close(self):
            asked.append("closed")

    def urlopen(request, timeout=None):
        asked.append((request.get_method(), request.full_url, timeout))
        return Answer()
    code, err = available(monkeypatch, capsys, urlopen)
    assert code == 0 and err == ""
    assert asked[0][:2] == ("HEAD", CIFAR100_URL) and 0 < asked[0][2] <= 30  # no long wait
    assert asked[1] == "closed"


def test_available_treats_a_timeout_like_no_network(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def timeout(request, timeout=None):
        raise TimeoutError("timed out")
    code, err = available(monkeypatch, capsys, timeout)
    assert code == 1 and "timed out" in err and len(err.strip().splitlines()) == 1


# --- the synthetic source -----------------------------------------------------------------------

def test_synthetic_is_deterministic_for_a_seed_and_differs_across_seeds_and_streams():
    x, y = synthetic(300, seed=0, stream=0)
    assert x.dtype == torch.uint8 and x.shape == (300, 3, 32, 32) and y.dtype == torch.int64
    x2, y2 = synthetic(300, seed=0, stream=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = synthetic(300, seed=1, stream=0)
    assert not torch.equal(x, x3) and not torch.equal(y, y3)
    x4, _ = synthetic(300, seed=0, stream=1)  # the test images of the same seed
    assert not torch.equal(x, x4)
    assert 0 < x.float().mean() < 255 and x.float().std() > 20  # not blank, not saturated


def test_synthetic_labels_cover_the_classes():
    _, y = synthetic(2000, seed=0, stream=0)
    assert y.min() >= 0 and y.max() <= 99
    assert len(y.unique()) >= 95


def test_synthetic_classes_are_distinguishable():
    """Held-out images are nearer their class's mean training image than chance (0.01) allows:
    the source carries a signal a network can learn (measured: 0.119 with 10,000 training
    images), though the moving objects and random backgrounds keep a template far from enough."""
    x, y = synthetic(10_000, seed=0, stream=0)
    means = torch.stack([x[y == c].float().flatten(1).mean(0) for c in range(100)])
    held_x, held_y = synthetic(1000, seed=0, stream=1)
    nearest = torch.cdist(held_x.float().flatten(1), means).argmin(1)
    assert 0.05 < (nearest == held_y).float().mean() < 0.5


def test_synthetic_looks_like_cifar_in_its_pixel_statistics():
    """Per-channel mean and std close to CIFAR's (0.49-0.45 mean, 0.20-0.26 std), so the
    normalisation in params.yaml gives inputs of the scale the networks expect."""
    x = synthetic(2000, seed=0, stream=0)[0].float() / 255
    assert ((x.mean(dim=(0, 2, 3)) - 0.48).abs() < 0.05).all()
    assert ((x.std(dim=(0, 2, 3)) - 0.23).abs() < 0.04).all()


# --- split and limits -------------------------------------------------------------------------

def test_split_partitions_the_training_set_with_a_seed():
    n = 120
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32)
    labels = torch.arange(n)  # label = original index, to trace the images
    test_x, test_y = images[:10], labels[:10]
    d = build_dataset(images, labels, test_x, test_y, ["c"] * 100, seed=0, val_size=30)
    assert (len(d["train_labels"]), len(d["val_labels"]), len(d["test_labels"])) == (90, 30, 10)
    assert sorted(torch.cat([d["train_labels"], d["val_labels"]]).tolist()) == list(range(n))
    assert torch.equal(d["train_images"][:, 0, 0, 0].long(), d["train_labels"])  # rows move together
    assert d["val_labels"].tolist() != list(range(30))  # shuffled, not the first 30
    again = build_dataset(images, labels, test_x, test_y, ["c"] * 100, seed=0, val_size=30)
    assert torch.equal(again["val_labels"], d["val_labels"])
    other = build_dataset(images, labels, test_x, test_y, ["c"] * 100, seed=1, val_size=30)
    assert not torch.equal(other["val_labels"], d["val_labels"])
    with pytest.raises(DataError, match="val_size"):
        build_dataset(images, labels, test_x, test_y, ["c"] * 100, seed=0, val_size=n)


def test_synthetic_fetch_sizes_and_limits(project, monkeypatch):
    monkeypatch.chdir(project)
    stages.fetch.main([])  # the tiny params: 600 synthetic images, 200 of them validation
    manifest = json.loads((project / "data" / "manifest.json").read_text())
    assert manifest["source"] == "synthetic"
    assert manifest["sizes"] == {"train": 400, "val": 200, "test": 200}

    full = load_dataset(project_params({"data": {"source": "synthetic"}}).data)
    assert (len(full.train), len(full.val), len(full.test)) == (400, 200, 200)
    limited = load_dataset(project_params({"data": {"source": "synthetic", "train_limit": 50, "eval_limit": 30}}).data)
    assert (len(limited.train), len(limited.val), len(limited.test)) == (50, 30, 30)
    assert torch.equal(limited.train.images, full.train.images[:50])  # the first N, not a sample
    assert torch.equal(limited.val.labels, full.val.labels[:30])
    assert torch.equal(limited.test.images, full.test.images[:30])
    assert limited.fingerprint() != full.fingerprint()  # runs on other limits do not share state
    big = load_dataset(project_params({"data": {"source": "synthetic", "train_limit": 10_000}}).data)
    assert len(big.train) == 400  # a limit above the size keeps everything


@pytest.mark.slow
def test_train_refuses_a_dataset_that_does_not_match_its_manifest(project, monkeypatch):
    monkeypatch.chdir(project)
    stages.fetch.main([])
    fetched = project
    dataset = fetched / "data" / "dataset.pt"
    with open(dataset, "ab") as f:
        f.write(b"\0")  # a changed byte count: any edit after fetch
    proc = stage("train", "VGG_08", cwd=fetched, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data/dataset.pt" in lines[0] and "manifest.json" in lines[0], proc.stderr
    assert not (fetched / "models" / "VGG_08.pt").exists()


def test_missing_manifest_or_dataset_is_a_data_error(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(DataError, match="manifest.json"):
        load_dataset(project_params().data)
    stages.fetch.main([])
    (project / "data" / "dataset.pt").unlink()
    with pytest.raises(DataError, match="dataset.pt"):
        load_dataset(project_params().data)


# --- augmentation -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
    return synthetic(24, seed=3, stream=0)[0]


def crops(image: torch.Tensor, p: int) -> list[torch.Tensor]:
    """Every 32x32 window of the zero-padded image, and their mirror images."""
    padded = torch.nn.functional.pad(image, (p, p, p, p))
    out = [padded[:, r:r + 32, c:c + 32] for r in range(2 * p + 1) for c in range(2 * p + 1)]
    return out + [w.flip(2) for w in out]


def test_no_padding_and_no_flip_is_the_permutation(images):
    out, perm = Augment(MEAN, STD, 0, False, CPU).epoch(images, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert sorted(perm.tolist()) == list(range(len(images)))
    assert perm.tolist() != list(range(len(images)))
    assert torch.equal(out, images[perm])


def test_flip_mirrors_some_images_and_keeps_the_others(images):
    out, perm = Augment(MEAN, STD, 0, True, CPU).epoch(images, torch.Generator().manual_seed(0))
    src = images[perm]
    same = [torch.equal(o, s) for o, s in zip(out, src)]
    mirrored = [torch.equal(o, s.flip(2)) for o, s in zip(out, src)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 0 < sum(mirrored) < len(images)


def test_crop_keeps_the_shape_and_takes_a_window_of_the_padded_image(images):
    p = 4
    out, perm = Augment(MEAN, STD, p, True, CPU).epoch(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifted = 0
    for o, i in zip(out, perm):
        windows = crops(images[i], p)
        assert any(torch.equal(o, w) for w in windows)
        centre = images[i]
        shifted += not (torch.equal(o, centre) or torch.equal(o, centre.flip(2)))
    assert shifted > len(images) // 2  # most images are moved, not just the centre crop


def test_augmentation_is_deterministic_for_a_generator_seed(images):
    aug = Augment(MEAN, STD, 4, True, CPU)
    a, pa = aug.epoch(images, torch.Generator().manual_seed(7))
    b, pb = aug.epoch(images, torch.Generator().manual_seed(7))
    c, _ = aug.epoch(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert not torch.equal(a, c)


def test_normalize_uses_the_mean_and_std(images):
    x = Augment(MEAN, STD, 0, False, CPU).normalize(images)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
