"""Configuration: dataclass schemas for Hydra, composition, and validation.

The YAML files live in ``emorl/conf`` (groups data, model, likelihood, prior, optim,
curriculum, loss, tracking, trainer, experiment); this module registers the schemas with
Hydra's ConfigStore so that a wrong key or a wrong type fails at composition, and
:func:`compose` turns Hydra's errors into messages that list the valid choices.
The ``model`` node is validated by :func:`emorl.models.build_model` (each model has its
own config dataclass).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from emorl.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"
OUTPUT_DIR_ENV = "EMORL_OUTPUT_DIR"


@dataclass
class DataConfig:
    name: str = "tetrominoes"  # tetrominoes | multi_dsprites | multi_dsprites_textured | clevr6 (clevr10 for testing)
    path: str | None = None  # an HDF5 file; None: the generated set for (name, seed, sizes)
    generate_if_missing: bool = True
    generation_seed: int = 0  # seed of the generated data (not of training)
    train_size: int | None = None  # None: the paper's split size
    test_size: int | None = None
    train_split: str = "train"
    test_split: str = "test"
    image_size: int | None = None  # resize (CLEVR: 96); None: the file's size
    batch_size: int = 32
    num_workers: int = 0  # data-loader worker processes
    on_device: str = "auto"  # hold the training split on the GPU (auto: when it fits and is read as stored) | true | false


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # adam | rmsprop (MONet's)
    lr: float = 4e-4
    warmup_steps: int = 10_000  # linear warm-up
    decay_rate: float = 0.5  # lr *= decay_rate ** (t / decay_steps), continuously
    decay_steps: int = 100_000
    decay_from: str = "warmup_end"  # warmup_end (EfficientMORL's code) | start (Slot Attention's)
    grad_clip_norm: float | None = 5.0  # None: no clipping
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    alpha: float = 0.99  # RMSProp's smoothing constant (optimizer=rmsprop only)
    implementation: str = "foreach"  # foreach | fused | single (torch.optim.Adam variants)
    warmup_from_zero: bool = False  # true: lr = base * t / warmup_steps (the authors' code: 0 at step 0)


@dataclass
class CurriculumConfig:
    refine_steps: int = 3  # I at the start of training
    milestones: list[int] = field(default_factory=list)  # steps at which I changes
    milestone_refine_steps: list[int] = field(default_factory=list)  # I from each milestone on
    test_refine_steps: int = 3  # I at evaluation


@dataclass
class GECOConfig:
    enabled: bool = False
    target: float = 0.0  # C, the NLL asked for (sum over the image); paper: -4500 / -61000
    step_size: float = 1e-6
    ema: float = 0.99
    warm_start: int = 1000
    zeta_init: float = 0.55
    zeta_min: float = 0.55
    speedup: float = 1.0  # multiplies the step when the constraint is met (authors: a factor)
    zeta_at_first_update: bool = True  # false: the authors' timing (zeta moves from step warm_start + 1)
    rule: str = "emorl"  # emorl (Appendix F.2) | genesis (GENESIS's rule; emorl/geco_rules.py)


@dataclass
class LossConfig:
    kl_beta: float = 1.0
    geco: GECOConfig = field(default_factory=GECOConfig)


@dataclass
class TrackingConfig:
    backend: str = "mlflow"  # mlflow | none
    uri: str | None = None  # None: sqlite:///<output root>/mlflow.db
    experiment: str = "emorl"
    run_name: str | None = None  # None: <name>/<variant>/seed<seed>
    parent_run_id: str | None = None  # set by sweeps: the child run's parent
    tags: dict[str, str] = field(default_factory=dict)
    figures: bool = True  # decomposition figures at each evaluation
    log_checkpoint: bool = True  # the final checkpoint as an artifact
    flush_every_s: float = 10.0  # send buffered metrics at most this often


@dataclass
class TrainerConfig:
    max_steps: int = 200_000
    log_every: int = 50
    eval_every: int = 10_000
    checkpoint_every: int = 1_000
    eval_images: int = 320  # test images per evaluation (the paper: 320)
    eval_batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 (IEEE, also on GPUs) | tf32 (CUDA TensorFloat-32) | bf16 (autocast)
    num_threads: int | None = None  # torch intra-op threads; None: torch's default
    resume: str = "auto"  # auto: continue from <output_dir>/checkpoints/last.pt if present | never | a path
    output_dir: str | None = None  # None: <output root>/runs/<name>/<variant>/seed<seed>
    progress: bool = True
    fused_backward: bool = True  # one decoder backward per step (same gradients; see docs/benchmarks.md)
    channels_last: bool = True  # NHWC convolutions (faster on CPU and GPU; same results to float tolerance)
    compile: bool = False  # torch.compile the encoder and decoder (no gain measured on CPU; for GPUs)
    cuda_graph: bool = True  # on CUDA, replay the training step as a CUDA graph (same results; docs/usage.md)


@dataclass
class EvaluateConfig:
    # the objective whose gradients the refinement network is fed at evaluation: training (GECO with
    # the run's zeta after the warm start, as the authors evaluate) | elbo (the plain negative ELBO)
    refine_objective: str = "training"


@dataclass
class TrainConfig:
    name: str = "tetrominoes"  # the experiment (paper setting) name
    variant: str = "default"  # the ablation variant (sweeps set it)
    seed: int = 0
    recipe: str | None = None  # set by the recipe group: paper | authors (docs/model.md)
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING  # validated by emorl.models.build_model
    optim: OptimConfig = field(default_factory=OptimConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def register_schemas() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)


CHOICES = {
    "decoder": ("broadcast", "broadcast_light", "deconv"),
    "trainer.precision": ("fp32", "tf32", "bf16"),
    "optim.decay_from": ("warmup_end", "start"),
    "optim.implementation": ("foreach", "fused", "single"),
    "optim.optimizer": ("adam", "rmsprop"),
    "loss.geco.rule": ("emorl", "genesis"),
    "tracking.backend": ("mlflow", "none"),
    "data.on_device": ("auto", "true", "false"),
    "evaluate.refine_objective": ("training", "elbo"),
    "recipe": ("paper", "authors"),
}


def _group_options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "curriculum": CurriculumConfig, "loss": LossConfig,
            "tracking": TrackingConfig, "trainer": TrainerConfig, "evaluate": EvaluateConfig}
GROUPS = ("experiment", "data", "model", "likelihood", "prior", "recipe", "optim", "curriculum", "loss", "tracking",
          "trainer")


def _section_keys(section: str) -> list[str]:
    return sorted(OmegaConf.to_container(OmegaConf.structured(SECTIONS[section])).keys())


def _chosen_model(overrides: list[str]) -> str:
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=")[0].lstrip("+~") == "model"]
    return chosen[-1] if chosen else "efficient_morl"


def _model_settings(overrides: list[str]) -> list[str]:
    from emorl.models import model_classes  # deferred: imports torch

    try:
        _, config_class = model_classes(_chosen_model(overrides))
    except ConfigError:
        return []
    return sorted(f.name for f in dataclasses.fields(config_class))


def _friendly(error: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's error, shortened, plus the valid choices for what went wrong."""
    import re

    text = str(error)
    if error.__cause__ is not None:  # Hydra keeps OmegaConf's reason (e.g. a wrong type) here
        text += ": " + str(error.__cause__)
    text = re.sub(r"\s*To append to your config use \S+", "", text)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type", "reference_type", "Traceback"))]
    message = "bad configuration: " + " ".join(lines[:3])
    hints = []
    for group in GROUPS:
        mentioned = f"'{group}/" in message or any(o.split("=")[0].lstrip("+~") == group for o in overrides)
        if mentioned:
            hints.append(f"options of group {group}: {', '.join(_group_options(group))}")
    for key in re.findall(r"override '([\w.]+)'", message) + re.findall(r"override ([\w.]+)=", message):
        section = key.split(".")[0]
        if section in SECTIONS:
            hints.append(f"valid keys of {section}: {', '.join(_section_keys(section))}")
        elif section == "model":
            hints.append(f"valid settings of model {_chosen_model(overrides)!r}: {', '.join(_model_settings(overrides))}")
        elif "." not in key:
            hints.append(f"valid top-level keys: name, variant, seed, {', '.join(sorted(SECTIONS))}, model")
    if hints:
        message += "\n  " + "\n  ".join(hints)
    return ConfigError(message)


def unknown_added_key(override: str) -> str | None:
    """Why ``+key=value`` or ``++key=value`` is refused, or None. Hydra lets both add a key that the
    schema lacks (it opens the struct for them), so a misspelt ``+trainer.max_step=3`` would be taken
    silently; only a config group (``+experiment=...``), the model's settings (checked by the model's
    own schema) and a free mapping (``tracking.tags``) may take a new key."""
    import typing

    key = override.split("=", 1)[0]
    if not key.startswith("+") or "=" not in override:
        return None
    parts = key.lstrip("+").split(".")
    if len(parts) == 1 and parts[0] in GROUPS:
        return None
    node = TrainConfig
    for depth, part in enumerate(parts):
        fields = typing.get_type_hints(node)
        if part not in fields:
            section = ".".join(parts[:depth])
            valid = f"valid keys of {section}" if section else "valid top-level keys"
            return (f"adds {'.'.join(parts)}, a key the config does not have (a + or ++ prefix does not make a "
                    f"key valid); {valid}: {', '.join(fields)}")
        node = fields[part]
        if not dataclasses.is_dataclass(node):  # a value, a free mapping (tracking.tags) or the model (its own checks)
            return None
    return None


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> DictConfig:
    """Compose the training config from the packaged YAML with Hydra overrides.

    Raises ConfigError (listing the valid choices) for an unknown group option, key (also one added
    with ``+``/``++``: :func:`unknown_added_key`) or a value of the wrong type.
    """
    register_schemas()
    overrides = list(overrides)
    for override in overrides:
        problem = unknown_added_key(override)
        if problem:
            raise ConfigError(f"override {override!r} {problem}")
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (ConfigCompositionException, MissingConfigException, OmegaConfBaseException, ValueError) as error:
        raise _friendly(error, overrides) from None
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """Checks Hydra cannot express: choices of string settings and the model's own schema."""
    for key, allowed in CHOICES.items():
        node = cfg.model if key == "decoder" else cfg
        path = key
        value = OmegaConf.select(node, path, default=None)
        if value is not None and value not in allowed:
            raise ConfigError(f"{'model.' if key == 'decoder' else ''}{key}={value!r} is not one of {list(allowed)}")
    if cfg.model is None or OmegaConf.is_missing(cfg, "model"):
        raise ConfigError(f"no model chosen; pick one with model=<name> from {_group_options('model')}")
    model_name = OmegaConf.select(cfg, "model.name", default="efficient_morl")
    if OmegaConf.select(cfg, "recipe", default=None) and model_name != "efficient_morl":
        raise ConfigError(f"recipe={cfg.recipe} sets EfficientMORL's switches; model {model_name!r} has none "
                          "(drop recipe=, or use an EfficientMORL experiment)")
    from emorl.models import model_config  # deferred: torch import

    model_config(OmegaConf.to_container(cfg.model, resolve=True))  # the model's own schema and checks
    curriculum = cfg.curriculum
    if len(curriculum.milestones) != len(curriculum.milestone_refine_steps):
        raise ConfigError("curriculum.milestones and curriculum.milestone_refine_steps must have the same length")
    if list(curriculum.milestones) != sorted(curriculum.milestones):
        raise ConfigError(f"curriculum.milestones={list(curriculum.milestones)} must be increasing")
    for key in ("trainer.max_steps", "trainer.log_every", "trainer.eval_every", "trainer.checkpoint_every",
                "data.batch_size", "trainer.eval_images", "trainer.eval_batch_size"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be >= 1")
    for key, value in (("name", cfg.name), ("variant", cfg.variant)):
        check_name(key, value)
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} must be >= 0")
    _check_optim(cfg.optim)


# A name that becomes one folder of a path: no separators, no '..', nothing hidden.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def check_name(key: str, value: object) -> None:
    """``value`` may become a folder name: one plain path component, never '..' or a path."""
    text = str(value)
    if not NAME_PATTERN.match(text) or len(text) > 200:
        raise ConfigError(f"{key}={text!r} is not a plain name: it becomes a folder of the run's path, so it may "
                          "hold only letters, digits and _ . + = - and start with a letter or digit; "
                          f"e.g. {key}=my_{key}")


def _check_optim(optim: DictConfig) -> None:
    """Ranges the optimisers check only when built (with a raw ValueError)."""
    problems = []
    if not optim.lr > 0:
        problems.append(f"optim.lr={optim.lr} must be > 0 (the paper's: 4e-4)")
    if optim.warmup_steps < 0:
        problems.append(f"optim.warmup_steps={optim.warmup_steps} must be >= 0 (0: no warm-up)")
    if not optim.decay_rate > 0 or optim.decay_steps < 1:
        problems.append(f"optim.decay_rate={optim.decay_rate} must be > 0 and optim.decay_steps="
                        f"{optim.decay_steps} >= 1 (decay_rate=1: no decay)")
    if optim.grad_clip_norm is not None and not optim.grad_clip_norm > 0:
        problems.append(f"optim.grad_clip_norm={optim.grad_clip_norm} must be > 0, or null for no clipping")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        problems.append(f"optim.betas={list(optim.betas)} must be two numbers in [0, 1), e.g. [0.9,0.999]")
    if not optim.eps > 0 or not 0 <= optim.alpha < 1:
        problems.append(f"optim.eps={optim.eps} must be > 0 and optim.alpha={optim.alpha} in [0, 1)")
    if problems:
        raise ConfigError("; ".join(problems))


def to_container(cfg: DictConfig) -> dict:
    """A plain, resolved dict (what crosses process boundaries and goes into checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_container(container: dict) -> DictConfig:
    """Rebuild a typed, validated config from a plain dict (e.g. inside a Ray trial)."""
    register_schemas()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), container)
    except OmegaConfBaseException as error:
        raise _friendly(error, []) from None
    check(merged)
    return merged


def flatten(container: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists kept as JSON strings)."""
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def output_root() -> Path:
    """``$EMORL_OUTPUT_DIR`` or ``./outputs``, absolute."""
    configured = os.environ.get(OUTPUT_DIR_ENV, "").strip()
    return (Path(configured).expanduser() if configured else Path.cwd() / "outputs").resolve()


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a sqlite file under the output root."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return configured or f"sqlite:///{output_root() / 'mlflow.db'}"


def run_output_dir(cfg: DictConfig | dict) -> Path:
    """Where a run keeps its checkpoints, tracking spool and figures (absolute)."""
    trainer = cfg["trainer"]
    if trainer.get("output_dir"):  # a folder the user chose, anywhere
        return Path(trainer["output_dir"]).expanduser().resolve()
    check_name("name", cfg["name"])
    check_name("variant", cfg["variant"])
    root = output_root() / "runs"
    folder = (root / str(cfg["name"]) / str(cfg["variant"]) / f"seed{cfg['seed']}").resolve()
    if not folder.is_relative_to(root):  # a symbolic link inside the root that leads out of it
        raise ConfigError(f"the run folder {folder} lies outside the output root {root} (a symbolic link?); "
                          "remove the link, or choose trainer.output_dir explicitly")
    return folder
