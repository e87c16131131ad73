"""IODINE (Greff et al., 2019): iterative amortized inference with image-sized refinement inputs.

K slots with posteriors lambda_k = (mu_k, s_k) of size D start from one learned lambda_0
shared by every slot. Each of the T + 1 steps samples z ~ q(z; lambda_t), decodes it with
the shared spatial broadcast decoder, and scores it with the pixel-wise mixture likelihood
(sigma fixed; :func:`emorl.likelihoods.mixture_nll`, the likelihood of EfficientMORL's
CLEVR6) and the KL to N(0, I): loss_t = objective(mean NLL_t, mean KL_t). After each of the
first T steps the refinement network f_phi computes lambda_{t+1} = lambda_t + f_phi(inputs_t).
The training loss weighs later steps more: sum_t (t / T) loss_t, as the original's
``iter_loss_weight="linspace"`` (weight 1 when T = 0).

Refinement inputs (the original's defaults; C image channels, 3C + 8 = 17 in all):

* image-sized, per slot k: the image x (C), the means mu_k (C), the mask pi_k (1), the mask
  logits (1), the mask posterior p(k | x) = p(x | mu_k) / sum_j p(x | mu_j) (1), the gradients
  of loss_t w.r.t. the means (C) and the mask logits (1), the pixel-wise log-likelihood
  log p(x | z) (1), the leave-one-out term log p(x | z) - log p(x | z_{j != k}) (1) and two
  linear coordinate channels in [-1, 1];
* vector, per slot: lambda_k (2D) and the gradient of loss_t w.r.t. lambda_k (2D).

LayerNorm (over each map, with per-channel affine parameters, as Sonnet's LayerNorm on the
flattened maps) normalises the two gradients, the log-likelihood and the leave-one-out
term; gradients, log-likelihood and leave-one-out term are stop-gradient, the other inputs
are not (the original's defaults). f_phi: Conv (3x3, stride 2, ELU) x 4, a mean over
space, MLP 64 -> 256 (ELU) -> 256, concatenated with [lambda; LN(grad lambda)], an LSTM
cell of width 256 and a linear residual head to the 2D update (the original's CLEVR sizes).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from emorl.errors import ConfigError
from emorl.geco import ELBOObjective
from emorl.likelihoods import mixture_nll
from emorl.models.decoder import DECODER_KINDS, DecoderOutput, SpatialBroadcastDecoder
from emorl.models.validation import check_choice, check_int
from emorl.models.gaussian import Gaussian
from emorl.models.outputs import SlotModelOutput, StepwiseLosses
from emorl.models.slot_attention import check_images

VARIANCE_FORMULA = "authors"  # sigma^2 = softplus(s) + 1e-5 (the original: softplus(s))
PER_IMAGE_INPUTS = ("image", "coordinates", "log_likelihood")  # [B, c, H, W], shared by the K slots
PER_SLOT_INPUTS = ("means", "masks", "mask_logits", "mask_posterior", "grad_means", "grad_mask_logits",
                   "leave_one_out")  # [B, K, c, H, W]
NORMALISED_INPUTS = ("grad_means", "grad_mask_logits", "log_likelihood", "leave_one_out")


def spatial_input_channels(image_channels: int) -> dict[str, int]:
    """Channels of each image-sized refinement input (17 in all for RGB)."""
    c = image_channels
    return {"image": c, "coordinates": 2, "log_likelihood": 1, "means": c, "masks": 1, "mask_logits": 1,
            "mask_posterior": 1, "grad_means": c, "grad_mask_logits": 1, "leave_one_out": 1}


def coordinate_channels(height: int, width: int) -> torch.Tensor:
    """Two linear ramps in [-1, 1] (x, then y): [1, 2, H, W]."""
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).unsqueeze(0)


def iodine_step_weights(refine_steps: int) -> list[float]:
    """Weights t / T of the T + 1 step losses (IODINE's linspace(0, 1, T + 1)); [1] when T = 0."""
    if refine_steps == 0:
        return [1.0]
    return [t / refine_steps for t in range(refine_steps + 1)]


def component_log_likelihood(target: torch.Tensor, rgb: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x_c; mu_kc, sigma^2) per slot and element, constants dropped: [B, K, C, H, W]."""
    return -(target.unsqueeze(1) - rgb).square() / (2 * sigma**2) - math.log(sigma)


def leave_one_out_log_likelihood(log_masks: torch.Tensor, log_components: torch.Tensor) -> torch.Tensor:
    """log p(x | z_{j != k}) per pixel for each left-out k: [B, K, 1, H, W].

    The mixture of the other K - 1 components with their masks renormalised:
    sum_c [logsumexp_{j != k}(log pi_j + log N_jc) - logsumexp_{j != k} log pi_j].
    """
    num_slots = log_components.shape[1]
    left_out = torch.eye(num_slots, dtype=torch.bool, device=log_masks.device)[None, :, :, None, None, None]
    joint = (log_masks + log_components).unsqueeze(1).masked_fill(left_out, float("-inf"))  # [B, K, K, C, H, W]
    masks = log_masks.unsqueeze(1).masked_fill(left_out, float("-inf"))  # [B, K, K, 1, H, W]
    per_channel = torch.logsumexp(joint, dim=2) - torch.logsumexp(masks, dim=2)
    return per_channel.sum(dim=2, keepdim=True)


class IODINERefinement(nn.Module):
    """f_phi: the named refinement inputs and the LSTM state -> (delta lambda [B, K, 2D], state)."""

    def __init__(self, latent_dim: int, image_channels: int = 3, channels: int = 64, layers: int = 4,
                 kernel_size: int = 3, mlp_hidden: list[int] | tuple[int, ...] = (256, 256), lstm_hidden: int = 256):
        super().__init__()
        self.input_channels = spatial_input_channels(image_channels)
        self.norms = nn.ModuleDict({name: nn.GroupNorm(1, self.input_channels[name]) for name in NORMALISED_INPUTS})
        self.grad_posterior_norm = nn.LayerNorm(2 * latent_dim)
        convs: list[nn.Module] = []
        width = sum(self.input_channels.values())
        for _ in range(layers):
            convs += [nn.Conv2d(width, channels, kernel_size, stride=2, padding=kernel_size // 2), nn.ELU()]
            width = channels
        self.cnn = nn.Sequential(*convs)
        mlp: list[nn.Module] = []
        for index, hidden in enumerate(mlp_hidden):
            if index:
                mlp.append(nn.ELU())
            mlp.append(nn.Linear(width, hidden))
            width = hidden
        self.mlp = nn.Sequential(*mlp)
        width += 4 * latent_dim  # [h; lambda; LN(grad lambda)]
        self.lstm = nn.LSTMCell(width, lstm_hidden) if lstm_hidden else None
        if self.lstm is not None:  # forget-gate bias 1, as Sonnet's LSTM
            nn.init.zeros_(self.lstm.bias_ih)
            nn.init.zeros_(self.lstm.bias_hh)
            with torch.no_grad():
                self.lstm.bias_ih[lstm_hidden:2 * lstm_hidden].fill_(1.0)
            width = lstm_hidden
        self.head = nn.Linear(width, 2 * latent_dim)

    def initial_state(self, count: int, like: torch.Tensor):
        """Zero LSTM state for B * K slots (None without an LSTM)."""
        if self.lstm is None:
            return None
        zeros = like.new_zeros(count, self.lstm.hidden_size)
        return zeros, zeros.clone()

    def _normalise(self, name: str, value: torch.Tensor) -> torch.Tensor:
        value = value.to(self.head.weight.dtype)  # the decoder's outputs are float32 even in a double model
        if name not in self.norms:
            return value
        lead = value.shape[:-3]
        return self.norms[name](value.reshape(-1, *value.shape[-3:])).view(*lead, *value.shape[-3:])

    def spatial_inputs(self, inputs: dict[str, torch.Tensor], num_slots: int) -> torch.Tensor:
        """Normalise and concatenate the image-sized inputs: [B * K, 17, H, W]."""
        batch = inputs["image"].shape[0]
        maps = []
        for name in self.input_channels:
            value = self._normalise(name, inputs[name])
            if name in PER_IMAGE_INPUTS:
                value = value.unsqueeze(1).expand(batch, num_slots, *value.shape[1:])
            maps.append(value)
        return torch.cat(maps, dim=2).flatten(0, 1)

    def forward(self, inputs: dict[str, torch.Tensor], state):
        batch, num_slots = inputs["posterior"].shape[:2]
        hidden = self.cnn(self.spatial_inputs(inputs, num_slots)).mean(dim=(2, 3))
        dtype = self.head.weight.dtype
        flat = torch.cat([inputs["posterior"].to(dtype), self.grad_posterior_norm(inputs["grad_posterior"].to(dtype))],
                         dim=-1)
        hidden = torch.cat([self.mlp(hidden), flat.flatten(0, 1)], dim=-1)
        if self.lstm is not None:
            state = self.lstm(hidden, state)
            hidden = state[0]
        return self.head(hidden).view(batch, num_slots, -1), state


@dataclass
class IODINEConfig:
    """Architecture and loss of IODINE. Defaults: the original's CLEVR6 configuration."""

    image_size: int = 64  # H = W
    in_channels: int = 3
    num_slots: int = 7  # K (can be changed per call; >= 2 for the leave-one-out input)
    latent_dim: int = 64  # D
    refine_steps: int = 5  # T refinement steps (T + 1 decodes); can be changed per call
    decoder: str = "broadcast"  # broadcast (CLEVR, Multi-dSprites) | broadcast_light | deconv
    sigma: float = 0.1  # fixed std of the mixture components
    refine_channels: int = 64  # f_phi's convolutions
    refine_layers: int = 4
    refine_kernel: int = 3
    refine_mlp: list[int] = field(default_factory=lambda: [256, 256])
    lstm_hidden: int = 256  # 0: no LSTM (the original's Tetrominoes setting)
    factorized_decoder: bool = True  # exact, cheaper first decoder layer (see decoder.py)

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 8)
        check_int("in_channels", self.in_channels, 1)
        check_int("num_slots", self.num_slots, 2)
        check_int("latent_dim", self.latent_dim, 1)
        check_int("refine_steps", self.refine_steps, 0)
        check_choice("decoder", self.decoder, DECODER_KINDS)
        check_int("refine_channels", self.refine_channels, 1)
        check_int("refine_layers", self.refine_layers, 1)
        check_int("refine_kernel", self.refine_kernel, 1)
        check_int("lstm_hidden", self.lstm_hidden, 0)
        widths = self.refine_mlp
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__") or not list(widths):
            raise ConfigError(f"model.refine_mlp={widths!r} must be a non-empty list of integers >= 1, e.g. [256, 256]")
        for width in widths:
            check_int("refine_mlp[...]", width, 1)
        self.refine_mlp = [int(w) for w in widths]
        if not self.sigma > 0:
            raise ConfigError(f"model.sigma={self.sigma!r} must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IODINEOutput(StepwiseLosses, SlotModelOutput):
    """One forward pass of IODINE: reconstruction, masks, components and slots of step T."""

    posteriors: list[Gaussian]  # lambda_0..lambda_T, each [B, K, D]
    nll_steps: torch.Tensor  # [T + 1, B]
    kl_steps: torch.Tensor  # [T + 1, B]: KL(q(z; lambda_t) || N(0, I)), summed over K and D
    loss_steps: torch.Tensor  # [T + 1]: objective of each step
    step_weights: torch.Tensor  # [T + 1]: t / T
    mse: torch.Tensor  # scalar: MSE of the final reconstruction (mean over pixels and channels)

    @property
    def representation(self) -> torch.Tensor:
        """The posterior means of lambda_T."""
        return self.posteriors[-1].mean

    def scalars(self) -> dict[str, torch.Tensor]:
        """loss, nll, kl (final step), mse, per-step NLL and KL."""
        out = {"loss": self.loss.detach(), "nll": self.nll_steps[-1].detach().mean(),
               "kl": self.kl_steps[-1].detach().mean(), "mse": self.mse.detach()}
        for t in range(self.nll_steps.shape[0]):
            out[f"nll_step{t}"] = self.nll_steps[t].detach().mean()
            out[f"kl_step{t}"] = self.kl_steps[t].detach().mean()
        return out


@dataclass
class _Step:
    posterior: Gaussian
    decoded: DecoderOutput
    slots: torch.Tensor
    nll: torch.Tensor  # [B]
    kl: torch.Tensor  # [B]
    loss: torch.Tensor  # scalar


class IODINE(nn.Module):
    """IODINE. ``forward(images)`` returns an :class:`IODINEOutput`."""

    supports_cuda_graph = True  # no host synchronisation in a training step (emorl.engine.step)

    def __init__(self, config: IODINEConfig | None = None, **overrides):
        super().__init__()
        config = config or IODINEConfig()
        if overrides:
            config = IODINEConfig(**{**config.to_dict(), **overrides})
        self.config = c = config
        self.initial_posterior = nn.Parameter(torch.empty(2 * c.latent_dim))  # lambda_0 = [mu; s]
        bound = math.sqrt(6.0 / (4 * c.latent_dim))  # glorot_uniform of a [2D] vector, as the original
        nn.init.uniform_(self.initial_posterior, -bound, bound)
        self.refinement = IODINERefinement(c.latent_dim, c.in_channels, c.refine_channels, c.refine_layers,
                                           c.refine_kernel, c.refine_mlp, c.lstm_hidden)
        self.decoder = SpatialBroadcastDecoder(c.latent_dim, c.image_size, c.image_size, c.decoder,
                                               factorized_first_layer=c.factorized_decoder)
        self.register_buffer("coordinates", coordinate_channels(c.image_size, c.image_size), persistent=False)

    def initial_posteriors(self, batch: int, num_slots: int) -> Gaussian:
        """lambda_0 for every slot: [B, K, D] parameters."""
        mean, raw_scale = self.initial_posterior.chunk(2)
        shape = (batch, num_slots, self.config.latent_dim)
        return Gaussian(mean.expand(shape), raw_scale.expand(shape), VARIANCE_FORMULA)

    # -- one scored step ---------------------------------------------------------------------
    def _score(self, posterior: Gaussian, target: torch.Tensor, objective, need_inputs: bool):
        """Sample, decode, score; with ``need_inputs`` also the refinement inputs of this step.

        At test time (no autograd graph) the step is computed from a detached copy of lambda
        inside ``enable_grad`` so that the gradient inputs exist; nothing keeps a graph after.
        """
        track = need_inputs and not (torch.is_grad_enabled() and posterior.mean.requires_grad)
        if track:
            posterior = Gaussian(posterior.mean.detach().requires_grad_(True),
                                 posterior.raw_scale.detach().requires_grad_(True), posterior.formula)
        with torch.enable_grad() if track else contextlib.nullcontext():
            kl = posterior.kl(None).sum(-1)  # [B]: sum over K (and D)
            slots = posterior.rsample()
            decoded = self.decoder(slots)
            nll = mixture_nll(target, decoded, self.config.sigma)
            loss = objective(nll.mean(), kl.mean())
            grads = None
            if need_inputs:
                grads = torch.autograd.grad(loss, (posterior.mean, posterior.raw_scale, decoded.rgb, decoded.log_masks),
                                            retain_graph=not track)
        step = _Step(posterior, decoded, slots, nll, kl, loss)
        inputs = self._refinement_inputs(target, step, grads) if need_inputs else None
        if track:
            step = _Step(Gaussian(posterior.mean.detach(), posterior.raw_scale.detach(), posterior.formula),
                         DecoderOutput(decoded.rgb.detach(), decoded.log_masks.detach()), slots.detach(),
                         nll.detach(), kl.detach(), loss.detach())
        return step, inputs

    def _refinement_inputs(self, target: torch.Tensor, step: _Step, grads) -> dict[str, torch.Tensor]:
        """The named inputs of f_phi (see the module docstring); gradients arrive detached."""
        grad_mean, grad_raw_scale, grad_rgb, grad_log_masks = grads
        log_masks, masks = step.decoded.log_masks, step.decoded.masks
        # The loss sees the mask logits l only through log_softmax(l): d/dl = g - pi * sum_k g_k.
        grad_mask_logits = grad_log_masks - masks.detach() * grad_log_masks.sum(dim=1, keepdim=True)
        log_components = component_log_likelihood(target, step.decoded.rgb, self.config.sigma)
        with torch.no_grad():  # stop-gradient inputs
            log_likelihood = torch.logsumexp(log_masks + log_components, dim=1).sum(dim=1, keepdim=True)  # [B,1,H,W]
            leave_one_out = log_likelihood.unsqueeze(1) - leave_one_out_log_likelihood(log_masks, log_components)
        batch = target.shape[0]
        return {
            "image": target,
            "coordinates": self.coordinates.to(target.dtype).expand(batch, -1, -1, -1),
            "log_likelihood": log_likelihood,
            "means": step.decoded.rgb,
            "masks": masks,
            "mask_logits": log_masks,  # normalised logits: softmax of them is the masks
            "mask_posterior": torch.softmax(log_components.sum(dim=2, keepdim=True), dim=1),
            "grad_means": grad_rgb,
            "grad_mask_logits": grad_mask_logits,
            "leave_one_out": leave_one_out,
            "posterior": step.posterior.cat(),
            "grad_posterior": torch.cat([grad_mean, grad_raw_scale], dim=-1),
        }

    # -- forward --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, num_slots: int | None = None, refine_steps: int | None = None,
                objective=None) -> IODINEOutput:
        """T refinement steps from lambda_0 and the loss sum_t (t / T) objective(NLL_t, KL_t).

        images: [B, C, H, W] in [-1, 1] (the likelihood target is (images + 1) / 2).
        num_slots: K (default ``config.num_slots``); refine_steps: T (default ``config.refine_steps``);
        objective: (batch-mean NLL, batch-mean KL) -> loss (default: the negative ELBO).
        """
        c = self.config
        num_slots = c.num_slots if num_slots is None else num_slots
        refine_steps = c.refine_steps if refine_steps is None else refine_steps
        check_images("IODINE", images, c.in_channels, c.image_size)
        check_int("num_slots (K)", num_slots, 2)
        check_int("refine_steps (T)", refine_steps, 0)
        objective = objective or ELBOObjective()
        target = (images + 1.0) / 2.0
        batch = images.shape[0]

        posterior = self.initial_posteriors(batch, num_slots)
        state = self.refinement.initial_state(batch * num_slots, images)
        steps: list[_Step] = []
        for t in range(refine_steps + 1):
            step, inputs = self._score(posterior, target, objective, need_inputs=t < refine_steps)
            steps.append(step)
            if t < refine_steps:
                delta, state = self.refinement(inputs, state)
                posterior = Gaussian.split(step.posterior.cat() + delta, VARIANCE_FORMULA)

        weights = iodine_step_weights(refine_steps)
        loss = sum(w * s.loss for w, s in zip(weights, steps))
        final = steps[-1]
        reconstruction = final.decoded.reconstruction()
        return IODINEOutput(
            loss=loss,
            reconstruction=reconstruction,
            masks=final.decoded.masks,
            components=final.decoded.rgb,
            slots=final.slots,
            posteriors=[s.posterior for s in steps],
            nll_steps=torch.stack([s.nll for s in steps]),
            kl_steps=torch.stack([s.kl for s in steps]),
            loss_steps=torch.stack([s.loss for s in steps]),
            step_weights=torch.tensor(weights),
            mse=F.mse_loss(reconstruction, target),
        )

    @torch.no_grad()
    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        """Decode slots [B, K, D] (latent traversals, activeness)."""
        return self.decoder(slots)


__all__ = ["IODINE", "IODINEConfig", "IODINEOutput", "IODINERefinement", "coordinate_channels",
           "iodine_step_weights", "leave_one_out_log_likelihood", "spatial_input_channels"]
