"""Synthetic runs for examples and tests: log runs with chosen values into an MLflow store.

:func:`log_run` logs one run as the trainer would (emorl tags, params, metric histories, final
metrics, artifacts, status). :func:`log_synthetic_study` fills a store with made-up runs shaped
like the paper's experiments (values are SYNTHETIC: drawn around the paper's numbers, not
results), and ``python -m analysis.examples --out DIR`` draws every figure from them (plus, with
``--train-steps N``, a tiny real smoke run for the checkpoint figures): the pictures in
docs/analysis.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from emorl import vocabulary

SYNTHETIC_NOTE = "SYNTHETIC DATA: example runs made up by analysis/examples.py, not results"


def emorl_tags(experiment: str, variant: str, seed: int, model: str = "efficient_morl", dataset: str | None = None,
               sweep: str | None = None, **extra: str) -> dict[str, str]:
    """The tags the trainer sets on a run (``emorl.*``, :mod:`emorl.vocabulary`)."""
    tags = {vocabulary.RUN_KIND: "training", vocabulary.EXPERIMENT: experiment, vocabulary.VARIANT: variant,
            vocabulary.SEED: str(seed), vocabulary.MODEL: model, vocabulary.DATASET: dataset or experiment}
    if sweep:
        tags[vocabulary.SWEEP] = sweep
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def log_run(client, experiment_id: str, *, tags: Mapping[str, str], params: Mapping[str, object] | None = None,
            metrics: Mapping[str, float] | None = None,
            histories: Mapping[str, Iterable[tuple[int, float]]] | None = None,
            artifacts: Mapping[str, Iterable[str | Path]] | None = None, status: str = "FINISHED",
            run_name: str | None = None, parent_run_id: str | None = None, final_step: int | None = None) -> str:
    """Log one run and return its id. ``histories`` are (step, value) series; ``metrics`` are
    logged once at ``final_step`` (default: the last history step, or 0); ``artifacts`` maps an
    artifact folder to local files."""
    from mlflow.entities import Metric, Param, RunTag

    tags = dict(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    name = run_name or f"{tags.get('emorl.experiment')}/{tags.get('emorl.variant')}/seed{tags.get('emorl.seed')}"
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    now = int(time.time() * 1000)
    series = [Metric(key, float(value), now, int(step)) for key, points in (histories or {}).items()
              for step, value in points]
    last = max((m.step for m in series), default=0) if final_step is None else final_step
    series += [Metric(key, float(value), now + 1, last) for key, value in (metrics or {}).items()]
    for start in range(0, len(series), 1000):
        client.log_batch(run_id, metrics=series[start:start + 1000])
    items = [Param(k, str(v)) for k, v in (params or {}).items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100], tags=[] if start else [RunTag("mlflow.source.type",
                                                                                                  "LOCAL")])
    for folder, paths in (artifacts or {}).items():
        for path in paths:
            client.log_artifact(run_id, str(path), folder)
    client.set_terminated(run_id, status=status)
    return run_id


def _curve(steps: np.ndarray, start: float, end: float, rate: float, noise: float, rng) -> list[tuple[int, float]]:
    values = end + (start - end) * np.exp(-steps / rate) + rng.normal(0, noise, len(steps))
    return list(zip(steps.tolist(), values.tolist()))


def _params(experiment: str, **changes) -> dict:
    """The parameters a run of the paper setting ``experiment`` logs, with ``changes`` (dotted keys)."""
    from analysis.settings import setting_params

    return setting_params(experiment, changes)


def _activeness(rng, images: int, dims: int, active: int) -> np.ndarray:
    scale = np.full(dims, 1e-4)
    scale[rng.choice(dims, active, replace=False)] = rng.uniform(0.01, 0.05, active)
    return np.abs(rng.normal(1.0, 0.4, (images, dims))) * scale


def log_synthetic_study(tracking_uri: str, work_dir: str | Path, seeds: int = 5, sweep: str = "synthetic") -> str:
    """Fill ``tracking_uri`` with synthetic runs shaped like the paper's experiments (see the module
    docstring); returns the MLflow experiment id. Every value is made up."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("synthetic-example", artifact_location=Path(work_dir, "artifacts").as_uri())
    rng = np.random.default_rng(0)
    steps = np.arange(0, 50_001, 1000)
    arrays = Path(work_dir, "arrays")
    arrays.mkdir(parents=True, exist_ok=True)
    paper_ari = {"clevr6": 0.962, "multi_dsprites": 0.912, "tetrominoes": 0.982}
    for seed in range(seeds):
        for dataset, ari in paper_ari.items():  # Table 1, Figs. 4, 7, 9 (CLEVR6)
            metrics = {"test/fg_ari": ari + rng.normal(0, 0.015), "test/mse": 8e-4 + rng.normal(0, 1e-4),
                       "test/kl": 690 + rng.normal(0, 60)}
            histories, artifacts = {}, {}
            if dataset == "clevr6":
                histories["train/kl"] = _curve(steps, 2500, 700, 8000, 40, rng)
                for i, end in ((1, 0.6), (2, 0.08), (3, 0.04)):
                    histories[f"train/update_norm_step{i}"] = _curve(steps, 1.5, end, 15000, 0.02, rng)
                for test_set, drop in (("clevr6", 0.0), ("clevr10_K11", 0.03)):
                    for i in range(7):
                        metrics[f"eval/{test_set}/I{i}/fg_ari"] = ari - drop - 0.004 * abs(i - 1) + rng.normal(0, 0.01)
                        metrics[f"eval/{test_set}/I{i}/mse"] = 8.3e-4 + 2e-5 * abs(i - 1) + rng.normal(0, 4e-5)
                        metrics[f"eval/{test_set}/I{i}/kl"] = 690 + (400 if i == 0 else 0) + rng.normal(0, 30)
                for name, mean in (("disentanglement", 0.63), ("completeness", 0.63), ("informativeness", 0.46)):
                    metrics[f"dci/clevr6/{name}"] = mean + rng.normal(0, 0.03)
                path = arrays / f"emorl_{seed}" / "activeness.npy"
                path.parent.mkdir(exist_ok=True)
                np.save(path, _activeness(rng, 100, 64, 10))
                artifacts["evaluation/clevr6"] = [path]
            log_run(client, experiment, tags=emorl_tags(dataset, "default", seed, dataset=dataset, sweep=sweep),
                    params=_params(dataset), metrics=metrics, histories=histories, artifacts=artifacts)
        # Slot Attention on CLEVR6, one collapsed run (Tables 1 and 3, Fig. 9d).
        path = arrays / f"slot_attention_{seed}" / "activeness.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, _activeness(rng, 100, 64, 50))
        metrics = {"test/fg_ari": 0.30 if seed == seeds - 1 else 0.983 + rng.normal(0, 0.004),
                   "test/mse": 6e-4 + rng.normal(0, 5e-5)}
        metrics.update({f"dci/clevr6/{n}": m + rng.normal(0, 0.015) for n, m in
                        (("disentanglement", 0.46), ("completeness", 0.38), ("informativeness", 0.34))})
        log_run(client, experiment, tags=emorl_tags("slot_attention_clevr6", "default", seed, "slot_attention",
                                                    "clevr6", sweep=sweep),
                params=_params("slot_attention_clevr6"), metrics=metrics, artifacts={"evaluation/clevr6": [path]})
        # Table 2 ablations (CLEVR6 at 50K steps).
        for variant, ari, mse, kl, settings in (
                ("without_dual_gru", 0.797, 8.1e-4, 1357, {"model.dual_gru": False}),
                ("without_geco", 0.799, 9.9e-4, 177, {"loss.geco.enabled": False}), ("full", 0.824, 8.3e-4, 692, {})):
            log_run(client, experiment, tags=emorl_tags("clevr6", variant, seed, sweep=sweep + "-ablation"),
                    params=_params("clevr6", **{"trainer.max_steps": 50_000, **settings}),
                    metrics={"test/fg_ari": ari + rng.normal(0, 0.06), "test/mse": mse + rng.normal(0, 1.5e-4),
                             "test/kl": kl + rng.normal(0, 0.2 * kl)})
        # Fig. 3: training I in {0, 1, 3}.
        for refine_steps, end in ((0, 2200.0), (1, 1400.0), (3, 1250.0)):
            log_run(client, experiment, tags=emorl_tags("clevr6", f"I{refine_steps}", seed, sweep=sweep + "-fig3"),
                    params=_params("clevr6", **{"trainer.max_steps": 50_000, "curriculum.refine_steps": refine_steps,
                                               "curriculum.test_refine_steps": refine_steps}),
                    histories={"train/loss": _curve(steps, 6000, end, 6000, 60, rng)})
        # Fig. 8: L in {0, ..., 4}.
        for layers, ari in ((0, 0.80), (1, 0.88), (2, 0.93), (3, 0.96), (4, 0.94)):
            log_run(client, experiment, tags=emorl_tags("clevr6", f"L{layers}", seed, sweep=sweep + "-fig8"),
                    params=_params("clevr6", **{"model.stochastic_layers": layers}),
                    metrics={"test/fg_ari": ari + rng.normal(0, 0.02)})
    return experiment


def train_smoke_run(tracking_uri: str, output_dir: str | Path, steps: int) -> str:
    """Train the tiny ``smoke`` setting for ``steps`` steps (real training) and return its run id."""
    from emorl.config import compose
    from emorl.engine.train import train

    cfg = compose(["experiment=smoke", f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
                   f"trainer.checkpoint_every={steps}", f"trainer.log_every={max(1, steps // 20)}",
                   "trainer.progress=false", f"tracking.uri={tracking_uri}", "tracking.experiment=smoke-example",
                   f"trainer.output_dir={Path(output_dir).resolve()}"])
    return train(cfg).run_id


def main(argv: list[str] | None = None) -> int:
    """Draw every figure from synthetic runs and write their PNGs into ``--out`` (docs/img/analysis)."""
    from analysis import figures
    from analysis.collect import RunSelection, collect_runs, metric_histories

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also train the smoke setting this many steps for the decomposition and traversal")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emorl-examples-") as work:
        uri = f"sqlite:///{Path(work) / 'mlflow.db'}"
        drawn = Path(work) / "figures"
        log_synthetic_study(uri, work)
        runs = collect_runs(RunSelection(experiment="synthetic-example"), uri)
        keys = ["train/loss", "train/kl"] + [f"train/update_norm_step{i}" for i in (1, 2, 3)]
        histories = metric_histories(runs, keys, uri)
        made = [figures.training_loss(runs, histories, drawn, SYNTHETIC_NOTE),
                figures.kl_and_update_norms(runs, histories, drawn, SYNTHETIC_NOTE),
                figures.test_time_refinement(runs, drawn, SYNTHETIC_NOTE),
                figures.stochastic_layers(runs, drawn, SYNTHETIC_NOTE),
                figures.activeness_heatmaps(runs, uri, drawn, SYNTHETIC_NOTE)]
        if args.train_steps:
            run_id = train_smoke_run(uri, Path(work) / "smoke", args.train_steps)
            smoke = collect_runs(RunSelection(run_ids=[run_id]), uri).iloc[0]
            loaded = figures.load_run(smoke, uri)
            made += [figures.decomposition(smoke, uri, drawn / "smoke", loaded=loaded),
                     figures.latent_traversal(smoke, uri, drawn / "smoke", loaded=loaded)]
        for figure in made:
            png = next(p for p in figure.paths if p.suffix == ".png")
            target = out / (figure.name.split("_")[0] + "_smoke.png" if png.parent.name == "smoke" else png.name)
            target.write_bytes(png.read_bytes())
            print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
