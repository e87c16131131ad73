"""`emorl report` end to end: a tiny real training run (a real checkpoint artifact), `emorl evaluate`,
then the report folder through emorl.cli.main, logged to the sweep's parent run."""

import shutil

import pytest
from mlflow.tracking import MlflowClient

from analysis import figures
from analysis.collect import RunSelection, collect_runs
from analysis.examples import emorl_tags, log_run
from analysis.settings import setting_params
from emorl.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_database_template):
    """A sweep parent run and one smoke run (2 steps) under it, evaluated at I = 0, 1 with activeness."""
    from emorl.config import compose
    from emorl.engine.evaluation_run import run_evaluation
    from emorl.engine.train import train
    from emorl.tracking import default_artifact_root, ensure_experiment

    folder = tmp_path_factory.mktemp("report")
    shutil.copy(mlflow_database_template, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "emorl", default_artifact_root(uri))
    parent = log_run(client, experiment, tags={"emorl.sweep": "e2e"}, run_name="sweep e2e", status="RUNNING")
    cfg = compose(["experiment=smoke", "trainer.max_steps=2", "trainer.progress=false", "trainer.device=cpu",
                   f"tracking.uri={uri}", f"tracking.parent_run_id={parent}", f"trainer.output_dir={folder / 'run'}"])
    result = train(cfg)
    client.set_tag(result.run_id, "emorl.sweep", "e2e")  # what a sweep's trial carries
    run_evaluation(result.checkpoint, refine_steps=[0, 1], metrics=["ari", "activeness"], num_images=16,
                   device="cpu", tracking_uri=uri)
    return uri, parent, result.run_id


@pytest.mark.slow
def test_emorl_report_writes_the_folder_and_logs_it_to_the_parent_run(trained, tmp_path, capsys):
    uri, parent, run_id = trained
    out = tmp_path / "report"
    code = main(["report", "--sweep", "e2e", "--tracking-uri", uri, "--out", str(out), "--traversal-images", "16"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"report of 1 runs (1 flagged) written to {out}" in printed  # 2 steps: fg ARI far below 0.5
    assert "not drawn: Fig. 3: Fig. 3 needs train/loss histories of runs that differ only in training I" in printed
    assert f"logged to MLflow run {parent} under report/" in printed
    for name in ("README.md", "index.html", "runs.csv", "tables/table1.md", "tables/table2.tex", "tables/table3.csv",
                 "figures/fig4_kl_update_norms.png", "figures/fig7_test_time_refinement.pdf",
                 "figures/fig9_activeness.png", f"figures/runs/decomposition_{run_id[:8]}.png",
                 f"figures/runs/traversal_{run_id[:8]}.png", f"figures/runs/traversal_{run_id[:8]}.pdf"):
        assert (out / name).stat().st_size > 500, name
    page = (out / "index.html").read_text()  # self-contained: every image embedded, none linked
    import base64

    for png in out.rglob("*.png"):
        assert f'src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' in page, png
    assert '<img src="figures/' not in page
    readme = (out / "README.md").read_text()
    assert "1 runs (1 FINISHED); 1 flagged as failed" in readme
    assert "collapsed: test/fg_ari = " in readme
    assert "| smoke | default | efficient_morl | tetrominoes | e2e |" in readme
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert {"report/index.html", "report/README.md", "report/tables", "report/figures"} <= logged
    assert collect_runs(RunSelection(sweep="e2e"), uri)["run_id"].tolist() == [run_id]


@pytest.mark.slow
def test_decomposition_and_traversal_from_the_checkpoint_artifact(trained, tmp_path):
    uri, _, run_id = trained
    run = collect_runs(RunSelection(run_ids=[run_id]), uri).iloc[0]
    loaded = figures.load_run(run, uri)
    decomposition = figures.decomposition(run, uri, tmp_path, num_images=16, loaded=loaded)
    # The same model, images and random state as the run's final evaluation (16 images, I = 1); float32
    # arithmetic, whose last bits may differ between the two passes (another random state would not be close).
    assert decomposition.data["mse"].mean() == pytest.approx(run["test/mse"], rel=1e-6)
    assert decomposition.data["fg_ari"].mean() == pytest.approx(run["test/fg_ari"], abs=1e-6)  # float32 means
    assert decomposition.paths[0].stat().st_size > 5_000
    traversal = figures.latent_traversal(run, uri, tmp_path, num_images=16, num_dims=4, num_values=5, loaded=loaded)
    data = traversal.data
    assert len(data) == 16 and data["shown"].sum() == 4 and 0 <= data["slot"].iloc[0] < 4  # D = 16, K = 4
    assert (data["low"] <= data["high"]).all()
    assert data.loc[data["shown"], "variance"].min() >= data.loc[~data["shown"], "variance"].max()
    assert all(path.stat().st_size > 5_000 for path in traversal.paths)


def test_report_run_when_there_is_no_parent_and_clear_errors(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the empty store the conftest made
    client = MlflowClient(uri)
    experiment = client.create_experiment("plain", artifact_location=(tmp_path / "artifacts").as_uri())
    for seed in (0, 1):
        log_run(client, experiment, tags=emorl_tags("tetrominoes", "default", seed),
                params={**setting_params("tetrominoes"), "seed": seed}, metrics={"test/fg_ari": 0.9})
    out = tmp_path / "report"
    assert main(["report", "--experiment", "plain", "--tracking-uri", uri, "--out", str(out),
                 "--no-checkpoint-figures"]) == 0
    assert "| EfficientMORL | Tetrominoes | 98.2 ± 1.8 (n=5) | 90.0 ± 0.0 (n=2) | [90.0, 90.0] | 2 (0) |" in (
        out / "tables" / "table1.md").read_text()
    reports = client.search_runs([experiment], "tags.`emorl.report` = 'experiment=plain'")
    assert len(reports) == 1 and "report/index.html" in {
        a.path for a in client.list_artifacts(reports[0].info.run_id, "report")}
    assert len(collect_runs(RunSelection(experiment="plain"), uri)) == 2  # the report run is not a trial
    capsys.readouterr()
    assert main(["report", "--tracking-uri", uri]) == 2
    assert "say which runs to report" in capsys.readouterr().err
    assert main(["report", "--sweep", "nothing", "--tracking-uri", uri, "--no-log"]) == 2
    assert "no runs match sweep=nothing" in capsys.readouterr().err
    # An evaluation sweep's runs are runs of their own; selecting the sweep reports the runs they evaluated.
    trained = collect_runs(RunSelection(experiment="plain"), uri)["run_id"].iloc[0]
    log_run(client, experiment, tags={"emorl.sweep": "fig7", "emorl.run_kind": "evaluation",
                                      "emorl.evaluation_of": trained}, metrics={"eval/more/I1/fg_ari": 0.5})
    chosen = collect_runs(RunSelection(sweep="fig7"), uri)
    assert list(chosen["run_id"]) == [trained] and chosen["eval/more/I1/fg_ari"].iloc[0] == 0.5
    assert main(["report", "--tag", "variant", "--tracking-uri", uri]) == 2
    assert "expected key=value" in capsys.readouterr().err
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "stale.png").write_bytes(b"old")  # a second report replaces the first one's figures
    assert main(["report", "--experiment", "plain", "--tracking-uri", uri, "--out", str(out), "--no-log",
                 "--no-checkpoint-figures"]) == 0
    assert not (out / "figures" / "stale.png").exists() and (out / "tables" / "table1.md").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["report", "--experiment", "plain", "--tracking-uri", uri, "--out", str(tmp_path / "mine")]) == 2
    assert "is not empty and holds no emorl report" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_tables_and_every_figure_from_one_store(tmp_path, mlflow_database_template, capsys):
    """The synthetic study (75 runs shaped like the paper's experiments) in one MLflow store: `emorl
    report` draws Tables 1-3 and every summary figure from it, nothing left undrawn."""
    from analysis.examples import log_synthetic_study

    shutil.copy(mlflow_database_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_synthetic_study(uri, tmp_path / "work")
    out = tmp_path / "report"
    assert main(["report", "--experiment", "synthetic-example", "--tracking-uri", uri, "--out", str(out),
                 "--no-checkpoint-figures"]) == 0
    printed = capsys.readouterr().out
    assert f"report of 75 runs (1 flagged) written to {out}" in printed and "not drawn" not in printed
    for name in ("fig3_training_loss", "fig4_kl_update_norms", "fig7_test_time_refinement",
                 "fig8_stochastic_layers", "fig9_activeness"):
        for suffix in (".png", ".pdf"):
            assert (out / "figures" / f"{name}{suffix}").stat().st_size > 10_000, name
    table1 = (out / "tables" / "table1.md").read_text()
    assert "| EfficientMORL | Tetrominoes | 98.2 ± 1.8 (n=5) |" in table1  # the paper's number beside ours
    assert "| Slot Attention (without flagged runs) | CLEVR6 | 98.8 ± 0.3 (n=5) |" in table1
    table2 = (out / "tables" / "table2.md").read_text()
    assert all(row in table2 for row in ("w/out DualGRU", "w/out GECO"))
    assert table2.count("(n=5)") >= 6  # ours beside the paper's, five seeds per CLEVR6 ablation
    assert "#### Table 2: differences to the full model" in table2 and "after Holm" in table2
    index = (out / "index.html").read_text()
    assert "Table 2: differences to the full model</h4>" in index and "Table 3: differences" in index
    table3 = (out / "tables" / "table3.md").read_text()
    assert "| EfficientMORL | CLEVR6 | 0.63 ± 0.04 (n=5) |" in table3
