"""Slot Attention (Locatello et al., 2020) as the EfficientMORL paper compares with it.

The object-discovery auto-encoder: the same CNN encoder and position encoding as
EfficientMORL (:class:`~emorl.models.encoder.ImageEncoder`), the Slot Attention module,
and the shared spatial broadcast decoder (``broadcast_light`` on the sprites sets,
``deconv`` on CLEVR). The loss is the mean squared error of the reconstruction, averaged
over pixels and channels as in the original.

The Slot Attention module (Algorithm 1 of Locatello et al.): K slots of size D are drawn
from one learned Gaussian shared by all slots; for T iterations, q = W_q LN(slots),
k = W_k LN(inputs), v = W_v LN(inputs); the attention is a softmax over the *slots* of
q k^T / sqrt(D), plus eps = 1e-8, renormalised over the inputs (a weighted mean); the
updates go through a GRU cell (state = previous slots) and a residual MLP
(LN -> Linear(D, 128) -> ReLU -> Linear(128, D)).

Switches for the EfficientMORL authors' re-implementation (their released code):
``input_norm=False`` (no LayerNorm on the module's inputs) and ``slot_init="authors"``
(mean 0, raw scale 1, std = sqrt(softplus(s) + 1e-5) instead of exp(log sigma)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from emorl.errors import ConfigError
from emorl.models import gaussian
from emorl.models.decoder import DECODER_KINDS, DecoderOutput, SpatialBroadcastDecoder
from emorl.models.validation import check_choice, check_int
from emorl.models.encoder import ImageEncoder
from emorl.models.outputs import SlotModelOutput

SLOT_INITS = ("original", "authors")


def check_images(model_name: str, images: torch.Tensor, in_channels: int, image_size: int) -> None:
    """Raise ConfigError unless ``images`` is a float tensor [B, in_channels, image_size, image_size]."""
    expected = f"[B, {in_channels}, {image_size}, {image_size}]"
    if not images.is_floating_point():
        raise ConfigError(f"{model_name} expects float images in [-1, 1]; got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != in_channels or tuple(images.shape[2:]) != (image_size,) * 2:
        raise ConfigError(
            f"{model_name} expects images {expected} in [-1, 1] (model.image_size={image_size}, "
            f"model.in_channels={in_channels}); got {list(images.shape)}"
        )


def reconstruction_mse(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pixels, channels and images of the squared error (the original's loss)."""
    return (reconstruction - target).square().mean()


@dataclass
class SlotAttentionConfig:
    """Architecture of the Slot Attention auto-encoder. Defaults follow Locatello et al."""

    image_size: int = 64  # H = W
    in_channels: int = 3
    num_slots: int = 7  # K (can be changed per call)
    slot_dim: int = 64  # D
    iterations: int = 3  # T (can be changed per call: ``refine_steps``)
    mlp_hidden: int = 128  # hidden width of the slot update MLP
    encoder_channels: int = 64
    decoder: str = "broadcast_light"  # broadcast_light (sprites) | deconv (CLEVR) | broadcast
    epsilon: float = 1e-8  # added to the attention before the weighted mean
    input_norm: bool = True  # LayerNorm on the module's inputs (original); the EMORL authors' code: False
    slot_init: str = "original"  # original: mu + exp(log sigma) eps; authors: sqrt(softplus(s) + 1e-5)
    factorized_decoder: bool = True  # exact, cheaper first decoder layer (see decoder.py)

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 8)
        check_int("in_channels", self.in_channels, 1)
        check_int("num_slots", self.num_slots, 1)
        check_int("slot_dim", self.slot_dim, 1)
        check_int("iterations", self.iterations, 1)
        check_int("mlp_hidden", self.mlp_hidden, 1)
        check_int("encoder_channels", self.encoder_channels, 1)
        check_choice("decoder", self.decoder, DECODER_KINDS)
        check_choice("slot_init", self.slot_init, SLOT_INITS)
        if not self.epsilon >= 0:
            raise ConfigError(f"model.epsilon={self.epsilon!r} must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SlotAttentionOutput(SlotModelOutput):
    """One forward pass of the Slot Attention auto-encoder; ``loss`` is the MSE."""

    attention: torch.Tensor  # [B, K, N]: the last iteration's softmax over slots (sums to 1 over K)
    mse: torch.Tensor  # scalar, the same value as ``loss``

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.detach(), "mse": self.mse.detach()}


class SlotInitialiser(nn.Module):
    """The shared learned Gaussian the K initial slots are drawn from.

    ``original``: mu and log sigma, each [D], initialised like Keras' glorot_uniform on
    shape [1, 1, D] (U(-a, a), a = sqrt(6 / (1 + D))); std = exp(log sigma).
    ``authors``: mu = 0 and raw scale s = 1; std = sqrt(softplus(s) + 1e-5).
    """

    def __init__(self, slot_dim: int, kind: str = "original"):
        super().__init__()
        self.kind = kind
        self.slot_dim = slot_dim
        self.mean = nn.Parameter(torch.zeros(slot_dim))
        self.scale = nn.Parameter(torch.ones(slot_dim))  # log sigma (original) or s (authors)
        if kind == "original":
            bound = math.sqrt(6.0 / (1 + slot_dim))
            nn.init.uniform_(self.mean, -bound, bound)
            nn.init.uniform_(self.scale, -bound, bound)

    def std(self) -> torch.Tensor:
        if self.kind == "original":
            return self.scale.exp()
        return gaussian.variance_from_raw(self.scale, "authors").sqrt()

    def forward(self, batch: int, num_slots: int) -> torch.Tensor:
        """K independent samples per image: [B, K, D]."""
        mean = self.mean.expand(batch, num_slots, self.slot_dim)
        return mean + self.std() * gaussian.standard_normal_like(mean)


class SlotAttention(nn.Module):
    """The iterative attention module: tokens [B, N, C] and initial slots [B, K, D] -> slots."""

    def __init__(self, input_dim: int, slot_dim: int, mlp_hidden: int = 128, epsilon: float = 1e-8,
                 input_norm: bool = True):
        super().__init__()
        self.slot_dim = slot_dim
        self.epsilon = epsilon
        self.input_norm = nn.LayerNorm(input_dim) if input_norm else nn.Identity()
        self.to_k = nn.Linear(input_dim, slot_dim, bias=False)
        self.to_v = nn.Linear(input_dim, slot_dim, bias=False)
        self.to_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.slot_norm = nn.LayerNorm(slot_dim)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.mlp_norm = nn.LayerNorm(slot_dim)
        self.mlp = nn.Sequential(nn.Linear(slot_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, slot_dim))

    def attend(self, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor):
        """One round of attention: (updates [B, K, D], softmax over slots [B, K, N])."""
        query = self.to_q(self.slot_norm(slots)) * self.slot_dim ** -0.5
        logits = torch.einsum("bkd,bnd->bkn", query, keys)
        attention = torch.softmax(logits, dim=1)  # slots compete for each input
        weights = attention + self.epsilon
        weights = weights / weights.sum(dim=-1, keepdim=True)  # weighted mean over the inputs
        return torch.bmm(weights, values), attention

    def forward(self, tokens: torch.Tensor, slots: torch.Tensor, iterations: int):
        """Returns (slots [B, K, D], attention of the last iteration [B, K, N])."""
        tokens = self.input_norm(tokens)
        keys, values = self.to_k(tokens), self.to_v(tokens)
        batch, num_slots, dim = slots.shape
        attention = None
        for _ in range(iterations):
            updates, attention = self.attend(keys, values, slots)
            slots = self.gru(updates.reshape(-1, dim), slots.reshape(-1, dim)).view(batch, num_slots, dim)
            slots = slots + self.mlp(self.mlp_norm(slots))
        return slots, attention


class SlotAttentionAutoEncoder(nn.Module):
    """Encoder -> Slot Attention -> spatial broadcast decoder, trained with the MSE."""

    supports_cuda_graph = True  # no host synchronisation in a training step (emorl.engine.step)

    def __init__(self, config: SlotAttentionConfig | None = None, **overrides):
        super().__init__()
        config = config or SlotAttentionConfig()
        if overrides:
            config = SlotAttentionConfig(**{**config.to_dict(), **overrides})
        self.config = c = config
        self.encoder = ImageEncoder(c.image_size, c.image_size, c.in_channels, c.encoder_channels)
        self.slot_init = SlotInitialiser(c.slot_dim, c.slot_init)
        self.slot_attention = SlotAttention(c.encoder_channels, c.slot_dim, c.mlp_hidden, c.epsilon, c.input_norm)
        self.decoder = SpatialBroadcastDecoder(c.slot_dim, c.image_size, c.image_size, c.decoder,
                                               factorized_first_layer=c.factorized_decoder)

    def forward(self, images: torch.Tensor, num_slots: int | None = None, refine_steps: int | None = None,
                objective=None) -> SlotAttentionOutput:
        """images [B, C, H, W] in [-1, 1]; ``num_slots`` overrides K, ``refine_steps`` the
        number of attention iterations. ``objective`` is ignored (the loss is the MSE)."""
        c = self.config
        num_slots = c.num_slots if num_slots is None else num_slots
        iterations = c.iterations if refine_steps is None else refine_steps
        check_images("SlotAttentionAutoEncoder", images, c.in_channels, c.image_size)
        check_int("num_slots (K)", num_slots, 1)
        check_int("refine_steps (Slot Attention iterations)", iterations, 1)
        tokens = self.encoder(images)
        slots = self.slot_init(images.shape[0], num_slots)
        slots, attention = self.slot_attention(tokens, slots, iterations)
        decoded = self.decoder(slots)
        reconstruction = decoded.reconstruction()
        mse = reconstruction_mse(reconstruction, (images + 1.0) / 2.0)
        return SlotAttentionOutput(loss=mse, reconstruction=reconstruction, masks=decoded.masks,
                                   components=decoded.rgb, slots=slots, attention=attention, mse=mse)

    @torch.no_grad()
    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        """Decode slots [B, K, D] (latent traversals, activeness)."""
        return self.decoder(slots)


__all__ = ["SlotAttention", "SlotAttentionAutoEncoder", "SlotAttentionConfig", "SlotAttentionOutput",
           "SlotInitialiser", "check_images", "reconstruction_mse"]
