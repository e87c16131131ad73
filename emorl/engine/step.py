"""The training step: forward, refinement gradients, backward, clipping, Adam and the GECO update
on state that lives on the training device, run eagerly or replayed as a CUDA graph.

A step never waits for the host. The learning rate is a device tensor on CUDA (filled from the
host's schedule before each step), GECO's state is on the device (:mod:`emorl.geco`), the logged
scalars are summed on the device, and a non-finite loss or gradient norm is remembered there
(the first such step and its scalars). The host reads these only when it logs, evaluates or
checkpoints (:meth:`TrainingStep.read_interval`, :meth:`TrainingStep.first_non_finite`).

On CUDA (``trainer.cuda_graph=true``, the default there) the whole step is captured as a CUDA
graph once per (I, GECO phase, batch shape), after :data:`CUDA_GRAPH_WARMUP` eager steps of that
key, and replayed from then on: one launch instead of thousands of kernel launches per step. A
replay runs the kernels the eager step runs, on the same memory, drawing the same random numbers
from PyTorch's graph-safe generator, so it computes what the eager step computes; the eager warm-up
steps are ordinary training steps, so capture costs no work. A change of key (the curriculum's
change of I, the end of GECO's warm start, a batch of another shape) runs eagerly again, then
captures anew; the previous graph is freed.

On the CPU the same code runs eagerly and computes what the trainer computed before this module
existed, bit for bit (Adam as before, GECO's arithmetic in float64 as before).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from emorl.engine.precision import autocast_context
from emorl.geco import GECO, ELBOObjective

CUDA_GRAPH_WARMUP = 2  # eager steps of a new (I, GECO phase, batch shape) before it is captured


def compute_gradients(model, images: torch.Tensor, refine_steps: int, objective, device: torch.device,
                      precision: str = "fp32", fused: bool = True, autocast_cache: bool = True):
    """Forward pass and gradients of one training batch (the caller zeroes, clips and steps).

    ``fused`` uses the model's ``forward_backward`` when it has one (EfficientMORL): the same
    gradients with one decoder backward per refinement step. A non-finite loss back-propagates
    non-finite gradients (the caller's check catches them; no host synchronisation here).
    ``autocast_cache=False`` while capturing a CUDA graph (autocast's weight cache must not
    outlive the capture). Returns the model's output.
    """
    with autocast_context(device, precision, cache_enabled=autocast_cache):
        if fused and hasattr(model, "forward_backward"):
            return model.forward_backward(images, refine_steps=refine_steps, objective=objective)
        out = model(images, refine_steps=refine_steps, objective=objective)
    out.loss.backward()  # outside autocast, as PyTorch recommends
    return out


# -- the optimiser ---------------------------------------------------------------------------------
_IMPLEMENTATIONS = {"foreach": {"foreach": True}, "fused": {"fused": True}, "single": {"foreach": False}}


def make_optimizer(model: torch.nn.Module, optim, device: torch.device) -> torch.optim.Optimizer:
    """Adam (or RMSProp, MONet's: ``optim.optimizer=rmsprop``) as ``optim`` configures it. On CUDA it
    is capturable (step counts on the device) and its learning rate is a device tensor that
    :class:`TrainingStep` fills before each step; on the CPU it is the plain optimiser with a float
    learning rate."""
    capturable = device.type == "cuda"
    lr = torch.tensor(float(optim.lr), device=device) if capturable else float(optim.lr)
    if getattr(optim, "optimizer", "adam") == "rmsprop":  # MONet (Burgess et al. 2019)
        return torch.optim.RMSprop(model.parameters(), lr=lr, alpha=optim.alpha, eps=optim.eps,
                                   capturable=capturable, foreach=optim.implementation != "single")
    return torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(optim.betas), eps=optim.eps,
                            capturable=capturable, **_IMPLEMENTATIONS[optim.implementation])


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's state dict in a device-independent form (learning rates as floats, not
    capturable), so that a checkpoint resumes on a CPU or a GPU alike."""
    state = optimizer.state_dict()
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        group["capturable"] = False
        groups.append(group)
    return {"state": state["state"], "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state written by :func:`optimizer_state` (or a plain state dict) into ``optimizer``,
    keeping its own device settings: capturable, and the learning-rate tensor it steps with."""
    own = [(group.get("capturable", False), group["lr"]) for group in optimizer.param_groups]
    groups = [dict(saved, capturable=capturable) for saved, (capturable, _) in zip(state["param_groups"], own)]
    optimizer.load_state_dict({"state": state["state"], "param_groups": groups})
    for group, (_, lr) in zip(optimizer.param_groups, own):
        if isinstance(lr, torch.Tensor):
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
        group.pop("initial_lr", None)  # left by the LambdaLR of older checkpoints


# -- the step -------------------------------------------------------------------------------------
@dataclass
class _Interval:
    """Device-side sums of one set of logged scalars since the last read."""

    names: tuple[str, ...]
    total: torch.Tensor  # [S] float32
    bad: torch.Tensor  # [S]: the scalars of the first non-finite step, if it had these names
    bad_written: torch.Tensor  # bool
    count: int = 0  # steps summed (known on the host)


class TrainingStep:
    """One optimisation step of ``model`` (see the module docstring).

    ``lr_at(step)`` gives the learning rate of training step ``step`` (the schedule, on the host);
    ``clip_norm`` None means no clipping; ``geco`` None means the plain ELBO with ``kl_beta``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float], *,
                 device: torch.device, clip_norm: float | None = None, kl_beta: float = 1.0, geco: GECO | None = None,
                 precision: str = "fp32", fused: bool = True, cuda_graph: bool = True):
        self.model, self.optimizer, self.lr_at = model, optimizer, lr_at
        self.device = device
        self.clip_norm = float(clip_norm) if clip_norm else float("inf")
        self.kl_beta, self.geco = kl_beta, geco
        self.precision, self.fused = precision, fused
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.use_graph = bool(cuda_graph) and device.type == "cuda" and getattr(model, "supports_cuda_graph", False)
        self.graph_failure: str | None = None  # why capture was given up, if it was
        self.captures = 0  # graphs captured so far
        self.replays = 0  # steps run by replaying a graph
        self.step_counter = torch.zeros((), dtype=torch.int64, device=device)  # the training step, on the device
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._intervals: dict[tuple[str, ...], _Interval] = {}
        self._graph: tuple[tuple, torch.cuda.CUDAGraph] | None = None
        self._eager_runs: dict[tuple, int] = {}
        self._key_names: dict[tuple, tuple[str, ...]] = {}  # the logged scalars' names per key
        self._static_images: torch.Tensor | None = None
        self._side_stream = torch.cuda.Stream(device) if self.use_graph else None
        self._capturing = False

    # -- running ---------------------------------------------------------------------------------
    def start_at(self, step: int) -> None:
        """Tell the device which training step comes next (at the start or on resume)."""
        self.step_counter.fill_(step)

    def __call__(self, images: torch.Tensor, step: int, refine_steps: int) -> None:
        """Training step ``step`` with I = ``refine_steps`` on ``images`` (on the device)."""
        self._set_learning_rate(self.lr_at(step))
        key = (refine_steps, self._geco_phase(step), tuple(images.shape), images.dtype)
        if not self.use_graph:
            self._body(images, step, refine_steps, key)
            return
        static = self._static_input(images)
        if self._graph is not None and self._graph[0] == key:
            self._graph[1].replay()
            self.replays += 1
            self._count(key)
            return
        runs = self._eager_runs.get(key, 0)
        if runs < CUDA_GRAPH_WARMUP:  # eager, on a side stream, as capture needs
            self._eager_runs[key] = runs + 1
            side = self._side_stream
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._body(static, step, refine_steps, key)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        self._capture(key, static, step, refine_steps)

    def _geco_phase(self, step: int) -> str:
        if self.geco is None or step < self.geco.warm_start:
            return "elbo"
        return "geco-first" if step == self.geco.warm_start else "geco"

    def _set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # a kernel with the value as its argument: no copy, no wait
            else:
                group["lr"] = lr

    def _static_input(self, images: torch.Tensor) -> torch.Tensor:
        static = self._static_images
        if static is None or static.shape != images.shape or static.dtype != images.dtype:
            channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
            static = torch.empty_like(images, memory_format=torch.channels_last if channels_last
                                      else torch.contiguous_format)
            self._static_images = static
        static.copy_(images, non_blocking=True)
        return static

    def _capture(self, key: tuple, static: torch.Tensor, step: int, refine_steps: int) -> None:
        self._graph = None  # free the previous graph and its memory
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        self._capturing = True
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._body(static, step, refine_steps, key)
        except Exception as error:  # a model that cannot be captured: say so once, continue eagerly
            self.use_graph = False
            self.graph_failure = f"{type(error).__name__}: {error}"
            print(f"emorl: warning: the training step could not be captured as a CUDA graph "
                  f"({self.graph_failure}); training continues without (trainer.cuda_graph=false "
                  "silences this)", file=sys.stderr)
            self._capturing = False
            self._body(static, step, refine_steps, key)
            return
        finally:
            self._capturing = False
        self._graph = (key, graph)
        self.captures += 1
        graph.replay()  # capture records the step; this runs it
        self.replays += 1
        self._count(key)

    def _count(self, key: tuple) -> None:
        self._intervals[self._key_names[key]].count += 1

    def _body(self, images: torch.Tensor, step: int, refine_steps: int, key: tuple) -> None:
        """The step itself: only device work, no synchronisation (what a graph captures)."""
        self.optimizer.zero_grad(set_to_none=True)
        objective = self.geco.objective(step) if self.geco is not None else ELBOObjective(self.kl_beta)
        out = compute_gradients(self.model, images, refine_steps, objective, self.device, self.precision,
                                self.fused, autocast_cache=not self._capturing)
        scalars = out.scalars()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_norm)
        scalars["grad_norm"] = grad_norm.detach()
        self.optimizer.step()
        if self.geco is not None:
            self.geco.update(scalars["nll"], step)
            scalars["geco_zeta"] = self.geco.zeta
            scalars["geco_multiplier"] = self.geco.weight()
            if step >= self.geco.warm_start:
                scalars["geco_c_ema"] = self.geco.c_ema
        values = torch.stack([value.detach().float() for value in scalars.values()])
        interval = self._interval(tuple(scalars), values)
        finite = torch.isfinite(out.loss.detach()) & torch.isfinite(grad_norm)
        newly_bad = ~finite & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(newly_bad, self.step_counter, self.first_bad))
        interval.bad.copy_(torch.where(newly_bad, values, interval.bad))
        interval.bad_written.logical_or_(newly_bad)
        interval.total.add_(values)
        self.step_counter.add_(1)
        self._key_names[key] = interval.names
        if not self._capturing:
            interval.count += 1

    def _interval(self, names: tuple[str, ...], values: torch.Tensor) -> _Interval:
        interval = self._intervals.get(names)
        if interval is None:
            if self._capturing:  # never: the eager warm-up of the same key made it
                raise RuntimeError("logged scalars changed between warm-up and capture")
            interval = _Interval(names, torch.zeros_like(values), torch.full_like(values, float("nan")),
                                 torch.zeros((), dtype=torch.bool, device=values.device))
            self._intervals[names] = interval
        return interval

    # -- reading (synchronises) ------------------------------------------------------------------
    def read_interval(self) -> dict[str, float]:
        """The mean of each logged scalar over the steps since the last read; resets the sums."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for interval in self._intervals.values():
            if interval.count == 0:
                continue
            for name, total in zip(interval.names, interval.total.tolist()):
                sums[name] = sums.get(name, 0.0) + total
                counts[name] = counts.get(name, 0) + interval.count
            interval.total.zero_()
            interval.count = 0
        return {name: sums[name] / counts[name] for name in sums}

    def first_non_finite(self) -> tuple[int, dict[str, float]] | None:
        """(training step, its logged scalars) of the first step with a non-finite loss or gradient
        norm, or None when every step so far was finite."""
        step = int(self.first_bad)
        if step < 0:
            return None
        for interval in self._intervals.values():
            if bool(interval.bad_written):
                return step, dict(zip(interval.names, interval.bad.tolist()))
        return step, {}
