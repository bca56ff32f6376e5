"""The benchmark's process pool: urgent work first, each call once, promotion, shutdown."""

from __future__ import annotations

import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from cluster.bench.pool import UrgentPool


def started_at(gate: str | None = None) -> float:
    """When the worker began this call; with `gate`, it then holds the worker until that file
    exists (the test opens it once everything it means to queue is queued)."""
    start = time.monotonic()
    deadline = start + 60
    while gate and not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(gate)
        time.sleep(0.01)
    return start


def test_urgent_calls_overtake_prefetched_ones_and_each_call_runs_once(tmp_path):
    gate = tmp_path / "open"
    with UrgentPool(1) as pool:
        blocker = pool.submit("blocker", started_at, str(gate))
        early = pool.submit("early", started_at, urgent=False)
        promoted = pool.submit("promoted", started_at, urgent=False)
        urgent = pool.submit("urgent", started_at)
        assert pool.submit("promoted", started_at) is promoted  # now urgent, queued once
        assert pool.submit("urgent", started_at, urgent=False) is urgent
        gate.touch()
        starts = {"early": early, "promoted": promoted, "urgent": urgent}
        order = sorted(starts, key=lambda k: starts[k].result(60))
    assert blocker.result() < urgent.result()
    assert order == ["urgent", "promoted", "early"]


def test_shutdown_cancels_what_has_not_started(tmp_path):
    gate = tmp_path / "open"
    pool = UrgentPool(1)
    try:
        running = pool.submit("running", started_at, str(gate))
        queued = pool.submit("queued", started_at)
    finally:
        gate.touch()
        pool.shutdown()
    assert running.result(60) > 0
    with pytest.raises(CancelledError):
        queued.result(60)
    with pytest.raises(CancelledError):
        pool.submit("late", started_at)
