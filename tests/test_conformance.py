"""The conformance kit (engine.testing): every built-in backend passes it, and each of
its checks rejects a backend that breaks the rule it states."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.fakes import FakeBackend, FakeCompiled, FakeModel, fake_device
from xpusim.engine.backend import Backend, Compiled, Cost, Fit, Support
from xpusim.engine.device import DeviceSpec
from xpusim.engine.graph import Collective, Phase, Shape
from xpusim.engine.model import ModelGraph
from xpusim.engine.system import System
from xpusim.engine.testing import (
    BackendConformance,
    ConformanceError,
    ProbeMLP,
    check_collectives_grow,
    check_costs_positive,
    check_deterministic,
    check_energy_floor,
    check_fit_consistent,
    check_monotone,
    check_support_answer,
    make_system,
    shared_host,
)

BUILTIN_BACKENDS = shared_host().backends.names()
"""Every backend installed plugins register; new built-ins join automatically."""

FIXED_CPU_CALIBRATION = Path(__file__).parent / "data" / "cpu-calibration-1t.json"
"""A calibration measured once and committed (see tests/test_cpu_backend.py)."""

PREFERRED_DEVICE: Mapping[str, str] = {
    "gpu": "h100-sxm",
    # the analytic twin of this machine: the measured `host` device times real kernels,
    # whose noise is not what the kit's exact determinism check is about
    "cpu": "host-analytic",
}
"""Device checked per backend where the first catalog name is not the representative one."""


class TestBuiltinBackends(BackendConformance):
    """Every conformance check against every registered backend."""

    @pytest.fixture(params=BUILTIN_BACKENDS)
    def conformance_backend(self, request: pytest.FixtureRequest) -> Backend:
        """Each registered backend in turn."""
        return shared_host().backends.get(str(request.param))

    def default_device(self, backend: Backend) -> str:
        """The representative device of each backend."""
        return PREFERRED_DEVICE.get(backend.name) or super().default_device(backend)

    @pytest.fixture
    def conformance_system(self, conformance_device: DeviceSpec) -> System:
        """One device of each backend; the cpu backend prices from the committed calibration,
        so that no check compares prices from rates measured on the machine running it."""
        options = (
            {"calibration": str(FIXED_CPU_CALIBRATION)}
            if conformance_device.backend == "cpu"
            else {}
        )
        return make_system(conformance_device, 1, options=options, name="conformance")


def test_builtin_backends_are_found() -> None:
    """The kit runs over the registry's backends, the GPU backend among them."""
    assert "gpu" in BUILTIN_BACKENDS


# --- each check rejects a backend that breaks its rule ----------------------------------

FORWARD = [Shape(Phase.FORWARD, batch=b) for b in (1, 16, 256, 4096)]


def _system(count: int = 1) -> System:
    return make_system(fake_device("chip-b", 80), count)


class Shrinking(FakeCompiled):
    """Gets cheaper as the batch grows."""

    def _cost(self, shape: Shape) -> Cost:
        t = 1.0 / max(1, shape.new_tokens)
        return Cost(t, 400.0 * t, {"compute": t})


class BelowIdle(FakeCompiled):
    """Reports less energy than idle power over the step."""

    def _cost(self, shape: Shape) -> Cost:
        t = 1e-3 * max(1, shape.new_tokens)
        return Cost(t, 10.0 * t, {"compute": t})


class BadBreakdown(FakeCompiled):
    """A breakdown that does not add up to the step's seconds."""

    def _cost(self, shape: Shape) -> Cost:
        t = 1e-3 * max(1, shape.new_tokens)
        return Cost(t, 400.0 * t, {"compute": t / 2})


class LyingFit(FakeCompiled):
    """Says everything fits."""

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        f = super().fit(kv_tokens=kv_tokens, batch=batch, training=training)
        return Fit(True, f.need_bytes, f.have_bytes)


_TICK = itertools.count(1)


class Drifting(FakeCompiled):
    """Prices the same shape differently on each compilation."""

    def __init__(self, system: System, model: ModelGraph) -> None:
        super().__init__(system, model)
        self.bias = next(_TICK) * 1e-6

    def _cost(self, shape: Shape) -> Cost:
        c = super()._cost(shape)
        t = c.seconds + self.bias
        return Cost(t, 400.0 * t, {"compute": t})


class CompiledBy(FakeBackend):
    """A fake backend compiling into a given Compiled class."""

    def __init__(self, cls: type[Compiled]) -> None:
        super().__init__()
        self.cls = cls

    def compile(self, model: ModelGraph, system: System) -> Compiled:
        return self.cls(system, model)


def test_monotone_check_rejects_a_cost_that_falls() -> None:
    """A step that gets cheaper as the batch grows is refused, naming both shapes."""
    compiled = Shrinking(_system(), FakeModel())
    with pytest.raises(ConformanceError, match="must not fall"):
        check_monotone(compiled, FORWARD, "batch")


def test_monotone_check_accepts_a_growing_cost() -> None:
    """A roofline cost grows over a batch sweep and returns one time per shape."""
    secs = check_monotone(FakeCompiled(_system(), FakeModel()), FORWARD, "batch")
    assert len(secs) == len(FORWARD) and secs[-1] > secs[0]


def test_energy_check_rejects_joules_below_idle() -> None:
    """Energy below idle watts × seconds is refused; the fake's 400 W steps pass."""
    with pytest.raises(ConformanceError, match="below idle power"):
        check_energy_floor(BelowIdle(_system(), FakeModel()), FORWARD)
    assert check_energy_floor(FakeCompiled(_system(), FakeModel()), FORWARD)


def test_positive_check_rejects_a_breakdown_that_does_not_add_up() -> None:
    """A breakdown must split the step's seconds."""
    with pytest.raises(ConformanceError, match="must split the seconds"):
        check_costs_positive(BadBreakdown(_system(), FakeModel()), FORWARD)


def test_fit_check_rejects_a_fit_that_ignores_memory() -> None:
    """fits=True with need > have is refused."""
    with pytest.raises(ConformanceError, match=r"fits must mean need <= have|yet fit"):
        check_fit_consistent(LyingFit(_system(), FakeModel()), kv=True)
    check_fit_consistent(FakeCompiled(_system(), FakeModel()), kv=True)


def test_determinism_check_rejects_drifting_costs() -> None:
    """Two compilations that price one shape differently are refused."""
    with pytest.raises(ConformanceError, match="two compilations disagree"):
        check_deterministic(CompiledBy(Drifting), FakeModel(), _system(), FORWARD)
    check_deterministic(FakeBackend(), FakeModel(), _system(), FORWARD)


def test_support_check_rejects_raising_and_silent_refusals() -> None:
    """supports() that raises, or refuses without a reason, is refused; a reasoned
    refusal is returned as is."""

    class Raising(FakeBackend):
        def supports(self, model: ModelGraph, workload: str) -> Support:
            raise RuntimeError("no idea")

    class Silent(FakeBackend):
        def supports(self, model: ModelGraph, workload: str) -> Support:
            return Support(False)

    with pytest.raises(ConformanceError, match="raised RuntimeError"):
        check_support_answer(Raising(), FakeModel(), "batch", _system())
    with pytest.raises(ConformanceError, match="without a reason"):
        check_support_answer(Silent(), FakeModel(), "batch", _system())
    answer = check_support_answer(FakeBackend(), FakeModel(kind="spiking"), "batch", _system())
    assert not answer.ok and "spiking" in answer.reason


def test_support_check_rejects_an_acceptance_it_cannot_honour() -> None:
    """Accepting a model and then failing to price it is refused."""

    class Broken(FakeCompiled):
        def _cost(self, shape: Shape) -> Cost:
            raise KeyError("op kind")

    with pytest.raises(ConformanceError, match="accepted workload"):
        check_support_answer(CompiledBy(Broken), FakeModel(), "batch", _system())


def test_collective_check_rejects_time_falling_with_size() -> None:
    """A collective that gets faster with a larger payload is refused; the fake's
    linear one passes."""

    class Backwards(FakeBackend):
        def collective_seconds(
            self, kind: Collective, nbytes: float, group: int, system: System
        ) -> float:
            return 1.0 / nbytes

    with pytest.raises(ConformanceError, match="must not be faster"):
        check_collectives_grow(Backwards(), _system(8))
    check_collectives_grow(FakeBackend(), _system(8))


def test_probe_mlp_graph_matches_its_torch_module() -> None:
    """The engine-only probe's parameter count is its real module's, and tensor
    parallelism splits the GEMMs and adds one all-reduce."""
    probe = ProbeMLP(width=64, hidden=256)
    module = probe.module("meta")
    assert probe.info.params == sum(p.numel() for p in module.parameters())
    one = probe.build(Shape(Phase.FORWARD, batch=8))
    two = probe.build(Shape(Phase.FORWARD, batch=8), make_system(fake_device(), 2, 2).parallelism)
    assert two.flops == pytest.approx(one.flops / 2)
    assert [o.collective for o in two.ops if o.collective] == [Collective.ALL_REDUCE]
    (x,) = probe.example_inputs(Shape(Phase.FORWARD, batch=8))
    assert tuple(module(x).shape) == (8, 64)
