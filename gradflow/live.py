"""Live progress of a training run, through DVCLive: per-epoch metrics in dvclive/<run>/ while
it trains, and its timings at the end.

Not a DVC output, on purpose: DVCLive's tables carry timestamps and the timings differ on every
run, while every DVC output must be byte-identical for equal params and seed. The same numbers
without the timings are the stage's real outputs (plots/history/, metrics/).
"""

from __future__ import annotations

from pathlib import Path

from gradflow import paths

LIVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds")


class LiveLog:
    def __init__(self, name: str, enabled: bool = True):
        self.dir: Path = paths.live(name)
        self.enabled, self.live, self.logged = enabled, None, 0

    def epoch(self, history: list[dict]) -> None:
        """Log the rows of `history` not logged yet (all of them after a resume: the log is
        rewritten from the checkpoint's history, so it never holds an epoch twice)."""
        if not self.enabled:
            return
        if self.live is None:
            from dvclive import Live  # only a training run needs it
            self.live = Live(dir=str(self.dir), resume=False, dvcyaml=None, save_dvc_exp=False,
                             report=None)
        for row in history[self.logged:]:
            self.live.step = row["epoch"]
            for key in LIVE_METRICS:
                if key in row:
                    self.live.log_metric(key, row[key])
            self.live.next_step()
        self.logged = len(history)

    def end(self, summary: dict) -> None:
        if self.live is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.live.summary[key] = value
            self.live.log_params({k: v for k, v in summary.items() if isinstance(v, str)})
            self.live.end()
