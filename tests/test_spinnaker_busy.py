"""The per-core busy-time cost of SpiNNaker runs (plugins/spinnaker/busy.py) and the
published rows it is checked against (benchmarks/validate_spiking.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from xpusim.plugins.spinnaker import busy

ROOT = Path(__file__).resolve().parents[1]


def _validate() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "validate_spiking", ROOT / "benchmarks" / "validate_spiking.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("validate_spiking", mod)
    spec.loader.exec_module(mod)
    return mod


def test_busy_core_seconds_do_not_grow_with_the_slow_down() -> None:
    """The same work keeps the cores busy for the same core-seconds whatever the machine
    time; slowing down 20x only makes the busy share 20 times smaller."""
    work = busy.Work(neuron_updates=1e6, synaptic_events=1e7)
    fast = busy.busy(work, placed_cores=100, seconds=1.0)
    slow = busy.busy(work, placed_cores=100, seconds=20.0)
    assert fast.core_seconds == slow.core_seconds
    assert fast.active_j == pytest.approx(slow.active_j)
    assert slow.fraction == pytest.approx(fast.fraction / 20)


def test_busy_energy_is_per_operation_and_capped_at_every_core_always_busy() -> None:
    """Active energy is neuron updates and synaptic events at their per-operation costs,
    never more than every placed core busy for the whole run at 0.034 W."""
    work = busy.Work(neuron_updates=2e5, synaptic_events=3e5)
    b = busy.busy(work, placed_cores=1000, seconds=1.0)
    assert b.active_j == pytest.approx(2e5 * 100e-9 + 3e5 * 43e-9)
    heavy = busy.busy(busy.Work(1e12, 0.0), placed_cores=10, seconds=1.0)
    assert heavy.fraction == 1.0
    assert heavy.active_j == pytest.approx(10 * busy.CORE_ACTIVE_W.value)


def test_cycle_costs_follow_from_spynnaker_constants_and_stay_below_the_measured() -> None:
    """sPyNNaker's cycle figures give 224 cycles at 200 MHz per neuron update and 1/13e6 s
    per synaptic event at 0.034 W, below what SpiNNaker was measured to draw."""
    c = busy.SPYNNAKER_CYCLES
    assert c.neuron_update_j.value == pytest.approx(224 / 200e6 * 0.034)
    assert c.synaptic_event_j.value == pytest.approx(0.034 / 13e6)
    assert c.neuron_update_j.value < busy.MEASURED.neuron_update_j.value
    assert c.synaptic_event_j.value < busy.MEASURED.synaptic_event_j.value


def test_negative_work_is_refused() -> None:
    """Work counts are never negative."""
    with pytest.raises(ValueError, match="work must be >= 0"):
        busy.Work(-1.0, 0.0)


def test_microcircuit_rows_within_target_and_between_their_bounds() -> None:
    """Both SpiNNaker microcircuit rows are predicted within 25% with the busy-time cost,
    and each prediction lies between no core active and every placed core active; at 20x
    slow-down the cores are busy a twentieth of the real-time share."""
    v = _validate()
    doc = yaml.safe_load((ROOT / "benchmarks" / "spiking_rows.yaml").read_text("utf-8"))
    rows = {r["id"]: r for r in v.evaluate(doc, skip_kws=True)}
    slow, rt = rows["spinnaker-microcircuit-x20"], rows["spinnaker-microcircuit-realtime"]
    for r in (slow, rt):
        assert abs(r["error"]) <= v.TARGET
        assert r["no_active_cores"] <= r["spynnaker_cycles"] <= r["predicted"]
        assert r["predicted"] <= r["all_cores_active"]
    assert slow["busy_fraction"] == pytest.approx(rt["busy_fraction"] / 20)
