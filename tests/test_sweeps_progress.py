"""`emorl sweep status`: per-trial progress and the ETA (sweeps/progress.py) from hand-written trial
folders, against a fake clock; the command writes nothing."""

import json
import math

import pytest

from emorl.cli import main
from emorl.errors import ConfigError
from sweeps.progress import (Point, TrialProgress, estimate, find_sweep_folder, read_points, speed, stale_after,
                             status_text, sweep_progress)
from sweeps.status import record_attempt, write_status

T0 = 1_800_000_000.0  # the fake "now" of the tests, seconds since the epoch


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def trial(trial_id, state="partial", step=0, max_steps=1000, points=(), logged=None):
    return TrialProgress(trial_id, state, step, max_steps, [Point(s, t) for s, t in points], logged)


def test_speed_and_staleness():
    assert speed([Point(100, 10.0), Point(200, 30.0), Point(300, 50.0)]) == 5.0
    assert speed([Point(100, 10.0)], logged=4.0) == 4.0
    assert speed([], None) is None and speed([Point(5, 1.0), Point(5, 2.0)]) is None
    assert stale_after([Point(0, 0.0), Point(50, 100.0), Point(100, 200.0)]) == 500.0  # 5 intervals of 100 s
    assert stale_after([Point(0, 0.0), Point(50, 10.0)]) == 300.0  # at least 5 minutes


def test_eta_with_a_fake_clock():
    """Two slots. a: running at 5 steps/s, 500 of 1000 steps, last point 20 s ago -> 100 - 20 = 80 s left.
    b: running at 2 steps/s, 800 of 1000, last point now -> 100 s. c: waiting, never started, same group as
    a -> a's speed: 1000 / 5 = 200 s, starts when a ends (80 s) -> 280 s. d: finished."""
    clock = FakeClock(T0)
    trials = [trial("x/a/seed0", step=500, points=[(400, T0 - 40), (500, T0 - 20)]),
              trial("y/b/seed0", step=800, points=[(700, T0 - 50), (800, T0)]),
              trial("x/a/seed1", state="new"),
              trial("z/d/seed0", state="finished", step=1000)]
    eta = estimate(trials, 2, clock)
    by_id = {t.progress.id: t for t in eta.trials}
    assert [by_id[i].state for i in ("x/a/seed0", "y/b/seed0", "x/a/seed1", "z/d/seed0")] == [
        "running", "running", "waiting", "finished"]
    assert by_id["x/a/seed0"].steps_per_sec == 5.0 and by_id["y/b/seed0"].steps_per_sec == 2.0
    assert by_id["x/a/seed0"].remaining_s == pytest.approx(80.0)
    assert by_id["y/b/seed0"].ends_at == pytest.approx(T0 + 100)
    assert by_id["x/a/seed1"].ends_at == pytest.approx(T0 + 80 + 200)
    assert eta.ends_at == pytest.approx(T0 + 280) and eta.running
    # The same trials an hour later with no new points: nothing is running; resumed now, the sweep needs
    # a: 100 s, b: 100 s, c: 200 s after a.
    clock.now = T0 + 3600
    later = estimate(trials, 2, clock)
    assert not later.running and later.count("waiting") == 3
    assert later.ends_at == pytest.approx(T0 + 3600 + 300)
    # One slot: everything in a row.
    assert estimate(trials, 1, FakeClock(T0 + 3600)).ends_at == pytest.approx(T0 + 3600 + 400)


def test_a_trials_process_decides_when_it_is_known():
    """Starting up (alive, nothing logged yet): running, at the speed of its group; gone although it
    logged a moment ago (killed): waiting."""
    starting = trial("x/a/seed1", state="new")
    starting.alive = True
    killed = trial("x/a/seed0", step=500, points=[(400, T0 - 40), (500, T0 - 20)])
    killed.alive = False
    eta = estimate([killed, starting], 2, FakeClock(T0))
    assert [t.state for t in eta.trials] == ["waiting", "running"]
    assert eta.trials[1].remaining_s == pytest.approx(200.0)  # 1000 steps at a's 5 steps/s
    assert eta.trials[0].remaining_s == pytest.approx(100.0)  # 500 steps at 5 steps/s, from its next start


def test_eta_unknown_without_any_speed_and_failed_trials_wait():
    eta = estimate([trial("a/x/seed0", state="new"), trial("a/x/seed1", state="failed", step=300)], 2, FakeClock(T0))
    assert eta.ends_at is None and [t.state for t in eta.trials] == ["waiting", "failed"]
    other = estimate([trial("a/x/seed0", state="failed", step=500, points=[(400, T0 - 100), (500, T0 - 50)]),
                      trial("b/y/seed0", state="new", max_steps=None)], 1, FakeClock(T0))
    failed = other.trials[0]
    assert failed.state == "failed" and failed.remaining_s == pytest.approx(250.0)  # to be retried: 500 at 2/s
    assert other.trials[1].remaining_s is None and other.ends_at is None  # no step target: the sweep end is unknown


def _spool(trial_dir, records):
    (trial_dir / "tracking").mkdir(parents=True, exist_ok=True)
    lines = []
    for record in records:
        if isinstance(record, str):
            lines.append(json.dumps({"op": record}))
        else:
            step, seconds, rate = record
            lines.append(json.dumps({"op": "metrics", "step": step, "timestamp": int(seconds * 1000),
                                     "metrics": {"train/loss": 1.0, "train/steps_per_sec": rate}}))
    (trial_dir / "tracking" / "spool.jsonl").write_text("\n".join(lines) + "\n")


def test_points_from_the_spool_of_the_current_attempt_or_the_status_files(tmp_path):
    spooled = tmp_path / "spooled"
    _spool(spooled, ["start", (50, T0 - 1000, 1.0), (100, T0 - 900, 1.0), "reopen", (150, T0 - 20, 9.0),
                     (250, T0, 5.0)])
    assert read_points(spooled) == ([Point(150, T0 - 20), Point(250, T0)], 5.0)  # the earlier attempt left out
    plain = tmp_path / "plain"  # tracking off: the attempt's start and the last checkpoint
    record_attempt(plain, start_step=100)
    write_status(plain, state="running", step=400)
    points, logged = read_points(plain)
    assert [p.step for p in points] == [100, 400] and logged is None and points[1].time >= points[0].time
    assert read_points(tmp_path / "never") == ([], None)


SPEC = """name: watched
experiment: smoke
seeds: [0, 1]
overrides: [trainer.max_steps=1000]
variants: {a: [], b: [prior=bottom_up]}
resources: {cpus: 1, gpus: 0}
max_concurrent: 2
output: OUT
"""


@pytest.fixture
def sweep_folder(tmp_path):
    """A sweep of 4 trials as a launch leaves it: one finished, one running, one failed, one not started."""
    folder = tmp_path / "sweeps" / "watched"
    spec = tmp_path / "watched.yaml"
    spec.write_text(SPEC.replace("OUT", str(folder)))
    ids = ["smoke/a/seed0", "smoke/a/seed1", "smoke/b/seed0", "smoke/b/seed1"]
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"name": "watched", "spec": str(spec), "trials": ids,
                                                   "overrides": ["trainer.max_steps=1500"]}))  # as launched
    write_status(folder / ids[0], state="finished", step=1500)
    running = folder / ids[1]
    _spool(running, ["start", (100, T0 - 200, 1.0), (200, T0 - 150, 2.0), (300, T0 - 100, 2.0), (400, T0 - 50, 2.0)])
    (running / "config.yaml").write_text("trainer:\n  max_steps: 2000\n")  # the trial's own config decides
    write_status(running, state="running", step=400)
    record_attempt(folder / ids[2], pid=0, host="elsewhere", start_step=0)
    write_status(folder / ids[2], state="failed", reason="RuntimeError: boom", attempt=1)
    return tmp_path, spec, folder


def test_status_of_a_sweep_folder(sweep_folder):
    tmp_path, spec, folder = sweep_folder
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    state, trials, _ = sweep_progress(folder)
    assert [(t.id, t.state, t.step, t.max_steps) for t in trials] == [
        ("smoke/a/seed0", "finished", 1500, 1500), ("smoke/a/seed1", "partial", 400, 2000),
        ("smoke/b/seed0", "failed", 0, 1500), ("smoke/b/seed1", "new", 0, 1500)]
    text = status_text(str(spec), clock=FakeClock(T0))
    # Running: 300 steps in 150 s = 2 steps/s; 1600 steps left = 800 s, less the 50 s since its last point.
    # Waiting (b, no speed of their own or their group): at the median of the measured, 2 steps/s: 750 s each,
    # one after the other on the second slot -> 750 s and 1500 s.
    assert f"sweep watched ({folder}): 4 trials: 1 running, 1 finished, 1 waiting, 1 failed; 2 at once " \
           "(max_concurrent)" in text
    lines = {line.split()[0]: line for line in text.splitlines()[2:-1]}
    assert lines["smoke/a/seed1"].split()[1:6] == ["running", "400", "/", "2000", "2"]
    assert "12.5 min" in lines["smoke/a/seed1"]
    assert lines["smoke/a/seed0"].split()[1:] == ["finished", "1500", "/", "1500", "-", "done"]
    assert "failed (RuntimeError: boom)" in lines["smoke/b/seed0"] and "12.5 min" in lines["smoke/b/seed0"]
    assert "25.0 min" in lines["smoke/b/seed1"]
    assert text.splitlines()[-1].startswith("sweep ETA: 25.0 min (")
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # read-only
    assert not any(p.name.endswith((".tmp", ".lock")) for p in folder.rglob("*"))
    # A retry of the failed trial has started since: no longer failed, waiting until it logs.
    record_attempt(folder / "smoke/b/seed0", pid=0, host="elsewhere", start_step=0)
    retried = {t.id: t.state for t in sweep_progress(folder)[1]}
    assert retried["smoke/b/seed0"] == "partial"


def test_status_command_finds_the_folder(sweep_folder, monkeypatch, capsys):
    tmp_path, spec, folder = sweep_folder
    monkeypatch.setenv("EMORL_OUTPUT_DIR", str(tmp_path))
    assert find_sweep_folder("watched") == folder  # <output root>/sweeps/<name>
    assert find_sweep_folder(str(folder)) == folder and find_sweep_folder("x", output=str(folder)) == folder
    assert main(["sweep", "status", "watched", "--max-concurrent", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 at once (as given)" in out and "smoke/b/seed1" in out
    with pytest.raises(ConfigError, match="no sweep folder for 'nothing'"):
        find_sweep_folder("nothing")
    assert main(["sweep", "status"]) == 2  # the usage error, reported by the CLI
    assert "usage: emorl sweep status NAME" in capsys.readouterr().err
    assert not math.isnan(T0)
