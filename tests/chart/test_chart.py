"""The Helm chart, proven offline: real helm (lint --strict, template) for the defaults and every
preset, every rendered object validated (built-in kinds by kubernetes-validate --strict, custom
resources against the KubeRay and Prometheus Operator CRDs with unknown fields rejected), the Serve
args by the application's own schema, and values that must fail, failing with their name."""

import copy
import json
import os
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.chart import CHART_DIR, chart_files
from cluster.config import AutoscalingConfig, ClusterConfig, ReplicaConfig, validate_config
from cluster.serve.ray_env import serve_env
from cluster.serve.serve_config import APP_IMPORT_PATH, POLICY_CLASS
from tests.helpers import system_tool

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".cache" / "bin" / "helm"
CHECKOV = ROOT / ".cache" / "checkov" / "bin" / "checkov"
CRDS = Path(__file__).parent / "crds"  # vendored: see crds/README.md
KUBE_VERSION = "1.30.0"
API_VERSIONS = ["ray.io/v1", "monitoring.coreos.com/v1"]
CUSTOM_GROUPS = {v.split("/")[0] for v in API_VERSIONS}  # validated against crds/
VALUES = [None, *sorted(p.name for p in CHART_DIR.glob("values-*.yaml"))]
# Every optional object rendered too, so each is validated.
OPTIONAL_ON = ("serviceMonitor.enabled=true", "podMonitor.enabled=true", "ingress.enabled=true",
               "ingress.tls.secretName=gpt-oss-tls", "httpRoute.enabled=true",
               "httpRoute.hostnames[0]=gpt-oss.example.com", "prometheusRule.enabled=true",
               "grafanaDashboards.enabled=true", "weights.copyJob.enabled=true",
               "weights.copyJob.vocabSource=mirror:vocab/o200k_base.tiktoken",
               "weights.copyJob.configSecret=rclone-mirror", "redis.enabled=true")  # fmt: skip
# Gateway API v1 HTTPRoute, the fields the chart renders (no Gateway API CRD is vendored):
# from gateway-api's standard-install (v1.2) schema, unknown fields rejected.
_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
HTTPROUTE_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"}, "kind": {"const": "HTTPRoute"},
        "metadata": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "parentRefs": {"type": "array", "maxItems": 32, "items": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {"name": _NAME, "namespace": _NAME, "sectionName": _NAME,
                               "group": {"type": "string"}, "kind": {"type": "string"},
                               "port": {"type": "integer"}}}},
            "hostnames": {"type": "array", "maxItems": 16, "items": {
                "type": "string", "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}},
            "rules": {"type": "array", "maxItems": 16, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "matches": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "path": {"type": "object", "additionalProperties": False,
                                     "properties": {
                                         "type": {"enum": ["Exact", "PathPrefix",
                                                           "RegularExpression"]},
                                         "value": {"type": "string", "maxLength": 1024}}}}}},
                    "backendRefs": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["name"],
                        "properties": {"name": _NAME, "port": {"type": "integer", "minimum": 1,
                                                               "maximum": 65535}}}},
                    "timeouts": {"type": "object", "additionalProperties": False, "properties": {
                        "request": {"type": "string",
                                    "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"},
                        "backendRequest": {"type": "string"}}}}}}}},
    },
}  # fmt: skip


def require(tool: Path) -> None:
    if not tool.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing: `make test` installs it")
        pytest.skip(f"{tool.name} not installed yet (make test does it)")


def helm(*args: str) -> subprocess.CompletedProcess:
    require(HELM)
    # The CRDs' API versions are announced to `template` (lint has no such flag).
    versions = (
        [a for v in API_VERSIONS for a in ("--api-versions", v)] if args[0] == "template" else []
    )
    command = [str(HELM), *args, "--kube-version", KUBE_VERSION, *versions]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def values_args(values: str | None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["-f", str(CHART_DIR / values)] if values else []
    return args + [a for s in sets for a in ("--set", s)]


def render(values: str | None = None, *sets: str) -> list[dict]:
    result = helm("template", "gpt-oss", str(CHART_DIR), "--namespace", "gpt-oss",
                  *values_args(values, sets))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _strict(schema: dict) -> dict:
    """A CRD's openAPIV3Schema as JSON Schema that rejects unknown fields, as the API server's
    structural pruning (with fieldValidation=Strict) does."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if "(?i)" in node.get("pattern", ""):  # Go allows the flag mid-pattern, Python not
            node["pattern"] = "(?i)" + node["pattern"].replace("(?i)", "")
        preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in node and "additionalProperties" not in node and not preserve:
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(schema)
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict schema, from the vendored crds/ (test data, not chart files)."""
    out = {}
    for path in CRDS.glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            for version in crd["spec"]["versions"]:
                api_version = f"{crd['spec']['group']}/{version['name']}"
                schema = _strict(version["schema"]["openAPIV3Schema"])
                out[api_version, crd["spec"]["names"]["kind"]] = schema
    return out


def validate(doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key == ("gateway.networking.k8s.io/v1", "HTTPRoute"):
        jsonschema.validate(doc, HTTPROUTE_SCHEMA)
    elif key[0].split("/")[0] in CUSTOM_GROUPS:
        assert key in crd_schemas(), f"no CRD for {key} in {CRDS}"  # never validated loosely
        jsonschema.validate(doc, crd_schemas()[key])
    else:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("values", VALUES)
def test_lint_render_and_validate_every_object(values):
    lint = helm("lint", "--strict", str(CHART_DIR), *values_args(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(values, *OPTIONAL_ON)
    kinds = {d["kind"] for d in docs}
    # The Pod is `helm test`'s: a real chat request through the gateway.
    expected = {"RayService", "Service", "Secret", "PodDisruptionBudget", "NetworkPolicy",
                "ServiceMonitor", "PodMonitor", "Ingress", "Pod", "HTTPRoute", "PrometheusRule",
                "ConfigMap", "Job", "PersistentVolumeClaim", "Deployment"}  # fmt: skip
    assert expected <= kinds
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "gpt-oss"
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    config = validate_config(app["args"])  # the application accepts what the chart passes
    assert app["import_path"] == APP_IMPORT_PATH
    policy = app["autoscaling_policy"]  # the one Python renders, from the same sections
    assert policy["policy_function"] == POLICY_CLASS
    kwargs = policy["policy_kwargs"]
    assert AutoscalingConfig.model_validate(kwargs["autoscaling"]) == config.autoscaling
    assert ReplicaConfig.model_validate(kwargs["engine_replicas"]) == config.engine_replicas
    assert config.responses.store == "redis"  # the chart's Redis, wired in
    assert config.responses.redis_url.get_secret_value().startswith("redis://gpt-oss-")
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus = int(limits.get("nvidia.com/gpu", 0))
    tp = config.engine.parallelism.tensor_parallel_size
    assert gpus % tp == 0 and (gpus > 0) == (config.engine.kind.value == "vllm")


def test_generated_chart_files_are_current():
    for name, text in chart_files().items():
        assert (CHART_DIR / name).read_text() == text, f"{name}: run `gpt-oss-cluster chart`"


LINT, TEMPLATE = ("lint", "--strict"), ("template", "gpt-oss")


@pytest.mark.parametrize(
    ("sets", "named", "commands"),
    [
        (("gpuWorkers.minReplicas=many",), "minReplicas", (LINT, TEMPLATE)),
        (("cluster.engine.bogus=1",), "bogus", (LINT, TEMPLATE)),
        (("cluster.engine.kind=tpu",), "kind", (LINT, TEMPLATE)),
        (("cluster.preset=gpt-oss-120b-h100-tp8",), "preset", (LINT, TEMPLATE)),
        # A rule across two values is the template's `fail`, which Helm 4's lint only logs.
        (("gpuWorkers.gpusPerPod=3",), "gpuWorkers.gpusPerPod", (TEMPLATE,)),
        (
            ("weights.copyJob.enabled=true", "weights.source=hostPath"),
            "weights.copyJob",
            (TEMPLATE,),
        ),
        (("httpRoute.timeout=30", "httpRoute.enabled=true"), "timeout", (LINT, TEMPLATE)),
    ],
)
def test_bad_values_fail_naming_the_value(sets, named, commands):
    for command in commands:
        result = helm(*command, str(CHART_DIR), *values_args(None, sets))
        assert result.returncode != 0, command
        assert named in result.stdout + result.stderr


def workload_pods(docs: list[dict]) -> list[dict]:
    """The RayService's head and worker pod templates as Pods, so checkov (which does not read
    custom resources) checks the pods that actually run."""
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    ray = service["spec"]["rayClusterConfig"]
    groups = [("head", ray["headGroupSpec"])] + [
        (g["groupName"], g) for g in ray["workerGroupSpecs"]
    ]
    return [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {**group["template"]["metadata"], "name": f"ray-{name}",
                      "namespace": service["metadata"]["namespace"]},
         "spec": group["template"]["spec"]}
        for name, group in groups
    ]  # fmt: skip


@pytest.mark.parametrize("values", VALUES)
def test_checkov_passes_or_skips_each_check_with_a_reason(values, tmp_path):
    require(CHECKOV)
    docs = render(values, *OPTIONAL_ON)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(docs + workload_pods(docs)))
    result = subprocess.run(
        [str(CHECKOV), "-f", str(manifest), "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    skipped = report["results"]["skipped_checks"]
    assert skipped and all(c["check_result"].get("suppress_comment") for c in skipped)


def test_the_prometheus_rule_ships_the_promtool_checked_rules(tmp_path):
    """The chart's PrometheusRule is ops/prometheus/rules.yaml as Prometheus loads it."""
    docs = render(None, "prometheusRule.enabled=true", "grafanaDashboards.enabled=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    source = yaml.safe_load((ROOT / "ops" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    command = [system_tool("promtool"), "check", "rules", str(rules)]
    check = subprocess.run(command, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for path in (ROOT / "ops" / "grafana").glob("*.json"):
        (cm,) = [m for m in maps.values() if path.name in m["data"]]
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("ingress", ["haproxy", "proxy"])
def test_pods_start_with_the_serve_env_local_clusters_use(ingress):
    """Ray Serve reads its flags at process start: every pod carries what `local_cluster` sets
    for the same config (cluster/serve/ray_env.py)."""
    require(HELM)
    expected = serve_env(ClusterConfig(gateway={"ingress": ingress}))
    for pod in workload_pods(render(None, f"cluster.gateway.ingress={ingress}")):
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {k: env.get(k) for k in expected} == expected, pod["metadata"]["name"]
        assert not {k for k in env if k.startswith("RAY_SERVE_")} - set(expected)
