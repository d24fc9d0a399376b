"""The built-in request routers, one class per module.

* ``round-robin`` (:mod:`.round_robin`) — replica ``i mod R`` for the ``i``-th routed request;
* ``least-outstanding`` (:mod:`.least_outstanding`) — the replica with the fewest requests
  routed and not yet finished (waiting plus running), the lowest index on a tie.

A router (:class:`xpusim.engine.policies.Router`) gives each run a routing function called
once per request at its arrival instant; both built-ins are deterministic. The workload
plugin registers them through the ``register_routers`` hook, as a third party registers
its own.
"""

from __future__ import annotations

from pydantic import ValidationInfo

from xpusim.engine.policies import Router
from xpusim.engine.registry import unknown_message
from xpusim.plugins.workloads.serving.routers.least_outstanding import LeastOutstandingRouter
from xpusim.plugins.workloads.serving.routers.round_robin import RoundRobinRouter

ROUTERS: tuple[type[Router], ...] = (RoundRobinRouter, LeastOutstandingRouter)
"""The built-in router classes, registered by the workload plugin."""


def check_builtin(name: str, info: ValidationInfo) -> str:
    """``name`` when a host is in the validation context (the host's registry checked it)
    or it names a built-in router; a ``ValueError`` listing the valid ones otherwise."""
    if not (isinstance(info.context, dict) and "host" in info.context):
        builtin_router(name)
    return name


def builtin_router(name: str) -> Router:
    """The built-in router called ``name`` (a config built in code, outside a scenario,
    carries only the name); ``ValueError`` listing the valid ones otherwise."""
    for cls in ROUTERS:
        if cls.name == name:
            return cls()
    raise ValueError(unknown_message("router", name, [c.name for c in ROUTERS]))
