"""Sizes that would make a run hang or exhaust memory, refused before the work.

* Every model dimension of every family has an upper bound far above any published model
  (``plugins/models/common.py`` ``SIZE_LIMITS``): a scenario's value, a preset's override
  or a ``config.json`` value above it is a scenario error naming the key.
* Every workload kind estimates the events of a system's simulation before it starts
  (``engine/budget.py``); an estimate above the budget, or a simulated time beyond 30
  years, is refused with the estimate, the budget and how to raise it. Shipped scenarios
  stay far below the default budget.
* Running out of memory while compiling a model is an input error (exit 2), as it is
  while simulating.
* ``XPUSIM_LOAD_PLUGINS`` naming no plugin or an unknown one is refused.
* The console script handles Ctrl-C before it imports anything of xpusim's.

Nothing here depends on the machine's speed: sizes are bounded by counts, and subprocess
timeouts only guard against hangs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from xpusim.engine import budget
from xpusim.engine.cli import app
from xpusim.engine.errors import PluginError, ScenarioError
from xpusim.engine.host import default_host, get_plugin_manager
from xpusim.engine.run import load
from xpusim.plugins.models.common import SIZE_LIMITS, SizeLimit
from xpusim.plugins.models.custom import InputSpec, TorchModelConfig
from xpusim.plugins.models.encoder import EncoderConfig
from xpusim.plugins.models.small import CNNConfig, MLPConfig
from xpusim.plugins.models.snn import SnnConfig
from xpusim.plugins.models.transformer import DecoderConfig
from xpusim.plugins.models.vision import ResNetConfig

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "bad_inputs"
XPUSIM = Path(sys.executable).with_name("xpusim")

CONFIGS: tuple[type[BaseModel], ...] = (
    DecoderConfig,
    EncoderConfig,
    ResNetConfig,
    MLPConfig,
    CNNConfig,
    SnnConfig,
)
"""Every model family's options, as ``validate_spec`` checks them."""

UNBOUNDED_ON_PURPOSE = {"seed"}
"""Integer options that size nothing (the spiking network's weight seed)."""


def _int_like(annotation: Any) -> bool:
    text = str(annotation)
    return "int" in text.lower() and "Literal" not in text


def _bounded_by_pydantic(cls: type[BaseModel], name: str) -> bool:
    """Whether field ``name`` carries its own ``le``/``lt`` bound."""
    for meta in cls.model_fields[name].metadata:
        if getattr(meta, "le", None) is not None or getattr(meta, "lt", None) is not None:
            return True
    return False


@pytest.mark.parametrize("cls", CONFIGS, ids=[c.__name__ for c in CONFIGS])
def test_every_integer_model_option_is_bounded(cls: type[BaseModel]) -> None:
    """A new integer field of a family's options cannot slip in without a bound: it is in
    the size limits, carries its own ``le``, or sizes nothing."""
    limits: dict[str, SizeLimit] = getattr(cls, "SIZE_LIMITS", SIZE_LIMITS)
    for name, field in cls.model_fields.items():
        if not _int_like(field.annotation) or name in UNBOUNDED_ON_PURPOSE:
            continue
        assert name in limits or _bounded_by_pydantic(cls, name), (cls.__name__, name)


@pytest.mark.parametrize(
    ("spec", "key", "limit"),
    [
        ({"family": "gpt", "preset": "gpt2", "layers": 100_000_000}, "model.layers", "10,000"),
        ({"family": "gpt", "preset": "gpt2", "hidden": 2**21}, "model.hidden", "1,048,576"),
        ({"family": "gpt", "preset": "gpt2", "kv_heads": 100_000}, "model.kv_heads", "65,536"),
        ({"family": "gpt", "preset": "gpt2", "head_dim": 2**30}, "model.head_dim", "1,048,576"),
        ({"family": "gpt", "preset": "gpt2", "sliding_window": 10**9}, "model.sliding_window", ""),
        ({"family": "gpt", "preset": "gpt2", "vocab": 1e12}, "model.vocab", "16,777,216"),
        ({"family": "gpt", "preset": "gpt2", "mtp_layers": 10**6}, "model.mtp_layers", "10,000"),
        ({"family": "hf", "preset": "qwen2.5-7b", "seq_len": 10**10}, "model.seq_len", ""),
        ({"family": "bert", "preset": "bert-base", "layers": 10**6}, "model.layers", "10,000"),
        ({"family": "mlp", "sizes": [784, 10**9, 10]}, "model.sizes", "16,777,216"),
        ({"family": "cnn", "image_size": 10**6}, "model.image_size", "65,536"),
        ({"family": "resnet", "preset": "resnet-50", "width": 10**7}, "model.width", ""),
        ({"family": "snn", "preset": "kws-2layer", "layers": [8] * 20_000}, "model.layers", ""),
    ],
)
def test_model_dimension_above_its_limit(spec: dict[str, Any], key: str, limit: str) -> None:
    """Each family refuses a dimension above its bound at once, naming the key."""
    host = default_host()
    family = host.models.get(str(spec["family"]))
    with pytest.raises(ScenarioError) as info:
        family.configure(spec)
    text = str(info.value)
    assert text.startswith(key) and limit in text, text


def test_every_preset_is_within_the_limits() -> None:
    """No published configuration comes near a limit: every preset of every family
    configures."""
    host = default_host()
    for name, family in host.models.items():
        for preset in family.presets:
            family.configure({"family": name, "preset": preset})


def test_torch_model_inputs_are_sized_by_the_user_module() -> None:
    """A ``family: torch`` model's sizes live in its allowed user module (traced on the
    meta device, which allocates nothing); its options hold only input shapes."""
    assert "shape" in InputSpec.model_fields and "inputs" in TorchModelConfig.model_fields


def test_shipped_scenarios_are_far_below_the_default_budget() -> None:
    """The default budget leaves every shipped scenario at least 50 times room."""
    host = default_host()
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        sc = load(path, host)
        for system in sc.systems:
            work = sc.workload.work(sc.workload_config, system, sc.model_for(system))
            assert work is not None, (path.name, system.name)
            assert work.events * 50 <= budget.DEFAULT_MAX_EVENTS, (path.name, work.how)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", budget.DEFAULT_MAX_EVENTS), ("1e9", 10**9), ("2_000", 2000)],
)
def test_budget_from_the_environment(
    raw: str, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``XPUSIM_MAX_EVENTS`` sets the budget; unset or empty is the default."""
    monkeypatch.setenv(budget.ENV, raw)
    assert budget.max_events() == expected


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "nan", "inf", "1e16", "lots"])
def test_junk_budget_is_refused(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget that is not a whole number from 1 to 1e15 names the variable."""
    monkeypatch.setenv(budget.ENV, raw)
    with pytest.raises(budget.BudgetError, match=budget.ENV):
        budget.max_events()


def test_raising_the_budget_lets_a_large_run_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--max-events`` raises the budget: the same scenario that is refused by default
    validates with a budget above its estimate."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(budget.ENV, "")  # the default; --max-events sets it: undone after
    base = [
        "validate",
        str(CORPUS / "training_base.yaml"),
        "--set",
        "workload.global_batch=10000000",
    ]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 2 and "work budget" in refused.stderr
    allowed = CliRunner().invoke(app, [*base, "--max-events", "1e9"])
    assert allowed.exit_code == 0, allowed.stderr
    assert "valid" in allowed.stdout


def test_horizon_beyond_thirty_years_is_refused() -> None:
    """A run whose arrivals span more than 1e9 s is refused naming the span."""
    work = budget.Work(events=10, how="x", shrink="workload.arrivals", horizon_s=2e10)
    with pytest.raises(budget.BudgetError, match="about 30 years"):
        budget.check_work(work, "s.yaml:6, at workload", "h100")


def test_memory_error_while_compiling_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend that runs out of memory compiling the model ends the run with exit 2
    naming the model and the fix, and writes nothing (it was a failed system, exit 0)."""
    host = default_host()
    backend = host.backends.get("gpu")

    def exhausted(self: Any, model: Any, system: Any) -> Any:
        raise MemoryError("cannot allocate 1 TiB")

    monkeypatch.setattr(type(backend), "compile", exhausted)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(CORPUS / "base.yaml"), "--out", str(out), "-q"])
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    message = result.stderr.strip()
    assert "at model" in message and "ran out of memory" in message, message
    assert "Traceback" not in message and not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "expect"),
    [("", "names no plugin"), ("gpu, nosuch", "'nosuch'")],
)
def test_load_plugins_environment_must_name_installed_plugins(
    value: str, expect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``XPUSIM_LOAD_PLUGINS`` empty, or naming a plugin not installed, is refused with
    the installed names instead of silently loading nothing."""
    monkeypatch.setenv("XPUSIM_LOAD_PLUGINS", value)
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    text = str(info.value)
    assert expect in text and "gpu" in text and "XPUSIM_LOAD_PLUGINS" in text


def _process(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own process (the timeout only guards against a hang)."""
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_load_plugins_environment_through_the_command(tmp_path: Path) -> None:
    """Through the real command: exit 2, one paragraph naming the unknown plugin."""
    if not XPUSIM.exists():
        pytest.skip("the xpusim console script is not installed beside this interpreter")
    env = {**os.environ, "XPUSIM_LOAD_PLUGINS": "gpu,nosuch", "COLUMNS": "200"}
    proc = _process([str(XPUSIM), "validate", str(CORPUS / "base.yaml")], tmp_path, env)
    message = proc.stderr.strip()
    assert proc.returncode == 2, message
    assert message.startswith("error: ") and "\n" not in message and "'nosuch'" in message


ENTRY_DRIVER = """
import importlib.abc, os, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    # a Ctrl-C that arrives while the command line imports typer
    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            os.kill(os.getpid(), signal.SIGINT)
        return None

import xpusim.start
sys.meta_path.insert(0, Interrupt())
sys.argv = ["xpusim", "version"]
xpusim.start.main()
"""

RESTORE_DRIVER = """
import json, signal, sys
import xpusim.start
before = sorted(m for m in sys.modules if m.startswith(("xpusim", "typer", "pluggy")))
sys.argv = ["xpusim", "version"]
try:
    xpusim.start.main()
except SystemExit:
    pass
print(json.dumps({"before": before,
                  "restored": signal.getsignal(signal.SIGINT) is signal.default_int_handler}))
"""


def test_console_script_enters_through_the_light_module() -> None:
    """The ``xpusim`` console script's entry point is :func:`xpusim.start.main`, and the
    installed script (where installed) imports it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["xpusim"] == "xpusim.start:main"
    if XPUSIM.exists():
        assert "from xpusim.start import main" in XPUSIM.read_text(encoding="utf-8")


def test_ctrl_c_while_the_command_line_imports(tmp_path: Path) -> None:
    """A SIGINT delivered while the command line is being imported ends with status 130
    and the one interrupt line, no traceback."""
    proc = _process([sys.executable, "-c", ENTRY_DRIVER], tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip() == "interrupted: stopped cleanly, nothing was written."
    assert proc.stdout == ""


def test_entry_module_imports_nothing_and_restores_ctrl_c(tmp_path: Path) -> None:
    """Importing the entry module imports no other xpusim module, typer or pluggy; once
    the command line is imported, Ctrl-C is Python's ``KeyboardInterrupt`` again (the
    command's own clean-up handles it)."""
    proc = _process([sys.executable, "-c", RESTORE_DRIVER], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["before"] == ["xpusim", "xpusim.start"]
    assert report["restored"] is True
