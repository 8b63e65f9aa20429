"""Does a run learn? One word per run, computed from its own numbers by a stated rule.

CIFAR-100 (and the synthetic stand-in) has 100 classes: a network that has learnt nothing
predicts the uniform distribution, whose cross-entropy is ln 100 = 4.605, and is right 1% of
the time. Whether a validation accuracy is above that 1% is a question of statistics: with n
validation images, a network at chance gets Binomial(n, 0.01) of them right (standard error
sqrt(0.01 * 0.99 / n): 0.0020 for 2,500 images, 0.0031 for 1,000), and the best of E epochs is
the largest of E such draws. So "learns" needs an accuracy that chance reaches in the best of E
epochs with probability below ALPHA (one-sided; by the union bound, E times the single-epoch tail,
from the exact binomial). The rule, in the order it is applied:

  diverged         the training loss became non-finite, or exceeded 10 x ln 100 at an
                   epoch's end (training stops there)
  learns           best validation accuracy significantly above chance: at least
                   `learns_threshold(n, E)` (for n = 2,500 and E = 3: 0.0180, chance + 4.0 SE)
  stuck at chance  final training loss within 0.02 of ln 100, and the accuracy not
                   significantly above chance
  undecided        anything else: moving, but not yet clearly either
"""

from __future__ import annotations

import math
from functools import lru_cache

NUM_CLASSES = 100  # CIFAR-100 and the synthetic stand-in; the model's head has as many outputs
CHANCE_LOSS = math.log(NUM_CLASSES)
CHANCE_ACC = 1 / NUM_CLASSES
DIVERGED_LOSS = 10 * CHANCE_LOSS
STUCK_LOSS_BAND = 0.02
ALPHA = 1e-3  # the chance that a run at chance is called "learns", whatever n and E

VERDICTS = ("learns", "stuck at chance", "diverged", "undecided")

RULE = (f"diverged: training loss non-finite or above 10 x ln 100 ({DIVERGED_LOSS:.1f}) at an "
        f"epoch's end; learns: best validation accuracy significantly above chance (1/{NUM_CLASSES}): "
        f"a run at chance reaches it in the best of its E evaluated epochs with probability below "
        f"{ALPHA:g} (exact binomial tail on the n validation images, times E); stuck at chance: final "
        f"training loss within {STUCK_LOSS_BAND} of ln 100 ({CHANCE_LOSS:.3f}) and the accuracy not "
        f"significantly above chance; undecided: anything else")


@lru_cache(maxsize=None)
def _threshold_correct(n: int, epochs: int) -> int:
    """The fewest correct answers out of n that chance reaches with probability < ALPHA / epochs."""
    level, tail, k = ALPHA / max(1, epochs), 1.0, 0
    log_p, log_q = math.log(CHANCE_ACC), math.log1p(-CHANCE_ACC)
    while tail >= level and k <= n:  # tail = P(X >= k); step k up, dropping P(X = k)
        tail -= math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                         + k * log_p + (n - k) * log_q)
        k += 1
    return k


def learns_threshold(n: int, epochs: int) -> float:
    """The lowest best-of-`epochs` validation accuracy on n images that counts as "learns"."""
    return _threshold_correct(n, epochs) / n


def standard_errors(accuracy: float, n: int) -> float:
    """How many of chance's standard errors `accuracy` lies above chance, on n images."""
    return (accuracy - CHANCE_ACC) / math.sqrt(CHANCE_ACC * (1 - CHANCE_ACC) / n)


def rule_numbers(n: int, epochs: int) -> str:
    """The rule's numbers for one evaluation size, for results.md."""
    threshold = learns_threshold(n, epochs)
    return (f"n = {n:,} validation images, chance {CHANCE_ACC:g} (standard error "
            f"{math.sqrt(CHANCE_ACC * (1 - CHANCE_ACC) / n):.4f}), best of E = {epochs} epochs, "
            f"alpha {ALPHA:g}: learns at best validation accuracy >= {threshold:.4f} "
            f"({_threshold_correct(n, epochs)} of {n:,} right; chance + "
            f"{standard_errors(threshold, n):.1f} standard errors)")


def is_divergent(loss: float) -> bool:
    """The end-of-epoch test that stops a run: a loss no learning run reaches."""
    return not math.isfinite(loss) or loss > DIVERGED_LOSS


def verdict(final_train_loss: float | None, best_val_acc: float | None, diverged: bool, *,
            n_val: int, epochs: int) -> str:
    """The rule above, for a run evaluated on `n_val` validation images after each of `epochs`
    epochs."""
    if diverged or final_train_loss is None or is_divergent(final_train_loss):
        return "diverged"
    if n_val > 0 and best_val_acc is not None and best_val_acc >= learns_threshold(n_val, epochs):
        return "learns"
    if abs(final_train_loss - CHANCE_LOSS) <= STUCK_LOSS_BAND:
        return "stuck at chance"
    return "undecided"
