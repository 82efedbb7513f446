"""Errors for bad user input. The command line prints them as one clear message instead of a traceback."""


class SuiteError(Exception):
    """Base class: input the user can fix (the message says what and how)."""


class ConfigError(SuiteError, ValueError):
    """A config value that cannot work (unknown backbone, impossible schedule ...)."""


class DataError(SuiteError, ValueError):
    """A dataset that is missing, empty, or malformed on disk."""


class CorruptFileError(DataError):
    """One file that cannot be decoded; ``on_corrupt: skip`` skips and counts such files instead."""
