"""xpusim-example-serving-policy: a serving scheduler and a router as an xpusim plugin.

Installed, it registers, through the ``xpusim`` entry-point group, the batch scheduler
``shortest-prompt-first`` (:mod:`.scheduler`) and the request router
``power-of-two-choices`` (:mod:`.router`). Both are registered by name
(:class:`~xpusim.engine.lazy.Lazy`): ``xpusim`` commands list them without importing
them, and a scenario that names one imports its module.
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim import hookimpl
from xpusim.engine.lazy import Lazy

__version__ = "0.1.0"
__all__ = ["register_routers", "register_schedulers"]

_HERE = "xpusim_example_serving_policy"


@hookimpl
def register_schedulers(register: Callable[[Lazy], None]) -> None:
    """Register the ``shortest-prompt-first`` scheduler (imported on first use)."""
    register(Lazy("shortest-prompt-first", f"{_HERE}.scheduler:ShortestPromptFirstScheduler"))


@hookimpl
def register_routers(register: Callable[[Lazy], None]) -> None:
    """Register the ``power-of-two-choices`` router (imported on first use)."""
    register(Lazy("power-of-two-choices", f"{_HERE}.router:PowerOfTwoChoicesRouter"))
