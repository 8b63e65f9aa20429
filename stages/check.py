"""check stage: params.yaml -> params.ok, before any other stage runs.

    python -m stages.check                 (dvc.yaml runs it as check)

DVC deletes a stage's outputs before it runs the stage's command, so a bad value that only
the train stage noticed would already have cost that variant its model and metrics. This
stage validates the whole file first (the same typed loader every stage uses): a bad value
stops `dvc repro` / `dvc exp run` here, with exit code 2 and the key path on stderr, before
anything is deleted. Its output is persistent (DVC leaves it in place while the check runs)
and always the same bytes, so passing the check reruns nothing downstream.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradflow import params as P

OUTPUT = Path("params.ok")


def main(argv: list[str] | None = None) -> None:
    # No torch here (P.cli and gradflow.files import it): the check runs first in every
    # `dvc exp run`, so it should take a fraction of a second.
    parser = argparse.ArgumentParser(prog="python -m stages.check", description=__doc__.splitlines()[0])
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        P.load()
    except P.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    OUTPUT.write_text("params.yaml passed gradflow.params.load()\n")  # constant bytes


if __name__ == "__main__":
    main()
