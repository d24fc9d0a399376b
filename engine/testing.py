"""The conformance kit's pytest face: ``BackendConformance`` and the ``xpusim_host`` fixture.

A backend author subclasses :class:`BackendConformance` in a test module and names the
backend and device; pytest then collects a parametrized set of checks::

    from xpusim.engine.testing import BackendConformance
    from my_chip import MyChipBackend

    class TestMyChip(BackendConformance):
        backend = MyChipBackend()
        device = "my-chip-1"

The rules and the probe models live in :mod:`xpusim.engine.conformance`, which imports no
test runner; this module imports pytest and is meant to be imported only by pytest (a
test module, a ``conftest.py``, or ``-p``). It re-exports the checks, so
``from xpusim.engine.testing import check_monotone`` keeps working in tests.

Use as a pytest plugin: ``pytest -p xpusim.engine.testing`` (or ``pytest_plugins =
["xpusim.engine.testing"]`` in a root ``conftest.py``) adds the ``xpusim_host`` fixture; the
class works without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest

from xpusim.engine.backend import Backend, Compiled
from xpusim.engine.conformance import (
    PROBES,
    ConformanceError,
    Probe,
    ProbeMLP,
    ProbeUnavailable,
    check_collectives_grow,
    check_costs_positive,
    check_deterministic,
    check_energy_floor,
    check_fit_consistent,
    check_monotone,
    check_support_answer,
    make_system,
    probe_model,
    shared_host,
)
from xpusim.engine.device import DeviceSpec
from xpusim.engine.host import Host
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import System

__all__ = [
    "PROBES",
    "BackendConformance",
    "ConformanceError",
    "Probe",
    "ProbeMLP",
    "ProbeUnavailable",
    "check_collectives_grow",
    "check_costs_positive",
    "check_deterministic",
    "check_energy_floor",
    "check_fit_consistent",
    "check_monotone",
    "check_support_answer",
    "make_system",
    "probe_model",
    "shared_host",
    "xpusim_host",
]

_PROBES_BY_NAME = {p.name: p for p in PROBES}


@pytest.fixture(scope="session")
def xpusim_host() -> Host:
    """A host of every installed plugin (fixture of the ``xpusim.engine.testing`` pytest plugin)."""
    return shared_host()


class BackendConformance:
    """Subclass in a test module to run every check against a backend.

    Set ``backend`` (an instance) or ``backend_name`` (looked up in the host registry),
    and ``device`` (a catalog name; default :meth:`default_device`). ``options`` become
    the system's ``options``; ``collective_group`` is the device count of the collective
    check. Override the ``conformance_backend`` fixture to parametrize over several
    backends. A probe the backend refuses is checked for its reason, and the checks that
    need a compiled model are skipped for it with that reason.
    """

    backend: ClassVar[Backend | None] = None
    backend_name: ClassVar[str] = ""
    device: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Any]] = {}
    collective_group: ClassVar[int] = 8

    def default_device(self, backend: Backend) -> str:
        """The device to check when ``device`` is not set: the first in name order."""
        names = sorted(backend.devices())
        if not names:
            raise ConformanceError(f"backend {backend.name!r} has an empty device catalog.")
        return names[0]

    # -- fixtures -----------------------------------------------------------------------

    @pytest.fixture
    def conformance_host(self) -> Host:
        """The host whose registry supplies model families (and named backends)."""
        return shared_host()

    @pytest.fixture
    def conformance_backend(self, conformance_host: Host) -> Backend:
        """The backend under test."""
        if self.backend is not None:
            return self.backend
        if self.backend_name:
            return conformance_host.backends.get(self.backend_name, where=type(self).__name__)
        raise pytest.UsageError(f"{type(self).__name__}: set `backend` or `backend_name`.")

    @pytest.fixture
    def conformance_device(self, conformance_backend: Backend) -> DeviceSpec:
        """The catalog device under test."""
        name = self.device or self.default_device(conformance_backend)
        devices = conformance_backend.devices()
        if name not in devices:
            raise pytest.UsageError(
                f"{type(self).__name__}: device {name!r} is not in backend "
                f"{conformance_backend.name!r}'s catalog: {sorted(devices)}"
            )
        return devices[name]

    @pytest.fixture
    def conformance_system(self, conformance_device: DeviceSpec) -> System:
        """One device of the device under test."""
        return make_system(conformance_device, 1, options=self.options, name="conformance")

    @pytest.fixture(params=[p.name for p in PROBES])
    def probe(self, request: pytest.FixtureRequest) -> Probe:
        """Each probe model in turn."""
        return _PROBES_BY_NAME[str(request.param)]

    @pytest.fixture
    def conformance_model(self, probe: Probe, conformance_host: Host) -> ModelGraph:
        """The probe's model (skipped when its family is not registered)."""
        try:
            return probe_model(probe, conformance_host)
        except ProbeUnavailable as exc:
            pytest.skip(str(exc))

    @pytest.fixture
    def conformance_compiled(
        self,
        conformance_backend: Backend,
        conformance_model: ModelGraph,
        conformance_system: System,
        probe: Probe,
    ) -> Iterator[Compiled]:
        """The probe compiled on one device; skipped, with the backend's reason, when the
        backend refuses it (:meth:`test_support_is_an_answer` checks that reason)."""
        answer = conformance_backend.supports(conformance_model, probe.workload)
        if not answer.ok:
            pytest.skip(f"{conformance_backend.name} refuses {probe.name}: {answer.reason}")
        yield conformance_backend.compile(conformance_model, conformance_system)

    # -- checks -------------------------------------------------------------------------

    def test_support_is_an_answer(
        self,
        conformance_backend: Backend,
        conformance_model: ModelGraph,
        conformance_system: System,
        probe: Probe,
    ) -> None:
        """supports() never raises; a refusal has a reason; an acceptance compiles and prices."""
        check_support_answer(
            conformance_backend, conformance_model, probe.workload, conformance_system
        )

    def test_costs_are_positive(self, conformance_compiled: Compiled, probe: Probe) -> None:
        """Seconds and joules are finite and positive; the breakdown splits the seconds."""
        check_costs_positive(conformance_compiled, probe.shapes())

    def test_costs_are_monotone_in_shape(
        self, conformance_compiled: Compiled, probe: Probe
    ) -> None:
        """A larger step never costs less, and the largest of a sweep costs more."""
        for what, sweep in probe.sweeps.items():
            check_monotone(conformance_compiled, sweep, what)

    def test_costs_are_deterministic(
        self,
        conformance_backend: Backend,
        conformance_compiled: Compiled,
        conformance_system: System,
        probe: Probe,
    ) -> None:
        """Two compilations price every shape identically."""
        check_deterministic(
            conformance_backend, conformance_compiled.model, conformance_system, probe.shapes()
        )

    def test_energy_at_least_idle_power_times_time(
        self, conformance_compiled: Compiled, probe: Probe
    ) -> None:
        """Each step's joules are at least idle watts × seconds × devices."""
        if not check_energy_floor(conformance_compiled, probe.shapes()):
            pytest.skip("the device publishes no maximum power: energy is 'not known'")

    def test_fit_is_consistent_with_memory(
        self, conformance_compiled: Compiled, probe: Probe
    ) -> None:
        """fits == (need <= have); need grows with batch and KV tokens; too much KV does not fit."""
        check_fit_consistent(conformance_compiled, probe.kv)

    def test_collectives_grow_with_size(
        self, conformance_backend: Backend, conformance_device: DeviceSpec
    ) -> None:
        """Collective seconds are non-decreasing in the payload, and 1 GB > 1 kB."""
        if conformance_device.scale_up is None and conformance_device.scale_out is None:
            pytest.skip(
                f"device {conformance_device.name!r} declares no links: a single-device part"
            )
        system = make_system(conformance_device, self.collective_group, options=self.options)
        check_collectives_grow(conformance_backend, system)
