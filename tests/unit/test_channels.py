"""Output channels end to end in one process: engine replicas' outboxes wired to a gateway's
channels by plain calls where the cluster has Serve calls (no Ray)."""

import asyncio

import pytest

from cluster.contracts import EngineOutput, EngineUnavailable
from cluster.serve.channels import Channels, Outboxes, while_caller_lives

GATEWAY = "gw"


class Replica:
    """An engine replica's `run` and `attach`, over a fake engine that emits `n` outputs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outboxes = Outboxes()
        self.aborted: list[str] = []
        self.attached = 0
        self.items = 0  # channel items sent (one per batch)
        self.fail: Exception | None = None  # the next attach raises it after one batch

    async def outputs(self, request_id, n, step: asyncio.Semaphore | None, error):
        """`step`: one output per release (None: one per loop turn); `error` replaces the last."""
        try:
            for i in range(n):
                if step is not None:
                    await step.acquire()
                await asyncio.sleep(0)
                last = i == n - 1
                if last and error is not None:
                    raise error
                yield EngineOutput([i], "stop" if last else None)
        finally:
            if i < n - 1:
                self.aborted.append(request_id)

    async def run(self, request_id: str, n: int, step=None, error=None) -> str:
        await self.outboxes.run(GATEWAY, request_id, self.outputs(request_id, n, step, error))
        return self.name

    async def attach(self):
        self.attached += 1
        async for batch in self.outboxes.attach(GATEWAY):
            self.items += 1
            yield batch
            if self.fail is not None:
                raise self.fail


class Cluster:
    def __init__(self, *names: str, grace_s: float | None = None) -> None:
        self.replicas = {n: Replica(n) for n in names}
        self.channels = Channels(lambda name: self.replicas[name].attach(), grace_s)
        self.channels.replicas(names)

    def stream(self, request_id: str, replica: str, n: int, step=None, error=None):
        call = asyncio.ensure_future(self.replicas[replica].run(request_id, n, step, error))
        return self.channels.stream(request_id, call, call.cancel, expected=replica)


@pytest.fixture
async def cluster_of():
    made: list[Cluster] = []

    def make(*names: str, grace_s: float | None = None) -> Cluster:
        made.append(Cluster(*names, grace_s=grace_s))
        return made[-1]

    yield make
    for cluster in made:
        await cluster.channels.close()


async def collect(outputs) -> list[EngineOutput]:
    return [o async for o in outputs]


async def until(condition, timeout=5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_every_request_gets_its_outputs_in_order_in_fewer_items(cluster_of):
    cluster = cluster_of("a", "b")
    runs = [cluster.stream(f"r{i}", "ab"[i % 2], 20) for i in range(16)]
    results = await asyncio.gather(*map(collect, runs))
    for outputs in results:
        assert [o.token_ids[0] for o in outputs] == list(range(20))
        assert outputs[-1].finish_reason == "stop"
    items = sum(r.items for r in cluster.replicas.values())
    assert items < 16 * 20 / 4, items  # outputs of one step travel together
    assert all(r.attached == 1 for r in cluster.replicas.values())


async def test_a_client_that_leaves_aborts_its_request_and_no_other(cluster_of):
    cluster = cluster_of("a")
    stay = asyncio.ensure_future(collect(cluster.stream("stay", "a", 50)))
    leaver = cluster.stream("leave", "a", 50)
    assert (await anext(leaver)).token_ids == [0]
    await leaver.aclose()
    await until(lambda: "leave" in cluster.replicas["a"].aborted)
    assert len(await stay) == 50
    assert cluster.replicas["a"].aborted == ["leave"]


async def test_a_run_that_fails_delivers_what_came_before_then_its_error(cluster_of):
    cluster = cluster_of("a")
    outputs = cluster.stream("r", "a", 3, error=EngineUnavailable("boom"))
    seen = []
    with pytest.raises(EngineUnavailable, match="boom"):
        async for output in outputs:
            seen.append(output.token_ids[0])
    assert seen == [0, 1]


async def test_a_channel_that_breaks_fails_the_requests_it_carries(cluster_of):
    cluster = cluster_of("a", "b")
    step = asyncio.Semaphore(0)
    on_a = asyncio.ensure_future(collect(cluster.stream("on-a", "a", 100, step)))
    on_b = asyncio.ensure_future(collect(cluster.stream("on-b", "b", 5)))
    step.release()
    await until(lambda: cluster.replicas["a"].items > 0)
    cluster.replicas["a"].fail = EngineUnavailable("replica a died")
    step.release()
    with pytest.raises(EngineUnavailable, match="replica a died"):
        await on_a
    assert len(await on_b) == 5


async def test_a_replica_that_leaves_keeps_its_channel_until_its_requests_end(cluster_of):
    cluster = cluster_of("a", "b")
    step = asyncio.Semaphore(0)
    running = asyncio.ensure_future(collect(cluster.stream("long", "a", 10, step)))
    step.release()
    await until(lambda: cluster.replicas["a"].items > 0)
    cluster.channels.replicas(["b"])  # a drains: Serve took it out of the set
    assert len(await collect(cluster.stream("new", "b", 3))) == 3
    assert cluster.replicas["a"].outboxes._by_gateway  # still attached while "long" runs
    for _ in range(9):
        step.release()
    assert len(await running) == 10
    await until(lambda: not cluster.replicas["a"].outboxes._by_gateway)  # channel closed


async def test_requests_on_a_leaving_replica_hear_after_the_grace_that_they_may_move(cluster_of):
    cluster = cluster_of("a", "b", grace_s=0.05)
    steps = asyncio.Semaphore(1), asyncio.Semaphore(1)  # one output each, then one per release
    long = cluster.stream("long", "a", 10, steps[0])
    back = cluster.stream("back", "b", 10, steps[1])
    firsts = await asyncio.gather(anext(long), anext(back))  # each inbox opens with its stream
    assert [o.token_ids for o in firsts] == [[0], [0]]
    cluster.channels.replicas(["b"])  # a drains
    await asyncio.sleep(0)
    cluster.channels.replicas(["a", "b"])  # and comes back: its grace is called off
    await asyncio.sleep(0)
    cluster.channels.replicas(["b"])  # a drains for good
    started = asyncio.get_running_loop().time()
    told = await anext(long)
    assert told.draining and not told.token_ids
    assert asyncio.get_running_loop().time() - started >= 0.05
    await long.aclose()  # it moves: its run there is cancelled
    await until(lambda: "long" in cluster.replicas["a"].aborted)
    for _ in range(9):
        steps[1].release()
    assert not any(o.draining for o in await collect(back))  # b never left


async def test_a_leaving_replica_keeps_its_channel_for_a_request_not_heard_from_yet(cluster_of):
    cluster = cluster_of("a", "b")
    step = asyncio.Semaphore(0)
    queued = asyncio.ensure_future(collect(cluster.stream("queued", "a", 3, step)))
    await collect(cluster.stream("warm", "b", 1))  # the channels are open
    cluster.channels.replicas(["b"])
    assert len(await collect(cluster.stream("other", "b", 2))) == 2
    assert cluster.replicas["a"].attached == 1 and cluster.replicas["a"].outboxes._by_gateway
    later = asyncio.Semaphore(0)  # one that went to b and has not answered yet
    unheard = asyncio.ensure_future(collect(cluster.stream("unheard", "b", 1, later)))
    for _ in range(3):
        step.release()
    assert len(await queued) == 3
    await until(lambda: not cluster.replicas["a"].outboxes._by_gateway)
    later.release()
    assert len(await unheard) == 1


async def test_a_gateway_whose_channel_closes_has_its_requests_cancelled():
    replica = Replica("a")
    step = asyncio.Semaphore(0)
    run = asyncio.ensure_future(replica.run("orphan", 100, step))
    channel = replica.attach()
    step.release()
    await anext(channel)
    await channel.aclose()  # Ray stops the stream of a gateway that died
    with pytest.raises(asyncio.CancelledError):
        await run
    assert replica.aborted == ["orphan"]


async def test_a_new_gateways_first_request_hears_its_outputs_once_the_replica_set_arrives():
    """A gateway replica that just started knows no engine replica yet (Serve's router starts
    with the first call and learns the set a moment later, on its own thread): the request must
    not wait for outputs that no channel would ever carry until its run ended."""
    replica = Replica("a")
    channels = Channels(lambda name: replica.attach())
    step = asyncio.Semaphore(0)
    call = asyncio.ensure_future(replica.run("first", 3, step))
    outputs = channels.stream("first", call, call.cancel, expected="a")
    first = asyncio.ensure_future(anext(outputs))
    await asyncio.sleep(0)
    await asyncio.to_thread(channels.replicas, ["a"])  # Serve's router thread
    step.release()
    async with asyncio.timeout(5):
        assert (await first).token_ids == [0]  # while the run still goes on
    for _ in range(2):
        step.release()
    assert len(await collect(outputs)) == 2
    await channels.close()


async def test_a_stream_whose_caller_died_ends_and_frees_the_gateways_runs():
    """Ray keeps an engine's stream to a dead gateway open; it asks whether the gateway lives,
    and when not, ends: the outbox goes and its runs are cancelled."""
    outboxes, answers = Outboxes(), []

    async def alive() -> bool:
        answers.append(len(answers) < 2)  # alive twice, then gone
        return answers[-1]

    async def forever():
        await asyncio.Event().wait()
        yield EngineOutput([1])

    run = asyncio.create_task(outboxes.run(GATEWAY, "r1", forever()))
    await asyncio.sleep(0)  # the run is there before the channel
    channel = while_caller_lives(outboxes.attach(GATEWAY), alive, every_s=0.01)
    batches = [batch async for batch in channel]
    assert answers == [True, True, False]
    assert batches == []  # nothing came; the stream ended on the third check
    await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 1)
    assert run.cancelled()


async def test_a_stream_whose_caller_lives_goes_on_through_idle_spells_and_checks():
    source = asyncio.Queue()

    async def items():
        while (item := await source.get()) is not None:
            yield item

    async def alive() -> bool:
        checks.append(1)
        return True

    checks: list[int] = []
    got = []

    async def read():
        async for item in while_caller_lives(items(), alive, every_s=0.01):
            got.append(item)

    reader = asyncio.create_task(read())
    await source.put("a")
    while len(checks) < 3:  # it asks, and waits on
        await asyncio.sleep(0.01)
    await source.put("b")
    await source.put(None)
    await asyncio.wait_for(reader, 1)
    assert got == ["a", "b"]


async def test_a_busy_stream_to_a_dead_caller_ends_too():
    """Outputs still flowing (its requests run on) do not keep a dead gateway's stream open."""

    async def busy():
        while True:
            await asyncio.sleep(0.001)
            yield "batch"

    async def gone() -> bool:
        return False

    got = [item async for item in while_caller_lives(busy(), gone, every_s=0.05)]
    assert got and set(got) == {"batch"}
