"""Locust load test for a gpt-oss-cluster gateway: OpenAI streaming chat with a reasoning-effort mix.

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8000 -u 20 -r 5 -t 5m \
        --effort-mix low=0.5,medium=0.35,high=0.15 --csv bench-results/loadtest

Locust times a streamed request only to its headers, so each request also fires custom events
(request type = what, name = effort): TTFT (first token of any channel), TTFA (first final-channel
token: what a reasoning model's user waits for), ITL (mean inter-token gap), STREAM (the whole
stream), and SLO (`<effort> met` / `<effort> missed`, judged like the gateway: TTFT and mean ITL
within the effort's SLOs from the cluster config). They aggregate across distributed workers like
any request. At the end, any effort below `--slo-attainment`, or any failed request, sets the exit
code to 1. A load shape is picked with LOADTEST_SHAPE=step|spike|ramp-soak (see shapes.py).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, LoadTestShape, constant_throughput, events, task
from shapes import SHAPES  # next to this file: Locust puts its directory on sys.path

from cluster.config import ClusterConfig, load_config

HERE = Path(__file__).resolve().parent
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model", default="gpt-oss-120b", help="Model name sent.")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""),
                       is_secret=True, help="Bearer key (default: $OPENAI_API_KEY).")  # fmt: skip
    parser.add_argument("--effort-mix", default="low=0.5,medium=0.35,high=0.15",
                       help="Share of each reasoning effort.")  # fmt: skip
    parser.add_argument("--prompts", default=str(HERE / "prompts.jsonl"),
                       help="JSONL corpus: {'messages': [...]} or {'prompt': '...'} per line.")  # fmt: skip
    parser.add_argument("--tool-share", type=float, default=0.1,
                       help="Share of requests that offer a function tool.")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=0,
                       help="max_completion_tokens per request (0: the effort's default).")  # fmt: skip
    parser.add_argument("--user-rate", type=float, default=0.2,
                       help="Requests per second each user starts at most.")  # fmt: skip
    parser.add_argument("--slo-config", default="",
                       help="gpt-oss-cluster config YAML whose effort SLOs are checked "
                            "(default: the built-in defaults).")  # fmt: skip
    parser.add_argument("--slo-attainment", type=float, default=0.9,
                       help="Exit 1 if any effort's share of requests within SLO is lower.")  # fmt: skip


def _mix(text: str) -> tuple[list[str], list[float]]:
    pairs = [part.split("=") for part in text.split(",") if part]
    return [p[0].strip() for p in pairs], [float(p[1]) for p in pairs]


def _corpus(path: str) -> list[list[dict]]:
    conversations = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            conversations.append(
                item.get("messages") or [{"role": "user", "content": item["prompt"]}]
            )
    return conversations


class ChatUser(HttpUser):
    """One client: streamed chat completions, paced to `--user-rate` requests per second."""

    def wait_time(self) -> float:
        return constant_throughput(self.environment.parsed_options.user_rate)(self)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.efforts, self.weights = _mix(options.effort_mix)
        self.corpus = _corpus(options.prompts)
        config = load_config(Path(options.slo_config)) if options.slo_config else ClusterConfig()
        self.slos = {e.value: (p.ttft_slo_s, p.itl_slo_s) for e, p in config.efforts.items()}
        if options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"

    def _event(self, kind: str, effort: str, seconds: float) -> None:
        self.environment.events.request.fire(request_type=kind, name=effort,
                                             response_time=seconds * 1000, response_length=0,
                                             exception=None, context={})  # fmt: skip

    @task
    def chat(self) -> None:
        options = self.environment.parsed_options
        effort = random.choices(self.efforts, self.weights)[0]
        body = {"model": options.model, "messages": random.choice(self.corpus),
                "reasoning_effort": effort, "stream": True}  # fmt: skip
        if options.max_tokens:
            body["max_completion_tokens"] = options.max_tokens
        if random.random() < options.tool_share:
            body["tools"] = [WEATHER_TOOL]
            body["messages"] = [{"role": "user", "content": "What is the weather in Lisbon?"}]
        start = time.perf_counter()
        first = answer = last = None
        gaps: list[float] = []
        with self.client.post("/v1/chat/completions", json=body, stream=True,
                              name=f"chat {effort}", catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    response.failure(f"stream error: {chunk['error'].get('message')}")
                    return
                delta = (chunk.get("choices") or [{}])[0].get("delta", {})
                if not (delta.get("reasoning") or delta.get("content") or delta.get("tool_calls")):
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                elif last is not None:
                    gaps.append(now - last)
                last = now
                if answer is None and (delta.get("content") or delta.get("tool_calls")):
                    answer = now
            else:
                response.failure("the stream ended without [DONE]")
                return
        end = time.perf_counter()
        if first is None:
            return
        ttft, itl = first - start, (sum(gaps) / len(gaps) if gaps else 0.0)
        self._event("TTFT", effort, ttft)
        if answer is not None:
            self._event("TTFA", effort, answer - start)
        self._event("ITL", effort, itl)
        self._event("STREAM", effort, end - start)
        ttft_slo, itl_slo = self.slos[effort]
        met = ttft <= ttft_slo and itl <= itl_slo
        self._event("SLO", f"{effort} {'met' if met else 'missed'}", 0.0)


@events.quitting.add_listener
def _slo_check(environment, **_) -> None:
    """Exit 1 when any effort's SLO attainment is below the bar, or any request failed."""
    if environment.parsed_options is None or environment.runner is None:
        return
    entries = environment.runner.stats.entries
    counts: dict[str, dict[str, int]] = {}
    for (name, kind), entry in entries.items():
        if kind == "SLO":
            effort, verdict = name.split()
            counts.setdefault(effort, {})[verdict] = entry.num_requests
    bar = environment.parsed_options.slo_attainment
    failed = environment.runner.stats.total.num_failures
    for effort, c in sorted(counts.items()):
        share = c.get("met", 0) / max(1, c.get("met", 0) + c.get("missed", 0))
        print(f"SLO {effort}: {share:.1%} within SLO (bar {bar:.0%})")
        if share < bar:
            environment.process_exit_code = 1
    if failed:
        print(f"{failed} requests failed")
        environment.process_exit_code = 1


if (_shape := os.environ.get("LOADTEST_SHAPE")) is not None:

    class Shape(SHAPES[_shape], LoadTestShape):  # type: ignore[misc,valid-type]
        """The load shape named by LOADTEST_SHAPE."""
