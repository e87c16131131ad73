"""The trainer's own steps per second: ``emorl train`` as a user runs it (logging every 50 steps,
checkpoints every 1,000, evaluation every 10,000), timed for ``--seconds`` after ``--settle``
seconds (start, first evaluation-free steps, CUDA-graph capture), then stopped.

    python benchmarks/trainer_rate.py --seconds 60 experiment=tetrominoes trainer.precision=bf16
    python benchmarks/trainer_rate.py --processes 4 --seconds 20 experiment=tetrominoes   # packing

With ``--processes K`` it starts K such trainers at once (as K trials packed on one device) and
reports each one's rate and their sum. Prints one JSON object per line (``--json`` also writes
them to a file) and a Markdown row; benchmarks/gpu_check.sh collects them. Tracking is off and each
trainer writes under a temporary folder. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class _Stop(KeyboardInterrupt):
    """Ends the timed run (the trainer treats it as Ctrl-C: a clean stop)."""


def one_trainer(overrides: list[str], seconds: float, settle: float) -> dict:
    from emorl.config import compose
    from emorl.engine.train import Trainer, TrainingHooks

    marks: list[tuple[float, int]] = []
    start = time.perf_counter()

    class Clock(TrainingHooks):
        def on_log(self, step, metrics):
            now = time.perf_counter()
            marks.append((now, step))
            if now - start > settle + seconds and len(marks) > 2:
                raise _Stop

    folder = tempfile.mkdtemp(prefix="trainer-rate-")
    cfg = compose(["tracking.backend=none", "trainer.progress=false", f"trainer.output_dir={folder}/run",
                   "trainer.max_steps=100000000", *overrides])
    trainer = Trainer(cfg, Clock())
    try:
        trainer.run()
    except _Stop:
        pass
    timed = [(t, s) for t, s in marks if t - start >= settle] or marks
    (t0, s0), (t1, s1) = timed[0], timed[-1]
    step = getattr(trainer, "training_step", None)
    return {"steps_per_sec": (s1 - s0) / max(t1 - t0, 1e-9), "steps": s1 - s0, "seconds": t1 - t0,
            "startup_s": marks[0][0] - start if marks else None, "device": str(trainer.device),
            "cuda_graph": bool(step and step.use_graph), "graph_replays": step.replays if step else 0,
            "overrides": overrides, "pid": os.getpid()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="timed seconds per trainer")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds left out at the start")
    parser.add_argument("--processes", type=int, default=1, help="trainers at once (packing)")
    parser.add_argument("--label", default="", help="a name for the row")
    parser.add_argument("--json", type=Path, default=None, help="append the result lines to this file")
    parser.add_argument("overrides", nargs="*", help="emorl train overrides")
    args = parser.parse_args()
    if args.processes == 1 and os.environ.get("EMORL_TRAINER_RATE_CHILD"):
        print(json.dumps(one_trainer(args.overrides, args.seconds, args.settle)), flush=True)
        return 0
    env = dict(os.environ, EMORL_TRAINER_RATE_CHILD="1")
    command = [sys.executable, __file__, "--seconds", str(args.seconds), "--settle", str(args.settle), *args.overrides]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
    results = []
    for child in children:
        out, _ = child.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if child.returncode != 0 or not lines:
            print(f"trainer_rate: a trainer failed (exit {child.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1]))
    rates = [r["steps_per_sec"] for r in results]
    summary = {"label": args.label, "processes": args.processes, "per_trainer": rates, "total": sum(rates),
               "cuda_graph": all(r["cuda_graph"] for r in results), "overrides": args.overrides}
    print(json.dumps(summary), flush=True)
    if args.json:
        with args.json.open("a") as handle:
            handle.write(json.dumps(summary) + "\n")
    print(f"| {args.label} | {args.processes} | {min(rates):.1f} - {max(rates):.1f} | {sum(rates):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
