"""The quick start: one `dvc exp run` of the finding's five variants at short-run sizes.

    python -m gradflow.quickstart                      # the README's main job
    python -m gradflow.quickstart -S train.seed=1      # the same, with more overrides
    python -m gradflow.quickstart --rest               # the other variants and a depth sweep

What it runs is stated here once (SIZES, FINDING, REST); tests and benchmarks read it from here.
It is a plain `dvc exp run` with `-S` overrides: CIFAR-100 where it can be had, else the
synthetic stand-in; one full epoch (47,500 images, as the coursework's first); the five variants
of the finding, the others removed with `~variants.<name>`; no depth sweep. Then it prints the
results table and the command for the rest.

`dvc exp run -S` writes its values into params.yaml, and the removed variants stay removed in
a commit made now. So the printed command for the rest first restores params.yaml from the
commit the quick start started from (by its hash: it still holds every variant after the
quick start is committed as a baseline), then applies the same sizes: the five variants trained
already are unchanged and skipped, the others train.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from gradflow import paths
from gradflow.cli import cli

# The short-run sizes: one full epoch, 2,500 validation and test images, bf16 where the CPU has
# it natively (gradflow.device), a 200-image probe. data.source is added by `overrides`.
SIZES = ("train.epochs=1", "data.eval_limit=2500", "train.precision=fast", "gradients.probe_size=200")
# The finding, as each variant's verdict on real data after one epoch (benchmarks/seeds.py
# holds the quick start to it): VGG_38 stuck, its fixes and the shallow baseline learn.
FINDING = {"VGG_08": "learns", "VGG_38": "stuck at chance", "VGG_38_BN": "learns",
           "VGG_38_RC": "learns", "VGG_38_BN_RC": "learns"}
NO_SWEEP = ("sweep.depths=[]",)
REST = ("sweep.epochs=1", "sweep.depths=[8,20,38]")  # the rest: every variant, a 3-point sweep


def overrides(source: str, variants: list[str], rest: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """The `-S` values of the quick start (or of the rest) for `variants`, params.yaml's names."""
    values = [f"data.source={source}", *SIZES]
    if rest:
        values += REST
    else:
        values += [*NO_SWEEP, *(f"~variants.{name}" for name in variants if name not in FINDING)]
    return values + list(extra)


def source() -> str:
    """cifar100 where the archive is there or can be downloaded, else synthetic."""
    found = subprocess.run([sys.executable, "-m", "stages.fetch", "--available"])
    return "cifar100" if found.returncode == 0 else "synthetic"


def head() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


@cli
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradflow.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("-S", "--set-param", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override for dvc exp run (repeatable), after the quick start's")
    parser.add_argument("--rest", action="store_true", help="every variant in params.yaml and a depth sweep")
    args = parser.parse_args(argv)
    from gradflow import params as P  # here: `--help` needs no yaml parsing

    variants = list(P.load().variants)  # a bad params.yaml stops here, with its one line
    start = head()
    values = overrides(source(), variants, args.rest, tuple(args.extra))
    command = ["dvc", "exp", "run", *(word for value in values for word in ("-S", value))]
    print(f"quickstart: {shlex.join(command)}", file=sys.stderr, flush=True)
    bin_dir = str(Path(sys.executable).parent)  # dvc, and the stages' `python`, from this venv
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    code = subprocess.run(command, env=env).returncode
    if code:
        return code
    table = paths.RESULTS.read_text().split("| variant", 1)[1].split("\n\n", 1)[0]
    print("| variant" + table)
    if not args.rest:
        file = P.PARAMS_FILE
        restore = f"touch {file} && git checkout {start} -- {file} && " if start else ""
        more = "".join(f" -S {shlex.quote(value)}" for value in args.extra)
        print(f"\nThe other {len(variants) - len(FINDING)} variants and a depth sweep, same sizes: "
              f"{restore}python -m gradflow.quickstart --rest{more}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
