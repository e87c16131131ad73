"""Checkpoints: everything needed to continue a run exactly where it stopped, as data only.

A checkpoint holds the model, optimiser, scheduler, GECO state, every RNG state (Python,
NumPy, torch CPU and CUDA), the data position (batches consumed), the step, the resolved
config and the tracking run id. Files are written atomically (temporary file + rename),
so a crash while saving never destroys the previous checkpoint.

A checkpoint is *data*: tensors and plain Python values (dicts, lists, tuples, numbers,
strings). It is read with ``torch.load(weights_only=True)``, which refuses any other object,
so a file crafted to run code when unpickled (a checkpoint shared by someone else, or an
artifact replaced on a tracking server) is refused with a message instead of being executed.
Format 1 (before December 2026) stored NumPy's RNG state as an array; it is still read, with
NumPy's array reconstruction as the only extra object allowed.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from emorl.errors import EmorlError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED = {  # what each use of a checkpoint needs
    "evaluate": ("model", "config"),
    "resume": ("model", "optimizer", "rng", "step", "config"),
    "inspect": ("step", "config"),
}


class CheckpointError(EmorlError):
    """A checkpoint cannot be used: missing, damaged, unsafe or not an emorl checkpoint."""


def rng_state() -> dict:
    """Every RNG state, as tensors and plain values (nothing a data-only load refuses)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                             numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    else:  # format 1: NumPy's own tuple
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` (plus the format version) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **payload}, temporary)
    temporary.replace(path)
    return path


def _format_1_globals() -> list:
    """The only objects besides tensors that format 1 holds: NumPy's RNG key array."""
    from numpy._core.multiarray import _reconstruct  # how NumPy pickles arrays

    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load(path: str | Path, map_location="cpu", purpose: str = "inspect") -> dict:
    """Read a checkpoint written by :func:`save`, as data only (no code in the file can run).

    ``purpose`` (evaluate | resume | inspect) names the entries that must be present. Every
    problem is a :class:`CheckpointError` that says what is wrong and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file (e.g. {path / 'checkpoints/last.pt'})")
    try:
        with torch.serialization.safe_globals(_format_1_globals()):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_object(str(error))
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain values ({refused}). emorl "
            "checkpoints are data only, so this file was not written by emorl, or it was altered; loading it "
            "could run code hidden in it, so it was not loaded. Use a checkpoint written by emorl.") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:  # truncated, damaged, or not a torch file
        raise CheckpointError(
            f"{path}: cannot be read: it is truncated, damaged or not a checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}). If it is a run's checkpoints/last.pt, move it "
            "aside (e.g. `mv last.pt last.pt.damaged`) and run again: the run starts over from step 0; or point "
            "trainer.resume at a good copy (a sweep keeps one in its Tune storage).") from None
    if not isinstance(payload, dict) or payload.get("format_version") not in READABLE_VERSIONS:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not an emorl checkpoint (format {found!r}; this emorl reads formats "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
    missing = [key for key in REQUIRED[purpose] if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)}, needed to {purpose}; it is "
                              "incomplete or was not written by emorl's trainer. Use the checkpoint of a finished "
                              "emorl run (<run folder>/checkpoints/last.pt)")
    return payload


def _refused_object(message: str) -> str:
    """The line of torch's refusal that names the object (e.g. 'unsupported GLOBAL posix.system ...')."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line]
    return (named or lines[-1:] or ["unknown object"])[0][:300]


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """``model.load_state_dict`` with a clear error when the checkpoint does not fit the model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        missing = sorted(set(model.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(model.state_dict()))
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "",
        ) if part) or str(error).splitlines()[-1].strip()[:300]
        raise CheckpointError(f"{path}: its weights do not fit the model of its own config ({detail}); the file "
                              "is damaged or was edited. Use an unmodified checkpoint of the run.") from None
