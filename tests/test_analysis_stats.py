"""Differences to the full model (analysis.aggregate.compare, welch_from_summaries, holm) against
scipy and hand computation, and their place in Tables 2 and 3 (a hand-built run table)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.aggregate import compare, flag_runs, holm, welch_from_summaries
from analysis.settings import setting_params
from analysis.tables import TABLE2, TABLE3, comparison_caption, comparison_frame, table_lines, to_latex, to_markdown

VARIANT = [90.0, 92.0, 94.0, 96.0, 98.0]  # mean 94, s^2 = 10
REFERENCE = [80.0, 85.0, 90.0]  # mean 85, s^2 = 25


def test_welch_matches_scipy_and_the_hand_formula():
    result = compare(VARIANT, REFERENCE)
    scipy_result = stats.ttest_ind(VARIANT, REFERENCE, equal_var=False)
    interval = scipy_result.confidence_interval(0.95)
    assert (result.difference, result.n_variant, result.n_reference, result.reason) == (9.0, 5, 3, "")
    assert result.p_value == pytest.approx(scipy_result.pvalue, rel=1e-12)
    assert (result.welch_low, result.welch_high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    se2 = 10 / 5 + 25 / 3  # by hand: Welch-Satterthwaite degrees of freedom and the t interval
    df = se2 ** 2 / ((10 / 5) ** 2 / 4 + (25 / 3) ** 2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(se2)
    assert (result.welch_low, result.welch_high) == pytest.approx((9 - half, 9 + half), rel=1e-9)
    assert result.p_value == pytest.approx(2 * stats.t.sf(9 / math.sqrt(se2), df), rel=1e-9)
    # The same comparison from the summaries (what the paper publishes) gives the same numbers.
    summary = welch_from_summaries(94.0, math.sqrt(10), 5, 85.0, 5.0, 3)
    assert (summary.difference, summary.p_value, summary.welch_low, summary.welch_high) == pytest.approx(
        (9.0, result.p_value, result.welch_low, result.welch_high), rel=1e-9)
    assert math.isnan(summary.bootstrap_low)  # no seeds to resample


def test_welch_and_bootstrap_on_a_case_worked_by_hand():
    # a = (0, 1), b = (0, 0): difference 0.5, se = 0.5, df = 1, t = 1, so p = P(|Cauchy| > 1) = 0.5.
    # A bootstrap mean of a is 0, 0.5 or 1 (probabilities 1/4, 1/2, 1/4) and b's is 0: the 2.5 and
    # 97.5 percentiles of the difference are 0 and 1.
    result = compare([0.0, 1.0], [0.0, 0.0])
    assert result.p_value == pytest.approx(0.5, abs=1e-12)
    half = 12.706204736174698 * 0.5
    assert (result.welch_low, result.welch_high) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-9)
    assert (result.bootstrap_low, result.bootstrap_high) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_difference():
    first, again = compare(VARIANT, REFERENCE), compare(VARIANT, REFERENCE)
    assert (first.bootstrap_low, first.bootstrap_high) == (again.bootstrap_low, again.bootstrap_high)
    assert first.bootstrap_low < 9.0 < first.bootstrap_high
    # Each side resampled on its own: the bootstrap difference never leaves [min a - max b, max a - min b]
    assert 90 - 90 <= first.bootstrap_low and first.bootstrap_high <= 98 - 80
    other = compare(VARIANT, REFERENCE, seed=1)
    assert (other.bootstrap_low, other.bootstrap_high) != (first.bootstrap_low, first.bootstrap_high)


def test_too_few_seeds_or_no_spread_give_no_interval_and_say_why():
    one = compare([1.0, float("nan")], [1.0, 2.0, 3.0])  # NaN is not a seed's value
    assert (one.difference, one.n_variant, one.n_reference) == (-1.0, 1, 3)
    assert math.isnan(one.p_value) and math.isnan(one.welch_low) and math.isnan(one.bootstrap_high)
    assert one.reason == "n = 1 vs 3: an interval needs at least 2 seeds on each side"
    empty = compare([], [1.0, 2.0])
    assert math.isnan(empty.difference) and empty.reason.startswith("n = 0 vs 2")
    flat = compare([1.0, 1.0], [2.0, 2.0])
    assert flat.difference == -1.0 and math.isnan(flat.p_value) and "no spread" in flat.reason
    published = welch_from_summaries(82.2, 17.7, None, 97.9, 2.4, 5)
    assert published.difference == pytest.approx(-15.7) and published.reason == "mean, std or n not published"


def test_holm_against_hand_computation():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> max so far 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.02, float("nan"), 0.5])  # untested comparisons do not count: m = 2
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert holm([]).size == 0
    # Rejections at 0.05 follow the step-down rule: compare p_(i) with 0.05 / (m - i + 1), stop at the first miss.
    p = np.array([0.012, 0.013, 0.02, 0.3])  # 0.012 <= 0.0125 yes; 0.013 <= 0.0167 yes; 0.02 <= 0.025 yes; 0.3 no
    assert (holm(p) <= 0.05).tolist() == [True, True, True, False]


def _run(variant, values, seed, geco="True", prior="reversed++", sweep="t2"):
    ari, mse, kl = values
    experiment = "tetrominoes" if geco == "True" else "tetrominoes_without_geco"
    params = setting_params(experiment, {"model.prior": prior})
    return {"run_id": f"{variant}{sweep}{seed}", "experiment": experiment, "variant": variant,
            "model": "efficient_morl", "dataset": "tetrominoes", "sweep": sweep, "setting": f"{variant}{geco}{prior}",
            "seed": seed, "status": "FINISHED", "test/fg_ari": ari, "test/mse": mse, "test/kl": kl,
            **{f"params.{k}": v for k, v in params.items()}}


FULL = [(0.96, 0.0007, 98.0), (0.98, 0.0008, 100.0), (0.97, 0.0006, 99.0), (0.99, 0.0007, 101.0)]
GECO = [(0.60, 0.0050, 45.0), (0.95, 0.0060, 47.0), (0.80, 0.0055, 44.0)]


@pytest.fixture(scope="module")
def table2():
    runs = [_run("without_geco", v, s, geco="False") for s, v in enumerate(FULL)]
    runs += [_run("full", v, s) for s, v in enumerate(GECO)]
    runs += [_run("reversed_prior", (0.70, 0.0010, 50.0), 0, prior="reversed")]
    # The full model again in another sweep: the comparisons must take the runs of the variant's sweep.
    runs += [_run("without_geco", (0.10, 0.1, 1.0), s, geco="False", sweep="t2-again") for s in range(2)]
    return table_lines(TABLE2, flag_runs(pd.DataFrame(runs)))


def _line(lines, row, metric):
    found = lines[(lines["row"] == row) & (lines["dataset"] == "Tetrominoes") & (lines["metric"] == metric)]
    assert len(found) == 1, found
    return found.iloc[0]


def test_table2_differences_to_the_full_model(table2):
    scale = {"ARI": 100.0, "MSE_x1e-4": 1e4, "KL": 1.0}
    p_values = []
    for index, metric in enumerate(("ARI", "MSE_x1e-4", "KL")):
        line = _line(table2, "EfficientMORL w/ GECO", metric)
        ours = [v[index] * scale[metric] for v in GECO]
        full = [v[index] * scale[metric] for v in FULL]
        expected = stats.ttest_ind(ours, full, equal_var=False)
        interval = expected.confidence_interval()
        # the reference row has two groups (two sweeps): the one of the variant's sweep is taken
        assert (line["n"], line["n_reference"], line["reference"]) == (3, 4, "EfficientMORL [sweep=t2]")
        assert line["difference"] == pytest.approx(np.mean(ours) - np.mean(full))
        assert (line["welch_low"], line["welch_high"], line["p_value"]) == pytest.approx(
            (interval.low, interval.high, expected.pvalue))
        assert line["bootstrap_low"] < line["difference"] < line["bootstrap_high"]
        p_values.append(expected.pvalue)
    # Holm over the three tested comparisons of the table (the reversed prior has one seed: untested).
    adjusted = holm(p_values)
    for metric, value in zip(("ARI", "MSE_x1e-4", "KL"), adjusted):
        assert _line(table2, "EfficientMORL w/ GECO", metric)["p_holm"] == pytest.approx(value)
    assert table2["p_holm"].notna().sum() == 3
    paper = _line(table2, "EfficientMORL w/ GECO", "ARI")  # 82.2 +- 17.7 vs 97.9 +- 2.4, n = 5 each
    expected = stats.ttest_ind_from_stats(82.2, 17.7, 5, 97.9, 2.4, 5, equal_var=False)
    assert (paper["paper_difference"], paper["paper_p_value"]) == pytest.approx((-15.7, expected.pvalue))
    single = _line(table2, "EfficientMORL w/ reversed prior", "ARI")
    assert single["difference"] == pytest.approx(70 - 97.5) and math.isnan(single["p_value"])
    assert single["comparison_note"].startswith("n = 1 vs 4")
    assert _line(table2, "EfficientMORL w/ bottom-up prior", "ARI")["comparison_note"] == "no runs of this variant"
    reference = table2[(table2["row"] == "EfficientMORL") & (table2["dataset"] == "Tetrominoes")]
    assert set(reference["comparison_note"]) == {"the reference (full model)"} and len(reference) == 3 * 3


def test_table2_caption_says_what_is_significant(table2):
    caption = comparison_caption(TABLE2, table2)
    ari_p = _line(table2, "EfficientMORL w/ GECO", "ARI")["p_holm"]
    mse_p = _line(table2, "EfficientMORL w/ GECO", "MSE_x1e-4")["p_holm"]
    assert ari_p > 0.05 and mse_p <= 0.05  # the data were made so: ARI varies too much, MSE does not
    assert "m = 3 (all runs)" in caption
    # MSE x 1e4: 55 - 7 = +48.0; KL: 45.33 - 99.5 = -54.2; ARI: 78.33 - 97.5 = -19.2 (percent)
    assert ("Significant at 0.05 after Holm: EfficientMORL w/ GECO (Tetrominoes): MSE (x1e-4) +48.0, KL -54.2."
            in caption)
    assert "Not significant at 0.05 after Holm" in caption
    assert "EfficientMORL w/ GECO (Tetrominoes): ARI (%) -19.2" in caption
    assert "too few seeds or no spread (n < 2 on a side): EfficientMORL w/ reversed prior (Tetrominoes): ARI (%), " \
           "MSE (x1e-4), KL." in caption
    assert "No runs to compare (this variant or the full model): EfficientMORL w/out DualGRU (CLEVR6)" in caption
    frame = comparison_frame(TABLE2, table2)
    assert "EfficientMORL" not in set(frame["Model"])  # the reference is not compared with itself
    row = frame[(frame["Model"] == "EfficientMORL w/ GECO") & (frame["Metric"] == "ARI (%)")].iloc[0]
    assert row["Δ ours"] == "-19.2" and row["n variant / full"] == "3 / 4"
    assert row["Δ paper [Welch 95% CI]"].startswith("-15.7 [")
    markdown = to_markdown(TABLE2, table2)
    assert "#### Table 2: differences to the full model" in markdown and caption in markdown
    latex = to_latex(TABLE2, table2)
    assert latex.count(r"\begin{tabular}") == 2 and latex.count("{") == latex.count("}")


def test_table3_compares_slot_attention_with_efficientmorl():
    def run(model, seed, value, status="FINISHED"):
        experiment = "clevr6" if model == "efficient_morl" else f"{model}_clevr6"
        return {"run_id": f"{model}{seed}", "experiment": experiment, "variant": "default", "model": model,
                "dataset": "clevr6", "sweep": "t3", "setting": model, "seed": seed, "status": status,
                **{f"params.{k}": v for k, v in setting_params(experiment).items()},
                "dci/clevr6/disentanglement": value, "dci/clevr6/completeness": value,
                "dci/clevr6/informativeness": value}

    runs = [run("efficient_morl", s, v) for s, v in enumerate([0.60, 0.62, 0.64])]
    runs += [run("slot_attention", s, v) for s, v in enumerate([0.40, 0.45])]
    runs.append(run("slot_attention", 2, 0.10, status="FAILED"))  # flagged
    lines = table_lines(TABLE3, flag_runs(pd.DataFrame(runs)))
    slot = lines[(lines["row"] == "Slot Attention") & (lines["metric"] == "DCI_disentanglement")].set_index("runs")
    every = stats.ttest_ind([0.40, 0.45, 0.10], [0.60, 0.62, 0.64], equal_var=False)
    assert slot.loc["all", "difference"] == pytest.approx(0.95 / 3 - 0.62)
    assert slot.loc["all", "p_value"] == pytest.approx(every.pvalue)
    # Without the flagged run, against the EfficientMORL runs (none flagged: its "all" line is the same set).
    kept = stats.ttest_ind([0.40, 0.45], [0.60, 0.62, 0.64], equal_var=False)
    assert slot.loc["without flagged", "difference"] == pytest.approx(0.425 - 0.62)
    assert slot.loc["without flagged", "p_value"] == pytest.approx(kept.pvalue)
    assert slot.loc["without flagged", "n_reference"] == 3
    # Holm within each subset: three metrics with equal p-values each.
    assert slot.loc["without flagged", "p_holm"] == pytest.approx(min(1.0, 3 * kept.pvalue))
    assert slot.loc["all", "p_holm"] == pytest.approx(min(1.0, 3 * every.pvalue))
    assert slot.loc["all", "paper_difference"] == pytest.approx(0.46 - 0.63)
    caption = comparison_caption(TABLE3, lines)
    assert "m = 3 (all runs), 3 (without flagged runs)" in caption
    assert "Slot Attention (without flagged runs) (CLEVR6)" in caption
