"""Host time per iteration that grows with the sequences in it (``host_per_seq_s``)."""

from __future__ import annotations

import pytest

from tests.test_stacks import compiled
from xpusim.engine.graph import Phase, Shape
from xpusim.plugins.workloads.serving.stacks import (
    StackCompiled,
    StackOverride,
    load_profile,
    resolve_stack,
    sequences,
    stack_names,
)


def test_every_profile_states_its_per_sequence_host_time_with_a_source() -> None:
    for name in stack_names():
        p = load_profile(name)
        assert p.host_per_seq_s >= 0
        assert p.sources["host_per_seq_s"] and not p.sources["host_per_seq_s"].startswith(
            "not stated"
        )


def test_host_time_grows_with_the_batch() -> None:
    """An override of 4 ms plus 10 us per sequence: 4.0 ms alone, 6.56 ms at 256; serial
    adds it to the GPU time, the overlap scheduler hides it behind a longer GPU step."""
    spec = {"name": "none", "host_step_s": "4 ms", "host_per_seq_s": "10 us"}
    serial = resolve_stack(StackOverride.model_validate(spec))
    overlap = resolve_stack(StackOverride.model_validate({**spec, "host_overlap": True}))
    assert serial.host_seconds(0) == pytest.approx(0.004)
    assert serial.host_seconds(256) == pytest.approx(0.00656)
    assert serial.step_seconds(0.010, 256) == pytest.approx(0.01656)
    assert overlap.step_seconds(0.010, 256) == pytest.approx(0.010)
    assert overlap.step_seconds(0.005, 256) == pytest.approx(0.00656)
    assert serial.sources["host_per_seq_s"].startswith("scenario override")


def test_a_mixed_iteration_counts_its_prefills_and_decodes() -> None:
    mixed = Shape(
        Phase.MIXED,
        parts=(Shape(Phase.PREFILL, batch=2, tokens=100), Shape(Phase.DECODE, batch=30)),
    )
    assert sequences(mixed) == 32
    assert sequences(Shape(Phase.DECODE, batch=7)) == 7


def test_the_host_charges_real_sequences_not_graph_padding() -> None:
    """vLLM V1's per-sequence host time: a decode of 33 sequences runs the 40-sequence
    graph on the GPU but the host handles 33, so the step costs the padded GPU time plus
    0.2 ms + 33 x 1.1 us."""
    inner = compiled()
    prof = load_profile("vllm-v1")
    st = StackCompiled(inner, prof)
    got = st.cost(Shape(Phase.DECODE, batch=33, context=100)).seconds
    gpu = inner.cost(Shape(Phase.DECODE, batch=40, context=100)).seconds
    assert got == pytest.approx(gpu + prof.host_step_s + 33 * prof.host_per_seq_s)
    assert prof.host_per_seq_s == pytest.approx(1.1e-6)
