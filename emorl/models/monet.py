"""MONet (Burgess et al., 2019): recurrent attention over the scope and a component VAE.

Attention network (the paper's Appendix B): a U-Net that sees the image x and the current
log scope log s_k (C + 1 channels) and outputs a logit a_k; the stick-breaking process of
:mod:`emorl.models.sequential` turns it into the mask m_k = s_k alpha_k and the next scope
s_{k+1} = s_k (1 - alpha_k), for k = 1..K-1; the last component takes the rest, m_K = s_K.
Everything stays in log space. Each U-Net block is a bias-free Conv 3x3 (stride 1), instance
normalisation with a learned bias, ReLU, then nearest-neighbour resizing by 2 (none after
the last block of each path); skips are taken after the ReLU of each down block and
concatenated to the input of the mirrored up block; a 3-layer MLP (128, 128, then the size of
the last skip, ReLU after each) joins the two paths; a Conv 1x1 gives the logit.

Component VAE, run on every component in parallel: the encoder (4 x Conv 3x3 stride 2,
[32, 32, 64, 64], ReLU; MLP 256 -> 2D) sees [x; log m_k] and gives q(z_k | x, m_k) with mean
and log sigma (D = 16); a sample z_k goes through the spatial broadcast decoder (two coordinate
channels, 4 x Conv 3x3 no padding, 32, ReLU; Conv 1x1 -> 4) to the component's RGB mean mu_k
(sigmoid) and a mask logit. The softmax over K of those logits is p(c | {z_k}), the
generative model's masks.

Loss (per image, batch-averaged), MONet's Eq. 3 with beta = gamma = 0.5:

    L = -log sum_k m_k p(x | z_k)  +  beta * sum_k KL(q(z_k | x, m_k) || N(0, I))
        + gamma * sum_pixels KL(q(c | x) || p(c | {z_k})),

p(x | z_k) a Gaussian over the pixel's C channels with sigma_bg = 0.09 for the first
component and sigma_fg = 0.11 for the others (constants dropped, as every likelihood here);
q(c | x) = the attention masks. The image is reconstructed as sum_k m_k mu_k.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from emorl.errors import ConfigError
from emorl.geco import ELBOObjective
from emorl.models.decoder import DecoderOutput, SpatialBroadcastDecoder
from emorl.models.gaussian import Gaussian
from emorl.models.outputs import SlotModelOutput
from emorl.models.sequential import ComponentEncoder, CoordinateBroadcastDecoder, stick_breaking_step
from emorl.models.slot_attention import check_images, reconstruction_mse
from emorl.models.validation import check_int

VARIANCE_FORMULA = "log_std"  # the encoder gives mu and log sigma


def _check_widths(name: str, widths, minimum_length: int = 1) -> list[int]:
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__") or len(list(widths)) < minimum_length:
        raise ConfigError(f"model.{name}={widths!r} must be a list of at least {minimum_length} integers >= 1")
    for width in widths:
        check_int(f"{name}[...]", width, 1)
    return [int(w) for w in widths]


@dataclass
class MONetConfig:
    """Architecture and loss of MONet. Defaults: the paper's Multi-dSprites-sized setting (64x64)."""

    image_size: int = 64  # H = W
    in_channels: int = 3
    num_slots: int = 7  # K (attention steps K - 1; can be changed per call)
    latent_dim: int = 16  # D of each z_k
    unet_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64, 64])  # one per block (5; CLEVR 6)
    unet_mlp: list[int] = field(default_factory=lambda: [128, 128])  # hidden widths of the bottleneck MLP
    encoder_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64])
    encoder_hidden: int = 256
    decoder_channels: int = 32
    decoder_layers: int = 4
    sigma_bg: float = 0.09  # std of the first component's Gaussian
    sigma_fg: float = 0.11  # std of the other components'
    beta: float = 0.5  # weight of the component latents' KL
    gamma: float = 0.5  # weight of the mask KL

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 8)
        check_int("in_channels", self.in_channels, 1)
        check_int("num_slots", self.num_slots, 2)
        check_int("latent_dim", self.latent_dim, 1)
        self.unet_channels = _check_widths("unet_channels", self.unet_channels, 2)
        self.unet_mlp = _check_widths("unet_mlp", self.unet_mlp)
        self.encoder_channels = _check_widths("encoder_channels", self.encoder_channels)
        check_int("encoder_hidden", self.encoder_hidden, 1)
        check_int("decoder_channels", self.decoder_channels, 1)
        check_int("decoder_layers", self.decoder_layers, 1)
        reduction = 2 ** (len(self.unet_channels) - 1)
        if self.image_size % reduction:
            raise ConfigError(
                f"model.image_size={self.image_size}: a U-Net of {len(self.unet_channels)} blocks halves the image "
                f"{len(self.unet_channels) - 1} times and needs a multiple of {reduction} (MONet: 5 blocks at 64x64, "
                "6 at 128x128)")
        for name in ("sigma_bg", "sigma_fg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} must be > 0")
        for name in ("beta", "gamma"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


class InstanceNormBias(nn.Module):
    """Instance normalisation (no scale) with a learned bias per channel, as MONet's U-Net blocks."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) + self.bias[:, None, None]


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         InstanceNormBias(out_channels), nn.ReLU())


class UNet(nn.Module):
    """MONet's attention network: [x; log s_k] [B, C + 1, H, W] -> logit a_k [B, 1, H, W]."""

    def __init__(self, image_size: int, in_channels: int, channels: list[int], mlp_hidden: list[int]):
        super().__init__()
        blocks = len(channels)
        self.bottleneck = (channels[-1], image_size // 2 ** (blocks - 1))
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip([in_channels, *channels], channels))
        up_out = [*channels[-2::-1], channels[0]]  # mirrors the down path
        up_in = [channels[-1], *up_out[:-1]]
        self.up = nn.ModuleList(_block(x + skip, out) for x, skip, out in zip(up_in, channels[::-1], up_out))
        width, side = self.bottleneck
        layers: list[nn.Module] = []
        size = width * side * side
        for hidden in [*mlp_hidden, width * side * side]:
            layers += [nn.Linear(size, hidden), nn.ReLU()]
            size = hidden
        self.mlp = nn.Sequential(*layers)
        self.output = nn.Conv2d(channels[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            if index < len(self.down) - 1:
                x = F.interpolate(x, scale_factor=0.5, mode="nearest")
        width, side = self.bottleneck
        x = self.mlp(x.flatten(1)).view(-1, width, side, side)
        for index, (block, skip) in enumerate(zip(self.up, reversed(skips))):
            x = block(torch.cat([x, skip], dim=1))
            if index < len(self.up) - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.output(x)


class MONetDecoder(CoordinateBroadcastDecoder):
    """The component decoder as a slot-wise decoder: ``decode_slots`` z [N, D] -> raw [N, 4, H, W]
    (RGB logits, mask logit); ``compose`` -> RGB (sigmoid) and p(c | z) (softmax over K)."""

    compose = staticmethod(SpatialBroadcastDecoder.compose)

    def decode_slots(self, latents: torch.Tensor) -> torch.Tensor:
        return self(latents)

    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        batch, num_slots, dim = slots.shape
        raw = self(slots.reshape(batch * num_slots, dim))
        return self.compose(raw.view(batch, num_slots, *raw.shape[1:]))


@dataclass
class MONetOutput(SlotModelOutput):
    """One forward pass of MONet. ``masks`` are the attention masks m_k (what the reconstruction
    and the ARI use); ``decoded_masks`` the component VAE's p(c | z) they are pulled towards."""

    posterior: Gaussian  # q(z_k | x, m_k), [B, K, D]
    decoded_masks: torch.Tensor  # [B, K, 1, H, W], softmax over K of the decoded mask logits
    nll: torch.Tensor  # [B]: -log sum_k m_k p(x | z_k)
    kl: torch.Tensor  # [B]: sum_k KL(q(z_k | x, m_k) || N(0, I)) (not weighted by beta)
    mask_kl: torch.Tensor  # [B]: sum over pixels of KL(q(c | x) || p(c | z)) (not weighted by gamma)
    mse: torch.Tensor  # scalar, of the reconstruction

    @property
    def representation(self) -> torch.Tensor:
        """The posterior means of the component latents."""
        return self.posterior.mean

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.detach(), "nll": self.nll.detach().mean(), "kl": self.kl.detach().mean(),
                "mask_kl": self.mask_kl.detach().mean(), "mse": self.mse.detach()}


def pixel_mixture_nll(target: torch.Tensor, rgb: torch.Tensor, log_masks: torch.Tensor,
                      sigmas: torch.Tensor) -> torch.Tensor:
    """-sum over pixels of log sum_k m_k prod_c N(x_c; mu_kc, sigma_k^2), per image [B].

    target [B, C, H, W]; rgb [B, K, C, H, W]; log_masks [B, K, 1, H, W]; sigmas [K]. Constants
    (0.5 log 2 pi per element) are dropped.
    """
    sigmas = sigmas.view(1, -1, 1, 1, 1).to(rgb.dtype)
    log_component = (-(target.unsqueeze(1) - rgb).square() / (2 * sigmas.square()) - sigmas.log()).sum(2, keepdim=True)
    return -torch.logsumexp(log_masks + log_component, dim=1).flatten(1).sum(-1)


class MONet(nn.Module):
    """MONet. ``forward(images)`` returns a :class:`MONetOutput`."""

    supports_cuda_graph = True  # shapes fixed by K; no host synchronisation in forward or backward

    def __init__(self, config: MONetConfig | None = None, **overrides):
        super().__init__()
        config = config or MONetConfig()
        if overrides:
            config = MONetConfig(**{**config.to_dict(), **overrides})
        self.config = c = config
        self.attention = UNet(c.image_size, c.in_channels + 1, c.unet_channels, c.unet_mlp)
        self.encoder = ComponentEncoder(c.image_size, c.latent_dim, c.in_channels, tuple(c.encoder_channels),
                                        c.encoder_hidden, "relu")
        self.decoder = MONetDecoder(c.latent_dim, c.image_size, c.in_channels + 1, c.decoder_channels,
                                    c.decoder_layers, "relu")

    def attention_masks(self, images: torch.Tensor, num_slots: int) -> torch.Tensor:
        """The recurrent attention: log m_k for k = 1..K, [B, K, 1, H, W] (sums to one over K in
        probability space)."""
        log_scope = images.new_zeros(images.shape[0], 1, *images.shape[2:])
        log_masks = []
        for _ in range(num_slots - 1):
            logit = self.attention(torch.cat([images, log_scope], dim=1))
            log_mask, log_scope = stick_breaking_step(log_scope, logit)
            log_masks.append(log_mask)
        log_masks.append(log_scope)
        return torch.stack(log_masks, dim=1)

    def component_sigmas(self, num_slots: int, like: torch.Tensor) -> torch.Tensor:
        """[sigma_bg, sigma_fg, ..., sigma_fg]: [K]."""
        sigmas = like.new_full((num_slots,), self.config.sigma_fg)
        sigmas[0] = self.config.sigma_bg
        return sigmas

    def forward(self, images: torch.Tensor, num_slots: int | None = None, refine_steps: int | None = None,
                objective=None) -> MONetOutput:
        """images [B, C, H, W] in [-1, 1] (the likelihood target is (images + 1) / 2); ``num_slots``
        overrides K; ``refine_steps`` is ignored (one pass); ``objective`` maps (batch-mean NLL,
        batch-mean of beta KL_z + gamma KL_mask) to the loss (default: their sum)."""
        c = self.config
        num_slots = c.num_slots if num_slots is None else num_slots
        check_images("MONet", images, c.in_channels, c.image_size)
        check_int("num_slots (K)", num_slots, 2)
        objective = objective or ELBOObjective()
        target = (images + 1.0) / 2.0
        batch = images.shape[0]

        log_masks = self.attention_masks(images, num_slots)  # q(c | x): [B, K, 1, H, W]
        flat_images = images.unsqueeze(1).expand(-1, num_slots, -1, -1, -1).flatten(0, 1)
        mean, raw_scale = self.encoder(flat_images, log_masks.flatten(0, 1))
        posterior = Gaussian(mean.view(batch, num_slots, -1), raw_scale.view(batch, num_slots, -1), VARIANCE_FORMULA)
        slots = posterior.rsample()  # z_k
        decoded = self.decoder.decode(slots)  # rgb mu_k, log p(c | z)
        nll = pixel_mixture_nll(target, decoded.rgb, log_masks, self.component_sigmas(num_slots, target))
        kl = posterior.kl(None).sum(-1)  # [B]
        masks = log_masks.exp()
        mask_kl = (masks * (log_masks - decoded.log_masks)).flatten(1).sum(-1)  # [B]
        loss = objective(nll.mean(), (c.beta * kl + c.gamma * mask_kl).mean())
        reconstruction = (masks * decoded.rgb).sum(dim=1)
        return MONetOutput(
            loss=loss, reconstruction=reconstruction, masks=masks, components=decoded.rgb, slots=slots,
            posterior=posterior, decoded_masks=decoded.masks, nll=nll, kl=kl, mask_kl=mask_kl,
            mse=reconstruction_mse(reconstruction, target),
        )

    @torch.no_grad()
    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        """Decode component latents [B, K, D] with the generative model: RGB and p(c | z)."""
        return self.decoder.decode(slots)


__all__ = ["MONet", "MONetConfig", "MONetDecoder", "MONetOutput", "UNet", "pixel_mixture_nll"]
