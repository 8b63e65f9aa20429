"""params.yaml, parsed once into typed dataclasses.

Every stage calls `load()` before doing any work. A wrong key, type or range raises
`ParamsError` naming the key path; `gradflow.cli` turns it into one line on stderr and exit code 2,
so nothing is written or deleted when the params are bad.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import yaml

from gradflow.errors import ParamsError  # re-exported: stages and tests use P.ParamsError

PARAMS_FILE = Path("params.yaml")




class _OutOfRange(ParamsError):
    """The right type but outside its bounds: a Union reports this, not a type mismatch."""


def _check(minimum=None, maximum=None, *, exclusive_min=False):
    return {"min": minimum, "max": maximum, "exclusive_min": exclusive_min}


@dataclass(frozen=True)
class DataParams:
    source: Literal["cifar100", "synthetic"] = "cifar100"
    seed: int = field(default=0, metadata=_check(0))  # train/validation split and synthetic data
    val_size: int = field(default=2500, metadata=_check(1))
    train_limit: Optional[int] = field(default=None, metadata=_check(1))  # first N train images
    eval_limit: Optional[int] = field(default=None, metadata=_check(1))  # first N val/test images
    synthetic_train_size: int = field(default=50000, metadata=_check(2))  # before the split
    synthetic_test_size: int = field(default=10000, metadata=_check(1))


@dataclass(frozen=True)
class ModelParams:
    filters: int = field(default=32, metadata=_check(1))
    stages: int = field(default=3, metadata=_check(1, 5))  # each halves the resolution once


@dataclass(frozen=True)
class TrainParams:
    epochs: int = field(default=100, metadata=_check(1))
    batch_size: int = field(default=100, metadata=_check(1))
    lr: float = field(default=1e-3, metadata=_check(0, exclusive_min=True))
    weight_decay: float = field(default=0.0, metadata=_check(0))
    eta_min: float = field(default=2e-5, metadata=_check(0))  # cosine annealing floor
    seed: int = field(default=0, metadata=_check(0))
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    crop_padding: int = field(default=4, metadata=_check(0, 16))
    flip: bool = True
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
    eval_batch_size: int = field(default=100, metadata=_check(1))
    # auto: bf16 autocast on CUDA, fp32 elsewhere. bf16 on a CPU with native bf16 (AVX512-BF16,
    # AMX) is ~1.9x faster for VGG_38; on one without it can be slower, so only `bf16` picks it.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: Literal["auto", True, False] = False  # torch.compile the model; auto: see gradflow.training
    channels_last: Literal["auto", True, False] = "auto"  # auto: on CUDA and CPU, not MPS
    distributed: bool = False  # the train stage relaunches itself under torchrun (DDP)


# Fields a variant may override from `train`.
TRAIN_OVERRIDES = ("epochs", "batch_size", "lr", "weight_decay")


@dataclass(frozen=True)
class Variant:
    depth: int = field(default=8, metadata=_check(2))
    batch_norm: bool = False
    residual: bool = False
    residual_reduction: bool = False
    init: Literal["default", "kaiming"] = "default"
    dense: bool = False
    deep_supervision: bool = False
    aux_weight: float = field(default=0.3, metadata=_check(0))
    # Training settings this variant overrides; null keeps `train`'s value.
    epochs: Optional[int] = field(default=None, metadata=_check(1))
    batch_size: Optional[int] = field(default=None, metadata=_check(1))
    lr: Optional[float] = field(default=None, metadata=_check(0, exclusive_min=True))
    weight_decay: Optional[float] = field(default=None, metadata=_check(0))


@dataclass(frozen=True)
class GradientsParams:
    every_n_steps: Union[Literal["auto"], int] = "auto"  # auto: about 10 samples per epoch
    epochs: tuple[Union[int, Literal["last"]], ...] = (0, 1, "last")  # weight snapshots
    probe_size: int = field(default=500, metadata=_check(1))
    include_bias: bool = False


@dataclass(frozen=True)
class SweepParams:
    depths: tuple[int, ...] = (8, 14, 20, 26, 32, 38, 50, 74, 98)
    fixes: tuple[str, ...] = ("none", "bn_rc")
    epochs: int = field(default=5, metadata=_check(1))


# The fixes a sweep can apply, as variant switches.
SWEEP_FIXES = {
    "none": {},
    "bn": {"batch_norm": True},
    "rc": {"residual": True},
    "bn_rc": {"batch_norm": True, "residual": True},
    "he": {"init": "kaiming"},
    "dense": {"dense": True},
    "dsn": {"deep_supervision": True},
}


@dataclass(frozen=True)
class Params:
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    variants: dict[str, Variant] = field(default_factory=dict)
    gradients: GradientsParams = GradientsParams()
    sweep: SweepParams = SweepParams()

    def run(self, variant: str) -> "RunConfig":
        if variant not in self.variants:
            raise ParamsError(f"variants: no variant named {variant!r} "
                              f"(defined: {', '.join(self.variants)})")
        return RunConfig.build(variant, self.variants[variant], self)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs: a variant with its overrides resolved."""

    name: str
    variant: Variant
    model: ModelParams
    train: TrainParams
    gradients: GradientsParams

    @classmethod
    def build(cls, name: str, variant: Variant, params: Params) -> "RunConfig":
        overrides = {k: getattr(variant, k) for k in TRAIN_OVERRIDES
                     if getattr(variant, k) is not None}
        train = dataclasses.replace(params.train, **overrides)
        return cls(name, variant, params.model, train, params.gradients)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def snapshot_epochs(self) -> list[int]:
        last = self.train.epochs
        return sorted({last if e == "last" else e for e in self.gradients.epochs})


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
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{path}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k.replace("_", "").isalnum():
                raise ParamsError(f"{path}.{k}: names may use letters, digits and '_' only")
            out[k] = _convert(v if v is not None else {}, value_type, f"{path}.{k}", {})
        return out
    if origin in (Union, types.UnionType):
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
        raise ParamsError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return value
        raise ParamsError(f"{path}: expected one of {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if not value:
                raise ParamsError(f"{path}: expected a non-empty list")
            return tuple(_convert(v, args[0], f"{path}[{i}]", meta) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{path}[{i}]", meta) for i, (v, a) in enumerate(zip(value, args)))
    # Scalars. bool is a subclass of int in Python: keep `true` out of integer fields.
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
        raise ParamsError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("exclusive_min") and value == low)):
        bound = f"> {low}" if meta.get("exclusive_min") else f">= {low}"
        raise _OutOfRange(f"{path}: must be {bound}, got {value!r}")
    if high is not None and value > high:
        raise _OutOfRange(f"{path}: must be <= {high}, got {value!r}")
    return value


def _build(cls, raw, path: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ParamsError(f"{path}.{key}: unknown key (known: {', '.join(known)})".lstrip("."))
    kwargs = {name: _convert(raw[name], hints[name], f"{path}.{name}".lstrip("."), f.metadata)
              for name, f in known.items() if name in raw}
    return cls(**kwargs)


def _validate(p: Params) -> None:
    if not p.variants:
        raise ParamsError("variants: define at least one variant")
    for name, v in p.variants.items():
        depth_error(v.depth, p.model.stages, f"variants.{name}.depth")
        if v.residual_reduction and not v.residual:
            raise ParamsError(f"variants.{name}.residual_reduction: needs residual: true")
    for d in p.sweep.depths:
        depth_error(d, p.model.stages, "sweep.depths")
    for fix in p.sweep.fixes:
        if fix not in SWEEP_FIXES:
            raise ParamsError(f"sweep.fixes: unknown fix {fix!r} (known: {', '.join(SWEEP_FIXES)})")
    for e in p.gradients.epochs:
        if e != "last" and not 0 <= e <= p.train.epochs:
            raise ParamsError(f"gradients.epochs: {e} is outside 0..train.epochs ({p.train.epochs})")
    if isinstance(p.gradients.every_n_steps, int) and p.gradients.every_n_steps < 1:
        raise ParamsError(f"gradients.every_n_steps: must be >= 1 or 'auto', "
                          f"got {p.gradients.every_n_steps}")
    if p.train.device not in ("auto", "cpu", "cuda", "mps") and not (
            p.train.device.startswith("cuda:") and p.train.device[5:].isdigit()):
        raise ParamsError(f"train.device: expected auto | cpu | cuda | cuda:N | mps, "
                          f"got {p.train.device!r}")
    if any(s <= 0 for s in p.train.std):
        raise ParamsError(f"train.std: every value must be > 0, got {list(p.train.std)}")


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


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-3` is a string; DVC (ruamel, YAML 1.2) reads it as a
    number. Read it as a number too, so `lr: 1e-3` means the same to both."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def load(path: Path | str = PARAMS_FILE) -> Params:
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (data, model, train, variants, "
                          f"gradients, sweep), got {type(raw).__name__}")
    return parse(raw)
