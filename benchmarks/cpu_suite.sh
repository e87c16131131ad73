#!/usr/bin/env bash
# Every CPU figure of docs/benchmarks.md, one after the other, on an otherwise idle machine.
# Each benchmark's output goes to outputs/bench/<name>.txt (and to the terminal).
# Usage: benchmarks/cpu_suite.sh [NAME ...]   (all of them: about 65 minutes on 2 cores)
# Names: kernels fft_conv step step_profile efficiency efficiency_trainer data dci sweep_overhead
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-outputs/bench}
mkdir -p "$out"
emorl=.venv/bin/emorl
python=.venv/bin/python
wanted=" ${*:-kernels fft_conv step step_profile efficiency efficiency_trainer data dci sweep_overhead} "
run() {  # run NAME COMMAND...: time a benchmark and keep what it printed
  local name=$1
  shift
  [[ $wanted == *" $name "* ]] || return 0
  echo "== $name: $*" | tee "$out/$name.txt"
  { date -u; lscpu | grep -E "Model name|^CPU\(s\)"; echo "bf16 units: $(grep -o -w -E 'amx_bf16|avx512_bf16' /proc/cpuinfo | sort -u | xargs)"; } >>"$out/$name.txt"
  /usr/bin/time -f "wall %e s, max RSS %M KiB" "$@" 2>&1 | tee -a "$out/$name.txt"
}
run kernels "$python" benchmarks/kernels.py
run fft_conv "$python" benchmarks/fft_conv.py --step
run step "$emorl" bench step
run step_profile "$emorl" bench step --settings tetrominoes:3 --modes plain fast --profile
run efficiency "$emorl" bench efficiency --threads 2 --out "$out/efficiency"
run efficiency_trainer "$emorl" bench efficiency --threads 2 --sizes 128 --models emorl-i0-trainer emorl-i1-trainer \
  --repeats 5 --out "$out/efficiency_trainer"
run data "$emorl" bench data
run dci "$emorl" bench dci
run sweep_overhead "$python" -m sweeps.bench_overhead --trials 4 --steps 30 --json "$out/sweep_overhead.json"
