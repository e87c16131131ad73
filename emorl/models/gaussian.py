"""Diagonal Gaussians parameterised as the paper's lambda = (mu, s).

``s`` is unconstrained; the variance is a softplus of it (Appendix F, Eqs. 10-11):

* ``"paper"``:   sigma^2 = log(1 + exp(min(s, 80)) + 1e-5)      (Eq. 11 as printed)
* ``"authors"``: sigma^2 = softplus(min(s, 80)) + 1e-5           (the released code)

Both are bounded below by about 1e-5 and differ by at most 1e-5 everywhere.

The sequential-attention baselines parameterise their Gaussians as their papers do (these
formulas are not choices of EfficientMORL's ``model.variance_formula``):

* ``"log_std"``:       sigma = exp(min(s, 40))                          (MONet: mu and log sigma)
* ``"genesis"``:       sigma = softplus(s + 0.5) + 1e-8                 (GENESIS' posteriors)
* ``"genesis_prior"``: sigma = sigmoid(s + 4) + 1e-4, in (1e-4, 1 + 1e-4) (GENESIS' learned priors)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from emorl.errors import ConfigError

VARIANCE_FORMULAS = ("paper", "authors")
BASELINE_FORMULAS = ("log_std", "genesis", "genesis_prior")
_S_MAX = 80.0
_EPS = 1e-5
_LOG_STD_MAX = 40.0  # exp(2 * 40) is still finite in float32


def standard_normal_like(x: torch.Tensor) -> torch.Tensor:
    """The noise of every reparameterised sample (one place, so tests can control it)."""
    return torch.randn_like(x)


def variance_from_raw(raw_scale: torch.Tensor, formula: str = "paper") -> torch.Tensor:
    """Map the unconstrained ``s`` to a variance (Eqs. 10-11)."""
    clipped = torch.clamp(raw_scale, max=_S_MAX)
    if formula == "paper":
        return torch.log1p(torch.exp(clipped) + _EPS)
    if formula == "authors":
        return F.softplus(clipped) + _EPS
    if formula == "log_std":
        return torch.exp(2.0 * torch.clamp(raw_scale, max=_LOG_STD_MAX))
    if formula == "genesis":
        return (F.softplus(raw_scale + 0.5) + 1e-8).square()
    if formula == "genesis_prior":
        return (torch.sigmoid(raw_scale + 4.0) + 1e-4).square()
    raise ConfigError(f"model.variance_formula={formula!r} is not one of {VARIANCE_FORMULAS + BASELINE_FORMULAS}")


class Gaussian(NamedTuple):
    """A diagonal Gaussian over the last dimension: lambda = (mean, raw_scale)."""

    mean: torch.Tensor
    raw_scale: torch.Tensor
    formula: str = "paper"

    @property
    def variance(self) -> torch.Tensor:
        return variance_from_raw(self.raw_scale, self.formula)

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    def rsample(self) -> torch.Tensor:
        """Reparameterised sample mu + sigma * eps."""
        return self.mean + self.std * standard_normal_like(self.mean)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; mean, variance) summed over the last dimension (constants included)."""
        var = self.variance
        return -0.5 * ((value - self.mean).square() / var + var.log() + math.log(2 * math.pi)).sum(-1)

    def kl(self, prior: "Gaussian | None" = None) -> torch.Tensor:
        """Analytic KL(self || prior) summed over the last dimension; ``None`` = N(0, I)."""
        var_q = self.variance
        if prior is None:
            return 0.5 * (var_q + self.mean.square() - 1.0 - var_q.log()).sum(-1)
        var_p = prior.variance
        return 0.5 * (
            var_p.log() - var_q.log() + (var_q + (self.mean - prior.mean).square()) / var_p - 1.0
        ).sum(-1)

    def cat(self) -> torch.Tensor:
        """lambda as one tensor [..., 2D] = [mean; raw_scale]."""
        return torch.cat([self.mean, self.raw_scale], dim=-1)

    @classmethod
    def split(cls, params: torch.Tensor, formula: str = "paper") -> "Gaussian":
        """Inverse of :meth:`cat`."""
        mean, raw_scale = params.chunk(2, dim=-1)
        return cls(mean, raw_scale, formula)
