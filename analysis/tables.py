"""Tables 1, 2 and 3 of the paper from tracked runs, with the published numbers beside ours.

Which runs fill which row: only runs of the row's paper setting (:class:`analysis.settings.Setting`,
data: the experiment, model and dataset tags and the values of the defining parameters, steps and
image size included; variant and sweep names never decide a row):

- **Table 1** (ARI, ``test/fg_ari``): one row per model and dataset, filled by the runs of that
  model's experiment file for the dataset (EfficientMORL: ``tetrominoes``, ``multi_dsprites``,
  ``clevr6``; the baselines: ``<model>_<dataset>``, e.g. ``slot_attention_clevr6``; the IODINE,
  MONet and Slot MLP runs come from ``emorl sweep table1 --only ...``). The Tetrominoes row takes
  table1's three Tetrominoes settings (GECO, ``tetrominoes_without_geco``,
  ``tetrominoes_authors_recipe``), each on its own line. The paper's own Slot Attention
  replication has no runs here: its row shows the paper's numbers only.
- **Table 2** (ARI ``test/fg_ari``, MSE ``test/mse``, KL ``test/kl``): EfficientMORL on CLEVR6 at
  50K steps (``clevr6`` with ``trainer.max_steps=50000``) and on Tetrominoes at 200K, each row its
  switch (``model.dual_gru``, ``loss.geco.enabled``, ``model.prior``; see :data:`TABLE2`).
  Tetrominoes follows the table's labels: "EfficientMORL" is GECO off, "w/ GECO" is GECO on (the
  paper's Appendix F.2 says its Tetrominoes model used GECO; sweeps/specs/table2_tetrominoes.yaml).
- **Table 3** (DCI, ``dci/clevr6/{disentanglement,completeness,informativeness}`` from
  ``emorl evaluate --metrics dci``): Slot Attention and EfficientMORL in their CLEVR6 settings.

**Other settings** (:func:`placement`, :func:`other_settings_lines`): every group of runs (same
setting but the seed) that fills no paper row is listed in a table of its own, its setting spelled
out (experiment, variant, steps, what differs from the nearest paper setting) with our statistics
and no paper number; a group with no value of any table metric is named with the reason. Nothing
is dropped silently.

Units as the paper prints them: ARI in percent, MSE x 1e-4 (the cell shows MSE * 1e4), KL in
nats, DCI in [0, 1]. Each cell reads ``mean +- std (n=N)`` (std with ddof = 1), with the 95%
Student-t interval of the mean in the next column; see :mod:`analysis.aggregate`. A row whose
runs fall in several groups (e.g. two sweeps, or settings differing in ``trainer.max_steps``)
gets one line per group, labelled with what differs: groups are never averaged together. A
group with flagged runs gets a second line without them. A row with no runs shows the
paper's numbers and ``- (n=0)``; rows that neither the paper nor our runs can fill (MONet on
Tetrominoes) are left out.

**Differences to the full model** (Tables 2 and 3, :attr:`TableSpec.reference`): every other row is
compared with the reference row of the same dataset (Table 2: "EfficientMORL"; Table 3:
EfficientMORL against Slot Attention), metric by metric, over the seeds of each side with
:func:`analysis.aggregate.compare` (Welch's interval and p-value, a bootstrap interval). The p-values
of the comparisons shown in one table (one family per ``runs`` subset) are Holm-corrected
together. When the reference row has several groups of runs, the one of the same sweep and
``trainer.max_steps`` is taken; if that leaves several, the comparison is not made (the note says
so). The paper's difference is computed the same way from its published mean, std and n (Welch
only, not corrected). :func:`comparison_frame` and :func:`comparison_caption` lay it out; the
caption says in plain words which differences are significant at 0.05 after Holm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.aggregate import (ALL_RUNS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, GROUP_KEYS, WITHOUT_FLAGGED, Comparison,
                                aggregate, compare, describe_differences, finite_values, holm, welch_from_summaries)
from analysis.settings import EXPERIMENT_SETTINGS, Setting, paper_setting, setting_groups, spell_setting

DATASET_NAMES = {"clevr6": "CLEVR6", "multi_dsprites": "Multi-dSprites", "tetrominoes": "Tetrominoes"}
EMPTY = "\u2013"  # en dash
PAPER_RESULTS = Path(__file__).resolve().with_name("paper_results.csv")


@dataclass(frozen=True)
class Metric:
    """A table column: the metric key of a run (``{dataset}`` filled in), the paper's name, the unit."""

    key: str
    paper_name: str
    label: str
    scale: float
    decimals: int

    def key_for(self, dataset: str) -> str:
        return self.key.format(dataset=dataset)


@dataclass(frozen=True)
class Row:
    """A table row: the paper's label, our dataset name, and the paper setting whose runs fill it
    (None: no runs of ours can fill it; see :mod:`analysis.settings`)."""

    label: str
    dataset: str
    setting: Setting | None = None


@dataclass(frozen=True)
class TableSpec:
    number: str
    title: str
    metrics: tuple[Metric, ...]
    rows: tuple[Row, ...]
    reference: str | None = None  # the label of the full-model row every other row is compared with


ARI = Metric("test/fg_ari", "ARI", "ARI (%)", 100.0, 1)
MSE = Metric("test/mse", "MSE_x1e-4", "MSE (x1e-4)", 1e4, 1)
KL = Metric("test/kl", "KL", "KL", 1.0, 1)
DCI = tuple(Metric(f"dci/{{dataset}}/{name}", f"DCI_{name}", name.capitalize(), 1.0, 2)
            for name in ("disentanglement", "completeness", "informativeness"))

# Table 1: the models' experiment files (the Tetrominoes row takes all three of table1's settings,
# each on its own line: GECO as App. F.2, without GECO as the table suggests, the authors' recipe).
_TABLE1_MODELS = (("Slot Attention", "slot_attention"), ("Slot Attention (replicated)", None), ("IODINE", "iodine"),
                  ("MONet", "monet"), ("Slot MLP", "slot_mlp"), ("EfficientMORL", ""))
_EMORL_TABLE1 = {"tetrominoes": ("tetrominoes", "tetrominoes_without_geco", "tetrominoes_authors_recipe"),
                 "multi_dsprites": ("multi_dsprites",), "clevr6": ("clevr6",)}


def _table1_setting(model: str | None, dataset: str) -> Setting | None:
    if model is None:
        return None
    experiments = (f"{model}_{dataset}",) if model else _EMORL_TABLE1[dataset]
    return paper_setting(*experiments) if experiments[0] in EXPERIMENT_SETTINGS else None


TABLE1 = TableSpec("1", "Multi-object benchmark: foreground ARI", (ARI,), tuple(
    Row(label, dataset, _table1_setting(model, dataset))
    for dataset in DATASET_NAMES for label, model in _TABLE1_MODELS))

# Table 2: CLEVR6 at 50K steps (Appendix D) and Tetrominoes at the paper's 200K, each row the setting
# with its switches; the Tetrominoes prior rows keep the experiment's GECO (either way).
_CLEVR6_50K = {"trainer.max_steps": "50000"}
_TETROMINOES_T2 = ("tetrominoes", "tetrominoes_without_geco")
TABLE2 = TableSpec("2", "Ablations (CLEVR6 at 50K steps, Tetrominoes)", (ARI, MSE, KL), (
    Row("EfficientMORL w/out DualGRU", "clevr6", paper_setting("clevr6", changes={**_CLEVR6_50K,
                                                                                  "model.dual_gru": "false"})),
    Row("EfficientMORL w/out GECO", "clevr6", paper_setting("clevr6", changes={**_CLEVR6_50K,
                                                                               "loss.geco.enabled": "false"})),
    Row("EfficientMORL", "clevr6", paper_setting("clevr6", changes=_CLEVR6_50K)),
    Row("EfficientMORL w/ GECO", "tetrominoes", paper_setting("tetrominoes")),
    Row("EfficientMORL w/ bottom-up prior", "tetrominoes",
        paper_setting(*_TETROMINOES_T2, changes={"model.prior": "bottom_up"})),
    Row("EfficientMORL w/ reversed prior", "tetrominoes",
        paper_setting(*_TETROMINOES_T2, changes={"model.prior": "reversed"})),
    Row("EfficientMORL", "tetrominoes", paper_setting("tetrominoes_without_geco")),
), reference="EfficientMORL")
TABLE3 = TableSpec("3", "DCI on CLEVR6", DCI, (
    Row("Slot Attention", "clevr6", paper_setting("slot_attention_clevr6")),
    Row("EfficientMORL", "clevr6", paper_setting("clevr6")),
), reference="EfficientMORL")
TABLES = (TABLE1, TABLE2, TABLE3)


def paper_results() -> pd.DataFrame:
    """The published numbers shipped with the package (``analysis/paper_results.csv``)."""
    return pd.read_csv(PAPER_RESULTS, comment="#", dtype={"table": str})


def _paper_value(paper: pd.DataFrame, spec: TableSpec, row: Row, metric: Metric) -> dict:
    match = paper[(paper["table"] == spec.number) & (paper["model"] == row.label)
                  & (paper["dataset"] == DATASET_NAMES[row.dataset]) & (paper["metric"] == metric.paper_name)]
    if match.empty:
        return {"paper_mean": math.nan, "paper_std": math.nan, "paper_n": pd.NA, "paper_note": ""}
    first = match.iloc[0]
    note = first["note"] if isinstance(first["note"], str) else ""
    return {"paper_mean": first["mean"], "paper_std": first["std"],
            "paper_n": pd.NA if pd.isna(first["n_seeds"]) else int(first["n_seeds"]), "paper_note": note}


def row_groups(runs: pd.DataFrame, row: Row) -> list[tuple[dict, pd.DataFrame]]:
    """The groups of runs (:func:`analysis.settings.setting_groups`) whose setting is the row's."""
    if row.setting is None:
        return []
    return [(group, frame) for group, frame in setting_groups(runs) if row.setting.qualifies(frame.iloc[0])]


def _empty_statistics() -> dict:
    return {"mean": math.nan, "std": math.nan, "n": 0, "ci95_low": math.nan, "ci95_high": math.nan,
            "n_runs": 0, "n_flagged": 0, "seeds": ""}


COMPARISON_COLUMNS = ["reference", "difference", "welch_low", "welch_high", "p_value", "p_holm", "bootstrap_low",
                      "bootstrap_high", "n_reference", "comparison_note", "paper_difference", "paper_welch_low",
                      "paper_welch_high", "paper_p_value"]
LINE_COLUMNS = ["table", "row", "dataset", "group", "runs", "metric", "unit", "key", "paper_mean", "paper_std",
                "paper_n", "paper_note", "mean", "std", "n", "ci95_low", "ci95_high", "n_runs", "n_flagged", "seeds",
                "experiment", "variant", "model", "sweep", "setting", *COMPARISON_COLUMNS]


def _row_statistics(runs: pd.DataFrame, row: Row, keys: list[str]
                    ) -> list[tuple[dict, str, pd.DataFrame | None, pd.DataFrame | None]]:
    """(group keys, what sets the group apart, its statistics, its runs) for each group of the row's
    runs that has a value of at least one of ``keys``; one empty entry when there is none."""
    found = []
    for group, frame in row_groups(runs, row):
        stats = aggregate(frame, keys).set_index(["metric", "runs"])
        if stats.loc[(slice(None), ALL_RUNS), "n"].sum() > 0:
            found.append((group, frame, stats))
    texts = describe_differences([(group, frame) for group, frame, _ in found])
    return [(group, text, stats, frame) for (group, frame, stats), text in zip(found, texts)] or [({}, "", None, None)]


def _subset_values(frame: pd.DataFrame | None, key: str, subset: str, scale: float) -> tuple[float, ...]:
    """The finite values of ``key`` over the runs of ``subset`` (in the table's units): the seeds compared."""
    if frame is None or key not in frame.columns:
        return ()
    chosen = frame[key] if subset == ALL_RUNS else frame.loc[~frame["flagged"], key]
    return tuple(float(v) * scale for v in finite_values(chosen))


def _steps(frame: pd.DataFrame | None) -> str:
    column = "params.trainer.max_steps"
    return ",".join(sorted(map(str, frame[column].dropna().unique()))) if frame is not None and column in frame else ""


def table_lines(spec: TableSpec, runs: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """The long form of a table: one line per (row, group of runs, all / without flagged, metric),
    values in the paper's units. ``runs`` must already be flagged (:func:`analysis.aggregate.flag_runs`).
    Lines without flagged runs are given only for groups that have flagged runs; groups with no
    value of the table's metrics are left out. Tables with a reference row get the differences to
    it (:data:`COMPARISON_COLUMNS`; see the module docstring)."""
    paper = paper_results() if paper is None else paper
    lines = []
    for order, row in enumerate(spec.rows):
        published = {m.paper_name: _paper_value(paper, spec, row, m) for m in spec.metrics}
        keys = [m.key_for(row.dataset) for m in spec.metrics]
        statistics = _row_statistics(runs, row, keys)
        if statistics[0][2] is None and all(pd.isna(v["paper_mean"]) for v in published.values()):
            continue  # neither the paper nor we have a number here (e.g. MONet on Tetrominoes)
        for group, distinction, stats, frame in statistics:
            for subset in (ALL_RUNS, WITHOUT_FLAGGED):
                for metric, key in zip(spec.metrics, keys):
                    line = {**{k: group.get(k, "") for k in GROUP_KEYS}, "table": spec.number, "order": order,
                            "row": row.label, "dataset": DATASET_NAMES[row.dataset], "group": distinction,
                            "runs": subset, "metric": metric.paper_name, "unit": metric.label, "key": key,
                            **published[metric.paper_name],
                            "_values": _subset_values(frame, key, subset, metric.scale), "_steps": _steps(frame)}
                    if stats is None:
                        line.update(_empty_statistics())
                    else:
                        found = stats.loc[(key, subset)]
                        line.update({k: found[k] for k in ("n", "n_runs", "n_flagged", "seeds")})
                        line.update({k: found[k] * metric.scale for k in ("mean", "std", "ci95_low", "ci95_high")})
                    lines.append(line)
    frame = pd.DataFrame(lines, columns=["order", *LINE_COLUMNS, "_values", "_steps"])
    frame = frame[(frame["runs"] == ALL_RUNS) | (frame["n_flagged"] > 0)].reset_index(drop=True)
    frame[["reference", "comparison_note"]] = ""
    frame["n_reference"] = 0
    if spec.reference is not None:
        _add_comparisons(spec, frame)
    return frame.drop(columns=["_values", "_steps"])


def _reference_line(line: pd.Series, candidates: pd.DataFrame) -> tuple[pd.Series | None, str]:
    """The reference row's line this line is compared with, or None and why."""
    if candidates.empty:
        return None, "no runs of the full model"
    if len(candidates) > 1:
        candidates = candidates[candidates["sweep"] == line["sweep"]]
    if len(candidates) > 1:
        candidates = candidates[candidates["_steps"] == line["_steps"]]
    if len(candidates) == 1:
        return candidates.iloc[0], ""
    if candidates.empty:
        return None, "no runs of the full model with the same sweep and steps"
    return None, f"the full model has {len(candidates)} groups of runs here; compare them by hand"


def _comparison_values(result: Comparison, prefix: str = "") -> dict:
    return {f"{prefix}difference": result.difference, f"{prefix}welch_low": result.welch_low,
            f"{prefix}welch_high": result.welch_high, f"{prefix}p_value": result.p_value}


def _add_comparisons(spec: TableSpec, lines: pd.DataFrame) -> None:
    """Fill :data:`COMPARISON_COLUMNS` in place: each line against the reference row's line of the same
    dataset, metric and runs subset; Holm over the p-values of each runs subset."""
    for index, line in lines.iterrows():
        if line["row"] == spec.reference:
            lines.loc[index, "comparison_note"] = "the reference (full model)"
            continue
        same = lines[(lines["row"] == spec.reference) & (lines["dataset"] == line["dataset"])
                     & (lines["metric"] == line["metric"])]
        paper_reference = same.iloc[0] if len(same) else None
        if paper_reference is not None:
            published = welch_from_summaries(line["paper_mean"], line["paper_std"], line["paper_n"],
                                             paper_reference["paper_mean"], paper_reference["paper_std"],
                                             paper_reference["paper_n"])
            lines.loc[index, list(_comparison_values(published, "paper_"))] = list(
                _comparison_values(published, "paper_").values())
        # "without flagged" lines exist only for groups with flagged runs: otherwise all runs are the same set
        subset = (same["runs"] == line["runs"]) | ((same["runs"] == ALL_RUNS) & (same["n_flagged"] == 0))
        reference, why = _reference_line(line, same[subset & (same["n"] > 0)])
        if line["n"] == 0:
            reference, why = None, "no runs of this variant"
        if reference is None:
            lines.loc[index, "comparison_note"] = why
            continue
        result = compare(line["_values"], reference["_values"])
        lines.loc[index, ["reference", "n_reference", "comparison_note", "bootstrap_low", "bootstrap_high"]] = [
            reference["row"] + (f" [{reference['group']}]" if reference["group"] else ""), result.n_reference,
            result.reason, result.bootstrap_low, result.bootstrap_high]
        lines.loc[index, list(_comparison_values(result))] = list(_comparison_values(result).values())
    for subset in (ALL_RUNS, WITHOUT_FLAGGED):
        chosen = lines["runs"] == subset
        lines.loc[chosen, "p_holm"] = holm(lines.loc[chosen, "p_value"].astype(float))


# -- formatting -------------------------------------------------------------------------------------

def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def format_cell(mean: float, std: float, n, decimals: int, show_n: bool = True) -> str:
    """``mean +- std (n=N)``; ``mean (n=1)``; ``- (n=0)``; without ``(n=...)`` when n is unknown."""
    n_text = "" if not show_n or n is None or pd.isna(n) else f" (n={int(n)})"
    if mean is None or pd.isna(mean):
        return EMPTY + n_text
    text = _number(mean, decimals)
    if std is not None and not pd.isna(std):
        text += f" \u00b1 {_number(std, decimals)}"
    return text + n_text


def format_interval(low: float, high: float, decimals: int) -> str:
    if pd.isna(low) or pd.isna(high):
        return EMPTY
    return f"[{_number(low, decimals)}, {_number(high, decimals)}]"


def display_frame(spec: TableSpec, lines: pd.DataFrame) -> pd.DataFrame:
    """The table as the paper lays it out: one line per row (and group), per metric the paper's
    cell, ours and our 95% interval; then the runs counted and flagged."""
    decimals = {m.paper_name: m.decimals for m in spec.metrics}
    units = {m.paper_name: m.label for m in spec.metrics}
    out = []
    for (_, group, subset), part in lines.groupby(["order", "group", "runs"], sort=False, dropna=False):
        first = part.iloc[0]
        label = first["row"] + (f" [{group}]" if group else "") + (" (without flagged runs)"
                                                                   if subset == WITHOUT_FLAGGED else "")
        entry = {"Model": label, "Dataset": first["dataset"]}
        for _, line in part.iterrows():
            unit, places = units[line["metric"]], decimals[line["metric"]]
            entry[f"{unit} paper"] = format_cell(line["paper_mean"], line["paper_std"], line["paper_n"], places)
            entry[f"{unit} ours"] = format_cell(line["mean"], line["std"], line["n"], places)
            entry[f"{unit} ours 95% CI"] = format_interval(line["ci95_low"], line["ci95_high"], places)
        entry["runs (flagged)"] = f"{int(first['n_runs'])} ({int(first['n_flagged'])})"
        out.append(entry)
    return pd.DataFrame(out)


def _p_text(p: float) -> str:
    if pd.isna(p):
        return EMPTY
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _signed(value: float, decimals: int) -> str:
    return EMPTY if pd.isna(value) else f"{value:+.{decimals}f}"


def _comparisons(spec: TableSpec, lines: pd.DataFrame) -> pd.DataFrame:
    """The lines compared with the reference (every line of a table with one, but the reference's own)."""
    if spec.reference is None or lines.empty:
        return lines.iloc[0:0]
    return lines[lines["row"] != spec.reference]


def _label(line: pd.Series) -> str:
    return line["row"] + (f" [{line['group']}]" if line["group"] else "") + (
        " (without flagged runs)" if line["runs"] == WITHOUT_FLAGGED else "")


def comparison_frame(spec: TableSpec, lines: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, group, metric) compared with the full model: the paper's difference (Welch
    from its summaries), ours, Welch's and the bootstrap's 95% intervals, Welch's p before and after
    Holm, and the seeds on each side. Empty for tables without a reference row."""
    decimals = {m.paper_name: m.decimals for m in spec.metrics}
    out = []
    for _, line in _comparisons(spec, lines).iterrows():
        places = decimals[line["metric"]]
        paper = _signed(line["paper_difference"], places)
        if not pd.isna(line["paper_welch_low"]):
            paper += (f" {format_interval(line['paper_welch_low'], line['paper_welch_high'], places)}, "
                      f"p {_p_text(line['paper_p_value'])}")
        out.append({"Model": _label(line), "Dataset": line["dataset"], "Metric": line["unit"],
                    "full model": line["reference"] or spec.reference,
                    "Δ paper [Welch 95% CI]": paper, "Δ ours": _signed(line["difference"], places),
                    "Welch 95% CI": format_interval(line["welch_low"], line["welch_high"], places),
                    "bootstrap 95% CI": format_interval(line["bootstrap_low"], line["bootstrap_high"], places),
                    "p (Welch)": _p_text(line["p_value"]), "p (Holm)": _p_text(line["p_holm"]),
                    "n variant / full": f"{int(line['n'])} / {int(line['n_reference'])}",
                    "note": line["comparison_note"]})
    return pd.DataFrame(out)


def _listing(part: pd.DataFrame, decimals: dict[str, int] | None = None) -> str:
    """``Row (Dataset): ARI (%) +1.2, MSE ...; Row ...`` for the caption (with the differences when
    ``decimals`` gives each metric's decimal places)."""
    texts = []
    for (label, dataset), found in part.groupby([part.apply(_label, axis=1), part["dataset"]], sort=False):
        metrics = [line["unit"] + (f" {_signed(line['difference'], decimals[line['metric']])}" if decimals else "")
                   for _, line in found.iterrows()]
        texts.append(f"{label} ({dataset}): {', '.join(metrics)}")
    return "; ".join(texts)


def comparison_caption(spec: TableSpec, lines: pd.DataFrame, alpha: float = 0.05) -> str:
    """In plain words: what is compared, which differences are significant at ``alpha`` after Holm,
    which are not, and where there are too few seeds to say."""
    compared = _comparisons(spec, lines)
    if compared.empty:
        return ""
    tested = compared[compared["p_holm"].notna()]
    families = ", ".join(f"{len(tested[tested['runs'] == s])} ({s} runs)" for s in (ALL_RUNS, WITHOUT_FLAGGED)
                         if (tested["runs"] == s).any()) or "0"
    text = [f"Differences to the full model (the {spec.reference!r} row of the same dataset): variant minus full "
            "model, in the table's units, over the seeds of each side. 95% intervals from Welch's t test (unequal "
            f"variances) and from a percentile bootstrap over seeds ({BOOTSTRAP_RESAMPLES} resamples, random seed "
            f"{BOOTSTRAP_SEED}; too narrow with few seeds). p: Welch's two-sided p-value, Holm-corrected over the "
            f"comparisons of this table that have one: m = {families}."]
    decimals = {m.paper_name: m.decimals for m in spec.metrics}
    significant = tested[tested["p_holm"] <= alpha]
    plain = tested[tested["p_holm"] > alpha]
    text.append(f"Significant at {alpha:g} after Holm: {_listing(significant, decimals)}." if len(significant) else
                f"No difference is significant at {alpha:g} after Holm.")
    if len(plain):
        text.append(f"Not significant at {alpha:g} after Holm (no evidence of a difference, which is not evidence "
                    f"of none): {_listing(plain, decimals)}.")
    few = compared[compared["p_holm"].isna() & (compared["n"] > 0) & (compared["n_reference"] > 0)]
    if len(few):
        text.append(f"No test, too few seeds or no spread (n < 2 on a side): {_listing(few)}.")
    missing = compared[(compared["n"] == 0) | (compared["n_reference"] == 0)]
    if len(missing):
        text.append(f"No runs to compare (this variant or the full model): {_listing(missing)}.")
    text.append("Δ paper: the same Welch comparison from the paper's published mean, std and n (not corrected).")
    return " ".join(text)


def _notes(lines: pd.DataFrame) -> list[str]:
    notes = lines[lines["paper_note"] != ""].drop_duplicates(["row", "dataset", "paper_note"])
    return [f"{r['row']}, {r['dataset']}: {r['paper_note']}" for _, r in notes.iterrows()]


def _markdown_rows(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    return "\n".join([header, rule, *["| " + " | ".join(str(v) for v in row) + " |"
                                      for row in frame.itertuples(index=False)]])


def to_markdown(spec: TableSpec, lines: pd.DataFrame) -> str:
    """A Markdown table with a title and the paper's notes."""
    text = [f"### Table {spec.number}: {spec.title}", "", _markdown_rows(display_frame(spec, lines)), ""]
    text.append("Ours: mean \u00b1 std over seeds (ddof = 1), n runs with a finite value; 95% CI: Student t. "
                "Flagged runs: see the failed-run rule in docs/analysis.md.")
    notes = _notes(lines)
    if notes:
        text += ["", "Paper notes:", *[f"- {note}" for note in notes]]
    differences = comparison_frame(spec, lines)
    if not differences.empty:
        text += ["", f"#### Table {spec.number}: differences to the full model", "", _markdown_rows(differences), "",
                 comparison_caption(spec, lines)]
    return "\n".join(text) + "\n"


def _latex_escape(text: str) -> str:
    for old, new in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("\u00b1", r"$\pm$"), (EMPTY, "--"), ("\u0394", r"$\Delta$"),
                     ("<", r"$<$")):
        text = text.replace(old, new)
    return text


def to_latex(spec: TableSpec, lines: pd.DataFrame) -> str:
    """A booktabs LaTeX table (needs ``\\usepackage{booktabs}``)."""
    frame = display_frame(spec, lines)
    columns = "l" * len(frame.columns)
    caption = (f"Table {spec.number}: {_latex_escape(spec.title)}. Ours: mean $\\pm$ std over seeds, n runs; "
               "95\\% CI from Student's t.")
    text = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}",
            rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
            " & ".join(_latex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    text += [" & ".join(_latex_escape(str(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    text += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    differences = comparison_frame(spec, lines)
    if not differences.empty:
        text += [r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{Table {spec.number}, differences to the full model. "
                 rf"{_latex_escape(comparison_caption(spec, lines))}}}",
                 rf"\begin{{tabular}}{{{'l' * len(differences.columns)}}}", r"\toprule",
                 " & ".join(_latex_escape(c) for c in differences.columns) + r" \\", r"\midrule"]
        text += [" & ".join(_latex_escape(str(v)) for v in row) + r" \\" for row in differences.itertuples(index=False)]
        text += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(text) + "\n"


def write_tables(runs: pd.DataFrame, out_dir: str | Path, specs: tuple[TableSpec, ...] = TABLES) -> dict[str, dict]:
    """Write ``table<N>.md``, ``.tex`` and ``.csv`` (the long form) for each spec; ``runs`` must be
    flagged. Returns ``{number: {"lines": DataFrame, "markdown": text, "paths": [...]}}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paper = paper_results()
    written = {}
    for spec in specs:
        lines = table_lines(spec, runs, paper)
        markdown = to_markdown(spec, lines)
        paths = [out_dir / f"table{spec.number}.{suffix}" for suffix in ("md", "tex", "csv")]
        paths[0].write_text(markdown)
        paths[1].write_text(to_latex(spec, lines))
        lines.drop(columns=["order"]).to_csv(paths[2], index=False)
        written[spec.number] = {"lines": lines, "markdown": markdown, "paths": paths}
    return written


def flagged_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The flagged runs of a flagged table, with what identifies them and why."""
    columns = ["run_id", "run_name", "experiment", "variant", "model", "dataset", "seed", "status", "flag_reason"]
    return runs.loc[runs["flagged"], [c for c in columns if c in runs.columns]].reset_index(drop=True)



# -- where every group of runs goes: paper rows, other settings, no table -----------------------------

PAPER_ROWS, OTHER_SETTINGS, NO_TABLE = "paper rows", "other settings", "no table"
OTHER_METRICS = (ARI, MSE, KL, *DCI)  # the columns of the other-settings table, those with a value shown


def _has_value(frame: pd.DataFrame, keys) -> bool:
    return any(len(finite_values(frame[k])) > 0 for k in keys if k in frame.columns)


def _filled_rows(frame: pd.DataFrame, specs: tuple[TableSpec, ...]) -> tuple[list[str], list[str]]:
    """(rows the group fills, rows whose setting it has but no value of their metrics) as text."""
    filled, empty = [], []
    for spec in specs:
        for row in spec.rows:
            if row.setting is not None and row.setting.qualifies(frame.iloc[0]):
                name = f"Table {spec.number} {row.label!r} ({DATASET_NAMES[row.dataset]})"
                keys = [m.key_for(row.dataset) for m in spec.metrics]
                (filled if _has_value(frame, keys) else empty).append((name, keys))
    return [n for n, _ in filled], [f"{n}, which needs {' or '.join(k)}" for n, k in empty]


def _placed(runs: pd.DataFrame, specs: tuple[TableSpec, ...]) -> list[tuple[dict, pd.DataFrame, str, str]]:
    """(group keys, runs, destination, where or why) for every group of runs."""
    placed = []
    for group, frame in setting_groups(runs):
        filled, empty = _filled_rows(frame, specs)
        keys = [m.key_for(str(group["dataset"])) for m in OTHER_METRICS]
        if filled:
            placed.append((group, frame, PAPER_ROWS, "; ".join(filled)))
        elif _has_value(frame, keys):
            placed.append((group, frame, OTHER_SETTINGS, spell_setting(frame.iloc[0])))
        else:
            statuses = ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().sort_index().items())
            why = (f"has the setting of {'; '.join(empty)}, but no finite value of it" if empty else
                   f"no finite value of any table metric ({', '.join(keys[:3])}, dci/...); "
                   f"setting: {spell_setting(frame.iloc[0])}")
            placed.append((group, frame, NO_TABLE, f"{why} (runs: {statuses})"))
    return placed


def placement(runs: pd.DataFrame, specs: tuple[TableSpec, ...] = TABLES) -> pd.DataFrame:
    """One line per group of runs (same setting but the seed): the group keys, ``runs``, ``seeds``,
    ``destination`` (:data:`PAPER_ROWS`, :data:`OTHER_SETTINGS` or :data:`NO_TABLE`) and ``where``:
    the paper rows it fills, how its setting differs from the paper's, or why it is in no table."""
    lines = [{**{k: group[k] for k in GROUP_KEYS}, "runs": len(frame),
              "seeds": ",".join(str(s) for s in sorted(frame["seed"].dropna().astype(int))),
              "destination": destination, "where": where} for group, frame, destination, where in _placed(runs, specs)]
    return pd.DataFrame(lines, columns=[*GROUP_KEYS, "runs", "seeds", "destination", "where"])


def placement_summary(placed: pd.DataFrame) -> str:
    """``N runs in G groups: ... fill paper rows, ... in Other settings, ... in no table.``"""
    def count(destination: str) -> str:
        chosen = placed[placed["destination"] == destination]
        return f"{int(chosen['runs'].sum())} runs ({len(chosen)} groups)"

    return (f"{int(placed['runs'].sum())} runs in {len(placed)} groups (same setting but the seed): "
            f"{count(PAPER_ROWS)} fill rows of the paper's tables, {count(OTHER_SETTINGS)} are in "
            f"\"Other settings\", {count(NO_TABLE)} in no table"
            + (" (each with the reason, below)." if (placed["destination"] == NO_TABLE).any() else "."))


def other_settings_frame(runs: pd.DataFrame, specs: tuple[TableSpec, ...] = TABLES) -> pd.DataFrame:
    """The groups of :data:`OTHER_SETTINGS`: the setting spelled out and our statistics (no paper
    number), one line per group and a second without its flagged runs when it has some. ``runs``
    must be flagged."""
    chosen = [(g, f, where) for g, f, destination, where in _placed(runs, specs) if destination == OTHER_SETTINGS]
    shown = [m for m in OTHER_METRICS if any(_has_value(f, [m.key_for(str(g["dataset"]))]) for g, f, _ in chosen)]
    out = []
    for group, frame, where in chosen:
        keys = [m.key_for(str(group["dataset"])) for m in shown]
        stats = aggregate(frame, keys).set_index(["metric", "runs"])
        for subset in (ALL_RUNS, WITHOUT_FLAGGED) if frame["flagged"].any() else (ALL_RUNS,):
            entry = {"Setting": f"{group['experiment']} / {group['variant']}"
                                + (" (without flagged runs)" if subset == WITHOUT_FLAGGED else ""),
                     "Model": group["model"], "Dataset": DATASET_NAMES.get(group["dataset"], group["dataset"]),
                     "Sweep": group["sweep"] or EMPTY, "Steps": _steps(frame) or EMPTY,
                     "Differs from the paper setting": where}
            for metric, key in zip(shown, keys):
                found = stats.loc[(key, subset)]
                entry[f"{metric.label} ours"] = format_cell(found["mean"] * metric.scale, found["std"] * metric.scale,
                                                            found["n"], metric.decimals)
                entry[f"{metric.label} ours 95% CI"] = format_interval(found["ci95_low"] * metric.scale,
                                                                       found["ci95_high"] * metric.scale,
                                                                       metric.decimals)
            entry["runs (flagged)"] = f"{len(frame)} ({int(frame['flagged'].sum())})"
            out.append(entry)
    return pd.DataFrame(out)


def other_settings_markdown(runs: pd.DataFrame, specs: tuple[TableSpec, ...] = TABLES) -> str:
    """Where the runs went (counts), the other-settings table and the groups in no table, as Markdown."""
    placed = placement(runs, specs)
    text = ["### Where the runs went", "", placement_summary(placed), "",
            "### Other settings (not the paper's: no paper number beside them)", ""]
    frame = other_settings_frame(runs, specs)
    text += [_markdown_rows(frame) if not frame.empty else "(none)", ""]
    if not frame.empty:
        text += ["Each line is one setting (every key but the seed); \"Differs from the paper setting\" names what "
                 "sets it apart from the paper setting of its experiment (or, for an experiment that is none, of "
                 "the same model and dataset). Ours: mean \u00b1 std over seeds (ddof = 1), n runs with a value.", ""]
    missing = placed[placed["destination"] == NO_TABLE]
    text += ["### In no table", ""]
    text += [f"- {r['experiment']} / {r['variant']} ({r['model']}, {r['dataset']}, sweep {r['sweep'] or EMPTY}, "
             f"{r['runs']} runs): {r['where']}" for _, r in missing.iterrows()] or ["(none)"]
    return "\n".join(text) + "\n"


def write_other_settings(runs: pd.DataFrame, out_dir: str | Path, specs: tuple[TableSpec, ...] = TABLES) -> dict:
    """Write ``other_settings.md`` and ``placement.csv`` (one line per group, where it went); ``runs``
    must be flagged. Returns ``{"placement": DataFrame, "frame": DataFrame, "markdown": text, "paths": [...]}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    placed, markdown = placement(runs, specs), other_settings_markdown(runs, specs)
    paths = [out_dir / "other_settings.md", out_dir / "placement.csv"]
    paths[0].write_text(markdown)
    placed.to_csv(paths[1], index=False)
    return {"placement": placed, "frame": other_settings_frame(runs, specs), "markdown": markdown, "paths": paths}
