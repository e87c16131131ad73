"""Typed outputs of the models. Shapes: B images, K slots, D latent size, L stochastic
layers, I refinement steps, N = H*W tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from emorl.models.gaussian import Gaussian


@dataclass
class SlotModelOutput:
    """What every model returns (EfficientMORL and the baselines); the engine needs only this.

    Subclasses add their own fields and extend :meth:`scalars`.
    """

    loss: torch.Tensor  # scalar to minimise
    reconstruction: torch.Tensor  # [B, 3, H, W], in [0, 1]
    masks: torch.Tensor  # [B, K, 1, H, W], sums to 1 over K
    components: torch.Tensor  # [B, K, 3, H, W], per-slot RGB in [0, 1]
    slots: torch.Tensor  # [B, K, D], what was decoded

    @property
    def representation(self) -> torch.Tensor:
        """The slot codes [B, K, D] used for disentanglement metrics (default: ``slots``)."""
        return self.slots

    def scalars(self) -> dict[str, torch.Tensor]:
        """Named scalar tensors to track during training (batch means)."""
        return {"loss": self.loss.detach()}


class StepwiseLosses:
    """For outputs with ``nll_steps`` and ``kl_steps`` [steps, B]: the final step's, per image."""

    @property
    def nll(self) -> torch.Tensor:
        """NLL of the final step per image [B]."""
        return self.nll_steps[-1]

    @property
    def kl(self) -> torch.Tensor:
        """KL of the final step per image [B]."""
        return self.kl_steps[-1]


@dataclass
class EMORLOutput(StepwiseLosses, SlotModelOutput):
    """Everything one forward pass of EfficientMORL computes.

    The reconstruction, masks and components are those of the final refinement step I
    (of step 0 when I = 0); ``loss`` is Eq. 8, sum_i w_i * objective(NLL_i, KL_i); ``slots``
    is the decoded sample z^(L, I).
    """

    posteriors: list[Gaussian]  # stage 1: q(z^l) for l = 0..L, each [B, K, D]
    refined: list[Gaussian]  # lambda^(L, i) for i = 0..I (refined[0] = posteriors[-1])
    attention: list[torch.Tensor]  # alpha of layers 1..L, each [B, K, N]
    layer_samples: list[torch.Tensor]  # the queries z^0..z^{L-1}, each [B, K, D]
    refinement_prior: Gaussian | None  # the prior of the refinement KL terms (None = N(0, I))
    kl_layers: torch.Tensor  # [B, max(L, 1)]: KL of each stochastic layer at step 0
    nll_steps: torch.Tensor  # [I + 1, B]: NLL of each step
    kl_steps: torch.Tensor  # [I + 1, B]: KL of each step (step 0: sum over layers)
    loss_steps: torch.Tensor  # [I + 1]: objective of each step (batch mean)
    step_weights: torch.Tensor  # [I + 1]: the weights of Eq. 8 (or the authors')
    update_norms: torch.Tensor  # [I]: mean over B, K of the L2 norm of delta lambda^(L, i)
    extras: dict = field(default_factory=dict)

    @property
    def representation(self) -> torch.Tensor:
        """The posterior means of lambda^(L, I) (what the paper's DCI uses)."""
        return self.refined[-1].mean

    def scalars(self) -> dict[str, torch.Tensor]:
        """loss, nll, kl (final step), per-step NLL/KL/loss, per-layer KL, refinement update norms."""
        out = {"loss": self.loss.detach(), "nll": self.nll.detach().mean(), "kl": self.kl.detach().mean()}
        for i in range(self.nll_steps.shape[0]):
            out[f"nll_step{i}"] = self.nll_steps[i].detach().mean()
            out[f"kl_step{i}"] = self.kl_steps[i].detach().mean()
            out[f"loss_step{i}"] = self.loss_steps[i].detach()
        for layer in range(self.kl_layers.shape[1]):
            out[f"kl_layer{layer + 1 if len(self.attention) else 0}"] = self.kl_layers[:, layer].detach().mean()
        for i, norm in enumerate(self.update_norms, start=1):
            out[f"update_norm_step{i}"] = norm.detach()
        return out

    @property
    def final_posterior(self) -> Gaussian:
        """lambda^(L, I): the image representation (Algorithm 1 line 28)."""
        return self.refined[-1]
