"""Selective recomputation of named modules (engine/recompute.py, Megatron-Core's
``--recompute-modules``): the grammar, what the decoder's graph reruns, what its memory
drops, and how a training plan states and checks it."""

from __future__ import annotations

import typing
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from xpusim.engine.errors import ScenarioError
from xpusim.engine.graph import Phase, Shape
from xpusim.engine.host import build_host
from xpusim.engine.recompute import (
    RECOMPUTE_MODULES,
    RecomputeModule,
    recomputed_modules,
    selective_recompute,
)
from xpusim.engine.system import Parallelism
from xpusim.plugins.models.activations import layer_activations
from xpusim.plugins.models.hf import HFFamily
from xpusim.plugins.workloads.training.plan import (
    TrainingPlan,
    check_plan,
    flops_per_token,
    nearest_plans,
    plan_memory,
)
from xpusim.plugins.workloads.training.workload import TrainingConfig, make_plan

DEEPSEEK_SAVINGS = ("layernorm", "mla_up_proj", "moe_act")
"""What DeepSeek-V3 recomputes (arXiv:2412.19437, §3.2.3 and §3.3.3)."""


@pytest.fixture(scope="module")
def host() -> Any:
    return build_host()


def _tiny_deepseek() -> Any:
    """DeepSeek-V3's architecture at a size a test builds quickly."""
    return HFFamily().configure(
        {
            "preset": "deepseek-v3",
            "layers": 4,
            "dense_layers": 1,
            "hidden": 256,
            "heads": 4,
            "vocab": 1000,
            "experts": 8,
            "top_k": 2,
            "ffn_hidden": 128,
            "dense_ffn_hidden": 512,
            "shared_ffn_hidden": 128,
            "q_lora_rank": 64,
            "kv_lora_rank": 32,
            "mtp_layers": 0,
        }
    )


def test_grammar_is_canonical_and_checked() -> None:
    assert selective_recompute(["core_attn"]) == "selective"
    rc = selective_recompute(["moe_act", "layernorm", "mla_up_proj"])
    assert rc == "selective:layernorm,mla_up_proj,moe_act"
    assert recomputed_modules(rc) == frozenset(DEEPSEEK_SAVINGS)
    assert recomputed_modules("selective") == {"core_attn"}
    assert recomputed_modules("none") == recomputed_modules("full") == frozenset()
    for bad in ("selective:moe_act,layernorm", "selective:attn", "partial"):
        with pytest.raises(ValueError, match="unknown recompute"):
            recomputed_modules(bad)
    with pytest.raises(ValueError, match="unknown recompute module attn"):
        selective_recompute(["attn"])
    # the schema's literal and the engine's modules are one list, in order
    assert typing.get_args(RecomputeModule) == RECOMPUTE_MODULES


def test_graph_reruns_the_named_modules() -> None:
    """The training graph adds exactly the named modules' forward ops as ``recompute.*``."""
    m = _tiny_deepseek()
    par = Parallelism(pipeline=1)

    def rerun(rc: str) -> set[str]:
        g = m.build(Shape(Phase.TRAIN, batch=1, tokens=64, recompute=rc), par)
        return {o.name.removeprefix("recompute.") for o in g.ops if o.name.startswith("recompute.")}

    assert rerun("selective") == {"attn.core"}
    got = rerun(selective_recompute(DEEPSEEK_SAVINGS))
    assert {"ln1", "ln2", "attn.q_b", "attn.kv_b", "attn.q_a_norm", "attn.kv_a_norm"} <= got
    assert {"moe.glu"} <= got
    assert not {"attn.core", "moe.up", "moe.down", "attn.q_a", "attn.out"} & got
    moe = rerun(selective_recompute(["moe"]))
    assert {"moe.router", "moe.up", "moe.glu", "moe.down", "moe.shared.up"} <= moe
    assert "moe.shared.add" in moe and not any(n.startswith("attn.") for n in moe)
    assert rerun(selective_recompute(["shared_experts"])) == {
        "moe.shared.up",
        "moe.shared.glu",
        "moe.shared.down",
    }
    assert rerun(selective_recompute(["mlp"])) == {"mlp.up", "mlp.glu", "mlp.down"}


def test_memory_drops_what_the_modules_keep() -> None:
    """Each module drops the tensors tagged with it, and only those."""
    m = _tiny_deepseek()
    shape = Shape(Phase.TRAIN, batch=1, tokens=64)
    par = Parallelism()
    none = m.activation_bytes(shape, par, "none")
    saved = layer_activations(m.cfg, 64, moe=True, unfused=False)
    n_moe = m.cfg.layers - m.cfg.dense_layers
    rows = 64 * m.cfg.top_k
    for mod in ("layernorm", "mla_up_proj", "moe_act", "moe", "shared_experts"):
        rc = selective_recompute([mod])
        dropped = sum(s.bytes(64, rows, par) for s in saved if mod in s.dropped_by)
        if mod in ("layernorm", "mla_up_proj"):  # the dense layer has them too
            dense = layer_activations(m.cfg, 64, moe=False, unfused=False)
            d_dense = sum(s.bytes(64, rows, par) for s in dense if mod in s.dropped_by)
        else:
            d_dense = 0.0
        want = none - n_moe * dropped - m.cfg.dense_layers * d_dense
        assert dropped > 0, mod
        assert m.activation_bytes(shape, par, rc) == pytest.approx(want), mod
    ds = selective_recompute(DEEPSEEK_SAVINGS)
    names = {s.name for s in saved if not s.dropped_by & set(DEEPSEEK_SAVINGS)}
    assert "attn.core.q" not in names and "moe.expert.act.input" in names
    assert "moe.expert.fc2.input" not in names and "attn.kv_a_norm.input" in names
    assert m.activation_bytes(shape, par, ds) < m.activation_bytes(shape, par, "selective")


def test_plan_states_checks_and_counts_the_modules(host: Any) -> None:
    """``recompute_modules`` needs ``recompute: selective``; a module the model lacks is
    refused by name; the rerun FLOPs count as hardware FLOPs."""
    cfg = TrainingConfig(
        global_batch=8, steps=1, recompute="selective", recompute_modules=list(DEEPSEEK_SAVINGS)
    )
    m = _tiny_deepseek()
    plan = make_plan(cfg, m)
    assert plan.recompute == "selective:layernorm,mla_up_proj,moe_act"
    assert check_plan(m, Parallelism(data=8), plan, 8) == []
    with pytest.raises(ValidationError, match="set recompute: selective"):
        TrainingConfig(global_batch=8, steps=1, recompute="full", recompute_modules=["moe"])
    with pytest.raises(ValidationError, match="recompute_modules is empty"):
        TrainingConfig(global_batch=8, steps=1, recompute_modules=[])
    llama = host.models.get("llama").configure({"preset": "llama-2-7b"})
    with pytest.raises(ScenarioError, match=r"workload\.recompute_modules: mla_up_proj, moe_act"):
        make_plan(cfg, llama)
    base = flops_per_token(m, 64, "none")
    sel = flops_per_token(m, 64, plan.recompute)
    assert sel[0] == base[0] and sel[1] > base[1]
    g = m.build(Shape(Phase.TRAIN, batch=1, tokens=64, recompute=plan.recompute))
    rerun = sum(o.flops * o.count for o in g.ops if o.name.startswith("recompute."))
    assert sel[1] - base[1] == pytest.approx(rerun / 64)


def test_a_plan_without_the_model_parts_is_refused(host: Any) -> None:
    """A plan built without a scenario is checked too: the message names the modules
    and what the model has."""
    plan = TrainingPlan(global_batch=8, micro_batch=1, seq_len=256, recompute="selective:moe")
    llama = host.models.get("llama").configure({"preset": "llama-2-7b"})
    (msg,) = check_plan(llama, Parallelism(data=8), plan, 8)
    assert "recompute_modules moe are not parts of llama-2-7b" in msg
    assert "core_attn, layernorm, mlp" in msg


def test_nearest_plans_try_the_light_modules() -> None:
    """A plan that fits with the light modules rerun is among the nearest plans offered."""
    m = _tiny_deepseek()
    par = Parallelism()
    plan = TrainingPlan(global_batch=8, micro_batch=8, seq_len=2048, recompute="selective")
    light = "selective:core_attn,layernorm,mla_up_proj,moe_act"
    sel = plan_memory(m, par, plan, 1e15).total
    lit = plan_memory(m, par, replace(plan, recompute=light), 1e15).total
    assert lit < sel
    offered = nearest_plans(m, par, plan, 1, (sel + lit) / 2)
    assert any(f"recompute={light}," in text for text in offered), offered
