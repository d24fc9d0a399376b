"""The engine's own exact simulation of leaky integrate-and-fire networks.

The neuron is PyNN's ``IF_curr_exp`` (current-based synapses with exponentially decaying
currents), stepped the way sPyNNaker's ``neuron_model_lif_impl.h`` and
``synapse_types_exponential_impl.h`` step it, so the spike counts agree with what the
board would produce for the same inputs (up to sPyNNaker's fixed-point rounding):

* membrane, for a non-refractory neuron over one step ``dt`` with input current ``I``::

      alpha = I * R + v_rest,   R = tau_m / cm
      v     = alpha - exp(-dt / tau_m) * (alpha - v)

  which is the exact solution of ``cm dv/dt = (v_rest - v) cm / tau_m + I`` for ``I``
  constant over the step;
* a neuron whose ``v`` reaches ``v_thresh`` spikes, is set to ``v_reset`` and holds for
  ``ceil(tau_refrac / dt)`` steps;
* synaptic current, per receptor: the weights ``w`` (nA) of the spikes arriving this
  step are added as ``i += w * init`` with ``init = (tau_syn / dt) * (1 - exp(-dt /
  tau_syn))`` before the membrane update, and ``i *= exp(-dt / tau_syn)`` after it. A
  spike emitted at step ``t`` arrives at step ``t + 1`` (PyNN's minimum delay of one
  timestep).

Inputs are spike trains: a boolean array ``(timesteps, batch, inputs)``; :func:`poisson`
draws Poisson-rate trains. The simulator counts spikes per layer and synaptic events
(a spike times the synapses it crosses) — the activity the SpiNNaker energy model and the
op graph's ``SPIKING`` attributes use. Everything is numpy, vectorised over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from xpusim.engine.errors import ScenarioError


@dataclass(frozen=True, slots=True)
class LIFParams:
    """``IF_curr_exp`` parameters in PyNN's units (ms, mV, nF, nA); PyNN's defaults."""

    cm: float = 1.0
    tau_m: float = 20.0
    tau_refrac: float = 0.1
    tau_syn_E: float = 5.0  # noqa: N815 - PyNN's parameter name
    tau_syn_I: float = 5.0  # noqa: N815 - PyNN's parameter name
    v_rest: float = -65.0
    v_reset: float = -65.0
    v_thresh: float = -50.0
    i_offset: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cm", "tau_m", "tau_syn_E", "tau_syn_I"):
            v = getattr(self, name)
            if not v > 0:
                raise ScenarioError(f"LIF parameter {name} must be greater than zero, got {v}")
        if self.tau_refrac < 0:
            raise ScenarioError(
                f"LIF parameter tau_refrac must not be negative, got {self.tau_refrac}"
            )
        if not self.v_thresh > self.v_reset:
            raise ScenarioError(
                f"LIF threshold v_thresh ({self.v_thresh} mV) must lie above v_reset "
                f"({self.v_reset} mV)"
            )

    def pynn(self) -> dict[str, float]:
        """The parameters as ``sim.IF_curr_exp(**params)`` takes them."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Layer:
    """One feed-forward projection into a population of LIF neurons.

    ``weights`` is ``(n_pre, n_post)`` in nA (positive: excitatory receptor, negative:
    inhibitory), a dense numpy array or a ``scipy.sparse`` matrix for sparse
    connectivity; a zero is no synapse.
    """

    name: str
    weights: Any

    @property
    def n_pre(self) -> int:
        """Neurons (or inputs) feeding this layer."""
        return int(self.weights.shape[0])

    @property
    def n_post(self) -> int:
        """Neurons in this layer."""
        return int(self.weights.shape[1])

    @property
    def sparse(self) -> bool:
        """Whether the weights are a ``scipy.sparse`` matrix."""
        return bool(sp.issparse(self.weights))

    @property
    def synapses(self) -> int:
        """Synapses of the projection (non-zero weights)."""
        if self.sparse:
            return int(self.weights.count_nonzero())
        return int(np.count_nonzero(self.weights))

    @property
    def fan_out(self) -> np.ndarray:
        """Synapses leaving each pre-synaptic neuron."""
        if self.sparse:
            csr = sp.csr_matrix(self.weights)
            csr.eliminate_zeros()
            return np.diff(csr.indptr)
        return np.count_nonzero(self.weights, axis=1)

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The synapses as ``(pre, post, weight)`` arrays, in row-major order."""
        if self.sparse:
            csr = sp.csr_matrix(self.weights)
            csr.eliminate_zeros()
            c = csr.tocoo()
            return c.row.astype(np.int64), c.col.astype(np.int64), c.data.astype(np.float64)
        pre, post = np.nonzero(self.weights)
        return pre, post, np.asarray(self.weights[pre, post], dtype=np.float64)

    def split(self) -> tuple[Any, Any]:
        """Excitatory and inhibitory weight matrices (both ``>= 0``), same storage kind."""
        w = self.weights
        if self.sparse:
            csr = sp.csr_matrix(w)
            return csr.maximum(0).tocsr(), (-csr).maximum(0).tocsr()
        return np.clip(w, 0, None), np.clip(-w, 0, None)

    def finite(self) -> bool:
        """Whether every weight is finite."""
        data = sp.csr_matrix(self.weights).data if self.sparse else self.weights
        return bool(np.all(np.isfinite(data)))


@dataclass(frozen=True)
class Network:
    """A feed-forward LIF network: ``inputs`` spike sources then ``layers`` in order."""

    inputs: int
    layers: tuple[Layer, ...]
    params: LIFParams = field(default_factory=LIFParams)
    name: str = "snn"

    def __post_init__(self) -> None:
        if self.inputs < 1:
            raise ScenarioError(f"a spiking network needs at least one input, got {self.inputs}")
        if not self.layers:
            raise ScenarioError("a spiking network needs at least one layer of LIF neurons")
        n = self.inputs
        for layer in self.layers:
            if layer.n_pre != n:
                raise ScenarioError(
                    f"layer {layer.name!r} expects {layer.n_pre} inputs but the previous "
                    f"population has {n} neurons"
                )
            if not layer.finite():
                raise ScenarioError(f"layer {layer.name!r} has non-finite weights")
            n = layer.n_post

    @property
    def neurons(self) -> int:
        """LIF neurons (the spike sources are not counted)."""
        return sum(layer.n_post for layer in self.layers)

    @property
    def synapses(self) -> int:
        """Synapses of every projection."""
        return sum(layer.synapses for layer in self.layers)

    @property
    def sizes(self) -> list[int]:
        """Population sizes: inputs first, then each layer."""
        return [self.inputs, *(layer.n_post for layer in self.layers)]


@dataclass(frozen=True)
class Activity:
    """What a simulation counted, per sample and timestep averaged over the batch.

    ``spikes[i]`` is spikes per step of population ``i`` (0: the inputs);
    ``synaptic_events[i]`` is synaptic events per step caused by population ``i``'s spikes
    (into layer ``i + 1``); ``rates_hz[i]`` the mean firing rate of population ``i``.
    ``output_counts`` are the output layer's spike counts, ``(batch, n_out)``.
    """

    timesteps: int
    batch: int
    dt_ms: float
    spikes: tuple[float, ...]
    synaptic_events: tuple[float, ...]
    rates_hz: tuple[float, ...]
    output_counts: np.ndarray


def poisson(
    rate_hz: float | np.ndarray,
    timesteps: int,
    batch: int,
    n: int,
    dt_ms: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Poisson spike trains ``(timesteps, batch, n)`` at ``rate_hz`` (a scalar or one
    rate per input), at most one spike per step as on SpiNNaker's slow-rate sources."""
    check_positive_int("timesteps", timesteps)
    check_positive_int("batch", batch)
    r = np.asarray(rate_hz, dtype=np.float64)
    if np.any(r < 0) or not np.all(np.isfinite(r)):
        raise ScenarioError(f"input rates must be finite and >= 0 Hz, got {rate_hz}")
    p = 1.0 - np.exp(-r * dt_ms * 1e-3)
    return rng.random((timesteps, batch, n)) < p


def check_positive_int(name: str, value: int) -> None:
    """Raise :class:`ScenarioError` unless ``value`` is an integer of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ScenarioError(f"{name} must be a whole number of at least 1, got {value!r}")


def simulate(net: Network, spikes_in: np.ndarray, dt_ms: float = 1.0) -> Activity:
    """Run ``net`` on input spike trains ``(timesteps, batch, inputs)`` with step ``dt_ms``.

    Exact for the fixed timestep (see the module docstring). Returns the counted
    :class:`Activity`.
    """
    if not dt_ms > 0:
        raise ScenarioError(f"timestep must be greater than zero, got {dt_ms} ms")
    x = np.asarray(spikes_in)
    if x.ndim != 3 or x.shape[2] != net.inputs:
        raise ScenarioError(
            f"input spikes must have shape (timesteps, batch, {net.inputs}), got {x.shape}"
        )
    steps, batch, _ = x.shape
    p = net.params
    decay_m = math.exp(-dt_ms / p.tau_m)
    r_m = p.tau_m / p.cm
    de, di = math.exp(-dt_ms / p.tau_syn_E), math.exp(-dt_ms / p.tau_syn_I)
    init_e = (p.tau_syn_E / dt_ms) * (1.0 - de)
    init_i = (p.tau_syn_I / dt_ms) * (1.0 - di)
    refrac_steps = math.ceil(p.tau_refrac / dt_ms - 1e-9)
    halves = [layer.split() for layer in net.layers]
    w_pos = [h[0] for h in halves]
    w_neg = [h[1] for h in halves]
    fan = [layer.fan_out.astype(np.float64) for layer in net.layers]

    sizes = net.sizes
    v = [np.full((batch, n), p.v_rest) for n in sizes[1:]]
    ie = [np.zeros((batch, n)) for n in sizes[1:]]
    ii = [np.zeros((batch, n)) for n in sizes[1:]]
    refr = [np.zeros((batch, n), dtype=np.int64) for n in sizes[1:]]
    prev = [np.zeros((batch, n), dtype=bool) for n in sizes]  # spikes of the previous step
    n_spikes = np.zeros(len(sizes))
    n_events = np.zeros(len(sizes))
    out_counts = np.zeros((batch, sizes[-1]), dtype=np.int64)

    for t in range(steps):
        cur = [x[t].astype(bool)]
        for k in range(len(net.layers)):
            # the spikes of the previous step arrive (delay 1) ...
            s = prev[k].astype(np.float64)
            if s.any():
                ie[k] += init_e * np.asarray(s @ w_pos[k])
                ii[k] += init_i * np.asarray(s @ w_neg[k])
            # ... the neuron integrates this step's current ...
            current = ie[k] - ii[k] + p.i_offset
            alpha = current * r_m + p.v_rest
            free = refr[k] <= 0
            v[k] = np.where(free, alpha - decay_m * (alpha - v[k]), v[k])
            refr[k] = np.where(free, refr[k], refr[k] - 1)
            fired = free & (v[k] >= p.v_thresh)
            v[k] = np.where(fired, p.v_reset, v[k])
            refr[k] = np.where(fired, refrac_steps, refr[k])
            cur.append(fired)
            # ... and the synaptic currents decay
            ie[k] *= de
            ii[k] *= di
        for i, s in enumerate(cur):
            c = s.sum(axis=0)
            n_spikes[i] += float(c.sum())
            if i < len(fan):
                n_events[i] += float(c @ fan[i])
        out_counts += cur[-1]
        prev = cur
    per = 1.0 / (steps * batch)
    secs = steps * dt_ms * 1e-3
    return Activity(
        timesteps=steps,
        batch=batch,
        dt_ms=dt_ms,
        spikes=tuple(float(s * per) for s in n_spikes),
        synaptic_events=tuple(float(e * per) for e in n_events),
        rates_hz=tuple(float(n_spikes[i] / (batch * sizes[i] * secs)) for i in range(len(sizes))),
        output_counts=out_counts,
    )


def normalise_weights(
    weights: Sequence[np.ndarray], activations: Sequence[np.ndarray], percentile: float = 99.9
) -> list[np.ndarray]:
    """Data-based weight normalisation for ANN-to-SNN conversion (Diehl et al. 2015,
    Rueckauer et al. 2017): layer ``l``'s weights are scaled by ``λ_{l-1} / λ_l`` where
    ``λ_l`` is the ``percentile`` of layer ``l``'s ReLU activations on calibration data
    (``λ_0 = 1`` for rate-coded inputs in ``[0, 1]``), so every layer's largest typical
    activation maps to the highest firing rate the threshold allows."""
    if not 0 < percentile <= 100:
        raise ScenarioError(f"normalisation percentile must be in (0, 100], got {percentile}")
    out: list[np.ndarray] = []
    prev = 1.0
    for w, a in zip(weights, activations, strict=True):
        lam = float(np.percentile(a, percentile)) if a.size else 1.0
        lam = lam if lam > 0 else 1.0
        out.append(np.asarray(w, dtype=np.float64) * prev / lam)
        prev = lam
    return out


def to_current(
    weights: np.ndarray, params: LIFParams, rate_hz: float, gain: float = 2.0
) -> np.ndarray:
    """Threshold normalisation: turn unit-less normalised weights into nA for a rate code
    whose full-scale rate is ``rate_hz``.

    An ANN activation ``a`` (``Σ w x`` of normalised weights and inputs in ``[0, 1]``)
    becomes a mean membrane depolarisation ``μ = a · θ_eff``: the steady state of
    ``IF_curr_exp`` under Poisson inputs of rate ``x · rate_hz`` is
    ``μ = (tau_m / cm) · tau_syn · rate · Σ w_nA x``, so
    ``w_nA = w · θ_eff · cm / (tau_m · tau_syn · rate)``. ``θ_eff`` is ``gain`` times the
    depolarisation at which a leaky neuron fires at ``rate_hz``:
    ``(v_thresh - v_rest) · e^u / (e^u - 1)`` with ``u = 1 / (tau_m · rate)``, which
    compensates the leak (it tends to the non-leaky ``gap / u`` at high rates) and
    ``gain`` > 1 lets activations below full scale still fire.
    """
    if not rate_hz > 0:
        raise ScenarioError(f"conversion needs a full-scale input rate > 0 Hz, got {rate_hz}")
    if not gain > 0:
        raise ScenarioError(f"threshold gain must be greater than zero, got {gain}")
    gap = params.v_thresh - params.v_rest
    rate_khz = rate_hz * 1e-3
    u = 1.0 / (params.tau_m * rate_khz)
    theta = gain * gap * (1.0 / -math.expm1(-u))
    scale = theta * params.cm / (params.tau_m * params.tau_syn_E * rate_khz)
    return np.asarray(weights, dtype=np.float64) * scale
