"""The trainer: every shipped experiment trains a step, bad config, resume, NaN, tracking."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from emorl.config import compose
from emorl.engine import checkpoint as ckpt
from emorl.engine.train import Trainer, TrainingHooks, train
from emorl.errors import ConfigError, EmorlError, TrainingError

TINY = ["model.latent_dim=8", "model.encoder_channels=16", "trainer.progress=false"]


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke experiment's data, generated once for the session."""
    from emorl.data.generate.common import generate

    return generate("tetrominoes", tmp_path_factory.mktemp("data") / "smoke.h5", seed=0,
                    sizes={"train": 32, "test": 8}, workers=1, progress=False)


def smoke(tmp_path: Path, data: Path, *overrides: str):
    return compose(["experiment=smoke", f"data.path={data}", "data.batch_size=4", "trainer.eval_images=4",
                    "trainer.eval_batch_size=4", f"trainer.output_dir={tmp_path / 'run'}", *TINY, *overrides])


EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "emorl" / "conf" / "experiment").glob("*.yaml"))


def test_the_paper_settings_and_baselines_are_shipped():
    assert {"tetrominoes", "multi_dsprites", "clevr6", "smoke", "emorl_xs_clevr6", "iodine_clevr6",
            "slot_attention_clevr6", "slot_mlp_clevr6"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_composes_and_trains_one_step(tmp_path, experiment):
    cfg = compose([f"experiment={experiment}", "data.train_size=1", "data.test_size=1", "data.batch_size=1",
                   "trainer.max_steps=1", "trainer.eval_images=1", "trainer.eval_batch_size=1",
                   "tracking.backend=none", "trainer.progress=false", f"trainer.output_dir={tmp_path / 'run'}"])
    result = train(cfg)
    assert result.step == 1
    assert set(result.metrics) == {"test/fg_ari", "test/mse", "test/kl", "test/nll"}
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    state = ckpt.load(result.checkpoint)
    assert state["step"] == 1 and state["finished"] and state["config"]["name"] == experiment
    assert any(v.abs().sum() > 0 for v in state["optimizer"]["state"][0].values() if torch.is_tensor(v))


def test_paper_settings_carry_the_paper_hyperparameters():
    tetrominoes = compose(["experiment=tetrominoes"])
    assert (tetrominoes.model.num_slots, tetrominoes.model.latent_dim, tetrominoes.model.stochastic_layers) == (4, 32, 3)
    assert tetrominoes.model.decoder == "broadcast_light" and tetrominoes.model.sigma == 0.3
    assert tetrominoes.loss.geco.enabled and tetrominoes.loss.geco.target == -4500
    assert tetrominoes.curriculum.refine_steps == 3 and list(tetrominoes.curriculum.milestones) == []
    clevr = compose(["experiment=clevr6"])
    assert (clevr.model.num_slots, clevr.model.latent_dim, clevr.model.image_size) == (7, 64, 96)
    assert clevr.model.likelihood == "mixture" and clevr.loss.geco.target == -61000
    assert list(clevr.curriculum.milestones) == [100000] and list(clevr.curriculum.milestone_refine_steps) == [1]
    assert clevr.curriculum.test_refine_steps == 1 and clevr.trainer.max_steps == 300000
    sprites = compose(["experiment=multi_dsprites"])
    assert sprites.model.num_slots == 6 and not sprites.loss.geco.enabled and sprites.model.likelihood == "gaussian"
    for cfg in (tetrominoes, clevr, sprites):
        assert cfg.optim.lr == 4e-4 and cfg.optim.grad_clip_norm == 5.0 and cfg.data.batch_size == 32
        assert cfg.optim.warmup_steps == 10000 and cfg.model.prior == "reversed++" and cfg.model.dual_gru


def test_the_recipes_set_every_switch_where_the_paper_and_the_authors_code_differ():
    """recipe=authors: the authors' code's choice for every difference (docs/model.md, "Two recipes"),
    with their parameter counts; recipe=paper (what the experiments choose): the paper's text, and
    the defaults of the model and trainer."""
    from emorl.models import build_model
    from emorl.models.emorl import EMORLConfig, count_parameters

    switches = {"model.init": ("pytorch", "authors"), "model.step_weighting": ("paper", "authors"),
                "model.refine_grad_norm_affine": (True, False), "model.variance_formula": ("paper", "authors"),
                "model.bottom_up_refinement_prior": ("conditional", "standard"),
                "model.bottom_up_prior_sample": ("query", "fresh"),
                "loss.geco.zeta_at_first_update": (True, False), "optim.warmup_from_zero": (False, True),
                "evaluate.refine_objective": ("training", "training")}
    defaults = EMORLConfig()
    for experiment, parameters in (("tetrominoes", (467_364, 467_236)), ("clevr6", (666_756, 666_500))):
        for index, recipe in enumerate(("paper", "authors")):
            cfg = compose([f"experiment={experiment}", f"recipe={recipe}"])
            assert cfg.recipe == recipe
            for key, values in switches.items():
                assert OmegaConf.select(cfg, key) == values[index], (recipe, key)
                if recipe == "paper" and key.startswith("model."):
                    assert getattr(defaults, key.split(".")[1]) == values[0], key
            model = build_model(OmegaConf.to_container(cfg.model, resolve=True))
            assert count_parameters(model) == parameters[index], (experiment, recipe)
        assert compose([f"experiment={experiment}"]).recipe == "paper"
    with pytest.raises(ConfigError, match="recipe=authors sets EfficientMORL's switches; model 'iodine'"):
        compose(["experiment=iodine_tetrominoes", "recipe=authors"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["experiment=tetrominos"], "options of group experiment: clevr6, .*, smoke, tetrominoes"),
        (["trainer.max_step=3"], "valid keys of trainer: .*max_steps"),
        (["model.latent=3"], "valid settings of model 'efficient_morl': .*latent_dim"),
        (["trainer.max_steps=many"], "could not be converted to Integer"),
        (["model.prior=upward"], r"model.prior='upward' is not allowed; choose one of \['bottom_up'"),
        (["trainer.precision=fp8"], r"trainer.precision='fp8' is not one of \['fp32', 'tf32', 'bf16'\]"),
        (["prior=sideways"], "options of group prior: bottom_up, reversed, reversed_pp"),
        (["+trainer.max_step=3"], r"'\+trainer.max_step=3' adds trainer.max_step, a key the config does not have"
                                  r".*; valid keys of trainer: max_steps"),
        (["++seeds=3"], r"'\+\+seeds=3' adds seeds, .*; valid top-level keys: name, variant, seed,"),
    ],
)
def test_bad_configuration_fails_at_start_with_the_valid_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_plus_overrides_may_add_keys_only_where_the_schema_has_room(capsys):
    """Hydra lets `+key=`/`++key=` add a key the schema lacks; we refuse that (a typo would be taken
    silently) except for a config group, the model's settings (its own schema checks them) and a free
    mapping (tracking.tags). `emorl train` says so and exits 2 before anything starts."""
    from emorl.cli import main
    from emorl.config import unknown_added_key

    for allowed in ("++trainer.max_steps=5", "+tracking.tags.team=a", "++model.dual_gru=false", "+experiment=smoke",
                    "trainer.max_step=3"):
        assert unknown_added_key(allowed) is None, allowed
    assert "valid keys of loss.geco: enabled" in unknown_added_key("++loss.geco.enable=true")
    assert main(["train", "experiment=smoke", "+trainer.foo=1"]) == 2
    assert "'+trainer.foo=1' adds trainer.foo, a key the config does not have" in capsys.readouterr().err


def final_parameters(result) -> dict[str, torch.Tensor]:
    return ckpt.load(result.checkpoint)["model"]


def assert_same_final_parameters(first, second) -> None:
    """The two runs' final checkpoints hold bit-for-bit equal parameters."""
    a, b = final_parameters(first), final_parameters(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), [key for key in a if not torch.equal(a[key], b[key])]


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, smoke_data):
    common = ["loss=geco", "loss.geco.target=-3000", "loss.geco.warm_start=2", "trainer.checkpoint_every=3",
              "trainer.eval_every=3", "tracking.backend=none"]
    uninterrupted = train(smoke(tmp_path / "a", smoke_data, *common, "trainer.max_steps=7"))
    first_part = train(smoke(tmp_path / "b", smoke_data, *common, "trainer.max_steps=3"))
    assert first_part.step == 3
    resumed = train(smoke(tmp_path / "b", smoke_data, *common, "trainer.max_steps=7"))
    assert resumed.step == 7
    assert_same_final_parameters(uninterrupted, resumed)
    state_a, state_b = ckpt.load(uninterrupted.checkpoint), ckpt.load(resumed.checkpoint)
    assert state_a["geco"] == state_b["geco"] and state_a["geco"]["c_ema"] is not None
    assert uninterrupted.metrics == resumed.metrics
    # A finished run is not trained again.
    again = train(smoke(tmp_path / "b", smoke_data, *common, "trainer.max_steps=7"))
    assert again.step == 7 and again.metrics == resumed.metrics


def test_a_run_interrupted_mid_way_resumes_to_the_parameters_of_an_uninterrupted_run(tmp_path, smoke_data):
    """Ctrl-C at step 5, two steps after the last checkpoint, with 2 data-loader workers; the same
    command again continues from step 3 and ends bit for bit where an uninterrupted run ends."""
    common = ["loss=geco", "loss.geco.target=-3000", "loss.geco.warm_start=2", "trainer.checkpoint_every=3",
              "trainer.log_every=1", "trainer.max_steps=7", "data.num_workers=2", "tracking.backend=none"]
    uninterrupted = train(smoke(tmp_path / "a", smoke_data, *common))

    class CtrlC(TrainingHooks):
        def on_log(self, step, metrics):
            if step == 5:
                raise KeyboardInterrupt

    cfg = smoke(tmp_path / "b", smoke_data, *common)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, CtrlC()).run()
    left = ckpt.load(tmp_path / "b" / "run" / "checkpoints" / "last.pt")
    assert left["step"] == 3 and not left["finished"]
    resumed = train(cfg)
    assert resumed.step == 7
    assert_same_final_parameters(uninterrupted, resumed)
    assert ckpt.load(uninterrupted.checkpoint)["geco"] == ckpt.load(resumed.checkpoint)["geco"]


def test_resuming_with_different_settings_is_refused(tmp_path, smoke_data):
    train(smoke(tmp_path, smoke_data, "trainer.max_steps=2", "tracking.backend=none"))
    with pytest.raises(EmorlError, match=r"configuration differs in \['model.latent_dim'\]"):
        train(smoke(tmp_path, smoke_data, "trainer.max_steps=4", "tracking.backend=none", "model.latent_dim=12"))


def poison_loss_at_call(monkeypatch, call: int) -> None:
    """Make the loss of the ``call``-th training step (1-based) NaN, as a diverging run's would be."""
    from emorl.models.emorl import EfficientMORL

    original = EfficientMORL.forward_backward  # the trainer's training step
    calls = {"n": 0}

    def forward_backward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == call:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(EfficientMORL, "forward_backward", forward_backward)


def test_a_nan_loss_stops_with_the_step_and_terms_and_keeps_the_last_checkpoint(tmp_path, smoke_data, monkeypatch):
    poison_loss_at_call(monkeypatch, 5)  # training step 4 (0-based)
    cfg = smoke(tmp_path, smoke_data, "trainer.max_steps=10", "trainer.checkpoint_every=2", "trainer.eval_every=100")
    with pytest.raises(TrainingError, match=r"at training step 4: .*loss=nan.*nll=.*last good checkpoint .*last.pt"):
        train(cfg)
    state = ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 4 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The run is marked failed in MLflow, with the message.
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"]
    assert "training step 4" in runs["tags.emorl.failure"].iloc[0]


def test_tracking_records_params_metrics_tags_and_artifacts(tmp_path, smoke_data):
    import mlflow
    from mlflow.tracking import MlflowClient

    result = train(smoke(tmp_path, smoke_data, "trainer.max_steps=4", "variant=ablation_x", "seed=5"))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "smoke/ablation_x/seed5"
    tags = run.data.tags
    assert tags["emorl.experiment"] == "smoke" and tags["emorl.variant"] == "ablation_x" and tags["emorl.seed"] == "5"
    assert len(tags["emorl.dataset_hash"]) == 16 and tags["emorl.run_kind"] == "training"
    # MLflow's own columns: user, source, commit, description; the setting's id without the seed
    assert tags["mlflow.user"] and tags["mlflow.source.name"] == "emorl train"
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert "smoke" in tags["mlflow.note.content"] and "seed 5" in tags["mlflow.note.content"]
    from emorl.config import flatten
    from emorl.engine import checkpoint as ckpt_module
    from emorl.vocabulary import setting_id

    config = ckpt_module.load(result.checkpoint)["config"]
    assert tags["emorl.setting_id"] == setting_id(flatten(config)) == setting_id(run.data.params)
    assert tags["emorl.setting_id"] == setting_id(flatten({**config, "seed": 6, "tracking": {}}))
    assert tags["emorl.setting_id"] != setting_id(flatten({**config, "optim": {**config["optim"], "lr": 1e-3}}))
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    assert run.data.params["model.latent_dim"] == "8" and run.data.params["optim.lr"] == "0.0004"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4]
    for key in ("train/nll_step0", "train/kl_layer1", "train/kl_layer2", "train/update_norm_step1", "train/lr",
                "train/refine_steps", "train/steps_per_sec", "test/fg_ari", "test/mse", "test/kl"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "images", "checkpoints"} <= artifacts
    images = [a.path for a in client.list_artifacts(result.run_id, "images") if a.path.endswith(".png")]
    evaluated = sorted(m.step for m in client.get_metric_history(result.run_id, "test/fg_ari"))
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == evaluated  # log_image per step
    assert all(p.startswith("images/decomposition+") for p in images)
    assert mlflow.search_runs(search_all_experiments=True).shape[0] == 1


def test_the_geco_switch(tmp_path, smoke_data, capsys):
    """loss=elbo: every step's loss is NLL + KL and no GECO state exists; loss=geco: after its warm start
    the loss is GECO's, zeta moves and is tracked, and an unreachable target is warned about and tagged."""
    from mlflow.tracking import MlflowClient

    elbo = []
    geco = []

    class Recorder(TrainingHooks):
        def __init__(self, into):
            self.into = into

        def on_log(self, step, metrics):
            self.into.append(metrics)

    common = ["trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=100"]
    result = Trainer(smoke(tmp_path / "elbo", smoke_data, *common, "loss=elbo", "tracking.backend=none"),
                     Recorder(elbo)).run()
    assert ckpt.load(result.checkpoint)["geco"] is None and not any("geco" in k for k in elbo[-1])
    for metrics in elbo:
        for i in (0, 1):  # smoke: I = 1
            assert metrics[f"train/loss_step{i}"] == pytest.approx(
                metrics[f"train/nll_step{i}"] + metrics[f"train/kl_step{i}"], rel=1e-5)
    capsys.readouterr()

    result = Trainer(smoke(tmp_path / "geco", smoke_data, *common, "loss=geco", "loss.geco.target=-4500",
                           "loss.geco.warm_start=2"), Recorder(geco)).run()
    assert "emorl: warning: GECO target C=-4500" in capsys.readouterr().err
    assert "-4500" in MlflowClient().get_run(result.run_id).data.tags["emorl.geco_warning"]
    zeta = [m["train/geco_zeta"] for m in geco]
    assert zeta[0] == zeta[1] and zeta[3] > zeta[2] > zeta[1]  # unreachable target: zeta only grows
    state = ckpt.load(result.checkpoint)["geco"]
    assert state["zeta"] == pytest.approx(zeta[-1])
    warm, after = geco[0], geco[-1]  # the warm start is the plain ELBO, then GECO's Lagrangian
    assert warm["train/loss_step0"] == pytest.approx(warm["train/nll_step0"] + warm["train/kl_step0"], rel=1e-5)
    assert after["train/loss_step0"] != pytest.approx(after["train/nll_step0"] + after["train/kl_step0"], rel=1e-3)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_units_is_warned_about(tmp_path, smoke_data, capsys, monkeypatch, native):
    import emorl.engine.precision as precision_module

    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    train(smoke(tmp_path, smoke_data, "trainer.max_steps=1", "trainer.precision=bf16", "trainer.device=cpu",
                "tracking.backend=none"))
    warned = "trainer.precision=bf16 on a CPU without AVX512_BF16 or AMX" in capsys.readouterr().err
    assert warned == (not native)


def test_fp32_is_ieee_on_every_backend_and_tf32_is_asked_for(tmp_path, smoke_data, capsys, float32_flags):
    """PyTorch lets cuDNN convolutions use TF32 by default; trainer.precision=fp32 turns that off
    (the GPU computes what the CPU does), tf32 turns it on for matrix products too and is warned
    about off CUDA."""
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default
    train(smoke(tmp_path / "fp32", smoke_data, "trainer.max_steps=1", "trainer.device=cpu", "tracking.backend=none"))
    assert float32_flags() == ["ieee", "ieee", "ieee"]
    assert "tf32" not in capsys.readouterr().err
    result = train(smoke(tmp_path / "tf32", smoke_data, "trainer.max_steps=1", "trainer.precision=tf32",
                         "trainer.device=cpu", "tracking.backend=none"))
    assert float32_flags() == ["tf32", "tf32", "tf32"]
    assert "trainer.precision=tf32 is a CUDA precision; on cpu this run computes IEEE fp32" in capsys.readouterr().err
    assert result.step == 1


def test_hooks_hear_evaluations_and_checkpoints(tmp_path, smoke_data):
    events = []

    class Recorder(TrainingHooks):
        def on_evaluation(self, step, metrics):
            events.append(("eval", step, sorted(metrics)))

        def on_checkpoint(self, step, path, metrics):
            events.append(("checkpoint", step, Path(path).name))

    Trainer(smoke(tmp_path, smoke_data, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2",
                  "tracking.backend=none"), Recorder()).run()
    metric_names = ["test/fg_ari", "test/kl", "test/mse", "test/nll"]
    assert events == [("eval", 2, metric_names), ("checkpoint", 2, "last.pt"), ("eval", 4, metric_names),
                      ("checkpoint", 4, "last.pt")]


def test_a_finished_run_whose_mlflow_run_was_not_ended_is_ended_on_rerun(tmp_path, smoke_data):
    """A process that died between the final checkpoint and ending its MLflow run leaves it RUNNING;
    running the same command again ends it (and trains nothing)."""
    import json

    from mlflow.tracking import MlflowClient

    cfg = smoke(tmp_path, smoke_data, "trainer.max_steps=2")
    first = train(cfg)
    spool = first.output_dir / "tracking" / "spool.jsonl"
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    assert records[-1]["op"] == "end"
    spool.write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))  # as if killed before ending it
    client = MlflowClient()
    client.update_run(first.run_id, status="RUNNING")
    again = train(cfg)
    assert again.step == 2 and again.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(first.run_id).info.experiment_id])) == 1


@pytest.mark.slow
def test_compiled_and_channels_last_training_agree_with_the_plain_run(tmp_path, smoke_data):
    """trainer.compile and trainer.channels_last change how, not what: same losses to float tolerance."""
    common = ["trainer.max_steps=2", "tracking.backend=none", "trainer.eval_every=100"]
    plain = train(smoke(tmp_path / "plain", smoke_data, *common, "trainer.channels_last=false"))
    fast = train(smoke(tmp_path / "fast", smoke_data, *common, "trainer.channels_last=true", "trainer.compile=true"))
    a, b = final_parameters(plain), final_parameters(fast)
    # Two coordinates the loss does not depend on (a constant added to every slot before a softmax
    # over slots): the mask logits' bias and the query LayerNorm's bias. Their gradients are float
    # rounding, which Adam scales to steps of ~lr; everywhere else the runs agree.
    invariant = {"decoder.output_layer.bias": [3], "bottom_up.query_norm.bias": slice(None)}
    for key in a:
        keep = torch.ones_like(a[key], dtype=torch.bool)
        if key in invariant:
            keep[invariant[key]] = False
            assert (b[key] - a[key]).abs().max() <= 2 * 2 * 4e-4  # at most two Adam steps of lr each
        torch.testing.assert_close(b[key][keep], a[key][keep], rtol=1e-4, atol=2e-5)  # Adam steps are ~lr = 4e-4
    for key in plain.metrics:
        assert plain.metrics[key] == pytest.approx(fast.metrics[key], rel=1e-3, abs=1e-4)


def test_evaluation_refines_with_the_training_objective_as_the_authors_evaluate(tmp_path, smoke_data):
    """With GECO on, the trainer's evaluation and `emorl evaluate` feed the refinement network the
    gradients of GECO's objective with the run's zeta (evaluate.refine_objective=training, the
    default): the same metrics; with the plain ELBO's gradients they differ (zeta >> 0 here)."""
    from emorl.engine.evaluate import evaluation_objective
    from emorl.engine.evaluation_run import run_evaluation
    from emorl.geco import GECOObjective

    cfg = smoke(tmp_path, smoke_data, "trainer.max_steps=4", "tracking.backend=none", "loss=geco",
                "loss.geco.target=-4500", "loss.geco.warm_start=1", "loss.geco.step_size=0.05")
    result = train(cfg)
    state = ckpt.load(result.checkpoint)
    assert state["geco"]["zeta"] > 3  # softplus(zeta) > 3: GECO's gradients are far from the ELBO's
    objective = evaluation_objective(state["config"], state["geco"], state["step"], torch.device("cpu"))
    assert isinstance(objective, GECOObjective) and float(objective.nll_weight) > 3
    common = dict(num_images=4, batch_size=4, device="cpu", no_tracking=True)
    training = run_evaluation(result.checkpoint, **common)
    for name in ("fg_ari", "mse", "kl", "nll"):
        assert training[f"eval/tetrominoes/I1/{name}"] == pytest.approx(result.metrics[f"test/{name}"], rel=1e-5)
    elbo = run_evaluation(result.checkpoint, refine_objective="elbo", **common)
    # (barely trained, the refinement network moves the posterior little either way; the difference is
    # far above float rounding all the same)
    assert abs(elbo["eval/tetrominoes/I1/kl"] - training["eval/tetrominoes/I1/kl"]) > 1e-5 * training[
        "eval/tetrominoes/I1/kl"]
    old = {key: value for key, value in state["config"].items() if key != "evaluate"}  # before the setting
    assert evaluation_objective(old, state["geco"], state["step"], torch.device("cpu")) is None
