"""Ray Serve `RequestRouter` on every gateway's engine handle: it carries out the scheduler's choice.

The gateway's `Dispatcher` (the effort-aware scheduler) picks a replica for each request and names
it in `EngineRequest.replica`; this router tries that replica first. Requests without a choice
(before the first load report) and replicas that refuse (at `max_ongoing_requests`) fall back to
least outstanding tokens. Engine load reports arrive here as Serve routing stats
(`record_routing_stats` on the engine replica); the router passes each broadcast on to the
dispatcher that subscribed for the deployment in this process. (Serve pickles this module by
value, so that registry lives in `cluster.serve.dispatcher`.)
"""

from __future__ import annotations

import time

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from cluster.contracts import EngineRequest, LoadReport
from cluster.scheduling.placement import LeastOutstandingTokens, PlacementLedger, PlacementPolicy
from cluster.serve.dispatcher import publish_load_reports


def _engine_request(pending: PendingRequest | None) -> EngineRequest | None:
    if pending is None:
        return None
    return next((a for a in pending.args if isinstance(a, EngineRequest)), None)


def _report(replica: RunningReplica) -> LoadReport | None:
    stats = replica.routing_stats
    return LoadReport.from_dict(stats) if stats else None


class TokenAwareRequestRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self._policy: PlacementPolicy = LeastOutstandingTokens()
        self._ledger = PlacementLedger()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        request = _engine_request(pending_request)
        by_id = {r.replica_id: r for r in candidate_replicas}
        self._ledger.forget_replicas(self.curr_replicas)
        estimates = self._ledger.estimates({rid: _report(r) for rid, r in by_id.items()})
        cost = request.expected_cost_tokens if request else 0
        ranked = [[by_id[rid]] for rid in self._policy.rank(cost, estimates)]
        chosen = request.replica if request else None
        first = [r for r in ranked if r[0].replica_id.unique_id == chosen]
        return first + [r for r in ranked if r[0].replica_id.unique_id != chosen]

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        reports = {r.replica_id.unique_id: report for r in replicas if (report := _report(r))}
        publish_load_reports(self._deployment_id.app_name, self._deployment_id.name, reports)

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        request = _engine_request(pending_request)
        if request is not None:
            self._ledger.placed(
                replica_id,
                pending_request.metadata.internal_request_id,
                request.expected_cost_tokens,
                time.time(),
            )

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._ledger.completed(internal_request_id)
