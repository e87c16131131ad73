"""Progress of a running or interrupted sweep, and when it should end (``emorl sweep status NAME``).

Read-only: it reads the sweep folder (``sweep.json``), each trial's ``sweep/status.json`` and
``sweep/attempts.jsonl`` (:mod:`sweeps.status`) and its tracking spool ``tracking/spool.jsonl``
(one record per ``trainer.log_every`` steps, with the step, the time and ``train/steps_per_sec``),
and writes nothing.

**Speed.** A trial's steps/s is measured over its recent progress: the steps between the first
and the last of its last :data:`WINDOW` logged points of the current attempt, over the time between
them (evaluations and checkpoints included, so it is the speed the ETA needs). With one point, the
``train/steps_per_sec`` logged there; without a spool (tracking off), the steps since the attempt
started over the time until ``status.json`` was last written (at each checkpoint).

**ETA** (:func:`estimate`, a pure function of the trials and a clock, so tests use a fake clock).
A trial that logged within :func:`stale_after` seconds, or whose process runs on this host (a
trial starting up), is *running*, unless its process on this host is gone: it needs its remaining steps at
its speed, less the time since its last point. Any other unfinished trial is *waiting* (not
started, interrupted, or failed and to be retried) and needs its remaining steps at its own last
speed, or else at the median speed of the trials of its group (every id part but the seed), or of
all trials. The running trials hold their slots, the waiting ones follow in order on the first
free slot (:func:`sweeps.cost.finish_times`) with as many at once as the sweep runs. When no trial
is running, the sweep ETA says when it would end if resumed now.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from emorl.errors import ConfigError
from sweeps import status
from sweeps.cost import finish_times, hours

WINDOW = 20  # logged points that set a trial's speed
STALE_MIN_S = 300.0  # a trial silent for longer than this (and 5 of its log intervals) is not running


@dataclass(frozen=True)
class Point:
    """A trial was at ``step`` at ``time`` (seconds since the epoch)."""

    step: int
    time: float


@dataclass
class TrialProgress:
    """What the folder says of one trial: its state, step, target and recent points."""

    id: str
    state: str  # finished | failed | partial | new (sweeps.launch.trial_state)
    step: int
    max_steps: int | None
    points: list[Point] = field(default_factory=list)  # of the current attempt, oldest first
    logged_rate: float | None = None  # train/steps_per_sec of the last log
    detail: str = ""
    alive: bool | None = None  # whether its process still runs (None: not known, e.g. on another node)

    @property
    def group(self) -> str:
        return self.id.rsplit("/seed", 1)[0]


@dataclass
class TrialEta:
    progress: TrialProgress
    state: str  # finished | failed | running | waiting
    steps_per_sec: float | None  # measured (None: not known)
    remaining_s: float | None = None  # from now; None: unknown
    ends_at: float | None = None  # seconds since the epoch


@dataclass
class SweepEta:
    now: float
    concurrency: int
    trials: list[TrialEta]
    ends_at: float | None  # None: some trial's speed is unknown
    running: bool  # whether any trial is running now

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)


def speed(points: list[Point], logged: float | None = None) -> float | None:
    """Steps/s over ``points`` (first to last), else ``logged``; None when neither says."""
    if len(points) >= 2 and points[-1].time > points[0].time and points[-1].step > points[0].step:
        return (points[-1].step - points[0].step) / (points[-1].time - points[0].time)
    return logged if logged and logged > 0 else None


def stale_after(points: list[Point]) -> float:
    """Seconds of silence after which a trial is taken as not running: :data:`STALE_MIN_S` or five
    of its typical intervals between logged points, whichever is longer."""
    gaps = [b.time - a.time for a, b in zip(points, points[1:]) if b.time > a.time]
    return max(STALE_MIN_S, 5 * statistics.median(gaps)) if gaps else STALE_MIN_S


def estimate(trials: list[TrialProgress], concurrency: int, clock: Callable[[], float] = time.time) -> SweepEta:
    """The ETA of each trial and of the sweep (see the module docstring); ``clock()`` is the time now."""
    now = clock()
    etas = []
    for trial in trials:
        rate = speed(trial.points, trial.logged_rate)
        if trial.state == "finished":
            etas.append(TrialEta(trial, "finished", rate, 0.0, None))
            continue
        running = (trial.state != "failed" and trial.alive is not False
                   and (_recent(trial, now) or trial.alive is True))
        etas.append(TrialEta(trial, "running" if running else ("failed" if trial.state == "failed" else "waiting"),
                             rate))
    known = [t.steps_per_sec for t in etas if t.steps_per_sec]
    for eta in etas:
        if eta.state == "finished" or eta.progress.max_steps is None:
            continue
        rate = eta.steps_per_sec or _median([t.steps_per_sec for t in etas if t.steps_per_sec
                                             and t.progress.group == eta.progress.group]) or _median(known)
        if rate:
            left = max(0, eta.progress.max_steps - eta.progress.step) / rate
            if eta.state == "running" and _recent(eta.progress, now):
                left = max(0.0, left - (now - eta.progress.points[-1].time))
            eta.remaining_s = left
    running = [t for t in etas if t.state == "running"]
    waiting = [t for t in etas if t.state in ("waiting", "failed")]
    slots = max(concurrency, len(running))
    ends_known = all(t.remaining_s is not None for t in running + waiting)
    for eta in running:
        if eta.remaining_s is not None:
            eta.ends_at = now + eta.remaining_s
    if ends_known:
        ends = finish_times([t.remaining_s for t in waiting], slots, [t.remaining_s for t in running])
        for eta, end in zip(waiting, ends):
            eta.ends_at = now + end
    sweep_end = max([now, *(t.ends_at for t in etas if t.ends_at is not None)]) if ends_known else None
    return SweepEta(now, slots, etas, sweep_end, bool(running))


def _recent(trial: TrialProgress, now: float) -> bool:
    """Whether the trial logged within :func:`stale_after` seconds of ``now``."""
    return bool(trial.points) and now - trial.points[-1].time <= stale_after(trial.points)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- reading the folders ----------------------------------------------------------------------------
def read_points(trial_dir: Path) -> tuple[list[Point], float | None]:
    """The last :data:`WINDOW` logged points of the trial's current attempt and the last logged
    steps/s, from its tracking spool; else from ``status.json`` and the last attempt."""
    spool = trial_dir / "tracking" / "spool.jsonl"
    points, logged = [], None
    if spool.exists():
        for line in spool.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line being written
                continue
            if record.get("op") in ("start", "reopen"):
                points, logged = [], None  # a new attempt: its speed is its own
            elif record.get("op") == "metrics" and "train/steps_per_sec" in record.get("metrics", {}):
                points.append(Point(int(record["step"]), record["timestamp"] / 1000))
                logged = float(record["metrics"]["train/steps_per_sec"])
        if points:
            return points[-WINDOW:], logged
    state, attempts = status.read_status(trial_dir), status.read_attempts(trial_dir)
    if attempts and state.get("state") == "running" and state.get("updated"):
        first = attempts[-1]
        return [Point(int(first.get("start_step") or 0), float(first["time"])),
                Point(int(state.get("step") or 0), float(state["updated"]))], None
    return [], None


def process_alive(trial_dir: Path) -> bool | None:
    """Whether the process of the trial's last attempt still runs, when it ran on this host (None:
    another host, or not recorded). Only asks the system; sends no signal."""
    attempts = status.read_attempts(trial_dir)
    if not attempts or attempts[-1].get("host") != socket.gethostname() or not attempts[-1].get("pid"):
        return None
    return Path(f"/proc/{int(attempts[-1]['pid'])}").exists() if Path("/proc/self").exists() else None


def find_sweep_folder(name: str, output: str | None = None) -> Path:
    """The folder of sweep ``name``: ``output``, the folder ``name``, ``<output root>/sweeps/<name>``,
    or the output folder of the shipped spec (or spec file) ``name``."""
    from emorl import config as config_module
    from sweeps.spec import default_output_dir, load_spec

    candidates = [Path(output).expanduser().resolve()] if output else []
    candidates += [Path(name).expanduser().resolve(), config_module.output_root() / "sweeps" / name]
    if not output:
        try:
            candidates.append(default_output_dir(load_spec(name)))
        except ConfigError:
            pass
    for folder in candidates:
        if (folder / "sweep.json").is_file():
            return folder
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise ConfigError(f"no sweep folder for {name!r} (a folder holding sweep.json; looked in {looked}); give the "
                      "sweep's name, its spec, or its folder (--output), as launched")


def _max_steps(trial_dir: Path, planned: int | None) -> int | None:
    """``trainer.max_steps`` of the trial's own config.yaml (command-line overrides included), else
    the spec's."""
    config = trial_dir / "config.yaml"
    if config.is_file():
        try:
            return int(yaml.safe_load(config.read_text())["trainer"]["max_steps"])
        except (ValueError, KeyError, TypeError, yaml.YAMLError):
            pass
    return planned


def sweep_progress(folder: Path) -> tuple[dict, list[TrialProgress], object]:
    """(sweep.json, the progress of each of its trials, the spec or None) from the sweep folder."""
    from sweeps.launch import trial_state
    from sweeps.spec import Trial, expand, load_spec

    state = json.loads((folder / "sweep.json").read_text())
    spec, planned = None, {}
    try:
        spec = load_spec(state["spec"])
        if spec.kind == "training":  # with the launch's command-line overrides (recorded since they were)
            planned = {t.id: t for t in expand(spec, state.get("overrides") or (), output=folder).trials}
    except (ConfigError, KeyError):
        pass  # the spec moved or changed: the trial folders alone
    trials = []
    for trial_id in state.get("trials") or list(planned):
        found = planned.get(trial_id)
        trial_dir = folder / trial_id
        max_steps = _max_steps(trial_dir, found.max_steps if found else None)
        if found is not None:
            config = {**found.config, "trainer": {**found.config["trainer"], "max_steps": max_steps}}
            found = Trial(found.id, found.kind, trial_dir, found.variant, found.seed, found.overrides,
                          found.resources, config=config)
            kind, detail = trial_state(found)
        else:
            written = status.read_status(trial_dir)
            kind, detail = written.get("state") or "new", written.get("reason", "")
            kind = "partial" if kind == "running" else kind
        written = status.read_status(trial_dir)
        if kind == "failed" and len(status.read_attempts(trial_dir)) > int(written.get("attempt") or 0):
            kind = "partial"  # failed, and started again since (a retry)
        points, logged = read_points(trial_dir)
        step = max([int(written.get("step") or 0), *(p.step for p in points)])
        trials.append(TrialProgress(trial_id, kind, step, max_steps, points, logged, detail,
                                    process_alive(trial_dir) if kind in ("partial", "new") else None))
    return state, trials, spec


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "unknown"
    if at <= now:
        return "done"
    return f"{hours(at - now)} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(at))})"


def format_status(name: str, folder: Path, eta: SweepEta, note: str) -> str:
    """The per-trial table and the sweep's ETA as text."""
    counts = ", ".join(f"{eta.count(s)} {s}" for s in ("running", "finished", "waiting", "failed") if eta.count(s))
    lines = [f"sweep {name} ({folder}): {len(eta.trials)} trials: {counts}; {eta.concurrency} at once ({note})"]
    rows = [("trial", "state", "step / max", "steps/s", "ETA")]
    for trial in eta.trials:
        progress = trial.progress
        target = "?" if progress.max_steps is None else str(progress.max_steps)
        rate = f"{trial.steps_per_sec:.3g}" if trial.steps_per_sec else "-"
        when = "done" if trial.state == "finished" else _when(trial.ends_at, eta.now)
        state = trial.state + (f" ({progress.detail[:60]})" if trial.state == "failed" and progress.detail else "")
        rows.append((progress.id, state, f"{progress.step} / {target}", rate, when))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4] for row in rows]
    unfinished = [t for t in eta.trials if t.state != "finished"]
    if not unfinished:
        lines.append("sweep finished")
    elif eta.ends_at is None:
        unknown = sum(1 for t in unfinished if t.remaining_s is None)
        lines.append(f"sweep ETA: unknown ({unknown} unfinished trials without a measured speed or step target)")
    else:
        resumed = "" if eta.running else "no trial is running now (interrupted, or between trials); if resumed now, "
        lines.append(f"sweep ETA: {resumed}{_when(eta.ends_at, eta.now)}, with {eta.concurrency} trials at once and "
                     "waiting trials as fast as the measured ones")
    return "\n".join(lines)


def status_text(name: str, output: str | None = None, slots: int | None = None,
                clock: Callable[[], float] = time.time) -> str:
    """``emorl sweep status NAME``: find the folder, read it, estimate, format."""
    from sweeps.cost import choose_hint, concurrency

    folder = find_sweep_folder(name, output)
    state, trials, spec = sweep_progress(folder)
    if spec is not None:
        count, note = concurrency(spec, slots)
    else:
        count, note = (slots, "as given") if slots else (1, "the spec could not be read: 1 assumed; --max-concurrent N")
    note += choose_hint(note, "--max-concurrent")
    return format_status(state.get("name", name), folder, estimate(trials, count, clock), note)
