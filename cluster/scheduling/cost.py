"""Expected cost of a request: prompt tokens plus a learned output length for its effort and tenant.

Reasoning effort is a free prior (high writes 10-20x more than low); completed requests refine it
online per (effort, tenant, tools) in a log-spaced histogram, falling back to coarser keys until a
key has enough samples. The model reports its own prediction error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from cluster.config import EffortProfile
from cluster.contracts import Effort, SchedulingRequest

_BINS_PER_DOUBLING = 8


@dataclass
class LengthSketch:
    """Streaming length distribution: counts in log-spaced bins (about 9% wide), O(1) update."""

    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    n: int = 0
    total: float = 0.0

    def add(self, tokens: int) -> None:
        self.counts[round(math.log2(max(tokens, 1)) * _BINS_PER_DOUBLING)] += 1
        self.n += 1
        self.total += tokens

    def mean(self) -> float:
        return self.total / self.n

    def quantile(self, q: float) -> float:
        target, seen = q * self.n, 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= target:
                return 2 ** (b / _BINS_PER_DOUBLING)
        return 0.0


@dataclass
class CostModel:
    efforts: Mapping[Effort, EffortProfile]
    min_samples: int = 30
    _sketches: dict[tuple, LengthSketch] = field(default_factory=lambda: defaultdict(LengthSketch))
    _abs_log_error: dict[Effort, list[float]] = field(default_factory=lambda: defaultdict(list))

    def _keys(self, effort: Effort, tenant: str, tools: bool) -> list[tuple]:
        return [(effort, tools, tenant), (effort, tools)]

    def expected(self, request: SchedulingRequest) -> int:
        """Expected output tokens: the learned mean for the request's key, within its budget."""
        for key in self._keys(request.effort, request.tenant, request.tools):
            sketch = self._sketches.get(key)
            if sketch is not None and sketch.n >= self.min_samples:
                mean = sketch.mean()
                break
        else:
            mean = self.efforts[request.effort].output_tokens.mean_tokens
        return max(1, math.ceil(min(mean, request.max_tokens or mean)))

    def observe(self, request: SchedulingRequest, predicted: int, output_tokens: int) -> None:
        """A request ran to the end with `output_tokens` (`predicted` was its expectation)."""
        for key in self._keys(request.effort, request.tenant, request.tools):
            self._sketches[key].add(output_tokens)
        errors = self._abs_log_error[request.effort]
        errors.append(abs(math.log(max(predicted, 1) / max(output_tokens, 1))))
        del errors[:-1000]

    def prediction_error(self) -> dict[Effort, float]:
        """Mean |log(predicted / actual)| of the last 1,000 requests per effort (0 is perfect;
        0.69 means off by 2x on average)."""
        return {e: sum(v) / len(v) for e, v in self._abs_log_error.items() if v}
