"""Activeness of latent dimensions (Peebles et al. 2020), as the paper uses it.

For each of 100 test images one slot k is drawn uniformly; each latent dimension d of
that slot is set in turn to 6 values spaced linearly between the smallest and the
largest value of dimension d observed over the 100 images (all slots), the whole
slot set is decoded, and the activeness of d for that image is the variance across
the 6 decoded images (unbiased, as torch.var and the authors' code), averaged over
pixels and channels. The paper's Fig. 9c-d shows the mean over images.

With a slot-wise decoder (``decode_slots`` and ``compose``, as every spatial broadcast
decoder has) only the swept slot is decoded again: the other K - 1 slots' outputs are
decoded once per image and reused, the same images for K times less decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from emorl.errors import ConfigError, DatasetError

Decoder = Callable[[torch.Tensor], torch.Tensor]  # latents [B, K, D] -> images [B, C, H, W]
SlotDecoder = Callable[[torch.Tensor], torch.Tensor]  # one slot each: latents [N, D] -> outputs [N, ...]
Composer = Callable[[torch.Tensor], torch.Tensor]  # per-slot outputs [B, K, ...] -> images [B, C, H, W]


@dataclass(frozen=True)
class ActivenessResult:
    """Activeness per image and dimension, and what it was computed from."""

    per_image: torch.Tensor  # float64 [num_images, D]
    mean: torch.Tensor  # float64 [D], mean over images
    slot_index: torch.Tensor  # int64 [num_images], the swept slot of each image
    sweep_min: torch.Tensor  # [D], lowest observed value of each dimension
    sweep_max: torch.Tensor  # [D], highest observed value of each dimension


@torch.no_grad()
def activeness(
    latents: torch.Tensor,
    decode: Decoder | None,
    *,
    num_images: int = 100,
    num_values: int = 6,
    seed: int = 0,
    batch_size: int = 64,
    decode_slots: SlotDecoder | None = None,
    compose: Composer | None = None,
) -> ActivenessResult:
    """Activeness of each latent dimension over the first ``num_images`` images.

    ``latents`` [N, K, D] are the slot latents of N >= ``num_images`` test images
    (the authors used posterior samples of the final posterior; means work too).
    ``decode`` maps latents [B, K, D] to images [B, C, H, W]; it is called under
    ``torch.no_grad`` on the latents' device with at most
    ``max(batch_size, num_values)`` slot sets at a time. The swept slot of each
    image is drawn with a CPU generator seeded with ``seed``. ``decode_slots`` and
    ``compose`` (both or neither), when given, replace ``decode`` (then ``None``) by a
    decoder whose slots do not interact before ``compose``: ``decode(z) ==
    compose(decode_slots(z flattened over B, K) reshaped to [B, K, ...])``.
    """
    if (decode_slots is None) != (compose is None):
        raise ConfigError("decode_slots and compose go together: pass both or neither")
    if decode is None and decode_slots is None:
        raise ConfigError("pass decode, or decode_slots and compose")
    if not isinstance(latents, torch.Tensor) or latents.dim() != 3 or not latents.is_floating_point():
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise DatasetError(f"latents: got {shape}; expected a float tensor [N, K, D]")
    for name, value, minimum in (
        ("num_images", num_images, 1),
        ("num_values", num_values, 2),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name}: got {value!r}; expected an integer >= {minimum}")
    if latents.shape[0] < num_images:
        raise ConfigError(
            f"num_images: {num_images} requested but latents hold {latents.shape[0]} images; "
            "pass more test images or lower num_images"
        )
    latents = latents[:num_images]
    _, num_slots, latent_size = latents.shape
    if not bool(torch.isfinite(latents).all()):
        raise DatasetError("latents: contain NaN or infinite values")

    generator = torch.Generator().manual_seed(seed)
    slot_index = torch.randint(num_slots, (num_images,), generator=generator)
    sweep_min = latents.amin(dim=(0, 1))
    sweep_max = latents.amax(dim=(0, 1))
    # sweep_values[d, v]: the v-th of num_values points between min and max of dim d.
    steps = torch.linspace(0.0, 1.0, num_values, dtype=latents.dtype, device=latents.device)
    sweep_values = sweep_min.unsqueeze(1) + (sweep_max - sweep_min).unsqueeze(1) * steps
    sweep_values[:, -1] = sweep_max  # exact end points

    if decode_slots is not None:
        # Every slot of every image decoded once; a job re-decodes only its swept slot.
        flat = latents.reshape(num_images * num_slots, latent_size)
        cached = torch.cat([decode_slots(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])
        cached = cached.view(num_images, num_slots, *cached.shape[1:])

    # One job per (image, dimension): num_values perturbed copies of that image's slots.
    jobs = [(i, d) for i in range(num_images) for d in range(latent_size)]
    per_image = torch.zeros(num_images, latent_size, dtype=torch.float64)
    jobs_per_call = max(1, batch_size // num_values)
    for start in range(0, len(jobs), jobs_per_call):
        chunk = jobs[start : start + jobs_per_call]
        images = torch.tensor([i for i, _ in chunk], device=latents.device)
        dims = torch.tensor([d for _, d in chunk], device=latents.device)
        slots = slot_index.to(latents.device)[images]
        rows = torch.arange(len(chunk), device=latents.device)
        if decode_slots is None:
            perturbed = latents[images].unsqueeze(1).repeat(1, num_values, 1, 1)  # [J, V, K, D]
            perturbed[rows, :, slots, dims] = sweep_values[dims]
            decoded = decode(perturbed.reshape(-1, num_slots, latent_size))
        else:
            swept = latents[images, slots].unsqueeze(1).repeat(1, num_values, 1)  # [J, V, D]
            swept[rows, :, dims] = sweep_values[dims]
            outputs = cached[images].unsqueeze(1).repeat(1, num_values, *[1] * (cached.dim() - 1))  # [J, V, K, ...]
            outputs[rows, :, slots] = decode_slots(swept.reshape(-1, latent_size)).view(
                len(chunk), num_values, *cached.shape[2:]).to(cached.dtype)
            decoded = compose(outputs.reshape(-1, *cached.shape[1:]))
        decoded = _check_decoded(decoded, len(chunk) * num_values)
        decoded = decoded.reshape(len(chunk), num_values, -1).to(torch.float64)
        # Variance is shift-invariant; subtracting the first image makes the variance
        # of identical images exactly zero, whatever the rounding of the mean.
        deviations = decoded - decoded[:, :1]
        variance = deviations.var(dim=1, correction=1)  # [J, pixels * channels]
        per_image[[i for i, _ in chunk], [d for _, d in chunk]] = variance.mean(dim=1).cpu()
    return ActivenessResult(
        per_image=per_image,
        mean=per_image.mean(dim=0),
        slot_index=slot_index,
        sweep_min=sweep_min,
        sweep_max=sweep_max,
    )


def _check_decoded(decoded: torch.Tensor, expected_batch: int) -> torch.Tensor:
    if not isinstance(decoded, torch.Tensor) or decoded.dim() < 2 or decoded.shape[0] != expected_batch:
        shape = tuple(decoded.shape) if isinstance(decoded, torch.Tensor) else type(decoded).__name__
        raise DatasetError(
            f"decode returned {shape}; expected images [{expected_batch}, C, H, W], one per "
            "slot set it was given"
        )
    return decoded
