"""A continuous-batching engine in virtual time: vLLM V1's scheduler shape with roofline step costs.

Pure and deterministic: the mock engine drives it against the wall clock, the simulator in
virtual time. Each step spends a token budget (`max_num_batched_tokens`) on one decode token per
running sequence, then on prefill chunks of newly admitted ones; a sequence is admitted while
`max_num_seqs` and the KV capacity allow, and the newest one is preempted (recomputed later) when
decoding outgrows the KV cache, as vLLM does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cluster.config import PerfProfile


def step_seconds(
    perf: PerfProfile, tp: int, decode_seqs: int, prefill_tokens: int, context_tokens: int
) -> float:
    """Time of one engine step: max(memory, compute) plus fixed and all-reduce overheads."""
    tokens = decode_seqs + prefill_tokens
    if tokens == 0:
        return 0.0
    touched = 1.0 - (1.0 - perf.experts_per_token / perf.num_experts) ** tokens
    weight_bytes = perf.dense_weight_bytes + perf.expert_weight_bytes * touched
    kv_bytes = perf.kv_bytes_per_token * context_tokens
    memory_s = (weight_bytes + kv_bytes) / (
        tp * perf.hbm_bandwidth_bytes_s * perf.memory_efficiency
    )
    compute_s = 2 * perf.active_params * tokens / (tp * perf.peak_flops * perf.compute_efficiency)
    overhead = perf.step_overhead_s + (perf.tp_allreduce_s if tp > 1 else 0.0)
    return overhead + max(memory_s, compute_s)


@dataclass
class _Seq:
    request_id: str
    to_prefill: int  # prompt tokens (plus, after a preemption, generated ones) not yet in KV
    output_tokens: int  # tokens this sequence will generate before it stops
    expected_output_tokens: int
    kv: int = 0  # tokens held in the KV cache
    generated: int = 0


@dataclass(frozen=True)
class StepResult:
    duration_s: float
    emitted: dict[str, int]  # request id -> tokens produced in this step
    finished: list[str]


@dataclass
class BatchingModel:
    perf: PerfProfile
    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int
    now: float = 0.0
    _waiting: deque[_Seq] = field(default_factory=deque)
    _running: list[_Seq] = field(default_factory=list)
    # Kept up to date incrementally: load reports are read after every simulated step.
    _kv_used: int = 0
    _outstanding: int = 0

    @staticmethod
    def _work(seq: _Seq) -> int:
        """Prefill still to do plus expected decode still to come (at least one token)."""
        return seq.to_prefill + max(seq.expected_output_tokens - seq.generated, 1)

    def add(
        self, request_id: str, prompt_tokens: int, output_tokens: int, expected_output_tokens: int
    ) -> None:
        seq = _Seq(request_id, max(1, prompt_tokens), max(1, output_tokens), expected_output_tokens)
        self._waiting.append(seq)
        self._outstanding += self._work(seq)

    def abort(self, request_id: str) -> None:
        for seq in self._running:
            if seq.request_id == request_id:
                self._kv_used -= seq.kv
                self._outstanding -= self._work(seq)
        for seq in self._waiting:
            if seq.request_id == request_id:
                self._outstanding -= self._work(seq)
        self._running = [s for s in self._running if s.request_id != request_id]
        self._waiting = deque(s for s in self._waiting if s.request_id != request_id)

    @property
    def idle(self) -> bool:
        return not self._running and not self._waiting

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_used_tokens(self) -> int:
        return self._kv_used

    @property
    def outstanding_tokens(self) -> int:
        """Prefill still to do plus expected decode still to come, over all admitted work."""
        return self._outstanding

    def step(self, until: float | None = None) -> StepResult:
        """Run one engine step and advance the clock by its duration.

        With `until`, a batch that only decodes (nothing to prefill or admit) runs as many
        identical steps as fit before that time or the next sequence finishes, in one call: the
        simulator's fast path. Token counts and times are the same as stepping one at a time,
        up to the KV-read term, which uses the batch's mean context over the run.
        """
        self._preempt_until_kv_fits()
        if until is not None and (steps := self._pure_decode_steps(until)) > 1:
            return self._decode_run(steps)
        budget = self.max_num_batched_tokens
        decoding = [s for s in self._running if s.to_prefill == 0]
        decoding = decoding[:budget]
        budget -= len(decoding)
        context = sum(s.kv for s in decoding)
        candidates = self._prefill_candidates()
        chunked = self._chunked(candidates, budget)
        before = self._snapshot(decoding + chunked)
        prefill_tokens = 0
        completed_prefill: list[_Seq] = []
        touched = decoding + chunked
        for seq in chunked:
            chunk = min(seq.to_prefill, budget)
            seq.to_prefill -= chunk
            seq.kv += chunk
            budget -= chunk
            prefill_tokens += chunk
            if seq.to_prefill == 0:
                completed_prefill.append(seq)
        duration = step_seconds(
            self.perf, self.tensor_parallel_size, len(decoding), prefill_tokens, context
        )
        self.now += duration
        emitted: dict[str, int] = {}
        finished: list[str] = []
        for seq in (*decoding, *completed_prefill):
            seq.generated += 1
            seq.kv += 1
            emitted[seq.request_id] = 1
            if seq.generated >= seq.output_tokens:
                finished.append(seq.request_id)
        self._account(touched, before, finished)
        return StepResult(duration, emitted, finished)

    def _snapshot(self, seqs: list[_Seq]) -> tuple[int, int]:
        return sum(s.kv for s in seqs), sum(self._work(s) for s in seqs)

    def _account(self, touched: list[_Seq], before: tuple[int, int], finished: list[str]) -> None:
        """Fold the touched sequences' change into the running sums; drop finished ones."""
        done = set(finished)
        kept = [s for s in touched if s.request_id not in done]
        kv, work = self._snapshot(kept)
        self._kv_used += kv - before[0]
        self._outstanding += work - before[1]
        if done:
            self._running = [s for s in self._running if s.request_id not in done]

    @staticmethod
    def _chunked(candidates: list[_Seq], budget: int) -> list[_Seq]:
        """The prefill candidates this step's token budget reaches."""
        out = []
        for seq in candidates:
            if budget <= 0:
                break
            out.append(seq)
            budget -= seq.to_prefill
        return out

    def _pure_decode_steps(self, until: float) -> int:
        running = self._running
        if not running or len(running) > self.max_num_batched_tokens:
            return 1
        if any(s.to_prefill for s in running):
            return 1
        if self._waiting and len(running) < self.max_num_seqs:
            head = self._waiting[0]
            if head.to_prefill + 1 <= self.kv_capacity_tokens - self.kv_used_tokens:
                return 1  # an admission is due: step normally
        n = len(running)
        first = step_seconds(self.perf, self.tensor_parallel_size, n, 0, self.kv_used_tokens)
        by_time = int((until - self.now) / first) if first > 0 else 1
        by_finish = min(s.output_tokens - s.generated for s in running)
        by_kv = (self.kv_capacity_tokens - self.kv_used_tokens) // n
        return max(1, min(by_time, by_finish, by_kv))

    def _decode_run(self, steps: int) -> StepResult:
        running = self._running
        n = len(running)
        mean_context = self.kv_used_tokens + n * (steps - 1) / 2
        per_step = step_seconds(self.perf, self.tensor_parallel_size, n, 0, int(mean_context))
        duration = per_step * steps
        self.now += duration
        before = self._snapshot(running)
        finished = []
        for seq in running:
            seq.generated += steps
            seq.kv += steps
            if seq.generated >= seq.output_tokens:
                finished.append(seq.request_id)
        self._account(list(running), before, finished)
        return StepResult(duration, {s.request_id: steps for s in running}, finished)

    def _prefill_candidates(self) -> list[_Seq]:
        """Running sequences mid-prefill first, then admissions while seats and KV allow."""
        partial = [s for s in self._running if s.to_prefill > 0]
        decoding = len(self._running) - len(partial)  # each writes one token's KV this step
        kv_free = self.kv_capacity_tokens - self.kv_used_tokens - decoding
        kv_free -= sum(s.to_prefill + 1 for s in partial)  # already admitted, still prefilling
        while self._waiting and len(self._running) < self.max_num_seqs:
            head = self._waiting[0]
            if head.to_prefill + 1 > kv_free:
                break
            kv_free -= head.to_prefill + 1
            self._running.append(self._waiting.popleft())
            partial.append(head)
        return partial

    def _preempt_until_kv_fits(self) -> None:
        decoding = sum(1 for s in self._running if s.to_prefill == 0)
        while len(self._running) > 1 and self.kv_used_tokens + decoding > self.kv_capacity_tokens:
            victim = self._running.pop()
            if victim.to_prefill == 0:
                decoding -= 1
            # Recompute: everything it held in KV becomes prefill work again.
            self._kv_used -= victim.kv
            self._outstanding += victim.kv
            victim.to_prefill += victim.kv
            victim.kv = 0
            self._waiting.appendleft(victim)
