"""GECO's update rules: the EfficientMORL paper's (:class:`emorl.geco.GECO`) and GENESIS's.

``loss.geco.rule`` picks one (:func:`build_geco`):

* ``emorl`` (default): the Lagrange multiplier weighs the NLL, softplus(zeta) >= 1, and zeta
  moves additively (Appendix F.2 of the EfficientMORL paper; :mod:`emorl.geco`).
* ``genesis``: GENESIS's rule (Engelcke et al., 2020, after Rezende & Viola, 2018). The loss
  is NLL + beta * KL: the multiplier beta weighs the *KL*. After every step the NLL's moving
  average err_ema (the first step's NLL at the first update, then
  err_ema <- ema * err_ema + (1 - ema) * nll) gives C_ema = C - err_ema, and
  beta <- beta * exp(step * C_ema), the step multiplied by ``speedup`` while the constraint is
  met (C_ema > 0: beta grows, the KL is pushed down); beta is kept in [beta_min, 1e10].
  GENESIS: C = 0.5655 per element (with its likelihood's constants, sigma 0.7), step 1e-5 at
  64x64 (scaled by 64^2 / (H W)), ema 0.99, beta_0 = 1, beta_min = 1e-10, speedup 10, from the
  first step.

Here the state is kept as zeta = log beta, so ``zeta_init`` and ``zeta_min`` are log beta_0 and
log beta_min (0 and log 1e-10 = -23.03 for GENESIS), and the trainer's ``geco_zeta`` /
``geco_multiplier`` are log beta and beta. The object has the interface of
:class:`emorl.geco.GECO`: ``objective(step)``, ``update(nll, step)``, ``multiplier``,
``state``, ``state_dict()``, ``load_state_dict()``.
"""

from __future__ import annotations

import math

import torch

from emorl.errors import ConfigError
from emorl.geco import GECO, ELBOObjective

GECO_RULES = ("emorl", "genesis")
BETA_MAX = 1e10


class GenesisGECO(GECO):
    """GENESIS's GECO (see the module docstring): beta = exp(zeta) weighs the KL. The state (on the
    device), its checkpointing and the moving average are :class:`emorl.geco.GECO`'s; the
    multiplier, the objective and the direction of the update are GENESIS's."""

    def __init__(self, target: float, step_size: float = 1e-5, ema: float = 0.99, warm_start: int = 0,
                 zeta_init: float = 0.0, zeta_min: float = math.log(1e-10), speedup: float = 10.0,
                 kl_beta: float = 1.0, zeta_at_first_update: bool = True, device: torch.device | str = "cpu"):
        super().__init__(target, step_size, ema, warm_start, zeta_init, zeta_min, speedup, kl_beta,
                         zeta_at_first_update, device)
        self.zeta_max = math.log(BETA_MAX)

    def weight(self) -> torch.Tensor:
        """beta = exp(zeta), the weight of the KL, as a float64 tensor on the device."""
        return torch.exp(self.zeta)

    def objective(self, step: int) -> ELBOObjective:
        """NLL + kl_beta * beta * KL (the plain ELBO during the warm start)."""
        if step < self.warm_start:
            return ELBOObjective(self.kl_beta)
        return ELBOObjective(self.kl_beta * self.weight())

    def update(self, nll: float | torch.Tensor, step: int) -> None:
        """After training step ``step``: the moving average of the batch-mean NLL, then beta (device
        work only, as :meth:`emorl.geco.GECO.update`)."""
        if step < self.warm_start:
            return
        nll = nll.to(torch.float64) if isinstance(nll, torch.Tensor) else torch.tensor(
            float(nll), dtype=torch.float64, device=self.device)
        constraint = self.target - nll
        smoothed = self.c_ema * self.ema + constraint * (1.0 - self.ema)
        self.c_ema.copy_(torch.where(self.c_ema_set, smoothed, constraint))
        self.c_ema_set.fill_(True)
        rate = torch.where(self.c_ema > 0, self._rates[0], self._rates[1])
        self.zeta.copy_(torch.clamp(self.zeta + rate * self.c_ema, self.zeta_min, self.zeta_max))


def build_geco(settings, kl_beta: float = 1.0, device: torch.device | str = "cpu") -> GECO | GenesisGECO:
    """The GECO of the ``loss.geco`` settings (a mapping or config node), by ``rule``, its state on
    ``device``."""
    get = settings.get if hasattr(settings, "get") else lambda key, default=None: getattr(settings, key, default)
    rule = get("rule", "emorl")
    if rule not in GECO_RULES:
        raise ConfigError(f"loss.geco.rule={rule!r} is not one of {list(GECO_RULES)}")
    kind = GECO if rule == "emorl" else GenesisGECO
    return kind(settings["target"], settings["step_size"], settings["ema"], settings["warm_start"],
                settings["zeta_init"], settings["zeta_min"], settings["speedup"], kl_beta,
                get("zeta_at_first_update", True), device=device)


__all__ = ["GECO_RULES", "GenesisGECO", "build_geco"]
