"""The figure of docs/sweeps.md and docs/analysis.md: the adaptive-seed rule on synthetic results.

Two settings drawn like Table 2's Tetrominoes rows: a stable one (fg-ARI 0.979 +- 0.024, like the
full model) and a noisy one (0.822 +- 0.177, like "w/ GECO"); one fixed draw per seed. The rule of
the shipped ``table2_tetrominoes`` spec (target half-width 0.03, 5 seeds first, at most 10) is
replayed round by round (:func:`sweeps.adaptive.replay`), and the 95% CI half-width of each
setting is drawn against its number of seeds, with the target and the cap.

    python -m sweeps.adaptive_figure docs/img/adaptive_seeds.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sweeps.adaptive import AdaptiveRule, half_width, replay

RULE = AdaptiveRule(target_ci=0.03, max_seeds=10)
SETTINGS = {"stable (0.979 ± 0.024, like 'full')": (0.979, 0.024, 200),
            "noisy (0.822 ± 0.177, like 'w/ GECO')": (0.822, 0.177, 100)}


def synthetic(setting: str, seed: int) -> float:
    mean, std, offset = SETTINGS[setting]
    return float(np.random.default_rng(offset + seed).normal(mean, std))


def draw(path: str | Path, initial: int = 5) -> dict[str, list[int]]:
    """Draw the figure into ``path``; returns the seeds the rule gave each setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = replay({s: list(range(initial)) for s in SETTINGS}, synthetic, RULE)
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for (setting, chosen), colour in zip(seeds.items(), ("tab:blue", "tab:red")):
        counts = list(range(2, RULE.max_seeds + 1))
        widths = [half_width([synthetic(setting, s) for s in range(n)]) for n in counts]
        used = len(chosen)
        axis.plot(counts, widths, ":", color=colour, alpha=0.5)
        axis.plot(counts[:used - 1], widths[:used - 1], "o-", color=colour, label=f"{setting}: {used} seeds")
    axis.axhline(RULE.target_ci, color="black", lw=1, ls="--", label=f"target half-width {RULE.target_ci:g}")
    axis.axvline(initial, color="grey", lw=0.8)
    axis.axvline(RULE.max_seeds, color="grey", lw=0.8)
    axis.set_yscale("log")
    axis.set_xlabel("seeds of the setting (n)")
    axis.set_ylabel("95% CI half-width of test fg-ARI")
    axis.set_title("Adaptive seeds: solid = the seeds run, dotted = not run", fontsize=10)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return seeds


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else "docs/img/adaptive_seeds.png"))
