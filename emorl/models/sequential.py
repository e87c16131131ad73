"""Parts shared by the sequential-attention baselines, MONet and GENESIS.

Both models explain an image with K components whose masks come from a *stick-breaking*
process: component k takes a fraction alpha_k of the scope s_k that the components before
it left, s_1 = 1, m_k = s_k alpha_k, s_{k+1} = s_k (1 - alpha_k), and the last component
takes what is left, m_K = s_K. The masks sum to one, and the decomposition is *ordered*:
component k only sees the scope of components < k. Everything is kept in log space,
log alpha_k = logsigmoid(a_k) and log(1 - alpha_k) = logsigmoid(-a_k) for a logit a_k
(a two-way log-softmax with the second logit fixed at 0).

Both also use MONet's component VAE: a convolutional encoder of the image and the
component's log mask, and a spatial broadcast decoder with two fixed coordinate channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emorl.models.decoder import _activation
from emorl.models.iodine import coordinate_channels


def stick_breaking_step(log_scope: torch.Tensor, logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: (log m_k = log s_k + log alpha_k, log s_{k+1} = log s_k + log(1 - alpha_k))."""
    return log_scope + F.logsigmoid(logit), log_scope + F.logsigmoid(-logit)


def stick_breaking(logits: torch.Tensor) -> torch.Tensor:
    """Log masks [B, K, ...] from K logits [B, K, ...] at once (the last logit is not used:
    the last component takes the remaining scope); they sum to one over K."""
    log_rest = F.logsigmoid(-logits[:, :-1])  # log(1 - alpha_k), k < K
    start = torch.zeros_like(logits[:, :1])
    log_scope = torch.cat([start, torch.cumsum(log_rest, dim=1)], dim=1)  # log s_1 .. log s_K
    log_alpha = torch.cat([F.logsigmoid(logits[:, :-1]), start], dim=1)  # alpha_K = 1
    return log_scope + log_alpha


def conv_output_size(size: int, layers: int, kernel: int = 3, stride: int = 2, padding: int = 1) -> int:
    """Spatial size after ``layers`` identical convolutions."""
    for _ in range(layers):
        size = (size + 2 * padding - kernel) // stride + 1
    return size


class ComponentEncoder(nn.Module):
    """MONet's component encoder: [image; log mask] -> 4 x (Conv 3x3, stride 2, padding 1, act)
    -> flatten -> Linear(hidden) -> act -> Linear(2D): the posterior's (mean, raw scale)."""

    def __init__(self, image_size: int, latent_dim: int, in_channels: int = 3,
                 channels: tuple[int, ...] = (32, 32, 64, 64), hidden: int = 256, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels + 1
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), _activation(activation)]
            width = out
        side = conv_output_size(image_size, len(channels))
        self.cnn = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(width * side * side, hidden), _activation(activation),
                                 nn.Linear(hidden, 2 * latent_dim))

    def forward(self, images: torch.Tensor, log_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, C, H, W], log_masks [N, 1, H, W] -> (mean, raw scale), each [N, D]."""
        hidden = self.cnn(torch.cat([images, log_masks], dim=1)).flatten(1)
        return self.mlp(hidden).chunk(2, dim=-1)


class CoordinateBroadcastDecoder(nn.Module):
    """MONet's spatial broadcast decoder (Watters et al. 2019): z [N, D] tiled to
    (H + 2L) x (W + 2L), two coordinate channels (x, y linear in [-1, 1]) appended, L x (Conv
    3x3, no padding, ``channels``, act), then Conv 1x1 -> ``out_channels``: [N, out, H, W]."""

    def __init__(self, latent_dim: int, image_size: int, out_channels: int, channels: int = 32, layers: int = 4,
                 activation: str = "relu"):
        super().__init__()
        self.grid = image_size + 2 * layers
        self.register_buffer("coordinates", coordinate_channels(self.grid, self.grid), persistent=False)
        convs: list[nn.Module] = []
        width = latent_dim + 2
        for _ in range(layers):
            convs += [nn.Conv2d(width, channels, 3), _activation(activation)]
            width = channels
        self.cnn = nn.Sequential(*convs, nn.Conv2d(width, out_channels, 1))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        num, dim = latents.shape
        tiled = latents[:, :, None, None].expand(num, dim, self.grid, self.grid)
        coordinates = self.coordinates.to(latents.dtype).expand(num, -1, -1, -1)
        return self.cnn(torch.cat([tiled, coordinates], dim=1))


__all__ = ["ComponentEncoder", "CoordinateBroadcastDecoder", "conv_output_size", "stick_breaking",
           "stick_breaking_step"]
