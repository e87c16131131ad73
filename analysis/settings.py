"""Paper settings as data, the groups of runs, and which group may fill which paper row.

**A setting** (:class:`Setting`) says which runs qualify, column by column of the run table of
:func:`analysis.collect.collect_runs`: the tags ``experiment``, ``model``, ``dataset`` and
parameters such as ``params.trainer.max_steps``, each with the values it may take (compared as
lower-case text, as MLflow stores parameters). A run qualifies when every column holds one of its
values; a parameter the run did not log does not hold.

**The paper's settings** (:data:`EXPERIMENT_SETTINGS`): for each experiment file that trains a
paper setting (``emorl/conf/experiment/<name>.yaml``), the values of :data:`DEFINING_KEYS` that the
file composes to (the steps, image size, recipe, slots, decoder, prior, DualGRU, GECO, stochastic
layers, training and test-time refinement steps, curriculum milestones). tests/test_analysis_settings.py
composes every file and checks that these values agree with it. :func:`paper_setting` builds a
row's setting from them (e.g. CLEVR6 with ``trainer.max_steps=50000`` for Table 2).

**Groups** (:func:`setting_groups`): runs that differ only in their seed, the one place runs are
grouped (today by :data:`analysis.aggregate.GROUP_KEYS`: experiment, variant, model, dataset, sweep
and the ``setting`` hash of every other parameter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from analysis.aggregate import GROUP_KEYS

PARAM = "params."
# The parameters that define a paper setting (beside the tags experiment, model and dataset).
DEFINING_KEYS = ("trainer.max_steps", "data.image_size", "recipe", "model.num_slots", "model.latent_dim",
                 "model.decoder", "model.prior", "model.dual_gru", "model.stochastic_layers", "loss.geco.enabled",
                 "curriculum.refine_steps", "curriculum.test_refine_steps", "curriculum.milestones")


def _efficient_morl(experiment: str, dataset: str, steps: str, size: str, slots: str, latent: str, decoder: str,
                    geco: str, refine: str, test_refine: str, milestones: str, recipe: str = "paper") -> dict:
    return {"experiment": experiment, "model": "efficient_morl", "dataset": dataset, "trainer.max_steps": steps,
            "data.image_size": size, "recipe": recipe, "model.num_slots": slots, "model.latent_dim": latent,
            "model.decoder": decoder, "model.prior": "reversed++", "model.dual_gru": "true",
            "model.stochastic_layers": "3", "loss.geco.enabled": geco, "curriculum.refine_steps": refine,
            "curriculum.test_refine_steps": test_refine, "curriculum.milestones": milestones}


def _baseline(model: str, dataset: str, steps: str, size: str, slots: str, decoder: str | None, refine: str,
              latent: str | None = None) -> dict:
    values = {"experiment": f"{model}_{dataset}", "model": model, "dataset": dataset, "trainer.max_steps": steps,
              "data.image_size": size, "recipe": "none", "model.num_slots": slots, "model.latent_dim": latent,
              "model.decoder": decoder, "loss.geco.enabled": "false", "curriculum.refine_steps": refine,
              "curriculum.test_refine_steps": refine, "curriculum.milestones": "[]"}
    return {k: v for k, v in values.items() if v is not None}


_TETROMINOES = _efficient_morl("tetrominoes", "tetrominoes", "200000", "35", "4", "32", "broadcast_light", "true",
                               "3", "3", "[]")
# experiment name -> {column: value}: the paper settings of emorl/conf/experiment/*.yaml (tests check them).
EXPERIMENT_SETTINGS: dict[str, dict[str, str]] = {
    "tetrominoes": _TETROMINOES,
    "tetrominoes_without_geco": {**_TETROMINOES, "experiment": "tetrominoes_without_geco",
                                 "loss.geco.enabled": "false"},
    "tetrominoes_authors_recipe": {**_TETROMINOES, "experiment": "tetrominoes_authors_recipe", "recipe": "authors"},
    "multi_dsprites": _efficient_morl("multi_dsprites", "multi_dsprites", "300000", "64", "6", "64", "broadcast",
                                      "false", "3", "1", "[100000]"),
    "clevr6": _efficient_morl("clevr6", "clevr6", "300000", "96", "7", "64", "broadcast", "true", "3", "1",
                              "[100000]"),
    "slot_attention_tetrominoes": _baseline("slot_attention", "tetrominoes", "500000", "35", "4", "broadcast_light",
                                            "3"),
    "slot_attention_multi_dsprites": _baseline("slot_attention", "multi_dsprites", "500000", "64", "6",
                                               "broadcast_light", "3"),
    "slot_attention_clevr6": _baseline("slot_attention", "clevr6", "500000", "96", "7", "deconv", "3"),
    "iodine_tetrominoes": _baseline("iodine", "tetrominoes", "1000000", "35", "4", "broadcast_light", "5", "32"),
    "iodine_multi_dsprites": _baseline("iodine", "multi_dsprites", "1000000", "64", "6", "broadcast_light", "5", "16"),
    "iodine_clevr6": _baseline("iodine", "clevr6", "1000000", "128", "7", "broadcast", "5", "64"),
    "monet_multi_dsprites": _baseline("monet", "multi_dsprites", "1000000", "64", "6", None, "0", "16"),
    "monet_clevr6": _baseline("monet", "clevr6", "1000000", "128", "7", None, "0", "16"),
    "slot_mlp_tetrominoes": _baseline("slot_mlp", "tetrominoes", "500000", "35", "4", "broadcast_light", "3"),
    "slot_mlp_multi_dsprites": _baseline("slot_mlp", "multi_dsprites", "500000", "64", "6", "broadcast_light", "3"),
    "slot_mlp_clevr6": _baseline("slot_mlp", "clevr6", "500000", "128", "7", "deconv", "3"),
}


def _column(key: str) -> str:
    return key if key in ("experiment", "model", "dataset") else PARAM + key


def _text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value).lower()


@dataclass(frozen=True)
class Setting:
    """Which runs qualify: per key (a tag column, or a parameter name without ``params.``) the values
    it may take; every key must hold one of them (see the module docstring)."""

    name: str
    allowed: tuple[tuple[str, tuple[str, ...]], ...]

    def mismatches(self, run: Mapping) -> list[str]:
        """``key=ours (paper: theirs)`` for each key of ``run`` (a row of the run table) that does not hold."""
        found = []
        for key, values in self.allowed:
            ours = _text(run.get(_column(key)))
            if ours not in values:
                theirs = " or ".join(values)
                found.append(f"{key} not logged (paper: {theirs})" if ours == "" else f"{key}={ours} (paper: {theirs})")
        return found

    def qualifies(self, run: Mapping) -> bool:
        return not self.mismatches(run)

    def values(self, key: str) -> tuple[str, ...]:
        return dict(self.allowed).get(key, ())


def paper_setting(*experiments: str, changes: Mapping[str, str | tuple[str, ...]] | None = None,
                  name: str = "") -> Setting:
    """The setting that any of ``experiments`` (names of :data:`EXPERIMENT_SETTINGS`) trains, with
    ``changes`` (key -> value or values) replacing their values; e.g. Table 2's CLEVR6 rows are
    ``paper_setting("clevr6", changes={"trainer.max_steps": "50000"})``."""
    allowed: dict[str, list[str]] = {}
    for experiment in experiments:
        for key, value in EXPERIMENT_SETTINGS[experiment].items():
            allowed.setdefault(key, [])
            if value not in allowed[key]:
                allowed[key].append(value)
    for key, value in (changes or {}).items():
        allowed[key] = [value] if isinstance(value, str) else list(value)
    text = name or "/".join(experiments) + "".join(f", {k}={v}" for k, v in (changes or {}).items())
    return Setting(text, tuple((k, tuple(v)) for k, v in allowed.items()))


def reference_setting(run: Mapping) -> Setting | None:
    """The paper setting to compare a run with: its experiment's, else the first of the same model
    and dataset (e.g. ``tetrominoes`` for the ``smoke`` experiment), else None."""
    experiment = _text(run.get("experiment"))
    if experiment in EXPERIMENT_SETTINGS:
        return paper_setting(experiment)
    for name, values in EXPERIMENT_SETTINGS.items():
        if values["model"] == _text(run.get("model")) and values["dataset"] == _text(run.get("dataset")):
            return paper_setting(name)
    return None


def spell_setting(run: Mapping) -> str:
    """In words, how a run's setting differs from the paper setting nearest to it (:func:`reference_setting`);
    with none near, the values of :data:`DEFINING_KEYS` it logged."""
    reference = reference_setting(run)
    if reference is None:
        logged = [f"{k}={_text(run.get(PARAM + k))}" for k in DEFINING_KEYS if _text(run.get(PARAM + k))]
        return "no paper setting of this model and dataset; " + (", ".join(logged) or "no parameters logged")
    differences = [m for m in reference.mismatches(run) if not m.startswith("experiment=")]
    head = ("" if _text(run.get("experiment")) == reference.name
            else f"experiment {run.get('experiment')} is no paper setting; against {reference.name}: ")
    return head + (", ".join(differences) or "the paper setting")


def setting_groups(runs: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """The groups of runs that differ only in their seed, as (key values, runs), in a stable order.
    The one place runs are grouped: a ``setting_id`` tag would replace the keys here."""
    if runs.empty:
        return []
    keys = list(GROUP_KEYS)
    return [(dict(zip(keys, values)), frame) for values, frame in runs.groupby(keys, dropna=False, sort=True)]


def setting_params(experiment: str, changes: Mapping[str, object] | None = None) -> dict[str, str]:
    """The defining parameters of a paper setting (names without ``params.``), with ``changes``: what
    a run of it logs for :data:`DEFINING_KEYS` (for examples and tests that log runs by hand)."""
    values = {k: v for k, v in EXPERIMENT_SETTINGS[experiment].items() if k not in ("experiment", "model", "dataset")}
    return {**values, **{k: str(v) for k, v in (changes or {}).items()}}
