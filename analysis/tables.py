"""Tables 1, 2 and 3 of the paper from tracked runs, with the published numbers beside ours.

Which runs fill which row (tags of the run; the variant names are the ones sweeps must use):

- **Table 1** (ARI, ``test/fg_ari``): one row per model and dataset. ``emorl.model``
  efficient_morl -> EfficientMORL, slot_attention -> Slot Attention, iodine -> IODINE,
  monet -> MONet, slot_mlp -> Slot MLP; ``emorl.dataset`` clevr6, multi_dsprites, tetrominoes;
  ``emorl.variant`` one of :data:`FULL_MODEL_VARIANTS` (the IODINE, MONet and Slot MLP runs come from
  ``emorl sweep table1 --only ...``). The paper's own Slot Attention replication has no runs here:
  its row shows the paper's numbers only.
- **Table 2** (ARI ``test/fg_ari``, MSE ``test/mse``, KL ``test/kl``): EfficientMORL runs of the
  ablation variants (:data:`ABLATION_VARIANTS`) on clevr6 and tetrominoes, each in the row its
  parameters give (``model.dual_gru``, ``loss.geco.enabled``, ``model.prior``; see :data:`TABLE2`).
  Tetrominoes follows the table's labels: "EfficientMORL" is GECO off, "w/ GECO" is GECO on (the
  paper's Appendix F.2 says its Tetrominoes model used GECO; sweeps/specs/table2_tetrominoes.yaml).
- **Table 3** (DCI, ``dci/clevr6/{disentanglement,completeness,informativeness}`` from
  ``emorl evaluate --metrics dci``): Slot Attention and EfficientMORL on clevr6, full-model variants.

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

# Variant names that mean "the full model as the paper trains it".
FULL_MODEL_VARIANTS = ("default", "full")
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
    """A table row: the paper's label, our dataset name, and the runs that belong to it (tags
    ``emorl.model`` and ``emorl.variant``, and parameter values, compared case-insensitively)."""

    label: str
    dataset: str
    models: tuple[str, ...] = ()  # empty: no runs of ours can fill it
    variants: tuple[str, ...] = FULL_MODEL_VARIANTS
    params: tuple[tuple[str, str], ...] = ()  # (parameter, value) pairs a run must have


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

_TABLE1_MODELS = (("Slot Attention", ("slot_attention",)), ("Slot Attention (replicated)", ()), ("IODINE", ("iodine",)),
                  ("MONet", ("monet",)), ("Slot MLP", ("slot_mlp",)), ("EfficientMORL", ("efficient_morl",)))
TABLE1 = TableSpec("1", "Multi-object benchmark: foreground ARI", (ARI,), tuple(
    Row(label, dataset, models) for dataset in DATASET_NAMES for label, models in _TABLE1_MODELS))

EMORL = ("efficient_morl",)
# Table 2 takes the runs of these variants (the names of sweeps/specs/table2_*.yaml and a few
# spellings) and puts each in the row its parameters say: a variant's name never decides the row.
ABLATION_VARIANTS = ("default", "full", "without_dual_gru", "without_dualgru", "no_dualgru", "without_geco",
                     "no_geco", "with_geco", "geco", "bottom_up_prior", "reversed_prior")
GECO_ON, GECO_OFF = ("loss.geco.enabled", "true"), ("loss.geco.enabled", "false")
DUAL_GRU, NO_DUAL_GRU = ("model.dual_gru", "true"), ("model.dual_gru", "false")
PRIOR_PP = ("model.prior", "reversed++")


def _ablation(label: str, dataset: str, *params: tuple[str, str]) -> Row:
    return Row(label, dataset, EMORL, ABLATION_VARIANTS, params)


TABLE2 = TableSpec("2", "Ablations (CLEVR6 at 50K steps, Tetrominoes)", (ARI, MSE, KL), (
    _ablation("EfficientMORL w/out DualGRU", "clevr6", NO_DUAL_GRU, GECO_ON, PRIOR_PP),
    _ablation("EfficientMORL w/out GECO", "clevr6", DUAL_GRU, GECO_OFF, PRIOR_PP),
    _ablation("EfficientMORL", "clevr6", DUAL_GRU, GECO_ON, PRIOR_PP),
    _ablation("EfficientMORL w/ GECO", "tetrominoes", DUAL_GRU, GECO_ON, PRIOR_PP),
    _ablation("EfficientMORL w/ bottom-up prior", "tetrominoes", DUAL_GRU, ("model.prior", "bottom_up")),
    _ablation("EfficientMORL w/ reversed prior", "tetrominoes", DUAL_GRU, ("model.prior", "reversed")),
    _ablation("EfficientMORL", "tetrominoes", DUAL_GRU, GECO_OFF, PRIOR_PP),
), reference="EfficientMORL")
TABLE3 = TableSpec("3", "DCI on CLEVR6", DCI, (
    Row("Slot Attention", "clevr6", ("slot_attention",)),
    Row("EfficientMORL", "clevr6", EMORL),
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


def _row_runs(runs: pd.DataFrame, row: Row) -> pd.DataFrame:
    if not row.models or runs.empty:
        return runs.iloc[0:0]
    chosen = runs["dataset"].eq(row.dataset) & runs["model"].isin(row.models) & runs["variant"].isin(row.variants)
    for name, value in row.params:
        column = f"params.{name}"
        values = runs[column].astype(str).str.lower() if column in runs else pd.Series("", index=runs.index)
        chosen &= values.eq(value)
    return runs[chosen]


def _groups(members: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """The groups of runs (every key but the seed) among a row's runs."""
    keys = list(GROUP_KEYS)
    return [(dict(zip(keys, values)), frame) for values, frame in members.groupby(keys, dropna=False, sort=True)]


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
    for group, frame in _groups(_row_runs(runs, row)):
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

