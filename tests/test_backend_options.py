"""Backend options are a declared schema: scenario loading rejects what a backend does not
declare, and every option a backend page documents is accepted."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest

from xpusim import hookimpl
from xpusim.engine.backend import Backend, NoOptions
from xpusim.engine.errors import ScenarioError
from xpusim.engine.host import Host
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.cpu.backend import CpuBackend
from xpusim.plugins.gpu.backend import GpuBackend
from xpusim.plugins.spinnaker.backend import SpinnakerBackend
from xpusim.plugins.tpu.backend import TpuBackend

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "backends"

Writer = Callable[..., Path]

SCENARIO = """\
name: options-run
model: {family: fake, preset: small}
workload: {kind: batch, steps: 2, batch: 4}
systems:
  - name: h100
    backend: gpu
    device: h100-sxm
    options:
      calibraton: fit.json
"""


class _GpuPlugin:
    """Registers the real GPU backend beside the fake model and workload."""

    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(GpuBackend())


@pytest.fixture
def gpu_host(pm: pluggy.PluginManager) -> Host:
    """The fake plugin plus the gpu backend."""
    from tests.fakes import FakePlugin

    pm.register(FakePlugin(), name="fakes")
    pm.register(_GpuPlugin(), name="gpu-only")
    return Host(pm)


def test_misspelt_option_names_file_line_and_nearest(gpu_host: Host, write_yaml: Writer) -> None:
    """A misspelt backend option exits with the file, line, key path and the nearest
    valid option, like any other unknown scenario key."""
    path = write_yaml(SCENARIO)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, gpu_host)
    msg = str(err.value)
    assert f"{path}:9" in msg
    assert "systems.0.options.calibraton" in msg
    assert "Did you mean 'calibration'?" in msg


def test_unknown_option_from_set_lists_valid_keys(gpu_host: Host, write_yaml: Writer) -> None:
    """An option no backend declares, given with --set, is refused and the message
    lists every option the backend declares."""
    path = write_yaml(SCENARIO.replace("      calibraton: fit.json\n", "      {}\n"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, gpu_host, ["systems.0.options.speculative_decoding=true"])
    msg = str(err.value)
    assert "unknown key 'speculative_decoding'" in msg
    for key in GpuBackend.options.model_fields:
        assert key in msg


def test_bad_option_value_is_refused_at_load(gpu_host: Host, write_yaml: Writer) -> None:
    """A declared option with a value outside its choices fails at load with the choices."""
    path = write_yaml(SCENARIO.replace("calibraton: fit.json", "decode_attention: per-token"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, gpu_host)
    assert "'grouped'" in str(err.value) and "'per-head'" in str(err.value)


def test_valid_options_reach_the_system(gpu_host: Host, write_yaml: Writer) -> None:
    """Declared options pass validation and reach ``System.options`` as given."""
    path = write_yaml(SCENARIO.replace("calibraton: fit.json", "decode_attention: per-head"))
    sc = load_scenario(path, gpu_host, ["systems.0.options.collective_algorithm=ring"])
    assert sc.systems[0].options == {"decode_attention": "per-head", "collective_algorithm": "ring"}


def _documented(page: Path) -> dict[str, str]:
    """Option name -> documented default, from the page's ``## Options`` table."""
    text = page.read_text(encoding="utf-8")
    section = text.split("## Options (`systems[].options`)", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|([^|]*)\|", section, flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


BACKENDS: list[tuple[str, type[Backend]]] = [
    ("cpu", CpuBackend),
    ("gpu", GpuBackend),
    ("spinnaker", SpinnakerBackend),
    ("tpu", TpuBackend),
]

EXAMPLES: dict[str, dict[str, Any]] = {
    "cpu": {
        "threads": 2,
        "repeats": 3,
        "warmup": 1,
        "dtype": "bf16",
        "profile": False,
        "clock": "cpu",
        "calibration": "cal.json",
    },
    "gpu": {
        "calibration": "fit.json",
        "efficiency": {"link_fraction": 0.8},
        "collective_algorithm": "tree",
        "decode_attention": "per-head",
        "attention_kernel": "torch-sdpa",
        "nccl_nvls": False,
    },
    "spinnaker": {
        "time_scale_factor": 2,
        "counter": "nest",
        "reports": "r",
        "use_board": False,
        "copies": 2,
    },
    "tpu": {},
}


@pytest.mark.parametrize(("name", "cls"), BACKENDS)
def test_documented_options_are_the_declared_ones(name: str, cls: type[Backend]) -> None:
    """Each built-in backend's page documents exactly the options its schema declares."""
    assert set(_documented(DOCS / f"{name}.md")) == set(cls.options.model_fields)


@pytest.mark.parametrize(("name", "cls"), BACKENDS)
def test_documented_options_are_accepted(name: str, cls: type[Backend]) -> None:
    """A value for every documented option validates and is kept as given."""
    given = EXAMPLES[name]
    assert set(given) == set(_documented(DOCS / f"{name}.md"))
    assert cls().check_options(given) == given


def test_backend_without_options_refuses_every_key() -> None:
    """The default schema declares no option, so any key is refused."""
    assert TpuBackend.options is NoOptions
    with pytest.raises(ValueError, match="speculative_decoding"):
        NoOptions.model_validate({"speculative_decoding": True})


def test_attention_kernel_option_is_checked(gpu_host: Host, write_yaml: Writer) -> None:
    """``options.attention_kernel`` takes the kernel builds the GPU cost model knows; any
    other value is refused when the scenario loads, naming the choices."""
    path = write_yaml(SCENARIO.replace("calibraton: fit.json", "attention_kernel: cudnn"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, gpu_host)
    assert "'flash-attn'" in str(err.value) and "'torch-sdpa'" in str(err.value)
    path = write_yaml(SCENARIO.replace("calibraton: fit.json", "attention_kernel: torch-sdpa"))
    sc = load_scenario(path, gpu_host)
    assert GpuBackend.attention_kernel(sc.systems[0]) == "torch-sdpa"
