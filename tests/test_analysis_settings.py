"""Paper rows take only runs of the paper's setting (analysis.settings): the quickstart's smoke runs
land in "Other settings" with their setting spelled out, a paper-setting run fills its row, a group
with no table metric is named with the reason, and `emorl report` says what a store holds."""

import shutil

import pytest
from mlflow.tracking import MlflowClient

from analysis.aggregate import flag_runs
from analysis.collect import RunSelection, collect_runs
from analysis.examples import emorl_tags, log_run
from analysis.settings import DEFINING_KEYS, EXPERIMENT_SETTINGS, setting_params
from analysis.tables import (NO_TABLE, OTHER_SETTINGS, PAPER_ROWS, TABLE1, TABLE2, other_settings_frame, placement,
                             table_lines, write_other_settings)
from emorl.cli import main
from emorl.config import compose, flatten, to_container


def _logged_params(overrides: list[str]) -> dict:
    """What the trainer logs for a composed config: every flattened key."""
    return flatten(to_container(compose(overrides)))


def test_experiment_settings_are_what_the_experiment_files_compose_to():
    for experiment, expected in EXPERIMENT_SETTINGS.items():
        flat = _logged_params([f"experiment={experiment}"])
        found = {"experiment": flat["name"], "model": flat["model.name"], "dataset": flat["data.name"],
                 **{key: str(flat[key]).lower() for key in DEFINING_KEYS if key in flat}}
        assert found == expected, experiment


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, mlflow_database_template):
    """The quickstart's 2 x 2 smoke runs (as `make demo` logs them), one paper-setting Tetrominoes run,
    and two runs of another sweep that stopped before any test metric."""
    tmp_path = tmp_path_factory.mktemp("quickstart")
    shutil.copy(mlflow_database_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("quickstart", artifact_location=(tmp_path / "artifacts").as_uri())
    smoke = _logged_params(["experiment=smoke", "trainer.max_steps=30", "data.batch_size=4"])
    for variant, prior in (("reversed_prior_pp", "reversed_pp"), ("bottom_up_prior", "bottom_up")):
        params = {**smoke, **_logged_params(["experiment=smoke", "trainer.max_steps=30", "data.batch_size=4",
                                             f"prior={prior}"])}
        for seed, ari in enumerate((0.55, 0.65)):
            log_run(client, experiment,
                    tags=emorl_tags("smoke", variant, seed, dataset="tetrominoes", sweep="quickstart"),
                    params={**params, "seed": seed, "variant": variant},
                    metrics={"test/fg_ari": ari, "test/mse": 0.01, "test/kl": 30.0})
    paper = _logged_params(["experiment=tetrominoes", "prior=bottom_up"])
    log_run(client, experiment, tags=emorl_tags("tetrominoes", "bottom_up_prior", 0, sweep="table2_tetrominoes"),
            params=paper, metrics={"test/fg_ari": 0.857, "test/mse": 0.0017, "test/kl": 40.0})
    for seed in (0, 1):
        log_run(client, experiment, tags=emorl_tags("clevr6", "L4", seed, sweep="fig8"), status="FAILED",
                params={**setting_params("clevr6", {"model.stochastic_layers": 4}), "seed": seed})
    return uri


def test_smoke_runs_go_to_other_settings_and_a_paper_run_fills_its_row(quickstart, tmp_path):
    runs = flag_runs(collect_runs(RunSelection(), quickstart), ["test/fg_ari", "test/mse", "test/kl"])
    lines = table_lines(TABLE2, runs)
    row = lines[(lines["row"] == "EfficientMORL w/ bottom-up prior") & (lines["metric"] == "ARI")]
    assert len(row) == 1 and (row["n"].item(), row["mean"].item(), row["paper_mean"].item()) == (1, 85.7, 85.7)
    assert row["sweep"].item() == "table2_tetrominoes"
    assert (table_lines(TABLE1, runs)["n"] == 0).all()  # no smoke run anywhere in Table 1 (nor the prior ablation)

    placed = placement(runs).set_index(["experiment", "variant"])
    assert placed.loc[("tetrominoes", "bottom_up_prior"), "destination"] == PAPER_ROWS
    assert placed.loc[("tetrominoes", "bottom_up_prior"), "where"] == \
        "Table 2 'EfficientMORL w/ bottom-up prior' (Tetrominoes)"
    for variant in ("reversed_prior_pp", "bottom_up_prior"):
        assert placed.loc[("smoke", variant), "destination"] == OTHER_SETTINGS
    assert placed.loc[("clevr6", "L4"), "destination"] == NO_TABLE
    assert placed.loc[("clevr6", "L4"), "where"].startswith("no finite value of any table metric (test/fg_ari, "
                                                            "test/mse, test/kl, dci/...); setting: "
                                                            "model.stochastic_layers=4 (paper: 3) (runs: 2 FAILED)")

    other = other_settings_frame(runs).set_index("Setting")
    assert list(other.index) == ["smoke / bottom_up_prior", "smoke / reversed_prior_pp"]  # no paper number column
    assert not any("paper" in column and column != "Differs from the paper setting" for column in other.columns)
    bottom_up = other.loc["smoke / bottom_up_prior"]
    assert (bottom_up["Steps"], bottom_up["Sweep"], bottom_up["ARI (%) ours"]) == ("30", "quickstart",
                                                                                   "60.0 ± 7.1 (n=2)")
    spelled = bottom_up["Differs from the paper setting"]
    assert "model.num_slots" not in spelled  # 4 in both: only what differs is listed
    assert spelled.startswith("experiment smoke is no paper setting; against tetrominoes: trainer.max_steps=30 "
                              "(paper: 200000), model.latent_dim=16 (paper: 32)")
    assert "model.prior=bottom_up (paper: reversed++)" in spelled and "loss.geco.enabled=false (paper: true)" in spelled
    assert "model.prior" not in other.loc["smoke / reversed_prior_pp", "Differs from the paper setting"]

    written = write_other_settings(runs, tmp_path)
    assert written["markdown"].startswith(
        "### Where the runs went\n\n7 runs in 4 groups (same setting but the seed): 1 runs (1 groups) fill rows of "
        "the paper's tables, 4 runs (2 groups) are in \"Other settings\", 2 runs (1 groups) in no table (each")
    assert "- clevr6 / L4 (efficient_morl, clevr6, sweep fig8, 2 runs): no finite value" in written["markdown"]
    assert (tmp_path / "placement.csv").read_text().count("\n") == 1 + 4


def test_report_names_the_sweeps_when_none_match_and_an_empty_store(quickstart, tmp_path, capsys):
    assert main(["report", "--sweep", "fig7", "--tracking-uri", quickstart, "--no-log"]) == 2
    error = capsys.readouterr().err
    assert "no runs match sweep=fig7" in error
    assert "Sweeps in this store: fig8 (2 runs), quickstart (4 runs), table2_tetrominoes (1 runs)" in error
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["report", "--sweep", "quickstart", "--tracking-uri", empty, "--no-log"]) == 2
    error = capsys.readouterr().err
    assert "holds no runs" in error and "make demo" in error and "emorl report --sweep quickstart" in error

    out = tmp_path / "report"
    assert main(["report", "--sweep", "quickstart", "--tracking-uri", quickstart, "--out", str(out), "--no-log",
                 "--no-checkpoint-figures"]) == 0
    readme = (out / "README.md").read_text()
    assert "4 runs in 2 groups (same setting but the seed): 0 runs (0 groups) fill rows" in readme
    assert "| smoke / bottom_up_prior | efficient_morl | Tetrominoes | quickstart | 30 |" in readme
    table2 = (out / "tables" / "table2.md").read_text()
    assert "| EfficientMORL w/ bottom-up prior | Tetrominoes | 85.7 ± 11.0 (n=5) | – (n=0) |" in table2
    assert "Other settings" in (out / "index.html").read_text()
