"""The ``emorl`` command.

Each sub-command lives next to the code it drives and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the
parsed namespace, returns an exit code). Sub-commands of the packages around the core
(``sweep``, ``report``) are found through the ``emorl.commands`` entry-point group so
that the core never imports them.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from importlib.metadata import entry_points

from emorl.errors import EmorlError

# Core sub-commands: module path -> its ``register`` function.
CORE_COMMANDS = (
    "emorl.engine.cli",
    "emorl.data.cli",
    "emorl.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emorl", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in CORE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:  # a core module not written yet
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    for entry in entry_points(group="emorl.commands"):
        try:
            entry.load()(subparsers)
        except ModuleNotFoundError as error:
            print(f"emorl: sub-command {entry.name!r} unavailable: {error}", file=sys.stderr)
    return parser


_stopped_by: list[int] = []  # the signal that stopped the command (SIGTERM), if any


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (``kill``, a scheduler's time limit) stops like Ctrl-C: cleanly, work kept."""
    _stopped_by.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return int(args.func(args) or 0)
    except EmorlError as error:
        print(f"emorl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # one line, no traceback: what is kept and how to go on
        name = "SIGTERM" if _stopped_by else "Ctrl-C"
        print(f"emorl {args.command}: stopped by {name}" + (f": {error}" if str(error) else ""), file=sys.stderr)
        return 128 + (_stopped_by[-1] if _stopped_by else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
