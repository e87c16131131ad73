"""Stage 1: the hierarchical VAE's bottom-up posterior and its hierarchical prior
(Sec. 3.1, Algorithm 1 lines 5-17, Appendix F).

Shapes: B images, K slots, D latent dimensions, N = H*W tokens, L stochastic layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emorl.models.gaussian import Gaussian


class DualGRU(nn.Module):
    """Two GRU cells of width D run as one batched operation (Appendix F, Eq. 9).

    GRU 1 updates the mean, GRU 2 the raw scale. The paper writes them as one GRU whose
    weight matrices are block-diagonal; the off-diagonal blocks are zero and not
    trainable, so we store the two diagonal blocks stacked, ``weight_ih[g]`` being GRU g's
    [3D, D] input weights (gates r, u, n as in :class:`torch.nn.GRUCell`), and apply both
    with one batched matrix product. Input [..., 2D] = [Theta; Theta], state [..., 2D] = [mu; s].
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight_ih = nn.Parameter(torch.empty(2, 3 * dim, dim))
        self.weight_hh = nn.Parameter(torch.empty(2, 3 * dim, dim))
        self.bias_ih = nn.Parameter(torch.empty(2, 3 * dim))
        self.bias_hh = nn.Parameter(torch.empty(2, 3 * dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's GRUCell initialisation, per cell: U(-1/sqrt(D), 1/sqrt(D))."""
        bound = 1.0 / math.sqrt(self.dim)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def block_diagonal_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's dense block-diagonal W_ih, W_hh [3 * 2D, 2D] (gates r1, r2, u1, u2, n1, n2)."""
        d = self.dim
        dense = []
        for weight in (self.weight_ih, self.weight_hh):
            full = weight.new_zeros(3, 2, d, 2, d)
            for g in range(2):
                full[:, g, :, g, :] = weight[g].view(3, d, d)
            dense.append(full.reshape(6 * d, 2 * d))
        return dense[0], dense[1]

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        lead = inputs.shape[:-1]
        d = self.dim
        x = inputs.reshape(-1, 2, d).transpose(0, 1)  # [2, M, D]
        h = state.reshape(-1, 2, d).transpose(0, 1)
        gates_x = torch.baddbmm(self.bias_ih.unsqueeze(1), x, self.weight_ih.transpose(1, 2))  # [2, M, 3D]
        gates_h = torch.baddbmm(self.bias_hh.unsqueeze(1), h, self.weight_hh.transpose(1, 2))
        rx, ux, nx = gates_x.chunk(3, dim=-1)
        rh, uh, nh = gates_h.chunk(3, dim=-1)
        reset = torch.sigmoid(rx + rh)
        update = torch.sigmoid(ux + uh)
        candidate = torch.tanh(nx + reset * nh)
        new_h = (1.0 - update) * candidate + update * h
        return new_h.transpose(0, 1).reshape(*lead, 2 * d)


class SingleGRU(nn.Module):
    """The "without DualGRU" ablation (Appendix D): one GRU of width 2D.

    As in the authors' code, Theta is projected D -> 2D by a linear layer first (the paper
    does not say what the single GRU's input is).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Linear(dim, 2 * dim)
        self.cell = nn.GRUCell(2 * dim, 2 * dim)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        theta = inputs[..., : inputs.shape[-1] // 2]
        lead = state.shape[:-1]
        out = self.cell(self.project(theta).reshape(-1, state.shape[-1]), state.reshape(-1, state.shape[-1]))
        return out.reshape(*lead, -1)


class ResidualMLP(nn.Module):
    """x + MLP(LayerNorm(x)) with MLP D -> 2D (ReLU) -> D (Algorithm 1 lines 14-15)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


@dataclass
class BottomUpResult:
    """Stage-1 posteriors for layers 0..L, the query samples z^0..z^L and attention per layer."""

    posteriors: list[Gaussian]  # [0] = q(z^0) broadcast to [B, K, D]
    samples: list[torch.Tensor]  # the queries z^0..z^{L-1}, z^l ~ q(z^l | x, z^{l-1}), [B, K, D]
    attention: list[torch.Tensor]  # alpha per layer l = 1..L, [B, K, N] (normalised over N)


class BottomUpInference(nn.Module):
    """q(z^0) and the L weight-shared stochastic layers with scaled dot-product set attention."""

    def __init__(self, token_dim: int, latent_dim: int, dual_gru: bool = True, variance_formula: str = "paper",
                 attention_eps: float = 1e-8):
        super().__init__()
        d = latent_dim
        self.latent_dim = d
        self.variance_formula = variance_formula
        self.attention_eps = attention_eps
        self.z0_mean = nn.Parameter(torch.zeros(d))  # mu^0, initialised to 0 (Appendix F)
        self.z0_raw_scale = nn.Parameter(torch.ones(d))  # s^0, initialised to 1
        self.to_k = nn.Linear(token_dim, d, bias=False)
        self.to_v = nn.Linear(token_dim, d, bias=False)
        self.to_q = nn.Linear(d, d, bias=False)
        self.query_norm = nn.LayerNorm(d)
        self.gru: nn.Module = DualGRU(d) if dual_gru else SingleGRU(d)
        self.mean_mlp = ResidualMLP(d)
        self.scale_mlp = ResidualMLP(d)

    def initial_posterior(self, batch: int, num_slots: int) -> Gaussian:
        """q(z^0) = N(mu^0, sigma^0^2), shared by all K slots, as [B, K, D] parameters."""
        shape = (batch, num_slots, self.latent_dim)
        return Gaussian(self.z0_mean.expand(shape), self.z0_raw_scale.expand(shape), self.variance_formula)

    def attend(self, keys: torch.Tensor, values: torch.Tensor, query_sample: torch.Tensor):
        """Lines 8-11: softmax over slots, + eps, renormalised over pixels. Returns (Theta, alpha)."""
        query = self.to_q(self.query_norm(query_sample)) * self.latent_dim ** -0.5  # [B, K, D]
        logits = torch.einsum("bkd,bnd->bkn", query, keys)
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the softmax in float32
            logits = logits.float()
        attention = torch.softmax(logits, dim=1).to(values.dtype) + self.attention_eps
        attention = attention / attention.sum(dim=-1, keepdim=True)
        return torch.bmm(attention, values), attention

    def forward(self, tokens: torch.Tensor, num_slots: int, num_layers: int) -> BottomUpResult:
        batch = tokens.shape[0]
        keys, values = self.to_k(tokens), self.to_v(tokens)
        posterior = self.initial_posterior(batch, num_slots)
        sample = posterior.rsample()  # K independent samples break the symmetry (line 5)
        result = BottomUpResult([posterior], [sample], [])
        for layer in range(1, num_layers + 1):
            theta, attention = self.attend(keys, values, sample)
            state = self.gru(torch.cat([theta, theta], dim=-1), posterior.cat())  # line 12
            mean, raw_scale = state.chunk(2, dim=-1)
            dtype = self.z0_mean.dtype  # posteriors stay in the parameters' precision under autocast
            posterior = Gaussian(self.mean_mlp(mean).to(dtype), self.scale_mlp(raw_scale).to(dtype),
                                 self.variance_formula)
            result.posteriors.append(posterior)
            result.attention.append(attention)
            if layer < num_layers:  # line 16; z^L itself is drawn where it is decoded
                sample = posterior.rsample()
                result.samples.append(sample)
        return result


class PriorNetwork(nn.Module):
    """p_theta(z^l | z^m): MLP D -> 128 (ELU), then Linear(128, D) for mu and for s (Appendix F).

    One network is shared by every layer of the hierarchy.
    """

    def __init__(self, latent_dim: int, hidden: int = 128, variance_formula: str = "paper"):
        super().__init__()
        self.variance_formula = variance_formula
        self.hidden = nn.Linear(latent_dim, hidden)
        self.mean = nn.Linear(hidden, latent_dim)
        self.raw_scale = nn.Linear(hidden, latent_dim)

    def forward(self, condition: torch.Tensor) -> Gaussian:
        h = F.elu(self.hidden(condition))
        dtype = self.mean.weight.dtype
        return Gaussian(self.mean(h).to(dtype), self.raw_scale(h).to(dtype), self.variance_formula)
