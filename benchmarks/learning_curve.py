"""Read the learning-curve runs of ``benchmarks/learning_curve.sh`` from MLflow and write a
Markdown table and a plot of test foreground ARI (and the training loss) against steps and
wall-clock time, one line per run (variant).

    python benchmarks/learning_curve.py [--uri URI] [--experiment learning-curve] [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def histories(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} at {uri}; run benchmarks/learning_curve.sh first")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    out = {}
    for run in runs:
        name = run.data.tags.get("emorl.variant", run.info.run_id)
        ari = sorted(client.get_metric_history(run.info.run_id, "test/fg_ari"), key=lambda m: m.step)
        loss = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        mse = sorted(client.get_metric_history(run.info.run_id, "test/mse"), key=lambda m: m.step)
        speed = client.get_metric_history(run.info.run_id, "train/steps_per_sec")
        clock = active_minutes(run.info.start_time, [m.timestamp for m in loss + ari])
        out[name] = {
            "ari": [(m.step, clock(m.timestamp), m.value) for m in ari],
            "loss": [(m.step, clock(m.timestamp), m.value) for m in loss],
            "mse": {m.step: m.value for m in mse},
            "steps_per_sec": sorted(m.value for m in speed),
        }
    return out


def active_minutes(start_ms: int, stamps_ms: list[int]):
    """Map a timestamp to minutes of training since ``start_ms``, leaving out interruptions:
    a gap between consecutive logged points longer than 10x their median gap counts as one
    median gap (the run was stopped and resumed)."""
    points = sorted({start_ms, *stamps_ms})
    gaps = [b - a for a, b in zip(points, points[1:])]
    typical = sorted(gaps)[len(gaps) // 2] if gaps else 0
    elapsed, total = {start_ms: 0.0}, 0.0
    for previous, current in zip(points, points[1:]):
        gap = current - previous
        total += typical if gap > 10 * typical else gap
        elapsed[current] = total
    return lambda stamp_ms: elapsed[stamp_ms] / 60000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(os.environ.get("EMORL_OUTPUT_DIR", "outputs/learning-curve")).resolve()
    parser.add_argument("--uri", default=f"sqlite:///{default_root / 'mlflow.db'}")
    parser.add_argument("--experiment", default="learning-curve")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    data = histories(args.uri, args.experiment)
    lines = ["| run | step | minutes | test fg-ARI | test MSE |", "|---|---|---|---|---|"]
    for name, values in data.items():
        for step, minutes, value in values["ari"]:
            mse = values["mse"].get(step, float("nan"))
            lines.append(f"| {name} | {step} | {minutes:.1f} | {value:.3f} | {mse:.4f} |")
    for name, values in data.items():
        speeds = values["steps_per_sec"]
        if speeds:
            lines.append(f"\n{name}: median {speeds[len(speeds) // 2]:.3f} training steps/s")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(17, 4.8))
    for name, values in data.items():
        steps, minutes, ari = zip(*values["ari"]) if values["ari"] else ((), (), ())
        axes[0].plot(steps, ari, marker="o", label=name)
        axes[1].plot(minutes, ari, marker="o", label=name)
        loss_steps, _, loss = zip(*values["loss"]) if values["loss"] else ((), (), ())
        axes[2].plot(sorted(values["mse"]), [values["mse"][k] for k in sorted(values["mse"])], marker="o", label=name)
        axes[3].plot(loss_steps, loss, label=name)
    axes[0].set(xlabel="training step", ylabel="test foreground ARI", title="ARI against steps")
    axes[1].set(xlabel="wall-clock minutes (2-core CPU)", ylabel="test foreground ARI", title="ARI against time")
    axes[2].set(xlabel="training step", ylabel="test MSE", yscale="log", title="reconstruction")
    axes[3].set(xlabel="training step", ylabel="training loss (GECO form)", yscale="symlog", title="training loss")
    for axis in axes:
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, title="run", loc="lower center", ncol=min(4, len(labels)), fontsize="small")
    figure.suptitle("EfficientMORL, Tetrominoes setting (paper hyperparameters unless the run name says), "
                    "seed 0 unless the name says, generated data")
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "learning_curve_tetrominoes.png"
    figure.savefig(path, dpi=90)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
