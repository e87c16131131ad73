"""A stand-in for ``emorl.models.gaussian.standard_normal_like`` that makes slot symmetry testable."""

from __future__ import annotations

import torch


class NoiseTape:
    """Records every noise draw, then replays it through ``transform`` (e.g. the slot axis, dim 1,
    permuted or tied) once ``transform`` is set; ``position`` counts the draws replayed."""

    def __init__(self):
        self.recorded: list[torch.Tensor] = []
        self.transform = None
        self.position = 0

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            noise = torch.randn_like(like)
            self.recorded.append(noise)
            return noise
        noise = self.transform(self.recorded[self.position])
        self.position += 1
        return noise
