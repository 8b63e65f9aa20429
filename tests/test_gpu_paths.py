"""What the GPU path does, exercised on the CPU: bf16 autocast, torch.compile
(inductor), fused Adam, the CUDA-graph step's fallback, and the one-shot GPU check's dry run.

The CUDA-only lines (graph capture in gradflow.fastpath, torch.cuda.* in benchmarks/gpu_check.py)
cannot run here; everything around them does.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradflow import fastpath
from gradflow.capture import grad_stats
from gradflow.data import Augment, synthetic
from gradflow.model import VGG, probed_parameters
from gradflow.params import ModelParams, Variant
from gradflow.loss import loss_fn

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
HAS_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def batch(n: int, size: int = 32, seed: int = 0):
    images, labels = synthetic(n, seed, 0)
    x = Augment(MEAN, STD, 0, False, CPU).normalize(images)
    if size != 32:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return x, labels


def tiny_model(depth: int = 8, filters: int = 8, **switches) -> VGG:
    torch.manual_seed(0)
    return VGG(Variant(depth=depth, **switches), ModelParams(filters=filters, stages=3))


def train_steps(model, step: fastpath.TrainStep, optimizer, x, y, n_steps: int) -> list[float]:
    losses = []
    for _ in range(n_steps):
        logits, main_sum = step(x, y, 0.3, len(y))
        optimizer.step()
        losses.append(main_sum.item() / len(y))
    return losses


# --- mode resolution ----------------------------------------------------------------------

def test_resolve_maps_train_compile_to_a_mode():
    cuda = torch.device("cuda")
    assert fastpath.resolve(False, CPU) == "eager"
    assert fastpath.resolve(True, CPU) == "compile"
    # auto: eager everywhere until a GPU measurement says otherwise
    assert fastpath.resolve("auto", CPU) == "eager"
    assert fastpath.resolve("auto", cuda) == fastpath.AUTO_ON_CUDA
    assert fastpath.resolve("auto", cuda, world=2) == "eager"
    assert fastpath.resolve("graph", cuda) == "graph"
    assert fastpath.resolve("graph", cuda, world=2) == "eager"  # DDP's hooks are not captured
    with pytest.raises(ValueError, match="train.compile"):
        fastpath.resolve("fast", CPU)


# --- bf16 autocast on the CPU -------------------------------------------------------------

def test_fast_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    """train.precision: fast (the quick start's) is bf16 on CUDA and on a CPU with AVX512-BF16 or
    AMX, fp32 on other CPUs, where oneDNN emulates bf16 ~10x slower; auto stays fp32 on any CPU."""
    from gradflow import device as D
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(D, "native_cpu_bf16", lambda: False)
    assert not D.uses_bf16(cpu, "fast") and D.uses_bf16(cuda, "fast") and D.uses_bf16(cuda, "auto")
    monkeypatch.setattr(D, "native_cpu_bf16", lambda: True)
    assert D.uses_bf16(cpu, "fast") and not D.uses_bf16(cpu, "auto")
    assert D.uses_bf16(cpu, "bf16") and not D.uses_bf16(cuda, "fp32")
    monkeypatch.undo()
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else None
    if flags is not None:  # Linux: torch's answer is the kernel's CPU flags
        assert D.native_cpu_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bf16_autocast_trains_and_keeps_fp32_parameters_and_gradients():
    x, y = batch(20, size=16)
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = fastpath.TrainStep(model, optimizer, CPU, "bf16", mode="eager")
    logits, main_sum = step(x, y, 0.3, len(y))
    assert logits.dtype == torch.bfloat16  # the forward really ran in bf16
    assert main_sum.dtype == torch.float32  # the loss is computed in fp32
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
    optimizer.step()
    losses = [main_sum.item() / len(y)] + train_steps(model, step, optimizer, x, y, 4)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]  # 5 steps on one batch: it learns it


def first_conv_grad(model: VGG, x, y, bf16: bool) -> float:
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, aux = model(x)
    loss_fn(logits, aux, y, 0.3, len(y))[0].backward()
    name, p = probed_parameters(model)[0]
    assert name == "input_conv_conv_0"
    return grad_stats([p])[0, 0].item()


def test_bf16_keeps_plain_vgg38s_vanishing_gradient_resolvable():
    """Plain VGG_38 at init: the first conv's mean |grad| is ~1e-18 in fp32. bf16 has fp32's
    exponent range, so under autocast it must stay of that size: not 0, not lifted to noise."""
    x, y = batch(8)
    model = tiny_model(depth=38, filters=32)
    fp32 = first_conv_grad(model, x, y, bf16=False)
    bf16 = first_conv_grad(model, x, y, bf16=True)
    assert 0 < fp32 < 1e-12, fp32
    assert bf16 > 0, "bf16 flushed the first conv's gradient to zero"
    assert fp32 / 10 < bf16 < fp32 * 10, (fp32, bf16)


# --- fused Adam on the CPU ----------------------------------------------------------------

def test_fused_adam_runs_on_cpu_and_matches_the_foreach_one():
    x, y = batch(20, size=16)
    finals = []
    for fused in (False, True):
        model = tiny_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
        step = fastpath.TrainStep(model, optimizer, CPU, "fp32", mode="eager")
        train_steps(model, step, optimizer, x, y, 3)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(finals[0], finals[1], rtol=1e-4, atol=1e-6)


# --- the CUDA-graph path's fallback -------------------------------------------------------

def test_graph_mode_falls_back_to_eager_on_cpu_with_the_same_result():
    x, y = batch(20, size=16)
    runs = {}
    for mode in ("eager", "graph"):
        model = tiny_model(batch_norm=True, residual=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = fastpath.TrainStep(model, optimizer, CPU, "auto", mode=mode)
        runs[mode] = (step, train_steps(model, step, optimizer, x, y, 3),
                      [b.clone() for b in model.buffers()])
    step, losses, buffers = runs["graph"]
    assert step.mode == "eager" and step.graph is None and "CUDA" in step.note
    assert losses == runs["eager"][1]
    assert all(torch.equal(a, b) for a, b in zip(buffers, runs["eager"][2]))


def test_train_step_takes_a_short_last_batch_and_eval_mode():
    x, y = batch(20, size=16)
    model = tiny_model(deep_supervision=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = fastpath.TrainStep(model, optimizer, CPU, "fp32", mode="graph")
    train_steps(model, step, optimizer, x, y, 1)
    logits, main_sum = step(x[:7], y[:7], 0.1, 7)  # another shape, another aux weight
    assert logits.shape == (7, 100) and torch.isfinite(main_sum)
    assert step.mode == "eager"


# --- torch.compile on the CPU (inductor) --------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not HAS_CC, reason="torch.compile's inductor needs a C compiler (cc/gcc/clang), "
                    "and this machine has none on PATH")
def test_compiled_step_matches_eager_on_cpu():
    x, y = batch(20, size=16)
    losses = {}
    for mode in ("eager", "compile"):
        model = tiny_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = fastpath.TrainStep(model, optimizer, CPU, "fp32", mode=mode)
        losses[mode] = train_steps(model, step, optimizer, x, y, 3)
    torch._dynamo.reset()
    assert losses["compile"] == pytest.approx(losses["eager"], rel=1e-4)


# --- the one-shot GPU check, dry run ------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path: Path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                           "--tiny", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("device", "tiny", "torch", "variants", "timings", "matmul", "grad_ratio_init",
                "projection", "wall_s", "notes"):
        assert key in result, key
    assert result["device"] == "cpu" and result["tiny"] is True
    timings = result["timings"]
    assert set(timings) == {"VGG_08", "VGG_38", "VGG_38_BN_RC"}
    for name, per_mode in timings.items():
        assert per_mode["eager"]["status"] == "ok" and per_mode["eager"]["s_per_epoch"] > 0
        assert per_mode["graph"]["status"] == "n/a on cpu"
    # The speed is the library's training with capture on: its first captured step's ratio.
    assert timings["VGG_38"]["eager"]["log10_grad_ratio_init"] < -10
    assert timings["VGG_08"]["eager"]["log10_grad_ratio_init"] > -3
    compiled = timings["VGG_08"]["compile"]
    assert compiled["status"] == "ok" if HAS_CC else compiled["status"].startswith("error")
    assert result["projection"]["serial_s"]["eager"] > 0 and result["projection"]["method"]
    ratio = result["grad_ratio_init"]["VGG_38"]
    assert ratio["cpu_fp32"]["ratio_first_last"] < 1e-10
    assert 0 < ratio["cpu_bf16"]["ratio_first_last"] < 1e-10  # bf16 keeps the vanishing ratio
    assert "VGG_38" in proc.stdout and "s/epoch" in proc.stdout


def test_gpu_check_needs_neither_tests_nor_dvc_and_times_the_library():
    """The GPU machine has no dvc and gets no tests/ helpers: the check imports neither. And
    it times the product's training, not a loop of its own: no optimizer, no backward, no
    autocast of its own in it (gradflow.training.fit makes them)."""
    source = (ROOT / "benchmarks" / "gpu_check.py").read_text()
    tree = ast.parse(source)
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in modules if m.split(".")[0] in ("tests", "dvc", "conftest")}, modules
    assert "gradflow.training" in modules
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    own = {c for c in calls if c.startswith(("torch.optim", "torch.autocast", "fastpath.TrainStep"))
           or c.endswith((".backward", ".step"))}
    assert not own, own
