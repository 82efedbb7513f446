"""One spelling per flag across the suite's commands: underscores, as LightningCLI keys are spelled
(``--runs_dir``, ``--run_name``, ``--gpus_per_node``, ``--dry_run``, ``--data.batch_size``).

Older spellings stay accepted for a while: :func:`canonical_flags` rewrites them to the current one and prints one
deprecation line per flag. Imports nothing heavy, so a command can call it before it imports torch or Lightning.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def canonical_flags(
    argv: list[str], known: Iterable[str], aliases: dict[str, str] | None = None, prog: str = "experiments"
) -> list[str]:
    """``argv`` with deprecated flag spellings replaced by the current ones.

    Args:
        argv: the command's arguments (``--flag value`` and ``--flag=value`` forms).
        known: the command's current flags (e.g. ``parser._option_string_actions``); ``--a-b`` becomes ``--a_b``
            when ``--a_b`` is one of them.
        aliases: further old -> new spellings that are not only a hyphen/underscore change
            (``{"--runs": "--runs_dir"}``).
        prog: the command's name, for the deprecation line.
    """
    known = set(known)
    aliases = dict(aliases or {})
    out, warned = [], set()
    for token in argv:
        if token == "--":  # everything after it is positional
            out.extend(argv[len(out) :])
            break
        name, eq, value = token.partition("=")
        new = aliases.get(name)
        if new is None and name.startswith("--") and "-" in name[2:] and name not in known:
            underscored = "--" + name[2:].replace("-", "_")
            new = underscored if underscored in known else None
        if new is not None and new != name:
            if name not in warned:
                print(f"{prog}: {name} is deprecated; use {new}", file=sys.stderr)
                warned.add(name)
            token = new + eq + value
        out.append(token)
    return out
