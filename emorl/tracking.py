"""Experiment tracking behind a small interface: MLflow, or nothing.

:class:`MLflowTracker` writes every record (run start, params, tags, metrics, artifacts, end)
to a local spool file in the run's folder first, then delivers pending records to the
tracking store in batches. If the store (e.g. an HTTP tracking server) is unreachable,
training goes on, the records wait in the spool, delivery is retried every
``retry_after_s`` seconds, and the user is told once; whatever is still pending at the end
can be delivered later with ``emorl sync RUN_DIR``. Exactly one tracker owns a run: it
creates it (or reopens it when a run is resumed) and ends it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emorl.errors import EmorlError

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
# The exit status of a command that did its work but left tracking records undelivered (the store
# was unreachable): `emorl sync`, `emorl train`, `emorl sweep`. Not 0: the results are not all in
# the store yet; not 1: nothing failed, and `emorl sync` (or running the command again) completes it.
UNDELIVERED_EXIT_CODE = 3


class Tracker:
    """The interface, and the no-op tracker used when tracking is disabled."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """An image file as MLflow's image of ``key`` at ``step`` (its UI shows a step slider)."""

    def flush(self, force: bool = False) -> bool:
        """Try to deliver what is pending; True when nothing is left."""
        return True

    def finish(self, status: str = "FINISHED") -> None: ...


class MLflowTracker(Tracker):
    """Tracks one run in MLflow through a local spool (see the module docstring)."""

    def __init__(self, uri: str, run_dir: str | Path, flush_every_s: float = 10.0, retry_after_s: float = 30.0,
                 quiet: bool = False):
        """Attach to the spool of ``run_dir`` (created if needed); call :meth:`start` to begin tracking."""
        self.uri = uri
        self.folder = Path(run_dir).resolve() / "tracking"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spool = self.folder / "spool.jsonl"
        self.state_file = self.folder / "state.json"
        self.flush_every_s = flush_every_s
        self.retry_after_s = retry_after_s
        self.quiet = quiet
        self._client = None
        self._last_attempt = 0.0
        self._last_failure: str | None = None
        self._told_unreachable = False
        self.state = self._load_state()
        self.state["uri"] = uri
        self.run_id = self.state.get("run_id")

    def start(self, experiment: str, run_name: str | None = None, tags: dict[str, Any] | None = None,
              parent_run_id: str | None = None, artifact_root: str | None = None) -> "MLflowTracker":
        """Create the run, or reopen it when this run folder already started one (a resumed run)."""
        if not self.state.get("started"):
            run_tags = {k: str(v) for k, v in (tags or {}).items()}
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            self.state["started"] = True
            self._append({"op": "start", "experiment": experiment, "run_name": run_name, "tags": run_tags,
                          "artifact_root": artifact_root})
        else:
            self._append({"op": "reopen"})
        self.flush(force=True)
        return self

    # -- the spool ------------------------------------------------------------------------------
    def _load_state(self) -> dict:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {"run_id": None, "delivered": 0, "written": 0, "started": False}

    def _save_state(self) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state))
        temporary.replace(self.state_file)

    def _append(self, record: dict) -> None:
        self.state["written"] += 1
        record["seq"] = self.state["written"]
        with self.spool.open("a") as handle:
            handle.write(json.dumps(record, default=_jsonable) + "\n")
        self._save_state()

    def pending(self) -> list[dict]:
        """Records written but not yet delivered."""
        if not self.spool.exists():
            return []
        delivered = self.state["delivered"]
        with self.spool.open() as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        return [r for r in records if r["seq"] > delivered]

    def ended(self) -> bool:
        """Whether the run's last start (or reopening) was followed by an end record."""
        if not self.spool.exists():
            return False
        ended = False
        with self.spool.open() as handle:
            for line in handle:
                if line.strip():
                    op = json.loads(line)["op"]
                    ended = op == "end" or (ended and op not in ("start", "reopen"))
        return ended

    # -- the interface ----------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._append({"op": "params", "params": {k: _param_value(v) for k, v in params.items()}})
        self.flush()

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._append({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})
        self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._append({"op": "metrics", "step": int(step), "timestamp": int(time.time() * 1000), "metrics": values})
        self.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._append({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})
        self.flush()

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        self._append({"op": "image", "path": str(Path(path).resolve()), "key": key, "step": int(step)})
        self.flush()

    def finish(self, status: str = "FINISHED") -> None:
        self._append({"op": "end", "status": status})
        if not self.flush(force=True) and not self.quiet:
            print(
                f"emorl: the tracking store {self.uri} could not be reached ({self._last_failure}); "
                f"{len(self.pending())} tracking records are kept in {self.spool}. Deliver them when it is back "
                f"with: emorl sync {self.folder.parent}",
                file=sys.stderr,
            )

    # -- delivery ---------------------------------------------------------------------------------
    def flush(self, force: bool = False) -> bool:
        now = time.monotonic()
        waiting = self.retry_after_s if self._last_failure else self.flush_every_s
        if not force and now - self._last_attempt < waiting:
            return False
        self._last_attempt = now
        records = self.pending()
        if not records:
            return True
        try:
            self._deliver(records)
        except Exception as error:  # the store is down or refuses: keep the records, retry later
            self._last_failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            if not self._told_unreachable and not self.quiet:
                print(
                    f"emorl: tracking store {self.uri} unreachable ({self._last_failure}); training goes on and "
                    f"tracking records are kept in {self.spool}, to be delivered when it is back "
                    f"(or with `emorl sync {self.folder.parent}`).",
                    file=sys.stderr,
                )
                self._told_unreachable = True
            return False
        if self._last_failure and not self.quiet:
            print(f"emorl: tracking store {self.uri} reachable again; pending records delivered.", file=sys.stderr)
        self._last_failure = None
        self._told_unreachable = False
        return True

    def _client_for_uri(self):
        if self._client is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _deliver(self, records: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._client_for_uri()
        index = 0
        while index < len(records):
            record = records[index]
            op = record["op"]
            if op != "start" and self.run_id is None:
                raise EmorlError(f"spool {self.spool} has records before the run was created")
            consumed = 1
            if op == "start":
                self.run_id = self._create_run(client, record)
                self.state["run_id"] = self.run_id
            elif op == "reopen":
                client.update_run(self.run_id, status="RUNNING")
            elif op == "params":
                items = [Param(k, v) for k, v in record["params"].items()]
                for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
                    client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])
            elif op == "tags":
                client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])
            elif op == "metrics":  # consecutive metric records go out together
                while index + consumed < len(records) and records[index + consumed]["op"] == "metrics":
                    consumed += 1
                metrics = [Metric(k, v, r["timestamp"], r["step"])
                           for r in records[index:index + consumed] for k, v in r["metrics"].items()]
                for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                    client.log_batch(self.run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
            elif op == "artifact":
                if Path(record["path"]).exists():
                    client.log_artifact(self.run_id, record["path"], record["artifact_path"])
            elif op == "image":
                if Path(record["path"]).exists():
                    from PIL import Image

                    with Image.open(record["path"]) as image:
                        client.log_image(self.run_id, image.convert("RGB"), key=record["key"], step=record["step"])
            elif op == "end":
                client.set_terminated(self.run_id, status=record["status"])
            self.state["delivered"] = records[index + consumed - 1]["seq"]
            self._save_state()
            index += consumed

    def _create_run(self, client, record: dict) -> str:
        experiment_id = ensure_experiment(client, record["experiment"], record.get("artifact_root"))
        run = client.create_run(experiment_id, run_name=record.get("run_name"), tags=record.get("tags") or {})
        return run.info.run_id


def ensure_experiment(client, name: str, artifact_root: str | None = None) -> str:
    """Get or create an MLflow experiment of the model-training kind (MLflow's UI then opens it on
    its runs table, not on the GenAI views); tolerates a concurrent creation by another process."""
    from emorl.vocabulary import EXPERIMENT_KIND, TRAINING_EXPERIMENT_KIND

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifact_root,
                                     tags={EXPERIMENT_KIND: TRAINING_EXPERIMENT_KIND})
        except Exception:
            if client.get_experiment_by_name(name) is None:
                raise
        experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND not in experiment.tags:  # made before emorl set the kind, or by someone else
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, TRAINING_EXPERIMENT_KIND)
    return experiment.experiment_id


def default_artifact_root(uri: str) -> str | None:
    """For a local sqlite store: artifacts beside the database file; servers choose their own."""
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        return (database.parent / "mlartifacts").resolve().as_uri()
    return None


def spool_tracker(run_dir: str | Path, uri: str | None = None) -> MLflowTracker:
    """The tracker of the spool a run folder already holds (to inspect or deliver it), for the URI
    the run used unless ``uri`` is given."""
    folder = Path(run_dir).resolve()
    state_file = folder / "tracking" / "state.json"
    if not state_file.exists():
        raise EmorlError(f"{folder}: no tracking spool here (expected {state_file}); give a run folder")
    uri = uri or json.loads(state_file.read_text()).get("uri")
    if not uri:
        raise EmorlError(f"{folder}: the spool does not record its tracking URI; pass --uri")
    return MLflowTracker(uri, folder, quiet=True)


def undelivered(run_dir: str | Path) -> int:
    """How many tracking records of a run folder wait in its spool (0 when it has no spool)."""
    if not (Path(run_dir) / "tracking" / "state.json").exists():
        return 0
    return len(spool_tracker(run_dir).pending())


@dataclass
class Delivery:
    """What one attempt to deliver a run folder's spool did."""

    run_dir: Path
    uri: str
    run_id: str | None
    pending: int  # records waiting before the attempt
    left: int  # records still waiting after it
    failure: str | None = None  # why the store refused, when it did
    ended: str | None = None  # the status this attempt ended a run left open with (``end_status``)

    @property
    def delivered(self) -> int:
        return self.pending - self.left


def deliver(run_dir: str | Path, uri: str | None = None, end_status: str | None = None) -> Delivery:
    """Try once to deliver the pending records of a run folder; an unreachable store is reported in
    the result, not raised. With ``end_status``, a run left open is first ended with that status."""
    tracker = spool_tracker(run_dir, uri)
    ended = end_status if end_status and not tracker.ended() else None
    if ended:
        tracker._append({"op": "end", "status": ended})
    pending = len(tracker.pending())
    if pending:
        tracker.flush(force=True)
    return Delivery(tracker.folder.parent, tracker.uri, tracker.run_id, pending, len(tracker.pending()),
                    tracker._last_failure, ended)


def sync(run_dir: str | Path, uri: str | None = None) -> int:
    """Deliver the pending records of a run folder; returns how many were pending."""
    result = deliver(run_dir, uri)
    if result.left:
        raise EmorlError(f"could not deliver {result.left} tracking records to {result.uri}: {result.failure}")
    return result.pending


def spooled_run_dirs(path: str | Path) -> list[Path]:
    """The run folders at or under ``path`` (a run folder or a sweep folder) that hold a tracking spool."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise EmorlError(f"{root}: no such folder; give a run folder or a sweep folder")
    found = sorted(state.parent.parent for state in root.rglob("tracking/state.json"))
    if not found:
        raise EmorlError(f"{root}: no tracking spool here or below (a run folder holds tracking/state.json); "
                         "give the folder of a run (trainer.output_dir) or of a sweep (--output)")
    return found


def end_abandoned_run(run_dir: str | Path, status: str = "KILLED") -> Delivery:
    """End the run of a folder whose process died without ending it (a sweep trial killed by Ray):
    append the end record its tracker would have written, then try to deliver the spool.

    The spool stays the run's one record: a later resume appends ``reopen`` after this end, so
    the run goes back to RUNNING in order. Only for a folder no live process writes to.
    """
    return deliver(run_dir, end_status=status)


def tracking_note(uri: str, run_dir: str | Path, run_id: str | None, experiment: str | None = None) -> str:
    """What to tell the user at the end of a run: where it is tracked, or what still waits in its spool."""
    waiting = undelivered(run_dir)
    if waiting:
        return (f"tracking: {waiting} records wait in {Path(run_dir) / 'tracking' / 'spool.jsonl'}, the store {uri} "
                f"was unreachable; deliver them with:\n  emorl sync {run_dir}")
    return f"tracked in MLflow ({uri}), run {run_id}; look at it: {browse_command(uri, experiment)}"


def browse_command(uri: str, experiment: str | None = None) -> str:
    """How to look at what a tracking store holds; with an ``experiment`` (name), the link that
    opens it on its runs table. (MLflow 3.17's UI opens every experiment on its GenAI views unless
    the link says ``workflowType=machine_learning`` or the user flips its "Model training" switch;
    the experiment kind we set does not change that in this version.)"""
    experiment_id = _experiment_id(uri, experiment) if experiment else None
    page = f"/#/experiments/{experiment_id}?workflowType=machine_learning" if experiment_id else ""
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}{page} in a browser" if page else f"open {uri} in a browser"
    command = f"mlflow ui --backend-store-uri {uri}"
    return f"{command}, then open http://127.0.0.1:5000{page}" if page else command


def _experiment_id(uri: str, name: str) -> str | None:
    """The id of experiment ``name`` in the store, or None (not there, or the store is unreachable)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except Exception:  # only a hint: never fail the command for it
        return None
    return experiment.experiment_id if experiment else None


def _param_value(value: Any) -> str:
    from emorl.vocabulary import param_value

    return param_value(value)[:MAX_PARAM_LENGTH]


def _jsonable(value: Any):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
