"""The sweep's MLflow parent run, owned by the driver, and the lookup of its child runs.

One parent run per sweep, identified by its tags (``emorl.sweep``, ``emorl.sweep_role=parent``,
``emorl.sweep_output``): launching the same sweep again finds and reopens it rather than creating
a second one. Each trial's run is created and ended by its trainer (the core), as a child of this
run (tag ``mlflow.parentRunId``); this module only reads the children.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from emorl.errors import EmorlError
from emorl import vocabulary
from emorl.tracking import default_artifact_root, ensure_experiment
from emorl.vocabulary import SWEEP, SWEEP_OUTPUT as OUTPUT_TAG, SWEEP_REPLACED as REPLACED_TAG, SWEEP_ROLE as ROLE_TAG


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def prepare_store(uri: str, experiment: str) -> str:
    """Create the store (a new sqlite database) and the experiment here, before any trial starts.

    Two trials creating a new sqlite database at once collide, so the driver does it first.
    Returns the experiment id.
    """
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return ensure_experiment(client_for(uri), experiment, default_artifact_root(uri))
    except Exception as error:
        raise EmorlError(f"cannot reach the MLflow tracking store {uri} ({type(error).__name__}: {error}); "
                         "check the URI (tracking.uri / --tracking-uri) and that the server is up") from error


def find_parent_run(uri: str, experiment_id: str, sweep: str, output_dir: Path):
    """The parent run of this sweep (name and output folder), or None."""
    client = client_for(uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP}` = '{sweep}' and "
                              f"tags.`{ROLE_TAG}` = 'parent'", max_results=1000, order_by=["attributes.start_time ASC"])
    matching = [r for r in runs if r.data.tags.get(OUTPUT_TAG) == str(output_dir) and REPLACED_TAG not in r.data.tags]
    return matching[0] if matching else None


def open_parent_run(uri: str, experiment_id: str, sweep: str, output_dir: Path, tags: dict[str, str],
                    params: dict[str, str], spec_file: Path, plan: list[dict]) -> tuple[str, bool]:
    """Reopen this sweep's parent run, or create it; returns (run id, created)."""
    client = client_for(uri)
    existing = find_parent_run(uri, experiment_id, sweep, output_dir)
    if existing is not None:
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, False
    run_tags = {**tags, SWEEP: sweep, ROLE_TAG: "parent", OUTPUT_TAG: str(output_dir), vocabulary.RUN_KIND: "sweep"}
    run = client.create_run(experiment_id, run_name=sweep, tags=run_tags)
    run_id = run.info.run_id
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as folder:
        client.log_artifact(run_id, str(spec_file), "sweep")
        trials = Path(folder) / "trials.json"
        trials.write_text(json.dumps(plan, indent=1))
        client.log_artifact(run_id, str(trials), "sweep")
    return run_id, True


def mark_replaced(uri: str, experiment_id: str, sweep: str, output_dir: Path) -> str | None:
    """Tag the current parent run as replaced (``--restart``), so that a new one is created."""
    existing = find_parent_run(uri, experiment_id, sweep, output_dir)
    if existing is None:
        return None
    client = client_for(uri)
    client.set_tag(existing.info.run_id, REPLACED_TAG, time.strftime("%Y-%m-%d %H:%M:%S"))
    if existing.info.status == "RUNNING":
        client.set_terminated(existing.info.run_id, status="KILLED")
    return existing.info.run_id


def finish_parent_run(uri: str, run_id: str, status: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    client = client_for(uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
    client.set_terminated(run_id, status=status)


def child_runs(uri: str, parent_run_id: str) -> dict[str, object]:
    """The child runs of a parent, by trial id (tag ``emorl.sweep_trial``); the latest start wins."""
    client = client_for(uri)
    runs = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000,
        order_by=["attributes.start_time ASC"])
    trial = vocabulary.SWEEP_TRIAL
    return {r.data.tags[trial]: r for r in runs if trial in r.data.tags}
