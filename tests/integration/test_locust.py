"""A 30-second headless Locust run (its own process: gevent and Ray do not mix) against the local
cluster: zero failures, every effort within SLO (Locust's exit code says so), and the per-effort
summary written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.summarise import run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_locust_smoke_run(cluster, tmp_path):
    prefix = tmp_path / "smoke"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
         "--headless", "-H", cluster.url, "-u", "4", "-r", "4", "-t", "30s",
         "--max-tokens", "400", "--user-rate", "0.5", "--csv", str(prefix),
         "--csv-full-history", "--only-summary", "--stop-timeout", "30"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summaries = {s.effort: s for s in run(str(prefix))}
    assert set(summaries) == {"low", "medium", "high"}
    assert sum(s.requests for s in summaries.values()) >= 20
    assert all(s.failures == 0 and s.attainment is not None for s in summaries.values())
    assert (tmp_path / "smoke_summary.md").is_file() and (tmp_path / "smoke_latency.png").is_file()
