"""The GPU presets' ingress, Ray Serve's HAProxy: the gateway streams through HAProxy straight from
its replica's own HTTP server. HAProxy's stats and metrics listeners bind every interface, so the
cluster runs in a network namespace that holds nothing but loopback (`unshare --net`, as root)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _can_unshare() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "--net", "true"], check=False).returncode == 0


def test_a_stream_through_the_haproxy_ingress():
    if not _can_unshare():
        if os.environ.get("CI") == "true":
            pytest.fail("unshare --net is needed (CI runs as root)")
        pytest.skip("needs unshare --net (root) to keep HAProxy's listeners off the network")
    script = f"ip link set lo up && exec {sys.executable} -m tests.integration.haproxy_smoke"
    result = subprocess.run(["unshare", "--net", "sh", "-c", script], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["gateway_port_owner"] == "haproxy"
    assert seen["answer"] and seen["finish"] == "stop"
    assert seen["models"] == ["gpt-oss-120b"]
