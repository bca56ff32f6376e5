"""Run inside a network namespace of its own (tests/integration/test_haproxy.py): a local cluster
behind Ray Serve's HAProxy ingress, whose stats and metrics listeners bind every interface, so it
only ever runs where the only interface is loopback. Prints one JSON line of what it saw."""

from __future__ import annotations

import json

import psutil
from openai import OpenAI

from cluster.serve.local import free_port, local_cluster
from tests.helpers import fast_config


def main() -> None:
    config = fast_config(0.05, gateway={"port": free_port(), "ingress": "haproxy"})
    with local_cluster(config) as cluster:
        client = OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=60)
        text, finish = [], None
        stream = client.chat.completions.create(
            model="gpt-oss-120b",
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            reasoning_effort="low",
            stream=True,
        )
        for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        listeners = {
            c.laddr.port: psutil.Process(c.pid).name()
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid
        }
        models = client.models.list().data
        print(json.dumps({"answer": "".join(text), "finish": finish,
                          "gateway_port_owner": listeners.get(config.gateway.port),
                          "models": [m.id for m in models]}))  # fmt: skip


if __name__ == "__main__":
    main()
