"""The baselines: Slot Attention, Slot MLP, IODINE (and E-MORL-X-S, a config of EfficientMORL).

Parameter counts at each dataset's configuration, slot symmetry (or its absence), shapes,
decode, IODINE's refinement inputs and loss weights, and a few training steps each.
"""

from __future__ import annotations

import pytest
import torch

import emorl.models.gaussian as gaussian_module
from emorl.errors import ConfigError
from emorl.likelihoods import mixture_nll
from emorl.models import build_model
from emorl.models.decoder import DecoderOutput
from emorl.models.emorl import EMORLConfig, EfficientMORL, count_parameters
from emorl.models.iodine import IODINE, IODINEConfig, IODINEOutput, iodine_step_weights
from emorl.models.slot_attention import SlotAttentionAutoEncoder, SlotAttentionConfig, SlotAttentionOutput
from emorl.models.slot_mlp import SlotMLPOutput
from tests.noise_tape import NoiseTape

# -- configurations ---------------------------------------------------------------------------------
DATASETS = {  # image size, K
    "tetrominoes": dict(image_size=35, num_slots=4),
    "multi_dsprites": dict(image_size=64, num_slots=6),
    "clevr6_96": dict(image_size=96, num_slots=7),
    "clevr6_128": dict(image_size=128, num_slots=7),
}
SPRITES_DECODER = dict(decoder="broadcast_light")
CLEVR_DECODER = dict(decoder="deconv")
# IODINE's original per-dataset sizes (its configurations.py); CLEVR6 = the IODINEConfig defaults.
IODINE_SPRITES = {
    "tetrominoes": dict(latent_dim=32, decoder="broadcast_light", refine_channels=32, refine_layers=3,
                        refine_kernel=5, refine_mlp=[128], lstm_hidden=0),
    "multi_dsprites": dict(latent_dim=16, decoder="broadcast_light", refine_channels=32, refine_layers=3,
                           refine_kernel=5, refine_mlp=[128], lstm_hidden=128),
}


def dataset_config(model: str, dataset: str) -> dict:
    setting = dict(DATASETS[dataset])
    if model == "iodine":
        return {**setting, **IODINE_SPRITES.get(dataset, {})}
    return {**setting, **(CLEVR_DECODER if dataset.startswith("clevr") else SPRITES_DECODER)}


TINY = {
    "slot_attention": dict(image_size=16, num_slots=3, slot_dim=8, encoder_channels=16, mlp_hidden=16,
                           decoder="broadcast_light"),
    "slot_mlp": dict(image_size=16, num_slots=3, slot_dim=8, encoder_channels=16, mlp_hidden=[32],
                     decoder="broadcast_light"),
    "iodine": dict(image_size=16, num_slots=3, latent_dim=8, refine_steps=2, decoder="broadcast_light",
                   refine_channels=8, refine_layers=2, refine_mlp=[16], lstm_hidden=16),
}
OUTPUT_TYPES = {"slot_attention": SlotAttentionOutput, "slot_mlp": SlotMLPOutput, "iodine": IODINEOutput}


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return build_model({"name": name, **TINY[name], **overrides})


def images(batch=2, size=16, seed=1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(dtype)


# -- parameter counts (documented in docs/baselines.md) --------------------------------------------
@pytest.mark.parametrize(
    "model, dataset, expected",
    [
        ("slot_attention", "tetrominoes", 479_332),
        ("slot_attention", "multi_dsprites", 479_332),
        ("slot_attention", "clevr6_96", 890_308),
        ("slot_attention", "clevr6_128", 890_308),
        ("slot_mlp", "tetrominoes", 852_260),
        ("slot_mlp", "multi_dsprites", 917_924),
        ("slot_mlp", "clevr6_96", 1_361_732),
        ("slot_mlp", "clevr6_128", 1_361_732),
        ("iodine", "tetrominoes", 163_984),
        ("iodine", "multi_dsprites", 303_552),
        ("iodine", "clevr6_96", 1_175_184),
        ("iodine", "clevr6_128", 1_175_184),
    ],
)
def test_parameter_counts_at_each_dataset_configuration(model, dataset, expected):
    built = build_model({"name": model, **dataset_config(model, dataset)})
    assert count_parameters(built) == expected


@pytest.mark.parametrize(
    "experiment, expected",
    [
        ("tetrominoes", 467_364), ("tetrominoes_without_geco", 467_364), ("tetrominoes_authors_recipe", 467_236), ("multi_dsprites", 666_756), ("clevr6", 666_756), ("emorl_xs_clevr6", 1_031_364),
        ("slot_attention_tetrominoes", 479_332), ("slot_attention_multi_dsprites", 479_332),
        ("slot_attention_clevr6", 890_308), ("slot_mlp_tetrominoes", 852_260), ("slot_mlp_multi_dsprites", 917_924),
        ("slot_mlp_clevr6", 1_361_732), ("iodine_tetrominoes", 163_984), ("iodine_multi_dsprites", 303_552),
        ("iodine_clevr6", 1_175_184),
    ],
)
def test_shipped_experiments_build_the_pinned_models(experiment, expected):
    """What `emorl train experiment=...` builds: the counts above (docs/baselines.md, docs/model.md)."""
    from omegaconf import OmegaConf

    from emorl.config import compose

    cfg = compose([f"experiment={experiment}"])
    assert count_parameters(build_model(OmegaConf.to_container(cfg.model, resolve=True))) == expected


def test_iodine_clevr_parameter_count_breakdown():
    """1,175,184 = decoder + f_phi (conv, MLP, LSTM, head, LayerNorms) + lambda_0 (docs/baselines.md)."""
    model = IODINE(IODINEConfig(image_size=96))
    parts = {name: count_parameters(module) for name, module in model.refinement.named_children()}
    assert count_parameters(model.decoder) == 150_340
    assert parts["cnn"] == 17 * 64 * 9 + 64 + 3 * (64 * 64 * 9 + 64) == 120_640
    assert parts["mlp"] == (64 * 256 + 256) + (256 * 256 + 256) == 82_432
    assert parts["lstm"] == 4 * 256 * (512 + 256) + 2 * 4 * 256 == 788_480
    assert parts["head"] == 256 * 128 + 128 == 32_896
    assert parts["norms"] + parts["grad_posterior_norm"] == 2 * (3 + 1 + 1 + 1) + 2 * 128 == 268
    assert model.initial_posterior.numel() == 128
    assert count_parameters(model) == 150_340 + 120_640 + 82_432 + 788_480 + 32_896 + 268 + 128


def test_emorl_x_s_is_efficient_morl_with_the_deconv_decoder():
    clevr6 = dict(image_size=96, num_slots=7, latent_dim=64, likelihood="mixture", sigma=0.1)
    paper = EfficientMORL(EMORLConfig(**clevr6))
    x_s = build_model({"name": "efficient_morl", **clevr6, "decoder": "deconv"})
    assert isinstance(x_s, EfficientMORL) and x_s.decoder.kind == "deconv"
    assert count_parameters(paper) == 666_756
    assert count_parameters(x_s) == 666_756 - 150_340 + 514_948 == 1_031_364


def test_slot_attention_switches_for_the_authors_code():
    original = count_parameters(SlotAttentionAutoEncoder(SlotAttentionConfig(image_size=96, decoder="deconv")))
    authors = SlotAttentionAutoEncoder(SlotAttentionConfig(image_size=96, decoder="deconv", input_norm=False,
                                                           slot_init="authors"))
    assert original - count_parameters(authors) == 2 * 64  # no LayerNorm on the module's inputs
    expected_std = (torch.nn.functional.softplus(torch.tensor(1.0)) + 1e-5).sqrt()  # s = 1
    torch.testing.assert_close(authors.slot_init.std(), expected_std.expand(64))
    torch.testing.assert_close(authors.slot_init.mean.detach(), torch.zeros(64))


# -- configuration errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("slot_attention", dict(decoder="mlp"), "model.decoder='mlp' is not allowed; choose one of"),
        ("slot_attention", dict(iterations=0), "model.iterations=0 must be an integer >= 1"),
        ("slot_attention", dict(slot_init="zeros"), "model.slot_init='zeros' is not allowed; choose one of"),
        ("slot_mlp", dict(mlp_hidden="512"), "model.mlp_hidden='512' must be a list of integers"),
        ("slot_mlp", dict(mlp_hidden=[512, 0]), r"model.mlp_hidden\[...\]=0 must be an integer >= 1"),
        ("iodine", dict(num_slots=1), "model.num_slots=1 must be an integer >= 2"),
        ("iodine", dict(sigma=0.0), "model.sigma=0.0 must be > 0"),
        ("iodine", dict(refine_mlp=[]), "model.refine_mlp=.* must be a non-empty list"),
        ("iodine", dict(decoder="deconv", image_size=35), "divisible by 16"),
        ("iodine", dict(latent_size=3), "model 'iodine' has no setting"),
    ],
)
def test_bad_config_names_the_setting(name, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_model({"name": name, **TINY[name], **setting})


def test_bad_images_and_k_raise_clear_errors():
    expected = r"SlotAttentionAutoEncoder expects images \[B, 3, 16, 16\].*got \[2, 3, 8, 8\]"
    with pytest.raises(ConfigError, match=expected):
        tiny("slot_attention")(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"refine_steps \(Slot Attention iterations\)=0 must be"):
        tiny("slot_attention")(images(), refine_steps=0)
    with pytest.raises(ConfigError, match=r"num_slots \(K\)=1 must be an integer >= 2"):
        tiny("iodine")(images(), num_slots=1)


def test_slot_mlp_k_at_test_time_must_equal_the_trained_k():
    model = tiny("slot_mlp")
    assert model(images(), num_slots=3).slots.shape == (2, 3, 8)  # the trained K is fine
    with pytest.raises(ConfigError, match=r"exactly model.num_slots=3 slots.*cannot run with num_slots=5"):
        model(images(), num_slots=5)


# -- outputs ----------------------------------------------------------------------------------------------
def check_slot_output(out, x, slots: int, size: int) -> None:
    """What every model's output must hold (B = 2 images of 16x16, K = ``slots``, D = ``size``); shared
    with tests/test_sequential_models.py."""
    b, k, d = 2, slots, size
    assert out.masks.shape == (b, k, 1, 16, 16) and out.components.shape == (b, k, 3, 16, 16)
    assert out.slots.shape == (b, k, d) and out.representation.shape == (b, k, d)
    torch.testing.assert_close(out.masks.sum(1), torch.ones(b, 1, 16, 16))
    torch.testing.assert_close(out.reconstruction, (out.masks * out.components).sum(1))
    assert out.loss.ndim == 0 and out.loss.requires_grad
    scalars = out.scalars()
    assert {"loss", "mse"} <= set(scalars) and all(v.ndim == 0 and not v.requires_grad for v in scalars.values())
    torch.testing.assert_close(scalars["mse"], ((out.reconstruction - (x + 1) / 2) ** 2).mean().detach())


def check_decode(model, out, masks) -> None:
    """``model.decode`` of the sampled slots gives the components and ``masks`` back, without a graph."""
    decoded = model.decode(out.slots)
    assert isinstance(decoded, DecoderOutput) and not decoded.rgb.requires_grad
    torch.testing.assert_close(decoded.rgb, out.components.detach())
    torch.testing.assert_close(decoded.masks, masks.detach())
    return decoded


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shapes_masks_and_reconstruction(name):
    model = tiny(name)
    x = images()
    out = model(x)
    assert isinstance(out, OUTPUT_TYPES[name])
    check_slot_output(out, x, slots=3, size=8)


@pytest.mark.parametrize("name", sorted(TINY))
def test_decode_reproduces_the_components_and_masks(name):
    model = tiny(name)
    out = model(images())
    check_decode(model, out, out.masks)


def test_slot_attention_iterations_override_and_attention():
    model = tiny("slot_attention", iterations=3)
    calls = []
    model.slot_attention.gru.register_forward_hook(lambda *args: calls.append(1))
    out = model(images())
    assert len(calls) == 3
    model(images(), refine_steps=5)
    assert len(calls) == 3 + 5
    # The attention is a softmax over the slots: it sums to 1 over K at every input position.
    assert out.attention.shape == (2, 3, 16 * 16)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2, 16 * 16))
    assert model(images(), num_slots=5).masks.shape[1] == 5  # K may change at test time


# -- slot symmetry -----------------------------------------------------------------------------------------


PERMUTATION = torch.tensor([2, 0, 1])


def passes_with_permuted_noise(model, monkeypatch):
    """Two passes on the same float64 images, the second with every noise draw of the first replayed
    with its slot axis permuted: (first output, second output, the tape)."""
    x = images(dtype=torch.float64)
    tape = NoiseTape()
    monkeypatch.setattr(gaussian_module, "standard_normal_like", tape)
    out = model(x)
    tape.transform = lambda noise: noise[:, PERMUTATION]
    return out, model(x), tape


def test_slot_attention_is_permutation_equivariant(monkeypatch):
    model = tiny("slot_attention").double()
    out, permuted, tape = passes_with_permuted_noise(model, monkeypatch)
    assert len(tape.recorded) == 1 and tape.position == 1  # one draw: the initial slots
    torch.testing.assert_close(permuted.slots, out.slots[:, PERMUTATION])
    torch.testing.assert_close(permuted.attention, out.attention[:, PERMUTATION])
    torch.testing.assert_close(permuted.masks, out.masks[:, PERMUTATION])
    torch.testing.assert_close(permuted.components, out.components[:, PERMUTATION])
    torch.testing.assert_close(permuted.reconstruction, out.reconstruction)
    torch.testing.assert_close(permuted.loss, out.loss)


def test_iodine_is_permutation_equivariant(monkeypatch):
    model = tiny("iodine", refine_steps=3).double()
    out, permuted, tape = passes_with_permuted_noise(model, monkeypatch)
    assert len(tape.recorded) == 4 and tape.position == 4  # one sample per step, T + 1 steps
    for a, b in zip(out.posteriors, permuted.posteriors):
        torch.testing.assert_close(b.mean, a.mean[:, PERMUTATION])
        torch.testing.assert_close(b.raw_scale, a.raw_scale[:, PERMUTATION])
    torch.testing.assert_close(permuted.masks, out.masks[:, PERMUTATION])
    torch.testing.assert_close(permuted.components, out.components[:, PERMUTATION])
    torch.testing.assert_close(permuted.reconstruction, out.reconstruction)
    torch.testing.assert_close(permuted.loss_steps, out.loss_steps)
    # The refinement did move the posteriors away from the shared lambda_0.
    assert not torch.allclose(out.posteriors[-1].mean, out.posteriors[0].mean)


def test_slot_mlp_is_not_permutation_equivariant(monkeypatch):
    """Slot Attention treats the slots alike: tie the K initial samples and the K slots come out
    identical. The Slot MLP has no such symmetry: slot k is the k-th block of an MLP's output,
    a different function of the image for each k, in an order fixed by the weights."""
    tape = NoiseTape()
    monkeypatch.setattr(gaussian_module, "standard_normal_like", tape)
    tape.recorded = [torch.randn(2, 1, 8, dtype=torch.float64).expand(2, 3, 8)]  # one sample, shared by K
    tape.transform = lambda noise: noise
    symmetric = tiny("slot_attention").double()(images(dtype=torch.float64))
    torch.testing.assert_close(symmetric.slots, symmetric.slots[:, :1].expand(-1, 3, -1))
    torch.testing.assert_close(symmetric.masks, torch.full_like(symmetric.masks, 1 / 3))

    tape.position = 0
    model = tiny("slot_mlp").double()
    ordered = model(images(dtype=torch.float64))
    assert tape.position == 0  # no noise: nothing about the slots is exchangeable
    slots = ordered.slots
    for i in range(3):
        for j in range(i + 1, 3):
            assert (slots[:, i] - slots[:, j]).abs().max() > 1e-3
    # Permuting the slots is not something the model can produce: its output for the same image
    # is the same ordered set every time, and its masks differ from slot to slot.
    torch.testing.assert_close(model(images(dtype=torch.float64)).slots, slots)
    assert not torch.allclose(ordered.masks, ordered.masks[:, PERMUTATION])


# -- IODINE internals ------------------------------------------------------------------------------------
def _captured_inputs(model, x):
    seen = []
    model.refinement.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    out = model(x)
    return out, seen


def test_iodine_refinement_inputs_match_their_definitions():
    model = tiny("iodine", refine_steps=2).double()
    x = images(dtype=torch.float64)
    target = (x + 1) / 2
    out, seen = _captured_inputs(model, x)
    assert len(seen) == 2
    spatial = model.refinement.spatial_inputs(seen[0], 3)
    assert spatial.shape == (2 * 3, 17, 16, 16)
    for inputs, nll in zip(seen, out.nll_steps):
        rgb = inputs["means"].detach().requires_grad_(True)
        logits = inputs["mask_logits"].detach().requires_grad_(True)
        decoded = DecoderOutput(rgb, torch.log_softmax(logits, dim=1))
        recomputed = mixture_nll(target, decoded, model.config.sigma)
        torch.testing.assert_close(recomputed, nll)
        # The pixel-wise log-likelihood sums to -NLL per image.
        torch.testing.assert_close(inputs["log_likelihood"].sum(dim=(1, 2, 3)), -nll)
        # Gradients of the step's loss (ELBO: mean NLL + mean KL) w.r.t. the means and mask logits.
        grad_rgb, grad_logits = torch.autograd.grad(recomputed.mean(), (rgb, logits))
        torch.testing.assert_close(inputs["grad_means"], grad_rgb)
        torch.testing.assert_close(inputs["grad_mask_logits"], grad_logits)
        # Leave-one-out: the mixture without slot k, its masks renormalised, by brute force.
        log_components = -(target.unsqueeze(1) - rgb.detach()) ** 2 / (2 * 0.01) - torch.log(torch.tensor(0.1))
        for k in range(3):
            others = [j for j in range(3) if j != k]
            masks = torch.softmax(logits.detach()[:, others], dim=1)
            without_k = torch.log((masks * log_components[:, others].exp()).sum(1)).sum(1, keepdim=True)
            expected = inputs["log_likelihood"] - without_k
            # (the decoder's outputs are float32, hence float32 tolerances)
            torch.testing.assert_close(inputs["leave_one_out"][:, k], expected, rtol=1e-5, atol=1e-5)
        # Mask posterior: p(x | mu_k) / sum_j p(x | mu_j) per pixel.
        joint = log_components.sum(2, keepdim=True).exp()
        torch.testing.assert_close(inputs["mask_posterior"], joint / joint.sum(1, keepdim=True))
        # Stop-gradient inputs carry no graph; the others do (the original's defaults).
        for name in ("grad_means", "grad_mask_logits", "grad_posterior", "log_likelihood", "leave_one_out"):
            assert inputs[name].grad_fn is None, name
        for name in ("means", "masks", "mask_posterior", "posterior"):
            assert inputs[name].grad_fn is not None, name


def test_iodine_loss_weighs_later_steps_more():
    assert iodine_step_weights(5) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert iodine_step_weights(0) == [1.0]
    out = tiny("iodine", refine_steps=4)(images())
    torch.testing.assert_close(out.step_weights, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(out.loss, (out.step_weights * out.loss_steps).sum())
    torch.testing.assert_close(out.loss_steps, out.nll_steps.mean(1) + out.kl_steps.mean(1))
    torch.testing.assert_close(out.kl_steps[-1], out.posteriors[-1].kl(None).sum(-1))
    torch.testing.assert_close(out.nll, out.nll_steps[-1])  # what the evaluation reports per image
    torch.testing.assert_close(out.kl, out.kl_steps[-1])
    assert len(out.posteriors) == 5 and set(out.scalars()) >= {"nll", "kl", "nll_step4", "kl_step0"}


def test_iodine_objective_is_used_for_every_step():
    class Doubled:
        nll_weight, kl_weight = 2.0, 0.5

        def __call__(self, nll, kl):
            return 2.0 * nll + 0.5 * kl

    out = tiny("iodine")(images(), objective=Doubled())
    torch.testing.assert_close(out.loss_steps, 2.0 * out.nll_steps.mean(1) + 0.5 * out.kl_steps.mean(1))


def test_iodine_refines_at_test_time_and_matches_training_mode():
    model = tiny("iodine", refine_steps=3)
    torch.manual_seed(7)
    trained = model(images())
    model.eval()
    torch.manual_seed(7)
    with torch.no_grad():
        tested = model(images())
    assert not tested.loss.requires_grad and all(not p.mean.requires_grad for p in tested.posteriors)
    for a, b in zip(trained.posteriors, tested.posteriors):
        torch.testing.assert_close(b.mean, a.mean.detach())
    torch.testing.assert_close(tested.loss, trained.loss.detach())
    assert all(p.grad is None for p in model.parameters())  # test-time gradients touch no parameter


def test_iodine_backward_reaches_every_parameter():
    model = tiny("iodine")
    model(images()).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# -- learning ----------------------------------------------------------------------------------------------
def _scenes(count=8, size=12):
    """Each image: a background of its own colour and two coloured 4x4 squares, in [-1, 1]."""
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(count, 3, 1, 1, generator=generator) * 2 - 1).expand(count, 3, size, size).clone()
    for i in range(count):
        for _ in range(2):
            y, x = torch.randint(0, size - 4, (2,), generator=generator)
            batch[i, :, y:y + 4, x:x + 4] = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    return batch


def _evaluate(model, batch, key):
    """Mean over 3 fixed noise seeds of the final reconstruction's MSE or NLL."""
    values = []
    with torch.no_grad():
        for seed in range(3):
            torch.manual_seed(100 + seed)
            out = model(batch)
            values.append(out.mse if key == "mse" else out.nll_steps[-1].mean())
    return float(sum(values) / 3)


@pytest.mark.parametrize("name, steps, lr", [("slot_attention", 20, 3e-3), ("slot_mlp", 20, 3e-3)])
def test_autoencoders_learn_more_than_the_best_constant_image(name, steps, lr):
    batch = _scenes()
    target = (batch + 1) / 2
    best_constant = float((target - target.mean(0, keepdim=True)).square().mean())  # uses no input at all
    model = tiny(name, image_size=12)
    before = _evaluate(model, batch, "mse")
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        model(batch).loss.backward()
        optimiser.step()
    after = _evaluate(model, batch, "mse")
    assert after < before and after < 0.9 * best_constant, (before, after, best_constant)


def test_iodine_learns_a_fixed_batch():
    batch = _scenes()
    model = tiny("iodine", image_size=12)
    before = _evaluate(model, batch, "nll")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(16):
        optimiser.zero_grad()
        model(batch).loss.backward()
        optimiser.step()
    after = _evaluate(model, batch, "nll")
    # NLL per image of 432 elements: about 580 untrained; its floor is 432 log(0.1) = -995.
    assert after < 0.5 * before, (before, after)


# -- the efficiency benchmark's helpers (the benchmark itself is never run by tests) ------------------------
def test_efficiency_benchmark_models_and_ratios():
    from emorl.bench.efficiency import DEFAULT_MODELS, add_ratios, bench_model, search_largest

    x_s = bench_model("emorl-xs-i3")
    assert x_s.config["decoder"] == "deconv" and x_s.call == {"refine_steps": 3} and x_s.label == "E-X-S-3"
    paper = bench_model("emorl-i0")
    assert paper.config["decoder"] == "broadcast" and paper.call["refine_steps"] == 0 and paper.label == "E-0"
    assert bench_model("iodine").call == {"refine_steps": 5} and bench_model("iodine").config["num_slots"] == 7
    trainer = bench_model("emorl-i3-trainer")
    assert trainer.trainer_path and not paper.trainer_path and trainer.label == "E-3t"
    assert trainer.config == bench_model("emorl-i3").config
    # ... and its timed pass computes the gradients of the plain pass (float tolerance).
    from emorl.bench.efficiency import make_images, run_pass

    plain_bench, trainer_bench = bench_model("emorl-i1"), bench_model("emorl-i1-trainer")
    torch.manual_seed(0)
    plain_model, trainer_model = plain_bench.build(16), trainer_bench.build(16)
    trainer_model.load_state_dict(plain_model.state_dict())
    images = make_images(2, 16, torch.device("cpu"))
    for model, bench in ((plain_model, plain_bench), (trainer_model, trainer_bench)):
        torch.manual_seed(1)
        run_pass(model, images, bench, backward=True)
    for (name, p), q in zip(plain_model.named_parameters(), trainer_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5 * max(1.0, p.grad.abs().max().item()),
                                   msg=name)
    genesis = bench_model("genesis")
    assert genesis.config == {"name": "genesis", "num_slots": 7} and genesis.call == {} and genesis.label == "GENESIS"
    assert "genesis" in DEFAULT_MODELS and "slot_attention" in DEFAULT_MODELS  # Fig. 10's models
    assert bench_model("monet").build(128).config.unet_channels == [32, 32, 32, 64, 64, 64]
    with pytest.raises(ConfigError, match="unknown model 'air'"):
        bench_model("air")
    rows = [dict(model="emorl-i0", image_size=64, forward_ms=2.0, forward_backward_ms=10.0,
                 forward_backward_peak_mib=50.0, max_batch=200),
            dict(model="iodine", image_size=64, forward_ms=20.0, forward_backward_ms=60.0,
                 forward_backward_peak_mib=400.0, max_batch=25)]
    add_ratios(rows)
    assert rows[0]["forward_speedup_vs_iodine"] == 10.0 and rows[0]["forward_backward_speedup_vs_iodine"] == 6.0
    assert rows[0]["memory_vs_iodine"] == 0.125 and rows[0]["max_batch_vs_iodine"] == 8.0
    assert rows[1]["forward_speedup_vs_iodine"] == 1.0
    # The largest-mini-batch search: doubling then bisection, against a known threshold.
    for threshold in (0, 1, 5, 37, 64):
        tried = []
        assert search_largest(lambda b: tried.append(b) or b <= threshold, limit=1000) == (threshold, False)
        assert len(tried) <= 2 * max(threshold, 1).bit_length() + 2
    assert search_largest(lambda b: True, limit=100) == (100, True)
    assert search_largest(lambda b: b <= 90, limit=100) == (90, False)
