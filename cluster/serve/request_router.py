"""Ray Serve `RequestRouter` on every gateway's engine handle: it carries out the scheduler's choice.

The gateway's `Dispatcher` (the effort-aware scheduler) picks a replica for each request and names
it in `EngineRequest.replica`; this router tries that replica first. Requests without a choice
(before the first load report) and the rest of the order after a replica that refuses (at
`max_ongoing_requests`) follow the stateless power of two choices over the load reports
(`cluster.scheduling.placement`): one decision, one ledger, and it is the scheduler's. Engine load
reports arrive here as Serve routing stats (`record_routing_stats` on the engine replica); the
router passes each broadcast on to the dispatcher that subscribed for the deployment in this
process. (Serve pickles this module by value, so that registry lives in `cluster.serve.dispatcher`.)
An output channel's `attach` call (`cluster.serve.channels`) goes to the replica it names or waits
for it: never elsewhere. So the replica found for a call goes to that call (Serve's default
matching by request id), never to the oldest one waiting (`FIFOMixin`): that handed a channel
another replica's stream, and a request then ran where its gateway had no channel and hung.
"""

from __future__ import annotations

import random
from typing import TypeVar

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from cluster.contracts import EngineRequest, LoadReport
from cluster.scheduling.placement import ReplicaEstimate, power_of_two
from cluster.serve.channels import Channel
from cluster.serve.dispatcher import publish_load_reports, publish_replicas

T = TypeVar("T")


def _arg(pending: PendingRequest | None, kind: type[T]) -> T | None:
    if pending is None:
        return None
    return next((a for a in pending.args if isinstance(a, kind)), None)


def _report(replica: RunningReplica) -> LoadReport | None:
    stats = replica.routing_stats
    return LoadReport.from_dict(stats) if stats else None


class TokenAwareRequestRouter(RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self._rng = random.Random()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        rest = {r.replica_id.unique_id: r for r in candidate_replicas}
        channel = _arg(pending_request, Channel)
        if not rest or (channel is not None and channel.replica not in rest):
            # Nothing to choose now (a channel's replica is gone, or not in the set yet): Serve
            # retries, and without this at once, a loop that holds the gateway's event loop.
            if pending_request is not None:
                pending_request.routing_context.should_backoff = True
            return []
        if channel is not None:
            return [[rest[channel.replica]]]
        request = _arg(pending_request, EngineRequest)
        chosen = request.replica if request else None
        first = [[rest.pop(chosen)]] if chosen in rest else []
        estimates = [ReplicaEstimate.of(rid, _report(r)) for rid, r in rest.items()]
        return first + [[rest[rid]] for rid in power_of_two(estimates, self._rng)]

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        reports = {r.replica_id.unique_id: report for r in replicas if (report := _report(r))}
        app, deployment = self._deployment_id.app_name, self._deployment_id.name
        publish_load_reports(app, deployment, reports)
        publish_replicas(app, deployment, [r.replica_id.unique_id for r in replicas])
