"""The example scheduler and router on small hand-built replicas, with nothing but
``xpusim.engine`` (run from this folder: ``pytest``)."""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

import simpy
from xpusim_example_serving_policy.router import PowerOfTwoChoicesRouter
from xpusim_example_serving_policy.scheduler import ShortestPromptFirstScheduler

from xpusim.engine.policies import DONE, SchedulerSpec


@dataclass
class Cache:
    """A KV cache of ``total_blocks`` blocks of ``block_tokens`` tokens."""

    total_blocks: int
    block_tokens: int = 16
    growth: list[int] = field(default_factory=lambda: [0] * 16)

    def blocks(self, tokens: int) -> int:
        """Blocks a sequence of ``tokens`` tokens holds (every layer keeps every token)."""
        return -(-tokens // self.block_tokens) if tokens > 0 else 0

    def peak_blocks(self, tokens: int) -> int:
        """The most blocks it holds on its way there: the same without a window."""
        return self.blocks(tokens)


@dataclass
class Log:
    """A step log, one array per column."""

    start: array[float] = field(default_factory=lambda: array("d"))
    end: array[float] = field(default_factory=lambda: array("d"))
    batch: array[int] = field(default_factory=lambda: array("q"))
    prefill: array[int] = field(default_factory=lambda: array("q"))
    decode: array[int] = field(default_factory=lambda: array("q"))
    kv: array[int] = field(default_factory=lambda: array("q"))
    state: array[int] = field(default_factory=lambda: array("q"))
    joules: array[float] = field(default_factory=lambda: array("d"))


@dataclass
class Replica:
    """One replica: its queue, cache and log."""

    index: int
    kv: Cache
    outstanding: int = 0
    wake: simpy.Event | None = None
    waiting: deque[int] = field(default_factory=deque)
    log: Log = field(default_factory=Log)


class Requests:
    """Per-request arrays of ``prompts`` and ``outputs``, all arrived at time 0."""

    def __init__(self, prompts: list[int], outputs: list[int]) -> None:
        n = self.n = len(prompts)
        self.done = 0
        self.arrival = [0.0] * n
        self.prompt, self.output = prompts, outputs
        self.cur_prompt, self.cur_output = array("q", prompts), array("q", outputs)
        self.state = bytearray(n)
        self.entry, self.fin_iter, self.seg_start = (array("q", [0]) * n for _ in range(3))
        self.preemptions = array("q", [0]) * n
        self.seg_max = array("d", [0.0]) * n
        self.first_scheduled, self.first_token, self.finish = (
            array("d", [math.nan]) * n for _ in range(3)
        )
        self.extra_gaps: list[float] = []


class Prices:
    """An iteration costs 1 ms plus 1 µs per prompt token and per cached decode token."""

    def __init__(self) -> None:
        self.memo: dict[tuple[int, ...], tuple[float, float, int]] = {}
        self.bits = 6
        self.states = ["busy"]

    def step(
        self, pf_n: int, pf_tok: int, pf_ctx: int, n_dec: int, dec_ctx: int
    ) -> tuple[float, float, int]:
        """Seconds, joules (one per second) and the only state."""
        secs = 1e-3 + 1e-6 * (pf_tok + pf_ctx + dec_ctx)
        return secs, secs, 0


def serve(
    prompts: list[int], outputs: list[int], blocks: int, max_batch: int
) -> tuple[Replica, Requests]:
    """Run every request, all waiting at time 0, on one replica of ``blocks`` blocks."""
    env = simpy.Environment()
    replica = Replica(0, Cache(blocks))
    requests = Requests(prompts, outputs)
    replica.waiting.extend(range(len(prompts)))
    replica.outstanding = len(prompts)
    spec = SchedulerSpec(kind="shortest-prompt-first", max_batch=max_batch)
    env.process(ShortestPromptFirstScheduler().process(env, replica, requests, Prices(), spec))
    env.run()
    return replica, requests


def test_one_at_a_time_runs_the_shortest_prompt_first() -> None:
    """With room for one sequence, requests waiting together start in order of prompt
    length (ties by id), each after the previous one finished."""
    prompts = [300, 20, 150, 20, 90]
    replica, req = serve(prompts, [5, 3, 4, 1, 2], blocks=100, max_batch=1)
    order = sorted(range(5), key=lambda r: req.first_scheduled[r])
    assert order == [1, 3, 4, 2, 0]
    for a, b in pairwise(order):
        assert req.first_scheduled[b] == req.finish[a]
    assert req.done == 5 and all(s == DONE for s in req.state)
    assert replica.outstanding == 0


def test_whole_kv_need_is_reserved_and_every_token_is_logged() -> None:
    """On a cache of 20 blocks of 16 tokens, requests of 9 blocks each run at most two
    at a time; every request finishes, the log holds one decode token per output token
    after the first and never more blocks than the cache."""
    prompts, outputs = [100] * 6, [40] * 6  # 139 tokens: 9 blocks each
    replica, req = serve(prompts, outputs, blocks=20, max_batch=8)
    assert req.done == 6
    assert max(replica.log.batch) == 2
    assert max(replica.log.kv) <= 20
    assert sum(replica.log.prefill) == sum(prompts)
    assert sum(replica.log.decode) == sum(m - 1 for m in outputs)
    assert replica.log.kv[-1] == 0


def test_two_choices_pick_the_less_loaded_of_two_and_repeat_with_the_seed() -> None:
    """A request joins the less loaded of the two replicas drawn: of five replicas the
    one holding requests is never chosen and the four idle ones all are; the same seed
    gives the same choices, another seed other ones."""
    cache = Cache(1)
    replicas = [Replica(i, cache, outstanding=o) for i, o in enumerate([5, 0, 0, 0, 0])]
    router = PowerOfTwoChoicesRouter()
    route = router.start(replicas, seed=1)
    picks = [route(replicas).index for _ in range(200)]
    assert 0 not in picks
    assert set(picks) == {1, 2, 3, 4}
    again = router.start(replicas, seed=1)
    assert [again(replicas).index for _ in range(200)] == picks
    other = router.start(replicas, seed=2)
    assert [other(replicas).index for _ in range(200)] != picks
