"""What chat, completions and Responses share before the engine: the model check, the output
budget within the effort's cap and the context, sampling, and the cost prior."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

from cluster.api.errors import OpenAIError
from cluster.api.output_format import ReplyFormat
from cluster.api.protocol import SamplingRequest
from cluster.config import ClusterConfig
from cluster.contracts import (
    Effort,
    EngineRequest,
    SamplingParams,
)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_options(body: SamplingRequest) -> tuple[bool, bool]:
    """(usage in a last chunk, usage so far on every chunk): `stream_options` as vLLM reads it,
    where `continuous_usage_stats` counts only with `include_usage`."""
    options = body.stream_options
    include = bool(options and options.include_usage)
    return include, include and bool(options and options.continuous_usage_stats)


def check_model(config: ClusterConfig, model: str) -> None:
    if model not in (config.model.served_name, config.model.name):
        raise OpenAIError(
            404,
            f"The model `{model}` does not exist. Serving `{config.model.served_name}`.",
            param="model",
            code="model_not_found",
        )


def resolve_max_tokens(
    config: ClusterConfig, effort: Effort, requested: int | None, prompt_tokens: int, param: str
) -> int:
    """The output budget: requested or the effort's default, within the effort cap and context."""
    profile = config.efforts[effort]
    context = config.model.max_model_len
    room = context - prompt_tokens
    if room <= 0:
        raise OpenAIError(
            400,
            f"The prompt has {prompt_tokens} tokens, beyond the model's context length of "
            f"{context} tokens.",
            param="messages" if param == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return min(profile.default_max_tokens, room)
    if profile.max_tokens is not None and requested > profile.max_tokens:
        raise OpenAIError(
            400,
            f"{param} is {requested}, above the limit of {profile.max_tokens} for "
            f"reasoning effort {effort.value}.",
            param=param,
        )
    if requested > room:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens. You asked for "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} "
            f"for the output).",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def engine_request(
    config: ClusterConfig,
    body: SamplingRequest,
    prompt: list[int],
    *,
    request_id: str,
    effort: Effort,
    requested_max_tokens: int | None,
    max_tokens_param: str,
    stop_token_ids: Sequence[int],
    degraded: bool = False,
    reply: ReplyFormat | None = None,
) -> EngineRequest:
    """The engine's view of a request: output budget checked, sampling set, cost prior attached.
    A request `degraded` to a lower effort keeps its id and the client's budget within that
    effort's cap."""
    cap = config.efforts[effort].max_tokens
    if degraded and requested_max_tokens and cap:
        requested_max_tokens = min(requested_max_tokens, cap)
    max_tokens = resolve_max_tokens(
        config, effort, requested_max_tokens, len(prompt), max_tokens_param
    )
    profile = config.efforts[effort]
    prior = profile.output_tokens
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling=SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop_token_ids=tuple(stop_token_ids),
            logprobs=body.alternatives,
        ),
        effort=effort,
        expected_output_tokens=min(max_tokens, math.ceil(prior.mean_tokens)),
        constraint=reply.constraint(effort, profile, max_tokens) if reply is not None else None,
    )
