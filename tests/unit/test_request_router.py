"""The Serve adapter over the placement core, with fake replicas (no Ray cluster)."""

from types import SimpleNamespace

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID

from cluster.contracts import Effort, EngineRequest, LoadReport, SamplingParams
from cluster.serve.channels import Channel
from cluster.serve.dispatcher import subscribe_load_reports, subscribe_replicas
from cluster.serve.request_router import TokenAwareRequestRouter


def replica(name, outstanding, at=0.0):
    stats = LoadReport(1, 0, 0, 1000, outstanding, 16, at).to_dict()
    rid = ReplicaID(unique_id=name, deployment_id=DeploymentID(name="engine", app_name="t"))
    return SimpleNamespace(replica_id=rid, routing_stats=stats)


def pending(rid, prompt_tokens=100, expected=400, chosen=None):
    req = EngineRequest(
        rid, [1] * prompt_tokens, SamplingParams(1000), Effort.LOW, expected, replica=chosen
    )
    meta = RequestMetadata(request_id=rid, internal_request_id=rid)
    return PendingRequest(args=[req], kwargs={}, metadata=meta)


async def make_router(replicas):
    router = TokenAwareRequestRouter(
        deployment_id=DeploymentID(name="engine", app_name="t"),
        handle_source=DeploymentHandleSource.UNKNOWN,
    )
    router.initialize_state()
    router._replicas_list = list(replicas)
    router._replicas = {r.replica_id: r for r in replicas}  # what update_replicas maintains
    return router


async def test_the_schedulers_choice_goes_first_then_the_stateless_order():
    a, b, c = replica("a", 1000), replica("b", 300), replica("c", 600)
    router = await make_router([a, b, c])
    assert await router.choose_replicas([a, b, c], pending("r1", chosen="a")) == [[a], [b], [c]]
    # a chosen replica that is gone (scaled down since the choice): least outstanding decides
    assert await router.choose_replicas([b, c], pending("r2", chosen="a")) == [[b], [c]]


async def test_replica_broadcasts_reach_the_subscribed_dispatcher():
    heard = []
    subscribe_load_reports("t", "engine", heard.append)
    a, b = replica("a", 10), replica("b", 20)
    b.routing_stats = {}  # a new replica that has not reported yet
    router = await make_router([])
    replicas = []
    subscribe_replicas("t", "engine", replicas.append)
    router.update_replicas([a, b])
    assert list(heard[-1]) == ["a"] and heard[-1]["a"].outstanding_tokens == 10
    assert list(replicas[-1]) == ["a", "b"]  # every replica, reported or not


async def test_an_output_channel_goes_to_its_replica_or_waits_for_it():
    a, b = replica("a", 0), replica("b", 1000)
    router = await make_router([a, b])
    meta = RequestMetadata("x", "x")
    attach = PendingRequest(args=[Channel("gw", "b")], kwargs={}, metadata=meta)
    assert await router.choose_replicas([a, b], attach) == [[b]]
    assert not attach.routing_context.should_backoff
    assert await router.choose_replicas([a], attach) == []  # not there (yet): never elsewhere
    # and Serve waits before it asks again: retried at once, the call held the gateway's loop
    assert attach.routing_context.should_backoff


async def test_without_a_choice_the_less_loaded_of_two_leads():
    a, b = replica("a", 1000), replica("b", 300)
    router = await make_router([a, b])
    for i in range(5):  # two replicas: both are drawn, the less loaded goes first
        assert await router.choose_replicas([a, b], pending(f"r{i}")) == [[b], [a]]


async def test_calls_without_an_engine_request_still_route():
    a = replica("a", 0)
    router = await make_router([a])
    probe = PendingRequest(args=[], kwargs={}, metadata=RequestMetadata("x", "x"))
    assert await router.choose_replicas([a], probe) == [[a]]


async def test_the_replica_found_for_a_call_goes_to_that_call_not_the_oldest_waiting():
    a, b = replica("a", 0), replica("b", 0)
    router = await make_router([a, b])
    # The oldest call waits for its replica (a channel to one not in the set yet) ...
    waiting = PendingRequest(
        args=[Channel("gw", "c")], kwargs={}, metadata=RequestMetadata("w", "w")
    )
    placed = pending("r1", chosen="a")
    for call in (waiting, placed):
        router._pending_requests_to_fulfill.append(call)
        router._add_pending_request_to_indices(call)
    chosen = await router.choose_replicas([a, b], placed)
    router._fulfill_next_pending_request(chosen[0][0], placed.metadata)
    # ... and the replica chosen for the newer one is the newer one's: a channel that took it
    # would read another replica's outputs, and the request would run where none reads them.
    assert placed.future.done() and placed.future.result() is a
    assert not waiting.future.done()


def test_each_engine_call_is_a_serve_request_of_its_own():
    """Serve names a call after the request it is made in; the router matches the replica it
    finds to the waiting call by that name, so the gateway's engine calls each get their own."""
    from ray.serve import context as serve_context

    from cluster.serve.deployments import _own_call

    handle = SimpleNamespace(
        remote=lambda *args: (serve_context._get_serve_request_context(), args)
    )
    serve_context._set_request_context(request_id="http-1", _internal_request_id="in-1")
    (first, args), (second, _) = _own_call(handle, "a", 1), _own_call(handle, "b")
    assert args == ("a", 1)
    assert len({first._internal_request_id, second._internal_request_id, "in-1"}) == 3
    assert first.request_id == second.request_id == "http-1"  # logs still name the HTTP request
    assert serve_context._get_serve_request_context()._internal_request_id == "in-1"
    serve_context._unset_request_context()
