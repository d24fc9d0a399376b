"""Device power per state, and the energy of a priced step.

A step's :class:`~xpusim.engine.backend.Cost` splits its seconds by cause (``compute``,
``memory``, ``comm``, ``overhead``); :class:`PowerModel` gives each cause a power draw and
sums ``watts × seconds × devices``.

The model (every number below is a *stated assumption* unless a catalog figure is
given; :meth:`PowerModel.figures` lists which, for the report's 'Assumptions and sources'):

``P(state) = P_idle + u(state) · (P_max - P_idle)``

* ``P_max`` is the device's ``power.max_w`` (TDP / board power, cited in the catalog).
* ``P_idle`` is the device's ``power.idle_w`` when the catalog has a published or
  measured one. GPU vendors publish none (reference figure ``gpu_idle_power_gap``), so the
  default is ``idle_fraction · P_max`` with ``idle_fraction = 0.2``. Reasoning: an idle
  accelerator still refreshes HBM, leaks and keeps its clocks and links up, so idle is far
  from zero; the only measured analogue in the reference figures, TPU v4's measured
  *minimum* of 90 W against a maximum of 192 W (``tpuv4_power``, 0.47) and TPU v3's
  123/262 W (``tpuv3_power``, 0.47), is a minimum *under load*, an upper bracket for true
  idle; 0.2 sits well below it. Measure on the device to replace it.
* ``u(state)``, the fraction of the dynamic range (``P_max - P_idle``) a state draws:

  - ``compute`` 0.9: tensor-core-bound kernels run at or near the power cap. The
    measured mean/max ratio of TPU v4 is 170/192 = 0.885 (``tpuv4_power``) and of TPU v3
    220/262 = 0.84 (``tpuv3_power``) over production workloads that are mostly
    compute-bound; 0.9 of the dynamic range above idle is a slightly lower total.
  - ``memory`` 0.6: HBM-bound kernels (decode GEMV, norms) keep the memory system and
    the load/store path busy while most of the math units idle; assumption.
  - ``comm`` 0.35: the device waits on links; SerDes and DMA engines draw, math units
    idle; assumption.
  - ``overhead`` 0.15: launch gaps and host-side stalls; close to idle; assumption.
  - any other state (``busy``, backend-specific keys) 0.75; assumption.

These state fractions are not measured for any GPU in the reference figures; a
backend or a calibration may pass its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xpusim.engine.device import DeviceSpec, Figure

DEFAULT_IDLE_FRACTION = 0.2
"""Idle power as a fraction of max power when no idle figure is published (see module doc)."""

DEFAULT_STATE_UTILIZATION: Mapping[str, float] = {
    "compute": 0.9,
    "memory": 0.6,
    "comm": 0.35,
    "overhead": 0.15,
    "idle": 0.0,
}
"""Fraction of the dynamic power range each state draws (see module doc for reasoning)."""

DEFAULT_OTHER_UTILIZATION = 0.75
"""Fraction for a state not listed in the utilization table."""

_STATE_REASONS: Mapping[str, str] = {
    "compute": "compute-bound steps near the power cap; TPU v4 measured mean/max 170/192 W "
    "(tpuv4_power) and TPU v3 220/262 W (tpuv3_power)",
    "memory": "memory-bound steps: HBM and load/store busy, math units mostly idle",
    "comm": "communication: links and DMA busy, math units idle",
    "overhead": "launch gaps and host stalls, close to idle",
    "idle": "idle",
}


@dataclass(frozen=True)
class PowerModel:
    """Power per state of one device; see the module docstring for the model.

    Build with :meth:`from_device`. ``max_w`` and ``idle_w`` are watts; ``utilization``
    maps a state name to the fraction of ``max_w - idle_w`` it draws above idle;
    ``sources`` keeps each number's provenance.
    """

    max_w: float
    idle_w: float
    utilization: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_STATE_UTILIZATION)
    )
    other_utilization: float = DEFAULT_OTHER_UTILIZATION
    sources: Mapping[str, Figure] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.max_w > 0 and 0 <= self.idle_w <= self.max_w):
            raise ValueError(
                f"power model needs 0 <= idle ({self.idle_w} W) <= max ({self.max_w} W)"
            )
        for k, u in self.utilization.items():
            if not 0 <= u <= 1:
                raise ValueError(f"power utilization of state {k!r} must be in [0, 1], got {u}")

    @classmethod
    def from_device(
        cls,
        device: DeviceSpec,
        *,
        idle_fraction: float = DEFAULT_IDLE_FRACTION,
        utilization: Mapping[str, float] | None = None,
        other_utilization: float = DEFAULT_OTHER_UTILIZATION,
    ) -> PowerModel:
        """The power model of ``device`` from its catalog power figures.

        ``max_w`` comes from ``device.power.max_w`` (required). ``idle_w`` from
        ``device.power.idle_w`` when present, else ``idle_fraction × max_w`` (a stated
        assumption citing ``gpu_idle_power_gap``).
        """
        if device.power.max_w is None:
            raise ValueError(
                f"device {device.name!r} has no power.max_w in its catalog; energy cannot be "
                f"estimated. Add the TDP/board power with its source."
            )
        max_fig = device.power.max_w
        sources: dict[str, Figure] = {"power.max_w": max_fig}
        if device.power.idle_w is not None:
            idle = device.power.idle_w.value
            sources["power.idle_w"] = device.power.idle_w
        else:
            idle = idle_fraction * max_fig.value
            sources["power.idle_w"] = Figure(
                idle,
                assumption=(
                    f"{idle_fraction:g} x max power ({max_fig.value:g} W); no published idle "
                    f"figure (gpu_idle_power_gap); TPU v4 measured min/max 90/192 W "
                    f"(tpuv4_power) is an upper bracket"
                ),
            )
        util = dict(DEFAULT_STATE_UTILIZATION)
        if utilization:
            util.update(utilization)
        for state, u in util.items():
            if state == "idle":
                continue
            sources[f"power.state.{state}"] = Figure(
                idle + u * (max_fig.value - idle),
                assumption=(
                    f"idle + {u:g} x (max - idle): {_STATE_REASONS.get(state, 'assumption')}"
                ),
            )
        return cls(max_fig.value, idle, util, other_utilization, sources)

    @property
    def idle_watts(self) -> float:
        """Power of one idle device (W)."""
        return self.idle_w

    def state_watts(self, state: str) -> float:
        """Power of one device in ``state`` (W): ``idle + u(state)·(max - idle)``."""
        u = self.utilization.get(state, self.other_utilization)
        return self.idle_w + u * (self.max_w - self.idle_w)

    def joules(self, breakdown: Mapping[str, float], devices: int) -> float:
        """Energy (J) of ``devices`` devices spending ``breakdown[state]`` seconds in each
        state: ``devices · Σ state_watts(state) · seconds``."""
        return devices * sum(self.state_watts(s) * t for s, t in breakdown.items() if t > 0)

    def figures(self) -> dict[str, Figure]:
        """Every number this model used, with its source or assumption."""
        return dict(self.sources)
