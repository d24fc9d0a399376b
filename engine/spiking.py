"""The contract of a spiking network model, shared by spiking models and the backends
that run them.

A model family whose graphs are spiking networks (``kind == "spiking"``) configures a
:class:`SpikingModel`. Besides the op graphs every :class:`~xpusim.engine.model.ModelGraph`
builds, it describes the network itself as a :class:`~xpusim.engine.lif.Network` (what an
event-driven backend maps onto its cores), its measured :class:`~xpusim.engine.lif.Activity`,
its timestep and input rate, and it can be re-configured with a workload's run settings
(:meth:`SpikingModel.with_options`). Backends and workloads read these through this
contract, never through a particular model plugin's classes.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from xpusim.engine.lif import Activity, Network
from xpusim.engine.model import ModelGraph

__all__ = ["SpikingModel"]


class SpikingModel(ModelGraph):
    """A configured spiking network of leaky integrate-and-fire layers.

    Contract: :attr:`network` is the network with its weights; :attr:`dt_ms` the simulation
    timestep in ms; :attr:`input_rate` the Poisson rate (Hz) of a fully active input;
    :attr:`timesteps` the steps of one sample when a workload names none;
    :attr:`activity` the spikes and synaptic events per sample and step, measured on
    :meth:`calibration_inputs`; :meth:`input_spikes` draws input trains;
    :meth:`with_options` returns a copy with ``input_rate`` and/or ``timestep`` changed
    (values written with units, as in a scenario: ``"20 Hz"``, ``"0.001 s"``);
    :meth:`at_input_rate` the same network, weights unchanged, driven by sparser or
    denser inputs.
    """

    @property
    @abstractmethod
    def network(self) -> Network:
        """The LIF network with its weights."""
        raise NotImplementedError(self)

    @property
    @abstractmethod
    def dt_ms(self) -> float:
        """The simulation timestep in ms."""
        raise NotImplementedError(self)

    @property
    def timestep(self) -> float:
        """The simulation timestep in seconds."""
        return self.dt_ms * 1e-3

    @property
    @abstractmethod
    def input_rate(self) -> float:
        """The Poisson rate (Hz) of a fully active input."""
        raise NotImplementedError(self)

    @property
    @abstractmethod
    def timesteps(self) -> int:
        """Timesteps of one sample when the workload names none."""
        raise NotImplementedError(self)

    @property
    @abstractmethod
    def activity(self) -> Activity:
        """Spikes and synaptic events per sample and step, measured on
        :meth:`calibration_inputs`."""
        raise NotImplementedError(self)

    @abstractmethod
    def input_spikes(self, timesteps: int, batch: int, seed: int | None = None) -> np.ndarray:
        """Boolean input spike trains ``(timesteps, batch, inputs)``."""
        raise NotImplementedError(self)

    @abstractmethod
    def calibration_inputs(self) -> np.ndarray:
        """The input trains :attr:`activity` was measured on (another simulator counting
        the same network's activity runs these)."""
        raise NotImplementedError(self)

    @abstractmethod
    def with_options(self, **fields: Any) -> SpikingModel:
        """A copy with the named configuration fields changed (``input_rate``,
        ``timestep``); raises :class:`~xpusim.engine.errors.ScenarioError` naming a bad
        value."""
        raise NotImplementedError(self)

    @abstractmethod
    def at_input_rate(self, rate_hz: float) -> SpikingModel:
        """The same network with the same weights driven by inputs at ``rate_hz`` (a
        fully active input's Poisson rate): the trained model on sparser or denser input,
        as opposed to :meth:`with_options`, which configures a model for that rate (a
        converted network's weights are tuned to its input rate)."""
        raise NotImplementedError(self)
