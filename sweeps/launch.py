"""Run an expanded sweep on Ray Tune: start or join Ray, own the parent run, resume, summarise.

The order matters: everything that can be wrong with the input (the spec, the resources against
the machine or cluster, missing evaluation checkpoints, missing data) fails before a trial or a
tracking run starts. Then the driver generates missing data sets once, creates the MLflow
experiment and the sweep's parent run (or reopens it), and runs the unfinished trials.

Resuming has two layers. Tune's own: when the previous launch of the same trials left a
restorable Tune experiment, it is continued with ``Tuner.restore`` (unfinished and errored trials
go on from their last Tune checkpoints). Ours, which decides: a trial whose folder says it
finished (or whose MLflow run finished) is not scheduled at all, and every scheduled trial
continues from its own ``last.pt`` and reopens its own MLflow run (the trainer's resume).

Tracking ends with the launch (:mod:`sweeps.delivery`): the runs of trials stopped by a Ctrl-C are
ended KILLED, and every ended trial's spool is delivered; what the store did not take is counted,
and the sweep exits 3 rather than 0 (running it again, or ``emorl sync``, delivers it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from emorl import vocabulary
from emorl.errors import ConfigError, EmorlError
from emorl.locking import exclusive
from sweeps import status
from sweeps import tracking as sweep_tracking
from sweeps.delivery import settle_trial
from sweeps.spec import Plan, Trial

STATE_FILE = "sweep.json"


@dataclass
class LaunchOptions:
    address: str | None = None  # a Ray cluster to join; None: start a local Ray here
    num_cpus: int | None = None  # local Ray only: CPUs it may use (default: all)
    num_gpus: int | None = None  # local Ray only
    storage: str | None = None  # Tune's storage (default <output>/tune); a shared path or URI on clusters
    restart: bool = False  # discard the sweep's previous state and start over
    prepare_data: bool = True  # generate missing data sets in the driver first
    ray_temp_dir: str | None = None  # local Ray only
    verbose: int = 1  # Tune's verbosity (0-3)


@dataclass
class TrialOutcome:
    trial: Trial
    state: str  # finished | failed | unfinished
    detail: str = ""  # the step, the failure reason, ...
    ran_now: bool = False  # scheduled in this launch
    attempts: int = 0
    delivered: int = 0  # tracking records the driver delivered from the trial's spool in this launch
    undelivered: int = 0  # tracking records still waiting in the trial's spool (the store was unreachable)
    delivery_failure: str | None = None  # why the store did not take them
    run_ended: str | None = None  # the status the driver ended the trial's run with (its process could not)


@dataclass
class SweepOutcome:
    plan: Plan
    parent_run_id: str | None
    outcomes: list[TrialOutcome] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0

    def having(self, state: str) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.state == state]

    @property
    def undelivered(self) -> int:
        return sum(o.undelivered for o in self.outcomes)

    @property
    def state(self) -> str:
        if self.having("failed"):
            return "failed"
        return "interrupted" if self.having("unfinished") else "finished"

    @property
    def exit_code(self) -> int:
        """1 some trial failed, 130 interrupted, 3 every trial finished but tracking records are
        undelivered (:data:`emorl.tracking.UNDELIVERED_EXIT_CODE`), 0 all done and delivered."""
        from emorl.tracking import UNDELIVERED_EXIT_CODE

        codes = {"failed": 1, "interrupted": 130, "finished": UNDELIVERED_EXIT_CODE if self.undelivered else 0}
        return codes[self.state]


# -- trial states --------------------------------------------------------------------------------
def trial_state(trial: Trial, children: dict | None = None) -> tuple[str, str]:
    """(finished | failed | partial | new, detail), from the trial's folder and its MLflow run."""
    state = status.read_status(trial.output_dir)
    if trial.kind == "evaluate":
        if state.get("state") == "finished":
            return "finished", "evaluated"
        return ("failed", state.get("reason", "")) if state.get("state") == "failed" else ("new", "")
    step = int(state.get("step") or 0)
    if state.get("state") == "finished" and step >= trial.max_steps:
        return "finished", f"step {step}"
    run = (children or {}).get(trial.id)
    if run is not None and run.info.status == "FINISHED" and \
            run.data.params.get("trainer.max_steps") == str(trial.max_steps):
        return "finished", "finished (MLflow)"
    if state.get("state") == "failed":
        return "failed", state.get("reason", "")
    if step or run is not None:
        return "partial", f"at step {step}" if step else "started"
    return "new", ""


# -- preflight -----------------------------------------------------------------------------------
def check_resources(plan: Plan, options: LaunchOptions) -> str:
    """What the launch checks, for ``--dry-run``: this machine (local Ray), or the nodes of the
    cluster at ``options.address`` (joined, then left); raises as the launch does, else says what fits."""
    if not options.address:
        return check_local_resources(plan, options)
    with ray_session(options):
        return check_cluster_resources(plan)


def check_local_resources(plan: Plan, options: LaunchOptions) -> str:
    """Refuse trials that cannot fit this machine (local Ray), before anything starts."""
    cpus = options.num_cpus or os.cpu_count() or 1
    if options.num_gpus is not None:
        gpus = options.num_gpus
    else:
        import torch

        gpus = torch.cuda.device_count()
    return _check_fits(plan, cpus, gpus, "this machine")


def check_cluster_resources(plan: Plan) -> str:
    """Refuse trials that fit on no node of the cluster joined."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    return _check_fits(plan, cpus, gpus, f"the largest node of the cluster ({len(nodes)} nodes)")


def _check_fits(plan: Plan, cpus: float, gpus: float, where: str) -> str:
    wanted = plan.spec.resources
    if wanted.cpus > cpus:
        raise ConfigError(f"{plan.spec.path}: resources.cpus={wanted.cpus:g} per trial, but {where} has {cpus:g} "
                          "CPUs for Ray; lower resources.cpus (or pass --cpus), or use a cluster (--address)")
    if wanted.gpus > gpus:
        raise ConfigError(f"{plan.spec.path}: resources.gpus={wanted.gpus:g} per trial, but {where} has "
                          f"{gpus:g} GPUs; pass --gpus 0 to train on CPUs, or use a GPU cluster (--address)")
    return (f"resources: a trial ({wanted.cpus:g} CPU, {wanted.gpus:g} GPU) fits {where} ({cpus:g} CPUs, "
            f"{gpus:g} GPUs for Ray)")


def check_sources(plan: Plan, trials: list[Trial]) -> dict[str, dict]:
    """The checkpoints evaluated must exist and be finished; returns their configs by path."""
    from emorl.engine import checkpoint as ckpt

    configs, problems, seen = {}, [], set()
    for trial in trials:
        path = trial.evaluation["checkpoint"]
        if path in seen:
            continue
        seen.add(path)
        if not Path(path).exists():
            problems.append(f"{trial.evaluation['source_trial']}: no checkpoint at {path}")
            continue
        state = ckpt.load(path, purpose="evaluate")
        if not state.get("finished"):
            problems.append(f"{trial.evaluation['source_trial']}: {path} is at step {state.get('step')}, not finished")
        configs[path] = state["config"]
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        raise EmorlError(f"{plan.spec.name}: {len(problems)} source checkpoint(s) are missing or unfinished:\n  "
                         f"{shown}\nfinish the training sweep first (or point evaluation.source / --source-output "
                         "at the right folder)")
    return configs


def check_resumable(trials: list[Trial]) -> None:
    """A trial folder that already holds a run must hold one with these settings (the trainer would
    refuse to resume it, on every retry): say so before anything starts."""
    from emorl.engine import checkpoint as ckpt
    from emorl.engine.train import changed_settings

    problems = []
    for trial in trials:
        checkpoint = trial.output_dir / "checkpoints" / "last.pt"
        if trial.kind != "train" or not checkpoint.exists():
            continue
        changed = changed_settings(ckpt.load(checkpoint)["config"], trial.config)
        if changed:
            problems.append(f"{trial.id}: {', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}")
    if problems:
        raise ConfigError("these trials' folders hold runs with other settings, which cannot be resumed:\n  "
                          + "\n  ".join(problems) + "\nuse the overrides of the first launch, --restart to "
                          "start the sweep over, or --output for a new sweep folder")


def prepare_data(plan: Plan, trials: list[Trial],
                 source_configs: dict[str, dict] | None = None) -> list[Path]:
    """Make (or find) every data set the trials need, once, here; returns the files."""
    from emorl.engine.data import dataset_file

    files, seen = [], set()
    if plan.spec.kind == "training":
        for trial in trials:
            data = {k: v for k, v in trial.config["data"].items() if k not in ("num_workers", "batch_size")}
            key = json.dumps(data, sort_keys=True)
            if key not in seen:
                seen.add(key)
                files.append(dataset_file(trial.config["data"], progress=True))
        return files
    from emorl.engine.evaluation_run import evaluation_set  # the core's choice of evaluation data

    for trial in trials:
        container = (source_configs or {})[trial.evaluation["checkpoint"]]
        key = json.dumps([container["data"], trial.evaluation["data"]], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            dataset, _ = evaluation_set(container, trial.evaluation["data"], None, "test")
            files.append(dataset.path)
    return files


# -- Ray -----------------------------------------------------------------------------------------
@contextmanager
def ray_session(options: LaunchOptions):
    """Start a local Ray (never joining another one by accident) or join ``options.address``."""
    import ray

    if options.address:
        try:
            ray.init(address=options.address, log_to_driver=True)
        except Exception as error:
            raise EmorlError(f"cannot join the Ray cluster at {options.address} ({type(error).__name__}: {error}); "
                             "start it with `ray start --head` (see docs/sweeps.md) or drop --address") from error
    else:
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        ray.init(address="local", num_cpus=options.num_cpus, num_gpus=options.num_gpus, include_dashboard=False,
                 _temp_dir=options.ray_temp_dir, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def _reporter(plan: Plan):
    from ray import tune

    columns = {"step": "step", "train/loss": "loss", "test/fg_ari": "test fg_ari"} if plan.spec.kind == "training" \
        else {"emorl_finished": "done"}
    return tune.CLIReporter(metric_columns=columns, parameter_columns={"trial/kind": "kind"}, max_report_frequency=30,
                            max_progress_rows=40, max_error_rows=40)


def trial_name(trial) -> str:
    return trial.config["trial"]["id"]


def trial_dirname(trial) -> str:
    return trial.config["trial"]["id"].replace("/", "-")


def _join(storage: str, name: str) -> str:
    """``storage/name`` for a local folder or a URI (s3://bucket/prefix)."""
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else str(Path(storage).expanduser().resolve() / name)


def _fingerprint(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tune_settings(plan: Plan) -> dict:
    spec = plan.spec
    return {"resources": spec.resources.ray(), "max_failures": spec.max_failures,
            "max_concurrent": spec.max_concurrent}


def _restorable(record: dict | None, plan: Plan, payloads: dict[str, dict]) -> bool:
    """Tune's experiment of the last launch can continue exactly these trials, with the same settings."""
    from ray import tune

    if not record or record.get("settings") != _fingerprint(_tune_settings(plan)):
        return False
    if any(record.get("trials", {}).get(trial_id) != _fingerprint(p) for trial_id, p in payloads.items()):
        return False
    try:
        if not tune.Tuner.can_restore(record["path"]):
            return False
        analysis = tune.ExperimentAnalysis(record["path"])
        done_in_tune = {t.config["trial"]["id"] for t in analysis.trials if t.status == "TERMINATED"}
    except Exception:  # an unreadable state: start a fresh Tune experiment (our own resume still holds)
        return False
    # Tune would continue every trial it has not finished (those not generated yet included): exactly ours?
    return set(payloads) == set(record["trials"]) - done_in_tune


def _run_config(plan: Plan, options: LaunchOptions, storage: str, name: str):
    from ray import tune

    return tune.RunConfig(name=name, storage_path=storage, verbose=options.verbose, progress_reporter=_reporter(plan),
                          failure_config=tune.FailureConfig(max_failures=plan.spec.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


def run_tune(plan: Plan, pending: list[Trial], payloads: dict[str, dict], options: LaunchOptions,
             state: dict, candidates: dict[str, Trial] | None = None) -> dict[str, object]:
    """Run the pending trials with Tune (restoring its last experiment when possible); results by trial id.

    An adaptive sweep (``candidates``: the trials its rule may add) runs them from a searcher instead."""
    from ray import tune

    from sweeps.trainable import run_trial

    spec = plan.spec
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the compact status table below, not per-trial config dumps
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(run_trial, spec.resources.ray())
    record = state.get("tune")
    if spec.adaptive is not None:  # the searcher's decisions live in the trial folders, not in Tune's state
        return _fit(_adaptive_tuner(plan, pending, options, state, trainable, candidates))
    if not options.restart and _restorable(record, plan, payloads):
        print(f"continuing Tune experiment {record['path']}")
        tuner = tune.Tuner.restore(record["path"], trainable, resume_unfinished=True, resume_errored=True)
    else:
        storage = options.storage or str(plan.output_dir / "tune")
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([payloads[t.id] for t in pending])},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=False,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_dirname),
            run_config=_run_config(plan, options, storage, name),
        )
        state["tune"] = {"path": _join(storage, name),
                         "settings": _fingerprint(_tune_settings(plan)),
                         "trials": {trial_id: _fingerprint(p) for trial_id, p in payloads.items()}}
        _save_state(plan, state)
    return _fit(tuner)


def _fit(tuner) -> dict[str, object]:
    grid = tuner.fit()
    return {result.config["trial"]["id"]: result for result in grid if result.config}  # None: never started


def _adaptive_tuner(plan: Plan, pending: list[Trial], options: LaunchOptions, state: dict, trainable,
                    candidates: dict[str, Trial]):
    """A fresh Tune experiment whose trials come from :class:`sweeps.adaptive_search.AdaptiveSearcher`:
    the pending trials, then the seeds the rule adds (recorded in ``sweep.json`` as they are decided)."""
    from ray import tune

    from emorl.data.paths import default_data_dir
    from sweeps import adaptive
    from sweeps.adaptive_search import AdaptiveSearcher

    def record(added: list[Trial]) -> None:
        state.update(trials=[t.id for t in plan.trials], adaptive=adaptive.seeds_by_setting(plan))
        _save_state(plan, state)
        print("adaptive seeds: added " + ", ".join(t.id for t in added))

    data_dir = str(default_data_dir())
    searcher = AdaptiveSearcher(plan, pending, candidates,
                                lambda trial: trial.payload(state.get("parent_run_id"), data_dir), record)
    storage = options.storage or str(plan.output_dir / "tune")
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=plan.spec.max_concurrent,
                                    reuse_actors=False, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_dirname),
        run_config=_run_config(plan, options, storage, f"{plan.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"))


# -- the sweep -----------------------------------------------------------------------------------
def sweep_lock_file(plan: Plan) -> Path:
    """Beside the sweep folder (which --restart renames): held by the one launch that runs it."""
    return plan.output_dir.parent / f".{plan.output_dir.name}.lock"


def run_sweep(plan: Plan, options: LaunchOptions) -> SweepOutcome:
    """Run a sweep to the end (or until interrupted), as the only launch on its folder; see the
    module docstring."""
    with exclusive(sweep_lock_file(plan), f"the sweep folder {plan.output_dir}"):
        return _run_sweep(plan, options)


def _run_sweep(plan: Plan, options: LaunchOptions) -> SweepOutcome:
    from emorl.data.paths import default_data_dir

    started = time.time()
    candidates = None
    if plan.spec.adaptive is not None:  # the seeds decided by earlier launches join the plan first
        from sweeps import adaptive

        candidates = adaptive.candidate_trials(plan) if options.restart else \
            adaptive.resume_plan(plan, adaptive.recorded_seeds(plan.output_dir))
    unfinished_here = [t for t in plan.trials if trial_state(t)[0] != "finished"]  # from the trial folders
    source_configs = check_sources(plan, unfinished_here) if plan.spec.kind == "evaluation" else None
    if not options.restart:
        check_resumable(unfinished_here)
    if not options.address:
        check_local_resources(plan, options)
    if options.restart and plan.output_dir.exists():
        replaced = plan.output_dir.with_name(f"{plan.output_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        plan.output_dir.rename(replaced)
        print(f"--restart: moved the previous sweep folder to {replaced}")
    with ExitStack() as stack:
        if options.address:  # join the cluster first: a trial that fits no node fails before anything starts
            stack.enter_context(ray_session(options))
            check_cluster_resources(plan)
            _cluster_notes(plan, options)
        if options.prepare_data and unfinished_here:
            files = prepare_data(plan, unfinished_here, source_configs)
            print("data: " + ", ".join(str(f) for f in files))
        parent_run_id, children = _open_tracking(plan, options)
        state = _load_state(plan)
        state.update(name=plan.spec.name, spec=str(plan.spec.path), kind=plan.spec.kind,
                     tracking_uri=plan.tracking_uri, tracking_experiment=plan.tracking_experiment,
                     parent_run_id=parent_run_id, trials=[t.id for t in plan.trials],
                     overrides=list(plan.overrides), state="running")
        if candidates is not None:  # the seeds decided so far, by setting: never taken back
            state["adaptive"] = adaptive.seeds_by_setting(plan)
        _save_state(plan, state)
        before = {t.id: trial_state(t, children) for t in plan.trials}
        pending = [t for t in plan.trials if before[t.id][0] != "finished"]
        data_dir = str(default_data_dir())
        payloads = {t.id: t.payload(parent_run_id, data_dir) for t in pending}
        results, interrupted = {}, False
        try:
            if pending:
                print(f"running {len(pending)} of {len(plan.trials)} trials "
                      f"({len(plan.trials) - len(pending)} already finished)")
                if not options.address:
                    stack.enter_context(ray_session(options))
                results = run_tune(plan, pending, payloads, options, state, candidates)
            else:
                print(f"all {len(plan.trials)} trials already finished; nothing to run")
        except KeyboardInterrupt:
            interrupted = True
        except Exception:  # a fault of the driver itself: the parent run must not stay RUNNING
            state["state"] = "failed"
            _save_state(plan, state)
            if parent_run_id:
                sweep_tracking.finish_parent_run(plan.tracking_uri, parent_run_id, "FAILED", {}, 0)
            raise
        outcome = _collect(plan, parent_run_id, before, pending, results, interrupted, started)
        for trial_outcome in outcome.outcomes:  # every trial's run ended and its records delivered, or counted
            settle_trial(trial_outcome)
        _close_tracking(plan, outcome)
        state.setdefault("launches", []).append({
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "scheduled": len(pending),
            "finished": len(outcome.having("finished")), "failed": len(outcome.having("failed")),
            "unfinished": len(outcome.having("unfinished")), "wall_s": round(outcome.wall_s, 1),
            "tracking_undelivered": outcome.undelivered})
        state.update(state=outcome.state, tracking_undelivered=outcome.undelivered)
        _save_state(plan, state)
    return outcome


def _cluster_notes(plan: Plan, options: LaunchOptions) -> None:
    """On a cluster, three paths must be shared by every node; say so once."""
    shared = [f"the sweep folder {plan.output_dir} (trial folders, checkpoints)"]
    if not options.storage:
        shared.append(f"Tune's storage {plan.output_dir / 'tune'} (or pass --storage s3://... or a shared folder)")
    if plan.tracking_uri.startswith("sqlite:"):
        shared.append(f"the sqlite tracking store {plan.tracking_uri} (or use an MLflow server: --tracking-uri "
                      "http://...)")
    print("note: on a cluster every node must see, at the same path:\n  " + "\n  ".join(shared))


def _open_tracking(plan: Plan, options: LaunchOptions) -> tuple[str | None, dict]:
    if not plan.tracking_enabled:
        return None, {}
    from emorl.engine.train import git_commit

    experiment_id = sweep_tracking.prepare_store(plan.tracking_uri, plan.tracking_experiment)
    if options.restart:
        sweep_tracking.mark_replaced(plan.tracking_uri, experiment_id, plan.spec.name, plan.output_dir)
    spec = plan.spec
    params = {"sweep.kind": spec.kind, "sweep.trials": len(plan.trials), "sweep.cpus": spec.resources.cpus,
              "sweep.gpus": spec.resources.gpus, "sweep.max_failures": spec.max_failures,
              "sweep.overrides": json.dumps(list(spec.overrides) + list(plan.overrides))}
    if spec.kind == "training":
        params.update({"sweep.experiments": json.dumps(list(spec.experiments)),
                       "sweep.seeds": json.dumps(list(spec.seeds)),
                       "sweep.variants": json.dumps({n: list(o) for n, o in spec.variants}),
                       "sweep.axes": json.dumps({a.label: {"keys": list(a.keys), "values": list(a.values)}
                                                 for a in spec.axes})})
    description = (f"{spec.kind} sweep {spec.name} ({len(plan.trials)} trials): {spec.description or spec.path}. "
                   f"Its folder: {plan.output_dir}. One child run per trial.")
    tags = {vocabulary.SWEEP_KIND: spec.kind, vocabulary.SWEEP_SPEC: str(spec.path),
            **vocabulary.system_tags(f"emorl sweep {spec.name}", git_commit(), description)}
    table = [{"id": t.id, "variant": t.variant, "seed": t.seed, "overrides": list(t.overrides),
              "output_dir": str(t.output_dir)} for t in plan.trials]
    run_id, created = sweep_tracking.open_parent_run(plan.tracking_uri, experiment_id, spec.name, plan.output_dir,
                                                     tags, params, spec.path, table)
    print(f"MLflow parent run {run_id} ({'created' if created else 'reopened'}) in experiment "
          f"{plan.tracking_experiment!r} at {plan.tracking_uri}")
    children = sweep_tracking.child_runs(plan.tracking_uri, run_id) if not created else {}
    return run_id, children


def _collect(plan: Plan, parent_run_id, before: dict, pending: list[Trial], results: dict, interrupted: bool,
             started: float) -> SweepOutcome:
    outcome = SweepOutcome(plan, parent_run_id, interrupted=interrupted)
    scheduled = {t.id for t in pending}
    for trial in plan.trials:
        attempts = len(status.read_attempts(trial.output_dir))
        if trial.id not in scheduled:
            outcome.outcomes.append(TrialOutcome(trial, "finished", before[trial.id][1], False, attempts))
            continue
        now, detail = trial_state(trial)
        result = results.get(trial.id)
        error = getattr(result, "error", None)
        reported = getattr(result, "metrics", None) or {}
        if now == "finished" or (error is None and reported.get("emorl_finished")):
            outcome.outcomes.append(TrialOutcome(trial, "finished", detail or "finished", True, attempts))
        elif error is not None:  # the trial's own record says why, when its last attempt wrote it
            written = status.read_status(trial.output_dir)
            mine = now == "failed" and written.get("attempt") == attempts
            outcome.outcomes.append(TrialOutcome(trial, "failed", detail if mine else failure_reason(error), True,
                                                 attempts))
        else:
            outcome.interrupted = True
            outcome.outcomes.append(TrialOutcome(trial, "unfinished", detail or "not started", True, attempts))
    outcome.wall_s = time.time() - started
    return outcome


def failure_reason(error) -> str:
    """The useful line of a trial's error (the exception raised in the trial, or why its process died)."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return line[:500]
    return (lines[0] if lines else type(error).__name__)[:500]


def _close_tracking(plan: Plan, outcome: SweepOutcome) -> None:
    if outcome.parent_run_id is None:
        return
    if outcome.having("failed"):
        run_status = "FAILED"
    elif outcome.having("unfinished"):
        run_status = "KILLED"
    else:
        run_status = "FINISHED"
    metrics = {"sweep/trials_finished": len(outcome.having("finished")),
               "sweep/trials_failed": len(outcome.having("failed")),
               "sweep/trials_unfinished": len(outcome.having("unfinished")), "sweep/wall_s": outcome.wall_s}
    step = len(_load_state(plan).get("launches", []))
    try:
        sweep_tracking.finish_parent_run(plan.tracking_uri, outcome.parent_run_id, run_status, metrics, step)
    except Exception as error:  # the results are safe in the trials' runs; say so and go on
        print(f"warning: could not close the parent run {outcome.parent_run_id}: {type(error).__name__}: {error}; "
              "it is closed when the same command runs again")


def _load_state(plan: Plan) -> dict:
    path = plan.output_dir / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(plan: Plan, state: dict) -> None:
    path = plan.output_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=1, default=str))
    temporary.replace(path)
