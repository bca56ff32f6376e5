"""The Helm chart's values, as a schema: `helm/gpt-oss-cluster/values.schema.json` is generated from
these models (`gpt-oss-cluster schema --chart`), and its `cluster` value is the product's own
`ClusterConfig`, passed unchanged to the Serve application. One source of truth: a values file that
passes `helm lint` is a config the application accepts, field for field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from pydantic_core import to_jsonable_python

from cluster.config import ApiKey, ClusterConfig, GatewayConfig
from cluster.dashboards import dashboard_files
from cluster.release import IMAGE_REPOSITORY, RAY_VERSION, image_tag
from cluster.serve.ray_env import serve_env

CHART_DIR = Path(__file__).resolve().parents[1] / "helm" / "gpt-oss-cluster"
DEFAULT_PRESET = "gpt-oss-120b-h100-tp2"
# values-<name>.yaml: a cluster preset spelled out (so helm sees TP) and the pods it needs.
CHART_PRESETS = {
    "h100-tp2": "gpt-oss-120b-h100-tp2",
    "h200-tp1": "gpt-oss-120b-h200-tp1",
    "gpt-oss-20b": "gpt-oss-20b-h100-tp1",
}
K8sObject = dict[str, Any]  # passed through to the pod spec as written (Kubernetes validates it)


class _Values(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Image(_Values):
    repository: str = Field(
        IMAGE_REPOSITORY,
        description="Image with Ray, vLLM and this package (it also carries the o200k vocabulary): "
        "what `make image-gpu` tags; push it to your registry and set this.",
    )
    tag: str = Field(
        image_tag("gpu"), description="Image tag (`make image` tags the CPU image `<version>-cpu`)."
    )
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy."
    )


class Placement(_Values):
    nodeSelector: dict[str, str] = Field({}, description="Pod nodeSelector.")
    tolerations: list[K8sObject] = Field([], description="Pod tolerations.")
    affinity: K8sObject = Field({}, description="Pod affinity.")


class Head(Placement):
    """The Ray head pod: GCS, Serve controller, HTTP proxy and gateway replicas; no GPU."""

    cpu: str = Field("8", description="Head pod CPU (request = limit).")
    memory: str = Field("32Gi", description="Head pod memory (request = limit).")


class GpuWorkers(Placement):
    """One KubeRay worker group of GPU pods; Serve places engine replicas on them."""

    groupName: str = Field("gpu", description="KubeRay worker group name.")
    gpusPerPod: NonNegativeInt = Field(
        8,
        description="nvidia.com/gpu per pod: a multiple of the engine's TP x PP size (0: CPU pods).",
    )
    minReplicas: NonNegativeInt = Field(1, description="Fewest GPU pods KubeRay keeps.")
    maxReplicas: PositiveInt = Field(2, description="Most GPU pods KubeRay adds.")
    cpu: str = Field("32", description="GPU pod CPU (request = limit).")
    memory: str = Field("256Gi", description="GPU pod memory (request = limit).")
    shmSize: str = Field("32Gi", description="/dev/shm for vLLM's NCCL and shared-memory buffers.")
    nodeSelector: dict[str, str] = Field(
        {"nvidia.com/gpu.present": "true"}, description="GPU pod nodeSelector."
    )
    tolerations: list[K8sObject] = Field(
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="GPU pod tolerations.",
    )


class Autoscaler(_Values):
    """KubeRay's in-tree autoscaler: Serve's replica demand becomes GPU worker pods."""

    enabled: bool = Field(True, description="KubeRay's in-tree autoscaler on.")
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] = Field(
        "Default", description="How fast pending replica demand becomes pods."
    )
    idleTimeoutSeconds: PositiveInt = Field(300, description="An idle GPU pod is removed after.")


class WeightsCopy(_Values):
    """A pre-install/pre-upgrade Job that fills the weights PVC from an object store or an
    in-cluster mirror with rclone (S3, GCS, Azure, HTTP, ...); never from a public hub."""

    enabled: bool = Field(False, description="Run the copy Job before install and upgrade.")
    image: str = Field("rclone/rclone:1.71.2", description="rclone image.")
    source: str = Field(
        "mirror:models/gpt-oss-120b",
        description="rclone source `remote:path`, copied to `<mountPath>/<last path element>`.",
    )
    vocabSource: str = Field(
        "",
        description="rclone source of o200k_base.tiktoken, copied to `<mountPath>/tiktoken` "
        "(point cluster.harmony.vocab_dir there); empty: the image's own.",
    )
    configSecret: str = Field(
        "", description="Secret with key `rclone.conf` that defines the remote (mounted as a file)."
    )
    createClaim: bool = Field(True, description="Create the PVC (kept on uninstall).")
    size: str = Field("200Gi", description="Size of the PVC it creates.")
    storageClassName: str = Field("", description="StorageClass (empty: the default).")
    accessMode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        "ReadWriteMany", description="Every GPU pod mounts it read-only: RWX across nodes."
    )


class Weights(_Values):
    """Model weights are mounted, never downloaded at run time: a PVC (optionally filled by the
    copy Job) or a pre-populated host path."""

    source: Literal["pvc", "hostPath"] = Field("pvc", description="Where the weights are.")
    claimName: str = Field("gpt-oss-weights", description="PVC holding the weights (read-only).")
    hostPath: str = Field("/data/models", description="Pre-populated node directory.")
    mountPath: str = Field("/models", description="Where cluster.model.path points inside pods.")
    copyJob: WeightsCopy = WeightsCopy()


class ApiKeys(_Values):
    existingSecret: str = Field(
        "",
        description="A Secret with key `api-keys`: a JSON list of keys, or of key objects "
        "(name, key or sha256, revoked, requests_per_minute, tokens_per_minute, max_concurrent).",
    )
    keys: list[str | ApiKey] = Field(
        [], description="Used when existingSecret is empty (same forms); empty: open."
    )


class Service(_Values):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP", description="Gateway Service type."
    )
    port: int = Field(8000, ge=1, le=65_535, description="Gateway port (Serve's HTTP proxy).")


class ServiceMonitor(_Values):
    enabled: bool = Field(False, description="A Prometheus Operator ServiceMonitor.")
    interval: str = Field("15s", description="Scrape interval.")
    labels: dict[str, str] = Field({}, description="Labels your Prometheus selects on.")


class PodMonitor(_Values):
    enabled: bool = Field(False, description="A PodMonitor scraping every Ray pod (engines too).")
    interval: str = Field("15s", description="Scrape interval.")
    labels: dict[str, str] = Field({}, description="Labels your Prometheus selects on.")


class PrometheusRule(_Values):
    enabled: bool = Field(False, description="The alert rules of ops/prometheus/rules.yaml.")
    labels: dict[str, str] = Field({}, description="Labels your Prometheus selects rules on.")


class GrafanaDashboards(_Values):
    enabled: bool = Field(False, description="ops/grafana dashboards as ConfigMaps.")
    labels: dict[str, str] = Field(
        {"grafana_dashboard": "1"}, description="The label Grafana's dashboard sidecar watches."
    )
    namespace: str = Field("", description="Namespace of the ConfigMaps (empty: the release's).")


class HTTPRouteParent(_Values):
    name: str = Field(description="The Gateway's name.")
    namespace: str = Field("", description="The Gateway's namespace (empty: the release's).")
    sectionName: str = Field("", description="The Gateway listener (empty: all).")


class HTTPRoute(_Values):
    enabled: bool = Field(False, description="A Gateway API HTTPRoute for the gateway.")
    parentRefs: list[HTTPRouteParent] = Field(
        [HTTPRouteParent(name="gateway")], description="Gateways that route to it."
    )
    hostnames: list[str] = Field([], description="Host names (empty: the listener's).")
    timeout: str = Field(
        "1800s", description="Request timeout: a high-effort stream takes minutes."
    )


class Redis(_Values):
    """A small Redis for the Responses API's stored conversations, shared by every gateway
    replica (sets cluster.responses.store and redis_url). Bring your own instead: leave this off
    and set cluster.responses yourself."""

    enabled: bool = Field(False, description="Deploy Redis and point the Responses store at it.")
    image: str = Field("redis:7.4-alpine", description="Redis image.")
    maxMemory: str = Field("1gb", description="maxmemory; least recently used keys go first.")
    memory: str = Field("1536Mi", description="Memory request and limit of the pod.")


class IngressTLS(_Values):
    secretName: str = Field(description="TLS Secret for the host.")


class Ingress(_Values):
    enabled: bool = Field(False, description="An Ingress for the gateway.")
    className: str = Field("", description="IngressClass (empty: the cluster default).")
    host: str = Field("gpt-oss.example.com", description="Host name routed to the gateway.")
    annotations: dict[str, str] = Field(
        {}, description="Controller annotations (raise proxy timeouts for long streams)."
    )
    tls: IngressTLS | None = Field(None, description="TLS for the host.")


class NetworkPolicy(_Values):
    enabled: bool = Field(True, description="Only the release's pods, clients and the operator.")
    operatorNamespace: str = Field(
        "kuberay-system",
        description="Namespace of the KubeRay operator, which reaches the head's dashboard.",
    )


class Toggle(_Values):
    enabled: bool = Field(True, description="Render it.")


class ChartValues(_Values):
    nameOverride: str = Field("", description="Replaces the chart name in object names.")
    fullnameOverride: str = Field("", description="Replaces the whole object name prefix.")
    image: Image = Image()
    imagePullSecrets: list[dict[str, str]] = Field([], description="Pull secrets for pods.")
    rayVersion: str = Field(RAY_VERSION, description="Ray version in the image (KubeRay needs it).")
    cluster: ClusterConfig = Field(
        default_factory=lambda: expand_preset(DEFAULT_PRESET),
        description="The application config (cluster/config.py), passed unchanged to Serve.",
    )
    head: Head = Head()
    gpuWorkers: GpuWorkers = GpuWorkers()
    autoscaler: Autoscaler = Autoscaler()
    upgradeStrategy: Literal["NewCluster", "None"] = Field(
        "NewCluster", description="KubeRay's way to roll out a changed cluster spec."
    )
    weights: Weights = Weights()
    apiKeys: ApiKeys = ApiKeys()
    service: Service = Service()
    serviceMonitor: ServiceMonitor = ServiceMonitor()
    podMonitor: PodMonitor = PodMonitor()
    ingress: Ingress = Ingress()
    httpRoute: HTTPRoute = HTTPRoute()
    prometheusRule: PrometheusRule = PrometheusRule()
    grafanaDashboards: GrafanaDashboards = GrafanaDashboards()
    redis: Redis = Redis()
    podDisruptionBudget: Toggle = Toggle()
    networkPolicy: NetworkPolicy = NetworkPolicy()


def expand_preset(name: str) -> ClusterConfig:
    """A preset with every value it sets written out, and no `preset` reference left."""
    return ClusterConfig.model_validate({"preset": name}).model_copy(update={"preset": None})


def cluster_values(cfg: ClusterConfig) -> dict[str, Any]:
    """The `cluster` value for a values file: what differs from the schema's defaults."""
    return cfg.model_dump(mode="json", exclude_defaults=True)


def gpus_per_pod(cfg: ClusterConfig) -> int:
    p = cfg.engine.parallelism
    return p.tensor_parallel_size * p.pipeline_parallel_size


def values_schema() -> dict[str, Any]:
    schema = ChartValues.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    # No `preset` in the chart: the values files spell presets out (values-*.yaml), so Helm and
    # its checks see what runs; a preset would be shadowed by the defaults in values.yaml.
    del schema["$defs"]["ClusterConfig"]["properties"]["preset"]
    return schema


def default_values() -> dict[str, Any]:
    values = ChartValues().model_dump(mode="json")
    cfg = expand_preset(DEFAULT_PRESET)
    values["cluster"] = cluster_values(cfg)
    values["gpuWorkers"]["gpusPerPod"] = gpus_per_pod(cfg)
    return values


def overlay(target: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """What a values file layered on `base` must say for Helm's merge to give `target`: changed
    leaves, and null for keys to drop (Helm deletes a key set to null)."""
    out: dict[str, Any] = {}
    for key in base.keys() | target.keys():
        if key not in target:
            out[key] = None
        elif isinstance(target[key], dict) and isinstance(base.get(key), dict):
            if nested := overlay(target[key], base[key]):
                out[key] = nested
        elif target[key] != base.get(key):
            out[key] = target[key]
    return dict(sorted(out.items()))


def preset_values(preset: str) -> dict[str, Any]:
    """values-<name>.yaml: layered on values.yaml, it gives the preset's config, all of it."""
    cfg = expand_preset(preset)
    base = expand_preset(DEFAULT_PRESET).model_dump(mode="json")
    return {
        "cluster": overlay(cfg.model_dump(mode="json"), base),
        "gpuWorkers": {"gpusPerPod": gpus_per_pod(cfg)},
    }


def mock_values() -> dict[str, Any]:
    """values-cpu-mock.yaml: the mock engine on CPU pods, for smoke tests on any cluster."""
    workers = {"gpusPerPod": 0, "minReplicas": 1, "maxReplicas": 1, "cpu": "4", "memory": "8Gi"}
    return {
        "image": {"tag": image_tag("cpu")},
        "cluster": {"engine": {"kind": "mock"}},
        "gpuWorkers": workers | {"shmSize": "1Gi", "nodeSelector": {}, "tolerations": []},
    }


GENERATED_HEADER = "# Generated by `gpt-oss-cluster chart` from cluster/chart.py: do not edit.\n"


README_HEAD = """# gpt-oss-cluster Helm chart

gpt-oss-120b (or 20b) behind an OpenAI-compatible gateway on a KubeRay `RayService`: Ray Serve engine
replicas running vLLM with tensor parallelism on GPU worker pods, effort-aware scheduling in the gateway,
backlog autoscaling turned into GPU pods by KubeRay's in-tree autoscaler. Needs the KubeRay operator
(ray.io/v1); the ServiceMonitor needs the Prometheus Operator.

```
helm install gpt-oss ./helm/gpt-oss-cluster -f helm/gpt-oss-cluster/values-h100-tp2.yaml \\
  --set apiKeys.existingSecret=gpt-oss-keys
```

Weights are mounted, never downloaded (`weights.source`: a PVC or a pre-populated host path holding
`cluster.model.path`). `cluster` is the application's own config (`cluster/config.py`), passed unchanged
to Ray Serve and validated by the same schema here (`values.schema.json`, generated). Presets:
`values-h100-tp2.yaml`, `values-h200-tp1.yaml`, `values-gpt-oss-20b.yaml`, and `values-cpu-mock.yaml` (the
mock engine on CPU pods, for smoke tests on any cluster). API keys go to a Secret (`apiKeys`), never
into the RayService: they are mounted as a file (`GPT_OSS_CLUSTER_AUTH__API_KEYS_FILE`). Pods run as
uid 10001 with a read-only root filesystem (Ray's session files and caches go to an emptyDir at
/tmp), no privilege escalation and no capabilities; the image must allow that. `make chart-check`
lints, renders and validates the chart offline, checkov included.

## Images

`image.repository`/`image.tag` default to what `make image-gpu` tags
(`ghcr.io/gpt-oss-cluster/gpt-oss-cluster:<version>`); `values-cpu-mock.yaml` names the CPU image
`make image` tags (`<version>-cpu`). Push them to a registry your nodes pull from and point the chart
there:

```
skopeo copy oci-archive:dist/images/gpt-oss-cluster-0.1.0.oci.tar \
  docker://registry.local/gpt-oss/gpt-oss-cluster:0.1.0        # from `make bundle`; or `docker push`
helm install gpt-oss ./helm/gpt-oss-cluster -f helm/gpt-oss-cluster/values-h100-tp2.yaml \
  --set image.repository=registry.local/gpt-oss/gpt-oss-cluster \
  --set imagePullSecrets[0].name=registry-local
```

Air-gapped, from the bundle to a serving cluster: `docs/air-gapped.md`.

## Values

| value | default | description |
|---|---|---|
"""


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, _Values):
            rows += _rows(kind, f"{key}.")
            continue
        if key == "cluster":
            default = f"preset {DEFAULT_PRESET}, written out"
        else:
            default = json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))
        rows.append(f"| `{key}` | `{default}` | {field.description or ''} |")
    return rows


def serve_env_template() -> str:
    """`gpt-oss.serveEnv`: the Ray Serve environment of `cluster.gateway.ingress`, rendered from
    `serve_env` for each mode, so pods start with what `local_cluster` sets."""
    branches = []
    for mode in GatewayConfig.model_fields["ingress"].annotation.__args__:
        env = serve_env(ClusterConfig(gateway=GatewayConfig(ingress=mode)))
        items = "".join(f"- name: {k}\n  value: {json.dumps(v)}\n" for k, v in env.items())
        branches.append((mode, items))
    out = "{{- /* " + GENERATED_HEADER.strip("# \n") + " */ -}}\n"
    default = GatewayConfig.model_fields["ingress"].default
    out += '{{- define "gpt-oss.serveEnv" -}}\n'
    out += f'{{{{- $ingress := dig "gateway" "ingress" "{default}" .Values.cluster }}}}\n'
    for i, (mode, items) in enumerate(branches):
        keyword = "if" if i == 0 else "else if"
        out += f'{{{{- {keyword} eq $ingress "{mode}" -}}}}\n{items}'
    return out + "{{- end }}\n{{- end }}\n"


def chart_files() -> dict[str, str]:
    """Every generated chart file by path: the values schema, the defaults, the presets, the
    dashboards."""
    files = {
        "values.schema.json": json.dumps(values_schema(), indent=2) + "\n",
        "README.md": README_HEAD + "\n".join(_rows(ChartValues)) + "\n",
    }
    documents = {"values.yaml": default_values(), "values-cpu-mock.yaml": mock_values()}
    documents |= {f"values-{name}.yaml": preset_values(p) for name, p in CHART_PRESETS.items()}
    for name, data in documents.items():
        files[name] = GENERATED_HEADER + yaml.safe_dump(data, sort_keys=False)
    files["templates/_serve_env.tpl"] = serve_env_template()
    # `ops` in the chart is a link to the repository's ops/: the chart ships the dashboards.
    files |= {f"ops/grafana/{name}": text for name, text in dashboard_files().items()}
    return files
