"""Logging and the few third-party messages the suite's commands hide. Imports nothing heavy (``--help`` stays fast).

The suite's loggers (``logging.getLogger(__name__)`` under ``experiments``, ``datamodules``, ``lightning_modules``,
``benchmarks``) print at ``--log_level`` (INFO by default) on stderr as ``LEVEL name: message``. Lightning's own status
lines (``GPU available: ...``, the model summary) are part of a run's output, like its progress: they go to stdout in
their plain form, so that stderr holds only log lines, warnings and the one-line error a failed command ends with.
They are printed once: Lightning adds its own handler only when the root logger has none, and propagates to the root
otherwise, so :func:`suite_logging` gives its loggers one handler of ours.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SUITE_LOGGERS = ("experiments", "datamodules", "lightning_modules", "benchmarks")
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")

# torch 2.14 deprecated constructing pytree LeafSpec; Lightning 2.6's own _pytree helper still does on every fit
# (nothing the user can change), so the FutureWarning would print on every run.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


class _Stream(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` / ``sys.stdout`` (not the one at creation: pytest swaps them per test)."""

    def __init__(self, name: str) -> None:
        self.name_ = name
        super().__init__(getattr(sys, name))

    @property
    def stream(self):
        return getattr(sys, self.name_)

    @stream.setter
    def stream(self, value) -> None:
        """Ignored: StreamHandler assigns the stream at creation and in setStream; ours is always the current one."""


def _no_tips(record: logging.LogRecord) -> bool:
    """Lightning 2.6 advertises litlogger / litmodels ("💡 Tip: ...") on every Trainer; not about the run."""
    return not str(record.msg).startswith("💡 Tip")


@contextlib.contextmanager
def suite_logging(level: str = "INFO") -> Iterator[None]:
    """Suite loggers at ``level`` on stderr, Lightning's at ``level`` (at least INFO) once on stdout; restored on
    exit."""
    value = logging.getLevelName(level)
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in map(logging.getLogger, ("", *SUITE_LOGGERS))]
    saved += [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in map(logging.getLogger, LIGHTNING_LOGGERS)]
    suite = _Stream("stderr")
    suite.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    suite.addFilter(lambda record: not record.name.startswith(("lightning", "pytorch_lightning")))
    plain = _Stream("stdout")
    plain.setLevel(value)
    plain.addFilter(_no_tips)
    logging.getLogger().addHandler(suite)
    for name in SUITE_LOGGERS:
        logging.getLogger(name).setLevel(value)
    for name in LIGHTNING_LOGGERS:  # replaces Lightning's own handler when it is already imported
        logger = logging.getLogger(name)
        logger.handlers = [plain]
        logger.propagate = False
    try:
        yield
    finally:
        for logger, old_level, propagate, handlers in saved:
            logger.setLevel(old_level)
            logger.propagate = propagate
            logger.handlers = handlers
