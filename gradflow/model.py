"""The coursework's VGG family, and the published fixes as switches.

The plain network is exactly the reference's (pytorch_mlp_framework): an entry conv + BN,
`stages` stages of `blocks_per_stage` processing blocks and one reduction block, global
average pooling and a linear classifier; every conv is 3x3 with F filters and is followed by
a leaky ReLU; PyTorch's default initialisation. depth = 2 + stages * (2 * blocks + 2) counts
the convs plus the linear layer: 8 with no processing blocks, 38 with five per stage.

Each fix is one small class in gradflow/fixes.py, switched on by its `Variant` field; the
network asks the switched-on fixes for its pieces (a norm layer, a skip, a block's input mixer,
an early stage's head, the initialisation) and otherwise builds the plain design.

Module names make the reference's layer names: a weight `block_0_1.conv_0.weight` is the
layer `block_0_1_conv_0`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from gradflow.fixes import switched_on
from gradflow.params import ModelParams, Variant, depth_error
from gradflow.verdict import NUM_CLASSES

LOGITS = "logit_linear_layer"  # the classifier's layer: its output is the logits


def blocks_per_stage(depth: int, stages: int) -> int:
    depth_error(depth, stages, "depth")
    return (depth - 2 - 2 * stages) // (2 * stages)


def conv3x3(c_in: int, c_out: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias)


class ConvBlock(nn.Module):
    """conv -> norm -> lrelu -> [avgpool] -> conv -> norm -> (+ skip) -> lrelu.

    A processing block (no bias, no pooling) or a reduction block (bias, avg_pool2d(2) between
    the convs), as in the reference; the norm is a fix's (batch norm) or none. With `residual`
    the block input, average-pooled where the block halves the resolution, is added before the
    last activation.
    """

    def __init__(self, width: int, *, reduce: bool, norm, residual: bool):
        super().__init__()
        self.reduce, self.residual = reduce, residual
        self.conv_0 = conv3x3(width, width, bias=reduce)
        self.bn_0 = norm(width)
        self.conv_1 = conv3x3(width, width, bias=reduce)
        self.bn_1 = norm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn_0(self.conv_0(x)))
        if self.reduce:
            out = F.avg_pool2d(out, 2)
        out = self.bn_1(self.conv_1(out))
        if self.residual:
            out = out + (F.avg_pool2d(x, 2) if self.reduce else x)
        return F.leaky_relu(out)


class VGG(nn.Module):
    def __init__(self, variant: Variant, model: ModelParams):
        super().__init__()
        fixes = switched_on(variant)
        width, n_blocks = model.filters, blocks_per_stage(variant.depth, model.stages)
        self.depth = variant.depth

        def norm(channels: int) -> nn.Module:  # the first fix's that has one, else none
            return next((m for f in fixes if (m := f.norm(channels)) is not None), nn.Identity())

        self.input_conv = nn.Module()
        self.input_conv.conv_0 = conv3x3(3, width, bias=False)
        self.input_conv.bn_0 = nn.BatchNorm2d(width)
        # The forward plan: per stage, its (mixer, block) names in order and its head's name.
        self.plan: list[tuple[list[tuple[str | None, str]], str | None]] = []
        for s in range(model.stages):
            steps = []
            for i in range(n_blocks + 1):
                reduce = i == n_blocks
                mixer = self._add(fixes, lambda f: f.mixer(i + 1, width), f"{s}_{i}")
                block = f"reduction_block_{s}" if reduce else f"block_{s}_{i}"
                setattr(self, block, ConvBlock(width, reduce=reduce, norm=norm,
                                               residual=any(f.skip(reduce) for f in fixes)))
                steps.append((mixer, block))
            # The last stage is supervised by the main classifier already.
            head = self._add(fixes, lambda f: f.head(width), str(s)) if s < model.stages - 1 else None
            self.plan.append((steps, head))
        self.logit_linear_layer = nn.Linear(width, NUM_CLASSES)
        # On the meta device the network is shapes only (gradflow/memory.py, gradflow/theory.py):
        # drawing initial values there would import torch._dynamo, ~1 s of the check stage.
        if not self.logit_linear_layer.weight.is_meta:
            for f in fixes:
                f.initialise(self)

    def _add(self, fixes: list, build, suffix: str) -> str | None:
        """Register the piece of the first fix that builds one here, as `<its piece>_<suffix>`."""
        for f in fixes:
            module = build(f)
            if module is not None:
                setattr(self, f"{f.piece}_{suffix}", module)
                return f"{f.piece}_{suffix}"
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (logits, auxiliary logits); the auxiliary list is empty unless a fix adds
        heads and the model is in training mode."""
        x = F.leaky_relu(self.input_conv.bn_0(self.input_conv.conv_0(x)))
        aux = []
        for steps, head in self.plan:
            features = [x]  # the stage input and each block's output: what a mixer sees
            for mixer, block in steps:
                if mixer:
                    x = getattr(self, mixer)(features)
                x = getattr(self, block)(x)
                features.append(x)
            if head and self.training:
                aux.append(getattr(self, head)(x))
        return self.logit_linear_layer(x.mean(dim=(2, 3))), aux


def is_conv(layer: str) -> bool:
    """Whether a probed layer name (`block_0_1_conv_0`) is a 3x3 conv's weight."""
    return re.search(r"conv_\d+$", layer) is not None


def layer_name(param_name: str) -> str:
    """`block_0_1.conv_0.weight` -> `block_0_1_conv_0`; biases keep a `_bias` suffix."""
    stem, _, kind = param_name.rpartition(".")
    return stem.replace(".", "_") + ("_bias" if kind == "bias" else "")


def probed_parameters(model: nn.Module, include_bias: bool = False) -> list[tuple[str, nn.Parameter]]:
    """The parameters whose gradients we measure, in forward order, named like the reference."""
    return [(layer_name(n), p) for n, p in model.named_parameters()
            if p.requires_grad and (include_bias or not n.endswith(".bias"))]


def depth_positions(names: list[str]) -> list[float]:
    """x for comparing variants layer by layer, from probed layer names in forward order: the
    k-th conv or linear layer sits at k, so every variant spans 1..depth; a BN, dense-transition,
    auxiliary-head or bias entry sits half a step after the layer it follows. (Plain layer_index
    would stretch a BN net to twice its depth.) Used by the probe and capture tables (`depth`
    column) and by the figures, so the DVC charts and the PNGs line up the same way."""
    x, k = [], 0
    for name in names:
        if (is_conv(name) or name.endswith("linear_layer")) and not name.startswith("aux"):
            k += 1
            x.append(float(k))
        else:
            x.append(k + 0.5)
    return x


def count_layers(model: nn.Module) -> dict[str, int]:
    return {"conv": sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()),
            "linear": sum(isinstance(m, nn.Linear) for m in model.modules()),
            "batch_norm": sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())}
