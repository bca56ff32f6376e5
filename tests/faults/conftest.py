import os

import pytest

from cluster.serve.local import free_port, local_cluster
from tests.helpers import fast_config

GRACE_S = 3.0  # a leaving replica's requests move after this (engine.drain_grace_s)


@pytest.fixture(scope="package")
def cluster():
    """Two engine replicas of eight seats, high effort long and steady (~20 s a request at 20x an
    H100), so streams are mid-flight when a replica dies, leaves, or their clients leave."""
    high = {"output_tokens": {"median_tokens": 24_000, "sigma": 0.2}, "deadline_s": 120}
    config = fast_config(
        0.05,
        gateway={"port": free_port()},
        # Faults are under test, not shedding: every request is admitted however slow the box.
        router={"admission_slack": 100.0},
        efforts={"high": high},
        engine={"mock": {"max_num_seqs": 8}, "drain_grace_s": GRACE_S},
        engine_replicas={"min_replicas": 2, "max_replicas": 2},
    )
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
    with local_cluster(config, metrics_port=free_port()) as running:
        yield running
