"""The one configuration schema: local runs, the Ray Serve application and (later) the Helm values.

Every setting lives here once. `load_config` reads a YAML file and `GPT_OSS_CLUSTER_*` environment
overrides; `cluster.serve.serve_config` turns a validated config into the document `serve deploy` takes,
whose application `args` are this schema again, so replicas validate exactly what the operator
wrote.
"""

from __future__ import annotations

import datetime as dt
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cluster.contracts import Effort

ENV_PREFIX = "GPT_OSS_CLUSTER_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LengthPrior(_Strict):
    """Lognormal output-length distribution: the router's prior and the mock engine's sampler."""

    median_tokens: PositiveFloat
    sigma: float = Field(0.8, ge=0.0, le=3.0, description="Log-space standard deviation.")

    @property
    def mean_tokens(self) -> float:
        import math

        return self.median_tokens * math.exp(self.sigma**2 / 2)


class EffortProfile(_Strict):
    """What one reasoning-effort class costs and what it is promised."""

    output_tokens: LengthPrior
    default_max_tokens: PositiveInt = Field(description="Clipped to the context left.")
    max_tokens: PositiveInt | None = Field(None, description="Cap; None: the context length.")
    max_reasoning_tokens: PositiveInt | None = Field(
        None,
        description="Cap on a reply's analysis tokens, enforced by the engine's grammar so the "
        "answer keeps its share (None: only a request's thinking_token_budget caps it, and a "
        "response format or forced tool call caps it at half of max_tokens).",
    )
    ttft_slo_s: PositiveFloat
    itl_slo_s: PositiveFloat
    deadline_s: PositiveFloat = Field(
        3_600.0,
        description="A request still running this long after arrival is aborted (engine work "
        "freed) with a 504 `deadline_exceeded` error.",
    )

    def met(self, ttft_s: float, itl_s: float) -> bool:
        """Both SLOs held: the first token within `ttft_slo_s` of arrival and the mean gap between
        tokens within `itl_slo_s`. The one judgement the gateway, the scheduler's attainment, the
        simulator and the benchmarks all use."""
        return ttft_s <= self.ttft_slo_s and itl_s <= self.itl_slo_s

    @model_validator(mode="after")
    def _default_within_max(self) -> EffortProfile:
        if self.max_tokens is not None and self.default_max_tokens > self.max_tokens:
            raise ValueError("default_max_tokens must not exceed max_tokens")
        return self


def _default_efforts() -> dict[Effort, EffortProfile]:
    # Chat-traffic medians (250 / 1,200 / 5,000 output tokens) and SLOs (TTFT 1 / 2 / 5 s, 60 ms
    # inter-token) from the project's reference workload; high effort is ~20x low (ANCHORS.md).
    # Deadlines: the default output budget at twice the inter-token SLO, plus room to queue.
    def profile(median: float, default_max: int, ttft: float, deadline: float) -> EffortProfile:
        return EffortProfile(
            output_tokens=LengthPrior(median_tokens=median),
            default_max_tokens=default_max,
            ttft_slo_s=ttft,
            itl_slo_s=0.06,
            deadline_s=deadline,
        )

    return {
        Effort.LOW: profile(250, 8_192, 1.0, 1_200),
        Effort.MEDIUM: profile(1_200, 16_384, 2.0, 2_400),
        Effort.HIGH: profile(5_000, 32_768, 5.0, 4_500),
    }


class ModelConfig(_Strict):
    name: str = Field("openai/gpt-oss-120b", description="Model identity (Hugging Face id).")
    served_name: str = Field("gpt-oss-120b", description="The `model` clients send.")
    path: str | None = Field(None, description="Local weights directory (vLLM engine only).")
    max_model_len: PositiveInt = Field(131_072, description="Context length: prompt + output.")


class EngineKind(StrEnum):
    MOCK = "mock"
    VLLM = "vllm"


class ParallelismConfig(_Strict):
    tensor_parallel_size: PositiveInt = 1
    pipeline_parallel_size: PositiveInt = 1


class PerfProfile(_Strict):
    """Roofline timing of a continuous-batching gpt-oss engine (defaults: gpt-oss-120b on H100).

    Decode is memory-bound: every step reads the dense weights plus the experts the batch touches
    (top-k of E per token), plus the KV cache; prefill is compute-bound on active parameters.
    With full efficiency this reproduces the card-derived floors in ANCHORS.md (batch 8: 5 ms,
    batch 64: 16.7 ms, batch >= 128: ~19 ms at TP1).
    """

    hbm_bandwidth_bytes_s: PositiveFloat = 3.35e12
    peak_flops: PositiveFloat = 989e12
    memory_efficiency: float = Field(0.8, gt=0, le=1)
    # Calibrated: the simulator then reproduces vLLM on H100 TP2 with 1,000 ShareGPT-like prompts
    # at once (7,851 vs 7,649 published output tok/s; TPOT 49.4 vs 51.6 ms), see tests.
    compute_efficiency: float = Field(0.15, gt=0, le=1)
    dense_weight_bytes: PositiveFloat = 3.06e9
    expert_weight_bytes: PositiveFloat = 62.2e9
    num_experts: PositiveInt = 128
    experts_per_token: PositiveInt = 4
    active_params: PositiveFloat = 5.13e9
    kv_bytes_per_token: PositiveFloat = 36 * 1024
    step_overhead_s: float = Field(0.002, ge=0)
    tp_allreduce_s: float = Field(0.0007, ge=0, description="Per-step all-reduce cost when TP > 1.")


class MockEngineConfig(_Strict):
    """The CPU stand-in: real harmony tokens, modelled timing, no GPU."""

    time_scale: PositiveFloat = Field(
        1.0, description="Wall seconds per modelled second (0.05 runs 20x faster than an H100)."
    )
    perf: PerfProfile = PerfProfile()
    kv_capacity_tokens: PositiveInt = 400_000
    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: PositiveInt = 8_192
    seed: int = 0
    final_share: float = Field(
        0.2, gt=0, lt=1, description="Share of the output spent on the final answer."
    )


class HardwareConfig(_Strict):
    """What an engine replica runs on; used for placement and the start-up memory check."""

    accelerator: Literal["h100", "h200", "cpu"] = "h100"
    gpus_per_node: PositiveInt = 8
    activation_reserve_gib: float = Field(
        8.0,
        ge=0,
        description="Per-GPU memory vLLM keeps for activations and CUDA graphs (estimate).",
    )


# vLLM engine arguments that come from a field of this schema, and the field.
OWNED_ENGINE_ARGS = {
    "model": "model.path",
    "served_model_name": "model.served_name",
    "max_model_len": "model.max_model_len",
    "tensor_parallel_size": "engine.parallelism.tensor_parallel_size",
    "pipeline_parallel_size": "engine.parallelism.pipeline_parallel_size",
    "stream_interval": "engine.stream_interval",
    "kv_events_config": "engine.kv_cache_events",
}


class EngineConfig(_Strict):
    kind: EngineKind = EngineKind.MOCK
    parallelism: ParallelismConfig = ParallelismConfig()
    hardware: HardwareConfig = HardwareConfig()
    stream_interval: PositiveInt = Field(
        1,
        description="Tokens per streamed output of a request (vLLM's --stream-interval; the "
        "first and the last go at once). Every output crosses the engine replica, Ray and the "
        "gateway, so N tokens per output divide that per-token cost by about N; the chunks of a "
        "stream then arrive N tokens at a time.",
    )
    kv_cache_events: bool = Field(
        True,
        description="vLLM publishes what its prefix cache stores and evicts (KV events, over a "
        "socket local to the replica); the replica relays them to every gateway, whose "
        "prefix index then knows each replica's cache instead of guessing from placements. "
        "vLLM engines only.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM AsyncEngineArgs, passed through unchanged."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment of engine replicas (e.g. VLLM_* knobs)."
    )
    drain_timeout_s: PositiveFloat = Field(
        600.0,
        description="On scale-down or redeploy, in-flight requests get this long to finish (a "
        "high-effort answer can run for minutes; what is still running after it is aborted).",
    )
    drain_grace_s: NonNegativeFloat = Field(
        10.0,
        description="On scale-down or redeploy, requests still running on the leaving replica "
        "after this long move to others (as on a failure, within `gateway.migration_limit`), "
        "so its GPUs are free in seconds instead of `drain_timeout_s`. Needs "
        "`gateway.multiplex_outputs`.",
    )
    mock: MockEngineConfig = MockEngineConfig()

    @field_validator("engine_args")
    @classmethod
    def _not_owned(cls, engine_args: dict[str, Any]) -> dict[str, Any]:
        """Arguments the gateway, the scheduler or the placement also read have their own field:
        set in engine_args, vLLM would run with one value and the rest of the stack plan with
        another."""
        owned = sorted(set(engine_args) & OWNED_ENGINE_ARGS.keys())
        if owned:
            fields = ", ".join(f"{k} (set {OWNED_ENGINE_ARGS[k]})" for k in owned)
            raise ValueError(f"engine_args may not set {fields}")
        return engine_args


class ReplicaConfig(_Strict):
    """Ray Serve replica settings of one deployment.

    With `max_replicas > min_replicas` Serve autoscales between the bounds: engine replicas with
    the `autoscaling` section's policy, gateways on ongoing requests (Serve's default).
    """

    min_replicas: PositiveInt = 1
    max_replicas: PositiveInt = 1
    target_ongoing_requests: PositiveInt = 64
    num_cpus: float = Field(0.0, ge=0, description="Logical CPUs per replica (0 for local runs).")
    max_ongoing_requests: PositiveInt = 256

    @model_validator(mode="after")
    def _bounds(self) -> ReplicaConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class GatewayReplicaConfig(ReplicaConfig):
    """A gateway replica holds many streams, each mostly waiting on its engine."""

    target_ongoing_requests: PositiveInt = 200
    max_ongoing_requests: PositiveInt = 1_000


class AutoscalingConfig(_Strict):
    """How engine replicas follow demand between `engine_replicas` bounds
    (cluster/scheduling/autoscaling.py)."""

    policy: Literal["backlog", "ongoing_requests"] = Field(
        "backlog",
        description="backlog: projected token backlog over measured replica throughput. "
        "ongoing_requests: Ray Serve's default (target_ongoing_requests per replica).",
    )
    horizon_s: PositiveFloat = Field(
        60.0, description="Projected backlog: offered tokens/s over this horizon plus the queue."
    )
    target_utilization: float = Field(
        0.8, gt=0, le=1, description="Share of a replica's measured throughput to plan for."
    )
    replica_tokens_per_s: PositiveFloat = Field(
        15_000.0,
        description="Prior prompt + output tokens/s one replica gets through, until measured "
        "(gpt-oss-120b on H100 TP2 with the reference mix: ~17,000 in the simulator).",
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="Sustained excess before scaling up.")
    urgent_factor: float = Field(
        2.0,
        gt=1,
        description="Demand this many times the target is no noise: scale up without the delay.",
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Sustained slack before scaling down."
    )
    downscale_margin: float = Field(
        0.2, ge=0, lt=1, description="Scale down only when demand is this far below the target."
    )
    downscale_max_replicas: int | None = Field(
        1,
        ge=1,
        description="Replicas released per downscale; each further release waits out the delay "
        "again (null: all at once, as Ray Serve does). Scale to zero after idling is not limited.",
    )
    slo_attainment_floor: float = Field(
        0.9, ge=0, le=1, description="Below this attainment in any effort class, add a replica."
    )
    warm_spares: int = Field(0, ge=0, description="Replicas kept above demand (start-time cover).")
    scale_to_zero: bool = Field(False, description="Release every replica after a long idle spell.")
    idle_before_zero_s: PositiveFloat = Field(
        900.0, description="Idle time before scaling to zero (never less than replica_start_s)."
    )
    replica_start_s: PositiveFloat = Field(
        120.0, description="Expected time for a new GPU replica to serve (pod, image, weights)."
    )


class RouterConfig(_Strict):
    policy: Literal["effort_aware", "least_outstanding_tokens"] = Field(
        "effort_aware",
        description="effort_aware: each gateway's scheduler admits, orders and places requests "
        "(late binding). least_outstanding_tokens: every request is placed at once on the replica "
        "with the least outstanding tokens and waits in the engine's own queue (the peers' way; "
        "a baseline).",
    )
    load_report_period_s: PositiveFloat = Field(
        0.5, description="How often engine replicas report running/waiting/KV to routers."
    )
    max_queued_requests: int = Field(
        1_024, ge=-1, description="Requests a gateway holds for placement before 429 (-1: no cap)."
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_cap(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (no cap) or at least 1 (0 would shed every request)")
        return value

    retry_after_s: PositiveInt = Field(1, description="Retry-After sent with a 429.")
    # Effort-aware scheduling (cluster/scheduling/scheduler.py).
    cost_rate_tokens_s: PositiveFloat = Field(
        2_000.0, description="Converts expected cost to seconds of queue key: lower favours short."
    )
    admission_slack: PositiveFloat = Field(
        0.5,
        description="Shed when the projected wait exceeds this share of the TTFT SLO: the "
        "projection is a mean, the rest absorbs the spread of real waits (make bench-overload).",
    )
    degrade_effort: bool = Field(
        False, description="Lower the effort (high -> medium -> low) before shedding."
    )
    min_effort_share: float = Field(
        0.55,
        ge=0,
        le=1,
        description="Under overload, admit each effort at least this fraction of the overall "
        "admission ratio (admitted over offered, 30 s), ahead of later arrivals, so shedding by "
        "SLO cannot lock high effort out; the rest goes to goodput. 0.55 keeps every effort's "
        "served share over half the overall one (0: no floor; make bench-sched, bench-overload).",
    )
    engine_queue_limit: int = Field(
        0, ge=0, description="Requests allowed to wait inside an engine (late binding keeps 0)."
    )
    engine_refuses: bool = Field(
        True,
        description="Engine replicas refuse a request they have no room for now (a seat, KV, "
        "prefill within prefill_queue_tokens, judged on their exact state) and hand it back "
        "with their load, so it queues again in the gateway's order instead of in vLLM's "
        "first-come queue: several gateways fill the same free seat between two reports "
        "(make bench-sched: gateways).",
    )
    kv_watermark: float = Field(0.95, gt=0, le=1, description="Place only below this KV use.")
    effort_reserve: dict[Effort, Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: {Effort.HIGH: 0.02},
        description="Per effort, the share of each replica's seats and KV (below the watermark) "
        "its requests must leave free: what low effort keeps to itself. That room turns over "
        "in seconds, so a short request finds a place even while long ones hold the rest "
        "(make bench-sched: long_reasoning).",
    )
    prefill_queue_tokens: int = Field(
        16_384,
        ge=0,
        description="Place on a replica only while the prompt tokens it has still to prefill "
        "stay under this (two steps of an H100's 8,192-token budget), so a burst of long prompts "
        "waits here, in our order, not in the engine's first-come prefill queue (0: no limit).",
    )
    drain_rate_window_s: PositiveFloat = Field(
        10.0, description="Window over which the queue's drain rate (dispatches/s) is measured."
    )


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65_535)
    ingress: Literal["proxy", "haproxy"] = Field(
        "proxy",
        description="What takes HTTP in on each node. `haproxy`: Ray Serve's HAProxy ingress, "
        "which streams straight from each gateway replica's own HTTP server (the fast path; "
        "HAProxy's stats and metrics listeners bind every interface). `proxy`: Serve's Python "
        "proxy, one more process and Ray hop per chunk, loopback only when `host` is.",
    )
    replicas: GatewayReplicaConfig = GatewayReplicaConfig()
    multiplex_outputs: bool = Field(
        True,
        description="Carry all of a gateway replica's outputs from one engine replica over one "
        "long-lived stream, a batch per Ray item (cluster/serve/channels.py), instead of a "
        "stream per request and an item per output: about a third less CPU per token in the "
        "gateway and the engine replica at 16 streams (`make bench-engine`). Each channel is "
        "one more ongoing request on its engine replica.",
    )
    max_request_body_bytes: PositiveInt = 4 * 1024 * 1024
    max_header_bytes: PositiveInt = Field(
        8 * 1024, description="Request headers (431 beyond; the HTTP server refuses over 16 KiB)."
    )
    max_messages: PositiveInt = Field(2_048, description="Messages in one chat request.")
    max_tools: PositiveInt = Field(128, description="Function tools in one request.")
    max_choices: PositiveInt = Field(
        8,
        description="Most choices (`n`) one chat or completions request may ask for; each is "
        "a request's work for the scheduler and the key's quota.",
    )
    max_tool_schema_bytes: PositiveInt = Field(
        64 * 1024, description="JSON size of all tool definitions of one request."
    )
    migration_limit: NonNegativeInt = Field(
        2,
        description="Times a request whose engine replica fails or leaves mid-reply moves to another "
        "(its prompt and reply so far as the new prompt, queued ahead of new arrivals) before "
        "the client gets `engine_unavailable`; 0: never. Constrained replies (structured "
        "outputs, forced tool calls) do not move.",
    )


class ApiKey(_Strict):
    """One API key: its name (in logs, tenants and metrics; never the key), the key or only its
    SHA-256, and its limits (per gateway replica; none: unlimited)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Shown instead of the key.")
    key: SecretStr | None = Field(None, description="The key itself (hashed at load).")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key, instead of `key`."
    )
    revoked: bool = Field(False, description="Refused with 403.")
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = Field(None, description="Prompt + output tokens.")
    max_concurrent: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"api key {self.name}: give exactly one of key and sha256")
        return self


class AuthConfig(_Strict):
    api_keys: list[SecretStr | ApiKey] = Field(
        default_factory=list,
        description="Bearer keys: strings (named key-<n>, no limits) or key objects with a name, "
        "limits and `revoked`; empty means open (local use only).",
    )

    quota_sync_s: PositiveFloat = Field(
        1.0,
        description="How often gateway replicas share per-key usage: a key can overshoot its "
        "limits by about this much of its traffic.",
    )

    def named_keys(self) -> list[ApiKey]:
        return [
            k if isinstance(k, ApiKey) else ApiKey(name=f"key-{i}", key=k)
            for i, k in enumerate(self.api_keys)
        ]

    @property
    def limited(self) -> bool:
        """Some key has limits (the gateways then share per-key usage)."""
        return any(
            k.requests_per_minute or k.tokens_per_minute or k.max_concurrent
            for k in self.named_keys()
        )

    def first_key(self) -> str | None:
        """A usable key for examples (the first with its material and not revoked)."""
        usable = [k.key for k in self.named_keys() if k.key is not None and not k.revoked]
        return usable[0].get_secret_value() if usable else None


class ResponsesConfig(_Strict):
    """Stored responses of `/v1/responses` (`previous_response_id`, retrieve, delete)."""

    store: Literal["memory", "redis"] = Field(
        "memory",
        description="memory: in each gateway replica (one gateway, or tests). redis: shared by "
        "every gateway replica, so a follow-up finds its conversation wherever it lands.",
    )
    redis_url: SecretStr | None = Field(
        None, description="redis://[:password@]host:port/db (for store: redis)."
    )
    ttl_s: PositiveFloat = Field(86_400.0, description="How long a stored response is kept.")

    @model_validator(mode="after")
    def _url_for_redis(self) -> ResponsesConfig:
        if self.store == "redis" and self.redis_url is None:
            raise ValueError("responses.redis_url: required when responses.store is redis")
        return self


class HarmonyConfig(_Strict):
    vocab_dir: str | None = Field(
        None, description="Directory holding o200k_base.tiktoken (built from quicktok if unset)."
    )
    conversation_start_date: dt.date | None = Field(
        None, description="Pin the date in the system message (stable prefix cache keys)."
    )


PRESET_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class ClusterConfig(_Strict):
    preset: str | None = Field(
        None, description="A file of cluster/presets/ under this config (`presets()` lists them)."
    )
    model: ModelConfig = ModelConfig()
    engine: EngineConfig = EngineConfig()
    engine_replicas: ReplicaConfig = ReplicaConfig()
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    router: RouterConfig = RouterConfig()
    gateway: GatewayConfig = GatewayConfig()
    auth: AuthConfig = AuthConfig()
    responses: ResponsesConfig = ResponsesConfig()
    harmony: HarmonyConfig = HarmonyConfig()
    efforts: dict[Effort, EffortProfile] = Field(default_factory=_default_efforts)
    default_effort: Effort = Effort.MEDIUM

    @field_validator("efforts", mode="before")
    @classmethod
    def _merge_efforts(cls, value: Any) -> Any:
        """A partial `efforts` section overrides the defaults field by field."""
        if not isinstance(value, dict):
            return value
        defaults = {k.value: p.model_dump() for k, p in _default_efforts().items()}
        return deep_merge(defaults, {str(k): v for k, v in value.items()})

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        name = data.get("preset") if isinstance(data, dict) else None
        if not name:
            return data
        if name not in presets():
            raise ValueError(f"preset: unknown preset {name!r}; choose one of {presets()}")
        base = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
        return deep_merge(base, data)

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        from cluster.engine.parallelism import check_parallelism

        errors = []
        if missing := set(Effort) - set(self.efforts):
            errors.append(f"efforts: missing profiles for {sorted(missing)}")
        errors += [
            f"efforts.{effort}.max_tokens ({profile.max_tokens}) exceeds "
            f"model.max_model_len ({self.model.max_model_len})"
            for effort, profile in self.efforts.items()
            if (profile.max_tokens or 0) > self.model.max_model_len
        ]
        if self.engine.kind is EngineKind.VLLM and not self.model.path:
            errors.append("model.path: required when engine.kind is vllm (no hub downloads)")
        errors += check_parallelism(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def to_args(self) -> dict[str, Any]:
        """JSON-safe dict that round-trips through `ClusterConfig.model_validate` (secrets kept)."""
        data = self.model_dump(mode="json")
        if self.responses.redis_url is not None:
            data["responses"]["redis_url"] = self.responses.redis_url.get_secret_value()
        data["auth"]["api_keys"] = [
            k.get_secret_value()
            if isinstance(k, SecretStr)
            else k.model_dump(mode="json", exclude_none=True)
            | ({"key": k.key.get_secret_value()} if k.key else {})
            for k in self.auth.api_keys
        ]
        return data


class ConfigError(ValueError):
    """Invalid configuration, with every offending field named."""


def describe_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        message = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {message}")
        else:  # whole-config checks name their fields themselves
            lines.extend(f"  {part}" for part in message.split("\n"))
    return "invalid configuration:\n" + "\n".join(lines)


def validate_config(data: dict[str, Any]) -> ClusterConfig:
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None


API_KEYS_ENV = f"{ENV_PREFIX}AUTH__API_KEYS"
API_KEYS_FILE_ENV = f"{API_KEYS_ENV}_FILE"


def with_secret_env(cfg: ClusterConfig) -> ClusterConfig:
    """API keys from a mounted Kubernetes Secret (a file named by `..._API_KEYS_FILE`) or from
    the environment, which stay out of the Serve config. Both hold a JSON list of strings or key
    objects (`ApiKey`); when set, they replace `auth.api_keys`."""
    if path := os.environ.get(API_KEYS_FILE_ENV):
        source, raw = path, Path(path).read_text()
    elif (raw := os.environ.get(API_KEYS_ENV)) is not None:
        source = API_KEYS_ENV
    else:
        return cfg
    try:
        keys = TypeAdapter(list[SecretStr | ApiKey]).validate_json(raw)
    except ValidationError:
        raise ConfigError(f"{source}: expected a JSON list of keys or key objects") from None
    return cfg.model_copy(update={"auth": AuthConfig(api_keys=keys)})


def load_config(path: str | Path | None = None) -> ClusterConfig:
    """YAML file (optional) overridden by `GPT_OSS_CLUSTER_<SECTION>__<FIELD>` variables."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")

    class _Settings(ClusterConfig, BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            yaml_file=str(path) if path else None,
            extra="forbid",
            frozen=True,
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (env_settings, YamlConfigSettingsSource(settings_cls))

    try:
        settings = _Settings()
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None
    return ClusterConfig.model_validate(settings.model_dump())
