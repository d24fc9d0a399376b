"""The serving world: conservation of requests and tokens, scheduler behaviour, frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from tests.fakes import FakeModel, fake_device
from xpusim.engine.backend import Compiled, Cost, Fit
from xpusim.engine.frames import DEVICES_SCHEMA
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.policies import ReplicaState, Route, SchedulerSpec
from xpusim.engine.system import Parallelism, System, Topology
from xpusim.engine.traces import REQUEST_SCHEMA
from xpusim.engine.workload import WorkloadContext
from xpusim.plugins.workloads import WORKLOADS
from xpusim.plugins.workloads.offline.workload import OfflineConfig, OfflineWorkload
from xpusim.plugins.workloads.serving.arrivals import ArrivalSpec, generate
from xpusim.plugins.workloads.serving.metrics import serving_metrics, weighted_quantile
from xpusim.plugins.workloads.serving.routers.round_robin import RoundRobinRouter
from xpusim.plugins.workloads.serving.schemas import REQUESTS_SCHEMA, STEPS_SCHEMA, TBT_SCHEMA
from xpusim.plugins.workloads.serving.workload import ServingConfig, ServingWorkload
from xpusim.plugins.workloads.serving.world import simulate_serving

# --- a fake compiled model with a stated cost formula ---------------------------------

BASE_S = 5e-3  # fixed cost of every step (weights read once)
TOKEN_S = 2e-5  # per new token (prefill or decode)
PAIR_S = 1e-8  # per (new token, cached token) attention pair
WATTS = 300.0


def formula(shape: Shape) -> tuple[float, float]:
    """(seconds beyond the base, prefill tokens) of one shape, parts summed."""
    if shape.parts:
        secs = toks = 0.0
        for p in shape.parts:
            s, t = formula(p)
            secs, toks = secs + s, toks + t
        return secs, toks
    new = shape.batch * shape.tokens
    pairs = shape.batch * shape.tokens * (shape.context + (shape.tokens + 1) / 2)
    pre = new if shape.phase in (Phase.PREFILL, Phase.FORWARD) else 0
    return TOKEN_S * new + PAIR_S * pairs, pre


class StatedCompiled(Compiled):
    """seconds = 5 ms + 20 us per new token + 10 ns per attention pair; 300 W busy;
    state ``compute`` when the step prefills, ``memory`` otherwise."""

    def _cost(self, shape: Shape) -> Cost:
        extra, pre = formula(shape)
        sec = BASE_S + extra
        return Cost(sec, WATTS * sec, {"compute" if pre else "memory": sec})

    def fit(self, *, kv_tokens: int = 0, batch: int = 1, training: bool = False) -> Fit:
        need = self.model.info.param_bytes + kv_tokens * self.model.kv_bytes_per_token
        have = self.system.device.memory_bytes.value
        return Fit(need <= have, need, have)


def make_system(count: int = 1, tensor: int = 1) -> System:
    topo = Topology(8, 1e11, 1e-6, 1e10, 1e-5)
    return System(
        "fake-sys", "fake", fake_device("chip-b", 80), count, Parallelism(tensor=tensor), topo
    )


def compiled(count: int = 1, tensor: int = 1) -> StatedCompiled:
    return StatedCompiled(make_system(count, tensor), FakeModel(1e9))


def load(
    n: int = 300, rate: str = "20/s", prompt: float = 200, out: float = 50, seed: int = 3
) -> pl.DataFrame:
    spec = ArrivalSpec.model_validate(
        {
            "process": "poisson",
            "rate": rate,
            "count": n,
            "prompt_tokens": {"dist": "lognormal", "median": prompt, "sigma": 0.6, "max": 4000},
            "output_tokens": {"dist": "lognormal", "median": out, "sigma": 0.6, "max": 400},
        }
    )
    return generate(spec, seed)


def run(
    frame: pl.DataFrame,
    kind: str = "continuous",
    kv: int = 200_000,
    replicas: int = 1,
    router: str = "round-robin",
    concurrency: int | None = None,
    **sched: object,
):
    return simulate_serving(
        frame,
        compiled(replicas),
        system="s",
        replicas=replicas,
        devices_per_replica=1,
        scheduler=SchedulerSpec(kind=kind, **sched),
        router=router,
        kv_block_tokens=16,
        kv_capacity_tokens=kv,
        concurrency=concurrency,
    )


# --- conservation ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["static", "continuous", "chunked-prefill"])
def test_every_request_arrives_once_and_finishes_once(kind: str) -> None:
    """Each request appears exactly once, finishes after it arrived, and times are ordered
    arrival <= first scheduled <= first token <= finish."""
    frame = load()
    res = run(frame, kind)
    req = res.frames["requests"]
    assert req.height == frame.height
    assert req["request_id"].n_unique() == frame.height
    assert (req["status"] == "ok").all()
    assert (req["arrival_s"] <= req["first_scheduled_s"]).all()
    assert (req["first_scheduled_s"] < req["first_token_s"]).all()
    assert (req["first_token_s"] <= req["finish_s"]).all()
    assert (req["finish_s"] <= res.simulated_s).all()
    assert_frame_equal(req.select(REQUEST_SCHEMA.keys()).with_columns(), frame, check_dtypes=True)


@pytest.mark.parametrize("kind", ["continuous", "chunked-prefill"])
def test_generated_tokens_equal_requested(kind: str) -> None:
    """Decode tokens of all steps plus one first token per prefill completion (one per
    request plus one per resumed preempted decoder) equal the requested output tokens.
    (Chunked prefill may also preempt a half-prefilled prompt, which emits no extra token.)"""
    frame = load(200, rate="50/s")
    res = run(frame, kind, kv=3000)
    req, steps = res.frames["requests"], res.frames["steps"]
    pre = int(req["preemptions"].sum())
    assert pre > 0
    made = int(steps["decode_tokens"].sum()) + req.height
    want = int(req["output_tokens"].sum())
    if kind == "continuous":
        assert made + pre == want
    else:
        assert made < want <= made + pre
    # every prompt token is prefilled at least once
    assert int(steps["prefill_tokens"].sum()) >= int(req["prompt_tokens"].sum())


def test_simulated_time_is_monotone() -> None:
    """Each replica's steps follow each other without overlap and take positive time."""
    res = run(load(400, rate="80/s"), replicas=3, router="least-outstanding")
    for (_r,), g in res.frames["steps"].group_by(["replica"]):
        s, e = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        assert (e > s).all()
        assert (s[1:] >= e[:-1]).all()


def test_frames_have_declared_schemas() -> None:
    """The frames carry exactly their declared schemas."""
    res = run(load(50))
    for name, schema in (
        ("requests", REQUESTS_SCHEMA),
        ("steps", STEPS_SCHEMA),
        ("devices", DEVICES_SCHEMA),
        ("tbt", TBT_SCHEMA),
    ):
        assert dict(res.frames[name].schema) == schema, name


def test_devices_timeline_covers_span() -> None:
    """Each device's intervals tile [0, simulated_s] with no gap, and busy joules add up
    to the step joules."""
    res = run(load(100), replicas=2)
    dev, steps = res.frames["devices"], res.frames["steps"]
    for (_d,), g in dev.group_by(["device"]):
        g = g.sort("start_s")
        assert g["start_s"][0] == 0.0
        assert g["end_s"][-1] == pytest.approx(res.simulated_s)
        assert (g["start_s"].to_numpy()[1:] == g["end_s"].to_numpy()[:-1]).all()
    assert dev["joules"].sum() == pytest.approx(steps["joules"].sum())


# --- scheduler behaviour ---------------------------------------------------------------


def test_continuous_beats_static_on_throughput() -> None:
    """For the same overloading load, iteration-level batching finishes sooner."""
    frame = load(400, rate="200/s")
    static = serving_metrics(
        run(frame, "static", max_batch=32).frames, run(frame, "static", max_batch=32).simulated_s
    )
    cont_res = run(frame, "continuous", max_batch=32)
    cont = serving_metrics(cont_res.frames, cont_res.simulated_s)
    assert cont["throughput_tokens_per_s"] > 1.2 * static["throughput_tokens_per_s"]


def test_static_returns_batch_together_and_pads() -> None:
    """In a static batch all requests finish at the batch end, and decode steps keep the
    batch size while fewer requests still produce tokens."""
    frame = pl.DataFrame(
        {"arrival_s": [0.0, 0.0, 0.0], "prompt_tokens": [10, 20, 30], "output_tokens": [2, 5, 9]},
        schema=REQUEST_SCHEMA,
    )
    res = run(frame, "static", max_batch=8)
    req, steps = res.frames["requests"], res.frames["steps"]
    assert req["finish_s"].n_unique() == 1
    assert steps.height == 9  # one prefill + 8 decodes for the longest
    assert (steps["batch"] == 3).all()
    assert steps["decode_tokens"].to_list() == [0, 3, 2, 2, 2, 1, 1, 1, 1]


def test_chunked_prefill_lowers_tbt_tail_for_long_prompts() -> None:
    """Long prompts stall decodes under fused continuous batching; Sarathi-style chunks
    bound every iteration and cut the p99 time between tokens."""
    frame = load(300, rate="10/s", prompt=3000, out=100)
    c = run(frame, "continuous", max_batch_tokens=16384)
    k = run(frame, "chunked-prefill", chunk=512)
    mc = serving_metrics(c.frames, c.simulated_s)
    mk = serving_metrics(k.frames, k.simulated_s)
    assert mk["tbt_p99_s"] < 0.5 * mc["tbt_p99_s"]
    assert (
        k.frames["steps"]["prefill_tokens"] + k.frames["steps"]["decode_tokens"]
        <= 512 + k.frames["steps"]["decode_tokens"].clip(lower_bound=512) - 512
    ).all()


def test_preemption_when_kv_is_tiny_and_all_finish() -> None:
    """With a KV cache far smaller than the load needs, requests are preempted and
    recomputed, and every one still finishes with all its tokens."""
    frame = load(150, rate="100/s")
    res = run(frame, kv=2048)
    req = res.frames["requests"]
    assert int(req["preemptions"].sum()) > 0
    assert (req["status"] == "ok").all()
    assert (res.frames["steps"]["kv_blocks_used"] <= 2048 // 16).all()


def test_request_that_never_fits_is_dropped() -> None:
    """A request whose prompt + output exceeds the whole KV cache is dropped with a
    reason; the others are served."""
    frame = pl.DataFrame(
        {"arrival_s": [0.0, 0.1], "prompt_tokens": [100, 5000], "output_tokens": [10, 10]},
        schema=REQUEST_SCHEMA,
    )
    req = run(frame, kv=1024).frames["requests"]
    assert req["status"].to_list() == ["ok", "dropped"]
    assert "5009 KV tokens" in req["reason"][1]
    assert req["replica"][1] is None and req["finish_s"][1] is None


def test_a_request_without_output_tokens_is_refused_by_row() -> None:
    """Every request produces at least its first token; a frame row asking for none is
    refused with its row number rather than stalling the replica."""
    frame = pl.DataFrame(
        {"arrival_s": [0.0, 0.1], "prompt_tokens": [100, 50], "output_tokens": [10, 0]},
        schema=REQUEST_SCHEMA,
    )
    with pytest.raises(ValueError, match=r"request 1 asks for 0 output tokens"):
        run(frame, kv=1024)


def test_least_outstanding_spreads_load() -> None:
    """Least-outstanding routing uses every replica and keeps their counts close."""
    res = run(load(600, rate="150/s"), replicas=4, router="least-outstanding")
    counts = res.frames["requests"].group_by("replica").len()["len"].to_numpy()
    assert counts.size == 4 and counts.min() > 0.7 * counts.max()


def test_determinism_same_seed_identical_frames() -> None:
    """The same load and settings give identical frames."""
    a = run(load(seed=9), "chunked-prefill", kv=4000)
    b = run(load(seed=9), "chunked-prefill", kv=4000)
    for name in a.frames:
        assert_frame_equal(a.frames[name], b.frames[name])


# --- token gaps --------------------------------------------------------------------------


def _brute_gaps(res) -> tuple[list[float], dict[int, float]]:
    """Every token gap by brute force from the step log (continuous, no preemption):
    a request decodes in every iteration from its first token to its last."""
    steps = res.frames["steps"].sort("step")
    ends = steps["end_s"].to_numpy()
    durs = ends - steps["start_s"].to_numpy()
    gaps: list[float] = []
    worst: dict[int, float] = {}
    for r in res.frames["requests"].iter_rows(named=True):
        i0 = int(np.searchsorted(ends, r["first_token_s"]))
        i1 = int(np.searchsorted(ends, r["finish_s"]))
        g = list(durs[i0 + 1 : i1 + 1])
        assert len(g) == r["output_tokens"] - 1
        gaps += g
        if g:
            worst[r["request_id"]] = max(g)
    return gaps, worst


def test_tbt_frame_is_exact_multiset_of_token_gaps() -> None:
    """The weighted tbt frame equals the brute-force per-token gap list, so its
    percentiles are exact; per-request max and mean gaps match too."""
    res = run(load(120, rate="30/s"))
    gaps, worst = _brute_gaps(res)
    tbt = res.frames["tbt"]
    assert int(tbt["tokens"].sum()) == len(gaps)
    for q in (0.5, 0.9, 0.99):
        assert weighted_quantile(
            tbt["gap_s"].to_numpy(), tbt["tokens"].to_numpy(), q
        ) == pytest.approx(float(np.percentile(gaps, q * 100, method="inverted_cdf")))
    req = res.frames["requests"]
    for r in req.iter_rows(named=True):
        if r["output_tokens"] > 1:
            assert r["tbt_max_s"] == pytest.approx(worst[r["request_id"]])
            assert r["tbt_mean_s"] <= r["tbt_max_s"] + 1e-12


def test_preempted_request_tbt_includes_resume_gap() -> None:
    """A preempted request's largest gap covers its wait for readmission."""
    res = run(load(150, rate="100/s"), kv=2048)
    req = res.frames["requests"].filter(pl.col("preemptions") > 0)
    steps_max = float((res.frames["steps"]["end_s"] - res.frames["steps"]["start_s"]).max())
    assert req.height > 0
    assert (req["tbt_max_s"] >= req["tbt_mean_s"]).all()
    assert float(req["tbt_max_s"].max()) > steps_max


# --- the workload plugin ---------------------------------------------------------------


def _ctx(count: int = 1, seed: int = 7, resolve=None) -> WorkloadContext:
    c = compiled(count)
    return WorkloadContext(
        system=c.system,
        compiled=c,
        model=c.model,
        seed=seed,
        base_dir=Path("."),
        resolve_trace=resolve or (lambda m: None),
    )


ARRIVALS = {
    "process": "poisson",
    "rate": "10/s",
    "count": 200,
    "prompt_tokens": {"dist": "lognormal", "median": 300},
    "output_tokens": {"dist": "constant", "value": 40},
}


def test_workload_registers_serving_and_offline() -> None:
    """The plugin's list names the serving and offline kinds."""
    assert {w.name for w in WORKLOADS} >= {"serving", "offline"}


def test_serving_workload_metrics_keys() -> None:
    """A serving run reports the contract's latency, throughput and SLO keys."""
    cfg = ServingConfig.model_validate(
        {
            "arrivals": ARRIVALS,
            "scheduler": {"kind": "continuous", "max_batch": 64},
            "router": "least-outstanding",
            "slo": {"ttft_p99": "2 s", "tbt_p99": "150 ms"},
        }
    )
    run_ = ServingWorkload().simulate(cfg, _ctx(2))
    for key in (
        "throughput_tokens_per_s",
        "ttft_p50_s",
        "ttft_p99_s",
        "tbt_p50_s",
        "tbt_p99_s",
        "e2e_p50_s",
        "e2e_p99_s",
        "slo_attainment",
        "simulated_s",
        "goodput_tokens_per_s",
        "requests_dropped",
        "preemptions",
        "mean_batch",
        "utilization",
        "busy_s",
        "state_s",
    ):
        assert run_.metrics[key] is not None, key
    assert 0 < run_.metrics["slo_attainment"] <= 1
    assert run_.metrics["output_tokens"] == 200 * 40
    assert run_.frames["requests"]["replica"].n_unique() == 2


def test_serving_workload_reads_trace_through_context(tmp_path: Path) -> None:
    """A trace block is handed to ctx.resolve_trace with its options."""
    seen = {}

    def resolve(m):
        seen.update(m)
        return pl.DataFrame(
            {"arrival_s": [0.0, 1.0], "prompt_tokens": [10, 20], "output_tokens": [3, 4]},
            schema=REQUEST_SCHEMA,
        )

    cfg = ServingConfig.model_validate(
        {"trace": {"path": "t.csv", "format": "azure-llm", "limit": 2, "time_scale": 2.0}}
    )
    out = ServingWorkload().simulate(cfg, _ctx(resolve=resolve))
    assert seen == {"path": "t.csv", "format": "azure-llm", "limit": 2, "time_scale": 2.0}
    assert out.metrics["output_tokens"] == 7


def test_serving_schema_rejects_bad_blocks() -> None:
    """Unknown keys, both or neither source, and unit-less durations are refused."""
    with pytest.raises(ValidationError):
        ServingConfig.model_validate({"arrivals": ARRIVALS, "schedular": {}})
    with pytest.raises(ValidationError):
        ServingConfig.model_validate({})
    with pytest.raises(ValidationError):
        ServingConfig.model_validate(
            {"arrivals": ARRIVALS, "trace": {"path": "x", "format": "csv"}}
        )
    with pytest.raises(ValidationError):
        ServingConfig.model_validate({"arrivals": ARRIVALS, "slo": {"ttft_p99": 2}})
    with pytest.raises(ValidationError):
        ServingConfig.model_validate({"arrivals": ARRIVALS, "scheduler": {"kind": "magic"}})


def test_offline_decoder_all_at_time_zero() -> None:
    """Offline decoder inference puts every request at t = 0 and reports samples/s."""
    cfg = OfflineConfig.model_validate(
        {"count": 100, "output_tokens": {"dist": "constant", "value": 20}}
    )
    out = OfflineWorkload().simulate(cfg, _ctx())
    assert (out.frames["requests"]["arrival_s"] == 0).all()
    assert out.metrics["throughput_samples_per_s"] == pytest.approx(100 / out.simulated_s)
    assert out.metrics["output_tokens"] == 2000


def test_offline_forward_batches() -> None:
    """A non-decoder model runs ceil(count / batch) forward steps over the replicas."""
    c = StatedCompiled(make_system(2), FakeModel(1e9, kind="vision"))
    ctx = WorkloadContext(
        system=c.system,
        compiled=c,
        model=c.model,
        seed=1,
        base_dir=Path("."),
        resolve_trace=lambda m: None,
    )
    cfg = OfflineConfig.model_validate({"count": 100, "batch": 32, "seq_len": 1})
    out = OfflineWorkload().simulate(cfg, ctx)
    steps = out.frames["steps"]
    assert steps.height == 4 and int(steps["batch"].sum()) == 100
    assert out.metrics["throughput_samples_per_s"] == pytest.approx(100 / out.simulated_s)
    per_rep = steps.group_by("replica").agg((pl.col("end_s") - pl.col("start_s")).sum())
    assert out.simulated_s == pytest.approx(float(per_rep["end_s"].max()))


class _FirstReplica(RoundRobinRouter):
    """A round-robin subclass that sends everything to replica 0 (routes by its own rule)."""

    def start(self, replicas: Sequence[ReplicaState], seed: int) -> Route:
        return lambda reps: reps[0]


def test_fast_path_only_for_the_builtin_router_and_schedulers() -> None:
    """The world routes ahead only on a plan made by the class that routes: a round-robin
    subclass with its own rule (and the inherited plan) is asked at each arrival, so its
    choices hold."""

    def serve(**args: object) -> pl.DataFrame:
        res = simulate_serving(
            load(60), compiled(2), system="s", replicas=2, devices_per_replica=1, **args
        )
        assert isinstance(res.frames["requests"], pl.DataFrame)
        return res.frames["requests"]

    assert set(serve(router=_FirstReplica())["replica"].to_list()) == {0}
    fast, plain = serve(), serve(fast=False)
    assert_frame_equal(fast, plain)
    assert set(fast["replica"].to_list()) == {0, 1}
