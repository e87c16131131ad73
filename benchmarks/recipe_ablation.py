"""Issue 15's plateau study: short Tetrominoes runs that switch the parts of the authors' recipe on
one at a time, against our default, with test fg-ARI and MSE every ``--eval-every`` steps; and,
with ``--authors-code``, the authors' own training loop on the same file (benchmarks/authors_training.py).

    python benchmarks/recipe_ablation.py --data tetrominoes.h5 --steps 1500 --seeds 0 1 \\
        --parallel 14 --out outputs/recipe --authors-code PATH trainer.precision=tf32

Variants (the switches of docs/model.md, "Two recipes"; Tetrominoes has no bottom-up prior, so
its two bottom-up switches do not apply): default (``recipe=paper``, today's defaults), init
(``model.init=authors``), authors_but_init (``recipe=authors model.init=pytorch``: everything of
theirs except the initialisation), authors (``recipe=authors``), step_weights
(``model.step_weighting=authors``), layernorm (``model.refine_grad_norm_affine=false``), variance
(``model.variance_formula=authors``), schedule (their warm-up from lr 0 and GECO's first update).
Runs start in that order, so a ``--deadline`` cuts the last ones.
Every run: ``experiment=tetrominoes`` with ``optim.warmup_steps=500`` (the paper's settings
otherwise), evaluation on the first 320 test images. Runs go in parallel processes (``--parallel``;
on one GPU they share it), each writes JSON lines to OUT/metrics.jsonl; ``--deadline`` seconds
after the start the runs still going are stopped and what they wrote is kept. Then
``--plot`` (or a later ``python benchmarks/recipe_ablation.py --out OUT --plot-only``) draws
OUT/recipe_ablation.png and prints the table. ``--signal`` prints, for both initialisations, how
much of each layer's output depends on the image at step 0 (std across 32 training images), the
mechanism docs/benchmarks.md section 2c describes. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "default": [],
    "init": ["model.init=authors"],
    "authors_but_init": ["recipe=authors", "model.init=pytorch"],
    "authors": ["recipe=authors"],
    "step_weights": ["model.step_weighting=authors"],
    "layernorm": ["model.refine_grad_norm_affine=false"],
    "variance": ["model.variance_formula=authors"],
    "schedule": ["optim.warmup_from_zero=true", "loss.geco.zeta_at_first_update=false"],
}


def one_run(variant: str, seed: int, steps: int, every: int, data: Path, out: Path, overrides: list[str]) -> None:
    from emorl.config import compose
    from emorl.engine.train import Trainer, TrainingHooks

    sink = out / "metrics.jsonl"

    class Record(TrainingHooks):
        def on_evaluation(self, step, metrics):
            row = {"variant": variant, "seed": seed, "step": step, **metrics}
            with sink.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    cfg = compose(["experiment=tetrominoes", f"data.path={data}", f"seed={seed}", "optim.warmup_steps=500",
                   f"trainer.max_steps={steps}", f"trainer.eval_every={every}", "trainer.checkpoint_every=100000000",
                   "trainer.log_every=100", "tracking.backend=none", "trainer.progress=false",
                   f"trainer.output_dir={out / 'runs' / f'{variant}-seed{seed}'}", *VARIANTS[variant], *overrides])
    Trainer(cfg, Record()).run()


def signal(data: Path, overrides: list[str]) -> None:
    """Each Conv/Linear/LayerNorm/GRU cell's output at initialisation, on 32 training images: its
    std and its std across the images (the part that depends on the image), for both inits."""
    import torch
    from omegaconf import OmegaConf

    from emorl.config import compose
    from emorl.data.hdf5 import MultiObjectDataset
    from emorl.models import build_model

    dataset = MultiObjectDataset(data, "train")
    images = torch.stack([dataset[index]["image"] for index in range(32)])
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for init in ("pytorch", "authors"):
        torch.manual_seed(0)
        cfg = compose(["experiment=tetrominoes", f"model.init={init}", *overrides])
        model = build_model(OmegaConf.to_container(cfg.model, resolve=True))
        kinds = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.LayerNorm, torch.nn.GRUCell)

        def hook(name):
            def record(module, inputs, output):
                if isinstance(output, torch.Tensor) and init not in table.get(name, {}):
                    table.setdefault(name, {})[init] = (output.float().std().item(), output.float().std(0).mean().item())
            return record

        for name, module in model.named_modules():
            if isinstance(module, kinds):
                module.register_forward_hook(hook(name))
        model(images)
    print("| module (first call) | pytorch: std / across images | authors: std / across images |\n|---|---|---|")
    for name, by_init in table.items():
        print(f"| {name} | " + " | ".join(f"{by_init[i][0]:.1e} / {by_init[i][1]:.1e}" for i in ("pytorch", "authors")) + " |")


def rows(out: Path) -> list[dict]:
    lines = []
    for path in [out / "metrics.jsonl", *sorted(out.glob("authors-seed*/metrics.jsonl"))]:
        if path.exists():
            lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(out)
    variants = list(dict.fromkeys(r["variant"] for r in data))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("tab10")
    for index, variant in enumerate(variants):
        for seed in sorted({r["seed"] for r in data if r["variant"] == variant}):
            points = sorted((r["step"], r["test/fg_ari"], r["test/mse"]) for r in data
                            if r["variant"] == variant and r["seed"] == seed)
            steps = [p[0] for p in points]
            style = dict(color=colours(index), linestyle="-" if seed == min(r["seed"] for r in data) else "--")
            axes[0].plot(steps, [p[1] for p in points], label=f"{variant} (seed {seed})", **style)
            axes[1].plot(steps, [p[2] for p in points], **style)
    axes[0].set(xlabel="training step", ylabel="test fg-ARI", title="Tetrominoes: foreground ARI")
    axes[1].set(xlabel="training step", ylabel="test MSE", title="reconstruction MSE", yscale="log")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "recipe_ablation.png", dpi=110)
    print("\n| variant | seed | fg-ARI at 500 / 1000 / last | MSE at last | last step |\n|---|---|---|---|---|")
    for variant in variants:
        for seed in sorted({r["seed"] for r in data if r["variant"] == variant}):
            points = {r["step"]: r for r in data if r["variant"] == variant and r["seed"] == seed}
            last = points[max(points)]

            def at(step):
                near = min(points, key=lambda s: abs(s - step))
                return f"{points[near]['test/fg_ari']:.3f}"

            print(f"| {variant} | {seed} | {at(500)} / {at(1000)} / {last['test/fg_ari']:.3f} | "
                  f"{last['test/mse']:.4f} | {max(points)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the Tetrominoes file (authors' HDF5 layout)")
    parser.add_argument("--out", type=Path, help="where runs, metrics.jsonl and the plot go")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--deadline", type=float, default=None, help="stop what still runs after this many seconds")
    parser.add_argument("--authors-code", type=Path, default=None, help="also run the authors' training loop")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--signal", action="store_true", help="only print each layer's image signal at step 0")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="emorl train overrides for every run (e.g. trainer.precision=tf32)")
    args = parser.parse_args()
    if args.signal:
        if args.data is None:
            parser.error("--signal needs --data (a Tetrominoes file)")
        signal(args.data.resolve(), args.overrides)
        return 0
    if args.out is None:
        parser.error("--out is required (where runs, metrics.jsonl and the plot go)")
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        one_run(args.one[0], int(args.one[1]), args.steps, args.eval_every, args.data.resolve(), out, args.overrides)
        return 0
    if not args.plot_only:
        here = Path(__file__).resolve()
        jobs = [[sys.executable, str(here), "--one", variant, str(seed), "--data", str(args.data.resolve()),
                 "--out", str(out), "--steps", str(args.steps), "--eval-every", str(args.eval_every), *args.overrides]
                for seed in args.seeds for variant in args.variants]
        if args.authors_code:
            jobs = [[sys.executable, str(here.parent / "authors_training.py"), "--authors-code", str(args.authors_code),
                     "--data", str(args.data.resolve()), "--out", str(out / f"authors-seed{seed}"), "--steps",
                     str(args.steps), "--seed", str(seed), "--eval-every", str(args.eval_every)]
                    + (["--train-seconds", str(max(30.0, args.deadline - 60))] if args.deadline else [])
                    for seed in args.seeds] + jobs
        start, running, failed = time.monotonic(), [], []
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        while jobs or running:
            while jobs and len(running) < args.parallel:
                job = jobs.pop(0)
                name = "-".join(job[job.index("--one") + 1:job.index("--one") + 3]) if "--one" in job else \
                    Path(job[job.index("--out") + 1]).name
                log = (logs / f"{name}.log").open("w")
                running.append((name, subprocess.Popen(job, stdout=log, stderr=subprocess.STDOUT,
                                                       env=dict(os.environ, TQDM_DISABLE="1"))))
            time.sleep(2)
            for name, process in list(running):
                if process.poll() is not None:
                    running.remove((name, process))
                    if process.returncode != 0:
                        failed.append(name)
            if args.deadline and time.monotonic() - start > args.deadline:
                for name, process in running:
                    process.kill()
                    failed.append(f"{name} (stopped at the deadline)")
                running, jobs = [], []
        print(f"recipe_ablation: {time.monotonic() - start:.0f} s; failed or stopped: {failed or 'none'}")
    plot(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
