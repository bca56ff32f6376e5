"""The backlog autoscaler on a local Ray cluster: load raises engine replicas from 1 to 3, they fall
back after the load, and no request fails on the way down."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from ray import serve

from cluster.serve.local import APP_NAME

pytestmark = pytest.mark.integration
BODY = {
    "model": "gpt-oss-120b",
    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
    "reasoning_effort": "medium",
}


def running_replicas() -> int:
    deployment = serve.status().applications[APP_NAME].deployments["engine"]
    return deployment.replica_states.get("RUNNING", 0)


@contextmanager
def loading(url: str, rate: float, statuses: list[int | str]) -> Iterator[None]:
    """Open-loop requests at `rate` per second for the duration; every status is recorded (a
    transport error as its name and when it came)."""
    stop = threading.Event()

    def one() -> None:
        sent = time.monotonic()
        try:
            response = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
            statuses.append(response.status_code)
        except httpx.HTTPError as err:
            statuses.append(f"{type(err).__name__} after {time.monotonic() - sent:.1f} s")

    def drive() -> None:
        threads = []
        while not stop.is_set():
            threads.append(threading.Thread(target=one))
            threads[-1].start()
            time.sleep(1 / rate)
        for t in threads:
            t.join()

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        yield
    finally:
        stop.set()
        driver.join()


def gauge(metrics_url: str, name: str, label: str = "") -> list[float]:
    """Values of `ray_gpt_oss_autoscaler_<name>` samples (with `label`) in Ray's export."""
    text = httpx.get(metrics_url, timeout=10).text
    prefix = f"ray_gpt_oss_autoscaler_{name}{{"
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and label in line
    ]


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_load_scales_replicas_up_and_back_down_without_losing_a_request(cluster):
    assert running_replicas() == 1
    statuses: list[int | str] = []
    # Deadlines, not timings: here three replicas run ~27 s into the load, but this is the suite's
    # first test and on a fresh CI machine every replica start reads a cold disk.
    with loading(cluster.url, 4.0, statuses):
        reached_three = wait_for(lambda: running_replicas() == 3, 180)
        # The decision is visible: desired replicas and the reason, through Ray's metrics export.
        # Read while the load still runs: once it stops, the desired count falls again, possibly
        # before the export's next period has shown 3.
        shown_three = wait_for(lambda: gauge(cluster.metrics_url, "desired_replicas") == [3.0], 60)
        reason = gauge(cluster.metrics_url, "decision", 'reason="backlog"')
    assert reached_three
    assert shown_three
    assert reason in ([1.0], [0.0])
    # A trickle keeps flowing while the replicas drain away: none of it may fail.
    with loading(cluster.url, 0.25, statuses):
        back_to_one = wait_for(lambda: running_replicas() == 1, 180)
    assert back_to_one
    assert statuses and all(s == 200 for s in statuses), sorted(set(map(str, statuses)))
