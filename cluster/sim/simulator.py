"""The event loop: arrivals and engine steps in virtual time, per-request timings, summary figures.

Each replica is the mock engine's `BatchingModel` (vLLM V1's scheduler shape, roofline step costs).
A replica steps while it has work; at the end of every step its new load is visible to the policy
(a load report), which may release queued requests. Deterministic for a seed.
"""

from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass, field

from cluster.config import ClusterConfig, Effort
from cluster.engine.base import LoadReport
from cluster.engine.batching import BatchingModel, StepResult, step_seconds
from cluster.scheduling.scheduler import Rejected
from cluster.sim.policies import make_policy
from cluster.sim.workload import ClusterSpec, SimRequest, WorkloadSpec, generate

MAX_RUN_S = 0.25  # longest decode run simulated in one event (keeps reports frequent)


@dataclass
class Record:
    request: SimRequest
    rejected: bool = False
    retry_after_s: int = 0
    first_token: float | None = None
    first_final: float | None = None
    finished: float | None = None
    generated: int = 0
    queue_wait: float = 0.0  # arrival to the start of its prefill (TTFT minus its own prefill)

    @property
    def ttft(self) -> float:
        return self.first_token - self.request.arrival

    @property
    def mean_itl(self) -> float:
        n = self.request.output_tokens
        return (self.finished - self.first_token) / (n - 1) if n > 1 else 0.0


@dataclass
class SimReplica:
    model: BatchingModel
    busy_until: float | None = None
    pending: StepResult | None = None
    step_start: float = 0.0
    live: dict[str, Record] = field(default_factory=dict)

    def report(self, now: float) -> LoadReport:
        m = self.model
        return LoadReport(m.running, m.waiting, m.kv_used_tokens, m.kv_capacity_tokens,
                          m.outstanding_tokens, m.max_num_seqs, now)  # fmt: skip


@dataclass
class SimResult:
    """Figures cover requests that arrive after the warm-up (the first quarter of the run), so
    they describe the steady state, not the empty cluster filling up."""

    policy: str
    duration_s: float
    all_records: list[Record]
    slo: dict[Effort, tuple[float, float]]  # effort -> (ttft_s, itl_s)
    warmup_s: float = 0.0

    @property
    def records(self) -> list[Record]:
        return [r for r in self.all_records if r.request.arrival >= self.warmup_s]

    @property
    def window_s(self) -> float:
        return self.duration_s - self.warmup_s

    def served(self) -> list[Record]:
        return [r for r in self.records if r.finished is not None]

    def meets_slo(self, r: Record) -> bool:
        ttft, itl = self.slo[r.request.effort]
        return r.ttft <= ttft and r.mean_itl <= itl

    def summary(self) -> dict:
        served = self.served()
        # Rates count only work finished before arrivals stop: the drain afterwards has no
        # competition and would flatter policies that queue everything.
        in_run = [r for r in served if r.finished <= self.duration_s]
        out = {
            "policy": self.policy,
            "offered": len(self.records),
            "completed": len(served),
            "rejected": sum(r.rejected for r in self.records),
            "degraded": sum(r.request.degraded_from is not None for r in self.records),
            "throughput_rps": len(in_run) / self.window_s,
            "goodput_rps": sum(self.meets_slo(r) for r in in_run) / self.window_s,
            "efforts": {},
        }
        for effort in Effort:
            rs = [r for r in served if r.request.effort == effort]
            offered = [r for r in self.records if r.request.effort == effort]
            if not rs:
                continue
            out["efforts"][effort.value] = {
                "n": len(rs),
                "slo_attainment": sum(self.meets_slo(r) for r in rs) / max(len(offered), 1),
                "ttft_p50_s": _q([r.ttft for r in rs], 50),
                "ttft_p99_s": _q([r.ttft for r in rs], 99),
                "ttfft_p50_s": _q([r.first_final - r.request.arrival for r in rs], 50),
                "ttfft_p99_s": _q([r.first_final - r.request.arrival for r in rs], 99),
                "itl_p50_ms": _q([r.mean_itl for r in rs], 50) * 1000,
                "itl_p99_ms": _q([r.mean_itl for r in rs], 99) * 1000,
                "e2e_p50_s": _q([r.finished - r.request.arrival for r in rs], 50),
                "e2e_p99_s": _q([r.finished - r.request.arrival for r in rs], 99),
                "queue_wait_p99_s": _q([r.queue_wait for r in rs], 99),
            }
        return out


def _q(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def simulate(
    workload: WorkloadSpec, cluster: ClusterSpec, policy_name: str, config: ClusterConfig
) -> SimResult:
    requests = generate(workload)
    replicas = [
        SimReplica(BatchingModel(cluster.perf, cluster.tensor_parallel_size, cluster.max_num_seqs,
                                 cluster.max_num_batched_tokens, cluster.kv_capacity_tokens))
        for _ in range(cluster.replicas)
    ]  # fmt: skip
    policy = make_policy(policy_name, replicas, config)
    records = {r.request_id: Record(r) for r in requests}
    final_share = workload.final_share
    events: list[tuple[float, int]] = []  # (step end, replica)
    i = 0

    def start(k: int, now: float, horizon: float) -> None:
        rep = replicas[k]
        if rep.busy_until is not None or rep.model.idle:
            return
        rep.model.now = max(rep.model.now, now)
        rep.step_start = rep.model.now
        rep.pending = rep.model.step(until=min(horizon, rep.model.now + MAX_RUN_S))
        rep.busy_until = rep.model.now
        heapq.heappush(events, (rep.busy_until, k))

    def finish_step(k: int, now: float) -> None:
        rep = replicas[k]
        result, rep.pending, rep.busy_until = rep.pending, None, None
        for rid, n in result.emitted.items():
            rec = rep.live[rid]
            before, rec.generated = rec.generated, rec.generated + n
            if before == 0:
                rec.first_token = now
                own_prefill = prefill_seconds(cluster, rec.request.prompt_tokens)
                rec.queue_wait = max(0.0, rec.ttft - own_prefill)
            final_at = math.ceil(rec.request.output_tokens * (1 - final_share))
            if rec.first_final is None and rec.generated >= final_at:
                into = (final_at - before) / n  # where in this run the answer started
                rec.first_final = rep.step_start + into * result.duration_s
        for rid in result.finished:
            rec = rep.live.pop(rid)
            rec.finished = now
            policy.done(rec.request, now)

    def apply(dispatch, now: float) -> None:
        for request, k in dispatch:
            rec = records[request.request_id]
            replicas[k].model.add(request.request_id, request.prompt_tokens,
                                  request.output_tokens, policy.expected_output(request))  # fmt: skip
            replicas[k].live[request.request_id] = rec

    while i < len(requests) or events:
        next_arrival = requests[i].arrival if i < len(requests) else math.inf
        if events and events[0][0] <= next_arrival:
            now, k = heapq.heappop(events)
            finish_step(k, now)
            apply(policy.tick(k, now), now)
        else:
            now = next_arrival
            request = requests[i]
            i += 1
            decision = policy.arrive(request, now)
            if isinstance(decision, Rejected):
                records[request.request_id].rejected = True
                records[request.request_id].retry_after_s = decision.retry_after_s
            else:
                apply(decision, now)
        horizon = requests[i].arrival if i < len(requests) else math.inf
        for k in range(len(replicas)):
            start(k, now, horizon)
    slo = {e: (p.ttft_slo_s, p.itl_slo_s) for e, p in config.efforts.items()}
    return SimResult(policy_name, workload.duration_s, list(records.values()), slo,
                     warmup_s=workload.duration_s * workload.warmup_share)  # fmt: skip


def prefill_seconds(cluster: ClusterSpec, tokens: int) -> float:
    return step_seconds(cluster.perf, cluster.tensor_parallel_size, 0, tokens, 0)
