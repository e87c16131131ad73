"""Sweep specs: load a YAML spec, validate it, expand it into trials.

A spec (documented in docs/sweeps.md) is either a *training* sweep (base experiment(s), seeds,
named variants and axes, whose grid product gives the trials) or an *evaluation* sweep
(test-time evaluations of another sweep's checkpoints). :func:`load_spec` checks the structure;
:func:`expand` composes every trial's config with Hydra, so an unknown experiment, key or
override fails there, before anything starts. Everything a trial needs (its config with an
absolute output folder, the tracking URI, its resources) is plain data in :class:`Trial`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emorl import config as config_module
from emorl import vocabulary
from emorl.errors import ConfigError
from emorl.vocabulary import setting_id
from sweeps import adaptive

SPEC_DIR = Path(__file__).resolve().parent / "specs"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
METRICS = ("ari", "dci", "activeness", "figures")  # `emorl evaluate --metrics`

TOP_KEYS = ("name", "description", "experiment", "optional_experiment", "overrides", "seeds", "variants", "axes",
            "resources", "max_concurrent", "max_failures", "tracking", "output", "evaluation", "adaptive")
TRAINING_ONLY = ("experiment", "optional_experiment", "overrides", "seeds", "variants", "axes", "adaptive")
RESOURCE_KEYS = ("cpus", "gpus")
TRACKING_KEYS = ("uri", "experiment")
AXIS_KEYS = ("key", "keys", "values")
EVALUATION_KEYS = ("source", "refine_steps", "sets", "num_images", "batch_size", "metrics", "seed")
SOURCE_KEYS = ("sweep", "output", "trials", "checkpoints")
SET_KEYS = ("data", "num_slots")

# Settings the sweep decides for every trial: an override of one of them is refused.
SWEEP_OWNED = {
    "seed": "seeds come from the spec's `seeds:`",
    "variant": "variant names come from the spec's `variants:` and `axes:`",
    "experiment": "the base experiment is the spec's `experiment:`",
    "trainer.output_dir": "each trial's folder is derived from the sweep output folder (use --output)",
    "trainer.resume": "sweeps always resume trials from their own checkpoints",
    "tracking.parent_run_id": "the sweep's parent run is set by the driver",
    "tracking.uri": "use `tracking: {uri: ...}` in the spec or --tracking-uri",
    "tracking.experiment": "use `tracking: {experiment: ...}` in the spec",
}


@dataclass(frozen=True)
class Axis:
    """A grid axis: one or more config keys set together to each value (e.g. L, I)."""

    label: str
    keys: tuple[str, ...]
    values: tuple

    def overrides(self, value) -> list[str]:
        return [f"{key}={hydra_value(value)}" for key in self.keys]

    def tag(self, value) -> str:
        return f"{self.label}{slug(value)}"


@dataclass(frozen=True)
class Resources:
    """What one trial reserves in Ray: CPUs (its torch threads) and a GPU share."""

    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def ray(self) -> dict[str, float]:
        return {"cpu": float(self.cpus), "gpu": float(self.gpus)}


@dataclass(frozen=True)
class EvaluationSet:
    """One test set of an evaluation sweep: the training data (``data=None``) or another set, at K slots."""

    data: str | None = None
    num_slots: int | None = None

    @property
    def label(self) -> str:
        return (self.data or "test") + (f"_K{self.num_slots}" if self.num_slots else "")


@dataclass(frozen=True)
class EvaluationSpec:
    source_sweep: str | None = None  # a shipped spec name or a path: its trials' checkpoints
    source_output: str | None = None  # that sweep's output folder (default: its own default)
    source_trials: tuple[str, ...] = ("*",)  # patterns over the source trial ids
    checkpoints: tuple[str, ...] = ()  # or explicit checkpoint files / globs
    refine_steps: tuple[int, ...] | None = None  # test-time I (None: the setting's test I)
    sets: tuple[EvaluationSet, ...] = (EvaluationSet(),)
    num_images: int = 320
    batch_size: int = 32
    metrics: tuple[str, ...] = ("ari",)
    seed: int = 0


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    description: str = ""
    experiments: tuple[str, ...] = ()
    optional_experiments: tuple[str, ...] = ()  # in the grid, but run only when --only selects them
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, overrides), in spec order
    axes: tuple[Axis, ...] = ()
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    max_failures: int = 2
    tracking_uri: str | None = None
    tracking_experiment: str | None = None
    output: str | None = None
    evaluation: EvaluationSpec | None = None
    adaptive: Any = None  # sweeps.adaptive.AdaptiveRule: more seeds while a setting's CI is too wide

    @property
    def kind(self) -> str:
        return "evaluation" if self.evaluation is not None else "training"


@dataclass
class Trial:
    """One unit of work: a training run or an evaluation of one checkpoint on one set."""

    id: str  # <name>/<variant>/seed<seed> (evaluation: <source trial id>/<set label>)
    kind: str  # train | evaluate
    output_dir: Path  # absolute: the run folder (evaluation: the trial's status folder)
    variant: str
    seed: int | None
    overrides: tuple[str, ...]  # what sets this trial apart (shown in the table)
    resources: Resources
    config: dict | None = None  # train: the resolved config, a plain dict
    evaluation: dict | None = None  # evaluate: checkpoint, refine_steps, num_slots, data, ...

    @property
    def max_steps(self) -> int | None:
        return int(self.config["trainer"]["max_steps"]) if self.config else None

    def payload(self, parent_run_id: str | None, data_dir: str) -> dict:
        """The plain data a Ray worker gets: everything the trial needs, all paths absolute."""
        payload = {"id": self.id, "kind": self.kind, "output_dir": str(self.output_dir),
                   "threads": self.resources.threads, "env": {"EMORL_DATA_DIR": data_dir}}
        if self.kind == "train":
            config = copy.deepcopy(self.config)
            config["tracking"]["parent_run_id"] = parent_run_id
            payload["config"] = config
        else:
            payload["evaluation"] = {**self.evaluation, "parent_run_id": parent_run_id}
        return payload


@dataclass
class Plan:
    """An expanded sweep: where it writes, where it tracks, and its trials."""

    spec: SweepSpec
    output_dir: Path
    tracking_uri: str
    tracking_experiment: str
    trials: list[Trial]
    overrides: tuple[str, ...] = ()  # given on the command line, applied to every trial
    total: int = 0  # trials of the whole grid (``trials`` may be a selection: --only)
    optional: int = 0  # trials of the optional experiments, left out unless --only selects them

    @property
    def tracking_enabled(self) -> bool:
        if self.spec.kind == "evaluation":
            return True
        return any(t.config["tracking"]["backend"] != "none" for t in self.trials)


# -- loading -------------------------------------------------------------------------------------
def shipped_specs() -> list[str]:
    """Names of the specs shipped in sweeps/specs."""
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def resolve_spec_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A shipped spec name (``quickstart``) or a path to a YAML file, as an absolute path."""
    text = str(name_or_path)
    if NAME_PATTERN.match(text) and not text.endswith((".yaml", ".yml")):
        path = SPEC_DIR / f"{text}.yaml"
        if path.exists():
            return path
        raise ConfigError(f"no shipped sweep spec named {text!r}; shipped: {', '.join(shipped_specs())}; "
                          "or give the path of a YAML spec")
    path = Path(text).expanduser()
    if not path.is_absolute() and relative_to is not None and (relative_to / path).exists():
        path = relative_to / path
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"sweep spec {text!r}: no such file ({path}); shipped specs: {', '.join(shipped_specs())}")
    return path


def load_spec(name_or_path: str | Path, relative_to: Path | None = None) -> SweepSpec:
    """Read and validate a spec; raises ConfigError naming the file and key on bad input."""
    path = resolve_spec_path(name_or_path, relative_to)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_spec(data, path)


def parse_spec(data: Any, path: Path) -> SweepSpec:
    """Validate the structure of a spec (a mapping read from YAML)."""
    where = _Where(path)
    data = where.mapping(data, "the spec", TOP_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise where.error("name", f"must be a name of letters, digits, '_', '-', '.' (got {name!r})",
                          "add e.g. `name: my_sweep`")
    common = dict(
        name=name, path=path, description=str(data.get("description") or "").strip(),
        resources=parse_resources(data.get("resources"), where),
        max_concurrent=_optional_int(data.get("max_concurrent"), where, "max_concurrent", minimum=1),
        max_failures=_int(data.get("max_failures", 2), where, "max_failures", minimum=0),
        output=_optional_str(data.get("output"), where, "output"),
    )
    tracking = where.mapping(data.get("tracking") or {}, "tracking", TRACKING_KEYS)
    common["tracking_uri"] = _optional_str(tracking.get("uri"), where, "tracking.uri")
    common["tracking_experiment"] = _optional_str(tracking.get("experiment"), where, "tracking.experiment")
    if "evaluation" in data:
        present = [key for key in TRAINING_ONLY if key in data]
        if present:
            raise where.error(", ".join(present), "belongs to training sweeps, not evaluation sweeps",
                              "split the spec in two: one training sweep, one evaluation sweep over its checkpoints")
        return SweepSpec(evaluation=_parse_evaluation(data["evaluation"], where), **common)
    experiments = _parse_experiments(data.get("experiment"), where)
    optional = ()
    if data.get("optional_experiment") is not None:
        optional = _parse_experiments(data["optional_experiment"], where, "optional_experiment")
        _unique([*experiments, *optional], where, "experiment and optional_experiment")
    seeds = _parse_seeds(data.get("seeds"), where)
    return SweepSpec(
        experiments=experiments, optional_experiments=optional,
        overrides=_overrides(data.get("overrides"), where, "overrides"),
        seeds=seeds, adaptive=adaptive.parse_rule(data.get("adaptive"), path, seeds),
        variants=_parse_variants(data.get("variants"), where),
        axes=_parse_axes(data.get("axes"), where),
        **common,
    )


def parse_resources(value: Any, where: _Where | None = None, cpus: float | None = None,
                    gpus: float | None = None) -> Resources:
    """Resources per trial; ``cpus``/``gpus`` replace the spec's values (command-line flags)."""
    where = where or _Where(Path("command line"))
    data = where.mapping(value or {}, "resources", RESOURCE_KEYS)
    cpus = data.get("cpus", 1) if cpus is None else cpus
    gpus = data.get("gpus", 0) if gpus is None else gpus
    for key, number in (("cpus", cpus), ("gpus", gpus)):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise where.error(f"resources.{key}", f"must be a number (got {number!r})", "e.g. `cpus: 2`, `gpus: 0.5`")
    if cpus <= 0:
        raise where.error("resources.cpus", f"must be > 0 (got {cpus})", "give each trial at least a share of a CPU")
    if gpus < 0:
        raise where.error("resources.gpus", f"must be >= 0 (got {gpus})", "use 0 for CPU trials")
    if gpus > 1 and gpus != int(gpus):
        raise where.error("resources.gpus", f"above 1 must be a whole number (got {gpus})",
                          "a trial uses one device: give a fraction <= 1 to pack trials, or 1")
    return Resources(float(cpus), float(gpus))


def _parse_experiments(value: Any, where: _Where, key: str = "experiment") -> tuple[str, ...]:
    if value is None:
        raise where.error(key, "is missing", "name the base experiment, e.g. `experiment: clevr6` "
                          "(or a list of experiments)")
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise where.error(key, f"must be an experiment name or a non-empty list of names (got {value!r})",
                          f"e.g. `{key}: [tetrominoes, clevr6]`")
    _unique(names, where, key)
    return tuple(names)


def _parse_seeds(value: Any, where: _Where) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise where.error("seeds", f"must be >= 1 when a count (got {value})", "e.g. `seeds: 5` (0..4)")
        return tuple(range(value))
    if not isinstance(value, list) or not value:
        raise where.error("seeds", "is missing or empty" if not value else f"must be a list of seeds (got {value!r})",
                          "give a list such as `seeds: [0, 1, 2]` or a count such as `seeds: 5`")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise where.error("seeds", f"must hold integers >= 0 (got {seed!r})", "e.g. `seeds: [0, 1, 2]`")
    _unique(value, where, "seeds")
    return tuple(value)


def _parse_variants(value: Any, where: _Where) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise where.error("variants", f"must be a non-empty mapping of name -> overrides (got {value!r})",
                          "e.g. `variants: {full: [], without_geco: [loss.geco.enabled=false]}`, or leave it out")
    variants = []
    for name, overrides in value.items():
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise where.error("variants", f"variant name {name!r} is not a plain name",
                              "use letters, digits, '_', '-', '.'")
        variants.append((name, _overrides(overrides, where, f"variants.{name}")))
    return tuple(variants)


def _parse_axes(value: Any, where: _Where) -> tuple[Axis, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise where.error("axes", f"must be a non-empty mapping of label -> {{key, values}} (got {value!r})",
                          "e.g. `axes: {L: {key: model.stochastic_layers, values: [1, 2, 3]}}`, or leave it out")
    axes = []
    for label, body in value.items():
        if not isinstance(label, str) or not NAME_PATTERN.match(label):
            raise where.error("axes", f"axis label {label!r} is not a plain name", "use e.g. L or I")
        body = where.mapping(body, f"axes.{label}", AXIS_KEYS)
        keys = body.get("keys", [body["key"]] if "key" in body else None)
        if ("key" in body) == ("keys" in body) or not isinstance(keys, list) or not keys or \
                not all(isinstance(k, str) and k for k in keys):
            raise where.error(f"axes.{label}", "needs exactly one of `key: <config key>` or `keys: [<keys>]`",
                              "e.g. `key: model.stochastic_layers`")
        for key in keys:
            _check_not_owned(key, where, f"axes.{label}")
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise where.error(f"axes.{label}.values", "is missing or empty",
                              "give the values to sweep, e.g. `values: [0, 1, 3]`")
        for item in values:
            if isinstance(item, (list, dict)) or item is None:
                raise where.error(f"axes.{label}.values", f"must hold plain values (got {item!r})",
                                  "use a named variant for structured settings")
        _unique(values, where, f"axes.{label}.values")
        axes.append(Axis(label, tuple(keys), tuple(values)))
    return tuple(axes)


def _parse_evaluation(value: Any, where: _Where) -> EvaluationSpec:
    body = where.mapping(value, "evaluation", EVALUATION_KEYS)
    source = where.mapping(body.get("source"), "evaluation.source", SOURCE_KEYS)
    checkpoints = source.get("checkpoints")
    if ("sweep" in source) == (checkpoints is not None):
        raise where.error("evaluation.source", "needs exactly one of `sweep: <spec>` or `checkpoints: [<files>]`",
                          "e.g. `source: {sweep: table1, trials: ['clevr6/*']}`")
    if checkpoints is not None and (not isinstance(checkpoints, list) or not checkpoints
                                    or not all(isinstance(c, str) for c in checkpoints)):
        raise where.error("evaluation.source.checkpoints", "must be a non-empty list of files or globs",
                          "e.g. `checkpoints: [/runs/*/checkpoints/last.pt]`")
    trials = source.get("trials", ["*"])
    if not isinstance(trials, list) or not trials or not all(isinstance(t, str) and t for t in trials):
        raise where.error("evaluation.source.trials", f"must be a non-empty list of patterns (got {trials!r})",
                          "e.g. `trials: ['clevr6/*']`")
    refine_steps = body.get("refine_steps")
    if refine_steps is not None:
        if not isinstance(refine_steps, list) or not refine_steps or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in refine_steps):
            raise where.error("evaluation.refine_steps", f"must be a non-empty list of integers >= 0 "
                              f"(got {refine_steps!r})", "e.g. `refine_steps: [0, 1, 2, 3, 4, 5, 6]`, or leave "
                              "it out for the setting's test-time I")
        _unique(refine_steps, where, "evaluation.refine_steps")
        refine_steps = tuple(refine_steps)
    sets_value = body.get("sets", [{}])
    if not isinstance(sets_value, list) or not sets_value:
        raise where.error("evaluation.sets", "is empty", "give at least one set, e.g. `sets: [{}]` (the training "
                          "data's test split) or `sets: [{data: clevr10, num_slots: 11}]`")
    sets = []
    for index, item in enumerate(sets_value):
        item = where.mapping(item or {}, f"evaluation.sets[{index}]", SET_KEYS)
        sets.append(EvaluationSet(_optional_str(item.get("data"), where, f"evaluation.sets[{index}].data"),
                                  _optional_int(item.get("num_slots"), where, f"evaluation.sets[{index}].num_slots",
                                                minimum=1)))
    _unique([s.label for s in sets], where, "evaluation.sets")
    metrics = body.get("metrics", ["ari"])
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise where.error("evaluation.metrics", f"must be a non-empty list from {list(METRICS)} (got {metrics!r})",
                          "e.g. `metrics: [ari]` or `metrics: [dci, activeness]`")
    return EvaluationSpec(
        source_sweep=_optional_str(source.get("sweep"), where, "evaluation.source.sweep"),
        source_output=_optional_str(source.get("output"), where, "evaluation.source.output"),
        source_trials=tuple(trials), checkpoints=tuple(checkpoints or ()), refine_steps=refine_steps,
        sets=tuple(sets), num_images=_int(body.get("num_images", 320), where, "evaluation.num_images", minimum=1),
        batch_size=_int(body.get("batch_size", 32), where, "evaluation.batch_size", minimum=1),
        metrics=tuple(metrics), seed=_int(body.get("seed", 0), where, "evaluation.seed", minimum=0),
    )


# -- expansion -----------------------------------------------------------------------------------
def default_output_dir(spec: SweepSpec) -> Path:
    """``output:`` of the spec (relative to the current folder) or ``<output root>/sweeps/<name>``."""
    if spec.output:
        return Path(spec.output).expanduser().resolve()
    return config_module.output_root() / "sweeps" / spec.name


def expand(spec: SweepSpec, overrides: list[str] | tuple[str, ...] = (), output: str | Path | None = None,
           tracking_uri: str | None = None, source_output: str | Path | None = None,
           only: list[str] | None = None) -> Plan:
    """Expand a spec into its trials, composing (and so validating) every trial's config.

    ``overrides`` (Hydra, from the command line) apply to every training trial after the spec's own;
    ``only`` keeps the trials whose id matches one of the patterns. The trials of the spec's
    ``optional_experiment`` are run only when ``only`` selects them.
    """
    where = _Where(spec.path)
    overrides = tuple(overrides)
    for override in overrides:
        _check_override(override, where, "command-line overrides")
    output_dir = Path(output).expanduser().resolve() if output else default_output_dir(spec)
    if spec.kind == "evaluation":
        if overrides:
            raise ConfigError(f"{spec.path}: an evaluation sweep takes no config overrides (got {list(overrides)}); "
                              "its trials use the configs stored in the checkpoints")
        return _expand_evaluation(spec, output_dir, tracking_uri, source_output, only)
    uri = _absolute_uri(tracking_uri or spec.tracking_uri)
    experiment = spec.tracking_experiment or spec.name
    trials: list[Trial] = []
    optional: set[str] = set()
    for experiment_name, variant, distinct in _combinations(spec):
        composed = _compose(spec, experiment_name, variant, [*spec.overrides, *distinct, *overrides])
        for seed in spec.seeds:
            container = copy.deepcopy(composed)
            container["seed"] = seed
            trial_id = f"{container['name']}/{variant}/seed{seed}"
            trial_dir = output_dir / container["name"] / variant / f"seed{seed}"
            _sweep_settings(container, trial_dir, uri, experiment, spec.name, trial_id, spec.resources)
            several = len(spec.experiments) + len(spec.optional_experiments) > 1
            shown = (f"experiment={experiment_name}", *distinct) if several else tuple(distinct)
            trials.append(Trial(trial_id, "train", trial_dir, variant, seed, shown, spec.resources, config=container))
            if experiment_name in spec.optional_experiments:
                optional.add(trial_id)
    _check_distinct(trials, spec)
    if not only:  # the optional experiments' trials run only when --only selects them
        default = [t for t in trials if t.id not in optional]
        return Plan(spec, output_dir, uri, experiment, default, overrides, len(default), len(optional))
    return Plan(spec, output_dir, uri, experiment, _select(trials, only, spec), overrides, len(trials), len(optional))


def _combinations(spec: SweepSpec):
    """(experiment, variant label, overrides) for every grid point except the seed."""
    variants = spec.variants or (("", ()),)
    points = [((), [])]
    for axis in spec.axes:
        points = [(tags + (axis.tag(v),), ovr + axis.overrides(v)) for tags, ovr in points for v in axis.values]
    for experiment in (*spec.experiments, *spec.optional_experiments):
        for variant_name, variant_overrides in variants:
            for tags, axis_overrides in points:
                label = "_".join(part for part in (variant_name, *tags) if part) or "default"
                yield experiment, label, [*variant_overrides, *axis_overrides]


def _compose(spec: SweepSpec, experiment: str, variant: str, overrides: list[str]) -> dict:
    try:
        cfg = config_module.compose([f"experiment={experiment}", *overrides, f"variant={variant}",
                                     f"seed={spec.seeds[0]}"])
    except ConfigError as error:
        raise ConfigError(f"{spec.path}: experiment {experiment!r}, variant {variant!r} "
                          f"(overrides {overrides}): {error}") from None
    return config_module.to_container(cfg)


def _sweep_settings(container: dict, trial_dir: Path, uri: str, experiment: str, sweep: str, trial_id: str,
                    resources: Resources) -> None:
    """What the sweep decides for a trial: its folder, tracking, threads and device."""
    trainer = container["trainer"]
    trainer["output_dir"] = str(trial_dir)
    trainer["progress"] = False
    trainer["resume"] = "auto"
    if trainer.get("num_threads") is None:
        trainer["num_threads"] = resources.threads
    if trainer.get("device", "auto") == "auto":
        trainer["device"] = "cuda" if resources.gpus > 0 else "cpu"
    data = container["data"]
    if trainer["device"] != "cpu" and str(data.get("name", "")).startswith("clevr") and not data.get("num_workers"):
        # CLEVR frames are cropped and resized on the host: one loader process keeps a GPU trial fed
        # (Tetrominoes and Multi-dSprites are held on the GPU and need none), so 8 trials of 2 CPUs fit 16 cores
        data["num_workers"] = 1
    tracking = container["tracking"]
    tracking["uri"] = uri
    tracking["experiment"] = experiment
    tracking["tags"] = {**(tracking.get("tags") or {}), vocabulary.SWEEP: sweep, vocabulary.SWEEP_TRIAL: trial_id}


def _check_distinct(trials: list[Trial], spec: SweepSpec) -> None:
    """Refuse two trials with one configuration (a wasted run, and a confusing table)."""
    seen: dict[tuple[str, str], str] = {}
    ids: set[str] = set()
    for trial in trials:
        if trial.id in ids:
            raise ConfigError(f"{spec.path}: two trials are both named {trial.id!r}; give the experiments, "
                              "variants or axes distinct names")
        settings = copy.deepcopy(trial.config)
        settings["variant"] = ""
        key = (settings["name"], settings["seed"], setting_id(config_module.flatten(settings)))
        if key in seen:
            raise ConfigError(f"{spec.path}: trials {seen[key]!r} and {trial.id!r} have the same configuration "
                              f"(their variants differ only in name); drop one of the variants")
        seen[key] = trial.id
        ids.add(trial.id)


def _select(trials: list[Trial], only: list[str] | None, spec: SweepSpec) -> list[Trial]:
    if not only:
        return trials
    chosen = [t for t in trials if any(fnmatch.fnmatchcase(t.id, pattern) for pattern in only)]
    if not chosen:
        examples = ", ".join(t.id for t in trials[:4])
        raise ConfigError(f"--only {','.join(only)}: matches none of the {len(trials)} trials of {spec.name} "
                          f"(e.g. {examples}); patterns match trial ids, e.g. '*/seed0'")
    return chosen


def _expand_evaluation(spec: SweepSpec, output_dir: Path, tracking_uri: str | None,
                       source_output: str | Path | None, only: list[str] | None) -> Plan:
    evaluation = spec.evaluation
    sources: list[tuple[str, Path]] = []  # (source trial id, checkpoint)
    source_uri, source_experiment = None, None
    if evaluation.source_sweep:
        source_spec = load_spec(evaluation.source_sweep, relative_to=spec.path.parent)
        if source_spec.kind != "training":
            raise ConfigError(f"{spec.path}: evaluation.source.sweep {evaluation.source_sweep!r} is an evaluation "
                              "sweep; point it at the training sweep whose checkpoints you want to evaluate")
        folder = source_output or evaluation.source_output
        source_plan = expand(source_spec, output=folder)
        source_uri, source_experiment = source_plan.tracking_uri, source_plan.tracking_experiment
        for trial in source_plan.trials:
            if any(fnmatch.fnmatchcase(trial.id, pattern) for pattern in evaluation.source_trials):
                sources.append((trial.id, trial.output_dir / "checkpoints" / "last.pt"))
        if not sources:
            raise ConfigError(f"{spec.path}: evaluation.source.trials {list(evaluation.source_trials)} match none of "
                              f"the trials of {source_spec.name} (e.g. {source_plan.trials[0].id})")
    else:
        for pattern in evaluation.checkpoints:
            matches = sorted(glob.glob(str(Path(pattern).expanduser()))) if glob.has_magic(pattern) else [pattern]
            for match in matches:
                checkpoint = Path(match).expanduser().resolve()
                sources.append(("/".join(checkpoint.parent.parent.parts[-3:]), checkpoint))
        if not sources:
            raise ConfigError(f"{spec.path}: evaluation.source.checkpoints {list(evaluation.checkpoints)} match no "
                              "file; give existing checkpoint files (or globs)")
    uri = _absolute_uri(tracking_uri or spec.tracking_uri or source_uri)
    experiment = spec.tracking_experiment or source_experiment or spec.name
    device = "cuda" if spec.resources.gpus > 0 else "cpu"
    trials = []
    for source_id, checkpoint in sources:
        for test_set in evaluation.sets:
            trial_id = f"{source_id}/{test_set.label}"
            work = {"checkpoint": str(checkpoint), "source_trial": source_id, "set": test_set.label,
                    "refine_steps": list(evaluation.refine_steps) if evaluation.refine_steps else None,
                    "num_slots": test_set.num_slots, "data": test_set.data, "num_images": evaluation.num_images,
                    "batch_size": evaluation.batch_size, "metrics": list(evaluation.metrics),
                    "seed": evaluation.seed, "device": device, "tracking_uri": uri,
                    "tracking_experiment": experiment, "sweep": spec.name}
            shown = tuple(f"{k}={work[k]}" for k in ("data", "num_slots") if work[k] is not None)
            trials.append(Trial(trial_id, "evaluate", output_dir / source_id / test_set.label, test_set.label, None,
                                shown, spec.resources, evaluation=work))
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{spec.path}: two checkpoints give the same trial id; their run folders must differ in "
                          "<name>/<variant>/seed<seed>")
    return Plan(spec, output_dir, uri, experiment, _select(trials, only, spec), total=len(trials))


def _absolute_uri(uri: str | None) -> str:
    """The tracking URI with a sqlite path made absolute (it crosses process boundaries)."""
    if not uri:
        return config_module.default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    if "://" not in uri:  # a plain path: a sqlite file
        return f"sqlite:///{Path(uri).expanduser().resolve()}"
    return uri


# -- small helpers -------------------------------------------------------------------------------
def hydra_value(value: Any) -> str:
    """A plain value written as a Hydra override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if re.fullmatch(r"[\w.+\-/:]+", text) else "'" + text.replace("'", "\\'") + "'"


def slug(value: Any) -> str:
    """A value as a piece of a folder name."""
    text = hydra_value(value).strip("'")
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


class _Where:
    """Builds errors that name the spec file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key} {problem}; {fix}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping (got {type(value).__name__})",
                             f"valid keys: {', '.join(allowed)}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            label = "" if key == "the spec" else f" in {key}"
            raise ConfigError(f"{self.path}: unknown key(s) {unknown}{label}; valid keys: {', '.join(allowed)}")
        return value


def _check_not_owned(key: str, where: _Where, context: str) -> None:
    bare = key.lstrip("+~")
    if bare in SWEEP_OWNED:
        raise where.error(context, f"sets {bare!r}, which the sweep decides", SWEEP_OWNED[bare])


def _check_override(override: Any, where: _Where, context: str) -> str:
    if not isinstance(override, str) or "=" not in override:
        raise where.error(context, f"must hold Hydra overrides `key=value` (got {override!r})",
                          "e.g. `loss.geco.enabled=false` or `prior=bottom_up`")
    _check_not_owned(override.split("=", 1)[0], where, context)
    return override


def _overrides(value: Any, where: _Where, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error(key, f"must be a list of overrides (got {value!r})", "e.g. `[model.dual_gru=false]`")
    return tuple(_check_override(item, where, key) for item in value)


def _unique(values: list, where: _Where, key: str) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise where.error(key, f"repeats {repeated}", "list each value once")


def _int(value: Any, where: _Where, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(key, f"must be an integer >= {minimum} (got {value!r})", f"e.g. `{key.split('.')[-1]}: "
                          f"{max(minimum, 1)}`")
    return value


def _optional_int(value: Any, where: _Where, key: str, minimum: int) -> int | None:
    return None if value is None else _int(value, where, key, minimum)


def _optional_str(value: Any, where: _Where, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise where.error(key, f"must be a non-empty string (got {value!r})", "or leave it out")
    return value


def with_settings(spec: SweepSpec, **changes: Any) -> SweepSpec:
    """The spec with command-line settings applied (None leaves a setting as it is)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(spec, **changes)
