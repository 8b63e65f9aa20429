"""Reproducible by construction: every stage lists what it reads, equal runs write equal bytes,
and a params change reruns exactly the runs whose resolved config it changes.

What a stage reads is measured, not assumed: the tiny pipeline runs under an audit hook
(sitecustomize, `sys.addaudithook`) that logs every file each stage process opens for reading,
code included, and a static walk of each stage's imports covers code a run may not reach.
`missing_deps` compares both with the stages as DVC rendered them (dvc.lock), and must name
every dependency that is taken away.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from conftest import DVC, PYTHON, ROOT, copy_project, git_init, run, write_params

PARAMS = {
    "model": {"filters": 8},
    # a variant with its own lr: `-S train.lr=...` must not retrain it
    "variants": {"VGG_08": {"depth": 8}, "VGG_08_lr": {"depth": 8, "lr": 0.01}},
    "sweep": {"depths": [8], "fixes": ["none"], "epochs": 1},
}

AUDIT_HOOK = '''
import os, sys
_LOG = os.environ.get("GRADFLOW_AUDIT_LOG")
if _LOG:
    with open("/proc/self/cmdline", "rb") as f:
        _CMD = " ".join(a.decode() for a in f.read().split(b"\\0") if a)
    _CWD = os.getcwd()
    _SEEN = set()

    def _hook(event, args):
        if event != "open" or not isinstance(args[0], (str, os.PathLike)):
            return
        path, mode, flags = args
        if mode is not None:
            reading = "r" in mode and "+" not in mode
        else:
            reading = (flags or 0) & os.O_ACCMODE == os.O_RDONLY
        if not reading:
            return
        full = os.path.abspath(os.fspath(path))
        if not full.startswith(_CWD + os.sep) or full in _SEEN:
            return
        _SEEN.add(full)
        with open(_LOG, "a") as log:
            log.write(_CMD + "\\t" + os.path.relpath(full, _CWD) + "\\n")

    sys.addaudithook(_hook)
'''

# Read by a stage but not its input: git's and DVC's bookkeeping (DVCLive looks at the repo),
# the atomic writes' temporary files, DVCLive's own log.
# The resume checkpoints (models/.resume/) are read and written by train alone, on purpose
# outside DVC's outputs (gradflow/paths.py).
IGNORED = re.compile(r"(^|/)(\.git|\.dvc|\.tmp|dvclive|\.resume)(/|$)|^\.(git|dvc)ignore$")


# --- what a stage reads ---------------------------------------------------------------------

def module_file(root: Path, name: str) -> Path | None:
    for candidate in (root / (name.replace(".", "/") + ".py"),
                      root / name.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache  # the same walk for every lock the taking-away test breaks
def project_imports(root: Path, module: str) -> frozenset[str]:
    """The project's .py files that importing `module` loads, transitively (packages'
    __init__ included), from the source alone."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] not in ("gradflow", "stages"):
            continue
        for i in range(1, len(parts) + 1):
            path = module_file(root, ".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    todo += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return frozenset(str(p.relative_to(root)) for p in seen)


def covered(path: str, declared: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)


def missing_deps(root: Path, lock: dict, opened: dict[str, set[str]]) -> list[str]:
    """'stage: path' for every file a stage reads (opened, or imported by its command) that
    is neither a dep, nor its own output, nor params.yaml with params declared."""
    missing = []
    for name, stage in lock["stages"].items():
        deps = [d["path"] for d in stage.get("deps", [])]
        outs = [o["path"] for o in stage.get("outs", [])]
        module = re.match(r"python -m (\S+)", stage["cmd"]).group(1)
        reads = project_imports(root, module) | opened.get(stage["cmd"], set())
        for path in sorted(reads):
            if IGNORED.search(path) or covered(path, deps) or covered(path, outs):
                continue
            # Declared params cover reading their values. Not for check: it validates the
            # file's text (DVC compares values, and 1 == True), so it lists the file itself.
            if path == "params.yaml" and stage.get("params") and name != "check":
                continue
            # check reads dvc.yaml for the params the stages declare; DVC refuses dvc.yaml as a
            # dependency ("DVC file 'dvc.yaml' cannot be a dependency"), and reruns a stage
            # whose own definition changed anyway.
            if path == "dvc.yaml" and name == "check":
                continue
            # check reads dvc.lock only to tell DVC's outputs from a user's files at their paths
            # (gradflow/workspace.py); what it writes does not depend on it, and DVC writes it.
            if path == "dvc.lock" and name == "check":
                continue
            missing.append(f"{name}: {path}")
    return missing


def read_audit(log: Path) -> dict[str, set[str]]:
    """stage command -> project files its processes opened for reading."""
    opened: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        cmd, path = line.split("\t")
        # the import system reads the cached bytecode: count it as its source file
        path = re.sub(r"__pycache__/(\w+)\.cpython-\d+\.pyc$", r"\1.py", path)
        match = re.search(r"-m (stages\.\S+.*)$", cmd)
        if match:
            opened.setdefault(f"python -m {match.group(1)}", set()).add(path)
    return opened


def ran(proc) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))


# --- the runs -------------------------------------------------------------------------------

def make_repo(path: Path) -> Path:
    project = copy_project(path)
    write_params(project, PARAMS)
    git_init(project)
    return project


def repro(project: Path, audit: Path | None = None):
    env = {}
    if audit is not None:
        hook_dir = audit.parent / "hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
        env = {"PYTHONPATH": f"{project}{os.pathsep}{hook_dir}", "GRADFLOW_AUDIT_LOG": str(audit)}
    return run([DVC, "repro"], cwd=project, extra_env=env)



@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The same tiny pipeline run in two separate clones, the first under the audit hook."""
    base = tmp_path_factory.mktemp("twice")
    first, second = make_repo(base / "one"), make_repo(base / "two")
    audit = base / "opened.log"
    repro(first, audit)
    repro(second)
    # as the runs left them: the experiments below change the workspace
    locks = [(p / "dvc.lock").read_text() for p in (first, second)]
    return first, second, audit, locks


@pytest.mark.slow
def test_every_file_a_stage_reads_is_a_dependency(twice):
    first, _, audit, locks = twice
    opened = read_audit(audit)
    assert any("stages.train" in cmd for cmd in opened), "the audit hook saw no stage"
    assert missing_deps(first, yaml.safe_load(locks[0]), opened) == []


@pytest.mark.slow
def test_taking_away_any_one_dependency_is_caught(twice):
    first, _, audit, locks = twice
    opened, lock = read_audit(audit), yaml.safe_load(locks[0])
    tried = 0
    for name, stage in lock["stages"].items():
        for i, dep in enumerate(stage.get("deps", [])):
            broken = json.loads(json.dumps(lock))
            del broken["stages"][name]["deps"][i]
            assert missing_deps(first, broken, opened), f"{name} without {dep['path']} passed"
            tried += 1
    assert tried > 50


@pytest.mark.slow
def test_equal_runs_write_equal_bytes(twice):
    _, _, _, (one, two) = twice
    assert one == two


@pytest.mark.slow
def test_a_shared_setting_reruns_only_the_variants_that_use_it(twice):
    first = twice[0]
    proc = run([DVC, "exp", "run", "-S", "train.lr=0.003"], cwd=first)
    # VGG_08_lr sets its own lr; the sweep point trains with the shared one
    assert ran(proc) == {"check", "train@VGG_08", "gradients@VGG_08", "sweep@8-none", "plots"}
    proc = run([DVC, "exp", "run", "-S", "gradients.probe_size=20"], cwd=first)
    assert not any(s.startswith(("train@", "sweep@")) for s in ran(proc))


@pytest.mark.slow
def test_a_stray_temporary_file_trips_nothing(twice):
    """A kill during an atomic write leaves its temporary file in .tmp/, outside every output."""
    second = twice[1]
    (second / ".tmp").mkdir(exist_ok=True)
    (second / ".tmp" / "VGG_08.csv.abcd.tmp").write_text("")
    assert "Data and pipelines are up to date." in run([DVC, "status"], cwd=second).stdout
    run([DVC, "plots", "show", "--json"], cwd=second)


def test_the_library_has_no_import_cycle():
    graph = {}
    for path in (ROOT / "gradflow").glob("*.py"):
        module = f"gradflow.{path.stem}" if path.stem != "__init__" else "gradflow"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gradflow"):
                deps |= {node.module} if node.module != "gradflow" else {
                    f"gradflow.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("gradflow.")}
        graph[module] = deps - {module}

    def visit(module, stack):
        assert module not in stack, f"import cycle: {' -> '.join(stack + [module])}"
        for dep in graph.get(module, ()):
            visit(dep, stack + [module])

    for module in graph:
        visit(module, [])


def test_stages_holds_only_entry_points():
    entry_points = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    dvc_stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert entry_points == dvc_stages


def test_importing_the_library_has_no_side_effects(tmp_path):
    """Every module imports without printing or writing anything (the registry of fixes makes
    params import torch: the check stage builds the network on the meta device anyway)."""
    modules = ", ".join(f"gradflow.{p.stem}" for p in sorted((ROOT / "gradflow").glob("*.py"))
                        if p.stem != "__init__")
    proc = run([PYTHON, "-c", f"import gradflow, {modules}"], cwd=tmp_path, extra_env={"PYTHONPATH": str(ROOT)})
    assert proc.stdout == "" and proc.stderr == "" and list(tmp_path.iterdir()) == []
