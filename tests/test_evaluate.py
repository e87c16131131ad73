"""`emorl evaluate` as a user runs it: the printed table, the metrics logged into the training run or a
new one, another K and another test set, DCI and activeness, and bad arguments."""

from __future__ import annotations

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from emorl.cli import main
from emorl.config import compose
from emorl.data.generate.common import generate
from emorl.engine.train import train

pytestmark = pytest.mark.slow
METRICS = ("fg_ari", "mse", "kl", "nll")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_database_template):
    """A smoke run of 4 steps tracked in a sqlite store of its own, and a second test file. 128 test
    images: an untrained model's slots match few objects (matches under IoU 0.1 are dropped), and DCI
    needs a few dozen."""
    import shutil

    folder = tmp_path_factory.mktemp("evaluate")
    shutil.copy(mlflow_database_template, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    data = generate("tetrominoes", folder / "train.h5", seed=0, sizes={"train": 32, "test": 128}, workers=1,
                    progress=False)
    other = generate("tetrominoes", folder / "other_tetrominoes.h5", seed=7, sizes={"train": 0, "test": 16}, workers=1,
                     progress=False)
    cfg = compose(["experiment=smoke", f"data.path={data}", "trainer.max_steps=4", "trainer.eval_images=16",
                   "trainer.progress=false", "trainer.device=cpu", f"tracking.uri={uri}",
                   f"trainer.output_dir={folder / 'run'}"])
    result = train(cfg)
    return uri, result, other


def printed_table(text: str) -> dict[int, dict[str, float]]:
    """The rows of the table `emorl evaluate` prints: {I: {metric: value}}."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\s*(\d+)\s+" + r"\s+".join([r"(\S+)"] * len(METRICS)), line)
        if match:
            rows[int(match.group(1))] = dict(zip(METRICS, map(float, match.groups()[1:])))
    return rows


def test_evaluate_prints_the_table_and_logs_an_evaluation_run_of_its_own(trained, capsys):
    uri, result, _ = trained
    client = MlflowClient(uri)
    before = client.get_run(result.run_id)
    code = main(["evaluate", str(result.checkpoint), "--refine-steps", "0,1,3", "--images", "16",
                 "--batch-size", "8", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{result.checkpoint}: tetrominoes (16 images, K=4)" in out
    evaluation_id = re.search(r"logged 12 metrics to the evaluation run (\w+)", out).group(1)
    rows = printed_table(out)
    assert sorted(rows) == [0, 1, 3]
    after = client.get_run(result.run_id)  # the finished training run is not written into
    assert after.data.metrics == before.data.metrics and after.info.end_time == before.info.end_time
    run = client.get_run(evaluation_id)
    assert run.info.status == "FINISHED" and run.data.tags["emorl.evaluation_of"] == result.run_id
    assert run.data.tags["mlflow.parentRunId"] == result.run_id and run.data.tags["emorl.run_kind"] == "evaluation"
    assert run.data.tags["emorl.setting_id"] == before.data.tags["emorl.setting_id"]
    for i, values in rows.items():
        for name, value in values.items():  # the table shows 5 significant digits of what was logged
            assert run.data.metrics[f"eval/tetrominoes/I{i}/{name}"] == pytest.approx(value, rel=1e-4, abs=1e-9)
    # refinement lowers the KL of the posterior it refines only on average; the three must differ
    assert len({rows[i]["kl"] for i in rows}) == 3
    saved = json.loads((result.output_dir / "evaluation" / "tetrominoes" / "metrics.json").read_text())
    assert saved == {k: v for k, v in run.data.metrics.items() if k.startswith("eval/tetrominoes/")}


def test_evaluate_repeats_the_trainers_final_evaluation(trained, capsys):
    """At the setting's test I, on the trainer's 16 evaluation images in its batches, with the same seed."""
    _, result, _ = trained
    assert main(["evaluate", str(result.checkpoint), "--images", "16", "--batch-size", "16", "--no-tracking"]) == 0
    (row,) = printed_table(capsys.readouterr().out).values()
    for name in METRICS:
        assert row[name] == pytest.approx(result.metrics[f"test/{name}"], rel=1e-4, abs=1e-9), name


def test_evaluate_with_another_k_and_test_set_into_a_run_of_its_own(trained, capsys):
    uri, result, other = trained
    assert main(["evaluate", str(result.checkpoint), "--num-slots", "6", "--data-path", str(other), "--images", "16",
                 "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "other_tetrominoes_K6 (16 images, K=6)" in out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                f"tags.`emorl.evaluation_of` = '{result.run_id}' and "
                                "tags.`emorl.evaluation_set` = 'other_tetrominoes_K6'")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == result.run_id
    assert run.data.tags["emorl.run_kind"] == "evaluation"
    assert set(run.data.metrics) == {f"eval/other_tetrominoes_K6/I1/{m}" for m in METRICS}
    assert not any("K6" in key for key in client.get_run(result.run_id).data.metrics)  # the training run untouched


def test_evaluate_dci_and_activeness(trained, capsys):
    uri, result, _ = trained
    assert main(["evaluate", str(result.checkpoint), "--metrics", "dci", "--images", "128", "--tracking-uri", uri]) == 0
    # activeness decodes images x D x 6 slot sets: 16 images keep it short
    assert main(["evaluate", str(result.checkpoint), "--metrics", "activeness", "--images", "16",
                 "--tracking-uri", uri]) == 0
    capsys.readouterr()
    client = MlflowClient(uri)
    evaluations = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                     f"tags.`emorl.evaluation_of` = '{result.run_id}'")
    metrics = {k: v for run in evaluations for k, v in run.data.metrics.items()}
    for name in ("disentanglement", "completeness", "informativeness", "informativeness_train"):
        assert 0.0 <= metrics[f"dci/tetrominoes/{name}"] <= 1.0, name
    # 128 images x 3 pieces of 100 pixels (over the 50-pixel floor); matches under IoU 0.1 are dropped
    assert 4 <= metrics["dci/tetrominoes/matched_objects"] <= 3 * 128
    assert 0 <= metrics["activeness/tetrominoes/active_dims"] <= 16  # D = 16
    folder = result.output_dir / "evaluation" / "tetrominoes"
    importance = json.loads((folder / "dci_importance.json").read_text())
    assert importance["factors"] == ["x", "y", "shape", "color_r", "color_g", "color_b"]  # not visibility
    assert len(importance["importance"]) == 16 and all(len(row) == len(importance["factors"])
                                                       for row in importance["importance"])
    logged = {a.path for run in evaluations for a in client.list_artifacts(run.info.run_id, "evaluation/tetrominoes")}
    assert {"evaluation/tetrominoes/dci_importance.json", "evaluation/tetrominoes/activeness.npy"} <= logged


@pytest.mark.parametrize("args, message", [
    (["--metrics", "ari,fid"], "--metrics: unknown ['fid']; choose from ari, dci, activeness"),
    (["--data-path", "/nonexistent/file.h5"], "/nonexistent/file.h5"),
])
def test_evaluate_bad_arguments_fail_clearly(trained, capsys, args, message):
    _, result, _ = trained
    assert main(["evaluate", str(result.checkpoint), "--no-tracking", *args]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_a_missing_checkpoint_says_so(tmp_path, capsys):
    missing = tmp_path / "run" / "checkpoints" / "last.pt"
    assert main(["evaluate", str(missing), "--no-tracking"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not missing.parent.exists()  # nothing was written beside the missing file
