import os

import pytest
from openai import OpenAI

from cluster.serve.local import free_port, local_cluster
from tests.helpers import fast_config


@pytest.fixture(scope="package")
def cluster():
    """One local Ray cluster + Serve app for this package (cold start ~10 s); each test tier
    has its own, one at a time, since a process holds one Ray driver."""
    # High effort made long and steady (~2 s a request) so streams are still running when the
    # disconnect test closes them; everything runs 20x faster than an H100. Four seats per
    # engine, so a handful of requests shows where the queue lives.
    high = {"output_tokens": {"median_tokens": 12_000, "sigma": 0.3}}
    config = fast_config(
        0.05,
        gateway={"port": free_port()},
        # Late binding is under test, not shedding: ten high-effort requests on four seats wait
        # two rounds (~4 s), past the 2.5 s admission budget, so once a first dispatch gives the
        # drain rate (arrivals spread on a loaded box) the later ones would rightly get a 429.
        router={"admission_slack": 100.0},
        efforts={"high": high},
        engine={"mock": {"max_num_seqs": 4}},
    )
    # Ray's metrics export every 2 s instead of 10 s, so Prometheus sees requests quickly.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
    with local_cluster(config, metrics_port=free_port()) as running:
        yield running


@pytest.fixture(scope="package")
def client(cluster) -> OpenAI:
    return OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=60)
