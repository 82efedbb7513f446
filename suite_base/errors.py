"""Errors for bad user input. The command line prints them as one clear message instead of a traceback."""

from __future__ import annotations

import re


class SuiteError(Exception):
    """Base class: input the user can fix (the message says what and how)."""


class ConfigError(SuiteError, ValueError):
    """A config value that cannot work (unknown backbone, impossible schedule ...)."""


class DataError(SuiteError, ValueError):
    """A dataset that is missing, empty, or malformed on disk."""


class CorruptFileError(DataError):
    """One file that cannot be decoded; ``on_corrupt: skip`` skips and counts such files instead."""


def find_suite_error(exc: BaseException | None) -> SuiteError | None:
    """The first SuiteError in an exception's cause/context chain (jsonargparse wraps errors raised in __init__)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SuiteError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(err: BaseException) -> str:
    """The error's own message on one line. An error raised in a DataLoader worker comes back from torch as the same
    type holding "Caught X in DataLoader worker process N. Original Traceback ...": its last line is the message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        name = re.escape(type(err).__name__)
        found = [m.group(1) for line in text.splitlines() if (m := re.match(rf"(?:[\w.]+\.)?{name}: (.*)", line))]
        text = found[-1] if found else text.splitlines()[-1]
    return " ".join(text.split()) or type(err).__name__
