"""Workload and cluster descriptions (YAML) and the seeded request streams they generate."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

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
        """The value at standard-normal quantile `z`."""
        return max(1, round(math.exp(math.log(self.median) + self.sigma * z)))


class Arrivals(_Spec):
    kind: Literal["poisson", "onoff"] = "poisson"
    on_s: PositiveFloat = 20.0  # onoff: bursts at 2x the mean rate, then silence
    off_s: PositiveFloat = 20.0


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
    seed: int = 0


class ClusterSpec(_Spec):
    replicas: PositiveInt = 8
    tensor_parallel_size: PositiveInt = 2
    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: PositiveInt = 8_192
    kv_capacity_tokens: PositiveInt = 1_800_000  # H100 TP2 (docs/engines.md)
    perf: PerfProfile = PerfProfile()


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


def rate_factor(profile: list[tuple[float, float]], t: float) -> float:
    """The profile's multiplier at time t (linear between points, flat beyond the ends)."""
    if t <= profile[0][0]:
        return profile[0][1]
    for (t0, f0), (t1, f1) in itertools.pairwise(profile):
        if t <= t1:
            return f0 + (f1 - f0) * (t - t0) / (t1 - t0) if t1 > t0 else f1
    return profile[-1][1]


def generate(spec: WorkloadSpec) -> list[SimRequest]:
    rng = random.Random(spec.seed)
    efforts, weights = zip(*spec.effort_mix.items(), strict=True)
    tenants = [f"t{i}" for i in range(spec.tenants)]
    rest = (1 - spec.heavy_tenant_share) / max(spec.tenants - 1, 1)
    tenant_weights = [spec.heavy_tenant_share] + [rest] * (spec.tenants - 1)
    out, t = [], 0.0
    period = spec.arrivals.on_s + spec.arrivals.off_s
    peak = max((f for _, f in spec.rate_profile), default=1.0)
    while True:
        if spec.rate_profile:  # thinning: draw at the peak rate, keep with probability f(t)/peak
            t += rng.expovariate(spec.rate * peak)
            if rng.random() * peak > rate_factor(spec.rate_profile, t):
                continue
        elif spec.arrivals.kind == "poisson":
            t += rng.expovariate(spec.rate)
        else:  # all the load in the on-phases, so the mean rate is unchanged
            t += rng.expovariate(spec.rate * period / spec.arrivals.on_s)
            if t % period > spec.arrivals.on_s:
                t += period - t % period
        if t >= spec.duration_s:
            return out
        effort = rng.choices(efforts, weights)[0]
        tenant = rng.choices(tenants, tenant_weights)[0]
        z = rng.gauss(0.0, 1.0)
        by_effort = {e: min(d.at(z), spec.max_tokens) for e, d in spec.output_tokens.items()}
        output = by_effort[effort]
        prompt = spec.prompt_tokens.sample(rng)
        prefix = f"{tenant}:{effort.value}"  # developer prompt and effort: the cacheable head
        request_id = f"r{len(out)}"
        out.append(
            SimRequest(
                request_id, t, effort, tenant, prompt, output, spec.max_tokens, prefix, by_effort
            )
        )
