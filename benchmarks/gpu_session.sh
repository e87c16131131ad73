#!/usr/bin/env bash
# A lent-GPU session in one call (docs/benchmarks.md, "GPU check"): prepare here, run there.
#
#   benchmarks/gpu_session.sh prepare [AUTHORS_CHECKOUT]   # on the development machine (needs pip's index)
#   benchmarks/gpu_session.sh run                          # on the GPU machine, from the repository root
#
# prepare fills .devstage/ (ignored by git): the pure-Python wheels the GPU machine lacks (hydra-core,
# omegaconf, antlr4; sacred and its needs for the authors' code; warmup_scheduler), the Tetrominoes
# set and a small CLEVR6 set, and a copy of the authors' code without its checkpoints. run installs the
# wheels into /tmp/site, runs benchmarks/gpu_check.sh, then issue 15's recipe study
# (benchmarks/recipe_ablation.py with the authors' own loop) in the time left of a 10-minute call,
# and packs the results into $OUT/results.tgz (plus summary.md and recipe_ablation.png).
# With the device tool: run(command="benchmarks/gpu_session.sh run", carry=[".devstage"], timeout_s=595).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=.devstage
case "${1:-}" in
prepare)
  grep -qx "/$STAGE/" "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null || echo "/$STAGE/" >>"$(git rev-parse --git-common-dir)/info/exclude"
  mkdir -p $STAGE/whl $STAGE/data
  PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64 --platform any)
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d $STAGE/whl hydra-core==1.3.8 \
    omegaconf==2.3.1 sacred==0.8.7 munch jsonpickle docopt-ng GitPython gitdb smmap colorama py-cpuinfo \
    "wrapt<2" setuptools==70.3.0 || exit 1
  python3 -m pip wheel -q --no-deps -w $STAGE/whl antlr4-python3-runtime==4.9.3 warmup_scheduler==0.3 || exit 1
  EMORL_DATA_DIR=$PWD/$STAGE/data python3 -m emorl.cli data make tetrominoes || exit 1
  EMORL_DATA_DIR=$PWD/$STAGE/data python3 -m emorl.cli data make clevr6 --train 256 --test 32 || exit 1
  if [ -n "${2:-}" ]; then
    mkdir -p $STAGE/authors && cp -r "$2"/lib "$2"/configs "$2"/train.py "$2"/eval.py $STAGE/authors/
  fi
  du -sh $STAGE ;;
run)
  T0=$(date +%s)
  OUT=$(mkdir -p "${OUT:-outputs/gpu_session}" && cd "${OUT:-outputs/gpu_session}" && pwd)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $STAGE/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 EMORL_GPU_CHECK_DATA=$PWD/$STAGE/data
  [ -d $STAGE/authors ] && export EMORL_AUTHORS_CODE=$PWD/$STAGE/authors
  W=/tmp/work; mkdir -p $W
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee $W/nvidia.txt
  RATE_SECONDS=40 PACK_SECONDS=12 timeout 420 benchmarks/gpu_check.sh $W/gc >$W/gpu_check.log 2>&1
  echo "gpu_check exit $? after $(( $(date +%s) - T0 )) s"
  left=$(( 550 - ($(date +%s) - T0) )); [ $left -gt 200 ] && left=200
  if [ $left -gt 60 ]; then
    AUTHORS=(); [ -n "${EMORL_AUTHORS_CODE:-}" ] && AUTHORS=(--authors-code "$EMORL_AUTHORS_CODE")
    timeout $(( left + 20 )) python3 benchmarks/recipe_ablation.py --data "$(ls $EMORL_GPU_CHECK_DATA/tetrominoes-*train60000*.h5 | head -1)" \
      --out $W/recipe --steps 1500 --eval-every 100 --seeds 0 1 --parallel 14 --deadline $left "${AUTHORS[@]}" \
      trainer.precision=bf16 trainer.num_threads=1 >$W/recipe.log 2>&1
    echo "recipe exit $?"
  fi
  (cd $W && tar czf "$OUT/results.tgz" --exclude='*.pth' --exclude=runs --exclude=outputs --exclude=data --exclude=tb .)
  cp $W/gc/summary.md $W/recipe/recipe_ablation.png "$OUT"/ 2>/dev/null
  echo "total $(( $(date +%s) - T0 )) s"
  cat $W/gc/summary.md 2>/dev/null; tail -25 $W/recipe.log 2>/dev/null; tail -5 $W/gc/pytest.log ;;
*) echo "usage: $0 prepare [AUTHORS_CHECKOUT] | run" >&2; exit 2 ;;
esac
