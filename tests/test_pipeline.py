"""Pipeline schedule math: the closed form against an exact list scheduler."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpusim.plugins.workloads.training.pipeline import (
    bubble_fraction,
    in_flight_microbatches,
    pipeline_time,
    simulate_schedule,
)


@settings(max_examples=60, deadline=None)
@given(
    p=st.integers(1, 8),
    groups=st.integers(1, 4),
    v=st.integers(1, 3),
    t_f=st.floats(0.1, 3.0),
    ratio=st.floats(0.5, 3.0),
)
def test_closed_form_matches_exact_schedule(
    p: int, groups: int, v: int, t_f: float, ratio: float
) -> None:
    """Without transfers, (m·v + p − 1)·(t_f + t_b)/v is the exact makespan of the real
    1F1B and interleaved per-device op orders, for any forward:backward split."""
    m = groups * p
    t_b = ratio * t_f
    exact = simulate_schedule(p, m, t_f, t_b, v)
    closed = pipeline_time(t_f + t_b, m, p, v).seconds
    assert closed == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("p,m", [(2, 1), (4, 3), (8, 5), (4, 7)])
def test_one_f_one_b_with_fewer_or_odd_microbatches(p: int, m: int) -> None:
    """Plain 1F1B needs no multiple of p: the closed form holds for any m."""
    assert pipeline_time(3.0, m, p).seconds == pytest.approx(simulate_schedule(p, m, 1.0, 2.0))


def test_bubble_fraction_is_the_papers() -> None:
    """The bubble over the ideal time is (p − 1)/(m·v) (Narayanan et al. 2021 §2.2)."""
    for p, m, v in [(4, 16, 1), (8, 64, 1), (8, 64, 2), (16, 32, 4)]:
        t = pipeline_time(3.0, m, p, v)
        assert t.bubble_fraction == pytest.approx(bubble_fraction(p, m, v))
        assert t.bubble_s == pytest.approx((p - 1) * 3.0 / v)
        assert t.work_s == pytest.approx(m * 3.0)


def test_interleaving_trades_bubble_for_transfers() -> None:
    """Interleaving shrinks the bubble by v but multiplies the transfers by v."""
    plain = pipeline_time(3.0, 32, 8, 1, p2p_s=0.01)
    inter = pipeline_time(3.0, 32, 8, 4, p2p_s=0.01)
    assert inter.bubble_s < plain.bubble_s
    assert inter.p2p_s == pytest.approx(4 * plain.p2p_s)
    assert inter.seconds < plain.seconds  # small transfers: interleaving wins
    slow = pipeline_time(3.0, 32, 8, 4, p2p_s=0.5)
    assert slow.seconds > pipeline_time(3.0, 32, 8, 1, p2p_s=0.5).seconds  # big ones: it loses


def test_blocking_transfers_bound_asynchronous_ones() -> None:
    """The closed form charges every transfer on the device (blocking sends, as Megatron
    2021 issued them); the list scheduler lets them overlap, so it lies between the
    closed forms with and without transfers."""
    for p, m, v in [(4, 8, 1), (4, 16, 2), (8, 16, 2)]:
        exact = simulate_schedule(p, m, 1.0, 2.0, v, p2p_s=0.1)
        assert pipeline_time(3.0, m, p, v).seconds <= exact + 1e-9
        assert exact <= pipeline_time(3.0, m, p, v, p2p_s=0.1).seconds + 1e-9


def test_slowest_stage_sets_the_rate() -> None:
    """Non-uniform stages: every stage once to fill and drain, the slowest m·v − 1 times."""
    t = pipeline_time([1.0, 1.0, 2.0, 1.0], 10, 4)
    assert t.seconds == pytest.approx(5.0 + 9 * 2.0)
    assert pipeline_time([3.0] * 4, 10, 4).seconds == pytest.approx(
        pipeline_time(3.0, 10, 4).seconds
    )


def test_single_stage_has_no_bubble_and_no_transfers() -> None:
    """p = 1 is plain gradient accumulation: m·(t_f + t_b), transfers ignored."""
    t = pipeline_time(2.0, 5, 1, p2p_s=1.0)
    assert t.seconds == pytest.approx(10.0)
    assert t.bubble_s == 0.0 and t.p2p_s == 0.0


def test_in_flight_activations() -> None:
    """1F1B keeps min(m, p) micro-batches on the first stage; interleaving
    p·(1 + (p − 1)/(p·v)) (Korthikanti et al. 2022)."""
    assert in_flight_microbatches(8, 64) == 8
    assert in_flight_microbatches(8, 3) == 3
    assert in_flight_microbatches(8, 64, 2) == pytest.approx(8 * (1 + 7 / 16))
    assert in_flight_microbatches(1, 64, 1) == 1


def test_invalid_inputs_name_the_value() -> None:
    """Bad sizes raise with the offending values."""
    with pytest.raises(ValueError, match="p=0"):
        pipeline_time(1.0, 4, 0)
    with pytest.raises(ValueError, match="multiple of p"):
        simulate_schedule(4, 6, 1.0, 2.0, v=2)
    with pytest.raises(ValueError, match="3 stage times"):
        pipeline_time([1.0, 1.0, 1.0], 4, 2)
