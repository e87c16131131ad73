#!/usr/bin/env bash
# The Tetrominoes learning curves of docs/benchmarks.md: the paper's setting, seed 0, on the
# generated data, fp32 and bf16 for the same number of steps, test ARI every 100 steps.
# Usage: [TAG=name] benchmarks/learning_curve.sh [STEPS] [HYDRA OVERRIDES...]
#        then: python benchmarks/learning_curve.py
# Extra overrides go to both runs; TAG (e.g. "warmup200") is appended to the variant name.
# An interrupted run resumes from its last checkpoint when the same command is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-1000}
shift || true
export EMORL_OUTPUT_DIR=${EMORL_OUTPUT_DIR:-$PWD/outputs/learning-curve}
for precision in fp32 bf16; do
  .venv/bin/emorl train experiment=tetrominoes seed=0 variant="$precision${TAG:+-$TAG}" trainer.precision="$precision" \
    trainer.max_steps="$steps" trainer.eval_every=100 trainer.log_every=25 trainer.checkpoint_every=100 \
    tracking.experiment=learning-curve "$@"
done
