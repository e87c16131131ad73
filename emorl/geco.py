"""The per-step training objectives: the plain negative ELBO and GECO (Appendix F.2).

An objective maps a step's batch-mean NLL and KL to that step's loss. Every objective is
affine in (NLL, KL), so it also exposes the two weights; that is all the gradient of the
loss with respect to the model depends on.

GECO (Rezende & Viola, 2018) as the paper and the authors' code use it:

* zeta starts at 0.55 and is kept >= 0.55, so softplus(zeta) >= 1;
* for ``warm_start`` steps the plain ELBO is minimised and nothing is updated;
* then, after each step, C_ema = C - nll at the first update and
  C_ema <- 0.99 C_ema + 0.01 (C - nll) after that, and zeta <- max(0.55, zeta - 1e-6 C_ema)
  (times ``speedup`` when C_ema > 0, when the constraint is met), where nll is the batch-mean
  NLL of the last refinement step. ``zeta_at_first_update=False`` is the authors' timing: their
  first update (at step ``warm_start``) only sets C_ema, and zeta moves from the next step on;
* the loss of a step is ``kl_beta * KL - softplus(zeta) * (C_t + (C_ema - C_t).detach())``
  with C_t = C - nll: its value uses C_ema, its gradient is grad KL + softplus(zeta) grad NLL.

GECO's state (zeta, C_ema and whether C_ema has been set) lives in float64 tensors on the
training device and is updated there, so a training step never waits for the host (and can be
captured in a CUDA graph). The arithmetic is the same IEEE float64 arithmetic the host would do.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from emorl.likelihoods import nll_lower_bound_per_element


class ELBOObjective:
    """The negative ELBO of one step: NLL + kl_beta * KL."""

    def __init__(self, kl_beta: float = 1.0):
        self.nll_weight = 1.0
        self.kl_weight = kl_beta

    def __call__(self, nll: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        weight = self.kl_weight  # a float, or a device tensor (GENESIS's GECO): the loss's precision
        if isinstance(weight, torch.Tensor):
            weight = weight.to(kl.dtype)
        return nll + weight * kl


class GECOObjective:
    """GECO's loss for one step with the current (zeta, C_ema); see the module docstring.

    ``multiplier`` (softplus(zeta)) and ``c_ema`` are floats or 0-dim tensors on the model's
    device; ``c_ema_set`` (a bool tensor) says whether ``c_ema`` holds a value yet (without it,
    ``c_ema=None`` means "not yet"). Before the first update the value uses C_t itself.
    """

    def __init__(self, target: float, multiplier: float | torch.Tensor, c_ema: float | torch.Tensor | None,
                 kl_beta: float = 1.0, c_ema_set: torch.Tensor | None = None):
        self.target = target
        self.nll_weight = multiplier  # softplus(zeta), a constant for the gradient
        self.kl_weight = kl_beta
        self.c_ema = c_ema
        self.c_ema_set = c_ema_set

    def __call__(self, nll: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        constraint = self.target - nll  # C_t
        if self.c_ema is not None:
            c_ema = self.c_ema
            if isinstance(c_ema, torch.Tensor):
                c_ema = c_ema.to(constraint.dtype)  # as a float would be: rounded to the loss's precision
                if self.c_ema_set is not None:
                    c_ema = torch.where(self.c_ema_set, c_ema, constraint)
            constraint = constraint + (c_ema - constraint).detach()
        weight = self.nll_weight
        if isinstance(weight, torch.Tensor):
            weight = weight.to(constraint.dtype)
        return self.kl_weight * kl - weight * constraint


@dataclass
class GECOState:
    """GECO's state read back to the host (what checkpoints hold)."""

    zeta: float = 0.55
    c_ema: float | None = None


class GECO:
    """GECO's Lagrange multiplier: a small stateful object on the training device, saved with
    every checkpoint as plain floats."""

    def __init__(self, target: float, step_size: float = 1e-6, ema: float = 0.99, warm_start: int = 1000,
                 zeta_init: float = 0.55, zeta_min: float = 0.55, speedup: float = 1.0, kl_beta: float = 1.0,
                 zeta_at_first_update: bool = True, device: torch.device | str = "cpu"):
        self.target = float(target)  # C: the NLL the constraint asks for (sum over the image)
        self.step_size = step_size
        self.ema = ema
        self.warm_start = warm_start
        self.zeta_min = zeta_min
        self.speedup = speedup
        self.kl_beta = kl_beta
        self.zeta_at_first_update = zeta_at_first_update
        self.device = torch.device(device)
        self.zeta = torch.tensor(float(zeta_init), dtype=torch.float64, device=self.device)
        self.c_ema = torch.zeros((), dtype=torch.float64, device=self.device)
        self.c_ema_set = torch.zeros((), dtype=torch.bool, device=self.device)
        # the step sizes while the constraint is met (C_ema > 0) and while it is not
        self._rates = torch.tensor([step_size * speedup, step_size], dtype=torch.float64, device=self.device)

    def weight(self) -> torch.Tensor:
        """softplus(zeta), the weight of the NLL, as a float64 tensor on the device."""
        return F.softplus(self.zeta)

    @property
    def multiplier(self) -> float:
        """softplus(zeta) read back to the host (synchronises; for tests and summaries)."""
        return float(self.weight())

    @property
    def state(self) -> GECOState:
        """(zeta, C_ema) read back to the host (synchronises)."""
        return GECOState(float(self.zeta), float(self.c_ema) if bool(self.c_ema_set) else None)

    def objective(self, step: int) -> ELBOObjective | GECOObjective:
        """The objective for training step ``step`` (the plain ELBO during the warm start)."""
        if step < self.warm_start:
            return ELBOObjective(self.kl_beta)
        return GECOObjective(self.target, self.weight(), self.c_ema, self.kl_beta, self.c_ema_set)

    def update(self, nll: float | torch.Tensor, step: int) -> None:
        """Update C_ema and zeta after training step ``step`` with the last step's batch-mean NLL
        (a tensor on the device: no synchronisation; a float is copied there first)."""
        if step < self.warm_start:
            return
        if isinstance(nll, torch.Tensor):
            nll = nll.to(torch.float64)
        else:
            nll = torch.tensor(float(nll), dtype=torch.float64, device=self.device)
        constraint = self.target - nll
        smoothed = self.c_ema * self.ema + constraint * (1.0 - self.ema)
        self.c_ema.copy_(torch.where(self.c_ema_set, smoothed, constraint))
        self.c_ema_set.fill_(True)
        if step == self.warm_start and not self.zeta_at_first_update:
            return
        rate = torch.where(self.c_ema > 0, self._rates[0], self._rates[1])
        self.zeta.copy_(torch.clamp_min(self.zeta - rate * self.c_ema, self.zeta_min))

    def state_dict(self) -> dict:
        state = self.state
        return {"zeta": state.zeta, "c_ema": state.c_ema}

    def load_state_dict(self, state: dict) -> None:
        self.zeta.fill_(float(state["zeta"]))
        self.c_ema_set.fill_(state["c_ema"] is not None)
        self.c_ema.fill_(0.0 if state["c_ema"] is None else float(state["c_ema"]))


def check_target_reachable(target: float, num_elements: int, sigma: float) -> str | None:
    """Warn (and return the message) when no reconstruction can meet GECO's target.

    With constants dropped, the NLL per element of either likelihood is at least
    log(sigma); a target below ``num_elements * log(sigma)`` can never be met, and zeta
    then only grows (the case of the paper's Tetrominoes setting: -4500 vs -4425 at sigma 0.3).
    """
    bound = num_elements * nll_lower_bound_per_element(sigma)
    if target >= bound:
        return None
    message = (
        f"GECO target C={target:g} is below the smallest NLL the likelihood can reach with sigma={sigma:g} "
        f"({bound:.1f} = {num_elements} elements x log(sigma) = {math.log(sigma):.4f}; the target asks for "
        f"{target / num_elements:.4f} per element). The constraint can never be met, so zeta will only grow. "
        "This is the paper's own Tetrominoes setting; raise geco.target or sigma to make it reachable."
    )
    warnings.warn(message, stacklevel=2)
    return message
