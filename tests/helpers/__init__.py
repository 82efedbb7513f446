"""Test support, split by purpose: goldens (``golden``), callbacks runs load by class path (``callbacks``), the
toy learning tests' loop (``fit``), tiny detectors and batches (``detection``). Every name is importable from
``tests.helpers`` (in tests and as class paths on a command line)."""

from .callbacks import KillAfterEpoch, RecordRankState
from .detection import ITPN, SMALL_RCNN, TOY_HIVIT, box_target, toy_batch
from .fit import validate_fit_validate
from .golden import SHARED, load_golden

__all__ = [
    "ITPN",
    "SHARED",
    "SMALL_RCNN",
    "TOY_HIVIT",
    "KillAfterEpoch",
    "RecordRankState",
    "box_target",
    "load_golden",
    "toy_batch",
    "validate_fit_validate",
]
