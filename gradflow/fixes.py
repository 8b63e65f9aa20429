"""The fixes: one small class each, and the registry everything else reads.

A fix is a switch in a variant of params.yaml (`batch_norm: true`) and the piece of the
network it builds. `gradflow.model.VGG` asks every switched-on fix for its pieces at four
places of the plain design, so a fix overrides only the hooks it needs:

  norm(width)             the layer after each block conv, before the activation (default none)
  skip(reduce)            whether a block adds its input before its last activation
  mixer(n_inputs, width)  what a block sees: a module over the stage's earlier outputs
  head(width)             a companion classifier on an early stage's output
  initialise(model)       re-initialise the built network's weights

The registry also says what the rest of the pipeline needs to know about a fix: the
`Variant` field its switch becomes (gradflow.params), its name in `sweep.fixes`, whether it
is one of the coursework's fixes (the report expects a VGG_38 with it to learn, and lists
anything else as a control), and whether gradflow.theory has a mean-field form for it (no
form: no prediction is drawn). A new fix is a `@register`ed class here and its switch in
params.yaml.
"""

from __future__ import annotations

import torch
from torch import nn

from gradflow.verdict import NUM_CLASSES


FIXES: dict[str, "Fix"] = {}  # switch -> fix, in the order the classes below are defined


def register(cls: type["Fix"]) -> type["Fix"]:
    """Class decorator: add a fix to the registry (its order is the `Variant` fields' order)."""
    FIXES[cls.switch] = cls()
    return cls


class Fix:
    switch: str                    # its key in a variant, and the `Variant` field
    values: tuple = (False, True)  # (off, on): the switch's default and the value that turns it on
    sweep: str | None = None       # its name in sweep.fixes; None: not swept on its own
    coursework: bool = False       # one of the coursework's fixes of VGG_38
    mean_field: str | None = None  # how gradflow.theory predicts it; None: no mean-field form
    needs: str | None = None       # the switch of a fix it only makes sense with
    piece: str = ""                # module-name prefix of its mixers or heads (`dense_0_1`)

    def norm(self, width: int) -> nn.Module | None:
        return None

    def skip(self, reduce: bool) -> bool:
        return False

    def mixer(self, n_inputs: int, width: int) -> nn.Module | None:
        return None

    def head(self, width: int) -> nn.Module | None:
        return None

    def initialise(self, model: nn.Module) -> None:
        pass

    def conv_variance(self, fan_in: int) -> tuple[float, float] | None:
        """(Var[w], Var[b]) of a conv's weights and bias after `initialise`, for the mean-field
        theory; None: the initialisation is PyTorch's default."""
        return None


@register
class BatchNorm(Fix):
    """BN after every conv, before the activation (Ioffe & Szegedy 2015)."""
    switch, sweep, coursework = "batch_norm", "bn", True
    mean_field = "normalises the covariance: centre over the batch, divide by the std"

    def norm(self, width: int) -> nn.Module:
        return nn.BatchNorm2d(width)


@register
class Residual(Fix):
    """x + body(x) before a processing block's last activation (He et al. 2016)."""
    switch, sweep, coursework = "residual", "rc", True

    def skip(self, reduce: bool) -> bool:
        return not reduce


@register
class ResidualReduction(Fix):
    """The same skip on the reduction blocks, average-pooled to their output's size."""
    switch, needs = "residual_reduction", "residual"

    def skip(self, reduce: bool) -> bool:
        return reduce


@register
class HeInit(Fix):
    """He initialisation: the fix of the root cause, no new layers (He et al. 2015)."""
    switch, values, sweep = "init", ("default", "kaiming"), "he"
    mean_field = "the conv weights' variance 2 / ((1 + 0.01^2) fan_in), biases 0"

    def initialise(self, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                # fan_in with the leaky ReLU gain: Var[w] = 2 / ((1 + 0.01^2) fan_in)
                nn.init.kaiming_normal_(m.weight, a=0.01, mode="fan_in", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def conv_variance(self, fan_in: int) -> tuple[float, float]:
        return 2 / ((1 + 0.01 ** 2) * fan_in), 0.0


class DenseInput(nn.Module):
    """Dense connectivity: concatenate the stage input and all earlier block outputs, and
    bring them back to F channels with a 1x1 conv, so the next block is unchanged."""

    def __init__(self, n_inputs: int, width: int):
        super().__init__()
        self.transition = nn.Conv2d(n_inputs * width, width, kernel_size=1, bias=False)

    def forward(self, features: list) -> torch.Tensor:
        return self.transition(torch.cat(features, dim=1))


@register
class Dense(Fix):
    """Each block sees all earlier outputs of its stage (Huang et al. 2017)."""
    switch, sweep, coursework, piece = "dense", "dense", True, "dense"

    def mixer(self, n_inputs: int, width: int) -> nn.Module | None:
        return DenseInput(n_inputs, width) if n_inputs > 1 else None


class AuxHead(nn.Module):
    """Deep supervision: a companion classifier (global pool + linear) on a stage's output."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


@register
class DeepSupervision(Fix):
    """Auxiliary classifiers after the early stages, their loss weighted by train.aux_weight
    (Lee et al. 2015)."""
    switch, sweep, coursework, piece = "deep_supervision", "dsn", True, "aux_head"

    def head(self, width: int) -> nn.Module:
        return AuxHead(width)


def switched_on(variant) -> list[Fix]:
    """The fixes a variant switches on, in registry order."""
    return [f for f in FIXES.values() if getattr(variant, f.switch) == f.values[1]]


def sweep_switches(name: str) -> dict | None:
    """A sweep.fixes entry as variant switches: `none`, one fix's sweep name, or several joined
    by `_` (`bn_rc`); None for a name that is none of these."""
    by_sweep = {f.sweep: f for f in FIXES.values() if f.sweep}
    parts = [] if name == "none" else name.split("_")
    if not all(p in by_sweep for p in parts):
        return None
    return {by_sweep[p].switch: by_sweep[p].values[1] for p in parts}


def sweep_names() -> list[str]:
    return ["none"] + [f.sweep for f in FIXES.values() if f.sweep]
