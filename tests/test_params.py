"""Bad params are refused up front: exit code 2, one line on stderr naming the key path
and what is accepted, and no output written or deleted.

The table runs through the stages' entry points, `stages.train.main(["VGG_08"])` and
`stages.fetch.main([])`, in-process in a project copy (milliseconds a case); a subset runs as
real `python -m stages.<stage>` processes, which adds the interpreter's own stderr and exit code
(about 2 s of torch import a case, so not all of them).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

import stages.fetch
import stages.train
from conftest import TINY, default_params, merged, project_params, setting, stage, write_params
from gradflow.params import (DataParams, GradientsParams, ModelParams, Params, ParamsError, SweepParams,
                             TrainParams, Variant, load, parse)

# Outputs that exist before the bad run; they must come out untouched.
OUTPUTS = ["data/dataset.pt", "data/manifest.json", "models/VGG_08.pt", "models/.resume/VGG_08.pt",
           "models/VGG_08/epoch_000.pt", "metrics/VGG_08.json", "plots/history/VGG_08.csv",
           "plots/grad_capture/VGG_08.csv"]


def tiny() -> dict:
    return merged(default_params(), TINY)



# (case id, stage, edit of the tiny params or raw YAML text, fragments the one line must contain)
CASES = [
    ("unknown-key", "train", setting("train.epoch", 3), ["train.epoch", "unknown key", "did you mean 'epochs'?"]),
    ("variant-typo", "train", setting("variants.VGG_08.batchnorm", True),
     ["variants.VGG_08.batchnorm", "unknown key", "batch_norm"]),
    ("batch-size-word", "train", setting("train.batch_size", "zero"), ["train.batch_size", "an integer", "'zero'"]),
    ("batch-size-bool", "train", setting("train.batch_size", True), ["train.batch_size", "an integer"]),
    ("epochs-zero", "train", setting("train.epochs", 0), ["train.epochs", ">= 1"]),
    ("batch-size-negative", "train", setting("train.batch_size", -1), ["train.batch_size", ">= 1"]),
    ("epochs-float", "train", setting("train.epochs", 2.5), ["train.epochs", "an integer"]),
    ("depth-10", "train", setting("variants.VGG_08.depth", 10), ["variants.VGG_08.depth", "10", "8 + 6k"]),
    ("depth-39", "train", setting("variants.VGG_08.depth", 39), ["variants.VGG_08.depth", "39", "8 + 6k"]),
    ("depth-2", "train", setting("variants.VGG_08.depth", 2), ["variants.VGG_08.depth", "depth 2 ", "8 + 6k"]),
    ("other-variant-depth", "train", setting("variants.VGG_38.depth", 37), ["variants.VGG_38.depth", "8 + 6k"]),
    ("source", "fetch", setting("data.source", "imagenet"), ["data.source", "'cifar100' | 'synthetic'"]),
    ("device", "train", setting("train.device", "tpu"), ["train.device", "cpu", "cuda:N", "'tpu'"]),
    ("lr-negative", "train", setting("train.lr", -1), ["train.lr", "> 0"]),
    ("lr-nan", "train", setting("train.lr", float("nan")), ["train.lr", "a number"]),
    ("variant-lr-zero", "train", setting("variants.VGG_08.lr", 0), ["variants.VGG_08.lr", "> 0"]),
    ("mean-two-values", "train", setting("train.mean", [0.5, 0.5]), ["train.mean", "3 values"]),
    ("std-zero", "train", setting("train.std", [0.2, 0.0, 0.2]), ["train.std", "> 0"]),
    ("snapshot-epoch", "train", setting("gradients.epochs", [500]), ["gradients.epochs", "500", "0..train.epochs"]),
    ("snapshot-word", "train", setting("gradients.epochs", ["first"]), ["gradients.epochs[0]", "'last'"]),
    ("every-zero", "train", setting("gradients.every_n_steps", 0), ["gradients.every_n_steps", "'auto'"]),
    ("flip", "train", setting("train.flip", "maybe"), ["train.flip", "true or false", "'maybe'"]),
    ("init", "train", setting("variants.VGG_08.init", "xavier"), ["variants.VGG_08.init", "'kaiming'"]),
    ("residual-reduction-alone", "train", setting("variants.VGG_08.residual_reduction", True),
     ["variants.VGG_08.residual_reduction", "residual: true"]),
    ("sweep-fix", "train", setting("sweep.fixes", ["none", "magic"]), ["sweep.fixes", "'magic'", "bn_rc"]),
    ("stages-zero", "fetch", setting("model.stages", 0), ["model.stages", ">= 1"]),
    ("val-size-zero", "fetch", setting("data.val_size", 0), ["data.val_size", ">= 1"]),
    ("unknown-section", "fetch", setting("trian", {"epochs": 3}), ["trian", "unknown key", "train"]),
    ("no-variants", "train", setting("variants", {}), ["variants", "at least one"]),
    ("variant-not-mapping", "train", setting("variants.VGG_08", [8]), ["variants.VGG_08", "a mapping"]),
    ("unknown-variant", "train", setting("variants", {"VGG_14": {"depth": 14}}), ["VGG_08", "VGG_14"]),
    ("broken-yaml", "train", "train:\n  epochs: [1\n", ["params.yaml", "YAML"]),
    ("not-a-mapping", "fetch", "- 1\n- 2\n", ["params.yaml", "mapping"]),
    ("val-size-too-big", "fetch", setting("data.val_size", 600), ["data.val_size", "600", "smaller"]),
]


def snapshot(project: Path) -> dict[str, tuple[int, int]]:
    """Every file under the project with its size and mtime (bytecode caches aside)."""
    return {str(p.relative_to(project)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in project.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def prepare(project: Path, edit) -> dict:
    """Write the bad params and stand-in outputs of an earlier run; return the file snapshot."""
    if isinstance(edit, str):
        (project / "params.yaml").write_text(edit)
    else:
        write_params(project, base=edit(tiny()))
    for rel in OUTPUTS:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(b"an earlier run's output\n")
    return snapshot(project)


def check_refusal(project: Path, before: dict, code, stderr: str, fragments: list[str]) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, f"exit code {code}; stderr:\n{stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    assert snapshot(project) == before, "files were written or deleted"
    for rel in OUTPUTS:
        assert (project / rel).read_bytes() == b"an earlier run's output\n"


@pytest.mark.parametrize("case, stage_name, edit, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_params_are_refused_in_the_entry_point(project, monkeypatch, capsys, case, stage_name,
                                                    edit, fragments):
    before = prepare(project, edit)
    monkeypatch.chdir(project)
    main = {"train": lambda: stages.train.main(["VGG_08"]), "fetch": lambda: stages.fetch.main([])}[stage_name]
    with pytest.raises(SystemExit) as exit_:
        main()
    check_refusal(project, before, exit_.value.code, capsys.readouterr().err, fragments)


# One case per way a value can be wrong (YAML, unknown key, type, range, across fields), and
# both stages, through a real interpreter.
SUBPROCESS_CASES = ["broken-yaml", "variant-typo", "batch-size-word", "depth-39", "unknown-section"]


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_params_are_refused_by_the_command(project, case):
    _, stage_name, edit, fragments = next(c for c in CASES if c[0] == case)
    before = prepare(project, edit)
    args = ["VGG_08"] if stage_name == "train" else []
    proc = stage(stage_name, *args, cwd=project, check=False)
    check_refusal(project, before, proc.returncode, proc.stderr, fragments)
    assert proc.stdout == ""


# --- every field, generated from the dataclasses (a new field is covered without a new case) --

SECTIONS = {"data": DataParams, "model": ModelParams, "train": TrainParams, "variants.V": Variant,
            "gradients": GradientsParams, "sweep": SweepParams}
FIELDS = [(f"{section}.{f.name}", f) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def with_value(path: str, value) -> dict:
    """The project's params with one variant V (depth 8) and `path` set to value."""
    raw = merged(default_params(), {"variants": {"V": {"depth": 8}}})
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("path", [p for p, _ in FIELDS])
def test_every_field_refuses_a_wrong_type_by_its_key_path(path):
    """No field of any section takes a mapping: each is refused with its full key path first."""
    with pytest.raises(ParamsError) as refused:
        parse(with_value(path, {"not": "a value"}))
    assert str(refused.value).startswith(f"{path}: expected "), str(refused.value)


BOUNDED = [(path, f.metadata) for path, f in FIELDS if f.metadata.get("min") is not None
           or f.metadata.get("max") is not None]
# Fields whose bound alone is not a valid config: a depth must also be 8 + 6k, and stages
# changes which depths are (the depth cases in CASES check those).
EDGE_NEEDS_MORE = {"variants.V.depth", "model.stages"}


@pytest.mark.parametrize("path, meta", BOUNDED, ids=[p for p, _ in BOUNDED])
def test_every_bound_is_enforced_at_its_edge(path, meta):
    """The value just past each declared bound is refused naming the bound; the bound itself
    (for an inclusive one) is accepted."""
    low, high = meta.get("min"), meta.get("max")
    if low is not None:
        bad = low if meta.get("exclusive_min") else low - 1
        with pytest.raises(ParamsError, match=re.escape(f"{path}: must be ") + "[>]"):
            parse(with_value(path, bad))
        if not meta.get("exclusive_min") and path not in EDGE_NEEDS_MORE:
            parse(with_value(path, low))
    if high is not None:
        with pytest.raises(ParamsError, match=re.escape(f"{path}: must be <= {high}")):
            parse(with_value(path, high + 1 if isinstance(high, int) else high * 2))  # 1e30 + 1 == 1e30
        if path not in EDGE_NEEDS_MORE:
            parse(with_value(path, high))


# --- the typed parser, in-process -----------------------------------------------------------

def test_project_params_parse():
    params = parse(default_params())
    assert params.train.lr == 0.001 and params.model.filters == 32 and params.data.source == "cifar100"
    assert params.variants["VGG_38"].depth == 38 and params.variants["VGG_38_BN_RC"].residual


@pytest.mark.parametrize("path", [p for p, _ in FIELDS if not p.startswith("variants.")])
def test_every_setting_is_stated_in_params_yaml_once(path):
    """params.yaml is the one place a value is stated: no section field has a default in the
    dataclasses, so a key taken out of the file is refused by its path, not filled in."""
    section, name = path.split(".")
    raw = default_params()
    del raw[section][name]
    with pytest.raises(ParamsError, match=rf"^{re.escape(path)}: missing; it is required"):
        parse(raw)


def test_bool_is_not_an_integer_and_an_integer_is_not_a_bool():
    with pytest.raises(ParamsError, match="train.epochs"):
        project_params({"variants": {"V": {"depth": 8}}, "train": {"epochs": True}})
    with pytest.raises(ParamsError, match="train.flip"):
        project_params({"variants": {"V": {"depth": 8}}, "train": {"flip": 1}})
    with pytest.raises(ParamsError, match="variants.V.batch_norm"):
        project_params({"variants": {"V": {"depth": 8, "batch_norm": "yes"}}})
    with pytest.raises(ParamsError, match="train.channels_last"):
        project_params({"variants": {"V": {"depth": 8}}, "train": {"channels_last": 1}})
    p = project_params({"variants": {"V": {"depth": 8}}, "train": {"channels_last": True}})
    assert p.train.channels_last is True
    with pytest.raises(ParamsError, match="gradients.every_n_steps"):
        project_params({"variants": {"V": {"depth": 8}}, "gradients": {"every_n_steps": True}})


def test_integers_are_accepted_for_floats():
    p = project_params({"variants": {"V": {"depth": 8, "lr": 1}}, "train": {"lr": 2, "mean": [0, 1, 0]}})
    assert p.train.lr == 2.0 and type(p.train.lr) is float
    assert p.train.mean == (0.0, 1.0, 0.0) and all(type(m) is float for m in p.train.mean)
    assert p.run("V").train.lr == 1.0 and type(p.run("V").train.lr) is float


def test_infinity_is_not_a_number_here():
    with pytest.raises(ParamsError, match="train.lr"):
        project_params({"variants": {"V": {"depth": 8}}, "train": {"lr": float("inf")}})


def test_null_is_accepted_where_optional_and_a_variant_keeps_trains_value():
    p = project_params({"variants": {"V": {"depth": 8, "lr": None, "epochs": None, "batch_size": 7}},
               "data": {"train_limit": None, "eval_limit": 5}, "train": {"lr": 0.01, "epochs": 3}})
    assert p.data.train_limit is None and p.data.eval_limit == 5
    run = p.run("V")
    assert (run.train.lr, run.train.epochs, run.train.batch_size) == (0.01, 3, 7)
    with pytest.raises(ParamsError, match="train.lr"):
        project_params({"variants": {"V": {"depth": 8}}, "train": {"lr": None}})  # not Optional
    with pytest.raises(ParamsError, match="data.train_limit"):
        project_params({"variants": {"V": {"depth": 8}}, "data": {"train_limit": 0}})


def test_out_of_range_in_an_optional_field_names_the_bound():
    """Not "expected a number or null, got 0": 0 is a number, it is the bound that fails."""
    with pytest.raises(ParamsError, match=r"variants.V.lr: must be > 0, got 0"):
        project_params({"variants": {"V": {"depth": 8, "lr": 0}}})
    with pytest.raises(ParamsError, match=r"data.eval_limit: must be >= 1, got -5"):
        project_params({"variants": {"V": {"depth": 8}}, "data": {"eval_limit": -5}})


def test_unions_and_lists():
    p = project_params({"variants": {"V": {"depth": 8}}, "train": {"epochs": 4},
               "gradients": {"every_n_steps": 5, "epochs": [0, 2, "last"]}})
    assert p.gradients.every_n_steps == 5 and p.gradients.epochs == (0, 2, "last")
    assert p.run("V").snapshot_epochs() == [0, 2, 4]
    p = project_params({"variants": {"V": {"depth": 8}}, "gradients": {"every_n_steps": "auto"}})
    assert p.gradients.every_n_steps == "auto"
    with pytest.raises(ParamsError, match="gradients.every_n_steps"):
        project_params({"variants": {"V": {"depth": 8}}, "gradients": {"every_n_steps": "often"}})
    with pytest.raises(ParamsError, match="sweep.depths"):
        project_params({"variants": {"V": {"depth": 8}}, "sweep": {"depths": 8}})  # a list is expected


def test_an_empty_section_is_refused_but_a_variant_states_only_what_it_changes():
    with pytest.raises(ParamsError, match=r"^train.epochs: missing; it is required"):
        project_params({"train": None})
    p = project_params({"variants": {"V": {"depth": 8}}})
    assert isinstance(p, Params) and p.variants["V"] == Variant(depth=8) and not p.variants["V"].batch_norm
    # ...but a variant has no default depth: an empty one is refused, naming the key.
    with pytest.raises(ParamsError, match=r"^variants.V.depth: missing"):
        project_params({"variants": {"V": None}})


def test_exponent_floats_read_as_numbers_like_dvc_reads_them(tmp_path):
    """PyYAML alone reads `1e-3` as a string; DVC's YAML 1.2 reader says 0.001."""
    params = merged(tiny(), {})
    text = yaml.safe_dump(params, sort_keys=False).replace("lr: 0.001", "lr: 1e-3")
    assert "lr: 1e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load(tmp_path / "params.yaml").train.lr == 0.001


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load(tmp_path / "params.yaml")
