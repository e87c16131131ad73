"""EfficientMORL: two-stage inference (Algorithm 1) and the training loss (Eq. 8).

Stage 1 (``BottomUpInference``) maps the image to K slot posteriors through L stochastic
layers; stage 2 (``RefinementNetwork``) refines the top posterior lambda^(L,0) for I
steps with the stop-gradient gradient of the previous step's loss. Every step decodes a
sample of its posterior and scores it: loss_i = objective(NLL_i, KL_i).

Prior variants (``prior``, Sec. 3.3, Appendix D, Fig. 12):

* ``bottom_up``: p(z^1) = N(0, I), p(z^l | z^{l-1}) for l >= 2, z^{l-1} being the posterior
  sample that queried layer l. Refinement KL against p(z^L | z^{L-1}) (Fig. 12a; the
  authors' code uses N(0, I): ``bottom_up_refinement_prior="standard"``).
* ``reversed``: p(z^L) = N(0, I), p(z^l | z^{l+1}) for l < L with z^{l+1} a fresh sample of
  q(z^{l+1}) (the authors' code; the paper does not say). Refinement KL against N(0, I).
* ``reversed++``: stage 1 as ``reversed``; refinement KL against p(z^1 | z^2), the prior of
  layer 1 computed at step 0 (needs L >= 2; N(0, I) otherwise).

With L = 0 there is no stochastic layer: lambda^(0,0) = (mu^0, s^0) for every slot, the
step-0 KL is KL(q(z^0) || N(0, I)), and the representation comes from refinement alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from emorl.errors import ConfigError
from emorl.geco import ELBOObjective
from emorl.likelihoods import LIKELIHOODS, negative_log_likelihood
from emorl.models.decoder import DECODER_KINDS, DecoderOutput, SpatialBroadcastDecoder
from emorl.models.encoder import ImageEncoder
from emorl.models.gaussian import VARIANCE_FORMULAS, Gaussian
from emorl.models.hvae import BottomUpInference, BottomUpResult, DualGRU, PriorNetwork
from emorl.models.outputs import EMORLOutput
from emorl.models.refinement import RefinementNetwork
from emorl.models.validation import check_choice, check_int

PRIORS = ("bottom_up", "reversed", "reversed++")
STEP_WEIGHTINGS = ("paper", "authors")
INITIALISATIONS = ("authors", "pytorch")
BOTTOM_UP_REFINEMENT_PRIORS = ("conditional", "standard")
BOTTOM_UP_PRIOR_SAMPLES = ("query", "fresh")




@dataclass
class EMORLConfig:
    """Architecture and loss switches of EfficientMORL. Defaults follow the paper."""

    image_size: int = 64  # H = W of the input images
    in_channels: int = 3
    num_slots: int = 7  # K (can be changed per call, e.g. K = 11 on CLEVR10)
    latent_dim: int = 64  # D
    stochastic_layers: int = 3  # L
    refine_steps: int = 3  # I (default per call; the trainer's curriculum sets it)
    encoder_channels: int = 64
    decoder: str = "broadcast"  # broadcast | broadcast_light | deconv
    likelihood: str = "gaussian"  # gaussian | mixture
    sigma: float = 0.1  # fixed std of the likelihood
    prior: str = "reversed++"  # bottom_up | reversed | reversed++
    dual_gru: bool = True  # False: one GRU of width 2D (ablation)
    step_weighting: str = "paper"  # paper: Eq. 8; authors: (I + 3 - i) / (I + 1) for i = 0..I
    refine_grad_norm_affine: bool = True  # paper: trainable LayerNorms; authors' code: no affine
    variance_formula: str = "paper"  # paper: Eq. 11; authors: softplus + 1e-5
    bottom_up_refinement_prior: str = "conditional"  # conditional: p(z^L|z^{L-1}) (paper); standard: N(0,I)
    bottom_up_prior_sample: str = "query"  # z^{l-1} of p(z^l|z^{l-1}): query (the one that queried layer l) | fresh (authors)
    init: str = "pytorch"  # pytorch: PyTorch's defaults; authors: xavier_normal(gain 0.02) etc. (paper silent)
    factorized_decoder: bool = True  # exact, cheaper first decoder layer (see decoder.py)
    refine_grad_create_graph: bool = False  # True: build the unused double-backward graph as the authors' code does

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 8)
        check_int("in_channels", self.in_channels, 1)
        check_int("num_slots", self.num_slots, 1)
        check_int("latent_dim", self.latent_dim, 1)
        check_int("stochastic_layers", self.stochastic_layers, 0)
        check_int("refine_steps", self.refine_steps, 0)
        check_choice("decoder", self.decoder, DECODER_KINDS)
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_choice("prior", self.prior, PRIORS)
        check_choice("step_weighting", self.step_weighting, STEP_WEIGHTINGS)
        check_choice("variance_formula", self.variance_formula, VARIANCE_FORMULAS)
        check_choice("bottom_up_refinement_prior", self.bottom_up_refinement_prior, BOTTOM_UP_REFINEMENT_PRIORS)
        check_choice("bottom_up_prior_sample", self.bottom_up_prior_sample, BOTTOM_UP_PRIOR_SAMPLES)
        check_choice("init", self.init, INITIALISATIONS)
        if not self.sigma > 0:
            raise ConfigError(f"model.sigma={self.sigma!r} must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def step_weights(refine_steps: int, scheme: str = "paper") -> list[float]:
    """Weights of the I + 1 step losses in Eq. 8.

    paper:   1 for step 0, (I - (i - 1)) / (I + 1) for step i >= 1  (I = 3: 1, .75, .5, .25)
    authors: (I + 3 - i) / (I + 1) for i = 0..I                      (I = 3: 1.5, 1.25, 1, .75)
    """
    n = refine_steps
    if scheme == "paper":
        return [1.0] + [(n - (i - 1)) / (n + 1) for i in range(1, n + 1)]
    if scheme == "authors":
        return [(n + 3 - i) / (n + 1) for i in range(n + 1)]
    raise ConfigError(f"model.step_weighting={scheme!r} is not one of {STEP_WEIGHTINGS}")


@dataclass
class _Step:
    """What one step computes; ``grad`` is the stop-gradient input of the next refinement."""

    posterior: Gaussian
    decoded: DecoderOutput
    slots: torch.Tensor
    nll: torch.Tensor  # [B]
    kl: torch.Tensor  # [B]
    loss: torch.Tensor  # scalar
    grad: tuple[torch.Tensor, torch.Tensor] | None
    kl_layers: torch.Tensor | None = None
    refinement_prior: Gaussian | None = None


class EfficientMORL(nn.Module):
    """The EfficientMORL model. ``forward(images)`` returns an :class:`EMORLOutput`."""

    supports_cuda_graph = True  # no host synchronisation in a training step (emorl.engine.step)
    supports_keep_steps = True  # forward(..., keep_steps=True) returns every step's outputs

    def __init__(self, config: EMORLConfig | None = None, **overrides):
        super().__init__()
        config = config or EMORLConfig()
        if overrides:
            config = EMORLConfig(**{**config.to_dict(), **overrides})
        self.config = config
        c = config
        self.encoder = ImageEncoder(c.image_size, c.image_size, c.in_channels, c.encoder_channels)
        self.bottom_up = BottomUpInference(c.encoder_channels, c.latent_dim, c.dual_gru, c.variance_formula)
        self.prior_net = PriorNetwork(c.latent_dim, variance_formula=c.variance_formula)
        self.refinement = RefinementNetwork(c.latent_dim, grad_norm_affine=c.refine_grad_norm_affine)
        self.decoder = SpatialBroadcastDecoder(c.latent_dim, c.image_size, c.image_size, c.decoder,
                                               factorized_first_layer=c.factorized_decoder)
        if c.init == "authors":
            initialise_like_authors(self)
        self._weight_tensors: dict = {}  # see _weights_tensor

    # -- input checks ------------------------------------------------------------------------
    def _check_inputs(self, images: torch.Tensor, num_slots: int, refine_steps: int) -> None:
        c = self.config
        expected = f"[B, {c.in_channels}, {c.image_size}, {c.image_size}]"
        if not images.is_floating_point():
            raise ConfigError(f"EfficientMORL expects float images in [-1, 1]; got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != c.in_channels or tuple(images.shape[2:]) != (c.image_size,) * 2:
            raise ConfigError(
                f"EfficientMORL expects images {expected} in [-1, 1] (model.image_size={c.image_size}, "
                f"model.in_channels={c.in_channels}); got {list(images.shape)}"
            )
        check_int("num_slots (K)", num_slots, 1)
        check_int("refine_steps (I)", refine_steps, 0)

    # -- the KL of stage 1 ---------------------------------------------------------------------
    def _stage1_kl(self, stage1: BottomUpResult, top: Gaussian) -> tuple[torch.Tensor, Gaussian | None]:
        """Per-layer KL [B, max(L, 1)] for the chosen prior, and the refinement prior (None = N(0, I)).

        ``top`` replaces ``stage1.posteriors[-1]`` (it is the same posterior, possibly a leaf
        that carries the gradient at test time).
        """
        posteriors = stage1.posteriors[1:-1] + [top]  # layers 1..L
        num_layers = len(stage1.posteriors) - 1
        if num_layers == 0:
            return top.kl(None).sum(-1, keepdim=True), None
        prior_kind = self.config.prior
        terms: list[torch.Tensor] = []
        refinement_prior = None
        if prior_kind == "bottom_up":
            fresh = self.config.bottom_up_prior_sample == "fresh"
            for layer, posterior in enumerate(posteriors, start=1):
                if layer == 1:
                    prior = None
                else:  # z^{l-1}: the query sample of layer l, or a fresh sample of q(z^{l-1}) (authors)
                    condition = posteriors[layer - 2].rsample() if fresh else stage1.samples[layer - 1]
                    prior = self.prior_net(condition)
                terms.append(posterior.kl(prior).sum(-1))
            if self.config.bottom_up_refinement_prior == "conditional":
                refinement_prior = prior
        else:  # reversed, reversed++
            for layer, posterior in enumerate(posteriors, start=1):
                if layer == num_layers:
                    prior = None
                else:
                    prior = self.prior_net(posteriors[layer].rsample())  # fresh z^{l+1} ~ q(z^{l+1})
                    if layer == 1 and prior_kind == "reversed++":
                        refinement_prior = prior
                terms.append(posterior.kl(prior).sum(-1))
        return torch.stack(terms, dim=-1), refinement_prior

    # -- one scored step --------------------------------------------------------------------------
    def _score(self, posterior: Gaussian, target: torch.Tensor, objective, kl_fn, need_grad: bool) -> _Step:
        """Sample, decode and score a posterior; optionally return d = grad of the loss w.r.t. lambda.

        At test time (no autograd graph) only this segment is tracked, from a detached
        copy of lambda, so that refinement works in eval mode and under ``torch.no_grad``.
        """
        track = need_grad and not (torch.is_grad_enabled() and posterior.mean.requires_grad)
        if track:
            posterior = Gaussian(posterior.mean.detach().requires_grad_(True),
                                 posterior.raw_scale.detach().requires_grad_(True), posterior.formula)
        with torch.enable_grad() if track else contextlib.nullcontext():
            kl, kl_layers, refinement_prior = kl_fn(posterior)
            slots = posterior.rsample()
            decoded = self.decoder(slots)
            nll = negative_log_likelihood(self.config.likelihood, target, decoded, self.config.sigma)
            loss = objective(nll.mean(), kl.mean())
        grad = None
        if need_grad:
            grad = torch.autograd.grad(
                loss, (posterior.mean, posterior.raw_scale), retain_graph=not track,
                create_graph=self.config.refine_grad_create_graph and not track,
            )
            grad = (grad[0].detach(), grad[1].detach())  # stop_grad (Algorithm 1 line 22)
        step = _Step(posterior, decoded, slots, nll, kl, loss, grad, kl_layers, refinement_prior)
        if track:  # nothing of this segment may keep a graph at test time
            step = _detach_step(step)
        return step

    def _score_fused(self, posterior: Gaussian, target: torch.Tensor, objective, kl_fn, need_grad: bool,
                     weight: float) -> tuple[_Step, torch.Tensor]:
        """:meth:`_score` for :meth:`forward_backward`: the decoder is run on a detached copy of the
        sample and back-propagated once, right away, for both its parameters (their ``.grad``
        gets ``weight * dL/dtheta``) and the sample; the rest of the step's loss goes into a
        surrogate, sum(weight * (kl_weight * KL + <dL/dz, z>)), whose gradient is the rest of the
        gradient. Returns (the step, its weighted surrogate)."""
        kl, kl_layers, refinement_prior = kl_fn(posterior)
        slots = posterior.rsample()
        decoder_input = slots.detach().requires_grad_(True)
        decoded = self.decoder(decoder_input)
        nll = negative_log_likelihood(self.config.likelihood, target, decoded, self.config.sigma)
        nll_mean, kl_mean = nll.mean(), kl.mean()
        parameters = [p for p in self.decoder.parameters() if p.requires_grad]
        grads = torch.autograd.grad(nll_mean, [decoder_input, *parameters])
        for parameter, grad in zip(parameters, grads[1:]):
            scaled = grad * (weight * objective.nll_weight)
            parameter.grad = scaled if parameter.grad is None else parameter.grad.add_(scaled)
        grad_slots = grads[0] * objective.nll_weight  # dL_i / dz
        surrogate = objective.kl_weight * kl_mean + (grad_slots * slots).sum()
        grad = None
        if need_grad:
            grad = torch.autograd.grad(surrogate, (posterior.mean, posterior.raw_scale), retain_graph=True)
            grad = (grad[0].detach(), grad[1].detach())
        loss = objective(nll_mean.detach(), kl_mean.detach())
        decoded = DecoderOutput(decoded.rgb.detach(), decoded.log_masks.detach())
        step = _Step(posterior, decoded, slots.detach(), nll.detach(), kl.detach(), loss, grad,
                     None if kl_layers is None else kl_layers.detach(), refinement_prior)
        return step, weight * surrogate

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, num_slots: int | None = None, refine_steps: int | None = None,
                objective=None, keep_steps: bool = False) -> EMORLOutput:
        """Two-stage inference and the loss of Eq. 8.

        images: [B, C, H, W] in [-1, 1] (the likelihood target is (images + 1) / 2).
        num_slots: K (default ``config.num_slots``); refine_steps: I (default ``config.refine_steps``);
        objective: maps (batch-mean NLL, batch-mean KL) of a step to its loss (default: the
        negative ELBO; see :mod:`emorl.geco`).
        keep_steps: also return every step's reconstruction and masks (detached) in
        ``extras["steps"]``; the outputs of step i equal those of a call with I = i under the
        same random state, since the draws of step i come before those of later steps.
        """
        return self._run(images, num_slots, refine_steps, objective, keep_steps, fused=False)

    def forward_backward(self, images: torch.Tensor, num_slots: int | None = None, refine_steps: int | None = None,
                         objective=None) -> EMORLOutput:
        """:meth:`forward` and the backward pass of its loss in one go, for training.

        Adds to every parameter's ``.grad`` exactly what ``forward(...).loss.backward()`` adds,
        but back-propagates through each step's decoder once instead of twice (the plain way
        traverses it once for the refinement input d and again for the parameters). The
        returned tensors carry no graph. Needs gradients enabled.
        """
        return self._run(images, num_slots, refine_steps, objective, keep_steps=False, fused=True)

    def _run(self, images, num_slots, refine_steps, objective, keep_steps: bool, fused: bool) -> EMORLOutput:
        c = self.config
        num_slots = c.num_slots if num_slots is None else num_slots
        refine_steps = c.refine_steps if refine_steps is None else refine_steps
        self._check_inputs(images, num_slots, refine_steps)
        if fused and not torch.is_grad_enabled():
            raise RuntimeError("forward_backward needs gradients enabled; use forward() under torch.no_grad")
        objective = objective or ELBOObjective()
        target = (images + 1.0) / 2.0
        weights = step_weights(refine_steps, c.step_weighting)
        surrogates = []

        def score(posterior, kl_fn, need_grad, index):
            if not fused:
                return self._score(posterior, target, objective, kl_fn, need_grad)
            step, surrogate = self._score_fused(posterior, target, objective, kl_fn, need_grad, weights[index])
            surrogates.append(surrogate)
            return step

        # Algorithm 1 lines 2-3; with L = 0 the image is seen only through the refinement gradients.
        tokens = self.encoder(images) if c.stochastic_layers > 0 else images.new_zeros(images.shape[0], 0, c.encoder_channels)
        stage1 = self.bottom_up(tokens, num_slots, c.stochastic_layers)  # lines 5-17

        def stage1_terms(top: Gaussian):
            kl_layers, refinement_prior = self._stage1_kl(stage1, top)
            return kl_layers.sum(-1), kl_layers, refinement_prior

        step = score(stage1.posteriors[-1], stage1_terms, refine_steps > 0, 0)
        refinement_prior = step.refinement_prior
        steps = [step]

        def refinement_terms(posterior: Gaussian):
            return posterior.kl(refinement_prior).sum(-1), None, None

        state = self.refinement.initial_state(images.shape[0], num_slots, stage1.posteriors[0].mean)
        update_norms = []
        for i in range(1, refine_steps + 1):  # lines 21-27
            grad_mean, grad_raw_scale = step.grad
            posterior, state, delta = self.refinement(step.posterior, grad_mean, grad_raw_scale, state)
            update_norms.append(delta.detach().norm(dim=-1).mean())
            step = score(posterior, refinement_terms, i < refine_steps, i)
            steps.append(step)

        extras = {}
        if keep_steps:
            extras["steps"] = [
                {"reconstruction": s.decoded.reconstruction().detach(), "masks": s.decoded.masks.detach(),
                 "nll": s.nll.detach(), "kl": s.kl.detach()} for s in steps
            ]
        if fused:  # the rest of the backward pass: encoder, stochastic layers, priors, refinement
            sum(surrogates).backward()
            stage1 = BottomUpResult([_detach(g) for g in stage1.posteriors], [z.detach() for z in stage1.samples],
                                    [a.detach() for a in stage1.attention])
            steps = [_detach_step(s) for s in steps]
            update_norms = [n.detach() for n in update_norms]
            refinement_prior = _detach(refinement_prior)
        loss_steps = torch.stack([s.loss for s in steps])
        loss = sum(w * s.loss for w, s in zip(weights, steps))
        final = steps[-1]
        return EMORLOutput(
            loss=loss,
            reconstruction=final.decoded.reconstruction(),
            masks=final.decoded.masks,
            components=final.decoded.rgb,
            slots=final.slots,
            posteriors=stage1.posteriors[:-1] + [steps[0].posterior],
            refined=[s.posterior for s in steps],
            attention=stage1.attention,
            layer_samples=stage1.samples,
            refinement_prior=refinement_prior,
            kl_layers=steps[0].kl_layers,
            nll_steps=torch.stack([s.nll for s in steps]),
            kl_steps=torch.stack([s.kl for s in steps]),
            loss_steps=loss_steps,
            step_weights=self._weights_tensor(weights, loss_steps.device),
            update_norms=torch.stack(update_norms) if update_norms else loss_steps.new_zeros(0),
            extras=extras,
        )

    def _weights_tensor(self, weights: list[float], device: torch.device) -> torch.Tensor:
        """Eq. 8's weights as a tensor on ``device``, made once per (weights, device): a host-to-device
        copy inside a training step would synchronise it and cannot be captured in a CUDA graph."""
        key = (tuple(weights), device)
        cached = self._weight_tensors.get(key)
        if cached is None:
            cached = self._weight_tensors[key] = torch.tensor(weights, device=device)
        return cached

    @torch.no_grad()
    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        """Decode slots [B, K, D] (e.g. for latent traversals and activeness)."""
        return self.decoder(slots)


def _detach(g: Gaussian | None) -> Gaussian | None:
    return None if g is None else Gaussian(g.mean.detach(), g.raw_scale.detach(), g.formula)


def _detach_step(step: _Step) -> _Step:
    detach = _detach
    return _Step(
        detach(step.posterior), DecoderOutput(step.decoded.rgb.detach(), step.decoded.log_masks.detach()),
        step.slots.detach(), step.nll.detach(), step.kl.detach(), step.loss.detach(), step.grad,
        None if step.kl_layers is None else step.kl_layers.detach(), detach(step.refinement_prior),
    )


def initialise_like_authors(model: "EfficientMORL") -> None:
    """The authors' initialisation (the paper does not give one), parameter by parameter as their
    code builds the model:

    * xavier_normal(gain=0.02) and zero bias for every Conv/Linear: encoder CNN and MLP, q/k/v,
      the stochastic layers' MLPs, the prior network, the refinement MLP and heads, and the whole
      decoder, *its position projection included* (it is part of their decoder module);
    * N(0, 1) for every DualGRU parameter;
    * PyTorch's defaults for the *encoder's* position projection and the refinement GRU cell
      (and the single GRU of the "without DualGRU" ablation);
    * LayerNorms and mu^0 = 0, s^0 = 1 keep their initial values.
    """
    skip: set[int] = {id(m) for m in model.encoder.position.modules()}
    for module in model.modules():
        if isinstance(module, (nn.GRUCell, nn.GRU)):
            skip.update(id(m) for m in module.modules())
    for module in model.modules():
        if id(module) in skip:
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight, gain=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, DualGRU):
            for parameter in module.parameters():
                nn.init.normal_(parameter, 0.0, 1.0)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["EMORLConfig", "EfficientMORL", "PRIORS", "count_parameters", "step_weights"]
