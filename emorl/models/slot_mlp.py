"""The Slot MLP baseline of Locatello et al. (2020).

Slot Attention with its attention module replaced by an MLP: the encoder's tokens
(:class:`~emorl.models.encoder.ImageEncoder`, shared with EfficientMORL) are pooled by a
mean over the N positions, and an MLP maps the pooled vector to K x D numbers, read as an
*ordered* set of K slots: slot k always comes from its own block of output weights. The
model is therefore not permutation-equivariant and K is fixed at construction. The
slots go through the shared spatial broadcast decoder; the loss is the reconstruction
MSE (mean over pixels and channels), as for Slot Attention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from emorl.errors import ConfigError
from emorl.models.decoder import DECODER_KINDS, DecoderOutput, SpatialBroadcastDecoder
from emorl.models.validation import check_choice, check_int
from emorl.models.encoder import ImageEncoder
from emorl.models.outputs import SlotModelOutput
from emorl.models.slot_attention import check_images, reconstruction_mse


@dataclass
class SlotMLPConfig:
    """Architecture of the Slot MLP baseline."""

    image_size: int = 64  # H = W
    in_channels: int = 3
    num_slots: int = 7  # K (fixed: the slots are the MLP's ordered outputs)
    slot_dim: int = 64  # D
    mlp_hidden: list[int] = field(default_factory=lambda: [512, 512])  # hidden widths (ReLU)
    encoder_channels: int = 64
    decoder: str = "broadcast_light"  # broadcast_light (sprites) | deconv (CLEVR) | broadcast
    factorized_decoder: bool = True

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 8)
        check_int("in_channels", self.in_channels, 1)
        check_int("num_slots", self.num_slots, 1)
        check_int("slot_dim", self.slot_dim, 1)
        check_int("encoder_channels", self.encoder_channels, 1)
        check_choice("decoder", self.decoder, DECODER_KINDS)
        widths = self.mlp_hidden
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
            raise ConfigError(f"model.mlp_hidden={widths!r} must be a list of integers >= 1, e.g. [512, 512]")
        for width in widths:
            check_int("mlp_hidden[...]", width, 1)
        self.mlp_hidden = [int(w) for w in widths]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SlotMLPOutput(SlotModelOutput):
    """One forward pass of the Slot MLP; ``loss`` is the MSE."""

    mse: torch.Tensor  # scalar, the same value as ``loss``

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.detach(), "mse": self.mse.detach()}


class SlotMLPAutoEncoder(nn.Module):
    """Encoder -> mean over positions -> MLP -> K ordered slots -> spatial broadcast decoder."""

    supports_cuda_graph = True  # no host synchronisation in a training step (emorl.engine.step)

    def __init__(self, config: SlotMLPConfig | None = None, **overrides):
        super().__init__()
        config = config or SlotMLPConfig()
        if overrides:
            config = SlotMLPConfig(**{**config.to_dict(), **overrides})
        self.config = c = config
        self.encoder = ImageEncoder(c.image_size, c.image_size, c.in_channels, c.encoder_channels)
        layers: list[nn.Module] = []
        width = c.encoder_channels
        for hidden in c.mlp_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, c.num_slots * c.slot_dim))
        self.slot_mlp = nn.Sequential(*layers)
        self.decoder = SpatialBroadcastDecoder(c.slot_dim, c.image_size, c.image_size, c.decoder,
                                               factorized_first_layer=c.factorized_decoder)

    def forward(self, images: torch.Tensor, num_slots: int | None = None, refine_steps: int | None = None,
                objective=None) -> SlotMLPOutput:
        """images [B, C, H, W] in [-1, 1]. ``num_slots`` may only repeat the trained K;
        ``refine_steps`` and ``objective`` are ignored (no iterations; the loss is the MSE)."""
        c = self.config
        if num_slots is not None and num_slots != c.num_slots:
            raise ConfigError(
                f"Slot MLP outputs an ordered set of exactly model.num_slots={c.num_slots} slots (one block "
                f"of MLP weights per slot); it cannot run with num_slots={num_slots}. Evaluate it with "
                f"K={c.num_slots}, or train a Slot MLP with num_slots={num_slots}."
            )
        check_images("SlotMLPAutoEncoder", images, c.in_channels, c.image_size)
        pooled = self.encoder(images).mean(dim=1)  # [B, C]: mean over the N positions
        slots = self.slot_mlp(pooled).view(images.shape[0], c.num_slots, c.slot_dim)
        decoded = self.decoder(slots)
        reconstruction = decoded.reconstruction()
        mse = reconstruction_mse(reconstruction, (images + 1.0) / 2.0)
        return SlotMLPOutput(loss=mse, reconstruction=reconstruction, masks=decoded.masks,
                             components=decoded.rgb, slots=slots, mse=mse)

    @torch.no_grad()
    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        """Decode slots [B, K, D] (latent traversals, activeness)."""
        return self.decoder(slots)


__all__ = ["SlotMLPAutoEncoder", "SlotMLPConfig", "SlotMLPOutput"]
