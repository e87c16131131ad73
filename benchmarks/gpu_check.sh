#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU check"): the CUDA tests, the training-step benchmark in
# every mode (the authors' released code beside ours when EMORL_AUTHORS_CODE is set), the trainer's
# own steps/s, and packing of K trainers on one GPU; ends with a summary table. About 6 minutes on
# one H200 with 16 cores.
#
#   benchmarks/gpu_check.sh [OUT]        # default OUT: outputs/gpu_check
#
# Needs PyTorch, numpy, h5py, pytest (+ pytest-timeout) and the pure-Python hydra-core, omegaconf and
# antlr4-python3-runtime; no Ray, no MLflow, no network. Environment:
#   EMORL_GPU_CHECK_DATA   a folder with tetrominoes-*.h5 and clevr6-*.h5 (made there if missing)
#   EMORL_AUTHORS_CODE     a checkout of pemami4911/EfficientMORL (with sacred importable)
#   QUICK=1                a short run with tiny sizes: what the CPU can run of it (the script's check)
#   RATE_SECONDS, PACK_SECONDS   timed seconds of the trainer alone (default 45) and of each packing run (15)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-outputs/gpu_check}" && cd "${1:-outputs/gpu_check}" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export EMORL_OUTPUT_DIR="$OUT/outputs" EMORL_DATA_DIR="${EMORL_GPU_CHECK_DATA:-$OUT/data}"
DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
QUICK=${QUICK:-0}
RATE_SECONDS=${RATE_SECONDS:-45}
PACK_SECONDS=${PACK_SECONDS:-15}
started=$(date +%s)
say() { echo "== gpu_check [$(( $(date +%s) - started )) s] $*"; }

say "device $DEVICE, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), out $OUT"
$PY - <<'EOF' | tee "$OUT/machine.txt"
import os, platform, torch
print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, CUDA {torch.version.cuda}")
EOF

# -- data ------------------------------------------------------------------------------------------
mkdir -p "$EMORL_DATA_DIR"
TETROMINOES=$(ls "$EMORL_DATA_DIR"/tetrominoes-*train60000*.h5 2>/dev/null | head -1)
if [ -z "$TETROMINOES" ]; then
  say "making the Tetrominoes set"
  $PY -m emorl.cli data make tetrominoes >"$OUT/data.log" 2>&1
  TETROMINOES=$(ls "$EMORL_DATA_DIR"/tetrominoes-*train60000*.h5 | head -1)
fi
CLEVR=$(ls "$EMORL_DATA_DIR"/clevr6-*.h5 2>/dev/null | head -1)
if [ -z "$CLEVR" ]; then
  say "making a small CLEVR6 set (256 training images: enough to time steps)"
  $PY -m emorl.cli data make clevr6 --train 256 --test 32 >>"$OUT/data.log" 2>&1
  CLEVR=$(ls "$EMORL_DATA_DIR"/clevr6-*.h5 | head -1)
fi

# -- 1. the CUDA tests -----------------------------------------------------------------------------
say "CUDA tests (pytest -m cuda)"
if [ "$DEVICE" = cuda ]; then TEST_ENV=(); else TEST_ENV=(env EMORL_TEST_DEVICE=cpu); fi
"${TEST_ENV[@]}" timeout 300 $PY -m pytest -q -m cuda -p no:cacheprovider -rs tests 2>&1 | tee "$OUT/pytest.log" | tail -15

# -- 2. the training step in every mode ------------------------------------------------------------
say "emorl bench step"
if [ "$QUICK" = 1 ]; then
  STEP_ARGS=(--settings tetrominoes:1 --batch-size 4 --warmup 1 --repeats 2 --block 1)
else
  STEP_ARGS=(--settings tetrominoes:3 clevr6:1 multi_dsprites:1 --warmup 3 --repeats 5 --block 5)
fi
MODES=(plain fast fast-tf32 fast-bf16)
[ "$DEVICE" = cuda ] && MODES+=(graph graph-tf32 graph-bf16)
[ "$QUICK" = 1 ] && [ "$DEVICE" != cuda ] && MODES=(plain fast)
if [ -n "${EMORL_AUTHORS_CODE:-}" ]; then
  MODES=(authors authors-fp32 authors-tf32 authors-bf16 "${MODES[@]}")
  STEP_ARGS+=(--authors-code "$EMORL_AUTHORS_CODE")
fi
timeout 240 $PY -m emorl.cli bench step --device "$DEVICE" "${STEP_ARGS[@]}" --modes "${MODES[@]}" \
  --peak-tflops fp32=67 tf32=495 bf16=989 --json "$OUT/step.json" 2>&1 | tee "$OUT/step.md"

# -- 3. the trainer's own steps/s, and 4. packing ----------------------------------------------------
: >"$OUT/rates.jsonl"
rate() {  # LABEL PROCESSES SECONDS OVERRIDES...
  local label=$1 processes=$2 seconds=$3; shift 3
  say "trainer: $label, $processes at once, ${seconds} s"
  timeout $(( seconds + 120 )) $PY benchmarks/trainer_rate.py --label "$label" --processes "$processes" \
    --seconds "$seconds" --settle "$SETTLE" --json "$OUT/rates.jsonl" "trainer.device=$DEVICE" "$@" \
    2>>"$OUT/rates.log" | tail -1
}
TETRO=(experiment=tetrominoes "data.path=$TETROMINOES" trainer.precision=bf16 trainer.num_threads=2)
CLEVR6=(experiment=clevr6 "data.path=$CLEVR" trainer.precision=bf16 trainer.num_threads=2 data.num_workers=1)
if [ "$QUICK" = 1 ]; then
  SETTLE=2
  QUICKER=(data.batch_size=4 model.latent_dim=8 model.encoder_channels=16 trainer.log_every=1)
  rate tetrominoes-quick 1 4 "${TETRO[@]}" "${QUICKER[@]}"
  rate tetrominoes-quick 2 4 "${TETRO[@]}" "${QUICKER[@]}"
else
  SETTLE=8
  rate tetrominoes-bf16 1 "$RATE_SECONDS" "${TETRO[@]}"
  rate tetrominoes-bf16 4 "$PACK_SECONDS" "${TETRO[@]}"
  rate tetrominoes-bf16 8 "$PACK_SECONDS" "${TETRO[@]}"
  rate clevr6-bf16 1 "$PACK_SECONDS" "${CLEVR6[@]}"
  rate clevr6-bf16 8 "$PACK_SECONDS" "${CLEVR6[@]}"
fi

# -- summary ---------------------------------------------------------------------------------------
say "summary"
$PY - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
print((out / "machine.txt").read_text().strip().replace("\n", "; "))
log = (out / "pytest.log").read_text() if (out / "pytest.log").exists() else ""
result = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in [\d.]+s", log, re.M)
print(f"\nCUDA tests: {result[-1] if result else 'no result (see pytest.log)'}")
rows = json.loads((out / "step.json").read_text()) if (out / "step.json").exists() else []
if rows:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    print("\nTraining step, ms (median of blocks of consecutive steps):\n")
    print("| setting (B) | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for key in dict.fromkeys((r["setting"], r["refine_steps"], r["batch"]) for r in rows):
        cells = {r["mode"]: r["step_s"] * 1e3 for r in rows if (r["setting"], r["refine_steps"], r["batch"]) == key}
        print(f"| {key[0]} I={key[1]} ({key[2]}) | " + " | ".join(f"{cells[m]:.1f}" if m in cells else "-" for m in modes) + " |")
    best = {}
    for r in rows:
        key = (r["setting"], r["refine_steps"])
        precision = {"authors": "tf32-conv", "authors-fp32": "fp32", "authors-tf32": "tf32", "authors-bf16": "bf16",
                     "graph": "fp32", "graph-tf32": "tf32", "graph-bf16": "bf16"}.get(r["mode"])
        if precision:
            best.setdefault(key, {}).setdefault(precision, {})["authors" if r["mode"].startswith("authors") else "ours"] = r["step_s"]
    lines = [f"| {k[0]} I={k[1]} | {p} | {v['authors'] * 1e3:.1f} | {v['ours'] * 1e3:.1f} | {v['authors'] / v['ours']:.1f}x |"
             for k, per in best.items() for p, v in per.items() if len(v) == 2]
    if lines:
        print("\nAgainst the authors' step at the same precision (ours: CUDA graph):\n")
        print("| setting | precision | authors ms | ours ms | speed-up |\n|---|---|---|---|---|")
        print("\n".join(lines))
rates = [json.loads(line) for line in (out / "rates.jsonl").read_text().splitlines()] if (out / "rates.jsonl").exists() else []
if rates:
    print("\nTrainer steps/s (emorl train, logging and checkpoints included); K trainers on one device:\n")
    print("| setting | K | per trainer | total | CUDA graph |\n|---|---|---|---|---|")
    for r in rates:
        per = r["per_trainer"]
        print(f"| {r['label']} | {r['processes']} | {min(per):.1f} - {max(per):.1f} | {r['total']:.1f} | {r['cuda_graph']} |")
EOF
say "done"
