"""`analysis/` only reads: it imports nothing that builds or runs a model (checked in its source and in a
fresh interpreter that builds a report), and the report draws decompositions, traversals and Fig. 11
from the evaluation runs of `emorl evaluate --figures`, or says which command makes them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Modules that build, load or run a model (and torch itself): analysis imports none of them.
FORBIDDEN = ("torch", "emorl.models", "emorl.engine.train", "emorl.engine.evaluate", "emorl.engine.evaluation_run",
             "emorl.engine.evaluation_figures", "emorl.engine.checkpoint", "emorl.engine.step", "emorl.engine.data",
             "emorl.data", "emorl.metrics")


def _forbidden(name: str) -> bool:
    return any(name == module or name.startswith(module + ".") for module in FORBIDDEN)


def test_analysis_source_imports_nothing_that_runs_a_model():
    found = []
    for path in sorted((ROOT / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):  # lazy imports inside functions too
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {name}" for name in names if _forbidden(name)]
    assert not found, found


SCRIPT = """
import argparse, json, sys
from pathlib import Path
import analysis, analysis.aggregate, analysis.cli, analysis.collect, analysis.examples, analysis.figures
import analysis.report, analysis.tables
from mlflow.tracking import MlflowClient
from analysis.examples import emorl_tags, log_figures_evaluation, log_run

uri, work = sys.argv[1], Path(sys.argv[2])
client = MlflowClient(uri)
experiment = client.create_experiment("reads", artifact_location=(work / "artifacts").as_uri())
ids = {}
for model in ("efficient_morl", "genesis", "slot_attention"):
    for seed in (1, 0):
        ids[model, seed] = log_run(client, experiment, tags=emorl_tags(model, "default", seed, model, "textured",
                                   **{"emorl.output_dir": f"/runs/{model}/seed{seed}"}), metrics={"test/fg_ari": 0.9})
# Figures for seed 1 of EfficientMORL (seed 0 has none: the lowest seed with figures is shown), both seeds of
# GENESIS (seed 0 shown), none for Slot Attention (the report names the command for its lowest seed).
for model, seed in (("efficient_morl", 1), ("genesis", 0), ("genesis", 1)):
    log_figures_evaluation(client, experiment, ids[model, seed], work / f"{model}{seed}", model, seed=seed)
# `emorl report` as its own sub-command (emorl.cli's parser also registers the core's commands, whose
# modules import torch: those are not analysis).
parser = argparse.ArgumentParser(prog="emorl")
analysis.cli.register(parser.add_subparsers(dest="command"))
args = parser.parse_args(["report", "--experiment", "reads", "--tracking-uri", uri, "--out", str(work / "report"),
                          "--no-log", "--device", "cpu"])
code = args.func(args)
json.dump({"code": code, "ids": {f"{m}/{s}": i for (m, s), i in ids.items()},
           "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "emorl") and
                            any(m == f or m.startswith(f + ".") for f in json.loads(sys.argv[3])))},
          open(work / "result.json", "w"))
"""


def test_report_draws_figures_from_evaluation_runs_without_running_a_model(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the empty store the conftest made
    done = subprocess.run([sys.executable, "-c", SCRIPT, uri, str(tmp_path), json.dumps(FORBIDDEN)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["code"] == 0, done.stdout
    assert result["loaded"] == []  # no torch, no model code: the report only read and drew
    ids = result["ids"]
    assert "note: --device is ignored: the report runs no model" in done.stdout
    runs = tmp_path / "report" / "figures" / "runs"
    shown = {ids["efficient_morl/1"], ids["genesis/0"]}
    assert sorted(p.name for p in runs.iterdir()) == sorted(f"{kind}_{i[:8]}.png" for i in shown
                                                            for kind in ("decomposition", "traversal"))
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in runs.iterdir())
    figures = tmp_path / "report" / "figures"
    assert (figures / "fig11_traversal_comparison.png").stat().st_size > 5_000
    assert (figures / "fig11_traversal_comparison.pdf").stat().st_size > 2_000
    missing = ("not drawn: Decomposition and traversal of slot_attention/default/seed0: no evaluation run with "
               "figures; make them with: emorl evaluate /runs/slot_attention/seed0/checkpoints/last.pt --figures")
    assert missing in done.stdout
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "emorl evaluate /runs/slot_attention/seed0/checkpoints/last.pt --figures" in readme
    assert "Fig. 11: traversals of one slot per model; leak share efficient_morl" in readme
