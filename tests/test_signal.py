"""The forward signal share (gradflow/probe.py): on outputs and networks whose share is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradflow.probe import signal_share, signal_shares


def plus_minus(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Images of +1 and -1, half each, at every position: mean 0 and variance 1 across images."""
    x = torch.ones(n, *shape)
    x[n // 2:] = -1
    return x


def test_an_output_the_same_for_every_image_has_share_zero():
    out = torch.randn(1, 4, 3, 3).expand(50, 4, 3, 3)
    assert signal_share(out) == 0.0
    assert signal_share(torch.zeros(50, 10)) == 0.0  # dead: no signal, not 0/0


def test_a_zero_mean_output_has_share_one_and_an_offset_lowers_it_exactly():
    x = plus_minus(40, (2, 4, 4))
    assert signal_share(x) == pytest.approx(1.0, rel=1e-12)
    # + 3 everywhere: variance 1 over a second moment of 1 + 9
    assert signal_share(x + 3) == pytest.approx(0.1, rel=1e-12)
    # logits (images, classes): per class, then averaged: offsets 0 and 1 -> (1 + 1/2) / 2
    logits = plus_minus(40, (2,)) + torch.tensor([0.0, 1.0])
    assert signal_share(logits) == pytest.approx(0.75, rel=1e-12)


class Affine(nn.Module):
    """A 1x1 conv y = w x + b (one channel), then a linear layer of a constant: a network whose
    shares are known exactly."""

    def __init__(self, w: float, b: float):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            self.conv.weight.fill_(w)
            self.conv.bias.fill_(b)
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


def test_a_network_of_known_shares_in_float64():
    x = plus_minus(20, (1, 4, 4))
    shares = signal_shares(Affine(2.0, 3.0), x, {"conv", "head"})
    assert shares["conv"] == pytest.approx(4 / 13, rel=1e-12)  # variance 4 over 4 + 9
    assert shares["head"] == 0.0                               # a constant: every image the same
    # a signal 1e-15 of the output: float32 rounds 3 + 2e-15 to 3 (share 0), float64 keeps it
    tiny = signal_shares(Affine(2e-15, 3.0), x, {"conv", "head"})["conv"]
    assert tiny == pytest.approx(4e-30 / (4e-30 + 9), rel=1e-6)
    assert signal_share((Affine(2e-15, 3.0).conv(x)).float()) == 0.0


def test_results_md_sets_each_control_beside_the_plain_variant_of_its_depth():
    """results.md's controls (plain design, other init or optimizer) are compared with the plain
    variant of their depth, from the run's metrics; fixes and the plain variant get no line."""
    from gradflow.params import Variant
    from gradflow.report import controls_story

    def run(verdict, ratio_init, ratio_final, share_init, share_final):
        return {"metrics": {"verdict": verdict, "log10_grad_ratio_init": ratio_init,
                            "log10_grad_ratio_final": ratio_final, "signal_share_init": share_init,
                            "signal_share_final": share_final}}
    variants = {"VGG_38": Variant(depth=38), "VGG_38_BN": Variant(depth=38, batch_norm=True),
                "VGG_38_EPS": Variant(depth=38, adam_eps=1e-20), "VGG_08_HE": Variant(depth=8, init="kaiming")}
    runs = {"VGG_38": run("stuck at chance", -13.5, -14.0, 6e-29, 1e-30),
            "VGG_38_BN": run("learns", 2.0, 0.7, 0.5, 0.8),
            "VGG_38_EPS": run("stuck at chance", -13.5, 0.1, 6e-29, 2e-22),
            "VGG_08_HE": run("learns", -1.0, 0.0, 1e-3, 0.6)}  # no plain VGG_08 in this run
    lines = controls_story(runs, variants)
    assert len(lines) == 1, lines
    assert lines[0].startswith("- VGG_38_EPS (adam_eps 1e-20): grad ratio at init 3.2e-14, at the end 1.3e+00 "
                               "(VGG_38: 3.2e-14, 1.0e-14)")
    assert "share at init 6e-29, at the end 2e-22 (VGG_38: 6e-29, 1e-30); verdict: stuck at chance." in lines[0]
    assert lines[0].endswith("ratio was 1e+14 times VGG_38's, and it did not learn: its logits stayed "
                             "nearly the same for every image (share 2e-22).")
