"""analysis.collect and analysis.tables: runs logged by the test into a temporary sqlite MLflow
store with known values; golden Tables 1-3 checked against hand computation."""

import math
import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.aggregate import flag_runs, settings_except
from analysis.collect import RunSelection, collect_runs, metric_histories, parse_tag_filter
from analysis.examples import emorl_tags, log_run
from analysis.settings import setting_params
from analysis.tables import (TABLE1, TABLE2, TABLE3, other_settings_frame, paper_results, table_lines, to_latex,
                             to_markdown, write_tables)
from emorl.errors import EmorlError

T975 = {1: 12.7062047362, 2: 4.3026527297, 3: 3.1824463053, 4: 2.7764451052}
SWEEP = "golden"


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_database_template):
    """A sweep (parent + children) with known final metrics; returns (uri, ids by name)."""
    folder = tmp_path_factory.mktemp("golden")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    shutil.copy(mlflow_database_template, folder / "mlflow.db")  # migrated once per session (conftest)
    client = MlflowClient(uri)
    experiment = client.create_experiment("golden", artifact_location=(folder / "artifacts").as_uri())
    parent_tags = {"emorl.sweep": SWEEP, "emorl.sweep_role": "parent", "emorl.sweep_kind": "training"}
    ids = {"parent": log_run(client, experiment, tags=parent_tags, run_name="sweep golden")}
    # An earlier attempt of the sweep, replaced by `emorl sweep --restart`: its runs never count.
    replaced = log_run(client, experiment, tags={**parent_tags, "emorl.sweep_replaced": "2026-01-01 00:00:00"})
    log_run(client, experiment, tags=emorl_tags("tetrominoes", "default", 0, sweep=SWEEP),
            params={"seed": 0, "trainer.max_steps": 200000}, metrics={"test/fg_ari": 0.1}, parent_run_id=replaced)

    def child(experiment_name, variant, seed, model="efficient_morl", dataset=None, steps=None, **kwargs):
        tags = emorl_tags(experiment_name, variant, seed, model, dataset, sweep=SWEEP, **kwargs.pop("tags", {}))
        params = {**setting_params(experiment_name), "seed": seed, "tracking.uri": f"run-{seed}",
                  **({"trainer.max_steps": steps} if steps else {}), **kwargs.pop("params", {})}
        return log_run(client, experiment, tags=tags, params=params, parent_run_id=ids["parent"], **kwargs)

    # Table 1, Tetrominoes: 90, 92, 94, 96, 98 (%) at 200k steps, and two short runs (1k steps).
    for seed, ari in enumerate([0.90, 0.92, 0.94, 0.96, 0.98]):
        ids[f"tetrominoes{seed}"] = child("tetrominoes", "default", seed, metrics={"test/fg_ari": ari},
                                          histories={"train/loss": [(10, 100.0 + seed), (20, 50.0 + seed)]})
    for seed, ari in enumerate([0.50, 0.70]):
        child("tetrominoes", "default", seed, steps=1000, metrics={"test/fg_ari": ari})
    # Table 1, CLEVR6 Slot Attention: four good runs and one collapsed run.
    for seed, ari in enumerate([0.98, 0.99, 0.97, 0.98, 0.20]):
        child("slot_attention_clevr6", "default", seed, "slot_attention", "clevr6", metrics={"test/fg_ari": ari})
    # Table 1, Multi-dSprites: two runs and one that failed on a non-finite loss.
    child("multi_dsprites", "default", 0, metrics={"test/fg_ari": 0.90})
    child("multi_dsprites", "default", 1, metrics={"test/fg_ari": 0.91})
    ids["failed"] = child("multi_dsprites", "default", 2, metrics={"test/fg_ari": float("nan")}, status="FAILED",
                          tags={"emorl.failure": "non-finite loss or gradient at training step 9"})
    # Table 2, Tetrominoes with the bottom-up prior.
    for seed, (ari, mse, kl) in enumerate([(0.80, 0.0010, 40.0), (0.85, 0.0012, 50.0), (0.90, 0.0014, 60.0)]):
        child("tetrominoes", "bottom_up_prior", seed, params={"model.prior": "bottom_up", "model.dual_gru": True},
              metrics={"test/fg_ari": ari, "test/mse": mse, "test/kl": kl})
    # Table 3: EfficientMORL on CLEVR6 with DCI only (from `emorl evaluate --new-run` for seed 1).
    ids["clevr0"] = child("clevr6", "default", 0, metrics={"dci/clevr6/disentanglement": 0.60,
                                                          "dci/clevr6/completeness": 0.50,
                                                          "dci/clevr6/informativeness": 0.40})
    ids["clevr1"] = child("clevr6", "default", 1, metrics={"dci/clevr6/informativeness": 0.98})
    log_run(client, experiment, tags={"emorl.evaluation_of": ids["clevr1"], **emorl_tags("clevr6", "default", 1)},
            metrics={"dci/clevr6/disentanglement": 0.70, "dci/clevr6/completeness": 0.50,
                     "dci/clevr6/informativeness": 0.50})
    # A report run and a run of another sweep: never collected with the sweep.
    log_run(client, experiment, tags={"emorl.report": "sweep=golden"})
    log_run(client, experiment, tags=emorl_tags("tetrominoes", "default", 9, sweep="other"), metrics={"test/fg_ari": 0})
    return uri, ids


@pytest.fixture(scope="module")
def runs(store):
    uri, _ = store
    return flag_runs(collect_runs(RunSelection(sweep=SWEEP), uri), ["test/fg_ari", "test/mse", "test/kl"])


def test_collect_one_row_per_trial_with_tags_metrics_and_settings(store, runs):
    uri, ids = store
    # Left out: the parents, the replaced attempt's run, the evaluation, report and other-sweep runs.
    assert len(runs) == 5 + 2 + 5 + 3 + 3 + 2
    assert ids["parent"] not in set(runs["run_id"])
    assert set(runs["parent_run_id"]) == {ids["parent"]}
    row = runs.set_index("run_id").loc[ids["tetrominoes3"]]
    assert (row["experiment"], row["variant"], row["seed"], row["model"], row["dataset"], row["sweep"]) == (
        "tetrominoes", "default", 3, "efficient_morl", "tetrominoes", SWEEP)
    assert row["test/fg_ari"] == pytest.approx(0.96) and row["params.trainer.max_steps"] == "200000"
    assert (settings_except(runs, ()) == runs["setting"]).all()  # the same hash from the table's params columns
    tetrominoes = runs[(runs["experiment"] == "tetrominoes") & (runs["variant"] == "default")]
    assert tetrominoes.groupby("params.trainer.max_steps")["setting"].nunique().tolist() == [1, 1]
    assert tetrominoes["setting"].nunique() == 2  # seeds (and tracking URIs) do not split a setting
    failed = runs.set_index("run_id").loc[ids["failed"]]
    assert (failed["status"], failed["nonfinite"], bool(failed["flagged"])) == ("FAILED", "test/fg_ari", True)
    merged = runs.set_index("run_id").loc[ids["clevr1"]]
    assert merged["dci/clevr6/disentanglement"] == pytest.approx(0.70)  # from its evaluation run
    assert merged["dci/clevr6/informativeness"] == pytest.approx(0.98)  # its own value wins
    assert merged["evaluation_runs"] != ""


def test_collect_by_tags_run_ids_and_experiment(store):
    uri, ids = store
    by_tag = collect_runs(RunSelection(tags=dict([parse_tag_filter("variant=bottom_up_prior")])), uri)
    assert sorted(by_tag["seed"]) == [0, 1, 2]
    by_ids = collect_runs(RunSelection(run_ids=[ids["tetrominoes0"], ids["failed"]]), uri)
    assert set(by_ids["run_id"]) == {ids["tetrominoes0"], ids["failed"]}
    both = collect_runs(RunSelection(sweep=SWEEP, tags={"emorl.dataset": "clevr6"}, experiment="golden"), uri)
    assert len(both) == 5 + 2
    assert collect_runs(RunSelection(sweep="no-such-sweep"), uri).empty
    with pytest.raises(EmorlError, match="no MLflow experiment named 'nope'"):
        collect_runs(RunSelection(experiment="nope"), uri)
    with pytest.raises(EmorlError, match="expected key=value"):
        parse_tag_filter("variant")


def test_metric_histories_are_the_logged_points(store, runs):
    uri, ids = store
    chosen = runs[runs["run_id"].isin([ids["tetrominoes0"], ids["tetrominoes4"]])]
    history = metric_histories(chosen, ["train/loss"], uri)
    by_run = {run: list(zip(part["step"], part["value"])) for run, part in history.groupby("run_id")}
    assert by_run == {ids["tetrominoes0"]: [(10, 100.0), (20, 50.0)], ids["tetrominoes4"]: [(10, 104.0), (20, 54.0)]}
    assert set(history["seed"]) == {0, 4}


def _line(lines, row, dataset, runs="all", metric="ARI", group=""):
    found = lines[(lines["row"] == row) & (lines["dataset"] == dataset) & (lines["runs"] == runs)
                  & (lines["metric"] == metric) & (lines["group"] == group)]
    assert len(found) == 1, found
    return found.iloc[0]


def test_golden_table1(runs):
    lines = table_lines(TABLE1, runs)
    long = _line(lines, "EfficientMORL", "Tetrominoes")  # the 1000-step runs are not the paper's setting
    half = T975[4] * math.sqrt(10) / math.sqrt(5)  # 90..98: s^2 = 10
    assert (long["n"], long["seeds"], long["n_flagged"]) == (5, "0,1,2,3,4", 0)
    assert (long["mean"], long["std"]) == pytest.approx((94.0, math.sqrt(10)), abs=1e-9)
    assert (long["ci95_low"], long["ci95_high"]) == pytest.approx((94 - half, 94 + half), abs=1e-9)
    assert (long["paper_mean"], long["paper_std"], long["paper_n"]) == (98.2, 1.8, 5)
    assert len(lines[(lines["row"] == "EfficientMORL") & (lines["dataset"] == "Tetrominoes")]) == 1
    other = other_settings_frame(runs).set_index("Setting")
    short = other.loc["tetrominoes / default"]
    assert (short["Steps"], short["ARI (%) ours"], short["runs (flagged)"]) == ("1000", "60.0 ± 14.1 (n=2)", "2 (0)")
    assert short["Differs from the paper setting"] == "trainer.max_steps=1000 (paper: 200000)"
    every = _line(lines, "Slot Attention", "CLEVR6")
    assert (every["n"], every["n_flagged"]) == (5, 1)
    assert (every["mean"], every["std"]) == pytest.approx((82.4, math.sqrt(1217.3)), abs=1e-9)
    kept = _line(lines, "Slot Attention", "CLEVR6", runs="without flagged")
    half = T975[3] * math.sqrt(2 / 3) / 2  # 98, 99, 97, 98: s^2 = 2 / 3
    assert (kept["n"], kept["mean"], kept["std"]) == (4, pytest.approx(98.0), pytest.approx(math.sqrt(2 / 3)))
    assert (kept["ci95_low"], kept["ci95_high"]) == pytest.approx((98 - half, 98 + half), abs=1e-9)
    sprites = _line(lines, "EfficientMORL", "Multi-dSprites")  # the failed run has no finite ARI
    half = T975[1] * math.sqrt(0.5) / math.sqrt(2)
    assert (sprites["n"], sprites["n_runs"], sprites["n_flagged"], sprites["mean"]) == (2, 3, 1, pytest.approx(90.5))
    assert (sprites["ci95_low"], sprites["ci95_high"]) == pytest.approx((90.5 - half, 90.5 + half), abs=1e-9)
    # Rows with no runs keep the paper's numbers; EfficientMORL CLEVR6 runs have no ARI at all.
    for row, dataset, paper in (("IODINE", "Multi-dSprites", 76.7), ("EfficientMORL", "CLEVR6", 96.2),
                                ("Slot Attention (replicated)", "CLEVR6", 93.3)):
        empty = _line(lines, row, dataset)
        assert (empty["n"], empty["paper_mean"]) == (0, paper) and math.isnan(empty["mean"])
    assert lines[(lines["row"] == "MONet") & (lines["dataset"] == "Tetrominoes")].empty  # no number anywhere

    markdown = to_markdown(TABLE1, lines)
    assert "| Slot Attention | CLEVR6 | 98.8 ± 0.3 (n=5) | 82.4 ± 34.9 (n=5) | [39.1, 125.7] | 5 (1) |" in markdown
    assert ("| Slot Attention (without flagged runs) | CLEVR6 | 98.8 ± 0.3 (n=5) | 98.0 ± 0.8 (n=4) | [96.7, 99.3] "
            "| 5 (1) |") in markdown
    assert ("| EfficientMORL | Tetrominoes | 98.2 ± 1.8 (n=5) | 94.0 ± 3.2 (n=5) | "
            "[90.1, 97.9] | 5 (0) |") in markdown
    assert "| EfficientMORL | CLEVR6 | 96.2 ± 1.6 (n=5) | – (n=0) | – | 0 (0) |" in markdown
    assert "| IODINE | Multi-dSprites | 76.7 ± 5.6 | – (n=0) | – | 0 (0) |" in markdown
    assert "- Slot Attention (replicated), CLEVR6: one of five runs failed; 98.3 without it" in markdown


def test_golden_table2(runs):
    lines = table_lines(TABLE2, runs)
    expected = {"ARI": (85.0, 5.0), "MSE_x1e-4": (12.0, 2.0), "KL": (50.0, 10.0)}  # MSE shown x 1e4
    for metric, (mean, std) in expected.items():
        line = _line(lines, "EfficientMORL w/ bottom-up prior", "Tetrominoes", metric=metric)
        half = T975[2] * std / math.sqrt(3)
        assert (line["n"], line["mean"], line["std"]) == (3, pytest.approx(mean), pytest.approx(std))
        assert (line["ci95_low"], line["ci95_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)
    markdown = to_markdown(TABLE2, lines)
    assert ("| EfficientMORL w/ bottom-up prior | Tetrominoes | 85.7 ± 11.0 (n=5) | 85.0 ± 5.0 (n=3) | [72.6, 97.4] "
            "| 17.1 ± 14.6 (n=5) | 12.0 ± 2.0 (n=3) | [7.0, 17.0] | – | 50.0 ± 10.0 (n=3) | [25.2, 74.8] | 3 (0) |"
            ) in markdown
    assert "| EfficientMORL w/out DualGRU | CLEVR6 | 79.7 ± 22.3 (n=10) | – (n=0) | – |" in markdown


def test_table2_rows_follow_parameters_not_variant_names():
    def run(variant, ari, experiment="tetrominoes", seed=0, **changes):
        params = setting_params(experiment, changes)
        return {"run_id": f"{variant}{seed}", "experiment": experiment, "variant": variant, "model": "efficient_morl",
                "dataset": experiment.split("_")[0], "sweep": "t2", "setting": f"{variant}{sorted(params.items())}",
                "seed": seed, "status": "FINISHED", "test/fg_ari": ari, **{f"params.{k}": v for k, v in params.items()}}

    clevr = {"experiment": "clevr6", "trainer.max_steps": 50000}
    runs = flag_runs(pd.DataFrame([
        run("full", 0.80), run("full", 0.90, seed=1),  # GECO on: the "w/ GECO" row on Tetrominoes
        run("without_geco", 0.97, "tetrominoes_without_geco"),  # the Tetrominoes "EfficientMORL" row
        run("anything", 0.60, **{"model.prior": "reversed"}),  # a variant name never decides the row
        run("without_dual_gru", 0.70, **clevr, **{"model.dual_gru": "False"}),
        run("full", 0.75, **clevr), run("without_geco", 0.65, **clevr, **{"loss.geco.enabled": "False"}),
        run("full", 0.10, **clevr, **{"curriculum.refine_steps": 0}),  # another setting (Fig. 3's I = 0): no row
        run("full", 0.55, "clevr6"),  # CLEVR6 at the experiment's 300K steps: Table 1, not Table 2
    ]))
    lines = table_lines(TABLE2, runs)
    expected = {("EfficientMORL w/ GECO", "Tetrominoes"): (2, 85.0), ("EfficientMORL", "Tetrominoes"): (1, 97.0),
                ("EfficientMORL w/ reversed prior", "Tetrominoes"): (1, 60.0),
                ("EfficientMORL w/ bottom-up prior", "Tetrominoes"): (0, math.nan),
                ("EfficientMORL w/out DualGRU", "CLEVR6"): (1, 70.0), ("EfficientMORL", "CLEVR6"): (1, 75.0),
                ("EfficientMORL w/out GECO", "CLEVR6"): (1, 65.0)}
    for (row, dataset), (n, mean) in expected.items():
        line = _line(lines, row, dataset)
        assert line["n"] == n and (line["mean"] == pytest.approx(mean) or math.isnan(mean) and math.isnan(line["mean"]))
    assert "| EfficientMORL | Tetrominoes | 97.9 ± 2.4 (n=5) | 97.0 (n=1) | – |" in to_markdown(TABLE2, lines)
    other = other_settings_frame(runs)
    assert other["Setting"].tolist() == ["clevr6 / full", "clevr6 / full (without flagged runs)"]  # ARI 10%: flagged
    assert set(other["Differs from the paper setting"]) == {
        "trainer.max_steps=50000 (paper: 300000), curriculum.refine_steps=0 (paper: 3)"}


def test_golden_table3_and_file_formats(runs, tmp_path):
    written = write_tables(runs, tmp_path / "tables", (TABLE3,))
    lines = written["3"]["lines"]
    d = _line(lines, "EfficientMORL", "CLEVR6", metric="DCI_disentanglement")
    half = T975[1] * math.sqrt(0.005) / math.sqrt(2)  # 0.60, 0.70
    assert (d["n"], d["mean"], d["std"]) == (2, pytest.approx(0.65), pytest.approx(math.sqrt(0.005)))
    assert (d["ci95_low"], d["ci95_high"]) == pytest.approx((0.65 - half, 0.65 + half), abs=1e-9)
    assert _line(lines, "EfficientMORL", "CLEVR6", metric="DCI_informativeness")["mean"] == pytest.approx(0.69)
    assert _line(lines, "Slot Attention", "CLEVR6", metric="DCI_completeness")["n"] == 0  # no DCI logged
    markdown = (tmp_path / "tables" / "table3.md").read_text()
    assert ("| EfficientMORL | CLEVR6 | 0.63 ± 0.04 (n=5) | 0.65 ± 0.07 (n=2) | [0.01, 1.29] | 0.63 ± 0.06 (n=5) | "
            "0.50 ± 0.00 (n=2) | [0.50, 0.50] | 0.46 ± 0.01 (n=5) | 0.69 ± 0.41 (n=2) | [-2.99, 4.37] | 2 (0) |"
            ) in markdown
    csv = pd.read_csv(tmp_path / "tables" / "table3.csv")
    assert csv.loc[(csv["row"] == "EfficientMORL") & (csv["metric"] == "DCI_disentanglement"), "mean"].item() == \
        pytest.approx(0.65)
    latex = (tmp_path / "tables" / "table3.tex").read_text()
    # the table, then the differences to the full model (Slot Attention has no DCI runs: nothing compared)
    assert latex.count(r"\begin{tabular}") == 2 and latex.count("{") == latex.count("}")
    assert "no runs of this variant" in latex
    assert r"0.65 $\pm$ 0.07 (n=2)" in latex and "Slot Attention & CLEVR6 & 0.46 $\\pm$ 0.01 (n=5) & -- (n=0)" in latex
    assert to_latex(TABLE3, lines) == latex


def test_empty_selection_gives_paper_only_tables():
    empty = flag_runs(pd.DataFrame(columns=["run_id", "experiment", "variant", "model", "dataset", "sweep",
                                            "setting", "seed", "status"]))
    lines = table_lines(TABLE1, empty)
    assert (lines["n"] == 0).all() and lines["paper_mean"].notna().sum() == 15


def test_paper_results_are_shipped_with_their_source():
    text = (paper_results.__globals__["PAPER_RESULTS"]).read_text()
    assert text.startswith("# Published numbers of EfficientMORL") and "Table 1" in text.splitlines()[1]
    paper = paper_results()
    assert len(paper) == 45
    row = paper[(paper["table"] == "1") & (paper["model"] == "EfficientMORL") & (paper["dataset"] == "CLEVR6")]
    assert (row["mean"].item(), row["std"].item(), row["n_seeds"].item()) == (96.2, 1.6, 5)
