"""GENESIS and GENESIS-S (Engelcke et al., 2020): an ordered, autoregressive scene model.

GENESIS splits each component's latent into a mask latent z^m_k and a component latent
z^c_k. Inference (the paper's Sec. 3 and Appendix B; sizes of its official configuration):

* the image goes once through a gated-convolution encoder (Sylvester-flow VAE style: 5 gated
  Conv 5x5 layers, channels 32, 32, 64, 64, 64, normalised, then a gated Conv as wide as the
  remaining map to a 256-vector h);
* q(z^m_1 | x) has mean Linear(h) and std softplus(Linear(h) + 0.5) + 1e-8; for k >= 2 an
  LSTM (width 2 |z^m|) reads [h; z^m_{k-1}] and a Linear layer gives q(z^m_k | x, z^m_{<k}):
  the *autoregressive posterior*;
* every z^m_k goes through the gated transposed-convolution mask decoder to a logit a_k, and
  the stick-breaking process (:mod:`emorl.models.sequential`) gives the masks pi_k (the last
  component takes the remaining scope);
* the component VAE (MONet's encoder and broadcast decoder, ELU) infers q(z^c_k | x, pi_k) from
  [x; log pi_k] and decodes z^c_k to the component's RGB (sigmoid).

Generative model: p(z^m_1) = N(0, I); p(z^m_k | z^m_{<k}) from an LSTM (width 256) over
z^m_1..z^m_{k-1} and a Linear layer (mean tanh, std sigmoid(. + 4) + 1e-4); p(z^c_k | z^m_k)
from an MLP 256 -> 256 (ELU) with the same heads. The KL terms are single-sample Monte Carlo
estimates, log q(z) - log p(z) at the posterior sample, as the original. The likelihood is
the shared pixel-wise mixture (GENESIS: sigma 0.7) or the Gaussian of Eq. 12 (the EfficientMORL
paper's Appendix B.1 tuning: sigma 0.1). The loss is objective(NLL, KL_m + KL_c); GENESIS trains
it with its own GECO rule (``loss.geco.rule=genesis``, :mod:`emorl.geco_rules`).

GENESIS-S (``model=genesis_s``): one latent z_k per component: z_k decodes to the mask logit
through the mask decoder *and* to the RGB through a broadcast decoder; no component VAE and
no component prior.

The decomposition is ordered by construction: component k's posterior depends on the samples
of components < k, and its mask on the scope they left. GENESIS is therefore not permutation
equivariant (tested), unlike EfficientMORL, IODINE and Slot Attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from emorl.errors import ConfigError
from emorl.geco import ELBOObjective
from emorl.likelihoods import LIKELIHOODS, negative_log_likelihood
from emorl.models.decoder import DecoderOutput
from emorl.models.gaussian import Gaussian
from emorl.models.outputs import SlotModelOutput
from emorl.models.sequential import ComponentEncoder, CoordinateBroadcastDecoder, stick_breaking
from emorl.models.slot_attention import check_images, reconstruction_mse
from emorl.models.validation import check_choice, check_int

POSTERIOR_FORMULA = "genesis"  # std = softplus(s + 0.5) + 1e-8
PRIOR_FORMULA = "genesis_prior"  # std = sigmoid(s + 4) + 1e-4
NORMS = ("batch", "instance", "none")


def gated_strides(image_size: int) -> tuple[int, ...]:
    """Strides of the 5 gated layers: the original's for 64 and 128 (and 32, 256) pixels."""
    if image_size <= 64:
        return (1, 2, 1, 2, 1)
    if image_size <= 128:
        return (2, 2, 2, 1, 1)
    return (2, 2, 2, 2, 1)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class GatedConv(nn.Module):
    """h * sigmoid(g) with [h; g] = Conv(x) (or ConvTranspose), each half normalised."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int,
                 norm: str = "none", transpose: bool = False, output_padding: int = 0):
        super().__init__()
        if transpose:
            self.conv = nn.ConvTranspose2d(in_channels, 2 * out_channels, kernel, stride, padding, output_padding)
        else:
            self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel, stride, padding)
        self.norm_h, self.norm_g = _norm(norm, out_channels), _norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.conv(x).chunk(2, dim=1)
        return self.norm_h(h) * torch.sigmoid(self.norm_g(g))


class MaskEncoder(nn.Module):
    """Image [B, C, H, W] -> h [B, hidden]: 5 gated Conv 5x5 of ``channels``, then a gated Conv as
    wide as the remaining map."""

    def __init__(self, image_size: int, in_channels: int, norm: str, channels: list[int], hidden: int):
        super().__init__()
        strides = gated_strides(image_size)
        widths = (in_channels, *channels)
        layers = [GatedConv(c_in, c_out, 5, s, 2, norm) for c_in, c_out, s in zip(widths, widths[1:], strides)]
        self.last_kernel = image_size // 2 ** strides.count(2)
        layers.append(GatedConv(channels[-1], hidden, self.last_kernel, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(1)


class MaskDecoder(nn.Module):
    """z^m [N, D_m] -> mask logit [N, 1, H, W]: a gated transposed convolution to the encoder's
    last map, 5 gated transposed convolutions (the encoder's strides reversed), Conv 1x1."""

    def __init__(self, image_size: int, latent_dim: int, norm: str, start: int, channels: list[int]):
        super().__init__()
        strides = gated_strides(image_size)[::-1]
        last_kernel = image_size // 2 ** strides.count(2)
        widths = (start, *channels)
        layers = [GatedConv(latent_dim, widths[0], last_kernel, 1, 0, transpose=True)]
        layers += [GatedConv(c_in, c_out, 5, s, 2, norm, transpose=True, output_padding=s - 1)
                   for c_in, c_out, s in zip(widths, widths[1:], strides)]
        layers.append(nn.Conv2d(channels[-1], 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents[:, :, None, None])


class GENESISDecoder(nn.Module):
    """The generative model p(x | z) as a slot-wise decoder of codes [z^m; z^c] (GENESIS-S: z).

    ``decode_slots`` codes [N, D] -> raw [N, 4, H, W] (RGB logits, mask logit), each slot on its
    own; ``compose`` raw [B, K, 4, H, W] -> RGB (sigmoid) and the *stick-breaking* masks in slot
    order (the last slot's logit is not used): the order of the slots matters."""

    def __init__(self, config: "GENESISConfig", rgb_dim: int):
        super().__init__()
        c = config
        self.mask_dim = c.mask_latent_dim
        self.single_latent = c.single_latent
        self.mask_decoder = MaskDecoder(c.image_size, c.mask_latent_dim, c.norm, c.mask_encoder_channels[-1],
                                        c.mask_decoder_channels)
        self.rgb_decoder = CoordinateBroadcastDecoder(rgb_dim, c.image_size, c.in_channels, c.component_decoder_channels,
                                                      4, "elu")

    def split(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z^m, the latent the RGB is decoded from)."""
        mask_latents = codes[..., :self.mask_dim]
        return mask_latents, (mask_latents if self.single_latent else codes[..., self.mask_dim:])

    def decode_slots(self, codes: torch.Tensor) -> torch.Tensor:
        mask_latents, rgb_latents = self.split(codes)
        return torch.cat([self.rgb_decoder(rgb_latents), self.mask_decoder(mask_latents)], dim=1)

    @staticmethod
    def compose(raw: torch.Tensor) -> DecoderOutput:
        if raw.dtype not in (torch.float32, torch.float64):  # autocast: score in fp32
            raw = raw.float()
        return DecoderOutput(torch.sigmoid(raw[:, :, :-1]), stick_breaking(raw[:, :, -1:]))

    def forward(self, codes: torch.Tensor) -> DecoderOutput:
        batch, num_slots, dim = codes.shape
        raw = self.decode_slots(codes.reshape(batch * num_slots, dim))
        return self.compose(raw.view(batch, num_slots, *raw.shape[1:]))


@dataclass
class GENESISConfig:
    """Architecture and likelihood of GENESIS. Defaults: the official configuration (64x64)."""

    image_size: int = 64  # H = W (a multiple of 4 up to 64, of 8 up to 128, else of 16)
    in_channels: int = 3
    num_slots: int = 7  # K (can be changed per call)
    mask_latent_dim: int = 64  # |z^m_k| (GENESIS-S: |z_k|)
    component_latent_dim: int = 16  # |z^c_k| (not used by GENESIS-S)
    single_latent: bool = False  # GENESIS-S: one latent per component instead of [z^m, z^c]
    norm: str = "batch"  # normalisation in the gated convolutions: batch (original) | instance | none
    mask_encoder_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64, 64])  # 5 gated layers
    mask_decoder_channels: list[int] = field(default_factory=lambda: [64, 32, 32, 32, 32])  # 5 gated layers
    hidden: int = 256  # width of h, of the prior LSTM and of the component prior's MLP
    component_encoder_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64])
    component_decoder_channels: int = 32
    likelihood: str = "mixture"  # mixture (GENESIS) | gaussian (the EfficientMORL paper's App. B.1)
    sigma: float = 0.7  # fixed std of the likelihood (GENESIS 0.7; App. B.1 0.1)

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 8)
        check_int("in_channels", self.in_channels, 1)
        check_int("num_slots", self.num_slots, 2)
        check_int("mask_latent_dim", self.mask_latent_dim, 1)
        check_int("component_latent_dim", self.component_latent_dim, 1)
        check_choice("norm", self.norm, NORMS)
        for name in ("mask_encoder_channels", "mask_decoder_channels"):
            widths = getattr(self, name)
            if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__") or len(list(widths)) != 5:
                raise ConfigError(f"model.{name}={widths!r} must be a list of 5 integers >= 1 (one per gated layer)")
            for width in widths:
                check_int(f"{name}[...]", width, 1)
            setattr(self, name, [int(w) for w in widths])
        widths = self.component_encoder_channels
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__") or not list(widths):
            raise ConfigError(f"model.component_encoder_channels={widths!r} must be a non-empty list of integers")
        for width in widths:
            check_int("component_encoder_channels[...]", width, 1)
        self.component_encoder_channels = [int(w) for w in widths]
        check_int("hidden", self.hidden, 1)
        check_int("component_decoder_channels", self.component_decoder_channels, 1)
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        if not isinstance(self.single_latent, bool):
            raise ConfigError(f"model.single_latent={self.single_latent!r} must be true or false")
        if not self.sigma > 0:
            raise ConfigError(f"model.sigma={self.sigma!r} must be > 0")
        reduction = 2 ** gated_strides(self.image_size).count(2)
        if self.image_size % reduction:
            raise ConfigError(f"model.image_size={self.image_size}: GENESIS' gated convolutions halve the image "
                              f"{reduction.bit_length() - 1} times here and need a multiple of {reduction} "
                              "(e.g. 64, 96, 128)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GENESISSConfig(GENESISConfig):
    """GENESIS-S: GENESIS with a single latent per component (``model=genesis_s``)."""

    single_latent: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.single_latent:
            raise ConfigError("model=genesis_s is GENESIS with a single latent; for [z^m, z^c] use model=genesis")


@dataclass
class GENESISOutput(SlotModelOutput):
    """One forward pass of GENESIS; ``slots`` are the sampled codes [z^m; z^c] (GENESIS-S: z)."""

    mask_posterior: Gaussian  # q(z^m_k | x, z^m_{<k}), [B, K, D_m]
    mask_prior: Gaussian  # p(z^m_k | z^m_{<k}) for k >= 2, [B, K - 1, D_m] (p(z^m_1) = N(0, I))
    component_posterior: Gaussian | None  # q(z^c_k | x, pi_k), [B, K, D_c] (None: GENESIS-S)
    component_prior: Gaussian | None  # p(z^c_k | z^m_k)
    nll: torch.Tensor  # [B]
    kl: torch.Tensor  # [B]: kl_masks + kl_components
    kl_masks: torch.Tensor  # [B]: sum_k log q(z^m_k) - log p(z^m_k) at the sample
    kl_components: torch.Tensor  # [B]: sum_k log q(z^c_k) - log p(z^c_k | z^m_k) (0 for GENESIS-S)
    mse: torch.Tensor  # scalar

    @property
    def representation(self) -> torch.Tensor:
        """The posterior means [mu^m; mu^c] (GENESIS-S: mu)."""
        if self.component_posterior is None:
            return self.mask_posterior.mean
        return torch.cat([self.mask_posterior.mean, self.component_posterior.mean], dim=-1)

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.detach(), "nll": self.nll.detach().mean(), "kl": self.kl.detach().mean(),
                "kl_masks": self.kl_masks.detach().mean(), "kl_components": self.kl_components.detach().mean(),
                "mse": self.mse.detach()}


def log_standard_normal(value: torch.Tensor) -> torch.Tensor:
    """log N(value; 0, I) summed over the last dimension."""
    return -0.5 * (value.square() + math.log(2 * math.pi)).sum(-1)


class GENESIS(nn.Module):
    """GENESIS (``model=genesis``) and GENESIS-S (``model=genesis_s``); ``forward`` returns a
    :class:`GENESISOutput`."""

    supports_cuda_graph = True  # fixed shapes for a given K; no host synchronisation in forward or backward

    def __init__(self, config: GENESISConfig | None = None, **overrides):
        super().__init__()
        config = config or GENESISConfig()
        if overrides:
            config = type(config)(**{**config.to_dict(), **overrides})
        self.config = c = config
        dim_m = c.mask_latent_dim
        # Inference of z^m: the encoder, the heads of step 1 and the autoregressive LSTM.
        hidden = c.hidden
        self.mask_encoder = MaskEncoder(c.image_size, c.in_channels, c.norm, c.mask_encoder_channels, hidden)
        self.first_mean = nn.Linear(hidden, dim_m)
        self.first_scale = nn.Linear(hidden, dim_m)
        self.posterior_lstm = nn.LSTMCell(hidden + dim_m, 2 * dim_m)
        self.posterior_head = nn.Linear(2 * dim_m, 2 * dim_m)
        # The autoregressive prior over z^m.
        self.prior_lstm = nn.LSTM(dim_m, hidden, batch_first=True)
        self.prior_head = nn.Linear(hidden, 2 * dim_m)
        rgb_dim = dim_m
        if not c.single_latent:
            dim_c = rgb_dim = c.component_latent_dim
            self.component_encoder = ComponentEncoder(c.image_size, dim_c, c.in_channels,
                                                      tuple(c.component_encoder_channels), max(hidden, 2 * dim_c), "elu")
            self.component_prior_net = nn.Sequential(nn.Linear(dim_m, hidden), nn.ELU(), nn.Linear(hidden, hidden),
                                                     nn.ELU(), nn.Linear(hidden, 2 * dim_c))
        self.decoder = GENESISDecoder(c, rgb_dim)

    # -- pieces ------------------------------------------------------------------------------------
    def mask_latents(self, images: torch.Tensor, num_slots: int) -> tuple[Gaussian, torch.Tensor]:
        """The autoregressive posterior q(z^m_k | x, z^m_{<k}) and its samples, each [B, K, D_m]."""
        h = self.mask_encoder(images)
        posterior = Gaussian(self.first_mean(h), self.first_scale(h), POSTERIOR_FORMULA)
        means, scales, samples = [posterior.mean], [posterior.raw_scale], [posterior.rsample()]
        state = None
        for _ in range(1, num_slots):
            state = self.posterior_lstm(torch.cat([h, samples[-1]], dim=-1), state)
            mean, raw_scale = self.posterior_head(state[0]).chunk(2, dim=-1)
            step = Gaussian(mean, raw_scale, POSTERIOR_FORMULA)
            means.append(mean)
            scales.append(raw_scale)
            samples.append(step.rsample())
        return (Gaussian(torch.stack(means, 1), torch.stack(scales, 1), POSTERIOR_FORMULA),
                torch.stack(samples, 1))

    def mask_prior(self, mask_samples: torch.Tensor) -> Gaussian:
        """p(z^m_k | z^m_{<k}) for k = 2..K from the LSTM over z^m_1..z^m_{K-1}: [B, K - 1, D_m]."""
        hidden, _ = self.prior_lstm(mask_samples[:, :-1])
        mean, raw_scale = self.prior_head(hidden).chunk(2, dim=-1)
        return Gaussian(torch.tanh(mean), raw_scale, PRIOR_FORMULA)

    def component_prior(self, mask_samples: torch.Tensor) -> Gaussian:
        """p(z^c_k | z^m_k): [B, K, D_c]."""
        mean, raw_scale = self.component_prior_net(mask_samples).chunk(2, dim=-1)
        return Gaussian(torch.tanh(mean), raw_scale, PRIOR_FORMULA)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, num_slots: int | None = None, refine_steps: int | None = None,
                objective=None) -> GENESISOutput:
        """images [B, C, H, W] in [-1, 1] (the likelihood target is (images + 1) / 2); ``num_slots``
        overrides K; ``refine_steps`` is ignored (one pass); ``objective`` maps (batch-mean NLL,
        batch-mean KL) to the loss (default: the negative ELBO; GECO during training)."""
        c = self.config
        num_slots = c.num_slots if num_slots is None else num_slots
        check_images("GENESIS-S" if c.single_latent else "GENESIS", images, c.in_channels, c.image_size)
        check_int("num_slots (K)", num_slots, 2)
        objective = objective or ELBOObjective()
        target = (images + 1.0) / 2.0
        batch = images.shape[0]

        mask_posterior, mask_samples = self.mask_latents(images, num_slots)
        logits = self.decoder.mask_decoder(mask_samples.flatten(0, 1)).view(batch, num_slots, 1, *images.shape[2:])
        log_masks = stick_breaking(logits)  # pi_k, in slot order
        mask_prior = self.mask_prior(mask_samples)
        log_q = mask_posterior.log_prob(mask_samples)  # [B, K]
        log_p = torch.cat([log_standard_normal(mask_samples[:, :1]), mask_prior.log_prob(mask_samples[:, 1:])], 1)
        kl_masks = (log_q - log_p).sum(-1)

        if c.single_latent:
            component_posterior = component_prior = None
            slots, rgb_latents = mask_samples, mask_samples
            kl_components = torch.zeros_like(kl_masks)
        else:
            flat_images = images.unsqueeze(1).expand(-1, num_slots, -1, -1, -1).flatten(0, 1)
            mean, raw_scale = self.component_encoder(flat_images, log_masks.flatten(0, 1))
            component_posterior = Gaussian(mean.view(batch, num_slots, -1), raw_scale.view(batch, num_slots, -1),
                                           POSTERIOR_FORMULA)
            rgb_latents = component_posterior.rsample()
            component_prior = self.component_prior(mask_samples)
            kl_components = (component_posterior.log_prob(rgb_latents) - component_prior.log_prob(rgb_latents)).sum(-1)
            slots = torch.cat([mask_samples, rgb_latents], dim=-1)
        rgb = torch.sigmoid(self.decoder.rgb_decoder(rgb_latents.flatten(0, 1)))
        decoded = DecoderOutput(rgb.view(batch, num_slots, *rgb.shape[1:]), log_masks)
        if decoded.rgb.dtype != torch.float32 and decoded.rgb.dtype != torch.float64:  # autocast: score in fp32
            decoded = DecoderOutput(decoded.rgb.float(), decoded.log_masks.float())
        nll = negative_log_likelihood(c.likelihood, target, decoded, c.sigma)
        kl = kl_masks + kl_components
        loss = objective(nll.mean(), kl.mean())
        reconstruction = decoded.reconstruction()
        return GENESISOutput(
            loss=loss, reconstruction=reconstruction, masks=decoded.masks, components=decoded.rgb, slots=slots,
            mask_posterior=mask_posterior, mask_prior=mask_prior, component_posterior=component_posterior,
            component_prior=component_prior, nll=nll, kl=kl, kl_masks=kl_masks, kl_components=kl_components,
            mse=reconstruction_mse(reconstruction, target),
        )

    @torch.no_grad()
    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        """Decode codes [B, K, D] ([z^m; z^c], GENESIS-S: z) in slot order (traversals, activeness)."""
        return self.decoder(slots)


__all__ = ["GENESIS", "GENESISConfig", "GENESISDecoder", "GENESISOutput", "GENESISSConfig", "GatedConv",
           "MaskDecoder", "MaskEncoder", "gated_strides", "log_standard_normal"]
