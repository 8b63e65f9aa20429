"""How long does the README's first command take on a fresh clone, and how much of it trains?

    .venv/bin/python benchmarks/quickstart.py          # ~10 min on 2 CPU cores: a whole fresh run

Clones this repository (its committed HEAD) into a temporary folder and runs the README's
quick-start command there exactly as written, in two timed parts: the install (everything before
`.venv/bin/python -m gradflow.quickstart`) and the rest (that: the CIFAR-100 check, `dvc exp run`,
the printed table). Then
it reads each training run's own training time (`seconds_per_epoch` x epochs, which the train
stage logs with DVCLive in dvclive/<variant>/timings.json) and reports the share of the wall
time after the install that went into training steps, and where the other seconds went: each
stage's wall time, from DVC's "Running stage" line to the next (its start-up, its work, DVC
hashing its outputs), timed as the lines arrive.
Writes benchmarks/quickstart.md (the table the command printed is in it too) and copies the
run's Figure 1, Figure 2, the signal-flow figure and results.md to plots/quickstart/, the copy the README shows.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibrate import cpu_model  # noqa: E402

MAIN_JOB = " && .venv/bin/python -m gradflow.quickstart"


def readme_command() -> str:
    block = re.search(r"```bash\n(python3 -m venv .*?gradflow\.quickstart.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return block.group(1)


def timed(command: str, cwd: Path) -> tuple[float, str, dict[str, float]]:
    """(seconds, stdout, {stage: wall seconds}) of a command; where it runs `dvc exp run`, a
    stage runs from DVC's "Running stage '<name>':" line to the next one, the last to the results
    table's first line (or the end); "(before the first stage)" and "(after the stages)" are
    DVC's start and the table."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    errors = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr))
    reader.start()
    lines, marks = [], [("(before the first stage)", 0.0)]
    for line in proc.stdout:
        lines.append(line)
        now = time.perf_counter() - t0
        started = re.match(r"Running stage '(.+)':", line)
        if started:
            marks.append((started.group(1), now))
        elif line.startswith("| variant") and marks[-1][0] != "(after the stages)":
            marks.append(("(after the stages)", now))
    proc.wait()
    reader.join()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"quickstart: exited {proc.returncode}:\n{''.join(lines)[-3000:]}\n{''.join(errors)[-3000:]}")
    ends = [t for _, t in marks[1:]] + [seconds]
    return seconds, "".join(lines), {name: end - t for (name, t), end in zip(marks, ends)}


def stage_table(install_s: float, stages: dict[str, float], train: dict[str, float]) -> list[str]:
    """Where the seconds went: a row per stage, its training steps apart from the rest."""
    rows = ["| part | seconds | training steps | the rest |", "|---|---|---|---|",
            f"| install | {install_s:.0f} | – | {install_s:.0f} |"]
    for name, wall in stages.items():
        steps = train.get(name.removeprefix("train@"), 0.0) if name.startswith("train@") else 0.0
        rows.append(f"| {name} | {wall:.1f} | {f'{steps:.1f}' if steps else '–'} | {wall - steps:.1f} |")
    other = sum(stages.values()) - sum(train.values())
    rows.append(f"| **all after the install** | **{sum(stages.values()):.0f}** | **{sum(train.values()):.0f}** "
                f"| **{other:.0f}** |")
    return rows


def main() -> int:
    install, rest = readme_command().split(MAIN_JOB, 1)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        install_s, _, _ = timed(install, clone)
        rest_s, printed, stages = timed(MAIN_JOB.removeprefix(" && ") + rest, clone)
        keep = ROOT / "plots" / "quickstart"  # the committed copy the README shows
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("training_curves.png", "gradient_flow.png", "signal_flow.png", "results.md"):
            shutil.copy(clone / "plots" / name, keep / name)
        train = {}
        for path in sorted((clone / "dvclive").glob("*/timings.json")):
            m = json.loads(path.read_text())
            train[path.parent.name] = m["seconds_per_epoch"] * m.get("epochs_run", m.get("epochs", 1))
    total = install_s + rest_s
    share = sum(train.values()) / rest_s
    lines = [f"# The quick start on a fresh clone (benchmarks/quickstart.py)", "",
             f"{datetime.date.today()}, {cpu_model()}, commit "
             f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}.",
             "", f"- whole command: {total:.0f} s ({total / 60:.1f} min)",
             f"- install: {install_s:.0f} s", f"- the rest (check, fetch, stages, table): {rest_s:.0f} s",
             f"- training steps: {sum(train.values()):.0f} s = {share:.0%} of the rest "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in train.items())})", "",
             "Where the seconds went (a stage's wall time runs from DVC's \"Running stage\" line to the "
             "next: its start-up, its work, DVC hashing its outputs):", "",
             *stage_table(install_s, stages, train), "", "It printed:", "", printed]
    text = "\n".join(lines)
    (ROOT / "benchmarks" / "quickstart.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
