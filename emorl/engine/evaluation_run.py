"""``emorl evaluate``: a checkpoint, a test set, several test-time I (and K), tracked in MLflow.

Each evaluation is an MLflow run of its own (tag ``emorl.run_kind=evaluation``), a child of the
training run it evaluates (or of an evaluation sweep's parent run) and linked to it by the tag
``emorl.evaluation_of``; it never writes into the finished training run. Its files (``metrics.json``,
DCI importances, activeness) and its tracking spool are in its folder: by default
``<run folder>/evaluation/<set>`` for a run's ``checkpoints/last.pt``, else ``evaluation/<set>``
beside the checkpoint file.

Metric keys: ``eval/<set>/I<i>/<metric>`` (metric: fg_ari, mse, kl, nll), where ``<set>``
names the data and, when it differs from training, the number of slots (``clevr10_K11``);
``dci/<set>/{disentanglement,completeness,informativeness,informativeness_train}``; and
``activeness/<set>/{activeness_mean,active_dims}`` with the full [images, D] matrix as an artifact.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emorl import config as config_module
from emorl import vocabulary
from emorl.data.hdf5 import MultiObjectDataset
from emorl.engine import checkpoint as ckpt
from emorl.engine.data import dataset_file, eval_loader
from emorl.engine.evaluate import EvaluationResult, evaluate, evaluation_objective
from emorl.engine.precision import autocast_context, set_float32_precision
from emorl.engine.train import resolve_device
from emorl.errors import EmorlError
from emorl.locking import exclusive
from emorl.models import build_model
from emorl.tracking import MLflowTracker, default_artifact_root, deliver

LOCK_FILE = ".emorl.lock"  # in the evaluation folder, held while it is written
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
                   batch_size: int = 32, metrics: list[str] = ("ari",), device: str = "auto",
                   tracking_uri: str | None = None, seed: int = 0, no_tracking: bool = False,
                   refine_objective: str | None = None, output_dir: str | Path | None = None,
                   tracking: EvaluationTracking | None = None) -> dict[str, float]:
    """Evaluate a checkpoint, print a table, write the results to ``output_dir`` (default: the
    checkpoint's :func:`results_folder` / the set's name) and track them in an evaluation run of
    their own (see the module docstring). ``refine_objective`` (training | elbo) overrides the
    run's ``evaluate.refine_objective``."""
    device = resolve_device(device)
    model, container, state = load_trained_model(checkpoint, device)
    dataset, set_name = evaluation_set(container, data, data_path, split)
    trained_slots = container["model"].get("num_slots")
    if num_slots is not None and num_slots != trained_slots:
        set_name += f"_K{num_slots}"
    out_dir = Path(output_dir).resolve() if output_dir else results_folder(checkpoint) / set_name
    with exclusive(out_dir / LOCK_FILE, f"the evaluation folder {out_dir}"):
        steps = refine_steps or [container["curriculum"]["test_refine_steps"]]
        loader = eval_loader(dataset, num_images, batch_size)
        precision = container["trainer"].get("precision", "fp32")
        set_float32_precision(precision)
        logged: dict[str, float] = {}
        if "ari" in metrics:
            objective = evaluation_objective(container, state.get("geco"), int(state.get("step", 0)), device,
                                             refine_objective)
            result = evaluate(model, loader, steps, num_slots=num_slots, device=device, precision=precision,
                              seed=seed, objective=objective)
            print(format_table(result, f"{Path(checkpoint)}: {set_name} ({result.num_images} images, "
                                       f"K={result.num_slots})"))
            logged.update(result.flat_all(f"eval/{set_name}"))
        artifacts: list[Path] = []
        if "dci" in metrics or "activeness" in metrics:
            extra, artifacts = disentanglement_metrics(model, dataset, loader, num_slots, max(steps), device,
                                                       precision, seed, list(metrics), out_dir)
            for key, value in extra.items():
                group = "activeness" if key in ("activeness_mean", "active_dims") else "dci"
                logged[f"{group}/{set_name}/{key}"] = value
                print(f"{group}/{set_name}/{key} = {value:.4g}")
        (out_dir / "metrics.json").write_text(json.dumps(logged, indent=1))
        print(f"results: {out_dir}")
        if not no_tracking and (tracking_uri or tracking or container["tracking"].get("backend") != "none"):
            _track(container, state, Path(checkpoint).resolve(), logged, artifacts + [out_dir / "metrics.json"],
                   out_dir, set_name, tracking or EvaluationTracking(uri=tracking_uri))
    return logged


@dataclass
class EvaluationTracking:
    """Where an evaluation run goes. Default: the store the checkpoint's run was tracked in, as a
    child of that run; an evaluation sweep gives its own store, experiment, parent run and tags."""

    uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def _track(container: dict, state: dict, checkpoint: Path, metrics: dict[str, float], artifacts: list[Path],
           out_dir: Path, set_name: str, where: EvaluationTracking) -> None:
    """One evaluation, one MLflow run of its own (never a write into the finished training run):
    linked to the trained run by ``emorl.evaluation_of``, a child of it (or of the evaluation
    sweep's parent run), delivered through a spool in ``out_dir`` like a training run's."""
    from emorl.engine.train import git_commit

    uri = where.uri or container["tracking"].get("uri") or config_module.default_tracking_uri()
    trained = state.get("tracking_run_id") or ""
    parent = where.parent_run_id
    if parent is None and trained:
        if _run_in_store(uri, trained):
            parent = trained
        else:
            print(f"note: the trained run {trained} is not in the tracking store {uri} (the checkpoint was tracked "
                  f"elsewhere); the evaluation run names it in its tag {vocabulary.EVALUATION_OF}")
    archive_finished_spool(out_dir)  # a new evaluation: a new run
    description = (f"Evaluation of {checkpoint} (step {state.get('step')}) on {set_name}"
                   + (f", of run {trained}" if trained else "") + " (emorl evaluate)")
    tags = {
        vocabulary.RUN_KIND: "evaluation", vocabulary.EVALUATION_OF: trained, vocabulary.EVALUATION_SET: set_name,
        vocabulary.CHECKPOINT: str(checkpoint), vocabulary.EXPERIMENT: str(container["name"]),
        vocabulary.VARIANT: str(container["variant"]), vocabulary.SEED: str(container["seed"]),
        vocabulary.MODEL: container["model"].get("name", "efficient_morl"),
        vocabulary.DATASET: str(container["data"]["name"]),
        vocabulary.SETTING_ID: vocabulary.setting_id(config_module.flatten(container)),
        **vocabulary.system_tags("emorl evaluate", git_commit(), description), **where.tags,
    }
    experiment = where.experiment or container["tracking"].get("experiment", "emorl")
    tracker = MLflowTracker(uri, out_dir)
    tracker.start(experiment, f"evaluate {container['name']}/{container['variant']}/seed{container['seed']} "
                              f"{set_name}", tags, parent, default_artifact_root(uri))
    tracker.log_metrics(metrics, int(state.get("step", 0)))
    for path in artifacts:
        tracker.log_artifact(path, f"evaluation/{set_name}")
    tracker.finish("FINISHED")
    if tracker.run_id and not tracker.pending():
        print(f"logged {len(metrics)} metrics to the evaluation run {tracker.run_id} ({uri})")
    sys.stdout.flush()


def archive_finished_spool(folder: Path) -> Path | None:
    """Move the spool of an earlier evaluation in ``folder`` aside (``tracking-<time>``) so that
    this one starts a run of its own; an undelivered earlier spool is delivered first, or kept
    and reported (never lost)."""
    spool = folder / "tracking"
    if not (spool / "state.json").exists():
        return None
    earlier = deliver(folder, end_status="FAILED")  # an earlier evaluation that died before its end
    if earlier.left:
        raise EmorlError(f"{folder} holds an earlier evaluation whose {earlier.left} tracking records are not "
                         f"delivered yet ({earlier.failure}); deliver them with `emorl sync {folder}` when the store "
                         "is reachable, or give this evaluation another folder (--output-dir)")
    target = folder / f"tracking-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    spool.rename(target)
    return target


def _run_in_store(uri: str, run_id: str) -> bool:
    """Whether the store at ``uri`` holds ``run_id``; when it cannot be reached, assume it does
    (the records wait in the spool and name it as their parent)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as error:
        return getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST"
    except Exception:  # unreachable
        return True
    return True
