"""params.yaml, parsed once into typed dataclasses.

Every stage calls `load()` before doing any work. A wrong key, type or range raises
`ParamsError` naming the key path; `gradflow.cli` turns it into one line on stderr and exit code 2,
so nothing is written or deleted when the params are bad.

params.yaml is the one place a setting's value is stated: the dataclasses below hold each field's
type, bounds and why, and no default, so a key missing from the file is refused like an unknown
one. Only a variant states just what it changes (a switch it leaves out is off, an override
left out keeps `train`'s value). A new param is its line in params.yaml plus its field here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import yaml

from gradflow.errors import ParamsError  # re-exported: stages and tests use P.ParamsError
from gradflow.fixes import FIXES, Fix, switched_on, sweep_names, sweep_switches

PARAMS_FILE = Path("params.yaml")
SECTIONS = ("data", "model", "train", "variants", "gradients", "sweep")  # all required in the file
CIFAR100_TRAIN_SIZE = 50_000  # data.val_size must stay below it
CIFAR100_TEST_SIZE = 10_000
MAX_NAME = 100  # bytes (UTF-8) in a variant's name; file names stop at 255 bytes
MAX_SEED = 2**32 - 1  # seeds are mixed into torch generator seeds (seed * 1_000_003 + ...): no overflow
MAX_RATE = 1e30  # lr, weight decay, eta_min: fp32 holds them (up to 3.4e38) with room for lr x grad




def _shown(value, limit: int = 80) -> str:
    """repr(value) for an error line, cut to `limit` characters: a 200,000-character value is
    not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text):,} characters)"


class _OutOfRange(ParamsError):
    """The right type but outside its bounds: a Union reports this, not a type mismatch."""


def _check(minimum=None, maximum=None, *, exclusive_min=False):
    return {"min": minimum, "max": maximum, "exclusive_min": exclusive_min}


@dataclass(frozen=True)
class DataLimits:
    """The `data` settings that training reads: how much of the dataset file a run uses."""
    train_limit: Optional[int] = field(metadata=_check(1))  # first N train images (null: all)
    eval_limit: Optional[int] = field(metadata=_check(1))  # first N val/test images (null: all)


@dataclass(frozen=True)
class DataParams(DataLimits):
    source: Literal["cifar100", "synthetic"]
    seed: int = field(metadata=_check(0, MAX_SEED))  # train/validation split and synthetic data
    val_size: int = field(metadata=_check(1))
    synthetic_train_size: int = field(metadata=_check(2))  # before the split
    synthetic_test_size: int = field(metadata=_check(1))


def data_sources() -> tuple[str, ...]:
    """The values data.source accepts (its Literal): what a manifest's `source` may say."""
    return typing.get_args(typing.get_type_hints(DataParams)["source"])


@dataclass(frozen=True)
class ModelParams:
    filters: int = field(metadata=_check(1))
    stages: int = field(metadata=_check(1, 5))  # each halves the resolution once


@dataclass(frozen=True)
class TrainParams:
    epochs: int = field(metadata=_check(1))
    batch_size: int = field(metadata=_check(1))
    lr: float = field(metadata=_check(0, MAX_RATE, exclusive_min=True))
    weight_decay: float = field(metadata=_check(0, MAX_RATE))
    optimizer: Literal["adam", "sgd"]  # sgd: with `momentum`, no per-parameter scaling
    momentum: float = field(metadata=_check(0, 1))  # SGD's momentum (optimizer: sgd only)
    # Adam divides by sqrt(v) + eps: gradients far below eps (VGG_38's first layers: 1e-18)
    # get updates of ~lr * g / eps, i.e. none. A tiny eps makes Adam scale-invariant there too.
    adam_eps: float = field(metadata=_check(0, exclusive_min=True))
    # Deep supervision's companion-loss weight at epoch 1, decaying linearly to 0 (gradflow/loss.py);
    # read only by variants with deep_supervision.
    aux_weight: float = field(metadata=_check(0, MAX_RATE))
    eta_min: float = field(metadata=_check(0, MAX_RATE))  # cosine annealing floor
    seed: int = field(metadata=_check(0, MAX_SEED))
    device: str  # auto | cpu | cuda | cuda:N | mps
    crop_padding: int = field(metadata=_check(0, 16))
    flip: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_batch_size: int = field(metadata=_check(1))
    # Curves inside an epoch: every `eval_every` training images, a point (the training loss and
    # accuracy since the last point, validation on the first `eval_subset` images); 0: epoch ends only.
    eval_every: int = field(metadata=_check(0))
    eval_subset: int = field(metadata=_check(1))
    # auto: bf16 autocast on CUDA, fp32 elsewhere. fast: also bf16 on a CPU with native bf16
    # (AVX512-BF16, AMX: ~1.9x faster for VGG_38), fp32 on one without (there bf16 is ~10x slower).
    precision: Literal["auto", "fast", "fp32", "bf16"]
    # false: eager; true: torch.compile; "max-autotune": compile, kernels picked by timing them;
    # "reduce-overhead": compile with CUDA graphs; "graph": the
    # whole step as one CUDA graph; auto: eager until measured on a GPU (gradflow/fastpath.py)
    compile: Literal["auto", True, False, "max-autotune", "reduce-overhead", "graph"]
    channels_last: Literal["auto", True, False]  # auto: on CUDA and CPU, not MPS
    distributed: bool  # the train stage relaunches itself under torchrun (DDP)


# Fields a variant may override from `train`.
TRAIN_OVERRIDES = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "adam_eps", "aux_weight")


def _switch_type(fix: Fix):
    off, on = fix.values
    return bool if (off, on) == (False, True) else Literal[off, on]


def _override(name: str) -> tuple:
    """A variant's field for the `train` setting `name`: its type and bounds, or None (keep train's)."""
    train_field = next(f for f in dataclasses.fields(TrainParams) if f.name == name)
    return name, Optional[typing.get_type_hints(TrainParams)[name]], field(default=None, metadata=train_field.metadata)


Variant = dataclasses.make_dataclass("Variant", [
    ("depth", int, field(metadata=_check(2))),  # required: no default an empty variant could take
    *[(f.switch, _switch_type(f), field(default=f.values[0])) for f in FIXES.values()],
    *[_override(name) for name in TRAIN_OVERRIDES],
], frozen=True, namespace={"__module__": __name__, "__doc__": """One architecture: the plain design at
    `depth`, the fixes it switches on (a field per fix of gradflow/fixes.py, off by default) and the
    `train` settings it overrides (TRAIN_OVERRIDES; None keeps train's). The defaults mean "not
    changed", not values params.yaml repeats."""})


@dataclass(frozen=True)
class CaptureParams:
    """The `gradients` settings that training reads (the capture and the weight snapshots)."""
    every_n_steps: Union[Literal["auto"], int]  # auto: at the points (train.eval_every), else ~10 an epoch
    epochs: tuple[Union[int, Literal["last"]], ...]  # weight snapshots
    include_bias: bool


@dataclass(frozen=True)
class GradientsParams(CaptureParams):
    probe_size: int = field(metadata=_check(1))  # read by the gradients stage only


@dataclass(frozen=True)
class SweepParams:
    # [] runs no sweep (the quick start)
    depths: tuple[int, ...] = field(metadata={"may_be_empty": True})
    fixes: tuple[str, ...]
    epochs: int = field(metadata=_check(1))


def sweep_fix(fix: str) -> dict:
    """The variant switches of a sweep.fixes entry; an unknown one is a ParamsError."""
    switches = sweep_switches(fix)
    if switches is None:
        raise ParamsError(f"sweep.fixes: unknown fix {_shown(fix)} (known: {', '.join(sweep_names())}, "
                          f"or several joined by _, e.g. bn_rc)")
    v = Variant(depth=0, **switches)  # the depth is checked with sweep.depths
    _require_compatible(f"sweep.fixes: {fix}", switched_on(v), v)
    return switches


@dataclass(frozen=True)
class Params:
    data: DataParams
    model: ModelParams
    train: TrainParams
    variants: dict[str, Variant]
    gradients: GradientsParams
    sweep: SweepParams

    def run(self, variant: str) -> "RunConfig":
        if variant not in self.variants:
            raise ParamsError(f"variants: no variant named {variant!r} "
                              f"(defined: {', '.join(self.variants)})")
        return RunConfig.build(variant, self.variants[variant], self)

    def sweep_run(self, depth: int, fix: str) -> "RunConfig":
        """A depth-sweep point: the plain design at `depth` with the fix's switches on, trained
        for sweep.epochs with the shared settings."""
        switches = sweep_fix(fix)
        depth_error(depth, self.model.stages, "sweep.depths")
        run = RunConfig.build(f"{depth}-{fix}", Variant(depth=depth, **switches), self)
        return dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=self.sweep.epochs))

    def runs(self) -> dict[str, "RunConfig"]:
        """Every training run the pipeline makes, by the name of its resolved-config file:
        each variant (`VGG_38`) and each sweep point (`sweep-38-bn_rc`)."""
        out = {name: self.run(name) for name in self.variants}
        for depth in self.sweep.depths:
            for fix in self.sweep.fixes:
                out[f"sweep-{depth}-{fix}"] = self.sweep_run(depth, fix)
        return out


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run reads: a variant with its overrides resolved, and nothing
    else. The check stage writes it to data/config/<name>.json; the train stage depends on that
    file instead of on params sections, so a change reruns exactly the runs it changes (e.g.
    train.lr does not retrain a variant that sets its own lr)."""

    name: str
    variant: Variant
    model: ModelParams
    train: TrainParams
    data: DataLimits
    gradients: CaptureParams

    @classmethod
    def build(cls, name: str, variant: Variant, params: Params) -> "RunConfig":
        overrides = {k: getattr(variant, k) for k in TRAIN_OVERRIDES
                     if getattr(variant, k) is not None}
        train = dataclasses.replace(params.train, **overrides)
        data, capture = _part(DataLimits, params.data), _part(CaptureParams, params.gradients)
        return cls(name, variant, params.model, train, data, capture)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return resolved_json(self)

    def snapshot_epochs(self) -> list[int]:
        last = self.train.epochs
        return sorted({last if e == "last" else e for e in self.gradients.epochs})


def _part(cls, params):
    """The fields of `params` that its base class `cls` holds: what one run reads of a section."""
    return cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(cls)})


# --- the typed loader ---------------------------------------------------------------------

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a).lower()
                          for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a)
                           for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _convert(value, tp, path: str, meta: dict):
    """`value` as type `tp`, or a ParamsError naming `path`; `meta` holds the field's bounds."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is dict:
        return _convert_named(value, typing.get_args(tp)[1], path)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, path, meta)
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return value
        raise ParamsError(f"{path}: expected one of {_type_name(tp)}, got {_shown(value)}")
    if origin is tuple:
        return _convert_tuple(value, tp, path, meta)
    return _convert_scalar(value, tp, path, meta)


def _convert_named(value, value_type, path: str) -> dict:
    """A mapping of names (the variants) to values of `value_type`."""
    if not isinstance(value, dict):
        raise ParamsError(f"{path}: expected a mapping, got {_shown(value)}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k.replace("_", "").isalnum():
            raise ParamsError(f"{path}.{k}: names may use letters, digits and '_' only")
        if len(k.encode()) > MAX_NAME:  # it names files: models/.resume/<name>.pt.corrupt, temporaries
            raise ParamsError(f"{path}.{k[:24]}...: a name of {len(k.encode())} bytes (UTF-8); at most "
                              f"{MAX_NAME} (it names the run's files)")
        out[k] = _convert(v if v is not None else {}, value_type, f"{path}.{k}", {})
    return out


def _convert_union(value, tp, path: str, meta: dict):
    for option in typing.get_args(tp):
        if option is type(None):
            if value is None:
                return None
            continue
        try:
            return _convert(value, option, path, meta)
        except _OutOfRange:
            raise  # `lr: 0` in an Optional[float] is "must be > 0", not "expected a number"
        except ParamsError:
            pass
    raise ParamsError(f"{path}: expected {_type_name(tp)}, got {_shown(value)}")


def _convert_tuple(value, tp, path: str, meta: dict) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ParamsError(f"{path}: expected {_type_name(tp)}, got {_shown(value)}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        if not value and not meta.get("may_be_empty"):
            raise ParamsError(f"{path}: expected a non-empty list")
        return tuple(_convert(v, args[0], f"{path}[{i}]", meta) for i, v in enumerate(value))
    if len(value) != len(args):
        raise ParamsError(f"{path}: expected a list of {len(args)} values, got {_shown(value)}")
    return tuple(_convert(v, a, f"{path}[{i}]", meta) for i, (v, a) in enumerate(zip(value, args)))


def _convert_scalar(value, tp, path: str, meta: dict):
    # bool is a subclass of int in Python: keep `true` out of integer fields.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ParamsError(f"{path}: expected {_type_name(tp)}, got {_shown(value)}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("exclusive_min") and value == low)):
        bound = f"> {low}" if meta.get("exclusive_min") else f">= {low}"
        raise _OutOfRange(f"{path}: must be {bound}, got {_shown(value)}")
    if high is not None and value > high:
        raise _OutOfRange(f"{path}: must be <= {high}, got {_shown(value)}")
    return value


def _build(cls, raw, path: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParamsError(f"{path}.{key}: unknown key{hint} (known: {', '.join(known)})".lstrip("."))
    kwargs = {name: _convert(raw[name], hints[name], f"{path}.{name}".lstrip("."), f.metadata)
              for name, f in known.items() if name in raw}
    for name, f in known.items():
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            hint = ("8 + 6k, e.g. 8, 14, 38" if name == "depth" else
                    "every setting is stated in the file; the project's params.yaml has each")
            raise ParamsError(f"{path}.{name}: missing; it is required ({hint})".lstrip("."))
    return cls(**kwargs)


def _validate(p: Params) -> None:
    if not p.variants:
        raise ParamsError("variants: define at least one variant")
    if "data" in p.variants:  # its resolved config would be data/config/data.json, fetch's
        raise ParamsError("variants.data: the name 'data' is reserved; pick another name")
    for name, v in p.variants.items():
        depth_error(v.depth, p.model.stages, f"variants.{name}.depth")
        _require_compatible(f"variants.{name}", switched_on(v), v)
    for d in p.sweep.depths:
        depth_error(d, p.model.stages, "sweep.depths")
    for fix in p.sweep.fixes:
        sweep_fix(fix)
    for e in p.gradients.epochs:
        if e != "last" and not 0 <= e <= p.train.epochs:
            raise ParamsError(f"gradients.epochs: {e} is outside 0..train.epochs ({p.train.epochs})")
    if isinstance(p.gradients.every_n_steps, int) and p.gradients.every_n_steps < 1:
        raise ParamsError(f"gradients.every_n_steps: must be >= 1 or 'auto', "
                          f"got {p.gradients.every_n_steps}")
    if p.train.device not in ("auto", "cpu", "cuda", "mps") and not (
            p.train.device.startswith("cuda:") and p.train.device[5:].isdigit()):
        raise ParamsError(f"train.device: expected auto | cpu | cuda | cuda:N | mps, "
                          f"got {_shown(p.train.device)}")
    train_size = CIFAR100_TRAIN_SIZE if p.data.source == "cifar100" else p.data.synthetic_train_size
    if p.data.val_size >= train_size:
        where = ("CIFAR-100's training set" if p.data.source == "cifar100"
                 else "the synthetic training set (data.synthetic_train_size)")
        raise ParamsError(f"data.val_size: {p.data.val_size} must be smaller than {where}, "
                          f"{train_size} images")
    if any(s <= 0 for s in p.train.std):
        raise ParamsError(f"train.std: every value must be > 0, got {list(p.train.std)}")


def _require_compatible(path: str, fixes: list[Fix], v) -> None:
    """A fix's `needs` is on too, and no two fixes build the same piece (two norm layers)."""
    for fix in fixes:
        needed = FIXES[fix.needs] if fix.needs else None
        if needed and getattr(v, needed.switch) != needed.values[1]:
            raise ParamsError(f"{path}.{fix.switch}: needs {needed.switch}: {json.dumps(needed.values[1])}")
    for hook in ("norm", "mixer", "head"):
        both = [f.switch for f in fixes if getattr(type(f), hook) is not getattr(Fix, hook)]
        if len(both) > 1:
            raise ParamsError(f"{path}: {' and '.join(both)} both build the {hook}; switch one off")


def device_error(name: str) -> None:
    """Raise unless this machine has train.device `name`. torch is imported only for a named
    accelerator, so the check stage stays fast for auto and cpu."""
    if name in ("auto", "cpu"):
        return
    import torch
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name[5:]) if name.startswith("cuda:") else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ParamsError(f"train.device: {name!r}, but this machine has {have}; "
                              f"use auto or cpu (-S train.device=auto)")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ParamsError("train.device: 'mps', but MPS is not available on this machine; "
                          "use auto or cpu (-S train.device=auto)")


def depth_error(depth: int, stages: int, path: str) -> None:
    """Raise unless depth = 2 + stages * (2 * blocks_per_stage + 2), e.g. 8 + 6k for 3 stages."""
    base, step = 2 + 2 * stages, 2 * stages
    if depth < base or (depth - base) % step:
        raise ParamsError(f"{path}: depth {depth} is not {base} + {step}k "
                          f"(e.g. {base}, {base + step}, {base + 5 * step})")


def parse(raw: dict) -> Params:
    params = _build(Params, raw, "")
    _validate(params)
    return params


def read_yaml(text: str):
    """YAML as DVC reads params.yaml (ruamel's safe loader: YAML 1.2), so the value `dvc exp
    show` records is the value trained: `1:00` and `yes` are strings, `1e-3` a number (PyYAML,
    YAML 1.1, reads 60, true and a string)."""
    try:
        from ruamel.yaml import YAML, YAMLError
    except ImportError:  # no DVC installed (a bare GPU machine): no DVC to agree with
        return yaml.load(text, Loader=_Loader)
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as e:  # one error type for the callers
        raise yaml.YAMLError(str(e)) from None


class _Loader(yaml.SafeLoader):
    """Without ruamel: PyYAML, reading `1e-3` as a number as YAML 1.2 does (1.1: a string)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def resolved_json(config) -> str:
    """A resolved config (a params dataclass) as JSON the check stage writes. Byte-stable: the
    same config gives the same bytes, so DVC sees no change."""
    return json.dumps(dataclasses.asdict(config), indent=1, sort_keys=True) + "\n"


def load_resolved(path: Path | str, cls=None):
    """A resolved config written by the check stage (a RunConfig, or `cls`, e.g. DataParams),
    through the same typed loader."""
    cls = cls or RunConfig
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: missing; run the check stage first (dvc repro check)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParamsError(f"{path}: not a resolved config ({e}); rerun the check stage "
                          f"(dvc repro check)") from None
    except OSError as e:  # a folder (--config data/config), no right to read it
        raise ParamsError(f"{path}: not a resolved config ({e.strerror or type(e).__name__}; pass the "
                          f"file, e.g. data/config/<variant>.json); rerun the check stage (dvc repro check) "
                          f"if it is missing") from None
    return _build(cls, raw, str(path))


def _duplicate_key(text: str) -> tuple[str, int] | None:
    """(key path, line) of the first key given twice in one mapping. PyYAML keeps the last
    silently; DVC's parser refuses the file, so the project's loader refuses it too."""
    seen, stack = set(), [(yaml.compose(text, Loader=yaml.SafeLoader), "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # an alias: walked once (a YAML alias bomb stays cheap)
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else repr(key.value)
                full = f"{path}.{name}".lstrip(".")
                if name in keys:
                    return full, key.start_mark.line + 1
                keys.add(name)
                stack.append((value, full))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return None


def _first_difference(a, b, path: str = "") -> str:
    """The first key path where two resolved configs differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}".lstrip("."))
    return f"{path}: {a!r} -> {b!r}"


def params_stamp(path: Path | str = PARAMS_FILE) -> list | None:
    """params.yaml's size, mtime and inode (a stat: no read), or None without the file."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def checked_stamp() -> list | None:
    """The stamp of params.yaml as the check stage validated it (paths.CHECKED_PARAMS), or,
    without one (a stage run by hand), the file's stamp now: what `require_unchanged` compares."""
    from gradflow import paths
    try:
        stamp = json.loads(paths.CHECKED_PARAMS.read_text())
    except (OSError, ValueError):
        return params_stamp()
    return stamp if isinstance(stamp, list) else params_stamp()


def require_unchanged(config_path: Path | str, cfg: RunConfig, stage: str, stamp: list | None,
                      written: str = "its outputs are not written") -> None:
    """ParamsError unless params.yaml still resolves to `cfg`, the config this run used (read
    from `config_path` when it started). DVC writes `dvc exp run -S` values into params.yaml
    before it takes its lock, so a second `dvc exp run` in the same workspace can change the
    params under a running one, which would then record the other run's values with its own
    outputs. Called before a stage writes its outputs: then it writes none (`written` says what
    the workspace holds instead: a train stage checks at every point of its curves). params.yaml is
    reread only when its stamp differs from `stamp` (checked_stamp() at the stage's start), so
    an undisturbed run never reads it: it is no input of the stage's outputs."""
    if params_stamp() == stamp:
        return
    name = Path(config_path).stem
    advice = ("another `dvc exp run` in this workspace? Run experiments side by side with "
              "`dvc exp run --queue ...` and `dvc queue start`; then rerun this one")
    try:
        current = load().runs().get(name)
    except ParamsError as e:
        raise ParamsError(f"params.yaml changed while {stage} ran and is now refused ({e}); {written}; "
                          f"{advice}") from None
    if current is None or current.to_json() != cfg.to_json():
        what = ("it no longer has this run" if current is None else
                _first_difference(json.loads(cfg.to_json()), json.loads(current.to_json())))
        raise ParamsError(f"params.yaml changed while {stage} ran: {config_path} is no longer what it "
                          f"resolves to ({what}), so {written} (they would be recorded with the new "
                          f"params); {advice}")


def load(path: Path | str = PARAMS_FILE, dvc_yaml: Path | None = None) -> Params:
    """params.yaml, parsed and validated. The check stage passes `dvc_yaml` as well, to refuse a
    key that a stage declares there but the file lacks (the other stages do not read dvc.yaml)."""
    try:
        text = Path(path).read_text()
        duplicate = _duplicate_key(text)
        if duplicate:
            raise ParamsError(f"{duplicate[0]}: given twice in {path} (line {duplicate[1]} repeats it); "
                              f"keep one")
        raw = read_yaml(text)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as e:
        lines = [line.strip().replace('in "<unicode string>", ', "") for line in str(e).splitlines()]
        where = "; ".join(line.rstrip(":") for line in lines if line and not line.startswith("^"))
        raise ParamsError(f"{path}: not valid YAML ({where[:200]})") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (data, model, train, variants, "
                          f"gradients, sweep), got {type(raw).__name__}")
    missing = [s for s in SECTIONS if s not in (raw or {})]
    if missing:  # dvc.yaml declares them: DVC would stop on a missing one, after deleting outputs
        raise ParamsError(f"{missing[0]}: section missing from {path} (every one of "
                          f"{', '.join(SECTIONS)} is required)")
    if dvc_yaml is not None:
        _require_declared(raw, dvc_yaml, path)
    return parse(raw)


def _require_declared(raw: dict, dvc_yaml: Path, path) -> None:
    """Raise if a key a stage declares under `params:` in dvc.yaml is not in the file: DVC stops
    on it only when it reaches that stage, after deleting outputs of the stages before."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return  # no readable dvc.yaml (a test's params file, a copy): nothing is declared
    for stage_name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        body = stage.get("do", stage)
        keys = _foreach_keys(raw, stage.get("foreach"))
        for entry in (body.get("params") or []) if isinstance(body, dict) else []:
            if not isinstance(entry, str):
                continue  # `params.yaml:` (the whole file) or another file's keys
            names = ([entry.replace("${key}", k) for k in keys] if "${key}" in entry and keys
                     else [] if "${" in entry else [entry])
            for name in names:
                node = raw
                for part in name.split("."):
                    if not isinstance(node, dict) or part not in node:
                        raise ParamsError(f"{name}: missing from {path}, and dvc.yaml's stage "
                                          f"{stage_name} declares it (add it)")
                    node = node[part]


def _foreach_keys(raw: dict, foreach) -> list[str]:
    """The `${key}` values of a `foreach: ${section}` stage: the keys of that mapping."""
    if not (isinstance(foreach, str) and foreach.startswith("${") and foreach.endswith("}")):
        return []
    node = raw
    for part in foreach[2:-1].split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return [str(k) for k in node] if isinstance(node, dict) else []
