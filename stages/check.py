"""check stage: params.yaml -> data/config/*.json, the resolved config of every run.

    python -m stages.check                 (dvc.yaml runs it as check)

DVC deletes a stage's outputs before it runs the stage's command, so a bad value that only
the train stage noticed would already have cost that variant its model and metrics. This
stage validates the whole file first (the typed loader every stage uses): a bad value stops
`dvc repro` / `dvc exp run` here, with exit code 2 and the key path on stderr, before
anything is deleted (its output is persistent: DVC leaves it in place while the check runs).

It then writes what each stage reads, resolved, one small byte-stable JSON each:
data/config/data.json for fetch, data/config/<variant>.json for train@ and gradients@, and
data/config/sweep-<depth>-<fix>.json for sweep@. Those stages depend on their file, not on
params sections, so a change reruns exactly the runs whose settings it changes.
"""

from __future__ import annotations

import argparse
import json
import sys

from gradflow import params as P
from gradflow import paths
from gradflow.cli import cli, drift_note
from gradflow.files import write_text
from gradflow.memory import require_fits
from gradflow.vega import write_page
from gradflow.workspace import require_safe_outputs


@cli
def main(argv: list[str]) -> None:
    # The check runs first in every `dvc exp run` and trains nothing: its seconds are torch's
    # import and the networks built on the meta device for the memory estimate (gradflow/memory.py).
    parser = argparse.ArgumentParser(prog="python -m stages.check", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    stamp = P.params_stamp()  # before reading it: a change while the check runs shows later
    params = P.load(dvc_yaml=paths.DVC_YAML)
    P.device_error(params.train.device)  # a device this machine lacks
    require_fits(params)  # a run too big for the device's memory (gradflow/memory.py)
    require_safe_outputs(params.variants)  # a user's files where outputs go (gradflow/workspace.py)
    configs = {paths.data_config(): P.resolved_json(params.data)}
    configs.update({paths.run_config(name): run.to_json() for name, run in params.runs().items()})
    for path, text in configs.items():
        if not path.is_file() or path.read_text() != text:  # unchanged files keep their mtime
            write_text(path, text)
    # What was validated, by stat: later stages reread params.yaml only if it changed since
    # (a second `dvc exp run` in this workspace writes its -S values before DVC's lock).
    write_text(paths.CHECKED_PARAMS, json.dumps(stamp) + "\n")
    for stale in paths.CONFIG.glob("*.json"):  # runs no longer in params.yaml
        if stale not in configs:
            stale.unlink()
    print(f"check: params.yaml is valid; {len(configs)} resolved configs in {paths.CONFIG}/",
          file=sys.stderr)
    note = drift_note()  # what this run carries over from earlier `dvc exp run -S`, if anything
    if note:
        print(f"check: {note}", file=sys.stderr)
    if write_page():  # once per clone (a few seconds): `dvc plots show` pages that draw offline
        print(f"check: {paths.PLOTS_PAGE}: the offline page for dvc plots show / diff", file=sys.stderr)


if __name__ == "__main__":
    main()
