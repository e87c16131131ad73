"""Sweep specs: load a YAML spec, validate it, expand it into trials.

A spec (documented in docs/sweeps.md) is either a *training* sweep (base experiment(s), seeds,
named variants and axes, whose grid product gives the trials) or an *evaluation* sweep
(test-time evaluations of another sweep's checkpoints). Its structure is a typed schema
(:class:`SweepFile` and the pydantic models and dataclasses below it: types, bounds, unknown keys,
and validators for what types cannot say); :func:`load_spec` validates a file against it and turns
pydantic's errors into messages naming the file, the key, what was expected and an example
(:func:`_config_error`). :func:`expand` composes every trial's config with Hydra, so an unknown
experiment, key or override fails there, before anything starts. Everything a trial needs (its
config with an absolute output folder, the tracking URI, its resources) is plain data in :class:`Trial`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import glob
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from emorl import config as config_module
from emorl import vocabulary
from emorl.errors import ConfigError
from emorl.vocabulary import setting_id
from sweeps import adaptive

SPEC_DIR = Path(__file__).resolve().parent / "specs"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

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


# -- the schema of a spec file -------------------------------------------------------------------
# Each field's `description` is the example or hint that an error on it ends with.
def invalid(problem: str, hint: str = "", key: str = "") -> PydanticCustomError:
    """A check the types cannot express failed: ``<key> <problem>; <hint>`` (``key`` is below the
    location pydantic reports, for a check on a whole model)."""
    return PydanticCustomError("sweep_spec", "{problem}", {"problem": problem, "hint": hint, "key": key})


def _unique(values: list, key: str = "") -> list:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise invalid(f"repeats {repeated}", "list each value once", key)
    return values


def _owned(key: str) -> None:
    bare = key.lstrip("+~")
    if bare in SWEEP_OWNED:
        raise invalid(f"sets {bare!r}, which the sweep decides", SWEEP_OWNED[bare])


def _overrides(values: list[str]) -> list[str]:
    for override in values:
        if "=" not in override:
            raise invalid(f"must hold Hydra overrides `key=value` (got {override!r})",
                          "e.g. `loss.geco.enabled=false` or `prior=bottom_up`")
        _owned(override.split("=", 1)[0])
        added = config_module.unknown_added_key(override)
        if added:
            raise invalid(f"holds {override!r}, which {added}")
    return values


def _plain_values(values: list) -> list:
    for item in values:
        if isinstance(item, (list, dict)) or item is None:
            raise invalid(f"must hold plain values (got {item!r})", "use a named variant for structured settings")
    return _unique(values)


def _seed_count(value: Any) -> Any:
    """``seeds: 5`` is ``seeds: [0, 1, 2, 3, 4]``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise invalid(f"must be >= 1 when a count (got {value})", "e.g. `seeds: 5` (0..4)")
        return list(range(value))
    return value


Name = Annotated[str, Strict(), Field(pattern=NAME_PATTERN.pattern)]
Text = Annotated[str, Strict(), Field(min_length=1)]
Number = Annotated[float, Strict()]
Positive = Annotated[int, Strict(), Field(ge=1)]
NonNegative = Annotated[int, Strict(), Field(ge=0)]
Overrides = Annotated[list[Annotated[str, Strict()]], BeforeValidator(lambda v: [] if v is None else v),
                      AfterValidator(_overrides)]
Experiments = Annotated[list[Text], BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
                        Field(min_length=1), AfterValidator(_unique)]
FORBID = ConfigDict(extra="forbid")


class _Schema(BaseModel):
    """A mapping of a spec: unknown keys are refused, and a key set to null is as if left out."""

    model_config = FORBID

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


@pydantic.dataclasses.dataclass(frozen=True, config=FORBID)
class Resources:
    """What one trial reserves in Ray: CPUs (its torch threads) and a GPU share."""

    cpus: Number = Field(1.0, gt=0, description="give each trial at least a share of a CPU, e.g. `cpus: 2`")
    gpus: Number = Field(0.0, ge=0, description="use 0 for CPU trials, a fraction <= 1 to pack trials on a GPU, "
                                                "e.g. `gpus: 0.5`")

    @pydantic.field_validator("gpus")
    @classmethod
    def _one_device(cls, gpus: float) -> float:
        if gpus > 1 and gpus != int(gpus):
            raise invalid(f"above 1 must be a whole number (got {gpus:g})",
                          "a trial uses one device: give a fraction <= 1 to pack trials, or 1")
        return gpus

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def ray(self) -> dict[str, float]:
        return {"cpu": float(self.cpus), "gpu": float(self.gpus)}


@pydantic.dataclasses.dataclass(frozen=True, config=FORBID)
class EvaluationSet:
    """One test set of an evaluation sweep: the training data (``data=None``) or another set, at K slots."""

    data: Text | None = Field(None, description="e.g. `data: clevr10`, or leave it out for the training data")
    num_slots: Positive | None = Field(None, description="K at test time, e.g. `num_slots: 11`")

    @property
    def label(self) -> str:
        return (self.data or "test") + (f"_K{self.num_slots}" if self.num_slots else "")


class Source(_Schema):
    """The checkpoints an evaluation sweep evaluates: another sweep's trials, or files."""

    sweep: Text | None = Field(None, description="a shipped spec name or a path, e.g. `sweep: table1`")
    output: Text | None = Field(None, description="that sweep's output folder, or leave it out for its default")
    trials: list[Text] = Field(["*"], min_length=1, description="patterns over its trial ids, e.g. "
                                                               "`trials: ['clevr6/*']`")
    checkpoints: list[Text] | None = Field(None, min_length=1, description="files or globs, e.g. "
                                           "`checkpoints: [/runs/*/checkpoints/last.pt]`")

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        if (self.sweep is None) == (self.checkpoints is None):
            raise invalid("needs exactly one of `sweep: <spec>` or `checkpoints: [<files>]`",
                          "e.g. `source: {sweep: table1, trials: ['clevr6/*']}`")
        return self


class Evaluation(_Schema):
    """Test-time evaluations of checkpoints (Table 3, Figures 7 and 14)."""

    source: Source = Field(description="e.g. `source: {sweep: table1, trials: ['clevr6/*']}`")
    refine_steps: Annotated[list[NonNegative], AfterValidator(_unique)] | None = Field(
        None, min_length=1, description="test-time I, e.g. `refine_steps: [0, 1, 2, 3, 4, 5, 6]`, or leave it out "
                                        "for the setting's test-time I")
    sets: list[EvaluationSet] = Field([EvaluationSet()], min_length=1, description=(
        "give at least one set, e.g. `sets: [{}]` (the training data's test split) or "
        "`sets: [{data: clevr10, num_slots: 11}]`"))
    num_images: Positive = Field(320, description="e.g. `num_images: 320`")
    batch_size: Positive = Field(32, description="e.g. `batch_size: 32`")
    metrics: list[Literal["ari", "dci", "activeness", "figures"]] = Field(
        ["ari"], min_length=1, description="e.g. `metrics: [ari]`, `metrics: [dci, activeness]` or `metrics: [ari, figures]`")
    seed: NonNegative = Field(0, description="e.g. `seed: 0`")

    @pydantic.field_validator("sets")
    @classmethod
    def _distinct_sets(cls, sets: list[EvaluationSet]) -> list[EvaluationSet]:
        _unique([s.label for s in sets])
        return sets


class AxisBody(_Schema):
    """A grid axis in the file: ``{key: ..., values: [...]}`` or ``{keys: [...], values: [...]}``."""

    key: Text | None = Field(None, description="e.g. `key: model.stochastic_layers`")
    keys: list[Text] | None = Field(None, min_length=1, description="e.g. `keys: [curriculum.refine_steps, "
                                                                    "curriculum.test_refine_steps]`")
    values: Annotated[list[Any], AfterValidator(_plain_values)] = Field(
        min_length=1, description="give the values to sweep, e.g. `values: [0, 1, 3]`")

    @model_validator(mode="after")
    def _one_key(self) -> AxisBody:
        if (self.key is None) == (self.keys is None):
            raise invalid("needs exactly one of `key: <config key>` or `keys: [<keys>]`",
                          "e.g. `key: model.stochastic_layers`")
        for key in self.all_keys:
            _owned(key)
        return self

    @property
    def all_keys(self) -> tuple[str, ...]:
        return (self.key,) if self.key is not None else tuple(self.keys)


class Tracking(_Schema):
    uri: Text | None = Field(None, description="e.g. `uri: http://mlflow:5000`, or leave it out")
    experiment: Text | None = Field(None, description="the MLflow experiment, e.g. `experiment: table1`")


TRAINING_ONLY = ("experiment", "optional_experiment", "overrides", "seeds", "variants", "axes", "adaptive")


class SweepFile(_Schema):
    """A spec file as written (docs/sweeps.md); :meth:`spec` gives the :class:`SweepSpec` it describes."""

    name: Name = Field(description="add e.g. `name: my_sweep`")
    description: Annotated[str, Strict()] = ""
    experiment: Experiments | None = Field(None, description="name the base experiment, e.g. `experiment: clevr6` "
                                                             "(or a list of experiments)")
    optional_experiment: Experiments | None = Field(None, description="e.g. `optional_experiment: [iodine_clevr6]`")
    overrides: Overrides = Field([], description="e.g. `overrides: [model.dual_gru=false]`")
    seeds: Annotated[list[NonNegative], BeforeValidator(_seed_count), AfterValidator(_unique)] = Field(
        [], description="give a list such as `seeds: [0, 1, 2]` or a count such as `seeds: 5`")
    variants: dict[Name, Overrides] | None = Field(None, min_length=1, description=(
        "a mapping of name -> overrides, e.g. `variants: {full: [], without_geco: [loss.geco.enabled=false]}`, "
        "or leave it out"))
    axes: dict[Name, AxisBody] | None = Field(None, min_length=1, description=(
        "a mapping of label -> {key, values}, e.g. `axes: {L: {key: model.stochastic_layers, values: [1, 2, 3]}}`, "
        "or leave it out"))
    resources: Resources = Resources()
    max_concurrent: Positive | None = Field(None, description="e.g. `max_concurrent: 4`, or leave it out")
    max_failures: NonNegative = Field(2, description="retries of a failed trial, e.g. `max_failures: 2`")
    tracking: Tracking = Tracking()
    output: Text | None = Field(None, description="the sweep's folder, or leave it out")
    evaluation: Evaluation | None = None
    adaptive: dict[Any, Any] | None = None  # checked by sweeps.adaptive.parse_rule (with the seeds)

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        present = [key for key in TRAINING_ONLY if isinstance(data, dict) and key in data]
        if present and "evaluation" in data:
            raise invalid("belongs to training sweeps, not evaluation sweeps", "split the spec in two: one training "
                          "sweep, one evaluation sweep over its checkpoints", key=", ".join(present))
        return data

    @model_validator(mode="after")
    def _training_grid(self) -> SweepFile:
        if self.evaluation is not None:
            return self
        fields = SweepFile.model_fields
        if self.experiment is None:
            raise invalid("is missing", fields["experiment"].description, key="experiment")
        if not self.seeds:
            raise invalid("is missing or empty", fields["seeds"].description, key="seeds")
        _unique([*self.experiment, *(self.optional_experiment or ())], "experiment and optional_experiment")
        return self

    def spec(self, path: Path) -> SweepSpec:
        common = dict(name=self.name, path=path, description=self.description.strip(), resources=self.resources,
                      max_concurrent=self.max_concurrent, max_failures=self.max_failures,
                      tracking_uri=self.tracking.uri, tracking_experiment=self.tracking.experiment,
                      output=self.output)
        if self.evaluation is not None:
            return SweepSpec(evaluation=self.evaluation, **common)
        return SweepSpec(
            experiments=tuple(self.experiment), optional_experiments=tuple(self.optional_experiment or ()),
            overrides=tuple(self.overrides), seeds=tuple(self.seeds),
            adaptive=adaptive.parse_rule(self.adaptive, path, tuple(self.seeds)),
            variants=tuple((name, tuple(overrides)) for name, overrides in (self.variants or {}).items()),
            axes=tuple(Axis(label, body.all_keys, tuple(body.values)) for label, body in (self.axes or {}).items()),
            **common)


# -- pydantic's errors as ours: "<file>: <key> <what was expected> (got ...); <example>" ----------
PROBLEMS = {
    "missing": "is missing", "int_type": "must be an integer", "float_type": "must be a number",
    "string_type": "must be a string", "bool_type": "must be true or false", "list_type": "must be a list",
    "string_too_short": "must be a non-empty string",
    "string_pattern_mismatch": "must be a name of letters, digits, '_', '-', '.'",
    "greater_than": "must be {integer}> {gt:g}", "greater_than_equal": "must be {integer}>= {ge:g}",
    "literal_error": "must be one of {expected}",
}
MAPPING_TYPES = ("dict_type", "model_type", "model_attributes_type", "dataclass_type", "dataclass_exact_type")
UNKNOWN_TYPES = ("extra_forbidden", "unexpected_keyword_argument")


def _schema_at(loc: tuple) -> tuple[type | None, Any]:
    """The schema class at ``loc`` (a model, dataclass or None) and the field ``loc`` ends in, walking
    from :class:`SweepFile` (a mapping's keys and a list's indices stay in the same class)."""
    holder, found = SweepFile, None
    for part in loc:
        fields = getattr(holder, "__pydantic_fields__", {})
        if isinstance(part, str) and part in fields:
            found = fields[part]
            holder = _inner_schema(found.annotation)
    return holder, found


def _inner_schema(annotation: Any) -> type | None:
    if isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__"):
        return annotation
    return next(filter(None, map(_inner_schema, typing.get_args(annotation))), None)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the spec"


def _message(item: dict, loc: tuple) -> str:
    kind, context, given = item["type"], item.get("ctx") or {}, item.get("input")
    holder, found = _schema_at(loc)
    hint = found.description if found is not None and found.description else ""
    if kind == "sweep_spec":
        loc, problem, hint = loc + ((context["key"],) if context["key"] else ()), context["problem"], context["hint"]
    elif kind in MAPPING_TYPES:
        problem, hint = f"must be a mapping (got {type(given).__name__})", _valid_keys(holder)
    elif kind == "invalid_key":  # a mapping key that is not a string, e.g. `1: ...`
        loc, problem, hint = loc[:-1], f"has a key {loc[-1]!r} that is not a string", _valid_keys(holder)
    elif loc and loc[-1] == "[key]":
        loc, problem = loc[:-2], f"name {loc[-2]!r} " + PROBLEMS.get(kind, item["msg"]).replace("must be", "is not")
    elif kind == "too_short":
        problem = "must be a non-empty mapping" if isinstance(given, dict) else "is missing or empty"
        problem += f" (got {_shown(given)})" if isinstance(given, dict) else ""
    else:
        integer = "an integer " if isinstance(context.get("gt", context.get("ge")), int) else ""
        template = PROBLEMS.get(kind)
        problem = template.format(integer=integer, **context) if template else item["msg"][:1].lower() + item["msg"][1:]
        problem += "" if kind == "missing" else f" (got {_shown(given)})"
    return f"{_dotted(loc)} {problem}" + (f"; {hint}" if hint else "")


def _valid_keys(holder: type | None) -> str:
    return f"valid keys: {', '.join(getattr(holder, '__pydantic_fields__', {}))}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _config_error(error: pydantic.ValidationError, path: Path | str, prefix: tuple = ()) -> ConfigError:
    """One message per problem: the unknown keys of each mapping together, then the others."""
    unknown: dict[tuple, list[str]] = {}
    lines = []
    for item in error.errors():
        loc = prefix + tuple(item["loc"])
        if item["type"] in UNKNOWN_TYPES:
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        else:
            lines.append(_message(item, loc))
    for parent, keys in reversed(unknown.items()):
        label = f" in {_dotted(parent)}" if parent else ""
        lines.insert(0, f"unknown key(s) {sorted(keys)}{label}; {_valid_keys(_schema_at(parent)[0])}")
    return ConfigError(f"{path}: " + "\n  ".join(lines))


def validated(schema: Any, data: Any, source: Path | str, prefix: tuple = ()) -> Any:
    """``data`` validated against ``schema`` (a type of this schema), or a ConfigError naming ``source``
    and the key (``prefix``: where ``data`` sits in a spec)."""
    try:
        return pydantic.TypeAdapter(schema).validate_python(data)
    except pydantic.ValidationError as error:
        raise _config_error(error, source, prefix) from None


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
    evaluation: Evaluation | None = None
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
    """Validate a spec (a mapping read from YAML) against :class:`SweepFile`."""
    return validated(SweepFile, data, path).spec(path)


def parse_resources(value: Any, cpus: float | None = None, gpus: float | None = None,
                    source: str = "command line") -> Resources:
    """Resources per trial; ``cpus``/``gpus`` replace the values of ``value`` (command-line flags)."""
    flags = {key: number for key, number in (("cpus", cpus), ("gpus", gpus)) if number is not None}
    return validated(Resources, {**(value or {}), **flags}, source, ("resources",))


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
    overrides = tuple(validated(Overrides, list(overrides), spec.path, ("command-line overrides",)))
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
    if evaluation.source.sweep:
        source_spec = load_spec(evaluation.source.sweep, relative_to=spec.path.parent)
        if source_spec.kind != "training":
            raise ConfigError(f"{spec.path}: evaluation.source.sweep {evaluation.source.sweep!r} is an evaluation "
                              "sweep; point it at the training sweep whose checkpoints you want to evaluate")
        folder = source_output or evaluation.source.output
        source_plan = expand(source_spec, output=folder)
        if source_spec.adaptive is not None:  # with the seeds its rule added
            adaptive.resume_plan(source_plan, adaptive.recorded_seeds(source_plan.output_dir))
        source_uri, source_experiment = source_plan.tracking_uri, source_plan.tracking_experiment
        for trial in source_plan.trials:
            if any(fnmatch.fnmatchcase(trial.id, pattern) for pattern in evaluation.source.trials):
                sources.append((trial.id, trial.output_dir / "checkpoints" / "last.pt"))
        if not sources:
            raise ConfigError(f"{spec.path}: evaluation.source.trials {evaluation.source.trials} match none of "
                              f"the trials of {source_spec.name} (e.g. {source_plan.trials[0].id})")
    else:
        for pattern in evaluation.source.checkpoints:
            matches = sorted(glob.glob(str(Path(pattern).expanduser()))) if glob.has_magic(pattern) else [pattern]
            for match in matches:
                checkpoint = Path(match).expanduser().resolve()
                sources.append(("/".join(checkpoint.parent.parent.parts[-3:]), checkpoint))
        if not sources:
            raise ConfigError(f"{spec.path}: evaluation.source.checkpoints {evaluation.source.checkpoints} match no "
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


def with_settings(spec: SweepSpec, **changes: Any) -> SweepSpec:
    """The spec with command-line settings applied (None leaves a setting as it is)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(spec, **changes)
