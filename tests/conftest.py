"""Shared test setup: keep every tool out of the home directory, and keep runs small.

On a GPU machine that has only PyTorch and the pure-Python configuration stack (no MLflow, no Ray;
docs/benchmarks.md, "GPU checks"), ``pytest -m cuda`` collects tests/test_cuda.py alone and the
tests run without an MLflow store."""

import importlib.util
import os
import shutil

import pytest

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


def pytest_ignore_collect(collection_path, config):
    """``-m cuda`` collects the CUDA tests only (the other files import Ray or MLflow)."""
    if config.getoption("markexpr", "").strip() == "cuda" and collection_path.name.startswith("test_"):
        return collection_path.name != "test_cuda.py" or None
    return None


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")


@pytest.fixture(scope="session")
def mlflow_database_template(tmp_path_factory):
    """An empty, fully migrated MLflow sqlite database, made once (creating one takes seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path, tmp_path_factory, monkeypatch, request):
    """Every test writes under its own folders: data and outputs under tmp_path, its MLflow store
    and matplotlib cache beside it (so tmp_path holds only what the test itself writes)."""
    monkeypatch.setenv("EMORL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EMORL_OUTPUT_DIR", str(tmp_path / "outputs"))
    private = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("MPLCONFIGDIR", str(private / "mpl"))
    if HAS_MLFLOW:
        database = private / "mlflow.db"
        shutil.copy(request.getfixturevalue("mlflow_database_template"), database)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")


@pytest.fixture
def float32_flags():
    """The process-wide float32 precision flags (emorl.engine.precision.FLOAT32_BACKENDS), restored
    after the test; the fixture reads their current values."""
    from emorl.engine.precision import FLOAT32_BACKENDS

    saved = [backend.fp32_precision for backend in FLOAT32_BACKENDS]
    yield lambda: [backend.fp32_precision for backend in FLOAT32_BACKENDS]
    for backend, value in zip(FLOAT32_BACKENDS, saved):
        backend.fp32_precision = value
