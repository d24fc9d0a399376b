"""The spiking model family ``snn``: feed-forward leaky integrate-and-fire networks.

A member is a stack of dense layers of PyNN ``IF_curr_exp`` neurons fed by ``inputs``
spike sources (Poisson-rate encoded, or given spike trains). Its weights come from an
ANN-to-SNN conversion of an MLP of the same shape (rate coding, data-based weight
normalisation and threshold normalisation; see :func:`convert_mlp`), so the network is a
"trained-style" one whose activity is that of a converted classifier, not of random
noise. The MLP is seeded (no training data ships with xpusim); a user with a trained
``torch.nn.Sequential`` of ``Linear``/``ReLU`` converts it the same way.

:meth:`SnnModelGraph.build` of a :attr:`~xpusim.engine.graph.Phase.SPIKING` shape
``(batch=b, timesteps=T)`` returns, per layer,

* a ``MATMUL`` op ``(b × in) @ (in × out)`` with ``count=T``: the time-stepped dense
  synaptic input a GPU or TPU computes every step,
* an ``ELEMENTWISE`` op over ``b × out`` neurons with ``count=T``: the LIF update,
* a ``SPIKING`` op with ``count=T`` and zero FLOPs whose ``attrs`` carry what an
  event-driven backend prices: ``neurons``, ``synapses``, ``pre_neurons``,
  ``spikes_in`` (pre-synaptic spikes per step, whole batch), ``spikes_out``,
  ``synaptic_events`` (per step, whole batch), ``rate_in_hz``, ``rate_out_hz``, ``layer``.

The activity comes from running the network in the engine's exact LIF simulator
(:mod:`xpusim.engine.lif`) on Poisson inputs at ``input_rate``: measured, not guessed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xpusim.engine import lif
from xpusim.engine.errors import ScenarioError, UnsupportedError
from xpusim.engine.graph import Op, OpGraph, OpKind, Phase, Shape, dtype_bytes
from xpusim.engine.model import ModelFamily, ModelInfo
from xpusim.engine.qty import Duration, Rate
from xpusim.engine.spiking import SpikingModel
from xpusim.engine.system import Parallelism
from xpusim.plugins.models.common import MAX_LAYERS, ModelDtype, SizeLimit, validate_spec

__all__ = [
    "FAMILIES",
    "SnnConfig",
    "SnnFamily",
    "SnnModelGraph",
    "convert_mlp",
    "spiking_mlp_class",
]

LIF_FLOPS_PER_NEURON = 12
"""FLOPs of one ``IF_curr_exp`` neuron-step on a dense backend: two current decays and
adds, the exponential-Euler membrane update (4), threshold compare, reset select and the
refractory counter."""

LIF_STATE_WORDS = 4
"""Per-neuron state words read and written each step (v, exc and inh current, refractory)."""


class SnnConfig(BaseModel):
    """The ``model:`` block of an ``snn`` member.

    ``inputs`` spike sources feed ``layers`` (sizes of the LIF layers, the last is the
    output); ``input_rate`` is the Poisson rate of a fully active input (rate coding maps
    a feature in ``[0, 1]`` to ``[0, input_rate]``); ``conversion_rate`` the full-scale
    rate converted weights are tuned for (default ``input_rate``; another value drives
    the same network with sparser or denser inputs); ``timestep`` the simulation step;
    ``weights`` ``converted`` (a seeded MLP converted to an SNN) or ``random``
    (Gaussian, scaled by ``weight_scale`` nA); ``connectivity`` the fraction of synapses
    kept (1 = dense); ``calibration_samples`` how many samples the LIF simulator runs to
    measure activity; ``percentile`` and ``threshold_gain`` tune the conversion
    (:func:`convert_mlp`).
    """

    model_config = ConfigDict(extra="forbid")

    SIZE_LIMITS: ClassVar[dict[str, SizeLimit]] = {
        "layers": SizeLimit(10_000_000, "neurons", items=MAX_LAYERS),
    }
    """Layer sizes of at most ten million neurons (as ``inputs``) and at most
    :data:`~xpusim.plugins.models.common.MAX_LAYERS` layers (see ``validate_spec``)."""

    name: str = "snn"
    dtype: ModelDtype = "bf16"
    inputs: int = Field(gt=0, le=10_000_000)
    layers: list[int]
    input_rate: Rate = 20.0
    conversion_rate: Rate | None = None
    timestep: Duration = 1e-3
    timesteps: int = Field(default=100, gt=0, le=10_000_000)
    weights: Literal["converted", "random"] = "converted"
    weight_scale: float = Field(default=0.5, gt=0)
    connectivity: float = Field(default=1.0, gt=0, le=1.0)
    percentile: float = Field(default=99.9, gt=0, le=100)
    threshold_gain: float = Field(default=2.0, gt=0, le=100)
    calibration_samples: int = Field(default=8, ge=1, le=1024)
    calibration_timesteps: int = Field(default=100, ge=1, le=100_000)
    seed: int = 0
    tau_m: Duration = 20e-3
    tau_syn: Duration = 5e-3
    tau_refrac: Duration = 1e-3

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one layer size")
        for n in v:
            if isinstance(n, bool) or n < 1:
                raise ValueError(f"layer sizes must be whole numbers of at least 1, got {n}")
        return v

    @field_validator("input_rate", "conversion_rate")
    @classmethod
    def _rate(cls, v: float | None) -> float | None:
        if v is not None and v > 1000.0:
            raise ValueError(
                f"an input rate of {v:g} Hz exceeds the 1000 Hz a 1 ms-step Poisson source "
                f"can emit (one spike per step); use at most 1000/s"
            )
        return v

    @model_validator(mode="after")
    def _timestep(self) -> SnnConfig:
        if self.timestep > 0.1:
            raise ValueError(
                f"timestep {self.timestep:g} s is longer than 100 ms; LIF networks step at 0.1-1 ms"
            )
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "kws-2layer": {"inputs": 390, "layers": [256, 256, 12], "input_rate": "20 Hz"},
    "mnist-snn": {"inputs": 784, "layers": [500, 10], "input_rate": "50 Hz"},
    "snn-20k": {
        "inputs": 10_000,
        "layers": [10_000],
        "connectivity": 0.01,
        "weights": "random",
        "weight_scale": 0.3,
        "input_rate": "20 Hz",
    },
}

PRESET_SOURCES: dict[str, str] = {
    "kws-2layer": "Blouw et al. 2019, 'Benchmarking Keyword Spotting Efficiency on "
    "Neuromorphic Hardware' (arXiv:1812.01739): 390 MFCC inputs, two "
    "256-neuron hidden layers, 12 keyword classes",
    "mnist-snn": "Diehl et al. 2015, 'Fast-classifying, high-accuracy spiking deep "
    "networks through weight and threshold balancing' (IJCNN): 784-500-10 "
    "style converted MLP",
    "snn-20k": "xpusim mapping benchmark: 20,000 neurons (10,000 Poisson inputs and 10,000 "
    "LIF), 1,000,000 synapses at 1% connectivity",
}


def spiking_mlp_class() -> Any:
    """The ``SpikingMLP`` torch module class (created on first use: torch loads lazily)."""
    global _SPIKING_MLP
    if _SPIKING_MLP is None:
        _SPIKING_MLP = _torch_module_class()
    return _SPIKING_MLP


_SPIKING_MLP: Any = None


def _torch_module_class() -> Any:
    import torch
    from torch import nn

    class SpikingMLP(nn.Module):
        """A feed-forward ``IF_curr_exp`` network as a torch module.

        ``forward(spikes)`` takes ``(timesteps, batch, inputs)`` spikes (0/1) and returns
        the output layer's spike counts ``(batch, outputs)``; it steps the same exact
        equations as :func:`xpusim.engine.lif.simulate`.
        """

        def __init__(self, sizes: list[int], params: lif.LIFParams, dt_ms: float) -> None:
            super().__init__()
            self.fc = nn.ModuleList(
                nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(sizes)
            )
            self.params = params
            self.dt_ms = dt_ms

        def forward(self, spikes: torch.Tensor) -> torch.Tensor:
            p, dt = self.params, self.dt_ms
            decay_m = math.exp(-dt / p.tau_m)
            de, di = math.exp(-dt / p.tau_syn_E), math.exp(-dt / p.tau_syn_I)
            init_e = (p.tau_syn_E / dt) * (1 - de)
            init_i = (p.tau_syn_I / dt) * (1 - di)
            refrac = math.ceil(p.tau_refrac / dt - 1e-9)
            steps, batch = spikes.shape[0], spikes.shape[1]
            fcs: list[nn.Linear] = [m for m in self.fc if isinstance(m, nn.Linear)]
            dev, dtype = spikes.device, fcs[0].weight.dtype
            v = [
                torch.full((batch, fc.out_features), p.v_rest, device=dev, dtype=dtype)
                for fc in fcs
            ]
            ie = [torch.zeros_like(x) for x in v]
            ii = [torch.zeros_like(x) for x in v]
            rf = [torch.zeros_like(x) for x in v]
            prev = [spikes[0].to(dtype) * 0] + [torch.zeros_like(x) for x in v]
            out = torch.zeros_like(v[-1])
            for t in range(steps):
                cur = [spikes[t].to(dtype)]
                for k, fc in enumerate(fcs):
                    w: torch.Tensor = fc.weight  # (out, in)
                    ie[k] = ie[k] + init_e * (prev[k] @ w.clamp(min=0).t())
                    ii[k] = ii[k] + init_i * (prev[k] @ (-w).clamp(min=0).t())
                    alpha = (ie[k] - ii[k] + p.i_offset) * (p.tau_m / p.cm) + p.v_rest
                    free = rf[k] <= 0
                    v[k] = torch.where(free, alpha - decay_m * (alpha - v[k]), v[k])
                    rf[k] = torch.where(free, rf[k], rf[k] - 1)
                    fired = free & (v[k] >= p.v_thresh)
                    v[k] = torch.where(fired, torch.full_like(v[k], p.v_reset), v[k])
                    rf[k] = torch.where(fired, torch.full_like(rf[k], refrac), rf[k])
                    cur.append(fired.to(dtype))
                    ie[k] = ie[k] * de
                    ii[k] = ii[k] * di
                out = out + cur[-1]
                prev = cur
            return out

    return SpikingMLP


def convert_mlp(
    ann: Any,
    calibration: np.ndarray,
    params: lif.LIFParams,
    rate_hz: float,
    percentile: float = 99.9,
    gain: float = 2.0,
) -> list[np.ndarray]:
    """Convert a ``torch.nn.Sequential`` of bias-free ``Linear`` and ``ReLU`` layers into
    the ``(n_pre, n_post)`` nA weight matrices of an ``IF_curr_exp`` network.

    Rate coding: an input feature ``x`` in ``[0, 1]`` becomes a Poisson train of
    ``x · input_rate``. Weight normalisation (:func:`~xpusim.engine.lif.normalise_weights`)
    uses the ANN's ReLU activations on ``calibration`` ``(samples, inputs)``; threshold
    normalisation (:func:`~xpusim.engine.lif.to_current`) scales to nA.
    """
    import torch
    from torch import nn

    for m in ann:
        if not isinstance(m, nn.Linear | nn.ReLU | nn.Identity | nn.Flatten):
            raise UnsupportedError(
                f"ANN-to-SNN conversion handles Linear and ReLU layers, not "
                f"{type(m).__name__}; replace it or convert that part by hand"
            )
    linears = [m for m in ann if isinstance(m, nn.Linear)]
    if not linears:
        raise ScenarioError("ANN-to-SNN conversion needs an nn.Sequential with Linear layers")
    acts: list[np.ndarray] = []
    with torch.no_grad():
        h = torch.as_tensor(np.asarray(calibration), dtype=torch.float32)
        for lin in linears:
            h = torch.relu(h @ lin.weight.t())
            acts.append(h.numpy())
    ws = [lin.weight.detach().numpy().T.astype(np.float64) for lin in linears]
    normed = lif.normalise_weights(ws, acts, percentile)
    return [lif.to_current(w, params, rate_hz, gain) for w in normed]


def _seeded_mlp(sizes: list[int], seed: int) -> Any:
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        lin = nn.Linear(a, b, bias=False)
        with torch.no_grad():
            # He initialisation, the scale a trained ReLU network's weights keep
            lin.weight.copy_(torch.randn(b, a, generator=gen) * math.sqrt(2.0 / a))
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


class SnnModelGraph(SpikingModel):
    """A configured spiking network: weights, its measured activity, and its op graphs."""

    def __init__(
        self, cfg: SnnConfig, preset: str | None = None, spikes: np.ndarray | None = None
    ) -> None:
        self.cfg = cfg
        self.preset = preset
        self._given_spikes = spikes
        self._variants: dict[str, SnnModelGraph] = {}
        sizes = [cfg.inputs, *cfg.layers]
        synapses = sum(round(a * b * cfg.connectivity) for a, b in itertools.pairwise(sizes))
        if synapses > 2_000_000_000:
            raise ScenarioError(
                f"model: {synapses:.3g} synapses is beyond what xpusim simulates (2e9); "
                f"reduce layers or connectivity"
            )
        self.info = ModelInfo(
            name=cfg.name,
            family="snn",
            kind="spiking",
            dtype=cfg.dtype,
            params=float(synapses),
            active_params=float(synapses),
            param_bytes=float(synapses) * dtype_bytes(cfg.dtype),
            layers=len(cfg.layers),
            config=cfg.model_dump(),
        )

    # --- the network ------------------------------------------------------------------

    @property
    def params(self) -> lif.LIFParams:
        """The ``IF_curr_exp`` parameters (PyNN defaults but the configured time constants)."""
        c = self.cfg
        return lif.LIFParams(
            tau_m=c.tau_m * 1e3,
            tau_syn_E=c.tau_syn * 1e3,
            tau_syn_I=c.tau_syn * 1e3,
            tau_refrac=c.tau_refrac * 1e3,
        )

    @property
    def dt_ms(self) -> float:
        """The simulation timestep in ms."""
        return self.cfg.timestep * 1e3

    @property
    def timestep(self) -> float:
        """The simulation timestep in seconds, as configured."""
        return float(self.cfg.timestep)

    @property
    def input_rate(self) -> float:
        """The Poisson rate (Hz) of a fully active input."""
        return float(self.cfg.input_rate)

    @property
    def timesteps(self) -> int:
        """Timesteps of one sample when the workload names none."""
        return self.cfg.timesteps

    @cached_property
    def network(self) -> lif.Network:
        """The LIF network with its weights (built once, seeded)."""
        c = self.cfg
        sizes = [c.inputs, *c.layers]
        rng = np.random.default_rng(c.seed)
        if c.weights == "converted":
            ann = _seeded_mlp(sizes, c.seed)
            calib = rng.random((256, c.inputs))
            full_scale = c.conversion_rate if c.conversion_rate is not None else c.input_rate
            ws = convert_mlp(ann, calib, self.params, full_scale, c.percentile, c.threshold_gain)
        elif c.connectivity < 1.0:  # sparse random: never materialise the dense matrix
            ws = [
                sp.random(
                    a,
                    b,
                    density=c.connectivity,
                    format="csr",
                    rng=rng,
                    data_rvs=lambda n: rng.normal(0.0, c.weight_scale, n),
                )
                for a, b in itertools.pairwise(sizes)
            ]
        else:
            ws = [rng.normal(0.0, c.weight_scale, (a, b)) for a, b in itertools.pairwise(sizes)]
        if c.connectivity < 1.0 and c.weights == "converted":
            ws = [w * (rng.random(w.shape) < c.connectivity) for w in ws]
        layers = tuple(lif.Layer(f"layer{i + 1}", w) for i, w in enumerate(ws))
        return lif.Network(c.inputs, layers, self.params, name=c.name)

    def input_spikes(self, timesteps: int, batch: int, seed: int | None = None) -> np.ndarray:
        """Input spike trains ``(timesteps, batch, inputs)``: the given trains when the
        model was configured with them, else Poisson trains whose per-input rates are
        ``input_rate`` times a seeded feature vector in ``[0, 1]`` (rate coding)."""
        if self._given_spikes is not None:
            x = self._given_spikes[:timesteps]
            if x.shape[0] < timesteps:  # silence after the given trains end
                pad = np.zeros((timesteps - x.shape[0], *x.shape[1:]), dtype=bool)
                x = np.concatenate([x, pad])
            return x[:, np.arange(batch) % x.shape[1], :]
        rng = np.random.default_rng(self.cfg.seed + 1 if seed is None else seed)
        features = rng.random((batch, self.cfg.inputs))
        p = 1.0 - np.exp(-features * self.cfg.input_rate * self.cfg.timestep)
        return rng.random((timesteps, batch, self.cfg.inputs)) < p

    def calibration_inputs(self) -> np.ndarray:
        """``calibration_samples`` input trains of ``calibration_timesteps`` steps."""
        return self.input_spikes(self.cfg.calibration_timesteps, self.cfg.calibration_samples)

    @cached_property
    def activity(self) -> lif.Activity:
        """Activity per sample and step, measured with the exact LIF simulator."""
        return lif.simulate(self.network, self.calibration_inputs(), self.dt_ms)

    def with_options(self, **fields: Any) -> SnnModelGraph:
        """A copy with some config fields changed (``input_rate``, ``timestep`` ...); the
        same configuration asked for twice is the same object (its network and measured
        activity are built once)."""
        data = self.cfg.model_dump()
        data["input_rate"] = f"{data['input_rate']!r} Hz"
        if data["conversion_rate"] is not None:
            data["conversion_rate"] = f"{data['conversion_rate']!r} Hz"
        for k in ("timestep", "tau_m", "tau_syn", "tau_refrac"):
            data[k] = f"{data[k]!r} s"
        data.update(fields)
        try:
            cfg = SnnConfig.model_validate(data)
        except Exception as exc:  # pydantic's message names the field
            raise ScenarioError(f"model: {exc}") from None
        key = cfg.model_dump_json()
        if key not in self._variants:
            self._variants[key] = SnnModelGraph(cfg, self.preset, self._given_spikes)
        return self._variants[key]

    def at_input_rate(self, rate_hz: float) -> SnnModelGraph:
        """The same weights (converted for this model's full-scale rate) driven by inputs
        at ``rate_hz``."""
        full_scale = self.cfg.conversion_rate or self.cfg.input_rate
        return self.with_options(input_rate=f"{rate_hz!r} Hz", conversion_rate=f"{full_scale!r} Hz")

    # --- ModelGraph -------------------------------------------------------------------

    def build(self, shape: Shape, parallel: Parallelism | None = None) -> OpGraph:
        """Per layer: a MATMUL and an ELEMENTWISE op repeated ``timesteps`` times for dense
        backends and a SPIKING op with the measured activity for event-driven ones."""
        if shape.phase is not Phase.SPIKING:
            raise UnsupportedError(
                f"the snn family builds spiking steps (Phase.SPIKING), not {shape.phase.value}; "
                f"use workload kind 'spiking'"
            )
        b, steps = max(1, shape.batch), shape.timesteps
        c, act = self.cfg, self.activity
        eb = dtype_bytes(c.dtype)
        sizes = [c.inputs, *c.layers]
        ops: list[Op] = []
        for i, layer in enumerate(self.network.layers):
            n_in, n_out = sizes[i], sizes[i + 1]
            w_bytes = n_in * n_out * eb
            ops.append(
                Op(
                    name=f"{layer.name}.synapses",
                    kind=OpKind.MATMUL,
                    flops=2.0 * b * n_in * n_out,
                    bytes_read=w_bytes + b * n_in * eb,
                    bytes_written=b * n_out * eb,
                    param_bytes=w_bytes,
                    dims=(b, n_out, n_in),
                    count=steps,
                    dtype=c.dtype,
                    layer=layer.name,
                )
            )
            ops.append(
                Op(
                    name=f"{layer.name}.lif",
                    kind=OpKind.ELEMENTWISE,
                    flops=float(LIF_FLOPS_PER_NEURON * b * n_out),
                    bytes_read=LIF_STATE_WORDS * b * n_out * eb + b * n_out * eb,
                    bytes_written=LIF_STATE_WORDS * b * n_out * eb + b * n_out * eb,
                    dims=(b * n_out,),
                    count=steps,
                    dtype=c.dtype,
                    layer=layer.name,
                )
            )
            ops.append(
                Op(
                    name=f"{layer.name}.spiking",
                    kind=OpKind.SPIKING,
                    dims=(n_out,),
                    count=steps,
                    dtype=c.dtype,
                    layer=layer.name,
                    attrs=(
                        ("layer", float(i + 1)),
                        ("neurons", float(n_out)),
                        ("pre_neurons", float(n_in)),
                        ("synapses", float(layer.synapses)),
                        ("spikes_in", act.spikes[i] * b),
                        ("spikes_out", act.spikes[i + 1] * b),
                        ("synaptic_events", act.synaptic_events[i] * b),
                        ("rate_in_hz", act.rates_hz[i]),
                        ("rate_out_hz", act.rates_hz[i + 1]),
                        ("batch", float(b)),
                    ),
                )
            )
        notes = (
            f"activity measured by the exact LIF simulator over "
            f"{act.batch}x{act.timesteps} steps at input_rate {c.input_rate:g} Hz",
        )
        return OpGraph(phase=Phase.SPIKING, ops=tuple(ops), shape=shape, dtype=c.dtype, notes=notes)

    def module(self, device: str = "meta") -> Any:
        """The torch module (``SpikingMLP``) with this network's weights (unless on
        the meta device, where no weights are allocated)."""
        import torch

        cls = spiking_mlp_class()
        sizes = [self.cfg.inputs, *self.cfg.layers]
        with torch.device(device):
            mod = cls(sizes, self.params, self.dt_ms)
        if device != "meta":
            with torch.no_grad():
                for fc, layer in zip(mod.fc, self.network.layers, strict=True):
                    fc.weight.copy_(torch.as_tensor(layer.weights.T, dtype=fc.weight.dtype))
        return mod

    def example_inputs(self, shape: Shape, device: str = "meta") -> tuple[Any, ...]:
        """One spike tensor ``(timesteps, batch, inputs)`` for :meth:`module`."""
        import torch

        if device == "meta":
            return (
                torch.empty((shape.timesteps, max(1, shape.batch), self.cfg.inputs), device="meta"),
            )
        x = self.input_spikes(shape.timesteps, max(1, shape.batch))
        return (torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device),)


class SnnFamily(ModelFamily):
    """Leaky integrate-and-fire networks (PyNN ``IF_curr_exp``), dense feed-forward.

    Extra keys besides :class:`SnnConfig`'s fields: ``spike_trains`` (a path to a ``.npy``
    array ``(timesteps, inputs)`` or ``(timesteps, batch, inputs)`` of 0/1 input spikes,
    relative to the scenario) replaces Poisson input.
    """

    name = "snn"
    description = (
        "Leaky integrate-and-fire spiking networks (IF_curr_exp), dense "
        "feed-forward, weights from ANN-to-SNN conversion"
    )
    presets: Mapping[str, Mapping[str, Any]] = PRESETS
    presets_sources: Mapping[str, str] = PRESET_SOURCES

    def configure(self, spec: Mapping[str, Any]) -> SnnModelGraph:
        """Validate a ``model:`` block into an :class:`SnnModelGraph`."""
        spec = dict(spec)
        trains = spec.pop("spike_trains", None)
        cfg, preset = validate_spec(SnnConfig, spec, "snn", PRESETS)
        spikes = None
        if trains is not None:
            spikes = load_spike_trains(trains, cfg.inputs)
        return SnnModelGraph(cfg, preset, spikes)


def load_spike_trains(src: Any, inputs: int) -> np.ndarray:
    """Read given input spike trains (a ``.npy`` path or an array) as ``(T, batch, inputs)``
    booleans, raising :class:`ScenarioError` naming the problem."""
    if isinstance(src, str):
        try:
            arr = np.load(src)
        except (OSError, ValueError) as exc:
            raise ScenarioError(f"model.spike_trains: cannot read {src!r}: {exc}") from None
    else:
        arr = np.asarray(src)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[2] != inputs or arr.shape[0] < 1:
        raise ScenarioError(
            f"model.spike_trains: expected shape (timesteps, {inputs}) or (timesteps, batch, "
            f"{inputs}), got {arr.shape}"
        )
    return arr.astype(bool)


FAMILIES: list[ModelFamily] = [SnnFamily()]
"""The families this module contributes (the ``snn`` family)."""
