"""Placement policies the simulator compares: ours (the production `Scheduler`) and the peers'.

Push policies place each request on arrival, where it joins the engine's own first-come queue (Ray
Serve's power of two, round robin, least outstanding requests, prefix affinity, llm-d's weighted
scorers). Late-binding policies keep a central queue and hand a replica only what it can run now:
ours, and an oracle that knows every request's true length and runs shortest-remaining-work first.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Protocol

from cluster.blocks import BLOCK_SIZE
from cluster.config import ClusterConfig, RouterConfig
from cluster.contracts import LoadReport, SchedulingRequest
from cluster.scheduling.prefix_index import PrefixIndex
from cluster.scheduling.queue import Ticket
from cluster.scheduling.scheduler import Rejected, Scheduler, has_headroom
from cluster.sim.workload import SimRequest, at_effort

Dispatch = list[tuple[SimRequest, int]]


class ReplicaView(Protocol):
    in_flight: int  # requests this policy placed there that its report does not count yet

    def report(self, now: float) -> LoadReport: ...

    def serving(self, now: float) -> bool: ...


class Policy(Protocol):
    name: str

    def arrive(self, request: SimRequest, now: float) -> Dispatch | Rejected: ...

    def tick(self, replica: int, now: float) -> Dispatch:
        """The replica's report changed: read it, and place what can run."""

    def release(self, now: float) -> Dispatch:
        """Place what can run (a seat this policy knows of freed)."""

    def observed(self, request: SimRequest, replica: int) -> None:
        """Another gateway placed `request` there: the engine's KV events say what it caches."""

    def done(self, request: SimRequest, now: float) -> None: ...

    def leave(self, replica: int) -> None:
        """The replica drains (autoscaling): place nothing more there."""

    def waiting(self) -> int:
        """Requests the policy holds with no replica yet."""

    def expected_output(self, request: SimRequest) -> int:
        """What the engine is told to expect (its load reports count outstanding work by it)."""


def _true_length(request: SimRequest) -> int:
    return request.output_tokens


@dataclass
class _Push:
    replicas: list[ReplicaView]
    name: str = "push"

    def tick(self, replica: int, now: float) -> Dispatch:
        return []

    def release(self, now: float) -> Dispatch:
        return []

    def observed(self, request: SimRequest, replica: int) -> None:
        pass

    def done(self, request: SimRequest, now: float) -> None:
        pass

    def leave(self, replica: int) -> None:
        raise NotImplementedError(f"{self.name} places on a fixed set of replicas")

    def waiting(self) -> int:
        return 0

    expected_output = staticmethod(_true_length)

    def _ongoing(self, k: int, now: float) -> int:
        view = self.replicas[k]
        r = view.report(now)
        return r.running + r.waiting + view.in_flight


@dataclass
class RoundRobin(_Push):
    name: str = "round_robin"
    _next: itertools.count = field(default_factory=itertools.count)

    def arrive(self, request: SimRequest, now: float) -> Dispatch:
        return [(request, next(self._next) % len(self.replicas))]


@dataclass
class PowerOfTwo(_Push):
    """Ray Serve's default: two random replicas, the one with fewer ongoing requests (FIFO).
    Under an autoscaler it draws among the replicas serving, as Serve's router does."""

    name: str = "power_of_two"
    rng: random.Random = field(default_factory=random.Random)  # seeded by `make_policy`

    def arrive(self, request: SimRequest, now: float) -> Dispatch:
        everyone = range(len(self.replicas))
        serving = [k for k in everyone if self.replicas[k].serving(now)] or everyone
        pair = self.rng.sample(serving, min(2, len(serving)))
        return [(request, min(pair, key=lambda k: self._ongoing(k, now)))]

    def leave(self, replica: int) -> None:
        """Nothing to forget: a replica that leaves drains, and `serving` says so."""


@dataclass
class LeastOutstandingRequests(_Push):
    name: str = "least_outstanding"

    def arrive(self, request: SimRequest, now: float) -> Dispatch:
        return [(request, min(range(len(self.replicas)), key=lambda k: self._ongoing(k, now)))]


@dataclass
class PrefixAffinity(_Push):
    """Ray Serve LLM / SGLang style: stick to the replica holding the prefix unless imbalanced."""

    name: str = "prefix_affinity"
    imbalance: int = 16
    _home: dict[str, int] = field(default_factory=dict)

    def arrive(self, request: SimRequest, now: float) -> Dispatch:
        loads = [self._ongoing(k, now) for k in range(len(self.replicas))]
        least = min(range(len(loads)), key=loads.__getitem__)
        home = self._home.get(request.prefix_key)
        if home is None or loads[home] - loads[least] > self.imbalance:
            home = self._home[request.prefix_key] = least
        return [(request, home)]


@dataclass
class LlmdLike(_Push):
    """llm-d's inference scheduler, its "well-lit path" profile: each replica scored by the share
    of the request's prompt blocks it holds (weight 3, from what this router placed: llm-d's
    approximate prefix scorer), its waiting queue min-max normalised (2) and its free KV (2), the
    highest score taken. Push: the request joins that engine's first-come queue."""

    name: str = "llm_d"
    weights: tuple[float, float, float] = (3.0, 2.0, 2.0)  # prefix, queue, KV
    prefix: PrefixIndex = field(default_factory=PrefixIndex)

    def arrive(self, request: SimRequest, now: float) -> Dispatch:
        reports = [replica.report(now) for replica in self.replicas]
        depth = self.prefix.matches(request.blocks)
        queues = [r.waiting for r in reports]
        low, span = min(queues), max(queues) - min(queues)
        w_prefix, w_queue, w_kv = self.weights

        def score(k: int) -> float:
            r = reports[k]
            hit = depth.get(k, 0) / len(request.blocks) if request.blocks else 0.0
            queue = 1.0 - (queues[k] - low) / span if span else 1.0
            kv = 1.0 - r.kv_used_tokens / r.kv_capacity_tokens if r.kv_capacity_tokens else 1.0
            return w_prefix * hit + w_queue * queue + w_kv * kv

        best = max(range(len(reports)), key=score)
        self.observed(request, best)
        return [(request, best)]

    def observed(self, request: SimRequest, replica: int) -> None:
        capacity = self.replicas[replica].report(0.0).kv_capacity_tokens // BLOCK_SIZE
        self.prefix.placed(replica, request.blocks, capacity)


@dataclass
class EffortAware:
    """Ours: the production scheduler (cost model, queue discipline, admission, late binding)."""

    replicas: list[ReplicaView]
    config: ClusterConfig
    name: str = "effort_aware"
    engine_refuses: bool = False  # `Topology.engine_refuses`
    gateways: int = 1  # `Topology.gateways`
    seed: int = 0
    scheduler: Scheduler = None  # type: ignore[assignment]
    _placed: dict[str, tuple[Ticket, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(
            self.config.router,
            self.config.efforts,
            engine_refuses=self.engine_refuses,
            gateways=self.gateways,
            rng=random.Random(self.seed),
        )
        for k, replica in enumerate(self.replicas):
            if replica.serving(0.0):
                self.scheduler.report(k, replica.report(0.0))

    def arrive(self, request: SimRequest, now: float) -> Dispatch | Rejected:
        scheduling = SchedulingRequest(
            request_id=request.request_id,
            effort=request.effort,
            prompt_tokens=request.prompt_tokens,
            max_tokens=request.max_tokens,
            tenant=request.tenant,
            prefix_key=request.prefix_key,
            prefix_blocks=request.blocks,
        )
        ticket = self.scheduler.ticket(scheduling, now, payload=request)
        decision = self.scheduler.submit(ticket, now)
        if isinstance(decision, Rejected):
            return decision
        if decision.degraded_from is not None:  # it runs, and writes, at the lower effort
            at_effort(request, decision.ticket.effort)
        return self._dispatch(now)

    def tick(self, replica: int, now: float) -> Dispatch:
        if self.replicas[replica].serving(now):
            self.scheduler.report(replica, self.replicas[replica].report(now))
        return self._dispatch(now)

    def release(self, now: float) -> Dispatch:
        return self._dispatch(now)

    def observed(self, request: SimRequest, replica: int) -> None:
        self.scheduler.observed(replica, request.blocks)

    def refused(
        self, request: SimRequest, replica: int, report: LoadReport, now: float
    ) -> Dispatch:
        """The engine had no room after all (another gateway filled it since its last report):
        the request queues here again, in its place, and the engine's fresh report counts."""
        ticket, _ = self._placed.pop(request.request_id)
        self.scheduler.refused(ticket, replica, report, now)
        return self._dispatch(now)

    def leave(self, replica: int) -> None:
        self.scheduler.drop(replica)

    def waiting(self) -> int:
        return len(self.scheduler.queue)

    def _dispatch(self, now: float) -> Dispatch:
        out = []
        for ticket, replica in self.scheduler.dispatch(now):
            self._placed[ticket.request_id] = (ticket, replica)
            out.append((ticket.payload, replica))
        return out

    def done(self, request: SimRequest, now: float) -> None:
        ticket, replica = self._placed.pop(request.request_id)
        self.scheduler.completed(ticket, replica, request.output_tokens, now)

    def expected_output(self, request: SimRequest) -> int:
        placed = self._placed.get(request.request_id)
        return placed[0].expected_output_tokens if placed else request.output_tokens


@dataclass
class Oracle:
    """Knows true lengths: global shortest-remaining-work first with the same late binding.
    Not an upper bound when KV binds: it still packs by seats, not by true final KV."""

    replicas: list[ReplicaView]
    router: RouterConfig
    name: str = "oracle"
    _queue: list = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)

    def arrive(self, request: SimRequest, now: float) -> Dispatch:
        work = request.prompt_tokens + request.output_tokens
        heapq.heappush(self._queue, (work, next(self._seq), request))
        return self._dispatch(now)

    def tick(self, replica: int, now: float) -> Dispatch:
        return self._dispatch(now)

    def release(self, now: float) -> Dispatch:
        return self._dispatch(now)

    def observed(self, request: SimRequest, replica: int) -> None:
        pass

    def done(self, request: SimRequest, now: float) -> None:
        pass

    def leave(self, replica: int) -> None:
        raise NotImplementedError("the oracle places on a fixed set of replicas")

    def waiting(self) -> int:
        return len(self._queue)

    expected_output = staticmethod(_true_length)

    def _dispatch(self, now: float) -> Dispatch:
        out = []
        placed = [0] * len(self.replicas)
        while self._queue:
            request = self._queue[0][2]
            k = self._free_replica(request, placed, now)
            if k is None:
                break
            heapq.heappop(self._queue)
            placed[k] += 1
            out.append((request, k))
        return out

    def _free_replica(self, request: SimRequest, placed: list[int], now: float) -> int | None:
        best, best_load = None, None
        for k, replica in enumerate(self.replicas):
            r = replica.report(now)
            fits = has_headroom(r, placed[k], 0, request.prompt_tokens, self.router)
            if fits and (best_load is None or r.outstanding_tokens < best_load):
                best, best_load = k, r.outstanding_tokens
        return best


BASELINES = {
    "round_robin": RoundRobin,
    "power_of_two": PowerOfTwo,
    "least_outstanding": LeastOutstandingRequests,
    "prefix_affinity": PrefixAffinity,
    "llm_d": LlmdLike,
}


def make_policy(
    name: str,
    replicas: list[ReplicaView],
    config: ClusterConfig,
    seed: int = 0,
    engine_refuses: bool = False,
    gateways: int = 1,
) -> Policy:
    """`seed`: each gateway's own, so random choices are not in lockstep across gateways."""
    if name == "effort_aware":
        return EffortAware(
            replicas, config, engine_refuses=engine_refuses, gateways=gateways, seed=seed
        )
    if name == "oracle":
        return Oracle(replicas, config.router)
    if name == "power_of_two":
        return PowerOfTwo(replicas, rng=random.Random(seed))
    return BASELINES[name](replicas)
