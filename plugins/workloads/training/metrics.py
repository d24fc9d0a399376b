"""The summary keys the ``training`` workload emits, declared for the metric vocabulary."""

from __future__ import annotations

from xpusim.engine.metrics import (
    STEP_TIME_S,
    THROUGHPUT_SAMPLES_PER_S,
    THROUGHPUT_TOKENS_PER_S,
    Metric,
    detail,
)

TRAINING_METRICS: tuple[Metric, ...] = (
    THROUGHPUT_TOKENS_PER_S,
    THROUGHPUT_SAMPLES_PER_S,
    STEP_TIME_S,
    Metric(
        "mfu",
        "MFU",
        "%",
        100.0,
        "higher",
        description="model FLOPs utilization: model FLOPs per step over peak FLOPs x step time",
        order=410,
        short="MFU",
        table_format="{:.1f}%",
    ),
    Metric(
        "time_to_train_s",
        "Time to train",
        "h",
        1 / 3600,
        "lower",
        description="wall time to train the configured tokens or steps, failures included",
        order=420,
        short="train h",
        table_format="{:,.1f}",
        headline=True,
    ),
    detail(
        "throughput_tokens_per_s_no_failures",
        "Throughput without failures",
        "tokens/s",
        "higher",
        description="tokens per second of the step time alone",
        order=101,
    ),
    detail(
        "hfu",
        "HFU",
        "%",
        "higher",
        scale=100.0,
        description="hardware FLOPs utilization (recomputed forward included)",
    ),
    detail(
        "model_tflops_per_device",
        "Model TFLOP/s per device",
        "TFLOP/s",
        "higher",
        description="model FLOPs per second per device",
    ),
    detail(
        "hardware_tflops_per_device",
        "Hardware TFLOP/s per device",
        "TFLOP/s",
        "higher",
        description="hardware FLOPs per second per device",
    ),
    *(
        detail(
            f"time_to_train_{p}_s",
            f"Time to train {p}",
            "s",
            "lower",
            description=f"{p} of time to train over the seeds",
        )
        for p in ("p10", "p50", "p90")
    ),
    detail("goodput", "Goodput", "%", "higher", scale=100.0, description="useful time share"),
    detail("goodput_p10", "Goodput p10", "%", "higher", scale=100.0, description="over seeds"),
    detail("goodput_p90", "Goodput p90", "%", "higher", scale=100.0, description="over seeds"),
    detail("device_hours", "Device-hours", "h", "lower", description="devices x time to train"),
    detail("steps", "Steps", description="optimizer steps of the run"),
    detail("tokens", "Tokens", description="tokens trained"),
    detail("microbatches", "Microbatches", description="microbatches per step"),
    detail(
        "pipeline_bubble_fraction",
        "Pipeline bubble",
        "%",
        "lower",
        scale=100.0,
        description="share of a step the pipeline stages wait",
    ),
    detail("bubble_s", "Bubble time", "s", "lower", description="pipeline bubble per step"),
    detail("tp_comm_s", "Tensor-parallel comm", "s", "lower", description="per step"),
    detail("pp_comm_s", "Pipeline comm", "s", "lower", description="per step"),
    detail("dp_comm_s", "Data-parallel comm", "s", "lower", description="per step"),
    detail(
        "dp_comm_exposed_s",
        "Exposed data-parallel comm",
        "s",
        "lower",
        description="data-parallel communication not hidden behind compute, per step",
    ),
    detail("cp_comm_s", "Context-parallel comm", "s", "lower", description="per step"),
    detail(
        "cp_comm_exposed_s",
        "Exposed context-parallel comm",
        "s",
        "lower",
        description="key/value exchange not hidden behind attention, per step",
    ),
    detail(
        "offload_exposed_s",
        "Exposed activation offload",
        "s",
        "lower",
        description="host transfers of offloaded activations not hidden behind compute, per step",
    ),
    detail(
        "pipeline_layers",
        "Layers per pipeline stage",
        description="transformer layers of each stage, first to last",
    ),
    detail("optimizer_s", "Optimizer step", "s", "lower", description="per step"),
    detail("failures", "Failures", better="lower", description="failures during the run"),
    detail("checkpoints", "Checkpoints", description="checkpoints written"),
    detail("checkpoint_bytes", "Checkpoint size", "B", description="bytes per checkpoint"),
    detail("checkpoint_write_s", "Checkpoint write", "s", "lower", description="per checkpoint"),
    detail("lost_work_s", "Lost work", "s", "lower", description="work redone after failures"),
    detail("seeds", "Seeds", description="failure seeds simulated"),
    Metric(
        "memory_per_device_bytes",
        "Memory per device",
        "GB",
        scale=1e-9,
        better="none",
        description="weights, gradients, optimizer states, activations and the runtime "
        "reserve on the plan's fullest device",
        order=954,
        table=False,
    ),
    Metric(
        "memory_activations_bytes",
        "Activations per device",
        "GB",
        scale=1e-9,
        better="none",
        description="activations on the plan's fullest device (its layers times the "
        "micro-batches it holds in flight)",
        order=955,
        table=False,
    ),
    *(
        detail(
            f"memory_{part}_bytes",
            f"Memory: {label}",
            "B",
            "lower",
            description=f"{label} on the plan's fullest device",
        )
        for part, label in (
            ("weights", "weights"),
            ("gradients", "gradients"),
            ("optimizer", "optimizer states"),
            ("reserve", "runtime reserve"),
        )
    ),
    detail(
        "memory_fullest_device",
        "Fullest device",
        description="the pipeline stage whose device needs the most memory, its layers and "
        "micro-batches in flight",
    ),
    detail(
        "recompute",
        "Recomputation",
        description="activation recomputation: none, selective, full, or selective: and the "
        "modules rerun",
    ),
    detail("flops_definition", "FLOPs definition", description="how MFU and HFU count FLOPs"),
)
"""Every key :class:`~xpusim.plugins.workloads.training.workload.TrainingWorkload` emits."""
