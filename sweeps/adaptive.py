"""Adaptive seeds: give a setting more seeds only while its confidence interval is wider than asked.

A spec's ``adaptive: {metric, target_ci, max_seeds}`` (or ``emorl sweep SPEC --target-ci W
--max-seeds N``) names a primary metric (default ``test/fg_ari``), a target half-width W of the
95% Student-t interval of its mean (the interval ``analysis`` reports,
:func:`analysis.aggregate.summarize`) and a cap N of seeds per setting. A setting is every id part
but the seed (``<name>/<variant>``). The rule, :func:`decide`:

- every setting starts with the spec's seeds (at least 2);
- a setting is decided only when all its seeds so far have ended (finished or failed): the rule
  sees whole rounds, never a race between trials, so the same results give the same decisions;
- then, if fewer than 2 finite values, or the half-width is above W, and it has fewer than N seeds,
  it gets the next seed numbers in order (after its largest): as many as the spread projects to
  reach W (n (w/W)^2, the usual two-stage estimate), at least one, never past N;
- a failed trial (an error after its retries, or a finish without a finite value of the metric)
  counts toward N and gives no value; it is reported, never replaced by a chosen seed.

The decisions depend only on the trials' final results (their ``sweep/status.json``), so a resumed
sweep replays them from the trial folders (:func:`replay`); decided seeds are also kept in
``sweep.json`` and never taken back. :class:`sweeps.adaptive_search.AdaptiveSearcher` applies the
rule inside Ray Tune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from emorl.errors import ConfigError

ADAPTIVE_KEYS = ("metric", "target_ci", "max_seeds")
DEFAULT_METRIC = "test/fg_ari"
MIN_INITIAL_SEEDS = 2
FAILED = "failed"  # a seed's result: a float (its metric), FAILED, or None (not ended yet)

# Why a setting gets no more seeds (or why not yet).
MET, CAPPED, WAITING, EXTENDED = "met", "capped", "waiting", "extended"


@dataclass(frozen=True)
class AdaptiveRule:
    """The spec's ``adaptive:`` mapping."""

    target_ci: float  # W: the half-width of the 95% t-interval to reach, in the metric's units
    max_seeds: int  # N: seeds per setting at most (failed ones included)
    metric: str = DEFAULT_METRIC

    def describe(self, initial: int) -> str:
        return (f"adaptive seeds: {initial} per setting first, then more (next seed numbers) while the 95% CI "
                f"half-width of {self.metric} is above {self.target_ci:g}, up to {self.max_seeds} per setting")


@dataclass
class Decision:
    """Where one setting stands: its seeds so far, their values, and what the rule says."""

    setting: str
    seeds: list[int]
    values: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    half_width: float = math.nan
    state: str = WAITING  # met | capped | waiting | extended
    added: list[int] = field(default_factory=list)

    def line(self, rule: AdaptiveRule) -> str:
        width = "n/a" if math.isnan(self.half_width) else f"{self.half_width:.4g}"
        failed = f", {len(self.failed)} failed (seeds {self.failed})" if self.failed else ""
        why = {MET: f"target {rule.target_ci:g} met", CAPPED: f"cap of {rule.max_seeds} seeds reached",
               WAITING: "waiting for its running seeds", EXTENDED: f"adds seeds {self.added}"}[self.state]
        return (f"{self.setting}: {len(self.seeds)} seeds, {len(self.values)} values, 95% CI half-width "
                f"{width}{failed}: {why}")


def parse_rule(value: Any, path, initial_seeds: tuple[int, ...]) -> AdaptiveRule | None:
    """Validate a spec's ``adaptive:`` mapping (None: fixed seeds)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: adaptive must be a mapping (got {type(value).__name__}); "
                          "e.g. `adaptive: {metric: test/fg_ari, target_ci: 0.03, max_seeds: 10}`")
    unknown = sorted(str(key) for key in value if key not in ADAPTIVE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in adaptive; valid keys: {', '.join(ADAPTIVE_KEYS)}")
    return make_rule(value.get("target_ci"), value.get("max_seeds"), value.get("metric", DEFAULT_METRIC),
                     initial_seeds, f"{path}: adaptive")


def make_rule(target_ci: Any, max_seeds: Any, metric: Any, initial_seeds: tuple[int, ...], where: str) -> AdaptiveRule:
    """The rule, checked: a positive target, a cap at least the initial seeds, at least 2 of them."""
    if isinstance(target_ci, bool) or not isinstance(target_ci, (int, float)) or not 0 < target_ci < math.inf:
        raise ConfigError(f"{where}: target_ci must be a number > 0 (got {target_ci!r}); the half-width of the 95% "
                          "interval to reach, in the metric's units, e.g. 0.03 for 3 ARI points")
    if isinstance(max_seeds, bool) or not isinstance(max_seeds, int) or max_seeds < len(initial_seeds):
        raise ConfigError(f"{where}: max_seeds must be an integer >= the {len(initial_seeds)} initial seeds "
                          f"(got {max_seeds!r}); it caps the seeds of each setting")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: metric must be a metric key such as test/fg_ari (got {metric!r})")
    if len(initial_seeds) < MIN_INITIAL_SEEDS:
        raise ConfigError(f"{where}: needs at least {MIN_INITIAL_SEEDS} initial seeds (got {list(initial_seeds)}); "
                          "an interval needs two values")
    return AdaptiveRule(float(target_ci), max_seeds, metric)


def half_width(values: list[float]) -> float:
    """The half-width of the 95% Student-t interval of the mean (NaN under 2 values), as analysis reports it."""
    from analysis.aggregate import summarize

    summary = summarize(values)
    return (summary.ci_high - summary.ci_low) / 2


def decide(setting: str, results: dict[int, float | str | None], rule: AdaptiveRule) -> Decision:
    """The rule for one setting, from its results by seed (a value, FAILED or None while not ended)."""
    seeds = sorted(results)
    decision = Decision(setting, seeds)
    for seed in seeds:
        result = results[seed]
        if result == FAILED or (result is not None and not math.isfinite(result)):
            decision.failed.append(seed)
        elif result is not None:
            decision.values.append(float(result))
    decision.half_width = half_width(decision.values)
    if any(results[seed] is None for seed in seeds):
        decision.state = WAITING
    elif len(decision.values) >= 2 and decision.half_width <= rule.target_ci:
        decision.state = MET
    elif len(seeds) >= rule.max_seeds:
        decision.state = CAPPED
    else:
        wanted = _projected(len(decision.values), decision.half_width, rule.target_ci) + len(decision.failed)
        count = min(max(wanted - len(seeds), 1), rule.max_seeds - len(seeds))
        decision.added = [max(seeds) + 1 + i for i in range(count)]
        decision.state = EXTENDED
    return decision


def _projected(n: int, width: float, target: float) -> int:
    """Values the spread projects to reach the target: n (w/W)^2 (no projection under 2 values)."""
    if n < 2 or math.isnan(width):
        return n + 1
    return math.ceil(n * (width / target) ** 2)


def next_seeds(results_by_setting: dict[str, dict[int, float | str | None]],
               rule: AdaptiveRule) -> dict[str, list[int]]:
    """The seeds to add now, by setting (empty: none now)."""
    return {setting: decide(setting, results, rule).added for setting, results in results_by_setting.items()}


def replay(initial: dict[str, list[int]], result_of, rule: AdaptiveRule,
           kept: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Every setting's seeds as decided so far: the initial ones, those ``kept`` from earlier launches,
    and those the rule adds from the results already known (``result_of(setting, seed)``), round
    after round, until a setting waits, meets the target or reaches the cap."""
    seeds = {s: sorted(set(initial[s]) | set((kept or {}).get(s, ()))) for s in initial}
    for setting in seeds:
        while True:
            decision = decide(setting, {seed: result_of(setting, seed) for seed in seeds[setting]}, rule)
            if not decision.added:
                break
            seeds[setting] += decision.added
    return seeds


# -- the trials of a plan --------------------------------------------------------------------------
def setting_of(trial_id: str) -> str:
    """``<name>/<variant>`` of ``<name>/<variant>/seed<seed>``."""
    return trial_id.rsplit("/", 1)[0]


def folder_result(trial, metric: str) -> float | str | None:
    """A trial's result as the rule sees it, from its folder: its metric when it finished, FAILED when
    it failed (or finished without the metric), None while it has not ended."""
    from sweeps import status

    state = status.read_status(trial.output_dir)
    if state.get("state") == "failed":
        return FAILED
    if state.get("state") != "finished" or int(state.get("step") or 0) < (trial.max_steps or 0):
        return None
    value = (state.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else FAILED


def candidate_trials(plan) -> dict[str, Any]:
    """Every trial the rule could add, by id: the spec expanded (:func:`sweeps.spec.expand`, so composed
    and checked like the spec's own trials) with the initial seeds and the next ones up to the cap."""
    import dataclasses

    from sweeps.spec import expand

    spec, rule = plan.spec, plan.spec.adaptive
    more = range(max(spec.seeds) + 1, max(spec.seeds) + 1 + rule.max_seeds - len(spec.seeds))
    wider = dataclasses.replace(spec, seeds=(*spec.seeds, *more))
    expanded = expand(wider, plan.overrides, output=plan.output_dir, tracking_uri=plan.tracking_uri)
    return {t.id: t for t in expanded.trials}


def grow(plan, seeds: dict[str, list[int]], candidates: dict[str, Any]) -> list:
    """Add to ``plan.trials`` the trials of the seeds decided beyond it; returns the trials added."""
    have = {t.id for t in plan.trials}
    added = [candidates[f"{setting}/seed{seed}"] for setting, chosen in seeds.items() for seed in chosen
             if f"{setting}/seed{seed}" not in have]
    plan.trials.extend(added)
    plan.total += len(added)
    return added


def recorded_seeds(output_dir) -> dict[str, list[int]] | None:
    """The seeds decided by earlier launches, as ``sweep.json`` in the sweep folder records them."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(output_dir) / "sweep.json").read_text()).get("adaptive")
    except (OSError, ValueError):
        return None


def resume_plan(plan, kept: dict[str, list[int]] | None) -> dict[str, Any]:
    """Grow the plan by the seeds decided so far (those ``kept`` in sweep.json, and what the rule
    decides again from the trial folders); returns the candidate trials for later decisions."""
    rule = plan.spec.adaptive
    candidates = candidate_trials(plan)
    kept = {setting: [seed for seed in chosen if f"{setting}/seed{seed}" in candidates]  # a lowered cap drops some
            for setting, chosen in (kept or {}).items()}
    seeds = replay(seeds_by_setting(plan), lambda setting, seed: folder_result(candidates[f"{setting}/seed{seed}"],
                                                                            rule.metric), rule, kept)
    grow(plan, seeds, candidates)
    return candidates


def seeds_by_setting(plan) -> dict[str, list[int]]:
    """The seeds of each setting in the plan (the spec's, for an unexpanded plan)."""
    seeds: dict[str, list[int]] = {}
    for trial in plan.trials:
        seeds.setdefault(setting_of(trial.id), []).append(trial.seed)
    return seeds


def decisions(plan) -> list[Decision]:
    """Each setting's state under the rule, from the trial folders (for the summary)."""
    rule = plan.spec.adaptive
    trials = {t.id: t for t in plan.trials}
    out = []
    for setting, seeds in seeds_by_setting(plan).items():
        results = {seed: folder_result(trials[f"{setting}/seed{seed}"], rule.metric) for seed in seeds}
        out.append(decide(setting, results, rule))
    return out
