"""Adaptive seeds: the rule on synthetic results, the searcher driven directly (no Ray run), the
spec's `adaptive:` key, and the replay that a resumed sweep does from its trial folders."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from emorl.errors import ConfigError
from sweeps import adaptive, status
from sweeps.adaptive import FAILED, AdaptiveRule, decide, next_seeds, replay
from sweeps.spec import expand, load_spec
from tests.test_sweeps_run import processes, ray_dir  # noqa: F401 (fixtures)

RULE = AdaptiveRule(target_ci=0.03, max_seeds=10)


def noisy(seed: int) -> float:
    """A setting like Table 2's 'w/ GECO' (82.2 +- 17.7): a fixed draw per seed."""
    return float(np.random.default_rng(100 + seed).normal(0.822, 0.177))


def stable(seed: int) -> float:
    """A setting like 97.9 +- 1: a fixed draw per seed."""
    return float(np.random.default_rng(200 + seed).normal(0.979, 0.01))


def test_a_noisy_setting_gets_more_seeds_and_a_stable_one_none():
    added = next_seeds({"noisy": {s: noisy(s) for s in range(5)}, "stable": {s: stable(s) for s in range(5)}}, RULE)
    assert added["stable"] == []
    # the spread projects far beyond the cap: every seed up to it, next numbers in order
    assert added["noisy"] == [5, 6, 7, 8, 9]


def test_the_half_width_is_the_one_analysis_reports():
    from analysis.aggregate import summarize

    values = [0.5, 0.7, 0.65]
    summary = summarize(values)
    assert adaptive.half_width(values) == pytest.approx((summary.ci_high - summary.ci_low) / 2)
    # by hand: t(0.975, 2) * s / sqrt(3)
    assert adaptive.half_width(values) == pytest.approx(4.302653 * np.std(values, ddof=1) / math.sqrt(3), rel=1e-6)


def test_the_projection_adds_what_the_spread_asks_and_at_least_one():
    rule = AdaptiveRule(target_ci=0.05, max_seeds=20)
    values = {0: 0.50, 1: 0.60, 2: 0.55}  # half-width 0.124: n (w/W)^2 = 3 * 6.2 = 18.5 -> 19 values
    decision = decide("s", values, rule)
    assert decision.state == adaptive.EXTENDED and decision.added == list(range(3, 19))
    slightly = {0: 0.50, 1: 0.52, 2: 0.51, 3: 0.56}  # just above the target: one more
    width = adaptive.half_width(list(slightly.values()))
    rule = AdaptiveRule(target_ci=width * 0.99, max_seeds=20)
    assert decide("s", slightly, rule).added == [4]


def test_the_cap_is_respected_and_failures_count_toward_it():
    rule = AdaptiveRule(target_ci=0.001, max_seeds=6)
    results = {0: 0.1, 1: 0.9, 2: FAILED, 3: 0.5}
    decision = decide("s", results, rule)
    assert decision.added == [4, 5] and decision.failed == [2] and decision.values == [0.1, 0.9, 0.5]
    results.update({4: FAILED, 5: math.nan})  # a finish without a finite metric is a failure too
    decision = decide("s", results, rule)
    assert decision.state == adaptive.CAPPED and decision.added == [] and decision.failed == [2, 4, 5]
    assert "3 failed (seeds [2, 4, 5])" in decision.line(rule) and "cap of 6 seeds reached" in decision.line(rule)


def test_nothing_is_decided_while_a_seed_of_the_setting_has_not_ended():
    decision = decide("s", {0: 0.1, 1: 0.9, 2: None}, RULE)
    assert decision.state == adaptive.WAITING and decision.added == []
    assert decide("s", {0: FAILED, 1: 0.9}, RULE).added == [2]  # one value: no interval yet, one more seed


def test_seeds_follow_the_largest_so_far_whatever_the_results():
    assert decide("s", {3: 0.1, 7: 0.9}, AdaptiveRule(0.01, 4)).added == [8, 9]


def test_replay_gives_the_same_decisions_in_any_order_of_completion():
    """A resumed sweep recomputes the decisions from final results: the same seeds, whichever
    trials ended first, and seeds kept from an earlier launch are never taken back."""
    results = {"noisy": noisy, "stable": stable}
    initial = {"noisy": [0, 1, 2, 3, 4], "stable": [0, 1, 2, 3, 4]}
    once = replay(initial, lambda setting, seed: results[setting](seed), RULE)
    assert once == {"noisy": list(range(10)), "stable": [0, 1, 2, 3, 4]}
    # interrupted after the first round: only the initial seeds ended, the added ones not yet
    partial = replay(initial, lambda s, seed: results[s](seed) if seed < 5 else None, RULE)
    assert partial == once
    kept = {"stable": [0, 1, 2, 3, 4, 5]}  # an earlier launch decided seed 5 (its result then a failure)
    again = replay(initial, lambda s, seed: results[s](seed), RULE, kept)
    assert again["stable"] == [0, 1, 2, 3, 4, 5] and again["noisy"] == once["noisy"]


# -- the spec --------------------------------------------------------------------------------------
def write(tmp_path: Path, **changes) -> Path:
    body = {"name": "adaptive_test", "experiment": "smoke", "seeds": [0, 1],
            "variants": {"k1": ["model.num_slots=1"], "base": []},
            "adaptive": {"metric": "test/fg_ari", "target_ci": 0.05, "max_seeds": 4}, **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_the_spec_key_is_validated(tmp_path):
    spec = load_spec(write(tmp_path))
    assert spec.adaptive == AdaptiveRule(0.05, 4, "test/fg_ari")
    bad = [({"adaptive": {"target_ci": 0.05, "max_seeds": 4, "stop": 1}}, "unknown"),
           ({"adaptive": {"target_ci": 0, "max_seeds": 4}}, "target_ci must be a number > 0"),
           ({"adaptive": {"target_ci": 0.05, "max_seeds": 1}}, "max_seeds must be an integer >= the 2 initial"),
           ({"seeds": [0], "adaptive": {"target_ci": 0.05, "max_seeds": 4}}, "at least 2 initial seeds")]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_spec(write(tmp_path, **change))


def test_the_shipped_table2_tetrominoes_spec_is_adaptive():
    spec = load_spec("table2_tetrominoes")
    assert spec.seeds == (0, 1, 2, 3, 4)
    assert spec.adaptive == AdaptiveRule(target_ci=0.03, max_seeds=10, metric="test/fg_ari")


def test_the_dry_run_prints_the_rule_and_the_worst_case_and_the_flags_replace_it(tmp_path, capsys):
    from emorl.cli import main

    output = tmp_path / "out"
    assert main(["sweep", "table2_tetrominoes", "--dry-run", "--output", str(output), "--cpus", "1",
                 "--gpus", "0"]) == 0
    text = capsys.readouterr().out
    assert ("adaptive seeds: 5 per setting first, then more (next seed numbers) while the 95% CI half-width of "
            "test/fg_ari is above 0.03, up to 10 per setting: 20 trials decided so far, at most 40") in text
    assert main(["sweep", "quickstart", "--dry-run", "--output", str(output), "--target-ci", "0.1",
                 "--max-seeds", "3"]) == 0
    assert "above 0.1, up to 3 per setting: 4 trials decided so far, at most 6" in capsys.readouterr().out
    assert main(["sweep", "quickstart", "--dry-run", "--output", str(output), "--target-ci", "0.1"]) == 2
    assert "give both --target-ci W and --max-seeds N" in capsys.readouterr().err
    assert not output.exists()


def test_the_figure_is_drawn_from_the_rule(tmp_path):
    from sweeps.adaptive_figure import draw

    seeds = draw(tmp_path / "adaptive.png")
    assert (tmp_path / "adaptive.png").stat().st_size > 10_000
    noisy_seeds, stable_seeds = (seeds[s] for s in sorted(seeds))  # "noisy ..." < "stable ..."
    assert noisy_seeds == list(range(10)) and stable_seeds == list(range(6))


# -- the searcher, driven directly, and the folders a resumed sweep reads -------------------------
def finish(trial, value) -> None:
    """What the trainable writes as a trial ends."""
    if value == FAILED:
        status.write_status(trial.output_dir, state="failed", reason="RuntimeError: non-finite loss", attempt=3)
    else:
        status.write_status(trial.output_dir, state="finished", step=trial.max_steps,
                            metrics={"test/fg_ari": value}, attempt=1)


def test_the_searcher_suggests_pending_trials_adds_seeds_and_finishes(tmp_path):
    pytest.importorskip("ray")
    from ray.tune.search import Searcher

    from sweeps.adaptive_search import AdaptiveSearcher

    plan = expand(load_spec(write(tmp_path)), output=tmp_path / "out")
    candidates = adaptive.candidate_trials(plan)
    assert sorted(candidates) == sorted(f"smoke/{v}/seed{s}" for v in ("k1", "base") for s in range(4))
    pending, grown = list(plan.trials), []
    searcher = AdaptiveSearcher(plan, pending, candidates, lambda t: {"id": t.id}, grown.append)
    values = {"smoke/k1": {0: 0.0, 1: 0.0}, "smoke/base": {0: 0.18, 1: 0.001, 2: FAILED, 3: 0.098}}
    started = {}
    for n in range(4):
        suggestion = searcher.suggest(f"tune{n}")
        started[f"tune{n}"] = suggestion["trial"]["id"]
    assert searcher.suggest("tune4") is None  # nothing pending, trials running: wait
    for tune_id, trial_id in started.items():
        setting, seed = adaptive.setting_of(trial_id), int(trial_id.rsplit("seed", 1)[1])
        finish(searcher.trials[trial_id], values[setting][seed])
        searcher.on_trial_complete(tune_id, {"step": 1})
    assert [t.id for t in plan.trials][4:] == ["smoke/base/seed2", "smoke/base/seed3"]
    assert [t.id for t in pending][4:] == ["smoke/base/seed2", "smoke/base/seed3"] and len(grown) == 1
    for n in (5, 6):
        trial_id = searcher.suggest(f"tune{n}")["trial"]["id"]
        finish(searcher.trials[trial_id], values["smoke/base"][int(trial_id[-1])])
        searcher.on_trial_complete(f"tune{n}", error=values["smoke/base"][int(trial_id[-1])] == FAILED)
    assert searcher.suggest("tune7") == Searcher.FINISHED
    lines = {d.setting: d.line(plan.spec.adaptive) for d in adaptive.decisions(plan)}
    assert lines["smoke/k1"] == "smoke/k1: 2 seeds, 2 values, 95% CI half-width 0: target 0.05 met"
    assert lines["smoke/base"].startswith("smoke/base: 4 seeds, 3 values")
    assert "1 failed (seeds [2])" in lines["smoke/base"]
    assert lines["smoke/base"].endswith("cap of 4 seeds reached")
    # resumed from the folders alone: the same trials
    again = expand(load_spec(write(tmp_path)), output=tmp_path / "out")
    adaptive.resume_plan(again, None)
    assert [t.id for t in again.trials] == [t.id for t in plan.trials]


# -- a real adaptive sweep on local Ray -------------------------------------------------------------
@pytest.mark.slow
def test_the_adaptive_demo_gives_the_noisy_setting_one_more_seed_and_resumes_with_the_same_decisions(
        tmp_path, ray_dir, processes):
    """The shipped adaptive_demo (about a minute on 2 cores): `one_slot` (fg-ARI 0 for every seed)
    meets the target with its 2 seeds, `four_slots` gets seed 2 (the cap); the same command again
    runs nothing and decides the same."""
    import json

    from tests.test_sweeps_run import Driver

    output = tmp_path / "sweep"
    args = ("--output", str(output), "--ray-temp-dir", ray_dir)
    first = Driver(processes, tmp_path, "adaptive_demo", *args)
    assert first.wait(300) == 0, first.text()[-3000:]
    text = first.text()
    assert "adaptive seeds: added smoke/four_slots/seed2" in text
    assert "sweep adaptive_demo: 5 of 5 trials finished (5 in this launch), 0 failed" in text
    assert "  smoke/four_slots: 3 seeds, 3 values, 95% CI half-width " in text and "cap of 3 seeds reached" in text
    assert "  smoke/one_slot: 2 seeds, 2 values, 95% CI half-width 0: target 0.05 met" in text
    state = json.loads((output / "sweep.json").read_text())
    assert state["adaptive"] == {"smoke/four_slots": [0, 1, 2], "smoke/one_slot": [0, 1]}
    assert state["trials"][-1] == "smoke/four_slots/seed2" and len(state["trials"]) == 5
    assert status.read_status(output / "smoke/four_slots/seed2")["state"] == "finished"
    assert not (output / "smoke/one_slot/seed2").exists()

    second = Driver(processes, tmp_path, "adaptive_demo", *args)
    assert second.wait(120) == 0, second.text()[-3000:]
    again = second.text()
    assert "all 5 trials already finished; nothing to run" in again
    assert json.loads((output / "sweep.json").read_text())["adaptive"] == state["adaptive"]
    decided = [line for line in text.splitlines() if line.startswith("  smoke/") and "half-width" in line]
    assert decided and all(line in again for line in decided)


def test_an_evaluation_sweep_over_an_adaptive_sweep_takes_the_seeds_its_rule_added(tmp_path):
    import json

    source = write(tmp_path)
    output = tmp_path / "source_out"
    output.mkdir()
    (output / "sweep.json").write_text(json.dumps({"adaptive": {"smoke/base": [0, 1, 2], "smoke/k1": [0, 1]}}))
    evaluation = tmp_path / "eval.yaml"
    evaluation.write_text(yaml.safe_dump({"name": "eval_of_adaptive", "evaluation": {
        "source": {"sweep": str(source), "output": str(output), "trials": ["smoke/*"]}}}))
    plan = expand(load_spec(evaluation), output=tmp_path / "eval_out")
    assert sorted(t.evaluation["source_trial"] for t in plan.trials) == [
        "smoke/base/seed0", "smoke/base/seed1", "smoke/base/seed2", "smoke/k1/seed0", "smoke/k1/seed1"]
