"""The tracking vocabulary: every tag name emorl writes or reads, and what identifies a setting.

One module names them, so that the writers (the trainer, ``emorl evaluate``, the sweep driver,
``emorl report``) and the readers (``analysis/``) cannot drift apart:

- the ``emorl.*`` tags and the MLflow system tags we set (``mlflow.source.git.commit``,
  ``mlflow.user``, ``mlflow.source.name``, ``mlflow.note.content``, ...);
- :data:`NON_SETTING_KEYS`, the one list of config keys that do not define a setting (where and
  how a run is tracked, stored, shown or scheduled; the seed and the names);
- :func:`setting_id`, the hash of everything else, logged on every training run as
  ``emorl.setting_id``: runs that differ only in their seed share it, and analysis groups by it.
  It is computed from the config's flattened keys as MLflow stores them (strings), so the same
  function gives the same id from a config and from a run's logged parameters;
- :func:`run_tags`, the tags of a training run, from its config.

Run kinds (tag ``emorl.run_kind``): ``training`` (owned by the trainer), ``evaluation`` (owned
by ``emorl evaluate``, a child of the run it evaluates), ``sweep`` (a sweep's parent run, owned
by the driver) and ``report`` (owned by ``emorl report``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
from typing import Any

# -- emorl's tags ---------------------------------------------------------------------------------
RUN_KIND = "emorl.run_kind"  # training | evaluation | sweep | report
EXPERIMENT = "emorl.experiment"  # the config's name (the paper setting)
VARIANT = "emorl.variant"
SEED = "emorl.seed"
MODEL = "emorl.model"
DATASET = "emorl.dataset"
SETTING_ID = "emorl.setting_id"  # setting_id(): the hash of the setting, the seed left out
DATASET_FILE = "emorl.dataset_file"
DATASET_HASH = "emorl.dataset_hash"
OUTPUT_DIR = "emorl.output_dir"
GECO_WARNING = "emorl.geco_warning"
FAILURE = "emorl.failure"  # why a run failed (a non-finite loss, ...)
RESUMED_WITH = "emorl.resumed_with"  # the settings changed when a run was resumed (optim.lr)
EVALUATION_OF = "emorl.evaluation_of"  # on an evaluation run: the training run it evaluates
EVALUATION_SET = "emorl.evaluation_set"  # on an evaluation run: the data it evaluated on
CHECKPOINT = "emorl.checkpoint"  # on an evaluation run: the checkpoint file evaluated
SWEEP = "emorl.sweep"  # the sweep's name, on its parent and its trials' runs
SWEEP_TRIAL = "emorl.sweep_trial"  # the trial's id, on a trial's run
SWEEP_ROLE = "emorl.sweep_role"  # "parent" on a sweep's parent run
SWEEP_OUTPUT = "emorl.sweep_output"  # the sweep folder, on its parent run
SWEEP_REPLACED = "emorl.sweep_replaced"  # on a parent run that `emorl sweep --restart` replaced
SWEEP_KIND = "emorl.sweep_kind"  # training | evaluation
SWEEP_SPEC = "emorl.sweep_spec"
REPORT = "emorl.report"  # on a run made by `emorl report` to hold a report

# -- MLflow's own tags (shown by its UI: columns, the run page) -----------------------------------
PARENT_RUN = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
GIT_COMMIT = "mlflow.source.git.commit"
USER = "mlflow.user"
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
DESCRIPTION = "mlflow.note.content"
EXPERIMENT_KIND = "mlflow.experimentKind"  # on the experiment: custom_model_development (model training)
TRAINING_EXPERIMENT_KIND = "custom_model_development"

# Config keys (or key prefixes) that do not define a setting: not part of setting_id().
NON_SETTING_KEYS = (
    "seed", "name", "variant", "tracking.", "trainer.progress", "trainer.output_dir", "trainer.resume",
    "trainer.log_every", "trainer.num_threads", "trainer.device", "trainer.cuda_graph", "data.num_workers",
    "data.on_device",
)


def param_value(value: Any) -> str:
    """A config value as MLflow stores it as a parameter (lists and dicts as JSON)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def defines_setting(key: str, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a flattened config key is part of the setting (not in :data:`NON_SETTING_KEYS`)."""
    return not key.startswith(NON_SETTING_KEYS) and key not in ignore


def setting_id(flat: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """A 12-character hash of a flattened config (or a run's logged parameters), the keys of
    :data:`NON_SETTING_KEYS` (and ``ignore``) left out; '' when nothing is left."""
    kept = {k: param_value(v) for k, v in flat.items() if defines_setting(k, ignore)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12] if kept else ""


def system_tags(source_name: str, git_commit: str | None = None, description: str | None = None) -> dict[str, str]:
    """MLflow's standard tags for a run that emorl creates with the client API (which sets none)."""
    tags = {USER: _user(), SOURCE_NAME: source_name, SOURCE_TYPE: "LOCAL"}
    if git_commit and git_commit != "unknown":
        tags[GIT_COMMIT] = git_commit.removesuffix("-dirty")
    if description:
        tags[DESCRIPTION] = description
    return tags


def run_tags(container: dict, git_commit: str, description: str | None = None) -> dict[str, str]:
    """The tags of a training run, from its resolved config (a plain dict)."""
    from emorl.config import flatten

    model = container["model"].get("name", "efficient_morl")
    tags = {
        RUN_KIND: "training", EXPERIMENT: str(container["name"]), VARIANT: str(container["variant"]),
        SEED: str(container["seed"]), MODEL: model, DATASET: str(container["data"]["name"]),
        SETTING_ID: setting_id(flatten(container)),
        **system_tags("emorl train", git_commit, description or _describe(container, model)),
    }
    if git_commit.endswith("-dirty"):
        tags["emorl.git_dirty"] = "true"
    return tags


def _describe(container: dict, model: str) -> str:
    trainer = container["trainer"]
    return (f"{model} on {container['data']['name']}: experiment {container['name']}, variant {container['variant']}, "
            f"seed {container['seed']}, {trainer['max_steps']} steps (emorl train)")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a container
        return "unknown"
