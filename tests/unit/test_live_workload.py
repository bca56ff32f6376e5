"""The live benchmarks' agentic driver writes the simulator's prompt segments as chat messages
that share, once harmony renders them, what the segments share."""

from cluster.bench.live import messages
from cluster.harmony import Turn
from cluster.sim.workload import Agentic, Lognormal, WorkloadSpec, generate
from tests.helpers import shared_prefix

SPEC = WorkloadSpec(
    rate=20,
    duration_s=60,
    agentic=Agentic(personas=2, developer_tokens=Lognormal(median=300, sigma=0.1), lead_s=0),
    seed=3,
)


def _rendered(harmony, request):
    chat = messages(request)
    developer = next(m["content"] for m in chat if m["role"] == "developer")
    turns = [Turn(role=m["role"], content=m["content"]) for m in chat if m["role"] != "developer"]
    return harmony.render(turns, request.effort, developer)


def test_agentic_turns_render_to_prompts_that_share_what_their_segments_share(harmony):
    requests = generate(SPEC)
    by_conversation = {}
    for r in requests:
        by_conversation.setdefault(r.segments[2][0][1], []).append(r)
    first, second = next(turns for turns in by_conversation.values() if len(turns) >= 2)[:2]
    a, b = _rendered(harmony, first), _rendered(harmony, second)
    # A follow-up resends the turn before: its prompt starts with the whole earlier prompt
    # (up to the tokens that close the earlier one's last message).
    assert shared_prefix(a, b) >= len(a) - 8
    # A prompt's length is about its segments' (the system message is the gateway's own).
    assert abs(len(b) - second.prompt_tokens) < 0.1 * second.prompt_tokens
    other = next(
        r for r in requests
        if r.prefix_key == first.prefix_key and r.segments[2][0][1] != first.segments[2][0][1]
    )  # fmt: skip
    head = first.segments[1][1]  # the persona's developer prompt, in tokens
    assert head - 16 < shared_prefix(a, _rendered(harmony, other)) < len(a) - 8
