"""Factories that misbehave: each must end in exit 2, never in success or an interrupt."""

import os  # noqa: F401  (reachable as usermods.nets:os.system, which must be refused)
import sys

from torch import nn


def good(width: int = 4) -> nn.Module:
    """A well-behaved factory."""
    return nn.Linear(4, width)


def exits(**kwargs: object) -> nn.Module:
    """Pretends the program finished successfully."""
    sys.exit(0)


def interrupts(**kwargs: object) -> nn.Module:
    """Pretends the user pressed Ctrl-C."""
    raise KeyboardInterrupt


def _hidden() -> nn.Module:
    return nn.Linear(4, 4)
