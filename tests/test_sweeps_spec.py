"""Sweep specs: every shipped spec expands to the paper's grid; bad specs fail before anything starts."""

import json
from pathlib import Path

import pytest
import yaml

from emorl.cli import main
from emorl.errors import ConfigError
from sweeps.spec import expand, load_spec, shipped_specs

EXPECTED = {  # spec -> (kind, trials)
    "quickstart": ("training", 4),  # 2 variants x 2 seeds
    "adaptive_demo": ("training", 4),  # 2 variants x 2 seeds first (the adaptive rule adds up to 2 more)
    "table2_tetrominoes": ("training", 20),  # 4 variants x 5 seeds first, up to 10 each (adaptive)
    "table1": ("training", 40),  # (EfficientMORL, Slot Attention) x 3 settings x 5 seeds + 2 Tetrominoes recipes (+ 40 optional)
    "table2_clevr6": ("training", 30),  # 3 variants x 10 seeds
    "table3": ("evaluation", 10),  # Table 1's CLEVR6 models: 2 models x 5 seeds
    "fig3": ("training", 30),  # I in {0, 1, 3} x 10 seeds
    "fig8": ("training", 25),  # L in 0..4 x 5 seeds
    "fig7": ("evaluation", 10),  # 5 CLEVR6 models x {CLEVR6, CLEVR10 with K = 11}
    "fig14": ("evaluation", 10),  # 2 Tetrominoes variants x 5 seeds
    "fig11": ("training", 9),  # (EfficientMORL, GENESIS, GENESIS-S) on the textured set x 3 seeds
}


def write_spec(tmp_path: Path, body: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


def tiny(**changes) -> dict:
    body = {"name": "tiny", "experiment": "smoke", "seeds": [0, 1], "overrides": ["trainer.max_steps=4"]}
    body.update(changes)
    return body


def test_every_shipped_spec_is_listed():
    assert sorted(EXPECTED) == shipped_specs()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_spec_expands_to_the_expected_trials(name):
    kind, count = EXPECTED[name]
    spec = load_spec(name)
    plan = expand(spec)
    assert spec.kind == kind
    assert len(plan.trials) == count == plan.total
    assert len({t.id for t in plan.trials}) == count
    assert len({t.output_dir for t in plan.trials}) == count
    assert plan.tracking_uri.startswith("sqlite:////")
    for trial in plan.trials:
        assert trial.output_dir.is_absolute() and plan.output_dir in trial.output_dir.parents
        payload = trial.payload("parent123", "/data")
        assert json.loads(json.dumps(payload)) == payload  # plain data crosses to the Ray worker
        if kind == "training":
            config = payload["config"]
            assert config["trainer"]["output_dir"] == str(trial.output_dir)
            assert config["tracking"]["uri"] == plan.tracking_uri
            assert config["tracking"]["parent_run_id"] == "parent123"
            assert config["tracking"]["tags"] == {"emorl.sweep": name, "emorl.sweep_trial": trial.id}
            assert config["trainer"]["num_threads"] == trial.resources.threads
            assert config["seed"] == trial.seed and config["variant"] == trial.variant
            assert trial.id == f"{config['name']}/{trial.variant}/seed{trial.seed}"


def test_table2_clevr6_variants_change_only_their_setting():
    trials = {t.id: t.config for t in expand(load_spec("table2_clevr6")).trials}
    full, no_dual, no_geco = (trials[f"clevr6/{v}/seed3"] for v in ("full", "without_dualgru", "without_geco"))
    assert full["trainer"]["max_steps"] == 50000
    assert (full["model"]["dual_gru"], no_dual["model"]["dual_gru"]) == (True, False)
    assert (full["loss"]["geco"]["enabled"], no_geco["loss"]["geco"]["enabled"]) == (True, False)
    assert no_dual["loss"] == full["loss"] and no_geco["model"] == full["model"]
    assert {s for s in range(10)} == {int(i.rsplit("seed", 1)[1]) for i in trials}


def test_table2_tetrominoes_priors_and_geco():
    trials = {t.id: t.config for t in expand(load_spec("table2_tetrominoes")).trials}
    assert trials["tetrominoes/full/seed0"]["loss"]["geco"]["enabled"] is True  # Appendix F.2
    assert trials["tetrominoes/without_geco/seed0"]["loss"]["geco"]["enabled"] is False
    assert trials["tetrominoes/full/seed0"]["model"]["prior"] == "reversed++"
    assert trials["tetrominoes/bottom_up_prior/seed0"]["model"]["prior"] == "bottom_up"
    assert trials["tetrominoes/reversed_prior/seed0"]["model"]["prior"] == "reversed"
    assert expand(load_spec("table2_tetrominoes")).trials[0].resources.gpus == 0.5


def test_gpu_trials_of_clevr_get_one_loader_process_and_the_others_none():
    """Tetrominoes and Multi-dSprites are held on the GPU (no loader); CLEVR is cropped and resized on
    the host by one loader process per trial."""
    workers = {t.config["data"]["name"]: t.config["data"]["num_workers"] for t in expand(load_spec("table1")).trials}
    assert workers == {"tetrominoes": 0, "multi_dsprites": 0, "clevr6": 1}
    from dataclasses import replace

    from sweeps.spec import Resources

    on_cpus = replace(load_spec("table2_clevr6"), resources=Resources(2, 0))
    assert {t.config["data"]["num_workers"] for t in expand(on_cpus).trials} == {0}


def test_table1_runs_tetrominoes_with_and_without_geco_and_in_both_recipes():
    trials = {t.config["name"]: t.config for t in expand(load_spec("table1")).trials if t.seed == 0}
    tetrominoes = {name: c for name, c in trials.items() if c["data"]["name"] == "tetrominoes"
                   and c["model"].get("name", "efficient_morl") == "efficient_morl"}
    assert {n: (c["loss"]["geco"]["enabled"], c["recipe"]) for n, c in tetrominoes.items()} == {
        "tetrominoes": (True, "paper"), "tetrominoes_without_geco": (False, "paper"),
        "tetrominoes_authors_recipe": (True, "authors")}


def test_axes_set_every_key_of_the_axis():
    fig3 = {t.id: t.config for t in expand(load_spec("fig3")).trials}
    for value in (0, 1, 3):  # only the training I varies (tested at I = 0), so the runs form one family
        curriculum = fig3[f"clevr6/I{value}/seed9"]["curriculum"]
        assert (curriculum["refine_steps"], curriculum["test_refine_steps"], curriculum["milestones"]) == \
            (value, 0, [])
    one, three = ({k: v for k, v in fig3[f"clevr6/I{i}/seed9"].items() if k not in ("variant", "trainer", "tracking")}
                  for i in (1, 3))
    assert one != three and {**one, "curriculum": None} == {**three, "curriculum": None}
    fig8 = {t.id: t.config for t in expand(load_spec("fig8")).trials}
    assert sorted({c["model"]["stochastic_layers"] for c in fig8.values()}) == [0, 1, 2, 3, 4]
    assert fig8["clevr6/L0/seed4"]["model"]["stochastic_layers"] == 0


def test_evaluation_specs_point_at_the_training_sweeps_checkpoints(tmp_path):
    plan = expand(load_spec("fig7"), source_output=tmp_path / "table1")
    by_id = {t.id: t.evaluation for t in plan.trials}
    clevr10 = by_id["clevr6/default/seed2/clevr10_K11"]
    assert clevr10["checkpoint"] == str(tmp_path / "table1" / "clevr6/default/seed2/checkpoints/last.pt")
    assert (clevr10["data"], clevr10["num_slots"], clevr10["refine_steps"]) == ("clevr10", 11, list(range(7)))
    assert by_id["clevr6/default/seed2/test"]["data"] is None
    fig14 = {t.evaluation["source_trial"] for t in expand(load_spec("fig14")).trials}
    assert fig14 == {f"tetrominoes/{v}/seed{s}" for v in ("full", "bottom_up_prior") for s in range(5)}
    table3 = expand(load_spec("table3")).trials
    assert {t.evaluation["source_trial"] for t in table3} == \
        {f"{m}/default/seed{s}" for m in ("clevr6", "slot_attention_clevr6") for s in range(5)}
    assert (table3[0].evaluation["metrics"], table3[0].evaluation["refine_steps"]) == (["dci", "activeness"], None)


def test_cli_overrides_and_only(tmp_path):
    plan = expand(load_spec("quickstart"), ["trainer.max_steps=7"], output=tmp_path / "out", only=["*/seed1"])
    assert [t.id for t in plan.trials] == ["smoke/reversed_prior_pp/seed1", "smoke/bottom_up_prior/seed1"]
    assert plan.total == 4
    assert {t.config["trainer"]["max_steps"] for t in plan.trials} == {7}
    assert plan.trials[1].output_dir == (tmp_path / "out" / "smoke/bottom_up_prior/seed1").resolve()
    with pytest.raises(ConfigError, match=r"--only nope\*: matches none of the 4 trials"):
        expand(load_spec("quickstart"), only=["nope*"])


def test_table1_optional_rows_run_only_when_selected(tmp_path, capsys):
    spec = load_spec("table1")
    default = expand(spec)
    assert {t.config["model"]["name"] for t in default.trials} == {"efficient_morl", "slot_attention"}
    assert default.optional == 40 and default.total == 40
    monet = expand(spec, only=["monet_*"])
    assert [t.id for t in monet.trials] == [f"monet_{d}/default/seed{s}" for d in ("multi_dsprites", "clevr6")
                                            for s in range(5)]
    assert monet.total == 80 and {t.config["optim"]["optimizer"] for t in monet.trials} == {"rmsprop"}
    rows = expand(spec, only=["iodine_*", "slot_mlp_*", "clevr6/*"])
    assert {t.config["model"]["name"] for t in rows.trials} == {"iodine", "slot_mlp", "efficient_morl"}
    on_cpus = ["--cpus", "1", "--gpus", "0"]  # the dry run checks that a trial fits this machine
    assert main(["sweep", "table1", "--dry-run", "--output", str(tmp_path / "out"), *on_cpus]) == 0
    assert "optional: 40 more trials (iodine_tetrominoes" in capsys.readouterr().out
    assert main(["sweep", "table1", "--only", "monet_*", "--dry-run", "--output", str(tmp_path / "out"), *on_cpus]) == 0
    printed = capsys.readouterr().out
    assert "10 trials of 80" in printed and "monet_clevr6/default/seed4" in printed and "optional:" not in printed


def test_fig11_compares_emorl_genesis_and_genesis_s_on_the_textured_set():
    plan = expand(load_spec("fig11"))
    models = {t.config["model"]["name"] for t in plan.trials}
    assert models == {"efficient_morl", "genesis", "genesis_s"}
    assert {t.config["data"]["name"] for t in plan.trials} == {"multi_dsprites_textured"}
    genesis = [t.config for t in plan.trials if t.config["model"]["name"] != "efficient_morl"]
    assert all(c["model"]["likelihood"] == "gaussian" and c["model"]["sigma"] == 0.1 for c in genesis)
    assert all(c["loss"]["geco"]["rule"] == "genesis" for c in genesis)


@pytest.mark.parametrize("changes, message", [
    ({"optional_experiment": ["smoke"]}, r"experiment and optional_experiment repeats \['smoke'\]"),
    ({"seed_list": [1]}, r"unknown key\(s\) \['seed_list'\]; valid keys: name, description, experiment"),
    ({"resources": {"cpus": 1, "gpu": 1}}, r"unknown key\(s\) \['gpu'\] in resources; valid keys: cpus, gpus"),
    ({"axes": {"L": {"key": "model.stochastic_layers", "values": []}}}, r"axes.L.values is missing or empty"),
    ({"seeds": []}, r"seeds is missing or empty; give a list"),
    ({"variants": {}}, r"variants must be a non-empty mapping"),
    ({"experiment": None}, r"experiment is missing"),
    ({"resources": {"cpus": 0}}, r"resources.cpus must be > 0"),
    ({"resources": {"gpus": 1.5}}, r"resources.gpus above 1 must be a whole number"),
    ({"resources": {"gpus": -1}}, r"resources.gpus must be >= 0"),
    ({"max_concurrent": 0}, r"max_concurrent must be an integer >= 1"),
    ({"overrides": ["seed=3"]}, r"overrides sets 'seed', which the sweep decides; seeds come from"),
    ({"overrides": ["trainer.output_dir=/x"]}, r"sets 'trainer.output_dir', which the sweep decides"),
    ({"overrides": ["max_steps"]}, r"must hold Hydra overrides `key=value`"),
    ({"evaluation": {"source": {"sweep": "table1"}}}, r"experiment, overrides, seeds belongs to training sweeps"),
    ({"overrides": ["+trainer.max_step=3"]}, r"overrides holds '\+trainer.max_step=3', which adds trainer.max_step, "
                                             r"a key the config does not have.*valid keys of trainer: max_steps"),
    ({"variants": {"a": ["++trainer.foo=1"]}}, r"variants.a holds '\+\+trainer.foo=1', which adds trainer.foo"),
    ({"resources": {"cpus": 1, "gpus": 0}, "seeds": [0, -1]}, r"seeds\[1\] must be an integer >= 0 \(got -1\)"),
    ({"evaluation": {"source": {"checkpoints": []}, "sets": [{"dat": 1}]}, "seeds": None, "overrides": None,
      "experiment": None}, r"(?s)unknown key\(s\) \['dat'\] in evaluation.sets\[0\]; valid keys: data, num_slots\n"
                           r"  evaluation.source.checkpoints is missing or empty"),
])
def test_bad_structure_is_refused_with_the_key_named(tmp_path, changes, message):
    body = tiny(**changes)
    body = {k: v for k, v in body.items() if v is not None}
    path = write_spec(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as error:
        load_spec(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("changes, message", [
    ({"experiment": "nope"}, r"(?s)experiment 'nope'.*options of group experiment: .*smoke"),
    ({"variants": {"a": [], "b": ["model.dual_gruu=false"]}},
     r"(?s)variant 'b' \(overrides \['trainer.max_steps=4', 'model.dual_gruu=false'\]\).*dual_gruu.*valid settings"),
    ({"axes": {"L": {"key": "model.stochastic_layer", "values": [1, 2]}}}, r"variant 'L1'.*stochastic_layer"),
    ({"variants": {"full": [], "same": ["loss.geco.enabled=false"]}},
     r"trials 'smoke/full/seed0' and 'smoke/same/seed0' have the same configuration"),
])
def test_every_trial_config_is_composed_during_validation(tmp_path, changes, message):
    spec = load_spec(write_spec(tmp_path, tiny(**changes)))
    with pytest.raises(ConfigError, match=message):
        expand(spec)


def test_cli_dry_run_prints_the_trials_and_starts_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["sweep", "quickstart", "--dry-run", "--output", str(output), "trainer.max_steps=9"]) == 0
    printed = capsys.readouterr().out
    assert "sweep quickstart (training" in printed and "4 trials (1 experiment x 2 variants x 2 seeds)" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert [row[1] for row in rows] == ["smoke/reversed_prior_pp/seed0", "smoke/reversed_prior_pp/seed1",
                                        "smoke/bottom_up_prior/seed0", "smoke/bottom_up_prior/seed1"]
    assert [row[2] for row in rows] == ["9"] * 4  # each trial's training steps
    assert [row[-1] for row in rows] == ["new"] * 4
    assert "overrides for every trial: trainer.max_steps=9" in printed
    # The cost: the smoke model is not one `emorl bench step` times, so no numbers, and it says why.
    assert "smoke/bottom_up_prior x2: no estimate: the model differs in size from the benchmarked tetrominoes" in printed
    assert f"resources: a trial (1 CPU, 0 GPU) fits this machine" in printed
    assert not output.exists()


def test_cli_dry_run_fails_as_the_launch_would(tmp_path, capsys):
    """A trial that does not fit this machine fails the dry run with the launch's message (after the
    trials and the cost are printed); so does a `++key=` override of a key the config lacks."""
    spec = write_spec(tmp_path, tiny(resources={"cpus": 64}))
    assert main(["sweep", str(spec), "--dry-run", "--num-cpus", "2", "--output", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "smoke/default/seed1" in captured.out and "cost (training steps only" in captured.out
    assert "resources.cpus=64 per trial, but this machine has 2 CPUs for Ray; lower resources.cpus" in captured.err
    assert main(["sweep", "quickstart", "--dry-run", "++trainer.max_step=3"]) == 2
    assert "command-line overrides holds '++trainer.max_step=3', which adds" in capsys.readouterr().err


@pytest.mark.parametrize("body, args, message", [
    (tiny(unknown=1), [], "unknown key(s) ['unknown']"),
    (tiny(axes={"I": {"key": "curriculum.refine_steps", "values": []}}), [], "axes.I.values is missing or empty"),
    (tiny(resources={"cpus": 64}), ["--num-cpus", "2"],
     "resources.cpus=64 per trial, but this machine has 2 CPUs for Ray"),
    (tiny(resources={"cpus": 1, "gpus": 1}), ["--num-cpus", "2", "--gpus", "0.5"],
     "resources.gpus=0.5 per trial, but this machine has 0 GPUs"),
    (tiny(), ["--cpus", "0"], "resources.cpus must be > 0"),
])
def test_cli_bad_spec_fails_before_anything_starts(tmp_path, capsys, body, args, message):
    import torch

    if "GPUs" in message and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    output = tmp_path / "out"
    spec = write_spec(tmp_path, body)
    assert main(["sweep", str(spec), "--output", str(output), *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("emorl sweep: error: ") and message in error
    assert not output.exists() and not (tmp_path / "outputs").exists()  # no folder, no MLflow database


def test_cli_refuses_to_resume_trials_with_other_settings(tmp_path, capsys):
    """A trial folder holding a run with other settings (not resumable) fails the launch up front."""
    from emorl.engine.train import train

    spec = write_spec(tmp_path, tiny(seeds=[0]))
    output = tmp_path / "out"
    (trial,) = expand(load_spec(spec), output=output).trials
    config = {**trial.config, "tracking": {**trial.config["tracking"], "backend": "none"}}
    config["trainer"] = {**config["trainer"], "max_steps": 2, "checkpoint_every": 1}
    train(config)  # the trial's folder now holds a run of the spec's settings
    assert main(["sweep", str(spec), "--output", str(output), "--num-cpus", "1", "model.latent_dim=8"]) == 2
    error = capsys.readouterr().err
    assert "smoke/default/seed0: model.latent_dim" in error and "--restart to start the sweep over" in error
    assert not (output / "sweep.json").exists()  # nothing started
