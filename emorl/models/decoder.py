"""Spatial broadcast decoders shared by every model (Appendix F).

Each of the K slots is decoded independently into RGB [3, H, W] (sigmoid) and a mask
logit [1, H, W]; the masks are normalised over K by a (log-)softmax.

Kinds (``model.decoder``):

* ``broadcast``: the paper's decoder (CLEVR6, Multi-dSprites): broadcast to
  (H+10)x(W+10), + position embedding, 4 x (Conv 3x3, 64, no padding, ELU), Conv 3x3 -> 4.
* ``broadcast_light``: the lighter Tetrominoes decoder (Slot Attention's sprites decoder as
  the authors' code has it): (H+6)x(W+6), 3 x (Conv 5x5, 32, padding 1, ReLU), Conv 3x3
  padding 1 -> 4.
* ``deconv``: Slot Attention's deconvolutional decoder (the paper's E-MORL-X-S): broadcast to
  (H/16)x(W/16), + position embedding, 4 x (ConvTranspose 5x5, stride 2, 64, ReLU),
  ConvTranspose 5x5 stride 1 (64, ReLU), ConvTranspose 3x3 -> 4.

The first layer of the broadcast decoders sees a slot vector that is constant over space
plus a position embedding shared by every slot. Convolution is linear, so
``conv(broadcast(z) + P) = conv_without_bias(broadcast(z)) + conv(P)``; the first term is
``z @ G`` with ``G[d, c, y, x]`` the sum of the kernel taps that fall inside the grid at
(y, x) (constant over space without padding). ``factorized_first_layer=True`` computes the
layer this way: the same mathematics with a fraction of the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emorl.errors import ConfigError
from emorl.models.encoder import PositionEmbedding

DECODER_KINDS = ("broadcast", "broadcast_light", "deconv")


@dataclass
class DecoderOutput:
    """rgb [B, K, 3, H, W] in [0, 1]; log_masks [B, K, 1, H, W], log-softmax over K."""

    rgb: torch.Tensor
    log_masks: torch.Tensor

    @property
    def masks(self) -> torch.Tensor:
        return self.log_masks.exp()

    def reconstruction(self) -> torch.Tensor:
        """sum_k pi_k * y_k: [B, 3, H, W]."""
        return (self.masks * self.rgb).sum(dim=1)


def _activation(name: str) -> nn.Module:
    return {"elu": nn.ELU(), "relu": nn.ReLU()}[name]


class SpatialBroadcastDecoder(nn.Module):
    """Decodes slots z [B, K, D] to a :class:`DecoderOutput` at (height, width)."""

    def __init__(
        self,
        latent_dim: int,
        height: int,
        width: int,
        kind: str = "broadcast",
        factorized_first_layer: bool = True,
    ):
        super().__init__()
        if kind not in DECODER_KINDS:
            raise ConfigError(f"model.decoder={kind!r} is not one of {DECODER_KINDS}")
        self.kind = kind
        self.height, self.width = height, width
        self.factorized_first_layer = factorized_first_layer and kind != "deconv"
        if kind == "broadcast":
            grid, channels, kernel, padding, act, depth = (height + 10, width + 10), 64, 3, 0, "elu", 4
        elif kind == "broadcast_light":
            grid, channels, kernel, padding, act, depth = (height + 6, width + 6), 32, 5, 1, "relu", 3
        else:
            if height % 16 or width % 16:
                raise ConfigError(
                    f"model.decoder='deconv' upsamples a (H/16)x(W/16) grid 16 times and needs H and W "
                    f"divisible by 16; got image size {height}x{width}. Use 64, 96 or 128, or another decoder."
                )
            grid, channels, kernel, padding, act, depth = (height // 16, width // 16), 64, 5, 2, "relu", 4
        self.grid_hw = grid
        self.position = PositionEmbedding(latent_dim, *grid)
        self.activation = _activation(act)
        if kind == "deconv":
            layers = [nn.ConvTranspose2d(latent_dim if i == 0 else channels, channels, 5, stride=2,
                                         padding=2, output_padding=1) for i in range(depth)]
            layers.append(nn.ConvTranspose2d(channels, channels, 5, stride=1, padding=2))
            self.output_layer = nn.ConvTranspose2d(channels, 4, 3, stride=1, padding=1)
        else:
            layers = [nn.Conv2d(latent_dim if i == 0 else channels, channels, kernel, padding=padding)
                      for i in range(depth)]
            self.output_layer = nn.Conv2d(channels, 4, 3, padding=1 if kind == "broadcast_light" else 0)
        self.hidden_layers = nn.ModuleList(layers)

    # -- the first layer -----------------------------------------------------------------
    def _first_layer_plain(self, slots: torch.Tensor) -> torch.Tensor:
        """Broadcast [N, D] to the grid, add the position embedding, apply layer 0."""
        num, dim = slots.shape
        broadcast = slots[:, :, None, None].expand(num, dim, *self.grid_hw)
        return self.hidden_layers[0](self.position(broadcast))

    def _first_layer_factorized(self, slots: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`_first_layer_plain`, as z @ G + conv(P) (see the module docstring)."""
        conv: nn.Conv2d = self.hidden_layers[0]  # type: ignore[assignment]
        weight = conv.weight  # [C, D, k, k]
        channels, dim = weight.shape[:2]
        position_term = F.conv2d(self.position.embedding().unsqueeze(0), weight, conv.bias, padding=conv.padding)
        if conv.padding == (0, 0):  # every tap is always inside: G is constant over space
            slot_term = slots @ weight.sum(dim=(2, 3)).t()  # [N, C]
            return slot_term[:, :, None, None] + position_term
        ones = weight.new_ones(1, dim, *self.grid_hw)
        per_dim_kernels = weight.transpose(0, 1).reshape(dim * channels, 1, *weight.shape[2:])
        tap_sums = F.conv2d(ones, per_dim_kernels, padding=conv.padding, groups=dim)  # [1, D*C, H', W']
        tap_sums = tap_sums.view(dim, channels * tap_sums.shape[-2] * tap_sums.shape[-1])
        slot_term = (slots @ tap_sums).view(len(slots), channels, *position_term.shape[-2:])
        return slot_term + position_term

    def decode_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """Each slot on its own: z [N, D] -> raw output [N, 4, H, W] (RGB logits, mask logit).

        Slots do not interact before :meth:`compose`, so decoding a subset of them (one slot
        changed in a latent traversal) and composing with the others' cached outputs gives
        exactly what decoding the whole set gives.
        """
        if self.factorized_first_layer:
            hidden = self._first_layer_factorized(slots)
        else:
            hidden = self._first_layer_plain(slots)
        hidden = self.activation(hidden)
        for layer in self.hidden_layers[1:]:
            hidden = self.activation(layer(hidden))
        out = self.output_layer(hidden)
        if out.shape[-2:] != (self.height, self.width):  # a wrong layer spec, not user input
            raise RuntimeError(f"decoder produced {tuple(out.shape[-2:])}, expected {(self.height, self.width)}")
        return out

    @staticmethod
    def compose(raw: torch.Tensor) -> DecoderOutput:
        """Raw per-slot outputs [B, K, 4, H, W] -> RGB (sigmoid) and masks (softmax over K)."""
        if raw.dtype not in (torch.float32, torch.float64):  # bf16/fp16 under autocast: score in fp32
            raw = raw.float()
        rgb = torch.sigmoid(raw[:, :, :3])
        log_masks = torch.log_softmax(raw[:, :, 3:], dim=1)
        return DecoderOutput(rgb, log_masks)

    def forward(self, slots: torch.Tensor) -> DecoderOutput:
        batch, num_slots, dim = slots.shape
        out = self.decode_slots(slots.reshape(batch * num_slots, dim))
        return self.compose(out.view(batch, num_slots, 4, *out.shape[-2:]))
