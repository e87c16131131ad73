"""Safe to share (issue 19): checkpoints are data only, one process per run and sweep folder, no
write outside the output root, and messages that say what to do.

The hostile checkpoint is a real pickle whose ``__reduce__`` runs a shell command (creating a
marker file): each entry point that reads a checkpoint must refuse it, and the marker must
never appear.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emorl.config import compose
from emorl.engine import checkpoint as ckpt
from emorl.engine.train import LOCK_FILE, train
from emorl.errors import ConfigError, EmorlError, TrainingError
from emorl.locking import FolderInUse, exclusive
from tests.test_trainer import poison_loss_at_call, smoke, smoke_data  # noqa: F401  (smoke_data: a fixture)

EMORL = [sys.executable, "-m", "emorl.cli"]


class RunsAShellCommand:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path: Path, marker: Path, where: str = "config") -> Path:
    """A file that looks like an emorl checkpoint, with the code-running object at ``where``."""
    payload = {"format_version": ckpt.FORMAT_VERSION, "step": 1, "finished": True, "model": {}, "optimizer": {},
               "rng": {}, "config": {"name": "smoke"}}
    payload[where] = RunsAShellCommand(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*EMORL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).parents[1])


# -- 1. checkpoints are data only ------------------------------------------------------------------------
def test_a_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = hostile_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(ckpt.CheckpointError, match=r"refused: .*GLOBAL posix.system.*could run code"):
        ckpt.load(path)
    assert not marker.exists()


def test_a_hostile_checkpoint_runs_nothing_through_evaluate_resume_and_auto_resume(tmp_path, smoke_data):
    marker = tmp_path / "pwned"
    evil = hostile_checkpoint(tmp_path / "evil.pt", marker, where="model")
    # emorl evaluate X.pt, as a user runs it
    done = cli("evaluate", str(evil), "--no-tracking")
    assert done.returncode == 2 and "refused" in done.stderr and "Traceback" not in done.stderr, done.stderr
    # trainer.resume=X.pt
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        train(smoke(tmp_path, smoke_data, "trainer.max_steps=2", "tracking.backend=none", f"trainer.resume={evil}"))
    # auto-resume from a folder's last.pt
    hostile_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", marker, where="rng")
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        train(smoke(tmp_path, smoke_data, "trainer.max_steps=2", "tracking.backend=none"))
    assert not marker.exists()


def test_a_hostile_checkpoint_runs_nothing_through_the_sweep_resumability_check(tmp_path):
    from sweeps.launch import check_resumable
    from sweeps.spec import expand, load_spec

    plan = expand(load_spec("quickstart"), output=tmp_path / "sweep", tracking_uri=None, overrides=[])
    marker = tmp_path / "pwned"
    hostile_checkpoint(plan.trials[0].output_dir / "checkpoints" / "last.pt", marker)
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        check_resumable(plan.trials)
    assert not marker.exists()


def test_a_hostile_checkpoint_artifact_runs_nothing_when_the_report_loads_it(tmp_path):
    """The report downloads a run's checkpoints/last.pt from the tracking store: someone who can
    replace that artifact must not get code run on the machine that builds the report."""
    from mlflow.tracking import MlflowClient

    from analysis.figures import load_run  # the report's checkpoint loader

    client = MlflowClient()
    run = client.create_run(client.create_experiment("shared"))
    marker = tmp_path / "pwned"
    evil = hostile_checkpoint(tmp_path / "upload" / "last.pt", marker)
    client.log_artifact(run.info.run_id, str(evil), "checkpoints")
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        load_run({"run_id": run.info.run_id}, os.environ["MLFLOW_TRACKING_URI"])
    assert not marker.exists()


def test_rng_states_round_trip_as_data_and_format_1_still_loads(tmp_path):
    state = ckpt.rng_state()
    path = ckpt.save(tmp_path / "a.pt", {"step": 0, "config": {}, "rng": state})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(ckpt.load(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    # format 1 (NumPy's tuple with its array): read with NumPy's array reconstruction allowed, nothing else
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"format_version": 1, "step": 3, "config": {}, "rng": legacy}, tmp_path / "old.pt")
    expected = np.random.rand()
    ckpt.set_rng_state(ckpt.load(tmp_path / "old.pt")["rng"])
    assert np.random.rand() == expected


def test_damaged_and_incomplete_checkpoints_say_what_to_do(tmp_path, smoke_data):
    result = train(smoke(tmp_path, smoke_data, "trainer.max_steps=2", "tracking.backend=none"))
    good = result.checkpoint.read_bytes()
    result.checkpoint.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(EmorlError, match=r"truncated, damaged.*move it aside .*starts over from step 0"):
        train(smoke(tmp_path, smoke_data, "trainer.max_steps=4", "tracking.backend=none"))
    (tmp_path / "copy.pt").write_bytes(good)
    payload = torch.load(tmp_path / "copy.pt", weights_only=True)
    for missing, purpose in (("config", "evaluate"), ("model", "evaluate"), ("optimizer", "resume")):
        broken = {k: v for k, v in payload.items() if k != missing}
        torch.save(broken, tmp_path / "broken.pt")
        with pytest.raises(ckpt.CheckpointError, match=rf"lacks {missing}, needed to {purpose}"):
            ckpt.load(tmp_path / "broken.pt", purpose=purpose)
    payload["model"].pop(next(iter(payload["model"])))  # a state-dict key missing
    torch.save(payload, tmp_path / "edited.pt")
    done = cli("evaluate", str(tmp_path / "edited.pt"), "--no-tracking")
    assert done.returncode == 2 and "do not fit the model" in done.stderr and "missing" in done.stderr, done.stderr


# -- 2. one process per folder ---------------------------------------------------------------------------
def long_training(folder: Path, data: Path) -> tuple[subprocess.Popen, list[str]]:
    """`emorl train` of a long smoke run in ``folder``, in its own process, once its first checkpoint
    is written; (the process, its arguments)."""
    args = ["train", "experiment=smoke", f"data.path={data}", "data.batch_size=4", "trainer.max_steps=100000",
            "trainer.checkpoint_every=5", "tracking.backend=none", "trainer.progress=false",
            f"trainer.output_dir={folder}"]
    process = subprocess.Popen([*EMORL, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 60
    while not (folder / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return process, args


def test_a_second_training_launch_on_a_busy_folder_stops_and_a_dead_holder_is_taken_over(tmp_path, smoke_data):
    folder = tmp_path / "run"
    first, args = long_training(folder, smoke_data)
    try:
        holder = folder / (LOCK_FILE + ".holder.json")
        assert json.loads(holder.read_text())["pid"] == first.pid
        second = cli(*args[:-2], "trainer.max_steps=10", f"trainer.output_dir={folder}")
        assert second.returncode == 2
        assert f"the run folder {folder} is in use by another emorl process" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()  # SIGKILL: no handler runs; the operating system releases the lock
        first.wait()
    assert holder.exists()  # the dead holder's record is still there ...
    step = ckpt.load(folder / "checkpoints" / "last.pt")["step"]
    resumed = train(compose(["experiment=smoke", f"data.path={smoke_data}", "data.batch_size=4",
                             f"trainer.max_steps={step + 2}", "tracking.backend=none", "trainer.progress=false",
                             f"trainer.output_dir={folder}"]))
    assert resumed.step == step + 2 and not holder.exists()  # ... and the next launch took the folder over


def test_a_second_sweep_launch_on_a_busy_sweep_folder_stops_before_anything_starts(tmp_path):
    from sweeps.launch import sweep_lock_file
    from sweeps.spec import expand, load_spec

    output = tmp_path / "sweep"
    plan = expand(load_spec("quickstart"), output=output, tracking_uri=None, overrides=[])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from emorl.locking import exclusive\n"
         f"with exclusive({str(sweep_lock_file(plan))!r}, 'x'):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        done = cli("sweep", "quickstart", "--output", str(output))
        assert done.returncode == 2, done.stderr
        assert f"the sweep folder {output} is in use by another emorl process" in done.stderr
        assert f"pid {holder.pid}" in done.stderr
        assert not (output / "sweep.json").exists()  # nothing started: no Ray, no tracking, no trial
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with exclusive(tmp_path / "x.lock", "the folder x"):
        with pytest.raises(FolderInUse, match=r"the folder x is in use by another emorl process \(host .*pid "
                                              rf"{os.getpid()}"):
            with exclusive(tmp_path / "x.lock", "the folder x"):
                pass
    with exclusive(tmp_path / "x.lock", "the folder x"):  # released: free again
        pass


# -- 4. names cannot leave the output root -------------------------------------------------------------------
@pytest.mark.parametrize("override", ["name=../../../escaped", "variant=../up", "name=a/b", "name=.hidden"])
def test_names_that_would_leave_the_output_root_are_refused(tmp_path, override):
    with pytest.raises(ConfigError, match="is not a plain name"):
        compose(["experiment=smoke", override])
    root = Path(os.environ["EMORL_OUTPUT_DIR"])
    done = cli("train", "experiment=smoke", override, "tracking.backend=none")
    assert done.returncode == 2 and "is not a plain name" in done.stderr
    assert not any(p.name == "escaped" for p in root.parent.parent.rglob("escaped"))


def test_a_sweep_override_with_a_traversal_name_is_refused(tmp_path):
    done = cli("sweep", "quickstart", "--dry-run", "name=../../../escaped")
    assert done.returncode == 2 and "is not a plain name" in done.stderr


def test_a_symbolic_link_out_of_the_output_root_is_refused(tmp_path):
    from emorl.config import output_root, run_output_dir, to_container

    (output_root() / "runs").mkdir(parents=True)
    (output_root() / "runs" / "smoke").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="lies outside the output root"):
        run_output_dir(to_container(compose(["experiment=smoke"])))


# -- 5. messages ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", r"optim.lr=-1.0 must be > 0"),
    ("optim.grad_clip_norm=0", r"optim.grad_clip_norm=0.0 must be > 0, or null"),
    ("optim.betas=[0.9,1.5]", r"optim.betas=\[0.9, 1.5\] must be two numbers in \[0, 1\)"),
])
def test_bad_optimiser_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        compose(["experiment=smoke", override])


def test_after_a_nan_the_message_gives_a_lower_lr_and_resuming_with_it_is_allowed(tmp_path, smoke_data, monkeypatch):
    from mlflow.tracking import MlflowClient

    poison_loss_at_call(monkeypatch, 5)  # training step 4
    overrides = ("trainer.max_steps=8", "trainer.checkpoint_every=2", "trainer.eval_every=100")
    with pytest.raises(TrainingError, match=r"same command would stop here again.*optim.lr=0.0002"):
        train(smoke(tmp_path, smoke_data, *overrides))
    result = train(smoke(tmp_path, smoke_data, *overrides, "optim.lr=2e-4"))
    assert result.step == 8
    assert ckpt.load(result.checkpoint)["config"]["optim"]["lr"] == 2e-4
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["emorl.resumed_with"] == "optim.lr: 0.0004 -> 0.0002 at step 4"
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("stop, code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_stopped_training_says_what_is_kept_and_how_to_continue(tmp_path, smoke_data, stop, code, name):
    folder = tmp_path / "run"
    process, _ = long_training(folder, smoke_data)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("emorl train")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert re.search(rf"stopped by {name}: interrupted at step \d+ of 100000; the checkpoint of step \d+ is kept in "
                     rf"{folder}/checkpoints/last.pt\. Run the same command again to continue from it", lines[0])


def test_evaluating_a_checkpoint_tracked_elsewhere_logs_a_new_run_and_writes_beside_it(tmp_path, smoke_data, capsys):
    from mlflow.tracking import MlflowClient

    from emorl.engine.evaluation_run import run_evaluation

    result = train(smoke(tmp_path, smoke_data, "trainer.max_steps=2"))  # tracked in this test's store
    other = f"sqlite:///{tmp_path / 'other.db'}"
    loose = tmp_path / "shared" / "model.pt"
    loose.parent.mkdir()
    loose.write_bytes(result.checkpoint.read_bytes())
    run_evaluation(loose, num_images=4, batch_size=4, tracking_uri=other)
    printed = capsys.readouterr().out
    assert f"the trained run {result.run_id} is not in the tracking store {other}" in printed
    assert list((tmp_path / "shared" / "evaluation").glob("*/metrics.json"))  # beside the checkpoint
    client = MlflowClient(other)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.tags["emorl.evaluation_of"] for r in runs] == [result.run_id]
    assert "mlflow.parentRunId" not in runs[0].data.tags  # its training run is in another store
    run_evaluation(result.checkpoint, num_images=4, batch_size=4, no_tracking=True)  # a run's own checkpoint
    assert list((tmp_path / "run" / "evaluation").glob("*/metrics.json"))


def test_a_killed_data_make_leaves_no_partial_file(tmp_path):
    out = tmp_path / "data" / "big.h5"
    process = subprocess.Popen([*EMORL, "data", "make", "tetrominoes", "--train", "200000", "--test", "10",
                                "--workers", "1", "--out", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 60
    while not list(out.parent.glob("*.partial")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(out.parent.glob("*.partial"))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert not list(out.parent.glob("*.partial")) and not out.exists()


def test_partial_files_of_dead_writers_are_removed_by_the_next_writer(tmp_path):
    from emorl.data.layout import _host, remove_dead_partials

    target = tmp_path / "set.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"set.h5.{_host()}-{dead.stdout.strip()}-abcd1234.partial"
    live = tmp_path / f"set.h5.{_host()}-{os.getpid()}-abcd1234.partial"
    foreign = tmp_path / f"set.h5.otherhost-{dead.stdout.strip()}-abcd1234.partial"
    for path in (stale, live, foreign):
        path.write_bytes(b"x")
    assert remove_dead_partials(target) == [stale]
    assert live.exists() and foreign.exists() and not stale.exists()
