"""Live progress of a training run through DVCLive, the way DVC documents it for a pipeline
stage: dvc.yaml declares `dvclive/<V>/metrics.json` as a metric of train@<V> (cache: false),
so `dvc exp show` and `dvc metrics show` read it while the variant trains.

- Created when training starts (DVCLive clears the folder then), so a run in progress never
  shows the previous experiment's numbers; rewritten after every point of the curves
  (train.eval_every images, and each epoch's end) with that point's numbers (`step` = training
  images seen), so `dvc exp show` moves inside the first epoch.
- No timings in it and no timestamps (`log_metric(..., timestamp=False)`): it is a DVC output,
  and equal runs must write equal bytes. The run's timings go to `dvclive/<V>/timings.json`
  beside it (git-ignored, not an output); the curves are plots/history/<V>.csv, which the train
  stage also rewrites at every point (no DVCLive .tsv copies of the same numbers).
"""

from __future__ import annotations

import sys

from gradflow import paths
from gradflow.files import write_json

LIVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


class LiveLog:
    def __init__(self, name: str, enabled: bool = True):
        self.name, self.dir = name, paths.live(name)
        self.enabled, self.live, self.logged = enabled, None, 0
        if enabled:
            from dvclive import Live  # only a training run needs it
            try:
                self.live = Live(dir=str(self.dir), resume=False, dvcyaml=None, save_dvc_exp=False,
                                 report=None)
            except Exception as e:  # e.g. scmrepo's "Empty git repo" in a repo with no commit yet
                print(f"train: DVCLive could not start ({e}); writing {paths.live_metrics(name)} without it",
                      file=sys.stderr)
                self.dir.mkdir(parents=True, exist_ok=True)
            self.summary({})  # from the start: the last experiment's numbers are gone

    def summary(self, values: dict) -> None:
        if self.live is not None:
            self.live.make_summary()
        else:  # the same file DVCLive writes
            write_json(paths.live_metrics(self.name), values)

    def point(self, points: list[dict]) -> None:
        """Log the points not logged yet (all of them after a resume: the log is rewritten
        from the checkpoint's points, so it never holds a point twice)."""
        if not self.enabled:
            return
        for row in points[self.logged:]:
            if self.live is not None:
                self.live.step = row["images_seen"]
                for key in LIVE_METRICS:
                    self.live.log_metric(key, row[key], plot=False)
            self.summary({**{key: row[key] for key in LIVE_METRICS}, "step": row["images_seen"]})
        self.logged = len(points)

    def end(self, timings: dict) -> None:
        if self.enabled:
            write_json(paths.live_timings(self.name), timings)
        if self.live is not None:
            self.live.end()
