"""MLflow -> pandas: the tracked runs of a selection as one tidy table, one row per run.

A :class:`RunSelection` names the runs: a sweep (tag ``emorl.sweep``), an MLflow experiment,
tag filters (``key=value``, all must hold) and/or explicit run ids; every criterion given must
hold. :func:`collect_runs` returns a DataFrame with

- ``run_id``, ``run_name``, ``status`` (FINISHED, FAILED, KILLED, RUNNING), ``start_time``,
  ``end_time``, ``mlflow_experiment``, ``parent_run_id``, ``artifact_uri``;
- the emorl tags as columns: ``experiment``, ``variant``, ``seed`` (an integer), ``model``,
  ``dataset``, ``sweep``, ``failure`` (the message of a run stopped by a non-finite loss),
  ``dataset_file`` (the HDF5 file it trained on);
- ``setting``: a short hash of the run's parameters except the seed and the parameters that
  do not change the mathematics (where and how it is tracked or logged); runs that differ only
  in their seed share it;
- ``evaluation_runs``: ids of the evaluation runs of this run (``emorl evaluate``; their
  metrics are merged into this row where the run lacks them);
- ``nonfinite``: the metric keys whose final value is NaN or infinite;
- ``params.<key>``: every parameter (strings, as MLflow stores them);
- one column per metric key (``test/fg_ari``, ``eval/clevr6/I1/mse``, ...): the final value.

Left out: sweep parent runs (tag ``emorl.sweep_role=parent``, or named as parent by other selected
runs), the runs of a sweep attempt replaced by ``emorl sweep --restart`` (their parent carries
``emorl.sweep_replaced``), evaluation runs (merged into the run they evaluate) and report runs
(tag ``emorl.report``).
:func:`metric_histories` reads the full history of chosen metrics for curves, and
:func:`download_artifact` fetches a run's artifact (e.g. ``evaluation/clevr6/activeness.npy``).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emorl import vocabulary
from emorl.errors import EmorlError

# The emorl tags that become columns (column name -> tag).
TAG_COLUMNS = {
    "experiment": vocabulary.EXPERIMENT,
    "variant": vocabulary.VARIANT,
    "seed": vocabulary.SEED,
    "model": vocabulary.MODEL,
    "dataset": vocabulary.DATASET,
    "sweep": vocabulary.SWEEP,
    "failure": vocabulary.FAILURE,
    "dataset_file": vocabulary.DATASET_FILE,
}
PARENT_TAG = vocabulary.PARENT_RUN
EVALUATION_TAG = vocabulary.EVALUATION_OF
REPORT_TAG = vocabulary.REPORT  # runs made by `emorl report` to hold a report
SWEEP_ROLE_TAG = vocabulary.SWEEP_ROLE  # "parent" on a sweep's parent run
REPLACED_TAG = vocabulary.SWEEP_REPLACED  # on the parent run of a sweep attempt that `--restart` replaced
PAGE_SIZE = 5000


@dataclass
class RunSelection:
    """Which runs to collect; every criterion given must hold."""

    sweep: str | None = None
    experiment: str | None = None  # an MLflow experiment name
    tags: dict[str, str] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A short human-readable name, e.g. ``sweep=table1 variant=default``."""
        parts = [f"sweep={self.sweep}"] if self.sweep else []
        parts += [f"experiment={self.experiment}"] if self.experiment else []
        parts += [f"{k}={v}" for k, v in sorted(self.tags.items())]
        parts += [f"runs={','.join(self.run_ids)}"] if self.run_ids else []
        return " ".join(parts) or "all runs"

    def wanted_tags(self) -> dict[str, str]:
        """The tag criteria, the sweep included."""
        return {**self.tags, **({vocabulary.SWEEP: self.sweep} if self.sweep else {})}

    def matches(self, tags: dict[str, str]) -> bool:
        """Whether a run with these tags meets the sweep and tag criteria."""
        return all(tags.get(key) == value for key, value in self.wanted_tags().items())

    def filter_string(self) -> str:
        """The MLflow search filter for the sweep and tag criteria."""
        clauses = []
        for key, value in sorted(self.wanted_tags().items()):
            if "'" in value or "`" in key:
                raise EmorlError(f"tag filter {key}={value!r}: quotes are not supported in tag filters")
            clauses.append(f"tags.`{key}` = '{value}'")
        return " and ".join(clauses)


def parse_tag_filter(text: str) -> tuple[str, str]:
    """``key=value`` -> (tag, value); the short names of :data:`TAG_COLUMNS` mean the emorl tags."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise EmorlError(f"--tag {text!r}: expected key=value, e.g. emorl.variant=default or variant=default")
    return TAG_COLUMNS.get(key, key), value.strip()


def tracking_client(tracking_uri: str | None = None):
    """An MlflowClient for ``tracking_uri`` (default: the project's default store)."""
    from mlflow.tracking import MlflowClient

    from emorl.config import default_tracking_uri

    return MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())


is_setting_param = vocabulary.defines_setting  # whether a parameter is part of the setting
setting_hash = vocabulary.setting_id  # the setting's id from a run's parameters (as its tag has it)


def _search(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=PAGE_SIZE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client, name: str | None) -> list[str]:
    if name is None:
        return [e.experiment_id for e in client.search_experiments()]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise EmorlError(f"no MLflow experiment named {name!r} in {client.tracking_uri}; known: {known}")
    return [experiment.experiment_id]


def _fetch_runs(client, selection: RunSelection) -> list:
    experiment_ids = _experiment_ids(client, selection.experiment)
    if not selection.run_ids:
        return _search(client, experiment_ids, selection.filter_string())
    runs = []
    for run_id in selection.run_ids:
        try:
            runs.append(client.get_run(run_id))
        except Exception as error:
            raise EmorlError(f"run {run_id!r} not found in {client.tracking_uri} ({type(error).__name__})") from error
    return [r for r in runs if selection.matches(r.data.tags) and r.info.experiment_id in experiment_ids]


def _final_metrics(run) -> dict[str, float]:
    return {key: float(value) for key, value in run.data.metrics.items()}


def _row(run, experiment_names: dict[str, str]) -> dict:
    info, tags = run.info, run.data.tags
    row = {
        "run_id": info.run_id, "run_name": info.run_name, "status": info.status,
        "start_time": pd.to_datetime(info.start_time, unit="ms") if info.start_time else pd.NaT,
        "end_time": pd.to_datetime(info.end_time, unit="ms") if info.end_time else pd.NaT,
        "mlflow_experiment": experiment_names.get(info.experiment_id, info.experiment_id),
        "parent_run_id": tags.get(PARENT_TAG, ""), "artifact_uri": info.artifact_uri,
    }
    for column, tag in TAG_COLUMNS.items():
        row[column] = tags.get(tag, "")
    row["seed"] = int(row["seed"]) if re.fullmatch(r"-?\d+", row["seed"]) else pd.NA
    row["setting"] = tags.get(vocabulary.SETTING_ID) or setting_hash(run.data.params)
    row["evaluation_runs"] = ""
    row.update({f"params.{k}": v for k, v in run.data.params.items()})
    return row


def _replaced_parents(client, parent_ids: set[str]) -> set[str]:
    """The parent runs among ``parent_ids`` of sweep attempts replaced by ``emorl sweep --restart``."""
    replaced = set()
    for run_id in parent_ids:
        try:
            if REPLACED_TAG in client.get_run(run_id).data.tags:
                replaced.add(run_id)
        except Exception:  # a parent deleted from the store: nothing to exclude
            continue
    return replaced


def _evaluation_runs(client, experiment_ids: list[str], run_ids: set[str]) -> dict[str, list]:
    """The evaluation runs (``emorl evaluate``, evaluation sweeps) of the given runs, by the run they evaluate."""
    found: dict[str, list] = {}
    for run in _search(client, experiment_ids, f"tags.`{EVALUATION_TAG}` != ''"):
        target = run.data.tags.get(EVALUATION_TAG, "")
        if target in run_ids:
            found.setdefault(target, []).append(run)
    return found


def _runs_evaluated_by(client, runs: list) -> list:
    """The training runs that the evaluation runs among ``runs`` evaluate (an evaluation sweep's
    selection reports the runs it evaluated), those not selected already."""
    have = {r.info.run_id for r in runs}
    wanted = sorted({r.data.tags[EVALUATION_TAG] for r in runs if r.data.tags.get(EVALUATION_TAG)} - have)
    found = []
    for run_id in wanted:
        try:
            found.append(client.get_run(run_id))
        except Exception:  # a trained run tracked in another store: its evaluation is reported without it
            continue
    return found


def _trial_runs(client, runs: list) -> list:
    """The runs that are trials: not sweep parents, evaluation or report runs, nor runs of a replaced attempt."""
    parents = {r.data.tags.get(PARENT_TAG) for r in runs if EVALUATION_TAG not in r.data.tags}
    replaced = _replaced_parents(client, parents - {None})
    return [r for r in runs if r.info.run_id not in parents and r.data.tags.get(SWEEP_ROLE_TAG) != "parent"
            and EVALUATION_TAG not in r.data.tags and REPORT_TAG not in r.data.tags
            and r.data.tags.get(PARENT_TAG) not in replaced]


def store_sweeps(tracking_uri: str | None = None) -> tuple[dict[str, int], int]:
    """({sweep name: its trial runs}, all trial runs) of a store, sweeps by name: what ``--sweep`` can select."""
    client = tracking_client(tracking_uri)
    trials = _trial_runs(client, _search(client, _experiment_ids(client, None), ""))
    counts: dict[str, int] = {}
    for run in trials:
        if run.data.tags.get(TAG_COLUMNS["sweep"]):
            counts[run.data.tags[TAG_COLUMNS["sweep"]]] = counts.get(run.data.tags[TAG_COLUMNS["sweep"]], 0) + 1
    return dict(sorted(counts.items())), len(trials)


def collect_runs(selection: RunSelection, tracking_uri: str | None = None) -> pd.DataFrame:
    """The runs of ``selection`` as a tidy table (see the module docstring); sorted by
    experiment, variant, model, dataset, seed. An empty selection gives an empty table with
    the identity columns."""
    client = tracking_client(tracking_uri)
    runs = _fetch_runs(client, selection)
    runs = _trial_runs(client, runs + _runs_evaluated_by(client, runs))
    experiment_names = {e.experiment_id: e.name for e in client.search_experiments()}
    extra = _evaluation_runs(client, list(experiment_names), {r.info.run_id for r in runs}) if runs else {}
    rows, metric_rows = [], []
    for run in runs:
        row = _row(run, experiment_names)
        metrics = _final_metrics(run)
        for evaluation in sorted(extra.get(run.info.run_id, []), key=lambda r: r.info.start_time or 0):
            for key, value in _final_metrics(evaluation).items():
                metrics.setdefault(key, value)
        row["evaluation_runs"] = ",".join(r.info.run_id for r in extra.get(run.info.run_id, []))
        row["nonfinite"] = ",".join(sorted(k for k, v in metrics.items() if not math.isfinite(v)))
        rows.append(row)
        metric_rows.append(metrics)
    identity = ["run_id", "run_name", "status", "start_time", "end_time", "mlflow_experiment", "parent_run_id",
                "artifact_uri", *TAG_COLUMNS, "setting", "evaluation_runs", "nonfinite"]
    table = pd.DataFrame(rows, columns=None if rows else identity)
    if rows:
        metrics_frame = pd.DataFrame(metric_rows, index=table.index)
        table = pd.concat([table, metrics_frame[sorted(metrics_frame.columns)]], axis=1)
    table["seed"] = table["seed"].astype("Int64")
    order = ["experiment", "variant", "model", "dataset", "seed", "run_id"]
    return table.sort_values(order, na_position="last").reset_index(drop=True)


def metric_columns(runs: pd.DataFrame, pattern: str = ".*") -> list[str]:
    """The metric columns of a collected table whose key matches the regular expression ``pattern``."""
    keys = [c for c in runs.columns if "/" in c and not c.startswith("params.")]
    return sorted(k for k in keys if re.fullmatch(pattern, k))


def metric_histories(runs: pd.DataFrame, keys: list[str], tracking_uri: str | None = None,
                     context: tuple[str, ...] = ("experiment", "variant", "model", "dataset", "seed", "setting")
                     ) -> pd.DataFrame:
    """Every logged value of ``keys`` for each run: columns run_id, the ``context`` columns,
    key, step, value (one row per logged point), sorted by run, key and step."""
    client = tracking_client(tracking_uri)
    rows = []
    for _, run in runs.iterrows():
        for key in keys:
            for point in client.get_metric_history(run["run_id"], key):
                rows.append({"run_id": run["run_id"], **{c: run[c] for c in context}, "key": key,
                             "step": int(point.step), "value": float(point.value)})
    columns = ["run_id", *context, "key", "step", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["run_id", "key", "step"]).reset_index(drop=True)


def list_artifacts(run_id: str, path: str, tracking_uri: str | None = None) -> list[str]:
    """Artifact paths directly under ``path`` of a run (empty when there are none)."""
    client = tracking_client(tracking_uri)
    try:
        return [a.path for a in client.list_artifacts(run_id, path)]
    except Exception:  # a missing folder raises on some stores
        return []


def download_artifact(run_id: str, artifact_path: str, tracking_uri: str | None = None,
                      destination: str | Path | None = None) -> Path:
    """Download one artifact of a run and return its local path."""
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    destination = Path(destination or tempfile.mkdtemp(prefix="emorl-analysis-"))
    destination.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(destination),
                                                    tracking_uri=tracking_client(tracking_uri).tracking_uri)
    except Exception as error:
        raise EmorlError(f"run {run_id}: cannot download artifact {artifact_path!r} "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    return Path(local)


def run_artifact_sources(run: pd.Series) -> list[str]:
    """The run and its evaluation runs: where its evaluation artifacts may be."""
    extra = [r for r in str(run.get("evaluation_runs", "") or "").split(",") if r]
    return [run["run_id"], *extra]
