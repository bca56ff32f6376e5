"""Load shapes for the locustfile, chosen with LOADTEST_SHAPE and sized by LOADTEST_USERS (peak
users) and LOADTEST_DURATION_S. Each `tick` returns (users, spawn rate) or None to stop; the
shapes are mixins, made Locust `LoadTestShape`s in the locustfile (this module imports no Locust,
so the shapes are unit-testable with a fake clock).

- step: 30% of the peak for the first third, then the peak (the autoscaler's step test).
- spike: 25% of the peak, a spike to the peak for the middle sixth, back to 25%.
- ramp-soak: a linear ramp to the peak over the first quarter, then hold it (soak).
"""

from __future__ import annotations

import math
import os


class _Shape:
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.peak = int(os.environ.get("LOADTEST_USERS", "20"))
        self.duration_s = float(os.environ.get("LOADTEST_DURATION_S", "300"))

    def get_run_time(self) -> float:  # LoadTestShape provides it; tests override it
        return super().get_run_time()  # type: ignore[misc]

    def users_at(self, t: float) -> int:
        raise NotImplementedError

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= self.duration_s:
            return None
        return self.users_at(t), max(1.0, self.peak / 5)


class Step(_Shape):
    def users_at(self, t: float) -> int:
        return self.peak if t >= self.duration_s / 3 else max(1, round(0.3 * self.peak))


class Spike(_Shape):
    def users_at(self, t: float) -> int:
        start = self.duration_s / 2
        spiking = start <= t < start + self.duration_s / 6
        return self.peak if spiking else max(1, round(0.25 * self.peak))


class RampSoak(_Shape):
    def users_at(self, t: float) -> int:
        ramp = self.duration_s / 4
        return self.peak if t >= ramp else max(1, math.ceil(self.peak * t / ramp))


SHAPES = {"step": Step, "spike": Spike, "ramp-soak": RampSoak}
