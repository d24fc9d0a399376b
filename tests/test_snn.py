"""The snn model family: LIF simulation, ANN-to-SNN conversion, op graphs, torch module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xpusim.engine import lif
from xpusim.engine.errors import ScenarioError, UnsupportedError, XpusimError
from xpusim.engine.graph import OpKind, Phase, Shape
from xpusim.plugins.models.snn import FAMILIES, convert_mlp

SNN = FAMILIES[0]


@pytest.fixture(scope="module")
def kws():  # type: ignore[no-untyped-def]
    return SNN.configure(
        {"preset": "kws-2layer", "calibration_samples": 4, "calibration_timesteps": 60}
    )


def test_family_is_named_snn_with_cited_presets() -> None:
    """The family registers as ``snn`` and every preset cites a source."""
    assert SNN.name == "snn"
    assert set(SNN.presets) == set(SNN.presets_sources)


def test_single_neuron_matches_the_closed_form() -> None:
    """A neuron driven by a constant current fires at the analytic LIF rate: the
    simulator integrates the membrane exactly for the fixed step."""
    p = lif.LIFParams(i_offset=1.0, tau_refrac=0.0)  # v_inf = -65 + 20 mV = -45 mV
    net = lif.Network(1, (lif.Layer("layer1", np.zeros((1, 1))),), p)
    act = lif.simulate(net, np.zeros((1000, 1, 1), dtype=bool), 1.0)
    # time to reach -50 mV from -65 mV towards -45 mV: tau ln(20/5) = 27.7 ms -> 28 steps
    isi_steps = int(np.ceil(20.0 * np.log(20.0 / 5.0)))
    assert act.output_counts[0, 0] == 1000 // isi_steps


def test_synaptic_current_charge_is_weight_times_tau() -> None:
    """One input spike delivers a total charge of w x tau_syn (as sPyNNaker's exponential
    synapse and NEST's iaf_psc_exp do): the membrane peak matches the analytic PSP."""
    p = lif.LIFParams(v_thresh=100.0)
    w, tau_m, tau_s = 1.0, p.tau_m, p.tau_syn_E
    net = lif.Network(1, (lif.Layer("layer1", np.full((1, 1), w)),), p)
    x = np.zeros((200, 1, 1), dtype=bool)
    x[0, 0, 0] = True
    act = lif.simulate(net, x, 1.0)
    assert act.spikes[1] == 0.0 and act.synaptic_events[0] == pytest.approx(1 / 200)
    # analytic PSP peak of a current-based exponential synapse
    t_peak = tau_m * tau_s / (tau_m - tau_s) * np.log(tau_m / tau_s)
    peak = (
        w
        * tau_m
        / p.cm
        * tau_s
        / (tau_m - tau_s)
        * (np.exp(-t_peak / tau_m) - np.exp(-t_peak / tau_s))
    )
    assert 2.0 < peak < 4.0


def test_counts_spikes_and_synaptic_events(kws) -> None:  # type: ignore[no-untyped-def]
    """Synaptic events are spikes times the fan-out of the neuron that fired."""
    a = kws.activity
    fan = kws.network.layers[0].fan_out.mean()
    assert a.synaptic_events[0] == pytest.approx(a.spikes[0] * fan, rel=0.05)
    assert all(r >= 0 for r in a.rates_hz) and a.rates_hz[-1] > 0


def test_conversion_normalises_weights_by_activation_percentiles() -> None:
    """Weight normalisation: after conversion the 99.9th percentile of each layer's
    activation is 1 (scaled by the threshold factor)."""
    ann = torch.nn.Sequential(
        torch.nn.Linear(20, 10, bias=False), torch.nn.ReLU(), torch.nn.Linear(10, 5, bias=False)
    )
    calib = np.random.default_rng(0).random((500, 20))
    p = lif.LIFParams()
    ws = convert_mlp(ann, calib, p, 100.0, percentile=99.9, gain=1.0)
    scale = lif.to_current(np.ones(1), p, 100.0, 1.0)[0]
    h = np.maximum(calib @ (ws[0] / scale), 0)
    assert np.percentile(h, 99.9) == pytest.approx(1.0, rel=1e-6)
    h2 = np.maximum(h @ (ws[1] / scale), 0)
    assert np.percentile(h2, 99.9) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(UnsupportedError):
        convert_mlp(torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1)), calib, p, 100.0)


def test_graph_has_dense_ops_for_gpus_and_spiking_ops_for_spinnaker(kws) -> None:  # type: ignore[no-untyped-def]
    """Per layer a MATMUL (batch x in x out) and an ELEMENTWISE LIF update, each repeated
    once per timestep, and a SPIKING op with the measured activity."""
    g = kws.build(Shape(Phase.SPIKING, batch=4, timesteps=50))
    mm = g.by_kind(OpKind.MATMUL)
    assert [o.dims for o in mm] == [(4, 256, 390), (4, 256, 256), (4, 12, 256)]
    assert all(o.count == 50 for o in g.ops)
    assert mm[0].flops == 2 * 4 * 390 * 256
    sp = g.by_kind(OpKind.SPIKING)
    assert [o.attr("neurons") for o in sp] == [256, 256, 12]
    assert sp[0].attr("synapses") == 390 * 256
    assert sp[0].attr("spikes_in") == pytest.approx(kws.activity.spikes[0] * 4)
    assert sp[1].attr("spikes_in") == pytest.approx(sp[0].attr("spikes_out"))
    assert all(o.flops == 0 for o in sp)
    with pytest.raises(UnsupportedError):
        kws.build(Shape(Phase.DECODE))


def test_torch_module_matches_the_numpy_simulator(kws) -> None:  # type: ignore[no-untyped-def]
    """The torch module steps the same equations: equal output spike counts."""
    shape = Shape(Phase.SPIKING, batch=3, timesteps=60)
    mod = kws.module("cpu").double()
    (x,) = kws.example_inputs(shape, "cpu")
    out = mod(x.double()).numpy()
    act = lif.simulate(kws.network, x.numpy().astype(bool), kws.dt_ms)
    np.testing.assert_array_equal(out, act.output_counts)
    meta = kws.module("meta")
    assert next(meta.parameters()).device.type == "meta"


def test_given_spike_trains_replace_poisson(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A .npy of spike trains is the input encoding when given."""
    trains = np.zeros((10, 6), dtype=bool)
    trains[::2, 0] = True
    path = tmp_path / "in.npy"
    np.save(path, trains)
    m = SNN.configure({"inputs": 6, "layers": [3], "spike_trains": str(path)})
    x = m.input_spikes(12, 2)
    assert x.shape == (12, 2, 6) and x[:, :, 0].sum() == 10 and not x[10:].any()
    with pytest.raises(ScenarioError):
        SNN.configure({"inputs": 5, "layers": [3], "spike_trains": str(path)})


@pytest.mark.parametrize(
    "spec",
    [
        {"inputs": 0, "layers": [4]},
        {"inputs": 4, "layers": []},
        {"inputs": 4, "layers": [0]},
        {"inputs": 4, "layers": [3], "input_rate": "-5 Hz"},
        {"inputs": 4, "layers": [3], "input_rate": "5000 Hz"},
        {"inputs": 4, "layers": [3], "timesteps": 0},
        {"inputs": 4, "layers": [3], "timestep": "1 s"},
        {"inputs": 4, "layers": [3], "neurons": 3},
        {"preset": "kws-3layer"},
    ],
)
def test_nonsense_is_an_input_error(spec) -> None:  # type: ignore[no-untyped-def]
    """Neuron counts, rates and timesteps that make no sense raise an XpusimError
    subclass (exit 2) naming the field."""
    with pytest.raises(XpusimError, match="model"):
        SNN.configure(spec)


def test_simulator_rejects_bad_inputs() -> None:
    """Wrong input shapes, timesteps and rates are input errors."""
    net = lif.Network(2, (lif.Layer("layer1", np.ones((2, 2))),))
    with pytest.raises(ScenarioError):
        lif.simulate(net, np.zeros((5, 1, 3), dtype=bool))
    with pytest.raises(ScenarioError):
        lif.simulate(net, np.zeros((5, 1, 2), dtype=bool), dt_ms=0)
    with pytest.raises(ScenarioError):
        lif.poisson(-1.0, 5, 1, 2, 1.0, np.random.default_rng(0))
    with pytest.raises(ScenarioError):
        lif.poisson(1.0, 0, 1, 2, 1.0, np.random.default_rng(0))


def test_at_input_rate_keeps_the_weights_and_scales_the_activity(kws) -> None:  # type: ignore[no-untyped-def]
    """The same network driven by sparser inputs has the same weights (converted for the
    model's own rate) and fewer synaptic events; with_options re-converts instead, and the
    same configuration asked for twice is one object."""
    sparse = kws.at_input_rate(5.0)
    assert sparse.input_rate == 5.0 and sparse.cfg.conversion_rate == kws.input_rate
    for a, b in zip(sparse.network.layers, kws.network.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
    assert sum(sparse.activity.synaptic_events) < sum(kws.activity.synaptic_events)
    reconverted = kws.with_options(input_rate="5 Hz")
    assert not np.array_equal(reconverted.network.layers[0].weights, kws.network.layers[0].weights)
    assert kws.at_input_rate(5.0) is sparse
