"""The learning-rate schedule and the refinement-steps curriculum."""

from __future__ import annotations


def learning_rate_factor(step: int, warmup_steps: int, decay_rate: float, decay_steps: int,
                         decay_from: str = "warmup_end", warmup_from_zero: bool = False) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    Linear warm-up over ``warmup_steps``: (step + 1) / warmup_steps, or step / warmup_steps with
    ``warmup_from_zero`` (the authors' GradualWarmupScheduler: the first step has lr 0); then a
    continuous exponential decay
    ``decay_rate ** (t / decay_steps)`` where t counts from the end of the warm-up
    (``decay_from="warmup_end"``, EfficientMORL's code) or from step 0 (``"start"``, Slot
    Attention's recipe, where warm-up and decay multiply).
    """
    warmup = min(1.0, (step + (0 if warmup_from_zero else 1)) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_from == "warmup_end":
        decay = decay_rate ** (max(0, step - warmup_steps) / decay_steps)
    elif decay_from == "start":
        decay = decay_rate ** (step / decay_steps)
    else:
        raise ValueError(f"decay_from={decay_from!r} is not one of ['warmup_end', 'start']")
    return warmup * decay


def refine_steps_at(step: int, refine_steps: int, milestones, milestone_refine_steps) -> int:
    """I at training step ``step``: ``refine_steps``, then the value of the last milestone passed."""
    current = refine_steps
    for milestone, value in zip(milestones, milestone_refine_steps):
        if step >= milestone:
            current = value
    return int(current)
