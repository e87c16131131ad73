"""``emorl evaluate --figures``: decompositions (Figs. 5, 16-18) and latent traversals (Figs. 19-21,
and the row of Fig. 11) of a trained model, computed by the core and written as PNG pictures plus
the arrays that redraw them (``analysis/`` only reads and draws these; it never runs a model).

Files, in ``<evaluation folder>/figures/`` and logged under ``evaluation/<set>/figures/``:

- ``decomposition.png``, ``decomposition.npz``: the first :data:`DECOMPOSITION_IMAGES` test images
  (fixed by index, never chosen by a score) at the setting's test-time I: ``images``,
  ``reconstruction`` [B, 3, H, W], ``masks`` [B, K, 1, H, W], ``components`` [B, K, 3, H, W],
  ``image_index``, per-image ``fg_ari`` and ``mse``, ``refine_steps``;
- ``traversal.png``, ``traversal.npz``: one slot of test image 0 (the slot best matched to a true
  object), its ``dims`` (the dimensions that change the image most) each at ``values`` between the
  smallest and largest value over ``num_images`` test images: ``images`` [rows, V, 3, H, W],
  ``dims``, ``values``, ``low``, ``high``, ``variance`` (per dimension), ``slot``, ``slot_choice``;
- ``traversal_leakage.npz``: Fig. 11's row (Appendix B.1): the first component of an ordered model
  (GENESIS, GENESIS-S, MONet) else the best-matched slot, its most active dimension traversed:
  ``scene`` [3, H, W] (the decoded scene), ``images`` [V, 3, H, W], ``slot``, ``slot_choice``,
  ``dim``, ``low``, ``high``, ``leak_share``, ``mean_change``, ``model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emorl.engine.data import eval_loader
from emorl.engine.evaluate import evaluate
from emorl.engine.figures import decomposition_figure, traversal_figure

DECOMPOSITION_IMAGES = 8  # test images 0..7
TRAVERSAL_IMAGES = 100  # test images that set the traversal ranges (paper: 100)
TRAVERSAL_DIMS = 8  # rows of the traversal: the dimensions that change the image most
TRAVERSAL_VALUES = 7  # values per dimension, min to max
ORDERED_MODELS = ("genesis", "genesis_s", "monet")  # sequential attention: slot 0 is "the first component"
FOLDER = "figures"  # under the evaluation folder, and under evaluation/<set>/ in the evaluation run


def traversed_slot(true_masks, masks) -> tuple[int, str]:
    """The slot best matched (highest IoU) to a true object of the first image, and how it was
    chosen; slot 0 when no slot matches an object."""
    from emorl.metrics import match_slots_to_objects

    matching = match_slots_to_objects(true_masks[:1], masks[:1])
    if not len(matching):
        return 0, "no slot matches an object: slot 0"
    best = int(np.argmax(matching.iou))
    return int(matching.slot_index[best]), f"best matched to an object, IoU {matching.iou[best]:.2f}"


def sweep(model, scene, slot: int, dims: list[int], values, device):
    """Decode ``scene`` [K, D] with dimension ``dims[r]`` of ``slot`` set to each of ``values[r]``:
    images [len(dims), V, 3, H, W] in [0, 1]."""
    count, steps = values.shape
    latents = scene[None].repeat(count * steps, 1, 1)
    latents[torch.arange(count * steps), slot, torch.tensor(dims).repeat_interleave(steps)] = values.reshape(-1)
    with torch.no_grad():
        images = [model.decode(chunk.to(device)).reconstruction().float().cpu() for chunk in latents.split(64)]
    images = torch.cat(images)
    return images.view(count, steps, *images.shape[1:])


def slot_variance(model, scene, slot: int, low, high, device):
    """Per dimension of ``slot``, the mean pixel variance of the scene decoded with that dimension at
    its minimum, middle and maximum value [D]."""
    three = torch.stack([low, (low + high) / 2, high], dim=1)  # [D, 3]
    return sweep(model, scene, slot, list(range(len(low))), three, device).var(dim=1).mean(dim=(1, 2, 3))


def traversal_leakage(model, scene, slot: int, dim: int, values, device):
    """Decode ``scene`` [K, D] as it is and with dimension ``dim`` of ``slot`` set to each of ``values``.

    Returns (traversed images [V, 3, H, W], leak share, mean change): the change of each traversed
    image from the scene's own decode, summed over channels; the *leak share* is the part of the total
    change that falls outside the traversed slot's region (the pixels where its mask is >= 0.5 in the
    scene's decode or in any traversed one). 0: the slot changed only its own object; near 1: it
    changed the rest of the scene."""
    latents = scene[None].repeat(len(values) + 1, 1, 1)
    latents[1:, slot, dim] = torch.as_tensor(values, dtype=latents.dtype)
    with torch.no_grad():
        decoded = model.decode(latents.to(device))
    images = decoded.reconstruction().float().cpu()
    region = (decoded.masks[:, slot, 0].float().cpu() >= 0.5).any(dim=0)  # [H, W]
    change = (images[1:] - images[:1]).abs().sum(dim=1)  # [V, H, W]
    total = float(change.sum())
    share = float(change[:, ~region].sum()) / total if total > 0 else 0.0
    return images[1:], share, float(change.mean())


def traversal_arrays(model, codes, masks, true_masks, device, num_dims: int = TRAVERSAL_DIMS,
                     num_values: int = TRAVERSAL_VALUES) -> dict[str, np.ndarray]:
    """Figs. 19-21 from the codes [N, K, D] of N test images (the representation DCI and activeness
    use): the slot of image 0 best matched to a true object, swept between the smallest and largest
    value each dimension takes over all N images and slots; the ``num_dims`` dimensions that change
    the image most (ranked by :func:`slot_variance`) at ``num_values`` values each."""
    low, high = codes.amin(dim=(0, 1)), codes.amax(dim=(0, 1))
    slot, how = traversed_slot(true_masks, masks)
    variance = slot_variance(model, codes[0], slot, low, high, device)
    chosen = torch.argsort(variance, descending=True)[:num_dims].tolist()
    values = low[chosen, None] + (high - low)[chosen, None] * torch.linspace(0, 1, num_values)[None, :]
    images = sweep(model, codes[0], slot, chosen, values, device)
    return {"images": images.numpy(), "dims": np.array(chosen), "values": values.numpy(), "low": low.numpy(),
            "high": high.numpy(), "variance": variance.numpy(), "slot": np.array(slot), "slot_choice": np.array(how),
            "num_images": np.array(len(codes))}


def leakage_arrays(model, model_name: str, codes, masks, true_masks, device,
                   num_values: int = TRAVERSAL_VALUES) -> dict[str, np.ndarray]:
    """Fig. 11's row: one latent dimension of one slot of test image 0 traversed, with its leak share
    (:func:`traversal_leakage`). The slot: the first component of an ordered model (the paper
    manipulates the first component), else the slot best matched to a true object; the dimension:
    the slot's most active one (:func:`slot_variance`)."""
    low, high = codes.amin(dim=(0, 1)), codes.amax(dim=(0, 1))
    if model_name in ORDERED_MODELS:
        slot, how = 0, "the first component"
    else:
        slot, how = traversed_slot(true_masks, masks)
    dim = int(torch.argmax(slot_variance(model, codes[0], slot, low, high, device)))
    values = low[dim] + (high[dim] - low[dim]) * torch.linspace(0, 1, num_values)
    images, share, change = traversal_leakage(model, codes[0], slot, dim, values, device)
    with torch.no_grad():
        scene = model.decode(codes[:1].to(device)).reconstruction().float().cpu()[0]
    return {"scene": scene.numpy(), "images": images.numpy(), "slot": np.array(slot), "slot_choice": np.array(how),
            "dim": np.array(dim), "low": np.array(float(low[dim])), "high": np.array(float(high[dim])),
            "leak_share": np.array(share), "mean_change": np.array(change), "model": np.array(model_name)}


def write_figures(model, container: dict, dataset, out_dir: str | Path, num_slots: int | None, device, seed: int,
                  traversal_images: int = TRAVERSAL_IMAGES, title: str = "") -> list[Path]:
    """Compute and write the decomposition, the traversal and Fig. 11's row into ``out_dir`` (see
    the module docstring) at the setting's test-time I; returns the files written."""
    from emorl.engine.evaluation_run import collect_codes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refine_steps = int(container["curriculum"]["test_refine_steps"])
    count = min(DECOMPOSITION_IMAGES, len(dataset))
    # The same outputs, random state included, as the run's own evaluation of these images.
    result = evaluate(model, eval_loader(dataset, count, count), refine_steps, num_slots=num_slots, device=device,
                      seed=seed)
    sample = {k: v.float().cpu().numpy() for k, v in result.sample.items()}
    per_image = result.per_image[refine_steps]
    np.savez_compressed(out_dir / "decomposition.npz", **sample, image_index=np.arange(count),
                        fg_ari=per_image["fg_ari"].numpy(), mse=per_image["mse"].numpy(),
                        refine_steps=np.array(refine_steps))
    written = [out_dir / "decomposition.npz", decomposition_figure(
        sample["images"], sample["reconstruction"], sample["masks"], sample["components"],
        out_dir / "decomposition.png", max_images=count, title=f"Decomposition at I = {refine_steps}: {title}")]
    codes, masks, true_masks, _ = collect_codes(model, eval_loader(dataset, traversal_images, 32), num_slots,
                                                refine_steps, device, "fp32", seed)
    traversal = traversal_arrays(model, codes, masks, true_masks, device)
    np.savez_compressed(out_dir / "traversal.npz", **traversal)
    written.append(out_dir / "traversal.npz")
    written += traversal_figure(
        traversal["images"], traversal["dims"].tolist(), traversal["variance"], out_dir / "traversal.png",
        f"Latent traversal, slot {traversal['slot']} of test image 0 ({traversal['slot_choice']}): {title}\n"
        f"rows: the {len(traversal['dims'])} of {len(traversal['low'])} dimensions that change the image most "
        f"(ranges over {len(codes)} test images)")
    name = container["model"].get("name", "efficient_morl")
    np.savez_compressed(out_dir / "traversal_leakage.npz", **leakage_arrays(model, name, codes, masks, true_masks,
                                                                            device))
    written.append(out_dir / "traversal_leakage.npz")
    return written
