"""How the gateway reaches engines: the `EngineClient` protocol (a Serve handle and the
effort-aware dispatcher in the cluster) and `InProcessEngine`, an engine object in this process
with no scheduler (unit tests, the gateway benchmark)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from cluster.contracts import (
    Admission,
    EngineOutput,
    EngineRequest,
    LoadReport,
    Overloaded,
    Release,
    SchedulingRequest,
)
from cluster.engine.base import Engine


class EngineClient(Protocol):
    """How the gateway reaches engines: a Serve handle in the cluster, an engine object in tests."""

    async def admit(self, request: SchedulingRequest, degradable: bool) -> Admission:
        """Wait until the request may run; raise `Overloaded` to shed it. `degradable`: the
        caller can re-render it at a lower effort."""

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    async def readmit(self, admission: Admission, report: LoadReport) -> Admission:
        """The replica refused the request with `report` (it had no room after all): wait for
        another place, as `admit` does."""

    async def resume(
        self, moved: Admission | None, request: SchedulingRequest, cause: str
    ) -> Admission:
        """A running request leaves its replica (`moved`, released already) because it failed
        or drains (`cause`): wait for a place for its continuation `request`, ahead of new
        arrivals; never shed."""

    def arrived(self, admission: Admission, received_at: float) -> None:
        """The replica took the request at `received_at` (its clock; from the first output)."""

    def release(self, admission: Admission, end: Release) -> None:
        """The request is done with its replica."""

    async def ready(self) -> bool: ...


class InProcessEngine:
    """EngineClient over an engine object in this process (unit tests, benchmarks): no queue,
    every request runs at once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def admit(self, request: SchedulingRequest, degradable: bool) -> Admission:
        return Admission()

    async def readmit(self, admission: Admission, report: LoadReport) -> Admission:
        raise Overloaded(1)  # no queue here: a full engine sheds

    async def resume(
        self, moved: Admission | None, request: SchedulingRequest, cause: str
    ) -> Admission:
        return Admission()

    def arrived(self, admission: Admission, received_at: float) -> None:
        pass

    def release(self, admission: Admission, end: Release) -> None:
        pass

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        return self.engine.generate(request)

    async def ready(self) -> bool:
        return True
