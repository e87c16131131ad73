"""The adaptive-seed rule (:mod:`sweeps.adaptive`) inside Ray Tune: a searcher that suggests the
pending trials of a plan, and more seeds of a setting when its trials have ended and the rule asks.

Tune calls :meth:`AdaptiveSearcher.suggest` whenever it may start a trial (at most
``max_concurrent`` at once: Tune wraps the searcher in a ``ConcurrencyLimiter``): the next pending
trial's payload, None while nothing is pending but trials run (a decision may follow), or
``FINISHED`` when nothing is pending, nothing runs and so nothing more can be decided. Tune calls
:meth:`on_trial_complete` once per trial, after its last retry: the trial's result is read from its
folder (what a resumed sweep reads too), and the rule decides its setting. Trials added are appended
to the plan (and to the list of this launch's scheduled trials), and ``on_grow`` is told, so that the
driver records them in ``sweep.json`` at once.
"""

from __future__ import annotations

from typing import Any, Callable

from ray.tune.search import Searcher

from sweeps import adaptive


class AdaptiveSearcher(Searcher):
    def __init__(self, plan, pending: list, candidates: dict[str, Any], payload: Callable[[Any], dict],
                 on_grow: Callable[[list], None] = lambda added: None):
        super().__init__()
        self.plan, self.rule = plan, plan.spec.adaptive
        self.pending, self.candidates = pending, candidates
        self.payload, self.on_grow = payload, on_grow
        self.queue = [t.id for t in pending]
        self.trials = {t.id: t for t in plan.trials}
        self.running: dict[str, str] = {}  # Tune's trial id -> ours
        self.results: dict[str, dict[int, float | str | None]] = {}
        waiting = set(self.queue)
        for trial in plan.trials:
            known = None if trial.id in waiting else adaptive.folder_result(trial, self.rule.metric)
            self.results.setdefault(adaptive.setting_of(trial.id), {})[trial.seed] = known
        self.decided: list[adaptive.Decision] = []  # every decision that added seeds, in order

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.queue:
            ours = self.queue.pop(0)
            self.running[trial_id] = ours
            return {"trial": self.payload(self.trials[ours])}
        return None if self.running else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ours = self.running.pop(trial_id, None)
        if ours is None:
            return
        trial = self.trials[ours]
        value = adaptive.FAILED if error else adaptive.folder_result(trial, self.rule.metric)
        if value is None:  # ended without error but its folder says otherwise (stopped): no decision from it
            value = adaptive.FAILED
        self.record(trial.id, value)

    def record(self, trial_id: str, value: float | str) -> list:
        """A trial's result; decide its setting (again, while added seeds are known already); the trials added."""
        setting = adaptive.setting_of(trial_id)
        self.results[setting][self.trials[trial_id].seed] = value
        added = []
        decision = adaptive.decide(setting, self.results[setting], self.rule)
        if decision.added:
            self.decided.append(decision)
            added = adaptive.grow(self.plan, {setting: decision.added}, self.candidates)
            for trial in added:
                self.trials[trial.id] = trial
                self.results[setting][trial.seed] = None
                self.queue.append(trial.id)
                self.pending.append(trial)
            self.on_grow(added)
        return added
