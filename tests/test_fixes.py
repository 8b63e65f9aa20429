"""Why VGG_38 does not train, and what each fix changes (issue 7), on the synthetic source.

Two measurements, each against the plain VGG_38 with the same seed and the same images:

1. At initialisation, at the real width (32 filters, 32x32 images): the mean |grad| of the first
   conv, and its ratio to the last conv's. The plain net's first conv gets ~1e-18, 1e-14 of its
   last conv's: 36 un-normalised convs with PyTorch's default init each keep ~1/6 of the signal
   variance. Every fix lifts the first-conv gradient by over 1e6x; BN, RC, BN+RC and He init
   also make the first/last ratio of order one or more, while dense connections and deep
   supervision leave a steep slope (first/last ~1e-3 and ~1e-5): a partial rescue.

2. A short training run: the main head's loss on fresh images (each batch seen once, so it
   cannot be memorised, and labels are uniform so a bias alone cannot beat chance) against the
   chance loss ln(100) = 4.605.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stages.capture import grad_stats
from stages.data import Augment, synthetic
from stages.model import VGG, probed_parameters
from stages.params import SWEEP_FIXES, ModelParams, Variant
from stages.training import loss_fn

CHANCE = math.log(100)
FIXES = [f for f in SWEEP_FIXES if f != "none"]  # bn, rc, bn_rc, he, dense, dsn
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def variant(name: str) -> Variant:
    return Variant(depth=8) if name == "VGG_08" else Variant(depth=38, **SWEEP_FIXES[name])


def normalized(n: int, seed: int = 0, stream: int = 0):
    images, labels = synthetic(n, seed, stream)
    return Augment(MEAN, STD, 0, False, torch.device("cpu")).normalize(images), labels


def conv_grads(model: VGG, x: torch.Tensor, y: torch.Tensor, aux_weight: float) -> tuple[float, float]:
    """Mean |grad| of the first and the last 3x3 conv after one training-mode backward pass."""
    model.train()
    model.zero_grad(set_to_none=True)
    logits, aux = model(x)
    loss_fn(logits, aux, y, aux_weight, len(y))[0].backward()
    probed = [(n, p) for n, p in probed_parameters(model) if p.dim() == 4 and p.shape[-1] == 3]
    stats = grad_stats([p for _, p in probed])[:, 0]  # mean |g| per layer
    assert probed[0][0] == "input_conv_conv_0" and probed[-1][0] == "reduction_block_2_conv_1"
    return stats[0].item(), stats[-1].item()


@pytest.fixture(scope="module")
def at_init() -> dict[str, tuple[float, float]]:
    """(first-conv, last-conv) mean |grad| at initialisation for VGG_08, VGG_38 and each fix:
    32 filters, 32 synthetic 32x32 images, seed 0."""
    x, y = normalized(32)
    out = {}
    for name in ["VGG_08", "none", *FIXES]:
        torch.manual_seed(0)
        v = variant(name)
        out[name] = conv_grads(VGG(v, ModelParams(filters=32)), x, y, v.aux_weight)
    return out


def test_diagnosis_vgg38_gradients_vanish_before_the_first_conv(at_init):
    first, last = at_init["none"]
    assert first / last < 1e-6  # measured 2.8e-14
    assert first < 1e-12  # measured 2e-18
    first, last = at_init["VGG_08"]
    assert first / last > 1e-3  # measured 0.21


# Measured (32 filters, 32 images, seed 0), first-conv mean |grad| / the plain VGG_38's, and
# first / last conv:  bn 9e17, 369;  rc 7e12, 0.18;  bn_rc 4e16, 18;  he 5e13, 0.56;
# dense 9e10, 1.5e-3;  dsn 2.8e9, 4.5e-5.
FIRST_LAST = {  # (lower, upper) bounds on first/last, ~10x beyond what was measured
    "bn": (1.0, math.inf), "rc": (1e-2, math.inf), "bn_rc": (1.0, math.inf), "he": (1e-2, math.inf),
    "dense": (1e-5, 1e-1),  # partial: the slope from the last conv to the first stays steep
    "dsn": (1e-7, 1e-3),
}


@pytest.mark.parametrize("fix", FIXES)
def test_fix_lifts_the_first_conv_gradient(at_init, fix):
    plain_first, _ = at_init["none"]
    first, last = at_init[fix]
    assert first / plain_first > 1e6
    low, high = FIRST_LAST[fix]
    assert low < first / last < high, f"{fix}: first/last conv {first / last:.3g}"
