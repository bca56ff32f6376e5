import collections
import itertools

import pytest

from cluster.blocks import segment_blocks
from cluster.config import PerfProfile
from cluster.engine.batching import BatchingModel, step_seconds

ROOFLINE = PerfProfile(memory_efficiency=1.0, step_overhead_s=0.0)


@pytest.mark.parametrize(("batch", "floor_ms"), [(8, 5.0), (64, 16.7), (128, 19.0)])
def test_decode_step_reproduces_the_h100_roofline_floors(batch, floor_ms):
    # ANCHORS.md: decode step floors for gpt-oss-120b on one H100 derived from the model card.
    ms = step_seconds(ROOFLINE, 1, batch, 0, 0) * 1000
    assert ms == pytest.approx(floor_ms, rel=0.1)


def test_batch_one_is_about_670_tokens_per_second():
    assert 1 / step_seconds(ROOFLINE, 1, 1, 0, 0) == pytest.approx(670, rel=0.1)


def test_tensor_parallel_splits_the_reads_and_adds_all_reduce():
    perf = PerfProfile()
    tp1, tp2 = step_seconds(perf, 1, 64, 0, 0), step_seconds(perf, 2, 64, 0, 0)
    assert tp2 < tp1 < 2 * tp2 + perf.tp_allreduce_s


def test_prefill_is_compute_bound_and_kv_reads_cost_time():
    perf = PerfProfile()
    assert step_seconds(perf, 1, 0, 8192, 0) > 4 * step_seconds(perf, 1, 0, 512, 0)
    assert step_seconds(perf, 1, 64, 0, 500_000) > step_seconds(perf, 1, 64, 0, 0)


def model(**kw) -> BatchingModel:
    args = {
        "perf": PerfProfile(),
        "tensor_parallel_size": 1,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "kv_capacity_tokens": 1_000_000,
    }
    return BatchingModel(**(args | kw))


def run_to_idle(
    m: BatchingModel, step=BatchingModel.step, after_step=None
) -> tuple[dict[str, int], dict[str, float]]:
    """Step until idle; tokens emitted and first-token time per request. `after_step(m, i)`
    runs after every step, for invariants checked along the way."""
    tokens: dict[str, int] = {}
    first: dict[str, float] = {}
    for i in range(100_000):
        if m.idle:
            return tokens, first
        result = step(m)
        if after_step is not None:
            after_step(m, i)
        for rid, n in result.emitted.items():
            tokens[rid] = tokens.get(rid, 0) + n
            first.setdefault(rid, m.now)
    raise AssertionError("model never went idle")


def add_ramp(m: BatchingModel, count: int, prompt: tuple[int, int], output: tuple[int, int],
             expected: int) -> None:  # fmt: skip
    """`count` requests whose prompt and output lengths grow by a step: (first, step)."""
    for i in range(count):
        m.add(f"r{i}", prompt_tokens=prompt[0] + prompt[1] * i,
              output_tokens=output[0] + output[1] * i, expected_output_tokens=expected)  # fmt: skip


def test_single_request_closed_form():
    m = model()
    m.add("a", prompt_tokens=1000, output_tokens=50, expected_output_tokens=50)
    tokens, first = run_to_idle(m)
    assert tokens == {"a": 50}
    perf = PerfProfile()
    assert first["a"] == pytest.approx(step_seconds(perf, 1, 0, 1000, 0))
    decode = sum(step_seconds(perf, 1, 1, 0, 1000 + i) for i in range(1, 50))
    assert m.now == pytest.approx(first["a"] + decode)


def test_token_conservation_and_concurrency_bounds():
    m = model(max_num_seqs=8, max_num_batched_tokens=2048, kv_capacity_tokens=20_000)
    add_ramp(m, 40, prompt=(300, 0), output=(20, 7), expected=100)
    peaks = {"running": 0, "kv": 0}

    def track(m: BatchingModel, _: int) -> None:
        peaks["running"] = max(peaks["running"], m.running)
        peaks["kv"] = max(peaks["kv"], m.kv_used_tokens)

    tokens, _ = run_to_idle(m, after_step=track)
    assert tokens == {f"r{i}": 20 + 7 * i for i in range(40)}
    assert peaks["running"] <= 8
    assert peaks["kv"] <= 20_000


def test_kv_pressure_preempts_and_recomputes_without_losing_tokens():
    m = model(kv_capacity_tokens=3_000)
    add_ramp(m, 4, prompt=(500, 0), output=(600, 0), expected=600)
    seen = {"waiting_again": False}

    def check(m: BatchingModel, _: int) -> None:
        assert m.kv_used_tokens <= 3_000
        seen["waiting_again"] |= m.waiting > 0 and m.running > 0 and m.now > 0.5

    tokens, _ = run_to_idle(m, after_step=check)
    assert tokens == {f"r{i}": 600 for i in range(4)}
    assert seen["waiting_again"]


def test_abort_frees_the_seat_and_outstanding_work():
    m = model()
    m.add("a", 100, 1000, expected_output_tokens=400)
    m.add("b", 100, 1000, expected_output_tokens=400)
    m.step()
    assert m.running == 2 and m.outstanding_tokens == 2 * 399
    m.abort("a")
    assert m.running == 1 and m.outstanding_tokens == 399


def test_fast_forward_matches_single_steps():
    def run(fast: bool) -> tuple[dict[str, int], float]:
        m = model(max_num_seqs=4)
        add_ramp(m, 6, prompt=(200, 50), output=(100, 37), expected=150)
        step = (lambda m: m.step(until=m.now + 10.0)) if fast else BatchingModel.step
        tokens, _ = run_to_idle(m, step=step)
        return tokens, m.now

    (slow_tokens, slow_end), (fast_tokens, fast_end) = run(False), run(True)
    assert fast_tokens == slow_tokens
    assert fast_end == pytest.approx(slow_end, rel=1e-3)


def test_running_sums_match_a_full_recount_through_preemption_and_aborts():
    m = model(max_num_seqs=6, max_num_batched_tokens=512, kv_capacity_tokens=4_000)
    add_ramp(m, 12, prompt=(300, 40), output=(200, 30), expected=250)

    steps = itertools.count()

    def step(m: BatchingModel):  # every third step a single one, the others fast-forward
        return m.step(until=None if next(steps) % 3 == 0 else m.now + 0.05)

    def check(m: BatchingModel, i: int) -> None:
        if i == 39:
            m.abort("r3")
            m.abort("r11")
        assert_pool_consistent(m)

    run_to_idle(m, step=step, after_step=check)


def assert_pool_consistent(m: BatchingModel) -> None:
    """The running sums and the block pool against a full recount."""
    bs = m.block_size
    seqs = [*m._running, *m._waiting]
    refs = collections.Counter(h for s in m._running for h in s.blocks[: s.held])
    assert m._in_use == dict(refs)
    assert not m._in_use.keys() & m._free.keys()
    assert all(s.held == 0 and s.kv == 0 for s in m._waiting)
    own = sum(s.kv - s.held * bs for s in m._running)
    assert m.kv_used_tokens == own + bs * len(m._in_use)
    assert m.outstanding_tokens == sum(m._work(s) for s in seqs)
    assert m.prefill_tokens == sum(s.to_prefill - s.expected_cached for s in seqs)
    assert m.kv_used_tokens <= m.kv_capacity_tokens
    assert len(m._free) * bs <= m.kv_capacity_tokens - m.kv_used_tokens


def shared_prompt(prefix: int, own: int, tag: str) -> tuple[int, tuple[int, ...]]:
    """A prompt of `prefix` shared tokens then `own` tokens of its own: (length, block hashes)."""
    return prefix + own, segment_blocks([("shared", prefix), (tag, own)])


def test_a_repeated_prefix_skips_its_prefill():
    cold, warm = model(), model()
    tokens, blocks = shared_prompt(4096, 100, "first")
    for m in (cold, warm):
        m.add("a", tokens, 10, 10, blocks)
        run_to_idle(m)
    start = warm.now
    tokens, blocks = shared_prompt(4096, 100, "second")
    warm.add("b", tokens, 1, 1, blocks)
    _, first = run_to_idle(warm)
    perf = PerfProfile()
    assert first["b"] - start == pytest.approx(step_seconds(perf, 1, 0, 4196 - 4096, 0))
    assert warm.cached_prompt_tokens == 4096
    assert warm.prompt_tokens == 2 * 4196
    assert cold.cached_prompt_tokens == 0


def test_a_whole_prompt_in_cache_still_computes_a_token():
    m = model()
    tokens, blocks = shared_prompt(1024, 0, "")
    for rid in ("a", "b"):
        m.add(rid, tokens, 1, 1, blocks)
        run_to_idle(m)
    assert m.cached_prompt_tokens == 1024 - m.block_size


def test_running_requests_share_their_prefix_blocks_once():
    m = model()
    for i in range(4):
        tokens, blocks = shared_prompt(4096, 64, f"own{i}")
        m.add(f"r{i}", tokens, 100, 100, blocks)
        m.step()  # each prefills whole and writes a token, the ones before it decode one
    assert m.running == 4
    assert m.kv_used_tokens == 4096 + 4 * 64 + (4 + 3 + 2 + 1)
    assert_pool_consistent(m)


def test_free_blocks_are_evicted_least_recently_used_tail_first():
    m = model(kv_capacity_tokens=2_048, max_num_batched_tokens=2_048)
    old, old_blocks = shared_prompt(1024, 0, "")
    m.add("old", old, 1, 1, old_blocks)
    run_to_idle(m)
    assert m.cached_blocks == 1024 // 16
    filler, filler_blocks = 1600, segment_blocks([("filler", 1600)])
    m.add("filler", filler, 1, 1, filler_blocks)  # needs all but 448 tokens of the room
    run_to_idle(m)
    m.add("again", old, 1, 1, old_blocks)
    run_to_idle(m)
    # What survived of "old" is its head: 448 tokens of room kept 28 blocks, hit again.
    assert m.cached_prompt_tokens == 448
    assert_pool_consistent(m)


def test_pool_stays_consistent_through_sharing_preemption_and_aborts():
    m = model(max_num_seqs=6, max_num_batched_tokens=512, kv_capacity_tokens=3_000)
    for i in range(16):
        tokens, blocks = shared_prompt(800 + 160 * (i % 3), 40 + 8 * i, f"own{i}")
        m.add(f"r{i}", tokens, 150 + 20 * i, 200, blocks)
    steps = itertools.count()

    def step(m: BatchingModel):
        return m.step(until=None if next(steps) % 3 == 0 else m.now + 0.05)

    preempted = set()

    def check(m: BatchingModel, i: int) -> None:
        if i == 30:
            m.abort("r2")
            m.abort("r9")
        preempted.update(s.request_id for s in m._waiting if s.generated)
        assert_pool_consistent(m)

    tokens, _ = run_to_idle(m, step=step, after_step=check)
    finished = {r: n for r, n in tokens.items() if r not in ("r2", "r9")}
    assert finished == {f"r{i}": 150 + 20 * i for i in range(16) if i not in (2, 9)}
    assert preempted
    assert 0 < m.cached_prompt_tokens < m.prompt_tokens
