"""Run the authors' own training loop (their train.py, unchanged) on one of our HDF5 files, then
score its checkpoints with our metrics: the check of issue 15 ("does their recipe stay on the
plateau too?").

    python benchmarks/authors_training.py --authors-code PATH --data tetrominoes.h5 --steps 1500 \\
        --seed 0 --warmup 500 --eval-every 100 --out outputs/authors-seed0

PATH is a checkout of pemami4911/EfficientMORL (its packages sacred, warmup_scheduler and
tensorboard importable); it needs a CUDA GPU (their loop uses DistributedDataParallel with NCCL).
Their configs/train/tetrominoes/EMORL.json is used with these changes only: the data file, the
number of steps, the seed, the learning-rate warm-up (``--warmup``), checkpoints every
``--eval-every`` steps, 2 loader workers, no progress bar. Each checkpoint is then scored on the
first 320 test images as their eval.py scores it (their GECO with the checkpoint's zeta during the
refinement, I = 3, the last step's masks and reconstruction): foreground ARI and MSE by
:mod:`emorl.metrics`. Writes one JSON line per checkpoint to OUT/metrics.jsonl
(``{"variant": "authors-code", "seed", "step", "test/fg_ari", "test/mse"}``). Not a test.

Their checkpoint named ``state-N`` is written after N + 1 optimiser steps (their loop counts from 0
and saves before incrementing); we report it as step N + 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch


def train_theirs(repo: Path, data: Path, out: Path, steps: int, seed: int, warmup: int, every: int,
                 seconds: float | None = None) -> None:
    """Their train.py in a subprocess; stopped after ``seconds`` (its checkpoints so far are kept)."""
    for folder in ("runs", "weights", "tb"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", SACRED_OBSERVATORY="")
    command = [sys.executable, "train.py", "with", "configs/train/tetrominoes/EMORL.json",
               f"dataset.data_path={data.parent}", f"dataset.h5_path={data.name}", f"training.out_dir={out}",
               f"training.iters={steps}", f"training.checkpoint_freq={every}", f"training.warmup={warmup}",
               "training.num_workers=2", "training.tqdm=False", "training.run_suffix=authors",
               f"training.DDP_port={29500 + seed % 1000}", f"seed={seed}"]
    with (out / "train.log").open("w") as log:
        try:
            subprocess.run(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                           timeout=seconds)
        except subprocess.TimeoutExpired:
            print(f"authors_training: stopped their loop after {seconds:.0f} s", file=sys.stderr)


@torch.no_grad()
def _no_grad_scores(reconstruction, masks, images, true_masks):
    from emorl.metrics import adjusted_rand_index, mse

    ari = adjusted_rand_index(true_masks, masks[:, :, 0].float()).float().cpu()
    return ari, mse(reconstruction.float(), (images + 1) / 2).cpu()


def score_checkpoints(repo: Path, data: Path, out: Path, seed: int, device: torch.device) -> list[dict]:
    from emorl.bench.step import authors_model
    from emorl.data.hdf5 import MultiObjectDataset

    test = MultiObjectDataset(data, "test")
    count = min(320, len(test)) // 32 * 32
    batches = [[test[i] for i in range(start, start + 32)] for start in range(0, count, 32)]
    results = []
    checkpoints = sorted(out.glob("weights/*-state-*.pth"), key=lambda p: int(re.findall(r"state-(\d+)", p.name)[0]))
    for path in checkpoints:
        state = torch.load(path, map_location=device, weights_only=False)  # their format: a pickle of their own run
        model, their_geco = authors_model(repo, "tetrominoes", refine_steps=3, batch=32, geco_warm_start=1000)
        model.load_state_dict({k.removeprefix("module."): v for k, v in state["model"].items()})
        model.to(device).eval()
        geco = their_geco(-1.224 * 3 * 35 * 35, 0.99, 1)  # their config's target
        aris, errors = [], []
        for batch in batches:
            images = torch.stack([item["image"] for item in batch]).to(device)
            true_masks = torch.stack([item["masks"] for item in batch]).to(device)
            outs = model(images, geco, model.geco_warm_start + 1, 1)  # as their eval.py calls it
            last = model.stochastic_layers - 1 + model.refinement_iters
            masks = outs[f"masks_{last}"].exp().detach()
            reconstruction = (outs[f"means_{last}"].detach() * masks).sum(1)
            ari, error = _no_grad_scores(reconstruction, masks, images, true_masks)
            aris.append(ari)
            errors.append(error)
        step = int(state["step"]) + 1
        results.append({"variant": "authors-code", "seed": seed, "step": step,
                        "test/fg_ari": float(torch.cat(aris).mean()), "test/mse": float(torch.cat(errors).mean())})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-code", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a Tetrominoes file in the authors' HDF5 layout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=500, help="learning-rate warm-up steps")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--score-only", action="store_true", help="score existing checkpoints only")
    parser.add_argument("--train-seconds", type=float, default=None, help="stop their loop after this long")
    args = parser.parse_args()
    repo, data, out = (p.expanduser().resolve() for p in (args.authors_code, args.data, args.out))
    if not torch.cuda.is_available() and not args.score_only:
        raise SystemExit("their training loop needs a CUDA GPU (DistributedDataParallel with NCCL)")
    if not args.score_only:
        train_theirs(repo, data, out, args.steps, args.seed, args.warmup, args.eval_every, args.train_seconds)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = score_checkpoints(repo, data, out, args.seed, device)
    with (out / "metrics.jsonl").open("w") as handle:
        for row in results:
            handle.write(json.dumps(row) + "\n")
    for row in results:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
