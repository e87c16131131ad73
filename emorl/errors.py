"""Errors caused by the user's input or environment.

They are printed by the CLI without a traceback, so their message must say what is
wrong and what to do about it.
"""


class EmorlError(Exception):
    """Base class: a problem the user can fix (bad config, missing file, ...)."""


class ConfigError(EmorlError, ValueError):
    """A configuration key or value is wrong."""


class DatasetError(EmorlError, ValueError):
    """A dataset file is missing, truncated or not in the expected layout."""


class TrainingError(EmorlError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the work; the message says what is kept and how to continue.

    A KeyboardInterrupt, so that code that stops on one (Ray Tune, our sweep driver) still does.
    """
