"""Sweeps for real: the `emorl sweep` driver on local Ray and on a two-node Ray cluster started here,
with a sqlite MLflow store; an interrupted sweep, a killed trial process, a lost node.

Every test starts its own Ray (a short temporary folder of its own, since Ray's socket paths must
stay under 108 bytes) and stops exactly what it started, also when it fails.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from emorl.cli import main
from emorl.config import default_tracking_uri
from emorl.tracking import undelivered
from sweeps import status
from sweeps.progress import status_text
from tests.test_tracking import MlflowServer

pytestmark = pytest.mark.slow

EMORL = [sys.executable, "-c", "import sys; from emorl.cli import main; sys.exit(main())"]
STEPS, CHECKPOINT_EVERY, LOG_EVERY = 24, 4, 2
TRIAL_OVERRIDES = [f"trainer.max_steps={STEPS}", f"trainer.log_every={LOG_EVERY}", "trainer.eval_every=12",
                   f"trainer.checkpoint_every={CHECKPOINT_EVERY}", "data.batch_size=2", "trainer.eval_images=4",
                   "trainer.eval_batch_size=4", "tracking.flush_every_s=0"]  # every record reaches MLflow at once


# -- helpers -------------------------------------------------------------------------------------
def write_spec(tmp_path: Path, name: str, seeds: list[int], variants: dict | None = None,
               max_concurrent: int = 1) -> Path:
    """A shrunk copy of the quickstart spec: smoke-sized model, 24 steps, a checkpoint every 4."""
    body = {"name": name, "experiment": "smoke", "overrides": TRIAL_OVERRIDES, "seeds": seeds,
            "resources": {"cpus": 1, "gpus": 0}, "max_concurrent": max_concurrent, "max_failures": 2,
            "tracking": {"experiment": name}}
    if variants:
        body["variants"] = variants
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def kill_processes_mentioning(text: str) -> None:
    """SIGKILL the processes whose command line names ``text`` (our Ray's folder), and only those."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in command:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


@pytest.fixture
def ray_dir():
    folder = tempfile.mkdtemp(prefix="emorl-ray-", dir="/tmp")
    yield folder
    kill_processes_mentioning(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def processes():
    """Popen objects started by a test, each in its own session: ended at teardown if still running."""
    started: list[subprocess.Popen] = []
    yield started
    for process in reversed(started):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)


class Driver:
    """`emorl sweep` in a subprocess, its output in a log file."""

    def __init__(self, processes: list, tmp_path: Path, spec: Path | str, *args: str):
        self.log = tmp_path / f"driver-{len(processes)}.log"
        self.process = subprocess.Popen([*EMORL, "sweep", str(spec), "--quiet", *args], stdout=self.log.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(self.process)

    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 480) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not end in {timeout} s:\n{self.text()[-4000:]}")


def wait_for(condition, what: str, driver: Driver, timeout: float = 300):
    """Poll ``condition`` until it returns something true; fail if the driver ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if driver.process.poll() is not None:
            pytest.fail(f"the sweep ended (rc {driver.process.returncode}) before {what}:\n{driver.text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{driver.text()[-4000:]}")


def trial_dirs(output: Path, ids: list[str]) -> dict[str, Path]:
    return {trial_id: output / trial_id for trial_id in ids}


def tracked_runs(experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of the sweep's MLflow experiment in the test's sqlite store
    (``$MLFLOW_TRACKING_URI``, set by conftest, which the sweep uses too)."""
    client = MlflowClient(default_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("emorl.sweep_role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) + len(children) == len(runs)
    return parents, children


def assert_tracked(name: str, output: Path, ids: list[str], steps: int = STEPS, log_every: int = LOG_EVERY) -> None:
    """One finished parent run and one finished child run per trial, with the sweep's tags and metrics."""
    client = MlflowClient(default_tracking_uri())
    parents, children = tracked_runs(name)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["emorl.sweep"] == name and parent.data.tags["emorl.sweep_output"] == str(output)
    assert parent.data.metrics["sweep/trials_finished"] == len(ids)
    assert sorted(c.data.tags["emorl.sweep_trial"] for c in children) == sorted(ids)  # no duplicate runs
    for child in children:
        tags, trial_id = child.data.tags, child.data.tags["emorl.sweep_trial"]
        assert child.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["emorl.sweep"] == name
        assert f"smoke/{tags['emorl.variant']}/seed{tags['emorl.seed']}" == trial_id
        assert tags["mlflow.source.git.commit"] and len(tags["emorl.setting_id"]) == 12
        assert tags["emorl.output_dir"] == str(output / trial_id)
        assert child.data.params["trainer.max_steps"] == str(steps)
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert {m.step for m in history} == set(range(log_every, steps + 1, log_every))
        assert 0.0 <= child.data.metrics["test/fg_ari"] <= 1.0


# -- local Ray -----------------------------------------------------------------------------------
def test_sweep_tracks_every_trial_and_resumes_after_an_interrupt(tmp_path, ray_dir, processes):
    """2 variants x 2 seeds, two at a time; Ctrl-C once a trial has finished and another is mid-run;
    the same command again runs only what is left and ends with one parent and four child runs."""
    name, output = "tinygrid", tmp_path / "sweep"
    spec = write_spec(tmp_path, name, [0, 1], {"reversed_prior_pp": [], "bottom_up_prior": ["prior=bottom_up"]},
                      max_concurrent=2)
    ids = [f"smoke/{v}/seed{s}" for v in ("reversed_prior_pp", "bottom_up_prior") for s in (0, 1)]
    folders = trial_dirs(output, ids)
    args = ("--output", str(output), "--ray-temp-dir", ray_dir)

    first = Driver(processes, tmp_path, spec, *args)

    def finished_and_running():
        states = {i: status.read_status(folders[i]) for i in ids}
        done = {i for i, s in states.items() if s.get("state") == "finished"}
        # well before its end (a checkpoint at most half way), so that it is still running when Ctrl-C lands
        running = {i: s["step"] for i, s in states.items()
                   if s.get("state") == "running" and 0 < s["step"] <= STEPS // 2}
        return (done, running) if done and running else None

    done_before, running_seen = wait_for(finished_and_running, "a finished trial and one mid-run", first)
    first.process.send_signal(signal.SIGINT)
    assert first.wait() == 130, first.text()[-3000:]
    assert "interrupted:" in first.text() and "resume with the same command" in first.text()
    _, children = tracked_runs(name)
    assert len(children) <= len(ids)
    # A trial seen mid-run may still have reached its end before the Ctrl-C landed: what counts is
    # the state the interrupted driver left behind.
    done_before = {i for i in ids if status.read_status(folders[i]).get("state") == "finished"}
    running_before = {i: step for i, step in running_seen.items() if i not in done_before}
    assert running_before, ("every trial seen mid-run finished before the Ctrl-C landed", running_seen)
    # `emorl sweep status` on the interrupted sweep: nothing runs; the finished trials are done.
    interrupted = status_text(str(spec), output=str(output))
    assert "no trial is running now (interrupted" in interrupted and "running" not in interrupted.splitlines()[0]
    assert all(re.search(rf"{re.escape(i)}\s+finished\s+{STEPS} / {STEPS}\s.*done", interrupted) for i in done_before)
    # Ray stopped the trials without their handlers: the driver ended their runs KILLED, through
    # their spools, and nothing says running any more.
    stopped = {c.data.tags["emorl.sweep_trial"]: c.info.status for c in children if
               c.data.tags["emorl.sweep_trial"] not in done_before}
    assert set(running_before) <= set(stopped) and set(stopped.values()) == {"KILLED"}, stopped
    assert "tracking: ended the MLflow runs of " in first.text()  # Ray stopped them without their handlers
    for trial_id in ids:
        written = status.read_status(folders[trial_id])
        assert written.get("state") in ("finished", "interrupted", None), (trial_id, written)
        if trial_id in running_before:
            assert written["state"] == "interrupted" and written["step"] >= running_before[trial_id]
            assert written["undelivered"] == 0
    (parent,), _ = tracked_runs(name)
    assert parent.info.status == "KILLED"
    assert json.loads((output / "sweep.json").read_text())["state"] == "interrupted"

    second = Driver(processes, tmp_path, spec, *args)
    assert second.wait() == 0, second.text()[-3000:]
    text = second.text()
    scheduled, skipped = map(int, re.search(r"running (\d+) of 4 trials \((\d+) already finished\)", text).groups())
    assert scheduled + skipped == 4 and skipped >= len(done_before) and scheduled >= len(running_before)
    # Tune's own restore is used when its record of finished trials matches ours; when the Ctrl-C
    # fell between a trial's last report and Tune's bookkeeping, a fresh Tune experiment runs the
    # rest. Either way our per-trial resume below must hold.
    for trial_id in ids:
        attempts = status.read_attempts(folders[trial_id])
        assert status.read_status(folders[trial_id])["state"] == "finished"
        assert status.read_status(folders[trial_id])["step"] == STEPS
        if trial_id in done_before:
            assert len(attempts) == 1, (trial_id, attempts)  # finished trials are not run again
        if trial_id in running_before:  # continued from its checkpoint, not from step 0
            resumed = attempts[-1]["start_step"]  # STEPS when stopped just after its final checkpoint
            assert len(attempts) == 2 and STEPS >= resumed >= running_before[trial_id] > 0, (trial_id, attempts)
            assert resumed % CHECKPOINT_EVERY == 0
    assert_tracked(name, output, ids)  # the killed runs were reopened by the resumed trainers, and finished
    assert f"mlflow ui --backend-store-uri {default_tracking_uri()}" in text
    assert json.loads((output / "sweep.json").read_text())["state"] == "finished"


@pytest.fixture
def server(tmp_path):
    """A real `mlflow server` over HTTP, which a test may kill (SIGKILL) and start again."""
    instance = MlflowServer(tmp_path / "server", free_port())
    instance.folder.mkdir()
    yield instance.start()
    instance.stop()


def test_a_tracking_outage_is_reported_and_the_same_command_delivers_it(tmp_path, ray_dir, processes, server, capsys):
    """The MLflow server is killed while two trials train: they finish, the sweep says which records
    are undelivered and exits 3; `emorl sync` cannot deliver them while the server is down (exit 3);
    once it is back, the same sweep command delivers every record (no trial runs again) and ends
    every child run FINISHED with its whole metric history."""
    name, output, steps = "outage", tmp_path / "sweep", STEPS // 2
    spec = write_spec(tmp_path, name, [0, 1], max_concurrent=2)
    ids = [f"smoke/default/seed{s}" for s in (0, 1)]
    folders = trial_dirs(output, ids)
    args = ("--output", str(output), "--ray-temp-dir", ray_dir, "--tracking-uri", server.uri,
            f"trainer.max_steps={steps}")
    first = Driver(processes, tmp_path, spec, *args)

    def a_trial_mid_run():
        return any(status.read_status(f).get("state") == "running" and status.read_status(f)["step"] <= steps // 2
                   for f in folders.values())

    wait_for(a_trial_mid_run, "a trial's first checkpoint", first)
    server.stop()  # SIGKILL, while the trials train
    assert first.wait() == 3, first.text()[-3000:]
    text = first.text()
    counts = {i: status.read_status(folders[i])["undelivered"] for i in ids}
    assert all(status.read_status(folders[i])["state"] == "finished" for i in ids)
    assert all(counts[i] == undelivered(folders[i]) for i in ids) and sum(counts.values()) > 0, counts
    assert f"2 of 2 trials finished (2 in this launch), 0 failed, 0 unfinished, {sum(counts.values())} tracking " \
           "records undelivered" in text
    waiting = {i: n for i, n in counts.items() if n}
    assert f"tracking: {sum(counts.values())} records of {len(waiting)} trials are NOT delivered to {server.uri}" \
        in text
    assert all(f"  {i}: {n}\n" in text for i, n in waiting.items())
    assert f"deliver them with:\n  emorl sync {output}\n" in text and "or run the same command again" in text
    assert json.loads((output / "sweep.json").read_text())["tracking_undelivered"] == sum(counts.values())

    assert main(["sync", str(output)]) == 3  # in this process: a CLI subprocess would take seconds to start
    assert f"total: 0 records delivered, {sum(counts.values())} left, in 2 run folders" in capsys.readouterr().out

    server.start()  # the same port and database
    client = MlflowClient(server.uri)
    assert any(r.info.status == "RUNNING" for r in client.search_runs(
        [client.get_experiment_by_name(name).experiment_id])), "the outage left no run incomplete"
    second = Driver(processes, tmp_path, spec, *args)
    assert second.wait() == 0, second.text()[-3000:]
    text = second.text()
    assert "all 2 trials already finished; nothing to run" in text
    delivered = ", ".join(f"{i} ({n})" for i, n in waiting.items())
    assert f"tracking: delivered {sum(counts.values())} records kept in the spools of {len(waiting)} trials: " \
           f"{delivered}" in text
    experiment_id = client.get_experiment_by_name(name).experiment_id
    assert "NOT delivered" not in text
    assert f"browse with:   open {server.uri}/#/experiments/{experiment_id}?workflowType=machine_learning in a " \
           "browser" in text
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("emorl.sweep_role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["emorl.sweep_trial"] for c in children) == ids
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(LOG_EVERY, steps + 1, LOG_EVERY))  # steps/LOG_EVERY
    for folder in folders.values():
        assert undelivered(folder) == 0 and status.read_status(folder)["undelivered"] == 0
        assert len(status.read_attempts(folder)) == 1  # delivered, not trained again

    assert main(["sync", str(output)]) == 0
    again = capsys.readouterr().out
    assert "total: 0 records delivered, 0 left, in 2 run folders" in again
    assert f"look at it: open {server.uri} in a browser" in again


def test_the_shipped_quickstart_runs_as_make_demo_does(tmp_path, ray_dir, processes):
    """`make demo` as shipped (`emorl sweep quickstart`, then `emorl report --sweep quickstart`), with
    an evaluation sweep of its checkpoints in between, all against one store: one child run per trial,
    one run per evaluation, no metric written into a finished run, the experiment kind and MLflow's
    system tags, decomposition images per step, a report whose HTML holds its images, and the smoke
    settings in no paper row."""
    output = tmp_path / "quickstart"
    driver = Driver(processes, tmp_path, "quickstart", "--output", str(output), "--ray-temp-dir", ray_dir)
    assert driver.wait() == 0, driver.text()[-3000:]
    text = driver.text()
    ids = [f"smoke/{v}/seed{s}" for v in ("reversed_prior_pp", "bottom_up_prior") for s in (0, 1)]
    assert "sweep quickstart: 4 of 4 trials finished (4 in this launch), 0 failed, 0 unfinished" in text
    assert f"output folder: {output}" in text
    assert f"browse with:   mlflow ui --backend-store-uri {default_tracking_uri()}, then open " \
           "http://127.0.0.1:5000/#/experiments/" in text and "?workflowType=machine_learning" in text
    assert "report with:   emorl report --sweep quickstart\n" in text + "\n"
    assert_tracked("quickstart", output, ids, steps=30, log_every=5)
    assert all(status.read_status(output / i)["state"] == "finished" for i in ids)

    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,), trials = tracked_runs("quickstart")
    before = {r.info.run_id: (r.data.metrics, r.info.end_time, r.info.status) for r in trials}
    for run in trials:  # decomposition images at each evaluation step (eval_every=15 of 30)
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
        assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [15, 30]
    # An evaluation sweep of the demo's checkpoints, in the same store.
    spec = tmp_path / "demoeval.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "demoeval", "resources": {"cpus": 1},
        "evaluation": {"source": {"sweep": "quickstart", "trials": ["smoke/*"]}, "refine_steps": [0, 1],
                       "sets": [{}], "num_images": 8, "batch_size": 8}}))
    evaluation = Driver(processes, tmp_path, spec, "--output", str(tmp_path / "demoeval"), "--source-output",
                        str(output), "--ray-temp-dir", ray_dir)
    assert evaluation.wait() == 0, evaluation.text()[-3000:]
    # Then the report, as `make demo` ends.
    report = subprocess.run([sys.executable, "-m", "emorl.cli", "report", "--sweep", "quickstart"],
                            capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert report.returncode == 0, report.stderr[-3000:]

    parents, children = tracked_runs("quickstart")
    by_sweep = {p.data.tags["emorl.sweep"]: p for p in parents}
    assert sorted(by_sweep) == ["demoeval", "quickstart"]
    runs = {r.info.run_id: r for r in children}
    trial_runs = [r for r in children if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    assert sorted(r.data.tags["emorl.sweep_trial"] for r in trial_runs) == sorted(ids)  # one child run per trial
    evaluations = [r for r in children if r.data.tags["mlflow.parentRunId"] == by_sweep["demoeval"].info.run_id]
    assert len(evaluations) == 4 and all(r.data.tags["emorl.run_kind"] == "evaluation" for r in evaluations)
    assert sorted(r.data.tags["emorl.evaluation_of"] for r in evaluations) == sorted(before)  # one per trial's run
    for run_id, (metrics, end_time, run_status) in before.items():  # no metric written into a finished run
        assert (runs[run_id].data.metrics, runs[run_id].info.end_time, runs[run_id].info.status) == \
               (metrics, end_time, run_status)
    for run in [*trial_runs, *evaluations, *parents]:  # MLflow's own columns: user, source, commit
        tags = run.data.tags
        assert tags["mlflow.user"] and tags["mlflow.source.name"].startswith("emorl ")
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.note.content"]
    # The report: logged to the sweep's parent run, its HTML holding its images, no paper row of smoke runs.
    folder = Path(re.search(r"written to (\S+)", report.stdout).group(1))
    page = (folder / "index.html").read_text()
    assert "data:image/png;base64," in page and '<img src="figures/' not in page
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    placement = pd.read_csv(folder / "tables" / "placement.csv")
    assert set(placement["experiment"]) == {"smoke"} and set(placement["destination"]) == {"other settings"}
    table2 = (folder / "tables" / "table2.md").read_text()
    assert next(line for line in table2.splitlines() if "w/ bottom-up prior | Tetrominoes" in line).count("(n=0)")


def test_killed_trial_is_retried_from_its_last_checkpoint(tmp_path, ray_dir, processes):
    name, output = "killed", tmp_path / "sweep"
    spec = write_spec(tmp_path, name, [3])
    folder = output / "smoke/default/seed3"
    driver = Driver(processes, tmp_path, spec, "--output", str(output), "--ray-temp-dir", ray_dir)

    def running():
        state = status.read_status(folder)
        return state if state.get("state") == "running" and CHECKPOINT_EVERY <= state["step"] <= STEPS // 2 else None

    seen = wait_for(running, "the trial's first checkpoint", driver)
    first = status.read_attempts(folder)[0]
    os.kill(first["pid"], signal.SIGKILL)  # the trial's own process, for real
    assert driver.wait() == 0, driver.text()[-3000:]

    attempts = status.read_attempts(folder)
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[1]["pid"] != first["pid"]
    resumed = attempts[1]["start_step"]
    assert resumed >= seen["step"] >= CHECKPOINT_EVERY and resumed % CHECKPOINT_EVERY == 0 and resumed < STEPS
    assert f"emorl: resuming {folder} from step {resumed}" in driver.text()
    assert status.read_status(folder)["step"] == STEPS
    assert "1 of 1 trials finished (1 in this launch), 0 failed" in driver.text()
    assert_tracked(name, output, ["smoke/default/seed3"])


def test_failed_trials_are_listed_with_the_reason_and_the_retry_command(tmp_path, ray_dir, processes):
    """A trial that fails in its process (the model's image size does not match the data) is retried
    max_failures times, then listed; the other trial finishes; the parent run is FAILED."""
    name, output = "failing", tmp_path / "sweep"
    spec = write_spec(tmp_path, name, [0])
    body = yaml.safe_load(spec.read_text())
    body.update(max_failures=1, max_concurrent=2, variants={"good": [], "bad": ["model.image_size=32"]})
    spec.write_text(yaml.safe_dump(body))
    driver = Driver(processes, tmp_path, spec, "--output", str(output), "--ray-temp-dir", ray_dir)
    assert driver.wait() == 1, driver.text()[-3000:]
    text = driver.text()
    assert "1 of 2 trials finished (1 in this launch), 1 failed, 0 unfinished" in text
    assert "  smoke/bad/seed0 (2 attempts): ConfigError: model.image_size=32 but data tetrominoes gives 35x35" in text
    retry = f"emorl sweep {spec} --output {output} --ray-temp-dir {ray_dir} --only smoke/bad/seed0"
    assert f"retry them with:\n  {retry}\n" in text
    assert status.read_status(output / "smoke/bad/seed0")["state"] == "failed"
    assert len(status.read_attempts(output / "smoke/bad/seed0")) == 2
    (parent,), children = tracked_runs(name)
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/trials_failed"] == 1
    assert [c.data.tags["emorl.sweep_trial"] for c in children] == ["smoke/good/seed0"]


def test_evaluation_sweep_makes_one_evaluation_run_per_trial_and_leaves_the_training_runs_alone(
        tmp_path, ray_dir, processes):
    """A training sweep, then an evaluation-only sweep over its checkpoints: test-time I in {0, 2} on the
    training data at K = 4 (as trained) and K = 6; each evaluation is a run of its own, a child of the
    evaluation sweep's parent run, linked to the training run; the finished training run is untouched."""
    source, output = tmp_path / "source", tmp_path / "evaluation"
    train_spec = write_spec(tmp_path, "evalsource", [0])
    assert Driver(processes, tmp_path, train_spec, "--output", str(source), "--ray-temp-dir", ray_dir,
                  "trainer.max_steps=8").wait() == 0
    spec = tmp_path / "tinyeval.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tinyeval", "resources": {"cpus": 1},
        "evaluation": {"source": {"sweep": str(train_spec), "trials": ["smoke/*"]}, "refine_steps": [0, 2],
                       "sets": [{}, {"num_slots": 6}], "num_images": 8, "batch_size": 8}}))
    args = ("--output", str(output), "--source-output", str(source), "--ray-temp-dir", ray_dir)
    first = Driver(processes, tmp_path, spec, *args)
    assert first.wait() == 0, first.text()[-3000:]
    for label in ("test", "test_K6"):
        state = status.read_status(output / "smoke/default/seed0" / label)
        assert state["state"] == "finished" and state["checkpoint"] == str(
            source / "smoke/default/seed0/checkpoints/last.pt")
    parents, children = tracked_runs("evalsource")
    by_sweep = {p.data.tags["emorl.sweep"]: p for p in parents}
    assert sorted(by_sweep) == ["evalsource", "tinyeval"]
    (trained,) = [c for c in children if c.data.tags["mlflow.parentRunId"] == by_sweep["evalsource"].info.run_id]
    evaluations = [c for c in children if c.data.tags["mlflow.parentRunId"] == by_sweep["tinyeval"].info.run_id]
    assert not any(k.startswith("eval/") for k in trained.data.metrics)  # the finished run is not written into
    assert sorted(e.data.tags["emorl.sweep_trial"] for e in evaluations) == ["smoke/default/seed0/test",
                                                                             "smoke/default/seed0/test_K6"]
    assert all(e.data.tags["emorl.evaluation_of"] == trained.info.run_id and e.info.status == "FINISHED"
               and e.data.tags["emorl.run_kind"] == "evaluation" for e in evaluations)
    logged = {k for e in evaluations for k in e.data.metrics if k.startswith("eval/")}
    assert logged == {f"eval/tetrominoes{k}/I{i}/{m}" for k in ("", "_K6") for i in (0, 2)
                      for m in ("fg_ari", "mse", "kl", "nll")}
    assert by_sweep["tinyeval"].info.status == "FINISHED"
    again = Driver(processes, tmp_path, spec, *args)
    assert again.wait() == 0 and "all 2 trials already finished; nothing to run" in again.text()


# -- a two-node cluster on this machine ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(processes: list, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`ray start --block ...`: the node lives as long as this process (SIGTERM stops its processes)."""
    ray = Path(sys.executable).parent / "ray"
    node = subprocess.Popen([str(ray), "start", "--block", "--disable-usage-stats", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    processes.append(node)
    deadline = time.time() + 120
    while "block forever" not in log.read_text():
        if node.poll() is not None or time.time() > deadline:
            pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return node


@pytest.fixture
def cluster(tmp_path, ray_dir, processes):
    """A head (1 CPU) and a worker (1 CPU) node on this machine; yields (address, worker process, ids)."""
    port = free_port()
    head = start_node(processes, tmp_path / "head.log", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                      "--num-cpus=1", '--resources={"head_slot": 1}', "--include-dashboard=false",
                      f"--temp-dir={ray_dir}")
    address = f"127.0.0.1:{port}"
    worker = start_node(processes, tmp_path / "worker.log", f"--address={address}", "--num-cpus=1",
                        '--resources={"worker_slot": 1}', env={"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    probe = subprocess.run([sys.executable, "-c", (
        "import json, ray; ray.init(address=%r, log_to_driver=False); "
        "print(json.dumps({n['NodeID']: sorted(n['Resources']) for n in ray.nodes() if n['Alive']}))") % address],
        capture_output=True, text=True, timeout=120)
    nodes = json.loads(probe.stdout.strip().splitlines()[-1])
    ids = {("worker" if "worker_slot" in resources else "head"): node for node, resources in nodes.items()}
    assert len(nodes) == 2 and set(ids) == {"head", "worker"}, probe.stdout + probe.stderr
    yield address, worker, ids
    for node in (worker, head):
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            node.wait(90)


def test_two_node_cluster_runs_trials_on_both_nodes_and_survives_losing_one(tmp_path, cluster, processes):
    """Three trials on a head + worker cluster; the worker is stopped while a trial runs on it and its
    folder is removed (a lost node's disk): the trial continues on the head from its Tune checkpoint."""
    address, worker, node_ids = cluster
    name, output = "twonodes", tmp_path / "sweep"
    spec = write_spec(tmp_path, name, [0, 1, 2], max_concurrent=2)
    ids = [f"smoke/default/seed{s}" for s in (0, 1, 2)]
    folders = trial_dirs(output, ids)
    driver = Driver(processes, tmp_path, spec, "--output", str(output), "--address", address)

    def running_on_worker():
        for trial_id, folder in folders.items():
            attempts, state = status.read_attempts(folder), status.read_status(folder)
            # a second checkpoint (so Tune holds the first) and at most half way (so it is still
            # running when the node goes)
            if attempts and attempts[-1]["node_id"] == node_ids["worker"] and state.get("state") == "running" \
                    and 2 * CHECKPOINT_EVERY <= state["step"] <= STEPS // 2:
                return trial_id
        return None

    lost = wait_for(running_on_worker, "a trial with a checkpoint on the worker node", driver)
    worker.send_signal(signal.SIGTERM)  # the worker node goes away with the trial's process
    worker.wait(60)
    for part in ("checkpoints", "tracking"):  # and with it the trial's folder
        shutil.rmtree(folders[lost] / part)
    assert driver.wait() == 0, driver.text()[-4000:]

    nodes_used = {a["node_id"] for f in folders.values() for a in status.read_attempts(f)}
    assert nodes_used == {node_ids["head"], node_ids["worker"]}
    retry = status.read_attempts(folders[lost])[-1]
    assert retry["node_id"] == node_ids["head"] and retry["restored_from_tune"] is True
    assert CHECKPOINT_EVERY <= retry["start_step"] < STEPS  # from the Tune checkpoint, not from step 0
    for folder in folders.values():
        assert status.read_status(folder)["state"] == "finished" and status.read_status(folder)["step"] == STEPS
    assert_tracked(name, output, ids)  # the lost trial reopened its MLflow run
