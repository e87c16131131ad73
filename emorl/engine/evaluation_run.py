"""``emorl evaluate``: a checkpoint, a test set, several test-time I (and K), logged to MLflow.

Metric keys: ``eval/<set>/I<i>/<metric>`` (metric: fg_ari, mse, kl, nll), where ``<set>``
names the data and, when it differs from training, the number of slots (``clevr10_K11``);
``dci/<set>/{disentanglement,completeness,informativeness,informativeness_train}``; and
``activeness/<set>/{activeness_mean,active_dims}`` with the full [images, D] matrix as an artifact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from emorl import config as config_module
from emorl.data.hdf5 import MultiObjectDataset
from emorl.engine import checkpoint as ckpt
from emorl.engine.data import dataset_file, eval_loader
from emorl.engine.evaluate import EvaluationResult, evaluate, evaluation_objective
from emorl.engine.precision import autocast_context, set_float32_precision
from emorl.engine.train import resolve_device
from emorl.errors import EmorlError
from emorl.models import build_model

ACTIVE_THRESHOLD = 0.01  # mean image variance above which a dimension counts as active (reported, not used)


def load_trained_model(checkpoint_path: str | Path, device: torch.device):
    """(model in eval mode, resolved config dict, checkpoint payload)."""
    state = ckpt.load(checkpoint_path, map_location=device, purpose="evaluate")
    container = state["config"]
    model = build_model(container["model"]).to(device)
    ckpt.load_model_state(model, state["model"], checkpoint_path)
    model.eval()
    return model, container, state


def evaluation_set(container: dict, data: str | None, data_path: str | None, split: str) -> tuple[MultiObjectDataset, str]:
    """The evaluation data of a trained run's config (or another set) and its name for metric keys."""
    data_cfg = dict(container["data"])
    if data_path:
        data_cfg["path"] = data_path
        name = Path(data_path).stem
    elif data:
        data_cfg.update(name=data, path=None, train_size=None, test_size=None)
        if data.startswith("clevr") and data_cfg.get("image_size") is None:
            data_cfg["image_size"] = 96
        name = data
    else:
        name = data_cfg["name"]
    path = dataset_file(data_cfg)
    return MultiObjectDataset(path, split, data_cfg.get("image_size")), name


def format_table(result: EvaluationResult, title: str) -> str:
    names = ["fg_ari", "mse", "kl", "nll"]
    lines = [title, "  I  " + "".join(f"{n:>12}" for n in names)]
    for i, values in sorted(result.metrics.items()):
        lines.append(f"{i:>3}  " + "".join(f"{values[n]:>12.5g}" for n in names))
    return "\n".join(lines)


@torch.no_grad()
def collect_codes(model, loader, num_slots, refine_steps: int, device, precision: str, seed: int):
    """Posterior means (``representation``), soft masks, true masks and factors of every test image."""
    codes, masks, true_masks, factors = [], [], [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in loader:
            with autocast_context(device, precision):
                out = model(batch["image"].to(device), num_slots=num_slots, refine_steps=refine_steps)
            codes.append(out.representation.float().cpu())
            masks.append(out.masks[:, :, 0].float().cpu())
            true_masks.append(batch["masks"])
            factors.append(batch["factors"])
    return torch.cat(codes), torch.cat(masks), torch.cat(true_masks), torch.cat(factors)


def disentanglement_metrics(model, dataset: MultiObjectDataset, loader, num_slots, refine_steps, device, precision,
                            seed, metrics: list[str], out_dir: Path) -> tuple[dict[str, float], list[Path]]:
    from emorl.metrics import activeness, collect_matched_codes, compute_dci, match_slots_to_objects, split_train_test

    codes, masks, true_masks, factors = collect_codes(model, loader, num_slots, refine_steps, device, precision, seed)
    results: dict[str, float] = {}
    artifacts: list[Path] = []
    if "dci" in metrics:
        names = [n for n in dataset.factor_names if n != "visibility" and not n.startswith("pixel_")]
        columns = [dataset.factor_names.index(n) for n in names]
        types = [dataset.factor_types[c] for c in columns]
        matching = match_slots_to_objects(true_masks, masks)
        matched = collect_matched_codes(codes, factors, matching, columns)
        train, test = split_train_test(matched, seed=seed)
        dci = compute_dci(train.codes, train.factors, test.codes, test.factors, factor_types=types,
                          factor_names=names, random_state=seed)
        results.update({"disentanglement": dci.disentanglement, "completeness": dci.completeness,
                        "informativeness": dci.informativeness, "informativeness_train": dci.informativeness_train,
                        "matched_objects": float(len(matching.image_index))})
        path = out_dir / "dci_importance.json"
        path.write_text(json.dumps({"factors": names, "importance": np.asarray(dci.importance_matrix).tolist()}))
        artifacts.append(path)
    if "activeness" in metrics:
        def decode_slots(latents):  # every model's decoder is a spatial broadcast decoder
            return model.decoder.decode_slots(latents.to(device))

        def compose(raw):
            return model.decoder.compose(raw).reconstruction().float()

        result = activeness(codes, None, num_images=min(100, len(codes)), seed=seed, decode_slots=decode_slots,
                            compose=compose)
        per_dim = result.mean.cpu().numpy()
        results["activeness_mean"] = float(per_dim.mean())
        results["active_dims"] = float((per_dim > ACTIVE_THRESHOLD).sum())
        path = out_dir / "activeness.npy"
        np.save(path, result.per_image.cpu().numpy())
        artifacts.append(path)
    return results, artifacts


def results_folder(checkpoint: str | Path) -> Path:
    """Where an evaluation's files go: ``<run folder>/evaluation`` for a run's
    ``checkpoints/last.pt``, otherwise an ``evaluation`` folder next to the checkpoint file."""
    path = Path(checkpoint).resolve()
    return (path.parent.parent if path.parent.name == "checkpoints" else path.parent) / "evaluation"


def run_evaluation(checkpoint: str | Path, refine_steps: list[int] | None = None, num_slots: int | None = None,
                   data: str | None = None, data_path: str | None = None, split: str = "test", num_images: int = 320,
                   batch_size: int = 32, metrics: list[str] = ("ari",), device: str = "auto", new_run: bool = False,
                   tracking_uri: str | None = None, seed: int = 0, no_tracking: bool = False,
                   refine_objective: str | None = None) -> dict[str, float]:
    """Evaluate a checkpoint, print a table and log the metrics (see the module docstring).
    ``refine_objective`` (training | elbo) overrides the run's ``evaluate.refine_objective``."""
    device = resolve_device(device)
    model, container, state = load_trained_model(checkpoint, device)
    dataset, set_name = evaluation_set(container, data, data_path, split)
    trained_slots = container["model"].get("num_slots")
    if num_slots is not None and num_slots != trained_slots:
        set_name += f"_K{num_slots}"
    steps = refine_steps or [container["curriculum"]["test_refine_steps"]]
    loader = eval_loader(dataset, num_images, batch_size)
    precision = container["trainer"].get("precision", "fp32")
    set_float32_precision(precision)
    logged: dict[str, float] = {}
    if "ari" in metrics:
        objective = evaluation_objective(container, state.get("geco"), int(state.get("step", 0)), device,
                                         refine_objective)
        result = evaluate(model, loader, steps, num_slots=num_slots, device=device, precision=precision, seed=seed,
                          objective=objective)
        print(format_table(result, f"{Path(checkpoint)}: {set_name} ({result.num_images} images, K={result.num_slots})"))
        logged.update(result.flat_all(f"eval/{set_name}"))
    out_dir = results_folder(checkpoint) / set_name
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: list[Path] = []
    if "dci" in metrics or "activeness" in metrics:
        extra, artifacts = disentanglement_metrics(model, dataset, loader, num_slots, max(steps), device, precision,
                                                   seed, list(metrics), out_dir)
        for key, value in extra.items():
            group = "activeness" if key in ("activeness_mean", "active_dims") else "dci"
            logged[f"{group}/{set_name}/{key}"] = value
            print(f"{group}/{set_name}/{key} = {value:.4g}")
    (out_dir / "metrics.json").write_text(json.dumps(logged, indent=1))
    if not no_tracking:
        _log(container, state, logged, artifacts + [out_dir / "metrics.json"], new_run, tracking_uri, set_name)
    return logged


def _log(container: dict, state: dict, metrics: dict[str, float], artifacts: list[Path], new_run: bool,
         tracking_uri: str | None, set_name: str) -> None:
    if container["tracking"].get("backend") == "none" and not tracking_uri:
        return
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from emorl.tracking import default_artifact_root, ensure_experiment

    uri = tracking_uri or container["tracking"].get("uri") or config_module.default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    run_id = state.get("tracking_run_id")
    step = int(state.get("step", 0))
    try:
        if run_id and not new_run and not _run_exists(client, run_id):
            print(f"note: the trained run {run_id} is not in the tracking store {uri} (the checkpoint was tracked "
                  "elsewhere); the evaluation is logged to a new run that names it (tag emorl.evaluation_of)")
            new_run = True
        if new_run or not run_id:
            experiment = ensure_experiment(client, container["tracking"].get("experiment", "emorl"),
                                           default_artifact_root(uri))
            tags = {"emorl.evaluation_of": run_id or "", "emorl.experiment": container["name"],
                    "emorl.variant": container["variant"], "emorl.seed": str(container["seed"])}
            run_id = client.create_run(experiment, run_name=f"evaluate {container['name']} {set_name}",
                                       tags=tags).info.run_id
        now = int(__import__("time").time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        for path in artifacts:
            client.log_artifact(run_id, str(path), f"evaluation/{set_name}")
        if new_run:
            client.set_terminated(run_id)
        print(f"logged {len(metrics)} metrics to MLflow run {run_id} ({uri})")
    except Exception as error:  # the metrics are on disk; say how to get them tracked
        first = str(error).splitlines()[0] if str(error) else ""
        raise EmorlError(f"could not log to MLflow at {uri} ({type(error).__name__}: {first}); the metrics are "
                         f"saved in {artifacts[-1]}; check that the store is up (or pass --tracking-uri), then run "
                         "`emorl evaluate` again, or pass --no-tracking") from None
    sys.stdout.flush()


def _run_exists(client, run_id: str) -> bool:
    """Whether the store holds ``run_id``; a store that cannot be reached raises (said by the caller)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as error:
        if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True
