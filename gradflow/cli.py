"""The stages' entry-point wrapper: a UserError becomes one line on stderr and exit code 2; an
interruption (Ctrl-C's SIGINT, or SIGTERM from `kill`, `timeout` or a scheduler) one line and
the shell's exit code for it, 128 + the signal's number (130, 143). Never a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from gradflow.errors import UserError


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
