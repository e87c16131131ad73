"""The models: EfficientMORL and the baselines the paper compares with.

Every model takes images [B, C, H, W] in [-1, 1] and returns a
:class:`~emorl.models.outputs.SlotModelOutput`; :func:`build_model` makes one from a
plain mapping whose ``name`` picks the model and whose other keys are its config fields.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping

from torch import nn

from emorl.errors import ConfigError

# name -> (module, model class, config class)
MODELS = {
    "efficient_morl": ("emorl.models.emorl", "EfficientMORL", "EMORLConfig"),
    "slot_attention": ("emorl.models.slot_attention", "SlotAttentionAutoEncoder", "SlotAttentionConfig"),
    "slot_mlp": ("emorl.models.slot_mlp", "SlotMLPAutoEncoder", "SlotMLPConfig"),
    "iodine": ("emorl.models.iodine", "IODINE", "IODINEConfig"),
    "monet": ("emorl.models.monet", "MONet", "MONetConfig"),
    "genesis": ("emorl.models.genesis", "GENESIS", "GENESISConfig"),
    "genesis_s": ("emorl.models.genesis", "GENESIS", "GENESISSConfig"),
}


def model_classes(name: str):
    """(model class, config class) of a registered model."""
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not one of {sorted(MODELS)}")
    module_name, model_name, config_name = MODELS[name]
    module = importlib.import_module(module_name)
    return getattr(module, model_name), getattr(module, config_name)


def model_config(config: Mapping):
    """(model class, validated config dataclass) from ``{"name": ..., **config fields}``;
    an unknown model, an unknown setting or a bad value raises ConfigError."""
    fields = dict(config)
    name = fields.pop("name", "efficient_morl")
    model_class, config_class = model_classes(name)
    valid = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(f"model {name!r} has no setting(s) {unknown}; valid settings: {sorted(valid)}")
    return model_class, config_class(**fields)


def build_model(config: Mapping) -> nn.Module:
    """Build a model from ``{"name": ..., **config fields}`` (see :func:`model_config`)."""
    model_class, validated = model_config(config)
    return model_class(validated)
