"""Tensor / pipeline parallelism: vLLM engine args, Ray placement, and the checks that catch a
configuration that cannot start before a GPU is ever allocated. Pure functions of the config.

Placement follows what vLLM's Ray executor and Ray Serve LLM expect: a replica with TP x PP > 1 owns
a placement group of one bundle per GPU (the first also holds the replica's CPUs); vLLM's workers
land in the replica's group. TP stays inside a node (STRICT_PACK: NVLink); with pipeline parallelism
the stages may sit on different nodes (PACK).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cluster.config import ClusterConfig

GIB = 2**30


@dataclass(frozen=True)
class ModelSpec:
    attention_heads: int
    kv_heads: int
    head_dim: int
    full_attention_layers: int  # the other half are 128-token sliding-window layers
    weights_gib: float  # resident after loading (vLLM reports 64.4 GiB for 120b on an H100)

    def kv_bytes_per_token(self, kv_cache_dtype: str) -> int:
        element = 1 if kv_cache_dtype.startswith("fp8") else 2
        return self.full_attention_layers * 2 * self.kv_heads * self.head_dim * element


# gpt-oss model card (arXiv 2508.10925): 64 query / 8 KV heads of dim 64; 36 (120b) and 24 (20b)
# layers alternating full and sliding attention; checkpoints of 60.8 and 12.8 GiB.
MODELS = {
    "openai/gpt-oss-120b": ModelSpec(64, 8, 64, 18, 64.4),
    "openai/gpt-oss-20b": ModelSpec(64, 8, 64, 12, 13.7),
}

# Usable device memory as CUDA reports it.
GPU_MEMORY_GIB = {"h100": 79.6, "h200": 140.4}


def world_size(config: ClusterConfig) -> int:
    p = config.engine.parallelism
    return p.tensor_parallel_size * p.pipeline_parallel_size


def kv_capacity_tokens(config: ClusterConfig) -> int | None:
    """KV tokens one replica can hold, by the same arithmetic as vLLM's memory profile
    (estimated activation reserve), or None when the model or device is not known."""
    spec = MODELS.get(config.model.name)
    hardware = config.engine.hardware
    if spec is None or hardware.accelerator not in GPU_MEMORY_GIB:
        return None
    gpus = world_size(config)
    utilization = config.engine.engine_args.get("gpu_memory_utilization", 0.9)
    budget = GPU_MEMORY_GIB[hardware.accelerator] * utilization
    free = budget - spec.weights_gib / gpus - hardware.activation_reserve_gib
    per_gpu_token = spec.kv_bytes_per_token(config.engine.engine_args.get("kv_cache_dtype", "auto"))
    return max(int(free * GIB * gpus / per_gpu_token), 0)


def check_parallelism(config: ClusterConfig) -> list[str]:
    """Every reason this engine layout cannot start, phrased with the fix."""
    p = config.engine.parallelism
    tp, pp = p.tensor_parallel_size, p.pipeline_parallel_size
    errors = []
    spec = MODELS.get(config.model.name)
    if spec is not None and spec.attention_heads % tp:
        choices = ", ".join(str(n) for n in (1, 2, 4, 8) if spec.attention_heads % n == 0)
        errors.append(
            f"engine.parallelism.tensor_parallel_size: {tp} does not divide the "
            f"{spec.attention_heads} attention heads of {config.model.name}; use {choices}"
        )
    per_node = config.engine.hardware.gpus_per_node
    if config.engine.hardware.accelerator != "cpu" and tp > per_node:
        errors.append(
            f"engine.parallelism.tensor_parallel_size: {tp} exceeds the {per_node} GPUs of a "
            f"node; keep TP within a node and span nodes with pipeline_parallel_size"
        )
    capacity = kv_capacity_tokens(config) if config.engine.kind == "vllm" else None
    if capacity is not None and not errors and capacity < config.model.max_model_len:
        utilization = config.engine.engine_args.get("gpu_memory_utilization", 0.9)
        errors.append(
            f"model.max_model_len: {config.model.max_model_len} tokens do not fit the KV cache of "
            f"{config.model.name} at TP{tp} x PP{pp} on {config.engine.hardware.accelerator} "
            f"(about {capacity} tokens at gpu_memory_utilization {utilization}, after "
            f"{MODELS[config.model.name].weights_gib / (tp * pp):.1f} GiB of weights and "
            f"{config.engine.hardware.activation_reserve_gib} GiB of activations per GPU; "
            f"vllm #23278); lower max_model_len, raise TP, or use a larger GPU"
        )
    return errors


def vllm_engine_args(config: ClusterConfig) -> dict[str, Any]:
    """`AsyncEngineArgs` keywords: ours first, then the preset's and the operator's engine_args."""
    p = config.engine.parallelism
    args: dict[str, Any] = {
        "model": config.model.path,
        "served_model_name": config.model.served_name,
        "tensor_parallel_size": p.tensor_parallel_size,
        "pipeline_parallel_size": p.pipeline_parallel_size,
        "max_model_len": config.model.max_model_len,
        # The gateway renders and parses harmony; the engine loads the weights' tokenizer only
        # for structured outputs (xgrammar compiles grammars against its vocabulary) and never
        # detokenizes (`detokenize=False` per request).
        "skip_tokenizer_init": False,
        "disable_log_stats": False,  # load reports come from the scheduler stats
        "stream_interval": config.engine.stream_interval,
        # Whatever does wait inside an engine (a replica that just took a request another
        # gateway also sent, a push policy) waits in effort order: each request carries its
        # effort rank as its priority. Under KV pressure vLLM then preempts the newest
        # high-effort request, not the newest of any effort.
        "scheduling_policy": "priority",
    }
    if world_size(config) > 1:
        args["distributed_executor_backend"] = "ray"
    return args | config.engine.engine_args


def engine_placement(config: ClusterConfig) -> dict[str, Any]:
    """Ray Serve deployment options that give one engine replica its devices."""
    cpus = config.engine_replicas.num_cpus
    gpus = world_size(config)
    if config.engine.hardware.accelerator == "cpu":
        return {"ray_actor_options": {"num_cpus": cpus}}
    if gpus == 1:
        return {"ray_actor_options": {"num_cpus": cpus, "num_gpus": 1}}
    strategy = "STRICT_PACK" if config.engine.parallelism.pipeline_parallel_size == 1 else "PACK"
    first = {"GPU": 1} | ({"CPU": cpus} if cpus else {})  # the replica actor sits in bundle 0
    return {
        "ray_actor_options": {"num_cpus": cpus},
        "placement_group_bundles": [first] + [{"GPU": 1}] * (gpus - 1),
        "placement_group_strategy": strategy,
    }
