"""Recorded step times, per machine: ``<output root>/bench/step-times.json``.

``emorl bench step`` adds its rows here (unless ``--no-record``), and ``emorl sweep SPEC --dry-run``
reads them to estimate what a sweep costs (sweeps/cost.py). The file maps a machine description
(:func:`machine_key`: device kind, CPU model or GPU name, torch threads on a CPU, torch version) to
the step times measured there, keyed by the setting (:func:`setting_key`: bench setting, batch size,
refinement steps I, mode; the mode fixes the precision)::

    {"machines": {"cpu | Intel(R) Xeon(R) ... | 2 threads | torch 2.13.0": {
        "machine": {"device": "cpu", "name": "...", "threads": 2, "torch": "2.13.0"},
        "steps": {"tetrominoes batch=32 I=3 fast": {"step_s": 0.21, "step_min_s": 0.2, "precision": "fp32",
                                                    "recorded": "2026-12-05 07:40:00", ...}}}}}

A newer measurement of the same machine and setting replaces the older one. Writes hold a lock
(``step-times.json.lock``) and replace the file atomically, so two benchmarks never lose each
other's rows and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import time
from pathlib import Path

FILE = "step-times.json"


def default_path() -> Path:
    from emorl.config import output_root

    return output_root() / "bench" / FILE


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: str, name: str | None = None, threads: int | None = None, torch_version: str | None = None
            ) -> dict:
    """This machine as the records describe it. ``device`` is ``cpu`` or ``cuda``; on a CPU the
    torch threads count (a trial's CPUs), on a GPU they do not."""
    import torch

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if name is None:
        name = torch.cuda.get_device_name(torch.device(device)) if kind == "cuda" else cpu_model()
    described = {"device": kind, "name": name, "torch": torch_version or torch.__version__}
    if kind == "cpu":
        described["threads"] = int(threads or torch.get_num_threads())
    return described


def machine_key(described: dict) -> str:
    parts = [described["device"], described["name"]]
    if described["device"] == "cpu":
        parts.append(f"{described['threads']} thread{'s' if described['threads'] != 1 else ''}")
    return " | ".join([*parts, f"torch {described['torch']}"])


def setting_key(setting: str, batch: int, refine_steps: int, mode: str) -> str:
    return f"{setting} batch={int(batch)} I={int(refine_steps)} {mode}"


def load(path: str | Path | None = None) -> dict:
    """The records (``{"machines": {}}`` when there are none yet)."""
    path = Path(path) if path else default_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"machines": {}}
    except ValueError as error:
        raise ValueError(f"{path}: not a step-time record file ({error}); move it aside") from None
    data.setdefault("machines", {})
    return data


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(rows: list[dict], described: dict, path: str | Path | None = None) -> Path:
    """Add bench rows (each with setting, batch, refine_steps, mode, step_s, ...) for one machine."""
    path = Path(path) if path else default_path()
    key = machine_key(described)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with _locked(path):
        data = load(path)
        entry = data["machines"].setdefault(key, {"machine": described, "steps": {}})
        for row in rows:
            entry["steps"][setting_key(row["setting"], row["batch"], row["refine_steps"], row["mode"])] = {
                **row, "recorded": stamp}
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True, default=float))
        temporary.replace(path)
    return path


def find_machines(data: dict, device: str, text: str | None = None, described: dict | None = None
                  ) -> list[tuple[str, dict]]:
    """The recorded machines of kind ``device`` (cpu or cuda): the one ``described`` exactly (this
    machine), or those whose key holds ``text`` (case-insensitive, e.g. ``H200``)."""
    found = []
    for key, entry in sorted(data["machines"].items()):
        if entry["machine"]["device"] != device:
            continue
        if described is not None and key == machine_key(described):
            found.append((key, entry))
        elif text is not None and text.lower() in key.lower():
            found.append((key, entry))
    return found
