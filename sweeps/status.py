"""Per-trial state files, written by the trial and read by the driver.

Each trial keeps, in ``<trial folder>/sweep/``:
- ``status.json``: its latest state (``running`` with the last checkpoint's step, ``finished``
  with the final metrics, ``failed`` with the reason, or ``interrupted`` with the step, written by
  the driver for a trial its Ctrl-C stopped), replaced atomically; ``undelivered`` counts the
  tracking records still waiting in the trial's spool (the store was unreachable);
- ``attempts.jsonl``: one line per start of the trial (process id, Ray node, the step it started
  from), so a retry or a resumed sweep can be told apart from a fresh run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

FOLDER = "sweep"


def status_file(trial_dir: str | Path) -> Path:
    return Path(trial_dir) / FOLDER / "status.json"


def attempts_file(trial_dir: str | Path) -> Path:
    return Path(trial_dir) / FOLDER / "attempts.jsonl"


def read_status(trial_dir: str | Path) -> dict:
    """The trial's latest state, or ``{}`` when it never started here (or the file is unreadable)."""
    path = status_file(trial_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_status(trial_dir: str | Path, **fields) -> dict:
    """Replace the trial's state with ``fields`` (plus the time), atomically."""
    path = status_file(trial_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**fields, "updated": time.time()}
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(state, default=str, indent=1))
    temporary.replace(path)
    return state


def record_attempt(trial_dir: str | Path, **fields) -> int:
    """Append one attempt (numbered from 1) and return its number."""
    path = attempts_file(trial_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    number = len(read_attempts(trial_dir)) + 1
    with path.open("a") as handle:
        handle.write(json.dumps({"attempt": number, "time": time.time(), **fields}, default=str) + "\n")
    return number


def read_attempts(trial_dir: str | Path) -> list[dict]:
    path = attempts_file(trial_dir)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def update_status(trial_dir: str | Path, **fields) -> dict:
    """Change some fields of the trial's state, keeping the others (the driver's corrections)."""
    return write_status(trial_dir, **{**read_status(trial_dir), **fields})
