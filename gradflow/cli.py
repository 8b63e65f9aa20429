"""The stages' entry-point wrapper: a UserError becomes one line on stderr and exit code 2; an
interruption (Ctrl-C's SIGINT, or SIGTERM from `kill`, `timeout` or a scheduler) one line and
the shell's exit code for it, 128 + the signal's number (130, 143). Never a traceback.

`dvc exp run -S key=value` writes its values into params.yaml and leaves them there, failed run
or not, so the next run starts from them. A failing stage, and the check stage on every run,
say in one line which keys differ from the last commit and how to restore them (`drift_note`)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path

from gradflow.errors import UserError
from gradflow.params import PARAMS_FILE


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so no `except
    Exception` swallows it; `message` says where the work stopped, when the code knows."""

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(signum, message)
        self.signum, self.message = signum, message


def _on_sigterm(signum, frame):
    raise Interrupted(signum)


def signal_number(e: BaseException) -> int:
    return e.signum if isinstance(e, Interrupted) else signal.SIGINT


def cli(main):
    """Run a stage's main(argv); a ParamsError or DataError ends it with one line, exit 2; an
    interruption with one line, exit 130 (SIGINT) or 143 (SIGTERM)."""

    def wrapped(argv=None):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)  # unwind as Ctrl-C does: temp files removed
        try:
            return main(sys.argv[1:] if argv is None else argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            note = drift_note()
            if note:
                print(f"note: {note}", file=sys.stderr)
            raise SystemExit(2) from None
        except (KeyboardInterrupt, Interrupted) as e:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback now
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signum = signal_number(e)
            spec = main.__globals__.get("__spec__")
            stage = (getattr(spec, "name", None) or main.__module__).rsplit(".", 1)[-1]
            what = getattr(e, "message", None) or "interrupted; nothing half-written is left, rerun it"
            print(f"{stage}: {what.replace('interrupted', f'interrupted ({signal.Signals(signum).name})', 1)}",
                  file=sys.stderr, flush=True)
            raise SystemExit(128 + signum) from None

    return wrapped


def variant_parser(stage: str, doc: str) -> argparse.ArgumentParser:
    """The arguments of a per-variant stage (train@, gradients@): the variant and its resolved
    config, as dvc.yaml passes them."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=doc.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    parser.add_argument("--config", help="the variant's resolved config, written by the check stage "
                        "(dvc.yaml passes data/config/<variant>.json); default: resolve params.yaml")
    return parser


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two parsed YAML trees (added and removed
    ones too), in file order. 1, 1.0 and true differ, as they do in params.yaml's bytes."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(new) + [k for k in old if k not in new]
        return [key for k in keys for key in changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    same = old == new and type(old) is type(new)
    return [] if same else [prefix.rstrip(".") or "(the whole file)"]


def drift_note(path: Path = PARAMS_FILE, shown: int = 6) -> str | None:
    """One line naming the keys of params.yaml that differ from the last commit's (git HEAD)
    and the command that restores them; None when none do, or outside a git repository."""
    try:
        committed = subprocess.run(["git", "show", f"HEAD:./{path}"], capture_output=True, text=True,
                                   timeout=10)
        import yaml
        old, new = yaml.safe_load(committed.stdout), yaml.safe_load(path.read_text())
    except Exception:  # no git, no commit, unreadable YAML: nothing to say, and never a traceback
        return None
    if committed.returncode:
        return None
    keys = changed_keys(old, new)
    if not keys:
        return None
    lock = subprocess.run(["git", "cat-file", "-e", "HEAD:./dvc.lock"], capture_output=True).returncode == 0
    files = f"{path} dvc.lock" if lock else str(path)  # dvc.lock too where the commit has one
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return (f"{path} differs from the last commit in {', '.join(keys[:shown])}{more} "
            f"(dvc exp run -S leaves its values there for the next run); to start from the commit: "
            f"touch {files} && git checkout HEAD -- {files}")
