"""The end of a sweep's tracking: every trial's records delivered, or the sweep says which are not.

Each trial's trainer owns its MLflow run and writes every record first to the spool in the trial's
folder (:mod:`emorl.tracking`), then delivers it. When the store is unreachable as trials end,
records stay in the spools. After Tune returns, the driver therefore

- ends, on their behalf, the runs of trials that Ray stopped without letting them run their own
  handlers (a Ctrl-C): it appends to the trial's spool the ``end`` record (KILLED) its trainer
  would have written, and marks the trial ``interrupted`` in its ``sweep/status.json``; a later
  launch resumes the trial, whose trainer reopens the run (RUNNING again);
- delivers the spool of every trial that has ended (in this launch or an earlier one), ending a
  finished trial's run FINISHED, a failed one's FAILED, if its spool left it open;
- counts, per trial, what is still undelivered (also in its ``status.json``), for the summary and
  the sweep's exit status (:data:`emorl.tracking.UNDELIVERED_EXIT_CODE`).

The spool stays the one record of each run; the driver writes to it only when the trial's process
is gone.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from emorl.tracking import deliver
from sweeps import status

# The status a run is ended with, by the trial's outcome in the driver (finished | failed | unfinished).
END_STATUS = {"finished": "FINISHED", "failed": "FAILED", "unfinished": "KILLED"}
PROCESS_EXIT_WAIT_S = 30.0  # how long a stopped trial's process may take to go after Tune returns


def has_spool(trial_dir: Path) -> bool:
    return (Path(trial_dir) / "tracking" / "state.json").exists()


def settle_trial(outcome) -> None:
    """End and deliver one trial's run as its outcome says; record what was done in the outcome
    (``delivered``, ``undelivered``, ``delivery_failure``, ``run_ended``) and what is left in the
    trial's ``status.json``."""
    folder = outcome.trial.output_dir
    stopped = outcome.state == "unfinished" and bool(status.read_attempts(folder))  # started, then stopped
    if stopped:
        wait_for_trial_process(folder)
    tracked = has_spool(folder)
    if tracked:
        result = deliver(folder, end_status=END_STATUS[outcome.state])
        outcome.delivered, outcome.undelivered = result.delivered, result.left
        outcome.delivery_failure, outcome.run_ended = result.failure, result.ended
    written = status.read_status(folder)
    if stopped:  # it says running (at its last checkpoint's step): no longer true
        status.update_status(folder, state="interrupted", step=int(written.get("step") or 0),
                             undelivered=outcome.undelivered)
    elif tracked and written and written.get("undelivered") != outcome.undelivered:
        status.update_status(folder, undelivered=outcome.undelivered)


def wait_for_trial_process(trial_dir: Path, timeout_s: float = PROCESS_EXIT_WAIT_S) -> None:
    """Wait (a bounded time) until the trial's last process is gone, when it ran on this machine:
    Tune stops trial actors asynchronously, and only a dead trial's spool may be written here."""
    attempts = status.read_attempts(trial_dir)
    if not attempts or attempts[-1].get("host") != socket.gethostname():
        return  # another node's process: Ray ends it with the driver's job
    pid, deadline = int(attempts[-1]["pid"]), time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone (or the number now belongs to someone else's process)
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
