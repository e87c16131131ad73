"""MONet, GENESIS and GENESIS-S: parameter counts, the stick-breaking masks, the losses term by term,
their deliberate *absence* of slot symmetry (ordered models), decode, GENESIS's GECO rule, and a
tiny configuration of each that learns more than the best constant image."""

from __future__ import annotations

import math

import pytest
import torch

import emorl.models.gaussian as gaussian_module
from emorl.errors import ConfigError
from emorl.geco import GECO
from emorl.geco_rules import GenesisGECO, build_geco
from emorl.likelihoods import gaussian_nll, mixture_nll
from emorl.models import build_model
from emorl.models.decoder import DecoderOutput
from emorl.models.emorl import count_parameters
from emorl.models.genesis import GENESIS, GENESISConfig, GENESISOutput, GENESISSConfig
from emorl.models.monet import MONet, MONetConfig, MONetOutput
from emorl.models.sequential import stick_breaking, stick_breaking_step
from tests.noise_tape import NoiseTape
from tests.test_baselines import (PERMUTATION, _scenes, check_decode, check_slot_output, images,
                                  passes_with_permuted_noise)

TINY = {
    "monet": dict(image_size=16, num_slots=3, latent_dim=4, unet_channels=[8, 8, 8], unet_mlp=[16],
                  encoder_channels=[8, 8, 8, 8], encoder_hidden=16, decoder_channels=8, decoder_layers=2),
    "genesis": dict(image_size=16, num_slots=3, mask_latent_dim=6, component_latent_dim=4, hidden=32,
                    mask_encoder_channels=[8] * 5, mask_decoder_channels=[8] * 5, component_encoder_channels=[8] * 4,
                    component_decoder_channels=8),
    "genesis_s": dict(image_size=16, num_slots=3, mask_latent_dim=6, hidden=32, mask_encoder_channels=[8] * 5,
                      mask_decoder_channels=[8] * 5, component_decoder_channels=8),
}
OUTPUT_TYPES = {"monet": MONetOutput, "genesis": GENESISOutput, "genesis_s": GENESISOutput}
SLOT_SIZE = {"monet": 4, "genesis": 6 + 4, "genesis_s": 6}


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return build_model({"name": name, **TINY[name], **overrides})


# -- parameter counts (docs/baselines.md) -------------------------------------------------------------------
def test_monet_parameter_count_by_hand():
    """The Multi-dSprites MONet (64x64, U-Net of 5 blocks): every layer counted by hand."""
    model = MONet(MONetConfig(image_size=64, num_slots=6))
    down = 4 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9 + 64 * 64 * 9 + (32 + 32 + 64 + 64 + 64)
    up = 128 * 64 * 9 * 2 + 128 * 32 * 9 + 64 * 32 * 9 * 2 + (64 + 64 + 32 + 32 + 32)
    mlp = (1024 * 128 + 128) + (128 * 128 + 128) + (128 * 1024 + 1024)  # 4x4x64 -> 128 -> 128 -> 4x4x64
    assert count_parameters(model.attention) == down + up + mlp + (32 + 1) == 604_033
    encoder = (4 * 32 * 9 + 32) + (32 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64) \
        + (64 * 4 * 4 * 256 + 256) + (256 * 32 + 32)
    assert count_parameters(model.encoder) == encoder == 336_480
    assert count_parameters(model.decoder) == (18 * 32 * 9 + 32) + 3 * (32 * 32 * 9 + 32) + (32 * 4 + 4) == 33_092
    assert count_parameters(model) == 973_605


def test_genesis_parameter_count_by_hand():
    """The official GENESIS configuration at 64x64 (strides 1, 2, 1, 2, 1; the last encoder layer
    and the first decoder layer are 16x16 convolutions): every layer counted by hand."""
    model = GENESIS(GENESISConfig(image_size=64))

    def gated(c_in, c_out, k, norm=True):  # conv to 2 c_out, and two normalisations of c_out
        return c_in * 2 * c_out * k * k + 2 * c_out + (4 * c_out if norm else 0)

    encoder = gated(3, 32, 5) + gated(32, 32, 5) + gated(32, 64, 5) + gated(64, 64, 5) + gated(64, 64, 5) \
        + gated(64, 256, 16, norm=False)
    assert count_parameters(model.mask_encoder) == encoder == 8_958_656
    mask_decoder = gated(64, 64, 16, norm=False) + gated(64, 64, 5) + gated(64, 32, 5) + 3 * gated(32, 32, 5) + 33
    assert count_parameters(model.decoder.mask_decoder) == mask_decoder == 2_559_265
    posterior = 2 * (256 * 64 + 64) + 4 * 128 * (320 + 128) + 2 * 4 * 128 + (128 * 128 + 128)
    prior = 4 * 256 * (64 + 256) + 2 * 4 * 256 + (256 * 128 + 128)
    component_prior = (64 * 256 + 256) + (256 * 256 + 256) + (256 * 32 + 32)
    assert count_parameters(model.component_encoder) == 336_480  # MONet's encoder (ELU)
    rgb_decoder = (18 * 32 * 9 + 32) + 3 * (32 * 32 * 9 + 32) + (32 * 3 + 3)
    assert count_parameters(model.decoder.rgb_decoder) == rgb_decoder == 33_059
    total = encoder + mask_decoder + posterior + prior + component_prior + 336_480 + rgb_decoder
    assert count_parameters(model) == total == 12_620_548
    single = GENESIS(GENESISSConfig(image_size=64))  # no component VAE nor prior; RGB from z (64 + 2 inputs)
    rgb_from_z = (66 * 32 * 9 + 32) + 3 * (32 * 32 * 9 + 32) + (32 * 3 + 3)
    assert count_parameters(single) == total - 336_480 - component_prior - rgb_decoder + rgb_from_z == 12_207_236


@pytest.mark.parametrize("experiment, expected", [
    ("monet_multi_dsprites", 973_605), ("monet_clevr6", 1_787_749), ("genesis_multi_dsprites", 12_620_548),
    ("genesis_multi_dsprites_textured", 12_620_548), ("genesis_s_multi_dsprites_textured", 12_207_236),
])
def test_shipped_experiments_build_the_pinned_models(experiment, expected):
    from omegaconf import OmegaConf

    from emorl.config import compose

    cfg = compose([f"experiment={experiment}"])
    assert count_parameters(build_model(OmegaConf.to_container(cfg.model, resolve=True))) == expected


def test_the_appendix_b1_tuning_and_genesis_own_settings():
    from emorl.config import compose

    own = compose(["experiment=genesis_multi_dsprites"])
    assert (own.model.likelihood, own.model.sigma, own.loss.geco.rule, own.loss.geco.step_size) == \
        ("mixture", 0.7, "genesis", 1e-5)
    assert own.loss.geco.target == pytest.approx((0.5655 - 0.5 * math.log(2 * math.pi)) * 3 * 64 * 64, abs=0.1)
    tuned = compose(["experiment=genesis_multi_dsprites_textured"])
    assert (tuned.model.likelihood, tuned.model.sigma, tuned.data.name) == ("gaussian", 0.1, "multi_dsprites_textured")
    assert tuned.loss.geco.step_size < own.loss.geco.step_size  # "a slower GECO update"
    monet = compose(["experiment=monet_clevr6"])
    assert (monet.optim.optimizer, monet.optim.lr, monet.model.beta, monet.model.gamma) == ("rmsprop", 1e-4, 0.5, 0.5)
    assert (monet.model.sigma_bg, monet.model.sigma_fg, monet.data.image_size, len(monet.model.unet_channels)) == \
        (0.09, 0.11, 128, 6)


@pytest.mark.parametrize("name, setting, message", [
    ("monet", dict(image_size=18), "a multiple of 4"),
    ("monet", dict(unet_channels=[8]), "at least 2 integers"),
    ("monet", dict(sigma_bg=0.0), "model.sigma_bg=0.0 must be > 0"),
    ("monet", dict(num_slots=1), "model.num_slots=1 must be an integer >= 2"),
    ("genesis", dict(image_size=18), "a multiple of 4"),
    ("genesis", dict(norm="layer"), "model.norm='layer' is not allowed"),
    ("genesis", dict(mask_encoder_channels=[8, 8]), "must be a list of 5 integers"),
    ("genesis", dict(likelihood="logistic"), "model.likelihood='logistic' is not allowed"),
    ("genesis_s", dict(single_latent=False), "use model=genesis"),
])
def test_bad_config_names_the_setting(name, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_model({"name": name, **TINY[name], **setting})


# -- stick-breaking ------------------------------------------------------------------------------------------
def test_stick_breaking_masks_by_hand():
    logits = torch.randn(2, 4, 1, 3, 3, dtype=torch.float64)
    alpha = torch.sigmoid(logits)
    masks = stick_breaking(logits).exp()
    torch.testing.assert_close(masks[:, 0], alpha[:, 0])
    torch.testing.assert_close(masks[:, 1], (1 - alpha[:, 0]) * alpha[:, 1])
    torch.testing.assert_close(masks[:, 2], (1 - alpha[:, 0]) * (1 - alpha[:, 1]) * alpha[:, 2])
    torch.testing.assert_close(masks[:, 3], (1 - alpha[:, :3]).prod(1))  # the last logit is not used
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 1, 3, 3, dtype=torch.float64))
    log_scope, steps = torch.zeros(2, 1, 3, 3, dtype=torch.float64), []
    for k in range(3):
        log_mask, log_scope = stick_breaking_step(log_scope, logits[:, k])
        steps.append(log_mask)
    torch.testing.assert_close(torch.stack([*steps, log_scope], 1), stick_breaking(logits))


# -- outputs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shapes_masks_and_reconstruction(name):
    model = tiny(name)
    x = images()
    out = model(x)
    assert isinstance(out, OUTPUT_TYPES[name]) and model.supports_cuda_graph
    check_slot_output(out, x, slots=3, size=SLOT_SIZE[name])
    assert out.nll.shape == (2,) and out.kl.shape == (2,) and {"nll", "kl"} <= set(out.scalars())
    out.loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    assert model(x, num_slots=5).masks.shape[1] == 5  # K may change at test time


def test_monet_loss_term_by_term():
    model = tiny("monet").double()
    x = images(dtype=torch.float64)
    target = (x + 1) / 2
    out = model(x)
    c = model.config
    torch.testing.assert_close(out.loss, out.nll.mean() + c.beta * out.kl.mean() + c.gamma * out.mask_kl.mean())
    # -log sum_k m_k prod_c N(x_c; mu_kc, sigma_k): sigma_bg for the first component; constants dropped.
    sigmas = torch.tensor([c.sigma_bg, c.sigma_fg, c.sigma_fg], dtype=torch.float64)
    per_pixel = torch.stack([torch.distributions.Normal(out.components[:, k], sigmas[k]).log_prob(target).sum(1)
                             for k in range(3)], 1)  # [B, K, H, W]
    likelihood = (out.masks[:, :, 0] * per_pixel.exp()).sum(1)
    expected_nll = -likelihood.log().sum((1, 2)) - 3 * 16 * 16 * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(out.nll, expected_nll)
    torch.testing.assert_close(out.kl, out.posterior.kl(None).sum(-1))
    q, p = out.masks[:, :, 0], out.decoded_masks[:, :, 0]
    torch.testing.assert_close(out.mask_kl, (q * (q.log() - p.log())).sum((1, 2, 3)))
    assert (out.mask_kl >= 0).all()
    # The encoder gives mu and log sigma.
    torch.testing.assert_close(out.posterior.std, out.posterior.raw_scale.exp())


def test_genesis_kl_is_the_single_sample_estimate_of_the_autoregressive_prior():
    model = tiny("genesis").double()
    out = model(images(dtype=torch.float64))
    z_m, z_c = out.slots[..., :6], out.slots[..., 6:]
    normal = torch.distributions.Normal
    q_m = normal(out.mask_posterior.mean, out.mask_posterior.std).log_prob(z_m).sum(-1)
    p_m = torch.cat([normal(0.0, 1.0).log_prob(z_m[:, :1]).sum(-1),
                     normal(out.mask_prior.mean, out.mask_prior.std).log_prob(z_m[:, 1:]).sum(-1)], 1)
    torch.testing.assert_close(out.kl_masks, (q_m - p_m).sum(-1))
    q_c = normal(out.component_posterior.mean, out.component_posterior.std).log_prob(z_c).sum(-1)
    p_c = normal(out.component_prior.mean, out.component_prior.std).log_prob(z_c).sum(-1)
    torch.testing.assert_close(out.kl_components, (q_c - p_c).sum(-1))
    torch.testing.assert_close(out.loss, out.nll.mean() + out.kl.mean())
    # The learned priors: mean tanh(.) in (-1, 1), std sigmoid(. + 4) + 1e-4 in (1e-4, 1 + 1e-4).
    for prior in (out.mask_prior, out.component_prior):
        assert prior.mean.abs().max() < 1 and ((prior.std > 1e-4) & (prior.std < 1 + 1e-4)).all()
    torch.testing.assert_close(out.mask_posterior.std, torch.nn.functional.softplus(out.mask_posterior.raw_scale + 0.5)
                               + 1e-8)


def test_genesis_likelihoods_are_the_shared_ones():
    x = images()
    target = (x + 1) / 2
    for likelihood, sigma, function in (("mixture", 0.7, mixture_nll), ("gaussian", 0.1, gaussian_nll)):
        out = tiny("genesis", likelihood=likelihood, sigma=sigma)(x)
        decoded = DecoderOutput(out.components, out.masks.log())
        torch.testing.assert_close(out.nll, function(target, decoded, sigma), rtol=1e-5, atol=1e-3)


# -- decode --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TINY))
def test_decode_is_the_generative_model_and_slot_wise(name):
    model = tiny(name)
    out = model(images())
    # MONet's generative masks are p(c | z), which its mask KL pulls towards the attention masks.
    decoded = check_decode(model, out, out.decoded_masks if name == "monet" else out.masks)
    # Activeness decodes the slots one by one and composes them: the same images.
    raw = model.decoder.decode_slots(out.slots.detach().flatten(0, 1))
    composed = model.decoder.compose(raw.view(2, 3, *raw.shape[1:]))
    torch.testing.assert_close(composed.masks, decoded.masks)
    torch.testing.assert_close(composed.rgb, decoded.rgb)


def test_genesis_decoding_depends_on_the_order_of_the_slots():
    """EfficientMORL's, IODINE's and Slot Attention's decoders are permutation equivariant (a softmax
    over K); GENESIS's stick-breaking gives the last slot whatever scope is left: reordering the
    slots changes the picture, not only the order of the masks."""
    model = tiny("genesis").double()
    model.eval()
    codes = torch.randn(2, 3, 10, dtype=torch.float64)
    decoded, reordered = model.decode(codes), model.decode(codes[:, PERMUTATION])
    assert not torch.allclose(reordered.masks, decoded.masks[:, PERMUTATION], atol=1e-4)
    assert not torch.allclose(reordered.reconstruction(), decoded.reconstruction(), atol=1e-4)


# -- ordered, not permutation equivariant ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["genesis", "genesis_s"])
def test_genesis_is_not_permutation_equivariant(name, monkeypatch):
    """Permuting the K noise draws of a symmetric model permutes its slots (test_baselines.py); in
    GENESIS the posterior of slot k is a different function for each k (step 1: the encoder's heads;
    later: the LSTM's k-th step, fed the samples of slots < k), so it does not."""
    model = tiny(name).double()
    model.eval()  # batch statistics aside: the property is about the slots
    x = images(dtype=torch.float64)
    tape = NoiseTape()
    monkeypatch.setattr(gaussian_module, "standard_normal_like", tape)
    out = model(x)
    draws = len(tape.recorded)
    assert draws == 3 + (name == "genesis")  # z^m_1, z^m_2, z^m_3 one by one (then z^c at once)
    order = [1, 2, 0]
    mask_draws = tape.recorded[:3]
    tape.recorded = [mask_draws[i] for i in order] + tape.recorded[3:]
    tape.transform = lambda noise: noise[:, PERMUTATION] if noise.ndim == 3 else noise
    permuted = model(x)
    assert tape.position == draws
    assert not torch.allclose(permuted.masks, out.masks[:, PERMUTATION], atol=1e-3)
    assert not torch.allclose(permuted.reconstruction, out.reconstruction, atol=1e-3)
    # Tie the noise of the K slots: a symmetric model's slots would then be identical; GENESIS's are not.
    tape.recorded = [mask_draws[0]] * 3 + [noise[:, :1].expand_as(noise) for noise in tape.recorded[3:]]
    tape.transform, tape.position = (lambda noise: noise), 0
    tied = model(x)
    means = tied.mask_posterior.mean
    assert (means[:, 0] - means[:, 1]).abs().max() > 1e-3 and (means[:, 1] - means[:, 2]).abs().max() > 1e-3


def test_genesis_posterior_is_autoregressive(monkeypatch):
    """The noise of slot j changes the posteriors of slots > j only (and never of slots <= j)."""
    model = tiny("genesis").double()
    model.eval()
    x = images(dtype=torch.float64)
    tape = NoiseTape()
    monkeypatch.setattr(gaussian_module, "standard_normal_like", tape)
    out = model(x)
    tape.recorded[1] = tape.recorded[1] + 1.0  # another sample of z^m_2
    tape.transform = lambda noise: noise
    changed = model(x).mask_posterior
    torch.testing.assert_close(changed.mean[:, :2], out.mask_posterior.mean[:, :2])
    torch.testing.assert_close(changed.raw_scale[:, :2], out.mask_posterior.raw_scale[:, :2])
    assert (changed.mean[:, 2] - out.mask_posterior.mean[:, 2]).abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_first_slots_do_not_depend_on_k(name):
    """An ordered decomposition: slots 1..K-1 of a pass with K slots are the first slots of a pass
    with more (same random state; the last slot takes the remaining scope)."""
    model = tiny(name).double()
    model.eval()
    x = images(dtype=torch.float64)
    torch.manual_seed(3)
    three = model(x, num_slots=3)
    torch.manual_seed(3)
    five = model(x, num_slots=5)
    torch.testing.assert_close(five.masks[:, :2], three.masks[:, :2])
    torch.testing.assert_close(five.masks[:, 2:].sum(1), three.masks[:, 2])


def test_monet_masks_ignore_the_noise_and_follow_the_order(monkeypatch):
    """MONet's attention is deterministic and sequential: permuting the component VAE's noise changes
    the components' latents, never which slot attends where."""
    out, permuted, tape = passes_with_permuted_noise(tiny("monet").double(), monkeypatch)
    assert len(tape.recorded) == 1 and tape.position == 1
    torch.testing.assert_close(permuted.masks, out.masks)  # unchanged, not permuted
    assert not torch.allclose(permuted.masks, out.masks[:, PERMUTATION], atol=1e-3)
    assert not torch.allclose(permuted.slots, out.slots[:, PERMUTATION], atol=1e-3)


# -- GENESIS's GECO -------------------------------------------------------------------------------------------
def test_genesis_geco_rule_by_hand():
    geco = GenesisGECO(target=-100.0, step_size=1e-3, ema=0.5, warm_start=0, zeta_init=0.0,
                       zeta_min=math.log(1e-10), speedup=10.0)
    objective = geco.objective(0)
    assert (objective.nll_weight, objective.kl_weight) == (1.0, 1.0)  # beta_0 = 1 weighs the KL
    geco.update(-80.0, 0)  # constraint C - err = -20 (not met): beta shrinks, the KL may grow
    assert geco.state.c_ema == -20.0 and geco.state.zeta == pytest.approx(-0.02)
    geco.update(-140.0, 1)  # C_ema = 0.5 (-20) + 0.5 (40) = 10 > 0 (met): 10x the step, beta grows
    assert geco.state.c_ema == 10.0 and geco.state.zeta == pytest.approx(-0.02 + 10 * 1e-3 * 10)
    assert geco.multiplier == pytest.approx(math.exp(0.08))
    torch.testing.assert_close(geco.objective(2)(torch.tensor(3.0), torch.tensor(2.0)),
                               torch.tensor(3.0 + math.exp(0.08) * 2.0))
    geco.update(1e12, 2)
    assert geco.multiplier == pytest.approx(1e-10)  # clamped at beta_min
    restored = GenesisGECO(target=-100.0)
    restored.load_state_dict(geco.state_dict())
    assert restored.state == geco.state


def test_build_geco_picks_the_rule():
    from emorl.config import compose

    settings = compose(["experiment=genesis_multi_dsprites"]).loss.geco
    genesis = build_geco(settings)
    assert isinstance(genesis, GenesisGECO) and genesis.speedup == 10.0 and genesis.multiplier == pytest.approx(1.0)
    assert type(build_geco(compose(["experiment=clevr6"]).loss.geco)) is GECO
    with pytest.raises(ConfigError, match="loss.geco.rule='other' is not one of"):
        build_geco({**settings, "rule": "other"})


# -- learning ----------------------------------------------------------------------------------------------
def _mse(model, batch) -> float:
    model.eval()
    values = []
    with torch.no_grad():
        for seed in range(3):
            torch.manual_seed(100 + seed)
            values.append(float(model(batch).mse))
    model.train()
    return sum(values) / 3


B1 = dict(likelihood="gaussian", sigma=0.1)  # GENESIS with the App. B.1 likelihood


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, steps, lr, settings", [("monet", 60, 1e-2, {}), ("genesis", 60, 1e-2, B1),
                                                       ("genesis_s", 60, 3e-3, B1)])
def test_a_tiny_configuration_learns_more_than_the_best_constant_image(name, steps, lr, settings, one_thread):
    batch = _scenes()
    target = (batch + 1) / 2
    best_constant = float((target - target.mean(0, keepdim=True)).square().mean())  # uses no input at all
    model = tiny(name, image_size=12, **settings)
    before = _mse(model, batch)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        out = model(batch)
        out.loss.backward()
        optimiser.step()
        losses.append(float(out.loss.detach()))
    after = _mse(model, batch)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert after < before and after < 0.9 * best_constant, (before, after, best_constant)
