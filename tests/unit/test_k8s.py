"""`gpt-oss-cluster k8s status|rollout` against a local HTTP server replaying Kubernetes API
responses (RayService and PodList bodies in KubeRay 1.x's shape, under k8s_recorded/; no cluster
can run here). The official client talks HTTP to it exactly as to an API server."""

import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client
from typer.testing import CliRunner

from cluster.cli import app
from cluster.k8s import format_state, read_state, rollout

RECORDED = Path(__file__).parent / "k8s_recorded"
SERVICE = "/apis/ray.io/v1/namespaces/llm/rayservices/gpt-oss"
PODS = "/api/v1/namespaces/llm/pods"


class Replay:
    """Answers each (method, path) with its scripted bodies in turn (the last one repeats)."""

    def __init__(self, script: dict[tuple[str, str], list]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.seen: list[tuple[str, str, str, dict | None]] = []
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                replay.seen.append((self.command, url.path, url.query, body))
                key = (self.command, url.path)
                answers = replay.script.get(key)
                if not answers:
                    self.send_response(404)
                    self.end_headers()
                    return
                index = min(replay.calls[key], len(answers) - 1)
                replay.calls[key] += 1
                status, name = answers[index]
                payload = (RECORDED / name).read_bytes() if name else b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def api(self) -> client.ApiClient:
        configuration = client.Configuration(host=f"http://127.0.0.1:{self.server.server_port}")
        return client.ApiClient(configuration)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replay():
    servers = []

    def start(script):
        servers.append(Replay(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_status_shows_conditions_applications_and_pod_readiness(replay):
    server = replay({("GET", SERVICE): [(200, "status_ready.json")],
                     ("GET", PODS): [(200, "pods_a.json")]})  # fmt: skip
    state = read_state(server.api(), "gpt-oss", "llm")
    assert state.serving and state.failure is None
    assert state.applications["gpt-oss"] == ("RUNNING", {"engine": "HEALTHY", "gateway": "HEALTHY"})
    assert [(p.group, p.ready, p.restarts) for p in state.pods] == [
        ("headgroup", True, 0), ("gpu", True, 1), ("gpu", False, 0)
    ]  # fmt: skip
    pods_query = next(q for m, p, q, _ in server.seen if p == PODS)
    assert parse_qs(pods_query)["labelSelector"] == ["ray.io/cluster=gpt-oss-raycluster-a1b2c"]
    text = format_state(state)
    assert "condition Ready=True NonZeroServeEndpoints" in text
    assert "deployment engine: HEALTHY" in text and "NOT READY" in text


def manifest() -> dict:
    doc = json.loads((RECORDED / "status_ready.json").read_text())
    doc["spec"]["serveConfigV2"] = "applications: [new]\n"
    return {k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")}


def test_rollout_replaces_and_follows_the_upgrade_to_done(replay):
    server = replay({
        ("GET", SERVICE): [(200, "status_ready.json"), (200, "rollout_patched.json"),
                           (200, "rollout_upgrading.json"), (200, "rollout_done.json")],
        ("PUT", SERVICE): [(200, "rollout_patched.json")],
        ("GET", PODS): [(200, "pods_z.json")],
    })  # fmt: skip
    seen_states = []
    result = rollout(server.api(), manifest(), "llm", poll_s=0, on_state=seen_states.append,
                     sleep=lambda _: None)  # fmt: skip
    assert result.outcome == "done" and result.state.active_cluster == "gpt-oss-raycluster-z9y8x"
    put = next(body for m, p, _, body in server.seen if m == "PUT")
    assert put["spec"]["serveConfigV2"] == "applications: [new]\n"
    assert put["metadata"]["resourceVersion"] == "1003"  # replaced at the version it read
    # It waited through the old generation and the upgrade before calling it done.
    assert [s.observed_generation for s in seen_states] == [3, 4, 4]
    assert seen_states[1].pending_cluster == "gpt-oss-raycluster-z9y8x"


def test_rollout_reports_a_failed_upgrade_with_the_reason(replay):
    server = replay({
        ("GET", SERVICE): [(200, "status_ready.json"), (200, "rollout_failed.json")],
        ("PUT", SERVICE): [(200, "rollout_patched.json")],
        ("GET", PODS): [(200, "pods_a.json")],
    })  # fmt: skip
    result = rollout(server.api(), manifest(), "llm", poll_s=0, sleep=lambda _: None)
    assert result.outcome == "failed"
    assert "DEPLOY_FAILED" in result.detail and "engine DEPLOY_FAILED" in result.detail


def test_rollout_creates_a_missing_service_and_times_out_when_it_never_serves(replay):
    server = replay({
        ("GET", SERVICE): [(404, None), (200, "rollout_upgrading.json")],
        ("POST", "/apis/ray.io/v1/namespaces/llm/rayservices"): [(201, "rollout_patched.json")],
        ("GET", PODS): [(200, "pods_z.json")],
    })  # fmt: skip
    ticks = iter(range(100))
    result = rollout(server.api(), manifest(), "llm", timeout_s=3, poll_s=1,
                     sleep=lambda _: None, clock=lambda: next(ticks))  # fmt: skip
    assert result.outcome == "timeout"
    assert any(m == "POST" for m, *_ in server.seen)


def kubeconfig(tmp_path: Path, server: Replay) -> Path:
    path = tmp_path / "kubeconfig"
    url = f"http://127.0.0.1:{server.server.server_port}"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "replay",
        "clusters": [{"name": "replay", "cluster": {"server": url}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "replay", "context": {"cluster": "replay", "user": "me"}}],
    }))  # fmt: skip
    return path


def test_the_cli_reads_a_kubeconfig_and_exits_by_outcome(replay, tmp_path):
    server = replay({
        ("GET", SERVICE): [(200, "status_ready.json"), (200, "rollout_failed.json")],
        ("PUT", SERVICE): [(200, "rollout_patched.json")],
        ("GET", PODS): [(200, "pods_a.json")],
    })  # fmt: skip
    config = str(kubeconfig(tmp_path, server))
    runner = CliRunner()
    status = runner.invoke(app, ["k8s", "status", "gpt-oss", "-n", "llm", "--kubeconfig", config])
    assert status.exit_code == 0 and "application gpt-oss: RUNNING" in status.output
    rendered = yaml.safe_dump_all([{"kind": "Secret"}, manifest()])  # as `helm template` prints
    result = runner.invoke(app, ["k8s", "rollout", "-f", "-", "-n", "llm", "--kubeconfig", config],
                           input=rendered)  # fmt: skip
    assert result.exit_code == 1 and "rollout failed: application gpt-oss is DEPLOY_FAILED" in (
        result.output
    )
