"""The coursework's VGG family, and the published fixes as switches.

The plain network is exactly the reference's (pytorch_mlp_framework): an entry conv + BN,
`stages` stages of `blocks_per_stage` processing blocks and one reduction block, global
average pooling and a linear classifier; every conv is 3x3 with F filters and is followed by
a leaky ReLU; PyTorch's default initialisation. depth = 2 + stages * (2 * blocks + 2) counts
the convs plus the linear layer: 8 with no processing blocks, 38 with five per stage.

Each fix is one small piece switched on by a `Variant` field:
  batch_norm          BN after every conv, before the activation        (Ioffe & Szegedy 2015)
  residual            x + body(x) before a processing block's last act. (He et al. 2016)
  residual_reduction  the same on reduction blocks, avg-pooled skip
  dense               each block sees all earlier outputs of its stage  (Huang et al. 2017)
  deep_supervision    auxiliary classifiers after the early stages      (Lee et al. 2015)
  init: kaiming       He initialisation, the fix of the root cause

Module names make the reference's layer names: a weight `block_0_1.conv_0.weight` is the
layer `block_0_1_conv_0`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from gradflow.params import ModelParams, Variant, depth_error
from gradflow.verdict import NUM_CLASSES

LOGITS = "logit_linear_layer"  # the classifier's layer: its output is the logits


def blocks_per_stage(depth: int, stages: int) -> int:
    depth_error(depth, stages, "depth")
    return (depth - 2 - 2 * stages) // (2 * stages)


def conv3x3(c_in: int, c_out: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias)


class ConvBlock(nn.Module):
    """conv -> [BN] -> lrelu -> [avgpool] -> conv -> [BN] -> (+ skip) -> lrelu.

    A processing block (no bias, no pooling) or a reduction block (bias, avg_pool2d(2) between
    the convs), as in the reference. With `residual` the block input, average-pooled where the
    block halves the resolution, is added before the last activation.
    """

    def __init__(self, width: int, *, reduce: bool, batch_norm: bool, residual: bool):
        super().__init__()
        self.reduce, self.residual = reduce, residual
        self.conv_0 = conv3x3(width, width, bias=reduce)
        self.bn_0 = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.conv_1 = conv3x3(width, width, bias=reduce)
        self.bn_1 = nn.BatchNorm2d(width) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn_0(self.conv_0(x)))
        if self.reduce:
            out = F.avg_pool2d(out, 2)
        out = self.bn_1(self.conv_1(out))
        if self.residual:
            out = out + (F.avg_pool2d(x, 2) if self.reduce else x)
        return F.leaky_relu(out)


class DenseInput(nn.Module):
    """Dense connectivity: concatenate the stage input and all earlier block outputs, and
    bring them back to F channels with a 1x1 conv, so the next block is unchanged."""

    def __init__(self, n_inputs: int, width: int):
        super().__init__()
        self.transition = nn.Conv2d(n_inputs * width, width, kernel_size=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.transition(torch.cat(features, dim=1))


class AuxHead(nn.Module):
    """Deep supervision: a companion classifier (global pool + linear) on a stage's output."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


class VGG(nn.Module):
    def __init__(self, variant: Variant, model: ModelParams):
        super().__init__()
        v = variant
        width, n_blocks = model.filters, blocks_per_stage(v.depth, model.stages)
        self.depth, self.stages, self.n_blocks = v.depth, model.stages, n_blocks
        self.dense, self.deep_supervision = v.dense, v.deep_supervision

        self.input_conv = nn.Module()
        self.input_conv.conv_0 = conv3x3(3, width, bias=False)
        self.input_conv.bn_0 = nn.BatchNorm2d(width)
        for s in range(model.stages):
            for i in range(n_blocks):
                if v.dense and i > 0:
                    setattr(self, f"dense_{s}_{i}", DenseInput(i + 1, width))
                setattr(self, f"block_{s}_{i}", ConvBlock(
                    width, reduce=False, batch_norm=v.batch_norm, residual=v.residual))
            if v.dense and n_blocks > 0:
                setattr(self, f"dense_{s}_{n_blocks}", DenseInput(n_blocks + 1, width))
            setattr(self, f"reduction_block_{s}", ConvBlock(
                width, reduce=True, batch_norm=v.batch_norm, residual=v.residual_reduction))
            # The last stage is supervised by the main classifier already.
            if v.deep_supervision and s < model.stages - 1:
                setattr(self, f"aux_head_{s}", AuxHead(width))
        self.logit_linear_layer = nn.Linear(width, NUM_CLASSES)

        if v.init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    # fan_in with the leaky ReLU gain: Var[w] = 2 / ((1 + 0.01^2) fan_in)
                    nn.init.kaiming_normal_(m.weight, a=0.01, mode="fan_in",
                                            nonlinearity="leaky_relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (logits, auxiliary logits); the auxiliary list is empty unless deep
        supervision is on and the model is in training mode."""
        x = F.leaky_relu(self.input_conv.bn_0(self.input_conv.conv_0(x)))
        aux = []
        for s in range(self.stages):
            features = [x]
            for i in range(self.n_blocks + 1):
                if self.dense and i > 0:
                    x = getattr(self, f"dense_{s}_{i}")(features)
                block = getattr(self, f"block_{s}_{i}" if i < self.n_blocks else f"reduction_block_{s}")
                x = block(x)
                features.append(x)
            if self.deep_supervision and self.training and s < self.stages - 1:
                aux.append(getattr(self, f"aux_head_{s}")(x))
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
