"""A continuous-batching engine in virtual time: vLLM V1's scheduler shape with roofline step costs.

Pure and deterministic: the mock engine drives it against the wall clock, the simulator in
virtual time. Each step spends a token budget (`max_num_batched_tokens`) on one decode token per
running sequence, then on prefill chunks of newly admitted ones; a sequence is admitted while
`max_num_seqs` and the KV capacity allow, and the newest one is preempted (recomputed later) when
decoding outgrows the KV cache, as vLLM does.

Automatic prefix caching as vLLM's block pool does it: a request brings the chained hashes of its
prompt's full blocks (`cluster.blocks`); on admission the longest run of them already cached is
taken (its prefill skipped, at least one token still computed), blocks are shared by reference,
and a finished or preempted request's blocks stay cached while free, evicted least recently used
(a request's tail blocks before its head) when new KV needs the room. Generated tokens are not
cached: a follow-up turn re-renders the reply (harmony drops the reasoning), so it would miss.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from cluster.blocks import BLOCK_SIZE
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
    prompt: int
    blocks: tuple[int, ...] = ()  # the prompt's full-block hashes
    kv: int = 0  # tokens held in the KV cache, its own and shared blocks alike
    held: int = 0  # its first `held` blocks are shared, referenced in the block pool
    generated: int = 0
    admitted: bool = False
    # Prompt tokens the cache held when it was queued, not counted as prefill work to come until
    # admission looks again (a router places on that count).
    expected_cached: int = 0


@dataclass(frozen=True)
class StepResult:
    duration_s: float
    emitted: dict[str, int]  # request id -> tokens produced in this step
    finished: list[str]
    # Sequences admitted for the first time in this step, with the prompt tokens found cached.
    cached: dict[str, int] = field(default_factory=dict)


@dataclass
class BatchingModel:
    perf: PerfProfile
    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int
    block_size: int = BLOCK_SIZE
    now: float = 0.0
    _waiting: deque[_Seq] = field(default_factory=deque)
    _running: list[_Seq] = field(default_factory=list)
    # Kept up to date incrementally: load reports are read after every simulated step.
    _kv_used: int = 0  # each sequence's own tokens plus every block in use, once
    _outstanding: int = 0
    _prefill: int = 0
    # The block pool: hashes in use (reference counts) and cached free ones, oldest first.
    _in_use: dict[int, int] = field(default_factory=dict)
    _free: OrderedDict[int, None] = field(default_factory=OrderedDict)
    # Prompt tokens of admitted requests, and those of them found in the cache (first admission).
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    _cached_now: dict[str, int] = field(default_factory=dict)  # for this step's `StepResult`

    @staticmethod
    def _work(seq: _Seq) -> int:
        """Prefill still to do plus expected decode still to come (at least one token)."""
        return seq.to_prefill + max(seq.expected_output_tokens - seq.generated, 1)

    def _own(self, seq: _Seq) -> int:
        """Tokens of a sequence's KV that are its alone (not in a shared block)."""
        return seq.kv - seq.held * self.block_size

    def add(
        self,
        request_id: str,
        prompt_tokens: int,
        output_tokens: int,
        expected_output_tokens: int,
        blocks: tuple[int, ...] = (),
    ) -> None:
        prompt = max(1, prompt_tokens)
        seq = _Seq(
            request_id,
            prompt,
            max(1, output_tokens),
            expected_output_tokens,
            prompt,
            blocks[: prompt // self.block_size],
        )
        seq.expected_cached = self._lookup(seq)[0] * self.block_size
        self._waiting.append(seq)
        self._outstanding += self._work(seq)
        self._prefill += seq.to_prefill - seq.expected_cached

    def abort(self, request_id: str) -> None:
        for seq in self._running:
            if seq.request_id == request_id:
                self._kv_used -= self._own(seq)
                self._release(seq)
                self._outstanding -= self._work(seq)
                self._prefill -= seq.to_prefill
        for seq in self._waiting:
            if seq.request_id == request_id:
                self._outstanding -= self._work(seq)
                self._prefill -= seq.to_prefill - seq.expected_cached
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
    def prefill_tokens(self) -> int:
        """Prompt (and recompute) tokens still to compute, a queued request's less what the
        cache held when it came."""
        return self._prefill

    @property
    def cached_blocks(self) -> int:
        """Blocks the prefix cache holds, in use or free."""
        return len(self._in_use) + len(self._free)

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
        decoding = [s for s in self._running if not s.to_prefill]
        if self._preempt_until_kv_fits(len(decoding)):
            decoding = [s for s in self._running if not s.to_prefill]
        if until is not None and (steps := self._pure_decode_steps(until, decoding)) > 1:
            return self._decode_run(steps)
        candidates = self._prefill_candidates(len(decoding))
        budget = self.max_num_batched_tokens
        decoding = decoding[:budget]
        budget -= len(decoding)
        context = sum([s.kv for s in decoding])
        chunked = self._chunked(candidates, budget)
        before = self._snapshot(chunked)
        prefill_tokens = 0
        completed_prefill: list[_Seq] = []
        for seq in chunked:
            chunk = min(seq.to_prefill, budget)
            seq.to_prefill -= chunk
            seq.kv += chunk
            budget -= chunk
            prefill_tokens += chunk
            if seq.to_prefill == 0:
                completed_prefill.append(seq)
            self._share_computed(seq)
        duration = step_seconds(
            self.perf, self.tensor_parallel_size, len(decoding), prefill_tokens, context
        )
        self.now += duration
        for seq in completed_prefill:  # its first token, counted with the prefill it ends
            seq.generated += 1
            seq.kv += 1
        finished = self._decode(decoding, 1)
        finished += [s for s in completed_prefill if s.generated >= s.output_tokens]
        kv, work, prefill = self._snapshot([s for s in chunked if s.generated < s.output_tokens])
        self._kv_used += kv - before[0]
        self._outstanding += work - before[1]
        self._prefill += prefill - before[2]
        emitted = dict.fromkeys([s.request_id for s in (*decoding, *completed_prefill)], 1)
        cached, self._cached_now = self._cached_now, {}
        return StepResult(duration, emitted, self._drop(finished), cached)

    def _decode(self, decoding: list[_Seq], steps: int) -> list[_Seq]:
        """`steps` tokens for each decoding sequence, folded into the running sums as it goes
        (the simulator's hottest loop: one pass over the batch per step); the finished ones."""
        finished = []
        kv = work = 0
        bs = self.block_size
        for s in decoding:
            left = s.expected_output_tokens - s.generated  # work counts at least one token
            s.generated += steps
            s.kv += steps
            if s.generated >= s.output_tokens:
                finished.append(s)
                kv -= s.kv - steps - s.held * bs
                work -= max(left, 1)
            else:
                kv += steps
                if left > steps:
                    work -= steps
                elif left > 1:
                    work -= left - 1
        self._kv_used += kv
        self._outstanding += work
        return finished

    def _snapshot(self, seqs: list[_Seq]) -> tuple[int, int, int]:
        """Own KV, work and prefill of `seqs`: `_own` and `_work` summed in one pass."""
        bs, own, work, prefill = self.block_size, 0, 0, 0
        for s in seqs:
            own += s.kv - s.held * bs
            work += s.to_prefill + max(s.expected_output_tokens - s.generated, 1)
            prefill += s.to_prefill
        return own, work, prefill

    def _drop(self, finished: list[_Seq]) -> list[str]:
        """Finished sequences leave the batch (their shared blocks stay cached while free)."""
        if finished:
            for seq in finished:
                self._release(seq)
            done = {id(s) for s in finished}
            self._running = [s for s in self._running if id(s) not in done]
        self._evict()
        return [s.request_id for s in finished]

    # -- the block pool ----------------------------------------------------------------------

    def cached_tokens(self, prompt_tokens: int, blocks: tuple[int, ...]) -> int:
        """Prompt tokens a new request would find in the prefix cache now."""
        return self._leading(blocks, max(1, prompt_tokens))[0] * self.block_size

    def _lookup(self, seq: _Seq) -> tuple[int, int]:
        return self._leading(seq.blocks, seq.to_prefill)

    def _leading(self, blocks: tuple[int, ...], to_prefill: int) -> tuple[int, int]:
        """Blocks of a prompt already cached (the longest leading run), and how many of those
        are free (taking them takes room). At least one token is computed."""
        usable = min(len(blocks), (to_prefill - 1) // self.block_size)
        hits = revived = 0
        for h in blocks[:usable]:
            if h in self._in_use:
                hits += 1
            elif h in self._free:
                hits += 1
                revived += 1
            else:
                break
        return hits, revived

    def _admission_kv(self, seq: _Seq) -> int:
        """KV a waiting sequence takes on admission: its uncached prompt, a token, cached blocks
        that are free now."""
        hits, revived = self._lookup(seq)
        return seq.to_prefill - hits * self.block_size + 1 + revived * self.block_size

    def _take_cached(self, seq: _Seq) -> None:
        hits, _ = self._lookup(seq)
        for h in seq.blocks[:hits]:
            if h in self._free:
                del self._free[h]
                self._kv_used += self.block_size
            self._in_use[h] = self._in_use.get(h, 0) + 1
        cached = hits * self.block_size
        if not seq.admitted:
            seq.admitted = True
            self.prompt_tokens += seq.prompt
            self.cached_prompt_tokens += cached
            self._cached_now[seq.request_id] = cached
        seq.held, seq.kv = hits, cached
        seq.to_prefill -= cached
        self._outstanding -= cached
        self._prefill -= cached - seq.expected_cached
        seq.expected_cached = 0

    def _share_computed(self, seq: _Seq) -> None:
        """Prompt blocks a prefill chunk completed join the pool (one copy if another sequence
        put the same block there meanwhile)."""
        full = min(len(seq.blocks), min(seq.kv, seq.prompt) // self.block_size)
        for h in seq.blocks[seq.held : full]:
            if h in self._in_use:  # computed twice: the copy is dropped from the sequence's own
                self._kv_used -= self.block_size
            elif h in self._free:
                del self._free[h]
            self._in_use[h] = self._in_use.get(h, 0) + 1
            self._kv_used += self.block_size
        seq.held = max(seq.held, full)

    def _release(self, seq: _Seq) -> None:
        """A sequence leaves its KV: its shared blocks stay cached once free, tail first to go."""
        for h in reversed(seq.blocks[: seq.held]):
            refs = self._in_use[h] - 1
            if refs:
                self._in_use[h] = refs
            else:
                del self._in_use[h]
                self._free[h] = None
                self._kv_used -= self.block_size
        seq.held = 0

    def _evict(self) -> None:
        """Free cached blocks give way to KV in use."""
        while self._free and len(self._free) * self.block_size > (
            self.kv_capacity_tokens - self._kv_used
        ):
            self._free.popitem(last=False)

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

    def _pure_decode_steps(self, until: float, decoding: list[_Seq]) -> int:
        running = self._running
        if not running or len(running) > self.max_num_batched_tokens:
            return 1
        if len(decoding) < len(running):  # someone still prefills
            return 1
        if self._waiting and len(running) < self.max_num_seqs:
            head = self._waiting[0]
            if self._admission_kv(head) <= self.kv_capacity_tokens - self.kv_used_tokens:
                return 1  # an admission is due: step normally
        n = len(running)
        first = step_seconds(self.perf, self.tensor_parallel_size, n, 0, self.kv_used_tokens)
        by_time = int((until - self.now) / first) if first > 0 else 1
        by_finish = min([s.output_tokens - s.generated for s in running])
        by_kv = (self.kv_capacity_tokens - self.kv_used_tokens) // n
        return max(1, min(by_time, by_finish, by_kv))

    def _decode_run(self, steps: int) -> StepResult:
        running = self._running
        n = len(running)
        mean_context = self.kv_used_tokens + n * (steps - 1) / 2
        per_step = step_seconds(self.perf, self.tensor_parallel_size, n, 0, int(mean_context))
        duration = per_step * steps
        self.now += duration
        emitted = dict.fromkeys([s.request_id for s in running], steps)
        finished = self._decode(running, steps)
        return StepResult(duration, emitted, self._drop(finished))

    def _prefill_candidates(self, decoding: int) -> list[_Seq]:
        """Running sequences mid-prefill first, then admissions while seats and KV allow (each
        of the `decoding` sequences writes one token's KV this step)."""
        partial = [s for s in self._running if s.to_prefill] if decoding < self.running else []
        kv_free = self.kv_capacity_tokens - self.kv_used_tokens - decoding
        kv_free -= sum(s.to_prefill + 1 for s in partial)  # already admitted, still prefilling
        while self._waiting and len(self._running) < self.max_num_seqs:
            head = self._waiting[0]
            need = self._admission_kv(head)
            if need > kv_free:
                break
            kv_free -= need
            self._take_cached(head)
            self._running.append(self._waiting.popleft())
            partial.append(head)
        return partial

    def _preempt_until_kv_fits(self, decoding: int) -> bool:
        """Whether it preempted."""
        preempted = False
        while len(self._running) > 1 and self.kv_used_tokens + decoding > self.kv_capacity_tokens:
            victim = self._running.pop()
            preempted = True
            if victim.to_prefill == 0:
                decoding -= 1
            # Recompute: everything it held in KV becomes prefill work again (its prompt blocks
            # stay cached while nobody needs the room, so it may find them on readmission).
            self._kv_used -= self._own(victim)
            self._release(victim)
            self._outstanding += victim.kv
            self._prefill += victim.kv
            victim.to_prefill += victim.kv
            victim.kv = 0
            self._waiting.appendleft(victim)
        return preempted
