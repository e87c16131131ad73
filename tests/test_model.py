"""EfficientMORL: parameter counts, symmetry, components, ablation switches, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import emorl.models.gaussian as gaussian_module
from emorl.errors import ConfigError
from emorl.models.decoder import SpatialBroadcastDecoder
from emorl.models.emorl import EMORLConfig, EfficientMORL, count_parameters, step_weights
from emorl.models.gaussian import Gaussian
from emorl.models.hvae import DualGRU
from tests.noise_tape import NoiseTape

CLEVR6 = dict(image_size=96, num_slots=7, latent_dim=64, decoder="broadcast", likelihood="mixture", sigma=0.1)
TETROMINOES = dict(image_size=35, num_slots=4, latent_dim=32, decoder="broadcast_light", sigma=0.3)
TINY = dict(image_size=16, num_slots=3, latent_dim=8, encoder_channels=16, decoder="broadcast_light", sigma=0.3,
            stochastic_layers=2, refine_steps=2)


def tiny(**overrides) -> EfficientMORL:
    torch.manual_seed(0)
    return EfficientMORL(EMORLConfig(**{**TINY, **overrides}))


def images(batch=2, size=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


# -- parameter counts ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting, authors_options, expected",
    [
        (CLEVR6, True, 666_500),  # the authors' code
        (TETROMINOES, True, 467_236),  # the authors' code
        (CLEVR6, False, 666_756),  # paper: trainable LayerNorms on the refinement gradients (+2 x 2D)
        (TETROMINOES, False, 467_364),
    ],
)
def test_parameter_counts(setting, authors_options, expected):
    model = EfficientMORL(EMORLConfig(**setting, refine_grad_norm_affine=not authors_options))
    assert count_parameters(model) == expected


def test_without_dual_gru_adds_one_gru_of_width_2d():
    d = 64
    full = count_parameters(EfficientMORL(EMORLConfig(**CLEVR6)))
    ablated = count_parameters(EfficientMORL(EMORLConfig(**CLEVR6, dual_gru=False)))
    dual = 12 * d * d + 12 * d  # two GRU cells of width D
    single = (2 * d * d + 2 * d) + (24 * d * d + 12 * d)  # Linear(D, 2D) + GRUCell(2D, 2D)
    assert ablated - full == single - dual


# -- components ----------------------------------------------------------------------------------
def test_dual_gru_equals_two_gru_cells_and_the_block_diagonal_gru():
    torch.manual_seed(0)
    d = 5
    dual = DualGRU(d)
    cells = [nn.GRUCell(d, d) for _ in range(2)]
    for g, cell in enumerate(cells):
        cell.weight_ih.data.copy_(dual.weight_ih[g])
        cell.weight_hh.data.copy_(dual.weight_hh[g])
        cell.bias_ih.data.copy_(dual.bias_ih[g])
        cell.bias_hh.data.copy_(dual.bias_hh[g])
    theta = torch.randn(3, 4, d)
    state = torch.randn(3, 4, 2 * d)
    out = dual(torch.cat([theta, theta], -1), state)
    mean = cells[0](theta.reshape(-1, d), state[..., :d].reshape(-1, d)).view(3, 4, d)
    scale = cells[1](theta.reshape(-1, d), state[..., d:].reshape(-1, d)).view(3, 4, d)
    torch.testing.assert_close(out, torch.cat([mean, scale], -1))
    # The paper's formulation: one GRU of width 2D with block-diagonal weights (Eq. 9).
    fused = nn.GRUCell(2 * d, 2 * d)
    w_ih, w_hh = dual.block_diagonal_weights()
    fused.weight_ih.data.copy_(w_ih)
    fused.weight_hh.data.copy_(w_hh)
    fused.bias_ih.data.copy_(dual.bias_ih.view(2, 3, d).transpose(0, 1).reshape(-1))
    fused.bias_hh.data.copy_(dual.bias_hh.view(2, 3, d).transpose(0, 1).reshape(-1))
    dense = fused(torch.cat([theta, theta], -1).reshape(-1, 2 * d), state.reshape(-1, 2 * d)).view(3, 4, 2 * d)
    torch.testing.assert_close(out, dense)
    assert (w_ih[:d, d:] == 0).all() and (w_ih[d:2 * d, :d] == 0).all()


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = Gaussian(torch.randn(4, 6), torch.randn(4, 6))
    p = Gaussian(torch.randn(4, 6), torch.randn(4, 6))
    samples = q.mean + q.std * torch.randn(200_000, 4, 6)

    def log_density(g, x):
        return (-0.5 * (x - g.mean) ** 2 / g.variance - 0.5 * g.variance.log()).sum(-1)

    for prior in (p, None):
        prior_g = prior or Gaussian(torch.zeros(4, 6), torch.full((4, 6), 0.0))
        if prior is None:  # N(0, I): a variance of exactly 1
            log_p = (-0.5 * samples**2).sum(-1)
        else:
            log_p = log_density(prior_g, samples)
        monte_carlo = (log_density(q, samples) - log_p).mean(0)
        torch.testing.assert_close(q.kl(prior), monte_carlo, atol=0.05, rtol=0.02)


def test_variance_formulas_match_appendix_f_and_differ_by_at_most_eps():
    raw = torch.linspace(-30, 100, 500, dtype=torch.float64)
    paper = gaussian_module.variance_from_raw(raw, "paper")
    authors = gaussian_module.variance_from_raw(raw, "authors")
    torch.testing.assert_close(paper, torch.log(1 + torch.exp(raw.clamp(max=80)) + 1e-5))
    assert (paper - authors).abs().max() <= 1e-5 + 1e-12
    assert paper.min() > 0 and authors.min() >= 1e-5


def test_masks_sum_to_one_and_shapes():
    model = tiny()
    out = model(images())
    b, k, d, n = 2, 3, 8, 16 * 16
    assert out.masks.shape == (b, k, 1, 16, 16) and out.components.shape == (b, k, 3, 16, 16)
    torch.testing.assert_close(out.masks.sum(1), torch.ones(b, 1, 16, 16))
    assert out.reconstruction.shape == (b, 3, 16, 16)
    assert len(out.posteriors) == 3 and len(out.refined) == 3 and len(out.attention) == 2
    assert all(g.mean.shape == (b, k, d) for g in out.posteriors + out.refined)
    assert out.attention[0].shape == (b, k, n)
    # Attention: softmax over slots, then normalised over pixels (Algorithm 1 lines 9-10).
    torch.testing.assert_close(out.attention[0].sum(-1), torch.ones(b, k))
    assert out.kl_layers.shape == (b, 2) and out.nll_steps.shape == (3, b) and out.update_norms.shape == (2,)
    torch.testing.assert_close(out.kl_steps[0], out.kl_layers.sum(-1))


def test_loss_is_eq8_weighted_sum_of_the_step_losses():
    assert step_weights(3, "paper") == [1.0, 0.75, 0.5, 0.25]
    assert step_weights(3, "authors") == [1.5, 1.25, 1.0, 0.75]
    assert step_weights(0, "paper") == [1.0]
    for scheme in ("paper", "authors"):
        out = tiny(step_weighting=scheme, refine_steps=3)(images())
        expected = sum(w * l for w, l in zip(step_weights(3, scheme), out.loss_steps))
        torch.testing.assert_close(out.loss, expected)
        # With the plain ELBO objective each step's loss is mean NLL + mean KL.
        torch.testing.assert_close(out.loss_steps, out.nll_steps.mean(1) + out.kl_steps.mean(1))


@pytest.mark.parametrize("prior", ["reversed++", "reversed", "bottom_up"])
def test_permuting_z0_permutes_every_posterior_and_mask(monkeypatch, prior):
    model = tiny(prior=prior, refine_steps=2).double()
    x = images().double()
    tape = NoiseTape()
    monkeypatch.setattr(gaussian_module, "standard_normal_like", tape)
    out = model(x)
    perm = torch.tensor([2, 0, 1])
    tape.transform = lambda noise: noise[:, perm]
    permuted = model(x)
    assert tape.position == len(tape.recorded)  # every draw was replayed
    for a, b in zip(out.posteriors[1:] + out.refined, permuted.posteriors[1:] + permuted.refined):
        torch.testing.assert_close(b.mean, a.mean[:, perm])
        torch.testing.assert_close(b.raw_scale, a.raw_scale[:, perm])
    for a, b in zip(out.attention, permuted.attention):
        torch.testing.assert_close(b, a[:, perm])
    torch.testing.assert_close(permuted.masks, out.masks[:, perm])
    torch.testing.assert_close(permuted.components, out.components[:, perm])
    torch.testing.assert_close(permuted.reconstruction, out.reconstruction)
    torch.testing.assert_close(permuted.loss, out.loss)


def test_refinement_input_is_a_stop_gradient():
    seen = []
    model = tiny(refine_steps=2)
    model.refinement.register_forward_pre_hook(lambda module, args: seen.append(args[1:3]))
    torch.manual_seed(123)
    model(images()).loss.backward()
    assert len(seen) == 2
    assert all(not g.requires_grad and g.grad_fn is None for pair in seen for g in pair)
    # The authors' create_graph=True builds a double-backward graph for d, then detaches d:
    # the parameter gradients must equal ours exactly (nothing flows back through d).
    authors = tiny(refine_steps=2, refine_grad_create_graph=True)
    authors.load_state_dict(model.state_dict())
    torch.manual_seed(123)
    authors(images()).loss.backward()
    for ours, theirs in zip(model.parameters(), authors.parameters()):
        torch.testing.assert_close(theirs.grad, ours.grad)
    assert sum(p.grad.abs().sum() for p in model.refinement.parameters()) > 0


def test_refinement_runs_at_test_time_and_matches_training_mode():
    model = tiny(refine_steps=3)
    torch.manual_seed(7)
    trained = model(images())
    model.eval()
    torch.manual_seed(7)
    with torch.no_grad():
        tested = model(images())
    assert not tested.loss.requires_grad
    assert (tested.update_norms > 0).all()
    for a, b in zip(trained.refined, tested.refined):
        torch.testing.assert_close(b.mean, a.mean.detach())
    torch.testing.assert_close(tested.loss, trained.loss.detach())


def _squares(count=8, size=16, seed=0):
    """``count`` images of two coloured 5x5 squares on black, in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.full((count, 3, size, size), -1.0)
    for i in range(count):
        for _ in range(2):
            y, x = torch.randint(0, size - 5, (2,), generator=generator)
            batch[i, :, y:y + 5, x:x + 5] = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    return batch


def test_tiny_model_learns_to_tell_images_apart():
    """A real learning signal: on 8 fixed images the reconstruction must beat the batch's
    per-pixel mean image, which no model that ignores its input can do (a falling loss alone is
    also met by reconstructing everything black). PyTorch's initialisation and a warm-up: with
    the authors' 0.02-gain initialisation the tiny model leaves the mean-image plateau only after
    a few thousand steps (docs/benchmarks.md, section 2b)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trajectory depends on reduction order; keep it one way
    try:
        torch.manual_seed(0)
        batch = _squares()
        target = (batch + 1) / 2
        mean_image_mse = (target - target.mean(0, keepdim=True)).square().mean().item()
        model = tiny(refine_steps=1, init="pytorch")
        optimiser = torch.optim.Adam(model.parameters(), lr=4e-4)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / 200))
        for _ in range(1500):
            optimiser.zero_grad()
            out = model(batch)
            out.loss.backward()
            optimiser.step()
            warmup.step()
        with torch.no_grad():
            torch.manual_seed(1)
            out = model(batch)
    finally:
        torch.set_num_threads(threads)
    mse = (out.reconstruction - target).square().mean().item()
    assert mse < 0.95 * mean_image_mse, (mse, mean_image_mse)
    assert out.kl_steps[-1].mean() > 1.0  # the posterior carries information about each image


# -- ablation switches -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "switch",
    [
        dict(dual_gru=False),
        dict(prior="bottom_up"),
        dict(prior="bottom_up", bottom_up_refinement_prior="standard"),
        dict(prior="bottom_up", bottom_up_prior_sample="fresh"),
        dict(prior="reversed"),
        dict(stochastic_layers=0),
        dict(stochastic_layers=1),
        dict(refine_steps=0),
        dict(likelihood="mixture"),
        dict(decoder="broadcast"),
        dict(decoder="deconv"),
        dict(step_weighting="authors"),
        dict(variance_formula="authors"),
        dict(init="pytorch"),
        dict(refine_grad_norm_affine=False),
    ],
)
def test_every_switch_builds_runs_forward_and_backward(switch):
    model = tiny(**switch)
    out = model(images())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    # Parts a setting does not use get no gradient; every other part gets a finite one.
    unused = set()
    if switch.get("stochastic_layers") == 0:
        unused |= {"encoder.", "bottom_up.to_", "bottom_up.query_norm", "bottom_up.gru", "bottom_up.mean_mlp",
                   "bottom_up.scale_mlp", "prior_net."}
    if switch.get("stochastic_layers") == 1:
        unused |= {"prior_net."}  # one layer: its prior is N(0, I), and there is no p(z^1 | z^2)
    if switch.get("refine_steps") == 0:
        unused |= {"refinement."}
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in unused):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_likelihood_switch_scores_the_same_decoding_by_eq12_or_eq13():
    """Same weights, same noise, same decoding (float64); the step-0 NLL is Eq. 12 or Eq. 13 of it."""
    from emorl.likelihoods import gaussian_nll, mixture_nll
    from emorl.models.decoder import DecoderOutput

    x = images().double()
    target = (x + 1) / 2
    outputs = {}
    for likelihood in ("gaussian", "mixture"):
        model = tiny(likelihood=likelihood, refine_steps=0).double()
        torch.manual_seed(3)
        outputs[likelihood] = model(x)
    gaussian, mixture = outputs["gaussian"], outputs["mixture"]
    torch.testing.assert_close(gaussian.components, mixture.components, rtol=0, atol=0)
    decoded = DecoderOutput(gaussian.components, gaussian.masks.log())
    eq12, eq13 = gaussian_nll(target, decoded, 0.3), mixture_nll(target, decoded, 0.3)
    torch.testing.assert_close(gaussian.nll_steps[0], eq12, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(mixture.nll_steps[0], eq13, rtol=1e-12, atol=1e-9)
    assert (eq12 - eq13).abs().min() > 1e-3  # an untrained decoder's slots look alike, yet the two differ


@pytest.mark.parametrize("decoder, layers, expected", [
    # position Linear(4, D) = 160, then the convolutions (kernel, out channels); the count by hand
    ("broadcast_light", [(5, 32)] * 3 + [(3, 4)], 160 + 3 * (32 * 32 * 25 + 32) + (32 * 4 * 9 + 4)),
    ("broadcast", [(3, 64)] * 4 + [(3, 4)], 160 + (32 * 64 * 9 + 64) + 3 * (64 * 64 * 9 + 64) + (64 * 4 * 9 + 4)),
    ("deconv", [(5, 64)] * 5 + [(3, 4)], 160 + (32 * 64 * 25 + 64) + 4 * (64 * 64 * 25 + 64) + (64 * 4 * 9 + 4)),
])
def test_decoder_switch_builds_the_named_decoder(decoder, layers, expected):
    """At the Tetrominoes setting (K = 4, D = 32): the decoder's layers and size follow the switch."""
    size = 64 if decoder == "deconv" else 35  # the deconvolutional decoder needs H, W divisible by 16
    model = EfficientMORL(EMORLConfig(**{**TETROMINOES, "image_size": size, "decoder": decoder}))
    kind = nn.ConvTranspose2d if decoder == "deconv" else nn.Conv2d
    convs = [m for m in model.decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(isinstance(c, kind) for c in convs)
    assert sorted((c.kernel_size[0], c.out_channels) for c in convs) == sorted(layers)
    assert count_parameters(model.decoder) == expected
    assert count_parameters(model) - expected == 467_364 - 78_212  # everything but the decoder is shared
    out = model(torch.zeros(1, 3, size, size), refine_steps=0)
    assert out.reconstruction.shape == (1, 3, size, size)


def test_refinement_kl_targets_of_each_prior_variant():
    x = images()
    # reversed: the refinement KL is against N(0, I) = p(z^L).
    out = tiny(prior="reversed")(x)
    assert out.refinement_prior is None
    torch.testing.assert_close(out.kl_steps[1], out.refined[1].kl(None).sum(-1))
    # reversed++: against p(z^1 | z^2), the very prior of layer 1's KL at step 0.
    out = tiny(prior="reversed++")(x)
    prior = out.refinement_prior
    torch.testing.assert_close(out.kl_steps[1], out.refined[1].kl(prior).sum(-1))
    torch.testing.assert_close(out.kl_layers[:, 0], out.posteriors[1].kl(prior).sum(-1))
    torch.testing.assert_close(out.kl_layers[:, -1], out.posteriors[-1].kl(None).sum(-1))
    # bottom-up (paper, Fig. 12a): against p(z^L | z^{L-1}), z^{L-1} the query of layer L.
    model = tiny(prior="bottom_up")
    out = model(x)
    expected_prior = model.prior_net(out.layer_samples[-1])
    torch.testing.assert_close(out.refinement_prior.mean, expected_prior.mean)
    torch.testing.assert_close(out.kl_steps[1], out.refined[1].kl(expected_prior).sum(-1))
    torch.testing.assert_close(out.kl_layers[:, 0], out.posteriors[1].kl(None).sum(-1))
    # bottom-up as the authors' code: N(0, I).
    out = tiny(prior="bottom_up", bottom_up_refinement_prior="standard")(x)
    torch.testing.assert_close(out.kl_steps[1], out.refined[1].kl(None).sum(-1))


def test_the_bottom_up_prior_at_a_fresh_sample_as_the_authors_draw_it(monkeypatch):
    """bottom_up_prior_sample=fresh: layer 2's prior p(z^2 | z^1) is computed at a fresh sample of
    q(z^1) drawn for it (the authors' code), not at the sample that queried layer 2. With L = 2 the
    draws are: z^0, the query z^1, the fresh z^1 (for the KL), then the decoded z^2."""
    tape = NoiseTape()
    monkeypatch.setattr(gaussian_module, "standard_normal_like", tape)
    x = images()
    model = tiny(prior="bottom_up", bottom_up_prior_sample="fresh", refine_steps=0)
    out = model(x)
    assert len(tape.recorded) == 4
    q1, q2 = out.posteriors[1], out.posteriors[2]
    fresh = q1.mean + q1.std * tape.recorded[2]
    assert not torch.allclose(fresh, out.layer_samples[1])  # not the query sample
    torch.testing.assert_close(out.kl_layers[:, 1], q2.kl(model.prior_net(fresh)).sum(-1))
    tape.recorded.clear()
    query = tiny(prior="bottom_up", refine_steps=0)
    out = query(x)
    assert len(tape.recorded) == 3
    torch.testing.assert_close(out.kl_layers[:, 1], out.posteriors[2].kl(query.prior_net(out.layer_samples[1])).sum(-1))


def test_no_stochastic_layers_means_refinement_only():
    out = tiny(stochastic_layers=0, refine_steps=2)(images())
    assert len(out.posteriors) == 1 and out.attention == []
    # lambda^(0,0) is the shared q(z^0): identical for every slot and image.
    start = out.refined[0].mean
    torch.testing.assert_close(start, start[:1, :1].expand_as(start))
    assert not torch.allclose(out.refined[-1].mean, start)


def test_k_at_test_time_can_differ_from_training():
    model = tiny(num_slots=3)
    out = model(images(), num_slots=5, refine_steps=1)
    assert out.masks.shape[1] == 5 and out.final_posterior.mean.shape[1] == 5


def test_factorized_decoder_equals_plain_decoder():
    for kind, size in (("broadcast", 16), ("broadcast_light", 35)):
        torch.manual_seed(0)
        fast = SpatialBroadcastDecoder(8, size, size, kind, factorized_first_layer=True).double()
        plain = SpatialBroadcastDecoder(8, size, size, kind, factorized_first_layer=False).double()
        plain.load_state_dict(fast.state_dict())
        z = torch.randn(2, 3, 8, dtype=torch.float64)
        a, b = fast(z), plain(z)
        torch.testing.assert_close(a.rgb, b.rgb)
        torch.testing.assert_close(a.log_masks, b.log_masks)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, message",
    [
        (dict(prior="top_down"), "model.prior='top_down' is not allowed; choose one of"),
        (dict(num_slots=0), "num_slots=0 must be an integer >= 1"),
        (dict(decoder="mlp"), "model.decoder='mlp'"),
        (dict(likelihood="bernoulli"), "likelihood='bernoulli'"),
        (dict(sigma=0.0), "sigma=0.0 must be > 0"),
        (dict(decoder="deconv", image_size=35), "divisible by 16"),
    ],
)
def test_bad_config_names_the_setting_and_allowed_values(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        EfficientMORL(EMORLConfig(**{**TINY, **config}))


def test_bad_images_and_k_raise_clear_errors():
    model = tiny()
    with pytest.raises(ConfigError, match=r"expects images \[B, 3, 16, 16\].*got \[2, 1, 16, 16\]"):
        model(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ConfigError, match=r"got \[2, 3, 32, 32\]"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"num_slots \(K\)=0 must be an integer >= 1"):
        model(torch.zeros(2, 3, 16, 16), num_slots=0)


# -- the optimised training step (issue 9) -----------------------------------------------------------
@pytest.mark.parametrize("switch", [dict(), dict(likelihood="mixture", prior="bottom_up"),
                                    dict(prior="reversed", stochastic_layers=1), dict(refine_steps=0),
                                    dict(decoder="broadcast", image_size=16)])
def test_optimised_step_equals_the_plain_computation(switch):
    """Same weights and noise: the fused forward-backward with the factorized decoder gives the
    gradients of the plain graph built as the authors' code builds it (create_graph=True)."""
    from emorl.geco import GECOObjective

    switch = {"refine_steps": 3, **switch}
    plain = tiny(factorized_decoder=False, refine_grad_create_graph=True, **switch).double()
    fast = tiny(**switch).double()
    fast.load_state_dict(plain.state_dict())
    assert count_parameters(fast) == count_parameters(plain)
    objective = GECOObjective(target=-500.0, multiplier=1.7, c_ema=-30.0)
    x = images().double()
    torch.manual_seed(3)
    expected = plain(x, objective=objective)
    expected.loss.backward()
    torch.manual_seed(3)
    got = fast.forward_backward(x, objective=objective)
    torch.testing.assert_close(got.loss, expected.loss.detach(), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(got.refined[-1].mean, expected.refined[-1].mean.detach(), rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12 * max(1.0, p.grad.abs().max().item()))


def test_optimised_step_agrees_in_float32_too():
    plain = tiny(factorized_decoder=False, refine_steps=2)
    fast = tiny(refine_steps=2)
    fast.load_state_dict(plain.state_dict())
    torch.manual_seed(5)
    plain(images()).loss.backward()
    torch.manual_seed(5)
    fast.forward_backward(images())
    overall = max(p.grad.abs().max().item() for p in plain.parameters())
    # The query LayerNorm's bias adds the same k.(W b) to every slot before the softmax over slots:
    # its gradient is zero in exact arithmetic, float rounding in practice; hence the floor on `scale`.
    assert plain.bottom_up.query_norm.bias.grad.abs().max() < 1e-6 * overall
    for p, q in zip(plain.parameters(), fast.parameters()):
        scale = max(p.grad.abs().max().item(), 1e-4 * overall)
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4 * scale)


def test_bf16_autocast_gradients_follow_fp32():
    """``trainer.precision=bf16``: the same step under bf16 autocast gives gradients that point
    where the fp32 ones do (bf16 keeps 8 mantissa bits, so only loosely equal), and the fused
    path agrees with the plain graph under autocast as closely as bf16 allows."""
    from emorl.engine.train import compute_gradients

    torch.manual_seed(0)
    reference = tiny(refine_steps=2)
    x = images(batch=4)

    def gradients(precision, fused):
        model = tiny(refine_steps=2)
        model.load_state_dict(reference.state_dict())
        torch.manual_seed(5)
        out = compute_gradients(model, x, 2, None, torch.device("cpu"), precision, fused=fused)
        return out.loss.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss32, grad32 = gradients("fp32", fused=True)
    loss16, grad16 = gradients("bf16", fused=True)
    loss16_plain, grad16_plain = gradients("bf16", fused=False)
    assert torch.isfinite(grad16).all() and grad16.abs().sum() > 0
    assert not torch.equal(grad16, grad32)  # autocast really ran in bf16
    assert abs(loss16 - loss32) < 0.02 * abs(loss32) + 1.0
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cosine > 0.98, cosine
    assert torch.nn.functional.cosine_similarity(grad16, grad16_plain, dim=0) > 0.98
    assert abs(loss16 - loss16_plain) < 0.02 * abs(loss16_plain) + 1.0


def _expected_initial_scales(model: EfficientMORL) -> dict[str, tuple[str, float]]:
    """For every parameter of ``model`` built with init=authors: (distribution, standard deviation)
    by the formulas of the authors' scheme, written out here independently of the code under test.

    xavier normal, gain g: std = g * sqrt(2 / (fan_in + fan_out)), fan = channels x kernel taps;
    PyTorch's Linear default (kaiming_uniform, a = sqrt(5)) and its bias: U(+-1/sqrt(fan_in)),
    std = 1 / sqrt(3 fan_in); GRUCell: U(+-1/sqrt(hidden)); DualGRU: N(0, 1)."""
    expected = {}
    encoder_position = {f"encoder.position.{n}" for n, _ in model.encoder.position.named_parameters()}
    modules = dict(model.named_modules())
    for name, parameter in model.named_parameters():
        owner_name, _, kind = name.rpartition(".")
        owner = modules[owner_name]
        if name in encoder_position:  # PyTorch's default (the authors' code too)
            expected[name] = ("uniform", 1 / (3 * owner.in_features) ** 0.5)
        elif isinstance(owner, nn.GRUCell):  # the refinement GRU: PyTorch's default
            expected[name] = ("uniform", 1 / (3 * owner.hidden_size) ** 0.5)
        elif isinstance(owner, DualGRU):
            expected[name] = ("normal", 1.0)
        elif isinstance(owner, (nn.Conv2d, nn.Linear)):
            if kind == "bias":
                expected[name] = ("zero", 0.0)
            else:
                taps = parameter[0, 0].numel() if parameter.ndim == 4 else 1
                fan_in, fan_out = parameter.shape[1] * taps, parameter.shape[0] * taps
                expected[name] = ("normal", 0.02 * (2 / (fan_in + fan_out)) ** 0.5)
        elif isinstance(owner, nn.LayerNorm):
            expected[name] = ("one" if kind == "weight" else "zero", 0.0)
        elif name in ("bottom_up.z0_mean", "bottom_up.z0_raw_scale"):
            expected[name] = ("zero" if name.endswith("mean") else "one", 0.0)
        else:
            raise AssertionError(f"no rule for {name}")
    return expected


@pytest.mark.parametrize("setting", [TETROMINOES, CLEVR6], ids=["tetrominoes", "clevr6"])
def test_the_authors_initialisation_parameter_by_parameter(setting):
    """model.init=authors starts every parameter at the authors' scale: each parameter's standard
    deviation against the formula of their scheme (the decoder's position projection is xavier with
    gain 0.02, as the rest of their decoder: std 0.0047 at Tetrominoes, 0.0034 at CLEVR6)."""
    torch.manual_seed(0)
    model = EfficientMORL(EMORLConfig(**setting, init="authors"))
    expected = _expected_initial_scales(model)
    assert set(expected) == {n for n, _ in model.named_parameters()}
    counts = {}
    for name, parameter in model.named_parameters():
        distribution, std = expected[name]
        counts[distribution] = counts.get(distribution, 0) + 1
        values = parameter.detach().double().flatten()
        if distribution in ("zero", "one"):
            assert torch.equal(values, torch.full_like(values, float(distribution == "one"))), name
            continue
        if distribution == "uniform":
            assert values.abs().max() <= std * 3**0.5 + 1e-7, name
        if values.numel() >= 64:  # the sample std is within 5 standard errors (~ std / sqrt(n / 2))
            assert abs(values.std().item() / std - 1) < 5 * (2 / values.numel()) ** 0.5 + 0.02, (name, values.std(), std)
    decoder_position = model.decoder.position.projection.weight
    assert decoder_position.std().item() == pytest.approx(0.02 * (2 / (4 + setting["latent_dim"])) ** 0.5, rel=0.35)
    assert model.encoder.position.projection.weight.std().item() > 0.2  # PyTorch's default, ~0.29
    assert counts["normal"] >= 20 and counts["uniform"] == 6 and counts["zero"] >= 15, counts


def test_the_default_initialisation_is_pytorchs():
    """model.init=pytorch keeps PyTorch's initialisation of every Conv/Linear (bound 1/sqrt(fan_in))."""
    assert EMORLConfig().init == "pytorch"
    torch.manual_seed(0)
    model = EfficientMORL(EMORLConfig(**TETROMINOES))
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            assert module.weight.abs().max().item() <= fan_in ** -0.5 + 1e-6, name
            assert module.weight.std().item() > 0.1 * fan_in ** -0.5, name
