"""A process pool that runs the most urgent work first.

A benchmark's searches (bisections: each run waits on the one before) go ahead of the runs it
only prefetches, so both kinds share the cores and the searches do not end up alone at the end,
one run at a time. The same call submitted twice runs once; a prefetched call that a search
then needs is promoted.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Self

URGENT, PREFETCH = 0, 1


class UrgentPool:
    def __init__(self, workers: int, on_done: Callable[[Hashable], None] | None = None) -> None:
        # A fresh interpreter per worker: no inherited matplotlib, rich or thread state.
        self._pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        self._workers = workers
        self._on_done = on_done
        self._lock = threading.Lock()
        self._heap: list[tuple[int, int, Hashable]] = []
        self._order = itertools.count()
        self._calls: dict[Hashable, tuple[Callable[..., Any], tuple]] = {}
        self._futures: dict[Hashable, Future] = {}
        self._running = 0
        self._closed = False

    def submit(
        self, key: Hashable, fn: Callable[..., Any], *args: Any, urgent: bool = True
    ) -> Future:
        """`fn(*args)` in a worker, once per key; its future."""
        with self._lock:
            if self._closed:
                raise CancelledError("the pool is shut down")
            future = self._futures.get(key)
            if future is None:
                future = self._futures[key] = Future()
                self._calls[key] = fn, args
            elif not urgent or key not in self._calls:  # queued already, or started
                return future
            heapq.heappush(self._heap, (URGENT if urgent else PREFETCH, next(self._order), key))
            self._fill()
        return future

    def _fill(self) -> None:
        while self._running < self._workers and self._heap:
            key = heapq.heappop(self._heap)[2]
            call = self._calls.pop(key, None)
            if call is None:  # promoted: its urgent entry went first
                continue
            fn, args = call
            self._running += 1
            done = self._pool.submit(fn, *args)
            done.add_done_callback(lambda f, key=key: self._finish(key, f))

    def _finish(self, key: Hashable, done: Future) -> None:
        with self._lock:
            self._running -= 1
            if not self._closed:
                self._fill()
        future = self._futures[key]
        if done.cancelled():
            future.cancel()
        elif (error := done.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result())
            if self._on_done:
                self._on_done(key)

    def shutdown(self) -> None:
        """Stop: queued calls are dropped and whoever waits on them gets CancelledError."""
        with self._lock:
            self._closed = True
            queued = [self._futures[key] for key in self._calls]
            self._calls.clear()
            self._heap.clear()
        for future in queued:
            future.cancel()
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
