"""The training loop: one reproducible run of any paper setting.

``Trainer(cfg).run()`` trains with the refinement curriculum and GECO, evaluates
periodically, checkpoints everything needed to continue exactly (``resume``), tracks the run
(MLflow or nothing) and stops cleanly on a non-finite loss, keeping the last good
checkpoint. Code around the engine (e.g. the Ray Tune trainable in ``sweeps/``) passes
:class:`TrainingHooks` to hear about evaluations and checkpoints.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from emorl import config as config_module
from emorl import vocabulary
from emorl.data.hdf5 import MultiObjectDataset
from emorl.engine import checkpoint as ckpt
from emorl.engine.data import (DeviceBatches, dataset_file, eval_loader, file_fingerprint, train_loader,
                               use_device_batches)
from emorl.engine.evaluate import evaluate
from emorl.engine.figures import decomposition_figure
from emorl.engine.precision import precision_warning, set_float32_precision
from emorl.engine.schedule import learning_rate_factor, refine_steps_at
from emorl.engine.step import (TrainingStep, compute_gradients, load_optimizer_state, make_optimizer,
                               optimizer_state)
from emorl.errors import ConfigError, EmorlError, Interrupted, TrainingError
from emorl.geco import check_target_reachable
from emorl.geco_rules import build_geco
from emorl.locking import exclusive
from emorl.models import build_model
from emorl.tracking import MLflowTracker, Tracker, default_artifact_root

# Settings that may change when a run is resumed (everything else must match the checkpoint).
# optim.lr: to continue a run stopped by a non-finite loss with a lower learning rate (the
# change is printed and tagged on the run, emorl.resumed_with).
RESUMABLE_CHANGES = ("trainer.", "tracking.", "data.num_workers", "data.path", "data.on_device", "optim.lr")
DECOMPOSITION_IMAGE = "decomposition"  # the MLflow image key of the evaluations' decomposition figures
LOCK_FILE = ".emorl.lock"  # in the run folder, held while a process trains it (emorl.locking)
__all__ = ["Trainer", "TrainingHooks", "TrainResult", "compute_gradients", "train"]


class TrainingHooks:
    """Callbacks for code around the engine; every method is optional."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    metrics: dict[str, float]  # the last evaluation
    checkpoint: Path
    run_id: str | None


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available here; use cpu or auto")
    return device


def git_commit() -> str:
    """The commit of the code that runs (with a -dirty suffix), or 'unknown' outside a checkout."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def changed_settings(saved: dict, current: dict) -> list[str]:
    """The keys of two configs that differ, except those a resume may change (RESUMABLE_CHANGES)."""
    old, new = config_module.flatten(saved), config_module.flatten(current)
    keys = set(old) | set(new)
    return sorted(k for k in keys if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))


class Trainer:
    """One training run. See the module docstring."""

    def __init__(self, cfg: DictConfig | dict, hooks: TrainingHooks | None = None):
        if isinstance(cfg, dict):
            cfg = config_module.from_container(cfg)
        self.cfg = cfg
        self.container = config_module.to_container(cfg)
        self.hooks = hooks or TrainingHooks()
        self.output_dir = config_module.run_output_dir(self.container)
        self.checkpoint_path = self.output_dir / "checkpoints" / "last.pt"
        self.tracker: Tracker = Tracker()
        self.last_eval: dict[str, float] = {}
        self.saved_step: int | None = None  # the step of the checkpoint on disk
        self.resumed_with: dict[str, tuple] = {}  # allowed changes on resume: key -> (old, new)

    # -- setup -------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, trainer = self.cfg, self.cfg.trainer
        self.device = resolve_device(trainer.device)
        warning = precision_warning(self.device, trainer.precision)
        if warning:
            print(f"emorl: warning: {warning}", file=sys.stderr)
        set_float32_precision(trainer.precision)
        if trainer.num_threads:
            torch.set_num_threads(int(trainer.num_threads))
        seed_everything(int(cfg.seed))
        self.data_path = dataset_file(cfg.data, progress=trainer.progress)
        self.train_set = MultiObjectDataset(self.data_path, cfg.data.train_split, cfg.data.image_size)
        self.test_set = MultiObjectDataset(self.data_path, cfg.data.test_split, cfg.data.image_size)
        self.model = build_model(self.container["model"]).to(self.device)
        if trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if trainer.compile:  # in place: state_dict keys stay those of the plain modules
            for name in ("encoder", "decoder"):
                if isinstance(getattr(self.model, name, None), torch.nn.Module):
                    getattr(self.model, name).compile()
        size = self.train_set.image_hw
        model_size = self.container["model"].get("image_size")
        if model_size is not None and tuple(size) != (model_size, model_size):
            raise ConfigError(f"model.image_size={model_size} but data {cfg.data.name} gives {size[0]}x{size[1]} "
                              "images; set data.image_size (the model follows it)")
        optim = cfg.optim
        self.optimizer = make_optimizer(self.model, optim, self.device)
        self.geco = None
        self.geco_warning = None
        if cfg.loss.geco.enabled:
            g = cfg.loss.geco
            self.geco = build_geco(g, cfg.loss.kl_beta, device=self.device)  # loss.geco.rule: emorl | genesis
            sigma = self.container["model"].get("sigma", 0.1)
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                self.geco_warning = check_target_reachable(g.target, 3 * size[0] * size[1], sigma)
            if self.geco_warning:
                print(f"emorl: warning: {self.geco_warning}", file=sys.stderr)

        def lr_at(step: int) -> float:  # the schedule, as a LambdaLR over the configured lr computed it
            return optim.lr * learning_rate_factor(step, optim.warmup_steps, optim.decay_rate, optim.decay_steps,
                                                   optim.decay_from, optim.warmup_from_zero)

        self.lr_at = lr_at
        self.training_step = TrainingStep(
            self.model, self.optimizer, lr_at, device=self.device, clip_norm=optim.grad_clip_norm,
            kl_beta=cfg.loss.kl_beta, geco=self.geco, precision=trainer.precision, fused=trainer.fused_backward,
            cuda_graph=trainer.cuda_graph)
        self.step = 0

    def _restore(self) -> bool:
        """Load the checkpoint to resume from, if any; True when the run had already finished."""
        resume = self.cfg.trainer.resume
        path = self.checkpoint_path if resume in ("auto", "never") else Path(resume).expanduser().resolve()
        if resume == "never":
            if self.checkpoint_path.exists():
                raise EmorlError(f"{self.output_dir} already holds a run (checkpoint {self.checkpoint_path}); "
                                 "resume it with trainer.resume=auto, or choose another trainer.output_dir")
            return False
        if not path.exists():
            if resume != "auto":
                raise EmorlError(f"trainer.resume={resume}: no such checkpoint")
            return False
        state = ckpt.load(path, map_location=self.device, purpose="resume")
        changed = changed_settings(state["config"], self.container)
        if changed:
            raise EmorlError(f"cannot resume {path}: the configuration differs in {changed}; "
                             "use the same settings, or another trainer.output_dir for a new run")
        old, new = config_module.flatten(state["config"]), config_module.flatten(self.container)
        self.resumed_with = {k: (old.get(k), new[k]) for k in ("optim.lr",) if old.get(k) != new.get(k)}
        for key, (before, after) in self.resumed_with.items():
            print(f"emorl: resuming with {key}={after} (the run so far used {before})", file=sys.stderr)
        ckpt.load_model_state(self.model, state["model"], path)
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.geco is not None:
            self.geco.load_state_dict(state["geco"])
        ckpt.set_rng_state(state["rng"])
        self.step = self.saved_step = int(state["step"])
        self.last_eval = dict(state.get("last_eval", {}))
        print(f"emorl: resuming {self.output_dir} from step {self.step}", file=sys.stderr)
        return bool(state.get("finished")) and self.step >= self.cfg.trainer.max_steps

    def _start_tracking(self) -> None:
        tracking = self.cfg.tracking
        if tracking.backend == "none":
            return
        uri = tracking.uri or config_module.default_tracking_uri()
        name = f"{self.cfg.name}/{self.cfg.variant}/seed{self.cfg.seed}"
        tags = {
            **vocabulary.run_tags(self.container, git_commit()),
            vocabulary.DATASET_FILE: str(self.data_path), vocabulary.DATASET_HASH: file_fingerprint(self.data_path),
            vocabulary.OUTPUT_DIR: str(self.output_dir), **dict(tracking.tags),
        }
        if self.geco_warning:
            tags[vocabulary.GECO_WARNING] = self.geco_warning
        tracker = MLflowTracker(uri, self.output_dir, flush_every_s=tracking.flush_every_s)
        fresh = not tracker.state.get("started")
        tracker.start(tracking.experiment, tracking.run_name or name, tags, tracking.parent_run_id,
                      default_artifact_root(uri))
        if fresh:
            tracker.log_params(config_module.flatten(self.container))
            config_file = self.output_dir / "config.yaml"
            config_file.write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
            tracker.log_artifact(config_file)
        self.tracker = tracker

    def _close_finished_tracking(self) -> None:
        """A run that finished training but died before its MLflow run was ended (or before every
        record was delivered): end it now, so it never stays RUNNING."""
        if self.cfg.tracking.backend == "none" or not (self.output_dir / "tracking" / "state.json").exists():
            return
        tracker = MLflowTracker(self.cfg.tracking.uri or config_module.default_tracking_uri(), self.output_dir,
                                flush_every_s=self.cfg.tracking.flush_every_s)
        if tracker.ended():
            tracker.flush(force=True)
        else:
            tracker.start(self.cfg.tracking.experiment)
            if self.cfg.tracking.log_checkpoint:
                tracker.log_artifact(self.checkpoint_path, "checkpoints")
            tracker.finish("FINISHED")
        self.tracker = tracker

    # -- steps ---------------------------------------------------------------------------------------
    def _refine_steps(self) -> int:
        curriculum = self.cfg.curriculum
        return refine_steps_at(self.step, curriculum.refine_steps, curriculum.milestones,
                               curriculum.milestone_refine_steps)

    def _check_finite(self) -> None:
        """Stop (keeping the last good checkpoint) if any step so far had a non-finite loss or
        gradient norm. Called before every log, evaluation and checkpoint: once per interval, not
        per step, so that steps never wait for the host."""
        found = self.training_step.first_non_finite()
        if found is None:
            return
        step, scalars = found
        terms = ", ".join(f"{k}={v:.6g}" for k, v in sorted(scalars.items()))
        kept = (f"the last good checkpoint {self.checkpoint_path} is kept" if self.checkpoint_path.exists()
                else "no checkpoint had been written yet")
        lower = f"optim.lr={self.cfg.optim.lr / 2:g}"
        message = (f"non-finite loss or gradient at training step {step}: {terms}. Training stopped; {kept}. "
                   "Resuming is exact, so the same command would stop here again: run it again with a lower "
                   f"learning rate added (e.g. {lower}; allowed on resume, it continues from the checkpoint with "
                   "it), or check the data.")
        self.tracker.set_tags({vocabulary.FAILURE: message[:5000]})
        raise TrainingError(message)

    def _evaluate(self) -> dict[str, float]:
        self._check_finite()
        cfg, trainer = self.cfg, self.cfg.trainer
        loader = eval_loader(self.test_set, trainer.eval_images, trainer.eval_batch_size, cfg.data.num_workers)
        objective = None  # what evaluation_objective gives for this run's config and state
        if self.geco is not None and cfg.evaluate.refine_objective == "training":
            objective = self.geco.objective(self.step)
        result = evaluate(self.model, loader, cfg.curriculum.test_refine_steps, device=self.device,
                          precision=trainer.precision, seed=int(cfg.seed), objective=objective)
        metrics = result.flat("test")
        self.tracker.log_metrics(metrics, self.step)
        if self.cfg.tracking.figures and result.sample is not None and self.cfg.tracking.backend != "none":
            s = result.sample
            path = decomposition_figure(s["images"], s["reconstruction"], s["masks"], s["components"],
                                        self.output_dir / "figures" / f"step{self.step:07d}.png",
                                        title=f"{cfg.name} {cfg.variant} seed {cfg.seed}, step {self.step}")
            self.tracker.log_image(path, DECOMPOSITION_IMAGE, self.step)
        self.last_eval = metrics
        self.hooks.on_evaluation(self.step, metrics)
        return metrics

    def _save(self, finished: bool = False) -> Path:
        self._check_finite()  # no non-finite value ever reaches a checkpoint
        payload = {
            "model": self.model.state_dict(), "optimizer": optimizer_state(self.optimizer),
            "lr": self.lr_at(self.step), "geco": self.geco.state_dict() if self.geco else None,
            "rng": ckpt.rng_state(), "step": self.step, "data_position": self.step, "config": self.container,
            "last_eval": self.last_eval, "finished": finished, "tracking_run_id": self.tracker.run_id,
        }
        path = ckpt.save(self.checkpoint_path, payload)
        self.saved_step = self.step
        self.hooks.on_checkpoint(self.step, path, dict(self.last_eval))
        return path

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train (holding the run folder's lock: one process per run folder)."""
        with exclusive(self.output_dir / LOCK_FILE, f"the run folder {self.output_dir}"):
            return self._run()

    def _interrupted(self) -> Interrupted:
        kept = (f"the checkpoint of step {self.saved_step} is kept in {self.checkpoint_path}"
                if self.saved_step is not None else "no checkpoint had been written yet")
        again = "continue from it (trainer.resume=auto)" if self.saved_step is not None else "start it"
        return Interrupted(f"interrupted at step {self.step} of {self.cfg.trainer.max_steps}; {kept}. Run the same "
                           f"command again to {again}.")

    def _run(self) -> TrainResult:
        self._build()
        finished = self._restore()
        if finished:
            print(f"emorl: {self.output_dir} already finished at step {self.step}; nothing to do", file=sys.stderr)
            self._close_finished_tracking()
            return TrainResult(self.output_dir, self.step, self.last_eval, self.checkpoint_path,
                               self.tracker.run_id or ckpt.load(self.checkpoint_path).get("tracking_run_id"))
        self._start_tracking()
        if self.resumed_with:
            self.tracker.set_tags({vocabulary.RESUMED_WITH: "; ".join(
                f"{k}: {a} -> {b} at step {self.step}" for k, (a, b) in self.resumed_with.items())})
        trainer = self.cfg.trainer
        data = self.cfg.data
        if use_device_batches(data.on_device, self.train_set, self.device):
            batches = iter(DeviceBatches(self.train_set, data.batch_size, int(self.cfg.seed), self.step, self.device,
                                         trainer.channels_last))
        else:
            batches = iter(train_loader(self.train_set, data.batch_size, int(self.cfg.seed), self.step,
                                        data.num_workers, pin_memory=self.device.type == "cuda"))
        self.training_step.start_at(self.step)
        host_sums = {"refine_steps": 0.0, "lr": 0.0}  # known on the host: summed there
        count, interval_start = 0, time.perf_counter()
        bar = tqdm(total=trainer.max_steps, initial=self.step, disable=not trainer.progress, unit="step",
                   mininterval=2.0, dynamic_ncols=True, desc=f"{self.cfg.name}/{self.cfg.variant}/seed{self.cfg.seed}")
        data_wait = tracking_time = 0.0  # seconds of the interval spent waiting for data / tracking
        try:
            while self.step < trainer.max_steps:
                started = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - started
                images = batch["image"].to(self.device, non_blocking=True)
                if trainer.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                refine_steps = self._refine_steps()
                host_sums["refine_steps"] += refine_steps
                host_sums["lr"] += self.lr_at(self.step)
                self.training_step(images, self.step, refine_steps)
                self.step += 1
                bar.update(1)
                count += 1
                if self.step % trainer.log_every == 0 or self.step == trainer.max_steps:
                    self._check_finite()
                    metrics = {f"train/{k}": v for k, v in self.training_step.read_interval().items()}
                    metrics.update({f"train/{k}": v / count for k, v in host_sums.items()})
                    elapsed = time.perf_counter() - interval_start  # after the read: the device's work included
                    metrics["train/steps_per_sec"] = count / max(elapsed, 1e-9)
                    metrics["train/data_wait_fraction"] = data_wait / max(elapsed, 1e-9)
                    metrics["train/tracking_fraction"] = tracking_time / max(elapsed, 1e-9)
                    host_sums = dict.fromkeys(host_sums, 0.0)
                    count, interval_start = 0, time.perf_counter()
                    self.tracker.log_metrics(metrics, self.step)
                    data_wait, tracking_time = 0.0, time.perf_counter() - interval_start
                    self.hooks.on_log(self.step, metrics)
                    bar.set_postfix(loss=f"{metrics['train/loss']:.1f}", refresh=False)
                if self.step % trainer.eval_every == 0 and self.step < trainer.max_steps:
                    self._evaluate()
                if self.step % trainer.checkpoint_every == 0 and self.step < trainer.max_steps:
                    self._save()
            metrics = self._evaluate()
            path = self._save(finished=True)
            if self.cfg.tracking.log_checkpoint:
                self.tracker.log_artifact(path, "checkpoints")
            self.tracker.finish("FINISHED")
        except KeyboardInterrupt:
            self.tracker.finish("KILLED")
            raise self._interrupted() from None
        except Exception:
            self.tracker.finish("FAILED")
            raise
        finally:
            bar.close()
        return TrainResult(self.output_dir, self.step, metrics, path, self.tracker.run_id)


def train(cfg: DictConfig | dict, hooks: TrainingHooks | None = None) -> TrainResult:
    """Train one run (see :class:`Trainer`)."""
    return Trainer(cfg, hooks).run()

