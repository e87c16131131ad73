"""One process per folder: an exclusive lock held for the life of a run or a sweep.

Two launches on one run folder (or one sweep folder) would write one checkpoint and one
tracking spool from two processes. :func:`exclusive` takes an operating-system lock
(``filelock``: ``flock`` on POSIX) on a lock file and records who holds it (host, pid, start
time, command) in a file beside it. A second launch stops at once with a message that names
the holder. The operating system releases the lock when its process ends, however it ends
(``kill -9``, a lost Ray worker), so a dead holder's lock never blocks: the next launch takes it
over and overwrites the stale holder record.

On file systems without working ``flock`` (some NFS setups) ``filelock`` falls back to a lock
file whose existence is the lock; a crashed holder then leaves it behind and the message
shows its holder, whose process can be checked before deleting the file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from emorl.errors import EmorlError


class FolderInUse(EmorlError):
    """Another process holds the folder's lock."""


def holder_file(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + ".holder.json")


def describe_holder(lock_file: Path) -> str:
    """'host H, pid P, since T: COMMAND' from the holder record, or why it is unknown."""
    try:
        holder = json.loads(holder_file(lock_file).read_text())
    except (OSError, ValueError):
        return "a process that left no holder record"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}: "
            f"{holder.get('command', '?')}")


@contextmanager
def exclusive(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` for the body, or raise :class:`FolderInUse` at once (``what`` names the
    folder's role, e.g. 'the run folder /x/seed0')."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise FolderInUse(
            f"{what} is in use by another emorl process ({describe_holder(lock_file)}). Wait for it to finish, or "
            "stop it (then run again: it continues from its last checkpoint); to run both, give this one another "
            "folder (trainer.output_dir=..., or --output for a sweep).") from None
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": " ".join(sys.argv)[:500]}
    temporary = holder_file(lock_file).with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    temporary.replace(holder_file(lock_file))
    try:
        yield
    finally:
        holder_file(lock_file).unlink(missing_ok=True)
        lock.release()
