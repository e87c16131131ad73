"""One report folder from a selection of tracked runs: tables, figures, an index page, a summary.

Layout of the folder (see docs/analysis.md)::

    README.md          what was selected, the groups and their seeds, flagged runs, the tables
    index.html         the same with every figure shown
    runs.csv           the tidy run table (one row per run, flags included)
    tables/table{1,2,3}.{md,tex,csv}
    tables/other_settings.md, tables/placement.csv   the groups in no paper row; where every group went
    figures/fig*.{png,pdf}
    figures/runs/decomposition_<run>.png, traversal_<run>.{png,pdf}
    figures/fig11_traversal_comparison.{png,pdf}   (when the runs drawn hold two models or more)

The folder is logged to MLflow under ``report/``: into the sweep's parent run when the runs have
one, else into a new run tagged ``emorl.report`` (which later collections leave out).
"""

from __future__ import annotations

import base64
import html
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures as figure_module
from analysis.aggregate import ARI_KEY, COLLAPSE_ARI, GROUP_KEYS, flag_runs
from analysis.collect import (REPORT_TAG, RunSelection, collect_runs, list_artifacts, metric_histories, store_sweeps,
                              tracking_client)
from analysis.tables import (NO_TABLE, TABLES, comparison_caption, comparison_frame, display_frame, flagged_runs,
                             placement_summary, write_other_settings, write_tables)
from emorl.errors import EmorlError

MAX_CHECKPOINT_GROUPS = 4


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and where it was logged."""

    folder: Path
    logged_to: str | None
    runs: pd.DataFrame = field(repr=False)
    figures: list = field(default_factory=list, repr=False)
    skipped: dict[str, str] = field(default_factory=dict)


def default_folder(selection: RunSelection) -> Path:
    """``<output root>/reports/<selection>`` (the selection's description, made file-safe)."""
    from emorl.config import output_root

    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", selection.describe()).strip("_")[:120] or "all"
    return output_root() / "reports" / name


def prepare_folder(folder: Path) -> Path:
    """Create the report folder, or empty the tables and figures of an earlier report there; refuses
    a non-empty folder that does not hold a report (nothing of the user's is deleted)."""
    readme = folder / "README.md"
    if folder.exists() and any(folder.iterdir()):
        if not (readme.is_file() and readme.read_text().startswith("# emorl report")):
            raise EmorlError(f"{folder} is not empty and holds no emorl report; choose another --out")
        for child in ("tables", "figures"):
            shutil.rmtree(folder / child, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _table_metrics(runs: pd.DataFrame) -> list[str]:
    keys = {m.key_for(row.dataset) for spec in TABLES for row in spec.rows for m in spec.metrics}
    return sorted(k for k in keys if k in runs.columns)


def _histories(runs: pd.DataFrame, tracking_uri: str) -> pd.DataFrame:
    keys = ["train/loss", "train/kl"] + [c for c in runs.columns if figure_module.UPDATE_NORM_KEY.match(c)]
    return metric_histories(runs, [k for k in keys if k in runs.columns], tracking_uri)


def _summary_figures(runs, histories, tracking_uri, folder: Path) -> tuple[list, dict[str, str]]:
    made, skipped = [], {}
    makers = {
        "Fig. 3": lambda: figure_module.training_loss(runs, histories, folder),
        "Fig. 4": lambda: figure_module.kl_and_update_norms(runs, histories, folder),
        "Fig. 7": lambda: figure_module.test_time_refinement(runs, folder),
        "Fig. 8": lambda: figure_module.stochastic_layers(runs, folder),
        "Fig. 9c-d": lambda: figure_module.activeness_heatmaps(runs, tracking_uri, folder),
    }
    for name, make in makers.items():
        try:
            made.append(make())
        except figure_module.MissingData as reason:
            skipped[name] = str(reason)
    return made, skipped


def checkpoint_runs(runs: pd.DataFrame, tracking_uri: str, max_groups: int = MAX_CHECKPOINT_GROUPS) -> pd.DataFrame:
    """Per group (every key but the seed), the finished run with the lowest seed that has a
    ``checkpoints/last.pt`` artifact: chosen by seed number, never by a score."""
    chosen = []
    for _, group in runs[runs["status"] == "FINISHED"].groupby(list(GROUP_KEYS), dropna=False, sort=True):
        for _, run in group.sort_values(["seed", "run_id"]).iterrows():
            if "checkpoints/last.pt" in list_artifacts(run["run_id"], "checkpoints", tracking_uri):
                chosen.append(run)
                break
        if len(chosen) == max_groups:
            break
    return pd.DataFrame(chosen)


def _checkpoint_figures(runs, tracking_uri, folder: Path, data_path, traversal_images: int, max_groups: int,
                        device: str) -> tuple[list, dict[str, str]]:
    made, skipped = [], {}
    chosen = checkpoint_runs(runs, tracking_uri, max_groups)
    if chosen.empty:
        return made, {"Decompositions and traversals": "no finished run has a checkpoints/last.pt artifact"}
    models = {}
    for _, run in chosen.iterrows():
        try:
            loaded = figure_module.load_run(run, tracking_uri, data_path, device)
            models[run["run_id"]] = loaded
            made.append(figure_module.decomposition(run, tracking_uri, folder, loaded=loaded))
            made.append(figure_module.latent_traversal(run, tracking_uri, folder, num_images=traversal_images,
                                                       loaded=loaded))
        except EmorlError as reason:
            skipped[f"Decomposition and traversal of {run['run_name']}"] = str(reason)
    compared = chosen[chosen["run_id"].isin(models)]
    if compared["model"].nunique() >= 2:  # e.g. the fig11 sweep: EfficientMORL, GENESIS, GENESIS-S
        try:
            made.append(figure_module.traversal_comparison(compared, tracking_uri, folder.parent,
                                                           num_images=traversal_images, loaded=models))
        except EmorlError as reason:
            skipped["Fig. 11"] = str(reason)
    return made, skipped


def _groups_frame(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for values, group in runs.groupby(list(GROUP_KEYS), dropna=False, sort=True):
        rows.append({**dict(zip(GROUP_KEYS, values)), "runs": len(group),
                     "seeds": ",".join(str(s) for s in sorted(group["seed"].dropna())),
                     "flagged": int(group["flagged"].sum())})
    return pd.DataFrame(rows)


def _markdown_frame(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _summary_line(runs: pd.DataFrame, collapse_ari: float) -> str:
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(Counter(runs["status"]).items()))
    return (f"{len(runs)} runs ({statuses}); {int(runs['flagged'].sum())} flagged as failed "
            f"(status not FINISHED, non-finite loss or metric, or {ARI_KEY} < {collapse_ari:g}).")


def _readme(selection, tracking_uri, runs, tables, other, made, skipped, folder: Path, collapse_ari: float) -> str:
    text = [f"# emorl report: {selection.describe()}", "",
            f"Tracking store: `{tracking_uri}`. Made {time.strftime('%Y-%m-%d %H:%M:%S')}.", "",
            _summary_line(runs, collapse_ari), "", placement_summary(other["placement"]), "",
            "## Groups (every key but the seed)", "", _markdown_frame(_groups_frame(runs)),
            "## Flagged runs", "", _markdown_frame(flagged_runs(runs)), "## Tables", ""]
    for number, table in tables.items():
        text += [table["markdown"], f"Files: [md](tables/table{number}.md), [LaTeX](tables/table{number}.tex), "
                 f"[CSV](tables/table{number}.csv)", ""]
    text += [other["markdown"], "Files: [md](tables/other_settings.md), [where every group went (CSV)]"
             "(tables/placement.csv)", "", "## Figures", ""]
    for figure in made:
        png = next(p for p in figure.paths if p.suffix == ".png")
        text.append(f"- [{figure.caption or figure.name}]({png.relative_to(folder).as_posix()})")
    if skipped:
        text += ["", "Not drawn:", *[f"- {name}: {reason}" for name, reason in skipped.items()]]
    return "\n".join(text) + "\n"


def embedded_png(path: Path) -> str:
    """A PNG as a data URI: the HTML holds its images, so it renders wherever it is opened (MLflow's
    artifact viewer, a browser on a copy of the file)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _other_settings_html(other: dict) -> list[str]:
    placed = other["placement"]
    missing = placed[placed["destination"] == NO_TABLE]
    parts = ["<h3>Where the runs went</h3>", f"<p>{html.escape(placement_summary(placed))}</p>",
             "<h3>Other settings (not the paper's: no paper number beside them)</h3>",
             other["frame"].to_html(index=False, border=0) if not other["frame"].empty else "<p>(none)</p>",
             "<h3>In no table</h3>"]
    parts.append("<ul>" + "".join(f"<li>{html.escape(f'{r.experiment} / {r.variant} ({r.runs} runs): {r.where}')}"
                                  "</li>" for r in missing.itertuples()) + "</ul>" if len(missing) else "<p>(none)</p>")
    return parts


def _index_html(selection, readme_head: str, runs, tables, other, made, skipped, folder: Path) -> str:
    parts = [f"<h1>emorl report: {html.escape(selection.describe())}</h1>", f"<p>{html.escape(readme_head)}</p>",
             "<h2>Groups (every key but the seed)</h2>", _groups_frame(runs).to_html(index=False, border=0),
             "<h2>Flagged runs</h2>", flagged_runs(runs).to_html(index=False, border=0), "<h2>Tables</h2>"]
    for number, table in tables.items():
        spec = next(s for s in TABLES if s.number == number)
        parts += [f"<h3>Table {number}: {html.escape(spec.title)}</h3>",
                  display_frame(spec, table["lines"]).to_html(index=False, border=0)]
        differences = comparison_frame(spec, table["lines"])
        if not differences.empty:
            parts += [f"<h4>Table {number}: differences to the full model</h4>",
                      differences.to_html(index=False, border=0),
                      f"<p>{html.escape(comparison_caption(spec, table['lines']))}</p>"]
        parts.append(f'<p><a href="tables/table{number}.md">md</a> | <a href="tables/table{number}.tex">LaTeX</a> | '
                     f'<a href="tables/table{number}.csv">CSV</a></p>')
    parts += _other_settings_html(other)
    parts.append("<h2>Figures</h2>")
    for figure in made:
        links = " | ".join(f'<a href="{p.relative_to(folder).as_posix()}">{p.suffix[1:].upper()}</a>'
                           for p in figure.paths)
        png = next(p for p in figure.paths if p.suffix == ".png")
        parts.append(f'<figure><img src="{embedded_png(png)}" alt="{html.escape(figure.name)}">'
                     f"<figcaption>{html.escape(figure.caption or figure.name)} ({links})</figcaption></figure>")
    if skipped:
        parts.append("<h3>Not drawn</h3><ul>" + "".join(f"<li>{html.escape(n)}: {html.escape(r)}</li>"
                                                        for n, r in skipped.items()) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:90%}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}"
             "img{max-width:100%}figure{margin:1.5em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>emorl report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def sweep_parent(runs: pd.DataFrame) -> str | None:
    """The parent run that the runs share (a sweep's parent), if they all have the same one."""
    parents = set(runs["parent_run_id"].fillna(""))
    return parents.pop() if len(parents) == 1 and "" not in parents else None


def log_report(folder: Path, selection: RunSelection, runs: pd.DataFrame, tracking_uri: str) -> str:
    """Log the folder under ``report/`` into the sweep's parent run, or a new report run; returns its id."""
    from emorl.tracking import default_artifact_root, ensure_experiment

    client = tracking_client(tracking_uri)
    run_id = sweep_parent(runs)
    if run_id is None:
        experiments = set(runs["mlflow_experiment"])
        experiment_id = ensure_experiment(client, experiments.pop() if len(experiments) == 1 else "emorl",
                                          default_artifact_root(tracking_uri))
        run_id = client.create_run(experiment_id, run_name=f"report {selection.describe()}"[:250],
                                   tags={REPORT_TAG: selection.describe()}).info.run_id
        client.log_artifacts(run_id, str(folder), "report")
        client.set_terminated(run_id)
    else:
        client.log_artifacts(run_id, str(folder), "report")
    return run_id


def _no_runs_message(selection: RunSelection, tracking_uri: str) -> str:
    """Why nothing was selected: an empty store says how to get runs; otherwise the sweeps it holds."""
    sweeps, total = store_sweeps(tracking_uri)
    if total == 0:
        return (f"the tracking store {tracking_uri} holds no runs. Get some: `make demo` (= emorl sweep quickstart, "
                "a few minutes on CPU), then `emorl report --sweep quickstart`; or train a paper setting, e.g. "
                "`emorl sweep table1`; or pass --tracking-uri for another store")
    listed = ", ".join(f"{name} ({count} runs)" for name, count in sweeps.items()) or "none"
    unswept = total - sum(sweeps.values())
    return (f"no runs match {selection.describe()} in {tracking_uri}. Sweeps in this store: {listed}"
            + (f"; {unswept} runs belong to no sweep (select them with --experiment or --tag)" if unswept else "")
            + ". E.g. emorl report --sweep " + (next(iter(sweeps)) if sweeps else "NAME"))


def build_report(selection: RunSelection, tracking_uri: str | None = None, folder: str | Path | None = None,
                 collapse_ari: float = COLLAPSE_ARI, checkpoint_figures: bool = True,
                 data_path: str | Path | None = None, traversal_images: int = 100,
                 max_checkpoint_groups: int = MAX_CHECKPOINT_GROUPS, device: str = "auto", log: bool = True
                 ) -> ReportResult:
    """Collect the runs of ``selection``, write the report folder and (``log``) log it to MLflow."""
    tracking_uri = tracking_client(tracking_uri).tracking_uri
    runs = collect_runs(selection, tracking_uri)
    if runs.empty:
        raise EmorlError(_no_runs_message(selection, tracking_uri))
    runs = flag_runs(runs, _table_metrics(runs), collapse_ari)
    folder = prepare_folder(Path(folder) if folder else default_folder(selection))
    runs.to_csv(folder / "runs.csv", index=False)
    tables = write_tables(runs, folder / "tables")
    other = write_other_settings(runs, folder / "tables")
    made, skipped = _summary_figures(runs, _histories(runs, tracking_uri), tracking_uri, folder / "figures")
    if checkpoint_figures:
        more, why = _checkpoint_figures(runs, tracking_uri, folder / "figures" / "runs", data_path, traversal_images,
                                        max_checkpoint_groups, device)
        made, skipped = made + more, {**skipped, **why}
    readme = _readme(selection, tracking_uri, runs, tables, other, made, skipped, folder, collapse_ari)
    (folder / "README.md").write_text(readme)
    head = (f"Tracking store: {tracking_uri}. {_summary_line(runs, collapse_ari)} "
            f"{placement_summary(other['placement'])}")
    (folder / "index.html").write_text(_index_html(selection, head, runs, tables, other, made, skipped, folder))
    logged_to = log_report(folder, selection, runs, tracking_uri) if log else None
    return ReportResult(folder, logged_to, runs, made, skipped)
