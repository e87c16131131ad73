"""Activeness of latent dimensions (emorl.metrics.activeness)."""

from __future__ import annotations

import pytest
import torch

from emorl.errors import ConfigError, DatasetError
from emorl.metrics import activeness

PATTERN = torch.linspace(0.1, 1.0, 3 * 4 * 4).reshape(3, 4, 4)


def decoder_ignoring_dims_2_and_4(latents: torch.Tensor) -> torch.Tensor:
    """[B, K, 5] -> [B, 3, 4, 4]; elementwise in dims 0, 1, 3 only."""
    per_slot = latents[:, :, 0] * 0.7 + torch.sin(latents[:, :, 1]) + latents[:, :, 3] ** 2
    total = per_slot[:, 0]
    for k in range(1, latents.shape[1]):
        total = total + per_slot[:, k]
    return torch.sigmoid(total[:, None, None, None] * PATTERN)


def test_ignored_dimensions_score_exactly_zero_and_used_ones_positive():
    latents = torch.randn(12, 3, 5, generator=torch.Generator().manual_seed(0))
    result = activeness(latents, decoder_ignoring_dims_2_and_4, num_images=12, seed=1)
    assert result.per_image.shape == (12, 5) and result.per_image.dtype == torch.float64
    assert torch.equal(result.per_image[:, 2], torch.zeros(12, dtype=torch.float64))
    assert torch.equal(result.per_image[:, 4], torch.zeros(12, dtype=torch.float64))
    assert bool((result.per_image[:, [0, 1, 3]] > 0).all())
    assert torch.allclose(result.mean, result.per_image.mean(dim=0))


def test_hand_computed_value_of_a_linear_decoder():
    """Image = c * sum_k z[k, 0] (one pixel): variance across the sweep = c^2 (max-min)^2 0.14."""
    latents = torch.randn(6, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    scale = 3.0

    def decode(z):
        return (scale * z[:, :, 0].sum(dim=1)).reshape(-1, 1, 1, 1)

    result = activeness(latents, decode, num_images=6)
    spread = latents[:, :, 0].max() - latents[:, :, 0].min()
    # Unbiased variance of linspace(0, 1, 6): squared deviations sum to 0.7, over 5.
    expected = scale**2 * spread**2 * 0.14
    assert torch.allclose(result.per_image[:, 0], expected.expand(6), rtol=1e-12, atol=0)
    assert torch.equal(result.per_image[:, 1], torch.zeros(6, dtype=torch.float64))


def test_sweep_uses_observed_min_and_max_of_the_first_images():
    latents = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(3))
    latents[4] = 100.0  # beyond num_images: must not widen the sweep
    seen = []

    def recording_decoder(z):
        seen.append(z.clone())
        return torch.zeros(z.shape[0], 3, 2, 2)

    result = activeness(latents, recording_decoder, num_images=4, num_values=6, batch_size=6)
    used = latents[:4]
    assert torch.equal(result.sweep_min, used.amin(dim=(0, 1)))
    assert torch.equal(result.sweep_max, used.amax(dim=(0, 1)))
    # batch_size 6 = one (image, dimension) per call, in order: image-major, then dimension.
    assert len(seen) == 4 * 4
    for call, z in enumerate(seen):
        image, dim = divmod(call, 4)
        slot = int(result.slot_index[image])
        expected_values = torch.linspace(float(used[:, :, dim].min()), float(used[:, :, dim].max()), 6)
        assert torch.allclose(z[:, slot, dim], expected_values, atol=1e-6)
        assert z[0, slot, dim] == result.sweep_min[dim] and z[-1, slot, dim] == result.sweep_max[dim]
        untouched = torch.ones_like(z[0], dtype=torch.bool)
        untouched[slot, dim] = False
        for value in range(6):
            assert torch.equal(z[value][untouched], used[image][untouched])


def test_seeded_slot_choice_and_batching_do_not_change_the_result():
    latents = torch.randn(30, 4, 5, generator=torch.Generator().manual_seed(4))
    first = activeness(latents, decoder_ignoring_dims_2_and_4, num_images=30, seed=7, batch_size=64)
    again = activeness(latents, decoder_ignoring_dims_2_and_4, num_images=30, seed=7, batch_size=6)
    other = activeness(latents, decoder_ignoring_dims_2_and_4, num_images=30, seed=8)
    assert torch.equal(first.slot_index, again.slot_index)
    assert torch.allclose(first.per_image, again.per_image, rtol=1e-6, atol=0)
    assert not torch.equal(first.slot_index, other.slot_index)
    assert set(first.slot_index.tolist()) == {0, 1, 2, 3}  # uniform over K: every slot drawn


def test_decoder_runs_without_gradients():
    latents = torch.randn(3, 2, 2, requires_grad=True)
    grad_modes = []

    def decode(z):
        grad_modes.append(torch.is_grad_enabled())
        return z.sum(dim=(1, 2)).reshape(-1, 1, 1, 1)

    result = activeness(latents, decode, num_images=3)
    assert grad_modes and not any(grad_modes)
    assert not result.per_image.requires_grad


def test_bad_input_raises():
    latents = torch.randn(3, 2, 2)
    with pytest.raises(ConfigError, match="num_images"):
        activeness(latents, decoder_ignoring_dims_2_and_4)  # 100 images asked, 3 given
    with pytest.raises(ConfigError, match="num_values"):
        activeness(latents, decoder_ignoring_dims_2_and_4, num_images=3, num_values=1)
    with pytest.raises(DatasetError, match=r"\[N, K, D\]"):
        activeness(torch.randn(3, 2), decoder_ignoring_dims_2_and_4, num_images=3)
    with pytest.raises(DatasetError, match="decode returned"):
        activeness(latents, lambda z: torch.zeros(1, 3, 2, 2), num_images=3)


@pytest.mark.parametrize("kind", ["broadcast_light", "deconv"])
def test_slotwise_decoding_gives_the_same_activeness(kind):
    """Re-decoding only the swept slot (the other slots' outputs cached) equals decoding every slot set,
    on a real spatial broadcast decoder in float64, for any batching."""
    from emorl.models.decoder import SpatialBroadcastDecoder

    torch.manual_seed(0)
    decoder = SpatialBroadcastDecoder(6, 16, 16, kind).double()
    latents = torch.randn(5, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = activeness(latents, lambda z: decoder(z).reconstruction(), num_images=5, seed=4)
    for batch_size in (6, 64):
        fast = activeness(latents, lambda z: decoder(z).reconstruction(), num_images=5, seed=4, batch_size=batch_size,
                          decode_slots=decoder.decode_slots, compose=lambda raw: decoder.compose(raw).reconstruction())
        torch.testing.assert_close(fast.per_image, plain.per_image, rtol=1e-10, atol=1e-14)
        assert torch.equal(fast.slot_index, plain.slot_index)
    assert bool((plain.per_image > 0).all())  # every dimension of a random decoder moves the image
    with pytest.raises(ConfigError, match="decode_slots and compose go together"):
        activeness(latents, lambda z: decoder(z).reconstruction(), num_images=5, decode_slots=decoder.decode_slots)
    with pytest.raises(ConfigError, match="pass decode, or decode_slots and compose"):
        activeness(latents, None, num_images=5)
    fast_only = activeness(latents, None, num_images=5, seed=4, decode_slots=decoder.decode_slots,
                           compose=lambda raw: decoder.compose(raw).reconstruction())
    torch.testing.assert_close(fast_only.per_image, plain.per_image, rtol=1e-10, atol=1e-14)
