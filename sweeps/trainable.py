"""The Ray Tune function trainable: one trial of a sweep, in a Ray worker process.

A trial gets plain data (:meth:`sweeps.spec.Trial.payload`): a training trial runs
:func:`emorl.engine.train.train` on its resolved config, an evaluation trial runs
:func:`emorl.engine.evaluation_run.run_evaluation` on a checkpoint. The core does the real work
and owns the trial's MLflow run (a child of the sweep's parent run); this module only

- continues the trial where it stopped: the trainer resumes from ``<output_dir>/checkpoints/last.pt``;
  when that file is missing here (a retry on another node), it is restored first from the trial's
  latest Tune checkpoint, together with the tracking state, so the same MLflow run is reopened;
- reports metrics to Tune at every log and evaluation, and the checkpoint (``last.pt`` and the
  tracking state) at every checkpoint;
- records each attempt and the trial's state in ``<output_dir>/sweep/`` (see :mod:`sweeps.status`),
  with the number of tracking records its trainer could not deliver (``undelivered``).

A failure raises, so that Tune retries the trial (``max_failures``) and lists it as errored.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from ray import tune

from emorl.engine.train import TrainingHooks
from sweeps import status

CHECKPOINT_FILE = "last.pt"
TRACKING_STATE = "state.json"


def run_trial(config: dict) -> None:
    """Tune entry point: ``config["trial"]`` is the trial's payload."""
    payload = config["trial"]
    os.environ.update(payload.get("env") or {})
    for name in ("ray.train", "ray.tune"):  # one line per checkpoint in the driver's console is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch  # the trial's CPU share: Ray sets OMP_NUM_THREADS=1

    torch.set_num_threads(int(payload.get("threads") or 1))
    if payload["kind"] == "evaluate":
        _evaluate(payload)
    else:
        _train(payload)


class TuneHooks(TrainingHooks):
    """Trainer hooks that report to Tune (the latest value of every metric in each report).

    The final checkpoint is reported after the trainer returns (:func:`report_checkpoint`): a Tune
    report waits for the driver, and the trainer ends its MLflow run only after that checkpoint.
    """

    def __init__(self, output_dir: Path, max_steps: int):
        self.output_dir = output_dir
        self.max_steps = max_steps
        self.latest: dict[str, float] = {}

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update(metrics)
        tune.report({**self.latest, "step": step})

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update(metrics)
        tune.report({**self.latest, "step": step})

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        status.write_status(self.output_dir, state="running", step=step, pid=os.getpid())
        self.latest.update(metrics)
        if step < self.max_steps:
            report_checkpoint(self.output_dir, path, {**self.latest, "step": step})


def report_checkpoint(output_dir: Path, path: Path, metrics: dict) -> None:
    """Report ``metrics`` to Tune with the checkpoint ``path`` and the trial's tracking state."""
    scratch = status.status_file(output_dir).parent  # same file system: last.pt is hard-linked
    with tempfile.TemporaryDirectory(prefix="tune-checkpoint-", dir=scratch) as folder:
        _link_or_copy(path, Path(folder) / CHECKPOINT_FILE)
        state = output_dir / "tracking" / TRACKING_STATE
        if state.exists():
            shutil.copy2(state, Path(folder) / TRACKING_STATE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _train(payload: dict) -> None:
    from emorl.engine import checkpoint as ckpt
    from emorl.engine.train import train
    from emorl.tracking import undelivered

    output_dir = Path(payload["output_dir"])
    restored = restore_from_tune_checkpoint(output_dir)
    local = output_dir / "checkpoints" / CHECKPOINT_FILE
    start_step = int(ckpt.load(local)["step"]) if local.exists() else 0
    attempt = status.record_attempt(output_dir, pid=os.getpid(), node_id=_node_id(), host=socket.gethostname(),
                                    start_step=start_step, restored_from_tune=restored)
    hooks = TuneHooks(output_dir, int(payload["config"]["trainer"]["max_steps"]))
    try:
        result = train(payload["config"], hooks)
    except Exception as error:  # recorded for the driver's table, then raised for Tune to retry
        status.write_status(output_dir, state="failed", reason=_reason(error), attempt=attempt,
                            undelivered=undelivered(output_dir))
        raise
    # The trainer's last act was a forced delivery of its spool: what it could not deliver is counted
    # here, for the driver (which delivers it later, or says so and exits 3).
    status.write_status(output_dir, state="finished", step=result.step, metrics=result.metrics,
                        run_id=result.run_id, attempt=attempt, undelivered=undelivered(output_dir))
    report_checkpoint(output_dir, result.checkpoint,
                      {**hooks.latest, "step": result.step, **result.metrics, "emorl_finished": 1})


def _evaluate(payload: dict) -> None:
    from emorl import vocabulary
    from emorl.engine.evaluation_run import EvaluationTracking, run_evaluation

    folder = Path(payload["output_dir"])
    work = payload["evaluation"]
    attempt = status.record_attempt(folder, pid=os.getpid(), node_id=_node_id(), host=socket.gethostname(),
                                    start_step=0, restored_from_tune=False)
    try:
        metrics = run_evaluation(
            work["checkpoint"], refine_steps=work["refine_steps"], num_slots=work["num_slots"], data=work["data"],
            num_images=work["num_images"], batch_size=work["batch_size"], metrics=list(work["metrics"]),
            device=work["device"], seed=work["seed"], output_dir=folder,
            tracking=EvaluationTracking(work["tracking_uri"], work["tracking_experiment"], work["parent_run_id"],
                                        {vocabulary.SWEEP: work["sweep"], vocabulary.SWEEP_TRIAL: payload["id"]}))
    except Exception as error:
        status.write_status(folder, state="failed", reason=_reason(error), attempt=attempt)
        raise
    status.write_status(folder, state="finished", metrics=metrics, checkpoint=work["checkpoint"], attempt=attempt)
    tune.report({**metrics, "emorl_finished": 1})


def restore_from_tune_checkpoint(output_dir: Path) -> bool:
    """Put the trial's latest Tune checkpoint in place when its folder lacks ``last.pt`` here.

    True when something was restored (a retry on a node without the trial's folder).
    """
    local = output_dir / "checkpoints" / CHECKPOINT_FILE
    if local.exists():
        return False
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        source = Path(folder) / CHECKPOINT_FILE
        if not source.exists():
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = local.with_name(local.name + ".restoring")
        shutil.copy2(source, temporary)
        temporary.replace(local)
        state = Path(folder) / TRACKING_STATE
        target = output_dir / "tracking" / TRACKING_STATE
        if state.exists() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(state, target)
    return True


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (a direct call in a test)
        return "local"
