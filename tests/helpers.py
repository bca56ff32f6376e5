import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from cluster.config import ClusterConfig, deep_merge


def fast_config(time_scale: float = 0.01, **sections: Any) -> ClusterConfig:
    """Defaults with the mock running `1 / time_scale` times faster than an H100, deep-merged."""
    data = deep_merge(ClusterConfig().to_args(), {"engine": {"mock": {"time_scale": time_scale}}})
    return ClusterConfig.model_validate(deep_merge(data, sections))


def system_tool(name: str) -> str:
    """A system binary the suite needs (`prometheus`, `promtool`, `redis-server`): `make test` and
    .ci/run install them with apt, so under CI an absence fails instead of skipping."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: `make test` installs it with apt")
        pytest.skip(f"{name} not installed (`make test` installs it with apt)")
    return found


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.25)


def gauge_sum(metrics_url: str, name: str, label: str = "") -> float:
    """The sum of `ray_gpt_oss_<name>` samples (those with `label`) in Ray's metrics export."""
    text = httpx.get(metrics_url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"ray_gpt_oss_{name}{{") and label in line)  # fmt: skip


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids two prompts share."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
