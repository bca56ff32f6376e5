"""Workload and cluster descriptions (YAML) and the seeded request streams they generate.

Two shapes of traffic: independent chat requests (the reference mix of issue 4), and agentic
conversations (`WorkloadSpec.agentic`), whose prompts are described as segments of content so the
engine's prefix cache sees what they share.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

from cluster.blocks import Segments, segment_blocks
from cluster.config import PerfProfile
from cluster.contracts import Effort


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lognormal(_Spec):
    median: PositiveFloat
    sigma: float = Field(0.8, ge=0)

    def sample(self, rng: random.Random) -> int:
        return self.at(rng.gauss(0.0, 1.0))

    def at(self, z: float) -> int:
        """The value at standard-normal quantile `z`, in whole tokens."""
        return max(1, round(self.value(z)))

    def value(self, z: float) -> float:
        return math.exp(math.log(self.median) + self.sigma * z)


class Arrivals(_Spec):
    kind: Literal["poisson", "onoff"] = "poisson"
    on_s: PositiveFloat = 20.0  # onoff: bursts at 2x the mean rate, then silence
    off_s: PositiveFloat = 20.0


class Agentic(_Spec):
    """Agent traffic. A persona is a developer prompt with its tool definitions, shared by many
    conversations; a conversation keeps one persona and effort, and its turn k resends turns
    1..k-1 (each turn's message and the reply's answer, the reasoning dropped as harmony renders
    it) plus a new message: the user's, or a tool's result in a tool-calling loop. Harmony puts
    the system message, which names the effort, ahead of the developer's: a persona's prefix is
    shared only among conversations of one effort.

    Open loop, so every policy sees the same requests: a follow-up turn arrives after the
    previous turn's arrival by the reply's time at a nominal pace plus the user's or the tool's.
    Conversations start `lead_s` before the run, so it opens with follow-ups under way."""

    personas: PositiveInt = 12
    persona_skew: float = Field(1.0, ge=0)  # persona i's weight: 1 / (i + 1) ** skew
    system_tokens: PositiveInt = 110
    developer_tokens: Lognormal = Lognormal(median=3_000, sigma=0.5)
    mean_turns: float = Field(5.0, ge=1)  # per conversation (geometric)
    tool_share: float = Field(0.6, ge=0, le=1)  # follow-up turns that bring a tool's result
    user_tokens: Lognormal = Lognormal(median=120, sigma=0.8)
    tool_result_tokens: Lognormal = Lognormal(median=400, sigma=1.0)
    reply_s_per_token: PositiveFloat = 0.01
    user_think_s: Lognormal = Lognormal(median=8, sigma=0.8)
    tool_s: Lognormal = Lognormal(median=1.5, sigma=0.8)
    lead_s: float = Field(180.0, ge=0)


class WorkloadSpec(_Spec):
    """The default is the project's reference chat mix (issue 4)."""

    duration_s: PositiveFloat = 300.0
    warmup_share: float = Field(0.25, ge=0, lt=1)  # excluded from figures
    rate: PositiveFloat = 10.0  # mean requests per second
    arrivals: Arrivals = Arrivals()
    # Piecewise-linear multiplier of `rate` over time, [[t_s, factor], ...] (a step, a day);
    # empty: constant. Poisson arrivals only.
    rate_profile: list[tuple[float, float]] = []
    effort_mix: dict[Effort, float] = {Effort.LOW: 0.5, Effort.MEDIUM: 0.35, Effort.HIGH: 0.15}
    prompt_tokens: Lognormal = Lognormal(median=600)
    output_tokens: dict[Effort, Lognormal] = {
        Effort.LOW: Lognormal(median=250),
        Effort.MEDIUM: Lognormal(median=1_200),
        Effort.HIGH: Lognormal(median=5_000),
    }
    max_tokens: PositiveInt = 32_768
    tenants: PositiveInt = 10
    heavy_tenant_share: float = Field(0.4, ge=0, lt=1)
    final_share: float = Field(0.2, gt=0, lt=1)  # the answer after the reasoning
    agentic: Agentic | None = None  # conversations instead of independent requests
    seed: int = 0


class Topology(_Spec):
    """How the gateways see the engines. Each of `gateways` runs its own scheduler and queue, is
    handed arrivals by the proxies (uniformly: power of two over equally loaded gateways), and
    sees every replica's load report every `report_period_s`, `report_delay_s` plus up to
    `report_jitter_s` late, knowing in between only its own placements and completions. The
    default is the ideal: one gateway that sees every engine step as it ends.

    `engine_refuses`: the engine takes a request only with room to run it now (the scheduler's
    headroom rule on its exact state) and hands it back with a fresh report otherwise, so the
    gateway queues it again in its own order; off, the engine's first-come queue holds whatever
    several gateways placed on the same free seat between two reports. `reports_in_replies`: a
    request's last reply carries its engine's load report, so the gateway that placed it sees
    that engine as it is when a seat frees, not up to a period later."""

    gateways: PositiveInt = 1
    report_period_s: NonNegativeFloat = 0.0  # 0: a report after every engine step
    report_delay_s: NonNegativeFloat = 0.0
    report_jitter_s: NonNegativeFloat = 0.0
    engine_refuses: bool = False
    reports_in_replies: bool = False
    seed: int = 0

    @property
    def ideal(self) -> bool:
        return self.gateways == 1 and self.report_period_s == 0


class ClusterSpec(_Spec):
    replicas: PositiveInt = 8
    tensor_parallel_size: PositiveInt = 2
    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: PositiveInt = 8_192
    kv_capacity_tokens: PositiveInt = 1_800_000  # H100 TP2 (docs/engines.md)
    perf: PerfProfile = PerfProfile()
    topology: Topology = Topology()


@dataclass
class SimRequest:
    request_id: str
    arrival: float
    effort: Effort
    tenant: str
    prompt_tokens: int
    output_tokens: int  # the truth; only the oracle may look
    max_tokens: int
    prefix_key: str
    # What the same question would produce at each effort (same quantile of each distribution):
    # a request whose effort is degraded writes the lower effort's length.
    output_by_effort: dict[Effort, int] = field(default_factory=dict)
    degraded_from: Effort | None = None  # set when admission lowered its effort
    blocks: tuple[int, ...] = ()  # the prompt's prefix-cache block hashes (cluster.blocks)
    # Agentic prompts: the (content id, tokens) stretches they are made of, which `blocks` hash
    # and a live driver writes out as messages (`cluster.bench.live`).
    segments: tuple[tuple[object, int], ...] = ()


def diurnal(trough_hour: int = 4) -> list[tuple[float, float]]:
    """A day's `rate_profile`, hour by hour: 25% of the peak at `trough_hour`, the peak 12 hours
    later, a cosine between."""
    return [
        (h * 3600.0, 0.625 - 0.375 * math.cos(2 * math.pi * (h - trough_hour) / 24))
        for h in range(25)
    ]


def rate_factor(profile: list[tuple[float, float]], t: float) -> float:
    """The profile's multiplier at time t (linear between points, flat beyond the ends)."""
    if t <= profile[0][0]:
        return profile[0][1]
    for (t0, f0), (t1, f1) in itertools.pairwise(profile):
        if t <= t1:
            return f0 + (f1 - f0) * (t - t0) / (t1 - t0) if t1 > t0 else f1
    return profile[-1][1]


def _arrivals(
    spec: WorkloadSpec, rng: random.Random, rate: float, end: float | None = None
) -> Iterator[float]:
    """Arrival times up to `end` (the end of the run), at `rate` on average."""
    end = spec.duration_s if end is None else end
    t = 0.0
    period = spec.arrivals.on_s + spec.arrivals.off_s
    peak = max((f for _, f in spec.rate_profile), default=1.0)
    while True:
        if spec.rate_profile:  # thinning: draw at the peak rate, keep with probability f(t)/peak
            t += rng.expovariate(rate * peak)
            if rng.random() * peak > rate_factor(spec.rate_profile, t):
                continue
        elif spec.arrivals.kind == "poisson":
            t += rng.expovariate(rate)
        else:  # all the load in the on-phases, so the mean rate is unchanged
            t += rng.expovariate(rate * period / spec.arrivals.on_s)
            if t % period > spec.arrivals.on_s:
                t += period - t % period
        if t >= end:
            return
        yield t


def _lengths(spec: WorkloadSpec, z: float) -> dict[Effort, int]:
    """Output lengths at each effort for one question (the same quantile of each)."""
    return {e: min(d.at(z), spec.max_tokens) for e, d in spec.output_tokens.items()}


def generate(spec: WorkloadSpec) -> list[SimRequest]:
    if spec.agentic is not None:
        return _conversations(spec, spec.agentic)
    rng = random.Random(spec.seed)
    efforts, weights = zip(*spec.effort_mix.items(), strict=True)
    tenants = [f"t{i}" for i in range(spec.tenants)]
    rest = (1 - spec.heavy_tenant_share) / max(spec.tenants - 1, 1)
    tenant_weights = [spec.heavy_tenant_share] + [rest] * (spec.tenants - 1)
    out = []
    for t in _arrivals(spec, rng, spec.rate):
        effort = rng.choices(efforts, weights)[0]
        tenant = rng.choices(tenants, tenant_weights)[0]
        by_effort = _lengths(spec, rng.gauss(0.0, 1.0))
        output = by_effort[effort]
        prompt = spec.prompt_tokens.sample(rng)
        prefix = f"{tenant}:{effort.value}"  # developer prompt and effort: the cacheable head
        request_id = f"r{len(out)}"
        out.append(
            SimRequest(
                request_id, t, effort, tenant, prompt, output, spec.max_tokens, prefix, by_effort
            )
        )
    return out


def at_effort(request: SimRequest, effort: Effort) -> None:
    """Re-render `request` at a lower `effort` (admission degraded it): it writes that effort's
    reply, and its prompt changes from the system message on, which names the effort."""
    request.degraded_from, request.effort = request.effort, effort
    request.output_tokens = request.output_by_effort[effort]
    request.segments = tuple(
        (("system", effort), n) if content[0] == "system" else (content, n)
        for content, n in request.segments
    )
    request.blocks = segment_blocks(request.segments)


def _conversations(spec: WorkloadSpec, agentic: Agentic) -> list[SimRequest]:
    rng = random.Random(spec.seed)
    efforts, weights = zip(*spec.effort_mix.items(), strict=True)
    personas = range(agentic.personas)
    persona_weights = [1 / (p + 1) ** agentic.persona_skew for p in personas]
    developer = [agentic.developer_tokens.sample(rng) for _ in personas]
    turns: list[tuple[float, int, int, SimRequest]] = []
    starts = _arrivals(spec, rng, spec.rate / agentic.mean_turns, spec.duration_s + agentic.lead_s)
    for c, start in enumerate(starts):
        persona = rng.choices(personas, persona_weights)[0]
        effort = rng.choices(efforts, weights)[0]
        head = [
            (("system", effort), agentic.system_tokens),
            (("developer", persona), developer[persona]),
        ]
        said: list[tuple[object, int]] = []
        hashed = Segments().extend(head)  # of the prompt so far
        t, k, tool = start - agentic.lead_s, 0, False
        while t < spec.duration_s:
            message = (agentic.tool_result_tokens if tool else agentic.user_tokens).sample(rng)
            segments = [*head, *said, (("message", c, k), message)]
            by_effort = _lengths(spec, rng.gauss(0.0, 1.0))
            output = by_effort[effort]
            prompt = sum(n for _, n in segments)
            hashed = hashed.extend([segments[-1]])
            request = SimRequest(
                request_id="",
                arrival=t,
                effort=effort,
                tenant=f"p{persona}",
                prompt_tokens=prompt,
                output_tokens=output,
                max_tokens=spec.max_tokens,
                prefix_key=f"p{persona}:{effort.value}",
                output_by_effort=by_effort,
                blocks=hashed.blocks,
                segments=tuple(segments),
            )
            if t >= 0:
                turns.append((t, c, k, request))
            answer = math.ceil(output * spec.final_share)
            said += [(("message", c, k), message), (("reply", c, k), answer)]
            hashed = hashed.extend(said[-1:])
            k += 1
            if rng.random() < 1 / agentic.mean_turns:  # the conversation ends here
                break
            tool = rng.random() < agentic.tool_share  # the next turn brings a tool's result
            wait = agentic.tool_s if tool else agentic.user_think_s
            t += output * agentic.reply_s_per_token + wait.value(rng.gauss(0.0, 1.0))
    turns.sort(key=lambda turn: turn[:3])
    out = []
    for i, (*_, request) in enumerate(turns):
        request.request_id = f"r{i}"
        out.append(request)
    return out
