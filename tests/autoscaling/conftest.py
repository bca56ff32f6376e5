import os

import pytest

from cluster.serve.local import free_port, local_cluster
from tests.helpers import fast_config


@pytest.fixture(scope="package")
def cluster():
    """Engine replicas between 1 and 3 on the backlog autoscaler, with delays of seconds and a
    small replica throughput, so a few requests per second need three replicas."""
    config = fast_config(
        0.05,
        gateway={"port": free_port()},
        engine_replicas={"min_replicas": 1, "max_replicas": 3},
        autoscaling={
            "upscale_delay_s": 1,
            "downscale_delay_s": 4,
            "replica_tokens_per_s": 1_000,
        },
        engine={"drain_timeout_s": 30},
    )
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")  # metrics seen in seconds
    with local_cluster(config, metrics_port=free_port()) as running:
        yield running
