"""The stages' entry-point wrapper: a UserError becomes one line on stderr and exit code 2; an
interruption (Ctrl-C's SIGINT, or SIGTERM from `kill`, `timeout` or a scheduler) one line and
the shell's exit code for it, 128 + the signal's number (130, 143). Never a traceback.

`dvc exp run -S key=value` writes its values into params.yaml and leaves them there, failed run
or not, so the next run starts from them. A failing stage, and the check stage on every run,
say in one line which keys differ from the last commit and how to restore them (`drift_note`).

`stage_run` is what the stages that train or probe a run (train@, gradients@, sweep@) do around
their work: resolve the config and check the output folders before it, and make sure
params.yaml still says what the run used before writing (`StageRun.before_writing`)."""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from gradflow import params as P
from gradflow.errors import UserError
from gradflow.files import require_writable
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


SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "fish"}


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(command name, state, parent pid) of a process from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return comm, rest[0], int(rest[1])


def _watch(pid: int) -> None:
    """SIGTERM this process once `pid` has exited (gone, or a zombie not reaped yet)."""
    while (stat := _stat(pid)) is not None and stat[1] != "Z":
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent() -> None:
    """Get SIGTERM when the process that started this one exits. DVC runs a stage as its child:
    killed alone (`kill <dvc pid>`, `timeout`, kill -9), it would leave the stage training as an
    orphan that later writes outputs no dvc.lock records, beside the next run. SIGTERM stops the
    stage as `kill` does: one line, its resume checkpoint kept. Linux: PR_SET_PDEATHSIG for the
    parent; under DVC (DVC_STAGE set) also a watch on dvc itself where a shell stands between
    (dvc runs `$SHELL -c cmd`: bash execs the command, Debian's /bin/sh forks it)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent exited before the request took effect
        raise Interrupted(signal.SIGTERM)
    watched = parent
    while "DVC_STAGE" in os.environ and (stat := _stat(watched)) is not None and stat[0] in SHELLS:
        watched = stat[2]
    if watched != parent and watched > 1:
        threading.Thread(target=_watch, args=(watched,), daemon=True, name="die-with-dvc").start()


def removed_outputs_note() -> str:
    """For a stage DVC runs (it sets DVC_STAGE): DVC removed the stage's outputs before its
    command started, so a refusal says so and how to get the recorded ones back."""
    stage = os.environ.get("DVC_STAGE", "")
    if not stage or stage == "check":  # the check's output is persistent: DVC leaves it
        return ""
    return (f" (DVC removed {stage}'s outputs before it ran; `dvc checkout {stage}` brings back "
            f"the ones dvc.lock records)")


def cli(main):
    """Run a stage's main(argv); a ParamsError or DataError ends it with one line, exit 2; an
    interruption with one line, exit 130 (SIGINT) or 143 (SIGTERM)."""

    def wrapped(argv=None):
        if argv is None:  # run as the stage's script, `python -m stages.<stage>`
            _exit_fast(lambda: stage(sys.argv[1:]))
        return stage(argv)

    def stage(argv):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)  # unwind as Ctrl-C does: temp files removed
        try:
            if threading.current_thread() is threading.main_thread():
                die_with_parent()
            return main(argv)
        except UserError as e:
            print(f"error: {e}{removed_outputs_note()}", file=sys.stderr)
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


def _exit_fast(run) -> None:
    """run(), then end the process without the interpreter's teardown, with run's exit code.

    With torch loaded the teardown (freeing thousands of modules, torch._dynamo's among them:
    torch.optim imports it) takes 0.4-1.1 s, in every stage of every run: 16 seconds of the
    quick start. Nothing is lost by skipping it: exit handlers still run and stdout and stderr
    are flushed, and every file a stage writes is closed when written (gradflow/files.py).
    Skipping it also skips the "Exception ignored ..." noise some libraries print while the
    interpreter shuts down after an error."""
    try:
        run()
        code = 0
    except SystemExit as e:  # argparse's and cli's exits
        code = e.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:  # a bug: its traceback, as Python would print it
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def variant_parser(stage: str, doc: str) -> argparse.ArgumentParser:
    """The arguments of a per-variant stage (train@, gradients@): the variant and its resolved
    config, as dvc.yaml passes them."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=doc.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    parser.add_argument("--config", help="the variant's resolved config, written by the check stage "
                        "(dvc.yaml passes data/config/<variant>.json); default: resolve params.yaml")
    return parser


class StageRun:
    """One run of a stage that trains or probes a run (train@, gradients@, sweep@): its
    resolved config `cfg`, and the guard it calls after its work and before its first output.

    Made by stage_run(), which does what every such stage does before any work: take params.yaml's
    stamp as the check saw it, resolve the config (the check's file, or params.yaml for a stage
    run by hand), refuse a config of another run, and refuse an output folder it cannot write
    (an immutable models/ found after the last epoch would cost the whole run)."""

    def __init__(self, stage: str, config: str | None, cfg: P.RunConfig, stamp: list | None,
                 params: P.Params | None):
        self.stage, self.config, self.cfg, self.stamp = stage, config, cfg, stamp
        self._params = params

    @property
    def params(self) -> P.Params:
        """params.yaml, read once, for a setting outside the resolved config."""
        if self._params is None:
            self._params = P.load()
        return self._params

    def before_writing(self, written: str = "its outputs are not written") -> None:
        """ParamsError unless params.yaml still resolves to the config this run used: a second
        `dvc exp run` in the workspace can change it under a running stage, whose outputs would
        then be recorded with the other run's params. Only with a resolved-config file: a
        stage run by hand has nothing to compare with."""
        if self.config:
            P.require_unchanged(self.config, self.cfg, f"{self.stage}@{self.cfg.name}", self.stamp, written)


def stage_run(stage: str, config: str | None, name: str, resolve, files, folders=(),
              what: str = "") -> StageRun:
    """Start a run of `stage` for the run `name` (`VGG_38`, `38-bn_rc`; `what` says what it is
    in the refusal): its config from the file `config`, or `resolve(params)` without one; then,
    before any work, each output file in `files` must be replaceable, and the folder of each
    (or where given, `folders` instead: DVCLive makes its own), writable."""
    stamp = P.checked_stamp()  # params.yaml as the check saw it: compared before writing outputs
    params = None if config else P.load()
    cfg = P.load_resolved(config) if config else resolve(params)
    if cfg.name != name:
        raise P.ParamsError(f"{config}: the config of {what}{cfg.name!r}, not of {name!r}")
    require_writable(folders or dict.fromkeys(Path(f).parent for f in files), files)
    return StageRun(stage, config, cfg, stamp, params)


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
        old, new = P.read_yaml(committed.stdout), P.read_yaml(path.read_text())
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
