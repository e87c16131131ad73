"""Evaluation as the paper does it: foreground ARI, MSE and KL on the test images, at any
number of test-time refinement steps I and any number of slots K.

Every metric is computed per image and averaged over the images. For EfficientMORL the
metrics of every I up to the largest asked for come from one forward pass with
``keep_steps`` (step i of a pass with I = 6 equals a pass with I = i under the same random
state). Evaluation runs under its own seeded random state (``torch.random.fork_rng``), so it
never changes the training run's randomness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from emorl.engine.precision import autocast_context
from emorl.metrics import adjusted_rand_index, mse


@dataclass
class EvaluationResult:
    """Metrics per test-time I: ``metrics[I] = {"fg_ari": ..., "mse": ..., "kl": ..., "nll": ...}``."""

    metrics: dict[int, dict[str, float]]
    num_images: int
    num_slots: int
    per_image: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    sample: dict | None = None  # the first batch's images and final outputs, for figures

    def flat(self, prefix: str = "test", refine_steps: int | None = None) -> dict[str, float]:
        """``{prefix}/{metric}`` for one I (default: the only or the last), for tracking."""
        step = refine_steps if refine_steps is not None else max(self.metrics)
        return {f"{prefix}/{name}": value for name, value in self.metrics[step].items()}

    def flat_all(self, prefix: str) -> dict[str, float]:
        """``{prefix}/I{i}/{metric}`` for every I."""
        return {f"{prefix}/I{i}/{name}": value for i, values in self.metrics.items() for name, value in values.items()}


def evaluation_objective(container: dict, geco_state: dict | None, step: int, device: torch.device,
                         choice: str | None = None):
    """The objective of a run's evaluation: with ``evaluate.refine_objective=training`` (``choice``
    overrides it) and GECO on, GECO's objective with the run's state (zeta, C_ema) at ``step`` (the
    plain ELBO during its warm start), as in training and in the authors' evaluation; otherwise
    None (the plain negative ELBO). Configs from before the setting existed evaluate with the ELBO,
    as their trainer did."""
    from emorl.geco_rules import build_geco

    choice = choice or container.get("evaluate", {}).get("refine_objective", "elbo")
    loss = container.get("loss", {})
    geco_cfg = loss.get("geco", {})
    if choice != "training" or not geco_cfg.get("enabled") or geco_state is None:
        return None
    from emorl.config import GECOConfig

    geco = build_geco({**vars(GECOConfig()), **geco_cfg}, loss.get("kl_beta", 1.0), device=device)
    geco.load_state_dict(geco_state)
    return geco.objective(step)


def _per_image(out, name: str, batch: int) -> torch.Tensor:
    value = getattr(out, name, None)
    return value if isinstance(value, torch.Tensor) and value.shape == (batch,) else torch.zeros(batch)


def _step_outputs(model, images, num_slots, refine_steps: list[int], objective=None):
    """[(I, reconstruction, masks [B,K,1,H,W], kl [B], nll [B])] for each requested I, and the last output."""
    extra = {} if objective is None else {"objective": objective}
    if getattr(model, "supports_keep_steps", False):
        out = model(images, num_slots=num_slots, refine_steps=max(refine_steps), keep_steps=True, **extra)
        steps = out.extras["steps"]
        return [(i, steps[i]["reconstruction"], steps[i]["masks"], steps[i]["kl"], steps[i]["nll"])
                for i in refine_steps], out
    results, out = [], None
    start = torch.get_rng_state()
    for i in refine_steps:  # one pass per I, each from the same random state
        torch.set_rng_state(start)
        out = model(images, num_slots=num_slots, refine_steps=i, **extra)
        batch = len(images)
        results.append((i, out.reconstruction, out.masks, _per_image(out, "kl", batch), _per_image(out, "nll", batch)))
    return results, out


@torch.no_grad()
def evaluate(model, loader, refine_steps: int | list[int], num_slots: int | None = None,
             device: torch.device | str = "cpu", precision: str = "fp32", seed: int = 0,
             keep_sample: bool = True, objective=None) -> EvaluationResult:
    """Evaluate ``model`` on every batch of ``loader`` (dicts with image and masks).

    ``objective`` is the objective whose gradients feed the refinement network (see
    :func:`evaluation_objective`; None: the plain negative ELBO)."""
    device = torch.device(device)
    steps = sorted({refine_steps} if isinstance(refine_steps, int) else set(refine_steps))
    was_training = model.training
    model.eval()
    per_image: dict[int, dict[str, list[torch.Tensor]]] = {i: {"fg_ari": [], "mse": [], "kl": [], "nll": []}
                                                         for i in steps}
    sample = None
    count = 0
    used_slots = num_slots
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for batch in loader:
                images = batch["image"].to(device)
                target = (images.float() + 1) / 2
                with autocast_context(device, precision):
                    outputs, out = _step_outputs(model, images, num_slots, steps, objective)
                used_slots = out.masks.shape[1]
                true_masks = batch["masks"].to(device)
                for i, reconstruction, masks, kl, nll in outputs:
                    per_image[i]["fg_ari"].append(adjusted_rand_index(true_masks, masks[:, :, 0].float()).float().cpu())
                    per_image[i]["mse"].append(mse(reconstruction.float(), target).cpu())
                    per_image[i]["kl"].append(kl.float().cpu())
                    per_image[i]["nll"].append(nll.float().cpu())
                if sample is None and keep_sample:
                    sample = {"images": target.cpu(), "reconstruction": out.reconstruction.float().cpu(),
                              "masks": out.masks.float().cpu(), "components": out.components.float().cpu(),
                              "true_masks": batch["masks"]}
                count += len(images)
    finally:
        model.train(was_training)
    stacked = {i: {name: torch.cat(values) for name, values in metrics.items()} for i, metrics in per_image.items()}
    means = {i: {name: float(values.mean()) for name, values in metrics.items()} for i, metrics in stacked.items()}
    return EvaluationResult(means, count, used_slots, stacked, sample)
