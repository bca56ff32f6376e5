"""CPU time per process role, so a benchmark can say which hop of a stack costs what per token.

On a 2-core machine wall-clock throughput hides where the time goes (every process competes with
the engine core for the same cores); CPU seconds per 1,000 streamed tokens, per process, do not.
Each role's figure is split into what it burns idle (background loops, per second) and what the
load adds (per token). Roles come from process titles: Ray names its workers `ray::<actor>`, vLLM
its engine core `VLLM::EngineCore` and its model runner `VLLM::Worker`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ENGINE_CORE = "engine core"
RAY_SYSTEM = "Ray system (GCS, raylet, monitors)"
ROLES = (
    ("VLLM::EngineCore", ENGINE_CORE),
    ("VLLM::Worker", ENGINE_CORE),  # the model runner, when the executor runs it apart
    ("ServeReplica:gpt-oss:engine", "engine replica front end"),
    ("ServeReplica:gpt-oss:gateway", "gateway"),
    ("ProxyActor", "Serve proxy"),
    ("HAProxyManager", "Serve proxy"),
    ("bin/haproxy", "HAProxy"),
    ("vllm.entrypoints", "vLLM api_server"),
    ("ray::ServeController", "Serve controller"),
    ("ray::", "other Ray workers"),  # dashboard and runtime-env agents
    ("gcs_server", RAY_SYSTEM),
    ("raylet", RAY_SYSTEM),
    ("site-packages/ray/", RAY_SYSTEM),  # dashboard head, log monitor, autoscaler monitor
)


def role(title: str) -> str | None:
    return next((name for marker, name in ROLES if marker in title), None)


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return ""


def _processes() -> Iterator[tuple[str, psutil.Process]]:
    """This process's descendants with a known role."""
    for proc in psutil.Process().children(recursive=True):
        if (name := role(_title(proc))) is not None:
            yield name, proc


def cpu_by_role() -> dict[str, float]:
    """User + system CPU seconds so far of this process's descendants, summed by role."""
    totals: dict[str, float] = defaultdict(float)
    for name, proc in _processes():
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        totals[name] += times.user + times.system
    return dict(totals)


def pid_of(name: str) -> int | None:
    return next((proc.pid for r, proc in _processes() if r == name), None)


@dataclass
class CpuUse:
    """CPU seconds each role spent inside a `measure_cpu` block, over `elapsed_s`."""

    seconds: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def cores(self) -> dict[str, float]:
        """Mean cores busy, by role."""
        return {r: s / self.elapsed_s for r, s in self.seconds.items()} if self.elapsed_s else {}

    def per_1k(self, tokens: int, idle: CpuUse | None = None) -> dict[str, float]:
        """CPU milliseconds per 1,000 tokens, by role; with `idle`, only what the load added."""
        if not tokens:
            return {}
        base = idle.cores() if idle else {}
        return {
            r: max(s - base.get(r, 0.0) * self.elapsed_s, 0.0) * 1e6 / tokens
            for r, s in self.seconds.items()
        }


@contextmanager
def measure_cpu() -> Iterator[CpuUse]:
    """CPU each role used from entry to exit (processes started inside count from zero)."""
    use = CpuUse()
    before, start = cpu_by_role(), time.perf_counter()
    yield use
    after = cpu_by_role()
    use.elapsed_s = time.perf_counter() - start
    use.seconds = {r: after[r] - before.get(r, 0.0) for r in after}


def idle_cpu(seconds: float) -> CpuUse:
    """What each role burns with no request in flight."""
    with measure_cpu() as use:
        time.sleep(seconds)
    return use


@contextmanager
def profiled(roles: tuple[str, ...], out_dir: Path | None, seconds: int) -> Iterator[None]:
    """py-spy samples of the processes in `roles` for `seconds` while the block runs (nothing
    without `out_dir`), as collapsed stacks `<role>.txt` that `top_frames` summarises."""
    if out_dir is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for name in roles:
        if (pid := pid_of(name)) is not None:
            out = out_dir / f"{name.replace(' ', '-')}.txt"
            command = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "100",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out),
            ]
            spies.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    try:
        yield
    finally:
        for spy in spies:
            spy.wait(seconds + 30)


def top_frames(collapsed: Path, n: int = 15) -> list[tuple[str, float, float]]:
    """The `n` functions with the most samples of their own (function, inclusive share, own
    share), line numbers merged. A frame's own share is time in native code it called: a
    thread's or event loop's entry frame owns the C work under it (Ray's core worker, uvloop)."""
    inclusive: dict[str, int] = defaultdict(int)
    own: dict[str, int] = defaultdict(int)
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return [(f, inclusive[f] / total, c / total) for f, c in ranked] if total else []
