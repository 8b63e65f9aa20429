"""Does a run learn? One word per run, computed from its own numbers by a stated rule.

CIFAR-100 (and the synthetic stand-in) has 100 classes: a network that has learnt nothing
predicts the uniform distribution, whose cross-entropy is ln 100 = 4.605, and is right 1% of
the time. The rule, in the order it is applied:

  diverged         the training loss became non-finite, or exceeded 10 x ln 100 at an
                   epoch's end (training stops there)
  stuck at chance  final training loss within 0.02 of ln 100, and best validation accuracy
                   below 2x chance (0.02)
  learns           best validation accuracy at least 5x chance (0.05)
  undecided        anything else: moving, but not yet clearly either
"""

from __future__ import annotations

import math

NUM_CLASSES = 100
CHANCE_LOSS = math.log(NUM_CLASSES)
CHANCE_ACC = 1 / NUM_CLASSES
DIVERGED_LOSS = 10 * CHANCE_LOSS
STUCK_LOSS_BAND = 0.02
STUCK_ACC = 2 * CHANCE_ACC
LEARNS_ACC = 5 * CHANCE_ACC

VERDICTS = ("learns", "stuck at chance", "diverged", "undecided")

RULE = (f"diverged: training loss non-finite or above 10 x ln 100 ({DIVERGED_LOSS:.1f}) at an "
        f"epoch's end; stuck at chance: final training loss within {STUCK_LOSS_BAND} of ln 100 "
        f"({CHANCE_LOSS:.3f}) and best validation accuracy below {STUCK_ACC:.2f} (2x chance); "
        f"learns: best validation accuracy at least {LEARNS_ACC:.2f} (5x chance); "
        f"undecided: anything else")


def is_divergent(loss: float) -> bool:
    """The end-of-epoch test that stops a run: a loss no learning run reaches."""
    return not math.isfinite(loss) or loss > DIVERGED_LOSS


def verdict(final_train_loss: float | None, best_val_acc: float | None, diverged: bool) -> str:
    if diverged or final_train_loss is None or is_divergent(final_train_loss):
        return "diverged"
    best_val_acc = best_val_acc or 0.0
    if abs(final_train_loss - CHANCE_LOSS) <= STUCK_LOSS_BAND and best_val_acc < STUCK_ACC:
        return "stuck at chance"
    if best_val_acc >= LEARNS_ACC:
        return "learns"
    return "undecided"
