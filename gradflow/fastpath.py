"""The training step's fast paths: eager, torch.compile, and a CUDA-graph replay.

These VGGs are tiny (32 channels, batch 100): a VGG_38 step is a few hundred small kernel
launches, so on a GPU the device waits on the host. Two ways remove the launches:

  compile          torch.compile of forward + loss (inductor; the backward is compiled too);
                   "max-autotune" lets inductor pick among kernels by timing them;
                   mode "reduce-overhead" adds inductor's own CUDA graphs on CUDA
  graph            the whole static-shape forward + loss + backward captured once as one CUDA
                   graph and replayed every step (torch.cuda.CUDAGraph); the optimizer step and
                   the gradient capture stay eager between replays (fused Adam is a few kernels)

`TrainStep` owns zero_grad + forward + loss + backward, so the loop keeps its shape:

    step = TrainStep(step_model, optimizer, device, precision, mode=resolve(t.compile, device, world))
    for ...:
        logits, main_sum = step(x, y, aux_weight, denominator)   # zero_grad, fwd, loss, bwd
        ... gradient capture, optimizer.step(), as before

Fallbacks, each recorded in `step.mode` and `step.note`: "graph" runs eager off CUDA, under DDP
(world > 1) and if capture fails; a batch of another shape (the short last batch of a run with
train_limit) runs eagerly into the same gradient tensors. The GPU-only lines are the ones in
`_capture` and the `torch.cuda` calls it makes.

Nothing here has run on a GPU yet (benchmarks/gpu_check.py measures it): `train.compile: auto`
therefore resolves to eager everywhere; set AUTO_ON_CUDA to the mode gpu_check measures fastest.
"""

from __future__ import annotations

import sys

import torch

from gradflow.loss import loss_fn
from gradflow.device import autocast

MODES = ("eager", "compile", "max-autotune", "reduce-overhead", "graph")

# torch.compile's mode for each compiled step mode (None: its default). max-autotune tries
# several kernels per convolution and matmul and keeps the fastest; without CUDA graphs, so it
# applies to a CPU too.
COMPILE_MODES = {"compile": None, "max-autotune": "max-autotune-no-cudagraphs",
                 "reduce-overhead": "reduce-overhead"}

# What `train.compile: auto` means on CUDA. Eager until benchmarks/gpu_check.py has measured
# "graph" (or "reduce-overhead") faster on a GPU; off CUDA auto is always eager.
AUTO_ON_CUDA = "eager"


def resolve(setting, device: torch.device, world: int = 1) -> str:
    """train.compile (auto | true | false, or a mode name) -> one of MODES for this device.

    false -> eager; true -> compile (torch.compile, default mode); auto -> AUTO_ON_CUDA on CUDA
    with one process, else eager. "graph" needs CUDA and one process (DDP's all-reduce hooks are
    not captured); elsewhere it is eager (TrainStep says why in `note`)."""
    if setting is False or setting is None or setting == "eager":
        return "eager"
    if setting is True:
        return "compile"
    if setting == "auto":
        return AUTO_ON_CUDA if device.type == "cuda" and world == 1 else "eager"
    if setting == "graph" and world > 1:
        return "eager"
    if setting in MODES:
        return setting
    raise ValueError(f"train.compile: {setting!r} is not auto, true, false or one of {', '.join(MODES)}")


def starts_as(mode: str, device: torch.device) -> tuple[str, str]:
    """The mode a TrainStep asked for `mode` runs in from its first step on `device`, and why
    it differs ("" where not): "graph" needs CUDA. (A failed capture falls back later.)"""
    if mode == "graph" and device.type != "cuda":
        return "eager", f"CUDA graphs need CUDA; eager on {device.type}"
    return mode, ""


class TrainStep:
    """zero_grad + forward (autocast per `precision`) + loss + backward for one batch.

    `step(x, y, aux_weight, denominator)` returns (logits, main-head loss summed over the batch),
    both still on the device (no host sync), like the eager loop's `logits` and `main_sum`.
    After it, `p.grad` holds this batch's gradients for every trainable parameter; call the
    optimizer (and the gradient capture) as usual. In "graph" mode those `.grad` tensors are
    static: do not set them to None between steps (TrainStep zeroes them itself).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 precision: str = "auto", mode: str = "eager", warmup: int = 3):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.model, self.optimizer, self.device, self.precision = model, optimizer, device, precision
        self.requested = mode
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: dict | None = None
        self._scalars: dict[str, tuple[float, torch.Tensor]] = {}
        self._forward = self._forward_loss
        self.mode, self.note = starts_as(mode, device)
        if mode in COMPILE_MODES:
            self._forward = torch.compile(self._forward_loss, mode=COMPILE_MODES[mode])

    def _forward_loss(self, x, y, aux_weight, denominator):
        with autocast(self.device, self.precision, cache_enabled=False):
            logits, aux = self.model(x)
        loss, main_sum = loss_fn(logits, aux, y, aux_weight, denominator)
        return loss, logits, main_sum

    def _scalar(self, name: str, value: float) -> torch.Tensor:
        """A 0-d device tensor holding `value`, refilled only when the value changes: compiled
        code does not recompile for a new aux weight, a graph reads it, and no step syncs."""
        old = self._scalars.get(name)
        if old is None:
            t = torch.tensor(float(value), device=self.device)
        else:
            t = old[1]
            if old[0] != value:
                t.fill_(float(value))
        self._scalars[name] = (value, t)
        return t

    def __call__(self, x: torch.Tensor, y: torch.Tensor, aux_weight: float, denominator: float):
        if self.mode == "eager":  # exactly the eager loop's step, Python floats and all
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits, main_sum = self._forward_loss(x, y, aux_weight, denominator)
            loss.backward()
            return logits, main_sum.detach()
        aux_w, denom = self._scalar("aux_weight", aux_weight), self._scalar("denominator", denominator)
        if self.mode == "graph" and self.model.training:
            if self.graph is None:
                self._capture(x, y, aux_w, denom)
            s = self._static
            if s is not None and x.shape == s["x"].shape and x.stride() == s["x"].stride() \
                    and y.shape == s["y"].shape:
                s["x"].copy_(x)
                s["y"].copy_(y)
                self.graph.replay()
                return s["logits"], s["main_sum"]
            # another shape (a short last batch): eager, into the same static .grad tensors
            self.optimizer.zero_grad(set_to_none=self.graph is None)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        if self.mode == "reduce-overhead":  # a new iteration for inductor's CUDA graph trees
            torch.compiler.cudagraph_mark_step_begin()
        loss, logits, main_sum = self._forward(x, y, aux_w, denom)
        loss.backward()
        return logits, main_sum.detach()

    def _capture(self, x, y, aux_w, denom) -> None:
        """Record forward + loss + backward on this batch's shapes as one CUDA graph.

        Warm-up iterations run on a side stream first (cuDNN picks its algorithms, the caching
        allocator settles), as torch.cuda.graphs' documentation requires; they update BN's
        running statistics, so those are put back afterwards: the graph path trains the same
        weights as the eager one. The gradients are set to None before capture so backward
        allocates them from the graph's pool: every replay overwrites them (= zero_grad + bwd)."""
        buffers = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        try:
            static = {"x": x.detach().clone(), "y": y.detach().clone()}
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, _, _ = self._forward_loss(static["x"], static["y"], aux_w, denom)
                    loss.backward()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                loss, logits, main_sum = self._forward_loss(static["x"], static["y"], aux_w, denom)
                loss.backward()
            static.update(logits=logits, main_sum=main_sum.detach())
            self.graph, self._static = graph, static
        except Exception as e:  # not run on a GPU yet: fail soft, say so once
            self.mode, self.note = "eager", f"CUDA graph capture failed ({type(e).__name__}: {e}); eager"
            self.graph, self._static = None, None
            print(f"fastpath: {self.note}", file=sys.stderr)
        finally:
            with torch.no_grad():
                for k, b in self.model.named_buffers():
                    b.copy_(buffers[k])
            self.optimizer.zero_grad(set_to_none=self.graph is None)
