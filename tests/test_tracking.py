"""Tracking: the spool, an unreachable store, and a real `mlflow server` process over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from emorl.config import compose
from emorl.engine.train import TrainingHooks, Trainer
from emorl.tracking import MLflowTracker, end_abandoned_run, sync, undelivered


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a sqlite store and a local artifact destination."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "MlflowServer":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not become healthy on {self.uri}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its workers, for real
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def server(tmp_path):
    instance = MlflowServer(tmp_path / "server", free_port())
    instance.folder.mkdir()
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from emorl.data.generate.common import generate

    return generate("tetrominoes", tmp_path_factory.mktemp("data") / "d.h5", seed=0, sizes={"train": 16, "test": 4},
                    workers=1, progress=False)


def smoke(tmp_path: Path, data: Path, *overrides: str):
    return compose(["experiment=smoke", f"data.path={data}", "data.batch_size=4", "trainer.eval_images=4",
                    "trainer.eval_batch_size=4", "model.latent_dim=8", "model.encoder_channels=16",
                    "trainer.progress=false", f"trainer.output_dir={tmp_path / 'run'}", *overrides])


def test_unreachable_store_keeps_everything_and_sync_delivers_it(tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    tracker = MLflowTracker(dead, tmp_path / "run", retry_after_s=0.0)
    tracker.start("exp", "a run", {"emorl.seed": 1})
    tracker.log_params({"a": 1, "b": [1, 2]})
    for step in range(1, 4):
        tracker.log_metrics({"train/loss": 10.0 - step}, step)
    tracker.finish("FINISHED")
    err = capsys.readouterr().err
    assert err.count("training goes on") == 1 and "emorl sync" in err  # told once
    assert tracker.run_id is None and len(tracker.pending()) == 6
    # The store is back (here: another store); `emorl sync` delivers every record, once.
    store = f"sqlite:///{tmp_path / 'later.db'}"
    from emorl.cli import main

    assert main(["sync", str(tmp_path / "run"), "--uri", store]) == 0
    assert sync(tmp_path / "run", store) == 0  # nothing left
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1", "b": "[1, 2]"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")] == [9.0, 8.0, 7.0]


def test_sync_delivers_every_run_under_a_folder_and_says_what_is_left(tmp_path, capsys):
    """`emorl sync` over a sweep-like folder: exit 3 while the store is unreachable, then every run
    delivered with a line each and a total; a folder without a spool is an error (exit 2)."""
    from emorl.cli import main

    dead = f"http://127.0.0.1:{free_port()}"
    for seed in (0, 1):
        tracker = MLflowTracker(dead, tmp_path / "sweep" / f"seed{seed}", retry_after_s=0.0, quiet=True)
        tracker.start("exp", f"seed{seed}")
        tracker.log_metrics({"train/loss": 1.0}, 1)
        tracker.finish("FINISHED")
    assert main(["sync", str(tmp_path / "sweep")]) == 3
    out = capsys.readouterr()
    assert "total: 0 records delivered, 6 left, in 2 run folders" in out.out and "emorl sync" in out.err
    assert f"{tmp_path / 'sweep' / 'seed0'}: run not created yet, 0 of 3 pending records delivered, 3 left (" \
        in out.out

    store = os.environ["MLFLOW_TRACKING_URI"]  # the store is back (here: the test's own sqlite store)
    assert main(["sync", str(tmp_path / "sweep"), "--uri", store]) == 0
    out = capsys.readouterr().out
    assert out.count(": run ") == 2 and "3 of 3 pending records delivered" in out
    assert "total: 6 records delivered, 0 left, in 2 run folders" in out
    assert f"look at it: mlflow ui --backend-store-uri {store}" in out
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["seed0", "seed1"] and {r.info.status for r in runs} == {"FINISHED"}

    (tmp_path / "empty").mkdir()
    assert main(["sync", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no tracking spool here or below" in err and "run None" not in err


def test_a_run_abandoned_by_its_process_is_ended_killed_and_a_resume_reopens_it(tmp_path):
    """What the sweep driver does for a trial Ray stopped: the end record its trainer could not write,
    appended to its spool and delivered (KILLED); a resumed trainer's tracker reopens the same run."""
    store = os.environ["MLFLOW_TRACKING_URI"]  # the test's sqlite store
    tracker = MLflowTracker(store, tmp_path / "run").start("exp", "trial")
    tracker.log_metrics({"train/loss": 2.0}, 2)
    tracker.flush(force=True)
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # its process dies here

    result = end_abandoned_run(tmp_path / "run")
    assert (result.ended, result.delivered, result.left) == ("KILLED", 1, 0)
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert end_abandoned_run(tmp_path / "run").ended is None  # once only

    resumed = MLflowTracker(store, tmp_path / "run").start("exp", "trial")
    assert resumed.run_id == tracker.run_id and client.get_run(tracker.run_id).info.status == "RUNNING"
    resumed.log_metrics({"train/loss": 1.0}, 4)
    resumed.finish("FINISHED")
    assert client.get_run(tracker.run_id).info.status == "FINISHED" and undelivered(tmp_path / "run") == 0
    assert [m.step for m in client.get_metric_history(tracker.run_id, "train/loss")] == [2, 4]


@pytest.mark.slow
def test_real_server_receives_params_metrics_and_artifacts(tmp_path, data, server):
    result = Trainer(smoke(tmp_path, data, "trainer.max_steps=4", f"tracking.uri={server.uri}")).run()
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "8"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [2, 4]
    assert "test/fg_ari" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "images", "checkpoints"} <= artifacts
    # The artifacts really went through the server to its destination folder.
    assert list((server.folder / "artifacts").rglob("last.pt"))


@pytest.mark.slow
def test_killing_the_server_mid_run_loses_nothing(tmp_path, data, server, capsys):
    class KillAndRestart(TrainingHooks):
        def on_log(self, step, metrics):
            if step == 2:
                server.stop()  # SIGKILL, mid-run
            if step == 6:
                server.start()

    cfg = smoke(tmp_path, data, "trainer.max_steps=8", "trainer.eval_every=4", f"tracking.uri={server.uri}",
                "tracking.flush_every_s=0")
    result = Trainer(cfg, KillAndRestart()).run()
    assert "unreachable" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [2, 4, 6, 8]
    assert [m.step for m in client.get_metric_history(result.run_id, "test/fg_ari")] == [4, 8]
    images = [a.path for a in client.list_artifacts(result.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [4, 8]  # MLflow's images, per step
    assert MLflowTracker(server.uri, result.output_dir).pending() == []
