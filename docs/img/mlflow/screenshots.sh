#!/usr/bin/env bash
# How docs/img/mlflow/*.png were made: the demo (`make demo`: the quickstart sweep and its report),
# figures of one run (`emorl evaluate --figures`), then MLflow's UI on that store, photographed by
# headless Chromium (`apt-get install chromium`). Run from the repository root, with the venv built:
#   bash docs/img/mlflow/screenshots.sh [scratch folder]
set -euo pipefail
SCRATCH=${1:-/tmp/emorl-screenshots}
OUT=$(pwd)/docs/img/mlflow
EMORL=$(pwd)/.venv/bin/emorl
MLFLOW=$(pwd)/.venv/bin/mlflow
PY=$(pwd)/.venv/bin/python
PORT=5078
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
export EMORL_OUTPUT_DIR=$SCRATCH RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true
STORE=sqlite:///$SCRATCH/mlflow.db
"$EMORL" sweep quickstart --quiet
RUN_DIR=$SCRATCH/sweeps/quickstart/smoke/reversed_prior_pp/seed0
"$EMORL" evaluate "$RUN_DIR/checkpoints/last.pt" --figures --images 32
"$EMORL" report --sweep quickstart
"$MLFLOW" ui --backend-store-uri "$STORE" --port $PORT > "$SCRATCH/mlflow-ui.log" 2>&1 &
UI=$!
trap 'kill $UI' EXIT
until curl -sf "http://127.0.0.1:$PORT/" > /dev/null; do sleep 2; done
read -r EXPERIMENT PARENT CHILD IMAGE < <("$PY" - "$STORE" <<'PYTHON'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("quickstart").experiment_id
runs = client.search_runs([experiment])
parent = next(r for r in runs if r.data.tags.get("emorl.sweep_role") == "parent" and r.data.tags["emorl.sweep"] == "quickstart")
child = next(r for r in runs if r.data.tags.get("emorl.sweep_trial") == "smoke/reversed_prior_pp/seed0")
image = [a.path for a in client.list_artifacts(child.info.run_id, "images") if a.path.endswith(".png")][-1]
print(experiment, parent.info.run_id, child.info.run_id, image)
PYTHON
)
shot() {  # shot NAME URL-FRAGMENT (the report's 0.5 MB of embedded images needs a long virtual-time budget)
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,950 \
    --virtual-time-budget=180000 --screenshot="$OUT/$1.png" "http://127.0.0.1:$PORT/#$2" 2>/dev/null
}
ML="workflowType=machine_learning"
shot experiment "/experiments/$EXPERIMENT/runs?$ML"
shot child_run "/experiments/$EXPERIMENT/runs/$CHILD?$ML"
shot child_run_images "/experiments/$EXPERIMENT/runs/$CHILD/artifacts/$IMAGE?$ML"
shot report_artifact "/experiments/$EXPERIMENT/runs/$PARENT/artifacts/report/index.html?$ML"
ls -la "$OUT"
