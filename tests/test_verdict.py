"""The verdict rule (gradflow.verdict): "learns" is a significance test against chance on the
validation images, with the best-of-epochs selection accounted for."""

from __future__ import annotations

import math

import pytest
import torch

from gradflow.verdict import (ALPHA, CHANCE_ACC, CHANCE_LOSS, learns_threshold, standard_errors,
                              verdict)


def test_threshold_is_the_exact_binomial_tail():
    n, epochs = 2500, 3
    k = round(learns_threshold(n, epochs) * n)
    p = torch.distributions.Binomial(n, torch.tensor(CHANCE_ACC, dtype=torch.float64))
    tail = lambda j: float(sum(math.exp(p.log_prob(torch.tensor(float(i), dtype=torch.float64)))
                               for i in range(j, 120)))
    assert tail(k) < ALPHA / epochs <= tail(k - 1)  # the smallest count chance rarely reaches
    assert learns_threshold(2500, 3) == 0.018 and learns_threshold(1000, 3) == 0.023


def test_more_images_and_fewer_epochs_lower_the_bar():
    assert learns_threshold(10_000, 3) < learns_threshold(2500, 3) < learns_threshold(1000, 3)
    assert learns_threshold(2500, 1) < learns_threshold(2500, 3) < learns_threshold(2500, 100)
    assert 3.5 < standard_errors(learns_threshold(2500, 3), 2500) < 4.5


def test_chance_runs_are_rarely_called_learns():
    """Simulated runs at chance (each epoch's correct count a fresh Binomial draw): the share
    called "learns" stays near ALPHA, never far above it."""
    g = torch.Generator().manual_seed(0)
    n, epochs, runs = 1000, 3, 20_000
    correct = torch.binomial(torch.full((runs, epochs), float(n)), torch.full((runs, epochs), CHANCE_ACC),
                             generator=g)
    best = correct.max(dim=1).values / n
    called = sum(verdict(CHANCE_LOSS, float(b), False, n_val=n, epochs=epochs) == "learns" for b in best)
    assert called / runs < 3 * ALPHA


@pytest.mark.parametrize("loss, acc, diverged, expected", [
    (CHANCE_LOSS + 0.001, 0.011, False, "stuck at chance"),
    (CHANCE_LOSS - 0.019, 0.017, False, "stuck at chance"),  # below the bar, loss in the band
    (CHANCE_LOSS - 0.05, 0.017, False, "undecided"),
    (CHANCE_LOSS - 0.001, 0.018, False, "learns"),  # significant, even with the loss at ln 100
    (4.0, 0.2, True, "diverged"),
    (float("nan"), None, False, "diverged"),
    (50.0, 0.2, False, "diverged"),
])
def test_rule(loss, acc, diverged, expected):
    assert verdict(loss, acc, diverged, n_val=2500, epochs=3) == expected
