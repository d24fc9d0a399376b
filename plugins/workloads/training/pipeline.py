"""Pipeline-parallel schedule math: 1F1B and interleaved 1F1B.

A training step of one data-parallel replica pushes ``m`` micro-batches through ``p``
pipeline stages. Each device holds ``v`` model chunks (``v = 1``: plain 1F1B,
PipeDream-Flush; ``v > 1``: Megatron's interleaved schedule, Narayanan et al. 2021 §2.2).
One *unit* of work is one chunk's forward or backward of one micro-batch.

Closed form (:func:`pipeline_time`), uniform stages
    Let ``c = (t_f + t_b) / v + 2·t_p2p`` be one chunk's forward plus backward of one
    micro-batch with its two point-to-point transfers (activation forward, gradient
    backward). The critical path of the 1F1B schedule holds ``m·v + p − 1`` such units::

        T = (m·v + p − 1) · c

    so the pipeline bubble (time a device idles while the pipeline fills and drains) is
    ``(p − 1)·c``, a fraction ``(p − 1) / (m·v)`` of the ideal time (the paper's
    ``(p − 1)/m`` divided by ``v``). The sum ``t_f + t_b`` is all the closed form needs:
    how a micro-batch's time splits into forward and backward does not change it, which
    is why the step model passes one forward+backward time per micro-batch per stage.
    Interleaving divides the bubble by ``v`` and multiplies the number of transfers by
    ``v`` — the trade-off the paper reports.

Non-uniform stages (:func:`pipeline_time` with a list of per-stage times)
    ``T = Σ_s c_s + (m·v − 1) · max_s c_s``: the slowest stage sets the steady-state rate,
    every stage is crossed once while filling and draining. Equal stages give the formula
    above; for unequal ones it is an upper bound (the fill and drain of a faster stage
    partly hide behind the slowest one), and :func:`exact_pipeline_time` runs the real
    schedule instead.

Exact schedule (:func:`simulate_schedule`)
    A list scheduler that runs the real per-device op order of 1F1B (warm-up forwards,
    one-forward-one-backward steady state, cool-down backwards) and of the interleaved
    schedule (Megatron's order: forwards of chunk ``k`` for ``p`` micro-batches at a time,
    warm-up of ``(p − rank − 1)·2 + (v − 1)·p`` units), with each op starting when its
    device is free and its input has arrived. It is exact for any forward/backward split
    and is used by the tests to check the closed form; it is ``O(m·p·v)`` and not used on
    the hot path.

Activation memory: under 1F1B stage ``s`` holds the activations of ``min(m, p − s)``
micro-batches in flight (the first stage the most); interleaving raises the first
stage's by ``1 + (p − 1)/(p·v)`` (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", §4.2.3) — :func:`in_flight_microbatches`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PipelineTime",
    "bubble_fraction",
    "dualpipe_time",
    "exact_pipeline_time",
    "in_flight_microbatches",
    "pipeline_time",
    "schedule_intervals",
    "simulate_schedule",
]


@dataclass(frozen=True, slots=True)
class PipelineTime:
    """The pipeline part of one training step of one replica.

    ``seconds`` is the makespan from the first forward to the last backward;
    ``work_s`` the time one device spends computing (its ``m·(t_f + t_b)``);
    ``p2p_s`` its point-to-point transfers on the critical path; ``bubble_s`` the rest
    (fill and drain idle time). ``seconds = work_s + p2p_s + bubble_s`` for the slowest
    stage.
    """

    seconds: float
    work_s: float
    p2p_s: float
    bubble_s: float

    @property
    def bubble_fraction(self) -> float:
        """Bubble time over the busy (compute plus transfer) time."""
        busy = self.work_s + self.p2p_s
        return self.bubble_s / busy if busy > 0 else 0.0


def _check(p: int, m: int, v: int) -> None:
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"pipeline needs p, m, v >= 1, got p={p}, m={m}, v={v}")


def pipeline_time(
    stage_s: float | Sequence[float], m: int, p: int, v: int = 1, p2p_s: float = 0.0
) -> PipelineTime:
    """The makespan of ``m`` micro-batches through ``p`` stages of ``v`` chunks each.

    ``stage_s`` is one micro-batch's forward plus backward on one device (all its ``v``
    chunks together), either one number for uniform stages or one per stage; ``p2p_s`` is
    one point-to-point transfer between adjacent stages (paid twice per chunk and
    micro-batch, forward and backward, when ``p > 1``). See the module docstring.
    """
    _check(p, m, v)
    times = (
        [float(stage_s)] * p if isinstance(stage_s, int | float) else [float(t) for t in stage_s]
    )
    if len(times) != p:
        raise ValueError(f"{len(times)} stage times given for {p} stages")
    if min(times) < 0 or p2p_s < 0:
        raise ValueError(f"negative stage or transfer time: {times}, {p2p_s}")
    x = 2.0 * p2p_s if p > 1 else 0.0
    units = [t / v + x for t in times]
    slow = max(units)
    seconds = sum(units) + (m * v - 1) * slow
    s = units.index(slow)
    work = m * times[s]
    p2p = m * v * x
    return PipelineTime(seconds, work, p2p, max(0.0, seconds - work - p2p))


def exact_pipeline_time(
    fwd_s: Sequence[float],
    bwd_s: Sequence[float],
    m: int,
    v: int = 1,
    p2p_s: float = 0.0,
) -> PipelineTime:
    """:func:`pipeline_time` by the exact schedule (:func:`schedule_intervals`) for
    per-stage forward and backward times, with each chunk's two point-to-point transfers
    blocking its sender as in the closed form (so equal stages give the same makespan).
    The parts are those of the stage with the most work. Falls back to the closed form
    when the interleaved schedule does not apply (``m`` not a multiple of ``p``)."""
    p = len(fwd_s)
    per = [f + b for f, b in zip(fwd_s, bwd_s, strict=True)]
    if v > 1 and m % p:
        return pipeline_time(per, m, p, v, p2p_s)
    hop = p2p_s * v if p > 1 else 0.0
    seconds = simulate_schedule(p, m, [f + hop for f in fwd_s], [b + hop for b in bwd_s], v)
    s = max(range(p), key=lambda i: (per[i], -i))
    work = m * per[s]
    p2p = m * 2 * hop
    return PipelineTime(seconds, work, p2p, max(0.0, seconds - work - p2p))


def dualpipe_time(
    compute_s: Sequence[float],
    comm_s: Sequence[float],
    bwd_s: Sequence[float],
    weight_s: Sequence[float],
    m: int,
    p2p_s: float = 0.0,
) -> PipelineTime:
    """The makespan of DeepSeek-V3's DualPipe schedule (DeepSeek-AI 2024,
    arXiv:2412.19437, §3.2.1).

    Micro-batches enter the pipeline from both ends and a forward chunk of one runs
    together with a backward chunk of another, each one's communication (all-to-all
    dispatch and combine, pipeline sends) hidden behind the other's computation; per
    stage one micro-batch then costs ``c = max(compute, communication + 2·p2p)``. The
    bubble is the paper's Table 2, ``(p/2 − 1)·(F&B + B − 3W)`` with ``F&B = c``, ``B``
    the backward and ``W`` its weight-gradient part. Per stage: ``compute_s`` a
    micro-batch's forward and backward computation, ``comm_s`` its communication,
    ``bwd_s`` its backward, ``weight_s`` the weight-gradient part of that backward.
    """
    p = len(compute_s)
    if p < 2 or p % 2 or m < 1:
        raise ValueError(f"dualpipe needs an even pipeline >= 2 and m >= 1 (p={p}, m={m})")
    c = [max(a, x + 2.0 * p2p_s) for a, x in zip(compute_s, comm_s, strict=True)]
    s = max(range(p), key=lambda i: (c[i], -i))
    bubble = (p / 2 - 1) * max(0.0, c[s] + bwd_s[s] - 3.0 * weight_s[s])
    work = m * compute_s[s]
    exposed = m * c[s] - work
    return PipelineTime(m * c[s] + bubble, work, exposed, bubble)


def bubble_fraction(p: int, m: int, v: int = 1) -> float:
    """The paper's bubble fraction ``(p − 1) / (m·v)`` (bubble over ideal time)."""
    _check(p, m, v)
    return (p - 1) / (m * v)


def in_flight_microbatches(p: int, m: int, v: int = 1, stage: int = 0) -> float:
    """Micro-batch-equivalents of activations pipeline stage ``stage`` holds at its peak.

    1F1B: stage ``s`` runs ``p − s − 1`` warm-up forwards before its first backward, so it
    holds ``min(m, p − s)``. Interleaved: the warm-up is ``2·(p − s − 1) + (v − 1)·p``
    chunk forwards plus the one in steady state, each of ``1/v`` of the stage's layers;
    for the first stage that is ``p·(1 + (p − 1)/(p·v))`` (Korthikanti et al. 2022).
    """
    _check(p, m, v)
    if not 0 <= stage < p:
        raise ValueError(f"stage {stage} is not one of the {p} pipeline stages")
    if v == 1 or p == 1:
        return float(min(m, p - stage))
    units = 2 * (p - stage - 1) + (v - 1) * p + 1
    return min(float(m * v), float(units)) / v


def _order_1f1b(rank: int, p: int, m: int) -> list[tuple[str, int, int]]:
    warm = min(p - rank - 1, m)
    ops: list[tuple[str, int, int]] = [("F", i, 0) for i in range(warm)]
    f, b = warm, 0
    while f < m:
        ops.append(("F", f, 0))
        f += 1
        ops.append(("B", b, 0))
        b += 1
    ops.extend(("B", i, 0) for i in range(b, m))
    return ops


def _order_interleaved(rank: int, p: int, m: int, v: int) -> list[tuple[str, int, int]]:
    # Megatron-LM's interleaved order: unit k (0 .. m·v-1) of the forward stream is
    # micro-batch (k // (p·v))·p + k % p on chunk (k // p) % v; backward the same with
    # chunks reversed.
    total = m * v

    def fwd(k: int) -> tuple[str, int, int]:
        group, r = divmod(k, p * v)
        return ("F", group * p + r % p, r // p)

    def bwd(k: int) -> tuple[str, int, int]:
        group, r = divmod(k, p * v)
        return ("B", group * p + r % p, v - 1 - r // p)

    warm = min((p - rank - 1) * 2 + (v - 1) * p, total)
    ops = [fwd(k) for k in range(warm)]
    f, b = warm, 0
    while f < total:
        ops.append(fwd(f))
        f += 1
        ops.append(bwd(b))
        b += 1
    ops.extend(bwd(k) for k in range(b, total))
    return ops


def schedule_intervals(
    p: int,
    m: int,
    t_f: float | Sequence[float],
    t_b: float | Sequence[float],
    v: int = 1,
    p2p_s: float = 0.0,
) -> list[list[tuple[str, float, float]]]:
    """Per device, the ``(kind, start, end)`` of every op of the (interleaved) 1F1B
    schedule by list scheduling, ``kind`` ``F`` or ``B``.

    ``t_f``/``t_b`` are one micro-batch's forward/backward on one device (all ``v``
    chunks), one number for every stage or one per stage; one chunk unit takes ``t/v``.
    The interleaved schedule needs ``m`` to be a multiple of ``p`` (as Megatron-LM
    requires). Each device runs its ops in order; an op starts when the device is free
    and its input (the previous virtual stage's output, plus ``p2p_s`` when it crosses
    devices) is ready.
    """
    _check(p, m, v)
    if v > 1 and m % p:
        raise ValueError(f"the interleaved schedule needs m ({m}) to be a multiple of p ({p})")
    fs = [float(t_f)] * p if isinstance(t_f, int | float) else [float(x) for x in t_f]
    bs = [float(t_b)] * p if isinstance(t_b, int | float) else [float(x) for x in t_b]
    if len(fs) != p or len(bs) != p:
        raise ValueError(f"{len(fs)} forward and {len(bs)} backward times for {p} stages")
    orders = [_order_1f1b(r, p, m) if v == 1 else _order_interleaved(r, p, m, v) for r in range(p)]
    last = p * v - 1  # virtual stage index of the last chunk
    done: dict[tuple[str, int, int], float] = {}  # (kind, micro-batch, virtual stage) -> end
    pos = [0] * p
    free = [0.0] * p
    out: list[list[tuple[str, float, float]]] = [[] for _ in range(p)]
    pending = p
    # Sweep: repeatedly run every device whose next op has its input ready.
    while pending:
        progressed = False
        for r in range(p):
            unit = {"F": fs[r] / v, "B": bs[r] / v}
            while pos[r] < len(orders[r]):
                kind, mb, chunk = orders[r][pos[r]]
                vs = chunk * p + r
                if kind == "F":
                    dep = None if vs == 0 else ("F", mb, vs - 1)
                else:
                    dep = ("F", mb, last) if vs == last else ("B", mb, vs + 1)
                if dep is not None and dep not in done:
                    break
                ready = 0.0
                if dep is not None:
                    ready = done[dep] + (p2p_s if p > 1 else 0.0)
                start = max(free[r], ready)
                end = start + unit[kind]
                done[(kind, mb, vs)] = end
                free[r] = end
                out[r].append((kind, start, end))
                pos[r] += 1
                progressed = True
        pending = sum(1 for r in range(p) if pos[r] < len(orders[r]))
        if pending and not progressed:
            raise RuntimeError("pipeline schedule deadlocked (invalid order)")
    return out


def simulate_schedule(
    p: int,
    m: int,
    t_f: float | Sequence[float],
    t_b: float | Sequence[float],
    v: int = 1,
    p2p_s: float = 0.0,
) -> float:
    """The exact makespan of the (interleaved) 1F1B schedule
    (:func:`schedule_intervals`)."""
    ops = schedule_intervals(p, m, t_f, t_b, v, p2p_s)
    return max((dev[-1][2] for dev in ops if dev), default=0.0)
