"""Errors for bad user input. The command line prints them as one clear message instead of a traceback.

The exception types and ``find_suite_error`` / ``one_line`` live in :mod:`suite_base.errors` (every layer raises
them) and are re-exported here; this module keeps the command line's own parsing of argparse/jsonargparse errors."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import NoReturn

from suite_base.errors import (  # noqa: F401  (re-exported for the command line)
    ConfigError,
    CorruptFileError,
    DataError,
    SuiteError,
    find_suite_error,
    one_line,
)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: <command>: <message>`` (an unknown option names the nearest
    ones), and exit code 2, instead of the usage text and the message."""

    def error(self, message: str) -> NoReturn:
        if m := re.match(r"unrecognized arguments: (--[^\s=]+)", message):
            near = difflib.get_close_matches(m.group(1), [o for o in self._option_string_actions if o != "--help"], n=2)
            message += f"; did you mean {' or '.join(near)}?" if near else ""
        command = self.prog.removeprefix("python -m experiments ")
        self.exit(2, f"error: {command}: {message} (--help lists the options)\n")


def unknown_key(message: str) -> str | None:
    """The dotted key a jsonargparse error says is not accepted (``model.init_args.lrr``), else None."""
    if m := re.match(r"unrecognized arguments: --(\S+)", message):
        return m.group(1).split("=")[0]
    if m := re.search(r"does not accept option '([^']+)'", message):
        return m.group(1)
    sections = re.findall(r'Parser key "([^"]+)"', message)  # outermost first: model, then optim (a nested class)
    options = re.findall(r"Option '([^']+)' is not accepted", message)
    if sections and options:
        given = re.findall(r"Given value: NestedArg\(key='([^']+)'", message)  # the outermost comes last
        return f"{sections[0]}.init_args.{given[-1] if given else '.'.join([*sections[1:], options[-1]])}"
    return None


def parse_error_line(message: str, key: str | None, candidates: list[str], where: str) -> str:
    """One line for a command-line / config parse error: an unknown ``key`` names the nearest accepted keys
    (``candidates``); any other error keeps its first line and the innermost reasons of jsonargparse's nested dump."""
    if key is not None:
        near = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
        if not near:  # a misspelled leaf: compare within the same section (model.init_args.lrr vs ...lr)
            section = key.rpartition(".")[0]
            leaves = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == section}
            near = [leaves[n] for n in difflib.get_close_matches(key.rpartition(".")[2], leaves, n=3, cutoff=0.5)]
        hint = f"; did you mean {' or '.join(near)}?" if near else "; --help lists the accepted keys"
        return f"unknown key '{key}'{where}{hint}"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        return lines[0]
    reasons = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line]
    reasons += [line for line in lines[1:] if not line.startswith(("- ", "Does not validate", "Subtypes:", "Errors:",
                                                                    "Given value"))]  # fmt: skip
    given = next((line for line in lines if line.startswith("Given value:")), "")
    text = f"{lines[0].rstrip(':')}: {'; '.join(dict.fromkeys(reasons)) or lines[1]}"
    if given and len(given) < 80:
        text += f" ({given[0].lower()}{given[1:]})"
    return text
