"""ops/: the alert rules pass their promtool unit tests, every dashboard query and alert
expression parses, every metric they name is one the code exports (or Ray Serve's own, checked
against the installed Ray), and every alert has its runbook."""

import json
import re
import subprocess
from pathlib import Path

import ray.serve
import yaml

from cluster.dashboards import DASHBOARDS, expressions
from cluster.metrics import SPECS
from tests.helpers import system_tool

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
RULES = OPS / "prometheus" / "rules.yaml"
# Ray Serve's own metrics the rules and dashboards use; each must exist in the pinned Ray.
RAY_SERVE_METRICS = {"ray_serve_deployment_replica_starts_total",
                     "ray_serve_deployment_replica_healthy"}  # fmt: skip


def run_promtool(*args: str, cwd: Path = OPS / "prometheus") -> None:
    command = [system_tool("promtool"), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def all_queries() -> dict[str, str]:
    queries = {f"rule {r.get('alert') or r['record']}": r["expr"] for r in rules()}
    for uid in DASHBOARDS:
        queries |= {f"{uid} #{i}": e for i, e in enumerate(expressions(uid))}
    return queries


def test_alert_rules_pass_their_unit_tests():
    run_promtool("check", "rules", "rules.yaml")
    run_promtool("test", "rules", "rules_test.yaml")


def test_every_dashboard_query_parses(tmp_path):
    """promtool parses each panel query as a recording rule (Grafana's variables substituted)."""
    group = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(e for uid in DASHBOARDS for e in expressions(uid))
    ]
    path = tmp_path / "dashboards.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": group}]}))
    run_promtool("check", "rules", str(path), cwd=tmp_path)


def test_queries_name_only_metrics_that_exist():
    ours = {name for spec in SPECS for name in spec.series_names()}
    recorded = {r["record"] for r in rules() if "record" in r}
    serve_source = "".join(
        p.read_text() for p in (Path(ray.serve.__file__).parent / "_private").glob("*.py")
    )
    for metric in RAY_SERVE_METRICS:  # Ray exports `serve_x` (a counter: `_total` added)
        bare = metric.removeprefix("ray_").removesuffix("_total")
        assert f'"{bare}"' in serve_source, f"{metric} is not a metric of the installed Ray"
    known = ours | recorded | RAY_SERVE_METRICS
    used = set()
    for where, expr in all_queries().items():
        names = set(re.findall(r"\b(?:ray_[a-z0-9_]+|gpt_oss:[a-z0-9_:]+)", expr))
        assert names, f"{where} names no metric"
        assert names <= known, f"{where}: unknown {sorted(names - known)}"
        # A name without Ray's prefix never matches anything.
        assert not re.findall(r"(?<!ray_)\bgpt_oss_[a-z]", expr), f"{where}: missing ray_ prefix"
        used |= names
    unused = {s.name for s in SPECS if not set(s.series_names()) & used}
    assert not unused, f"metrics no dashboard or alert shows: {sorted(unused)}"


def test_every_alert_has_a_runbook_and_every_runbook_an_alert():
    runbooks = (OPS / "runbooks.md").read_text()
    sections = set(re.findall(r"^## (\w+)$", runbooks, re.MULTILINE))
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert sections == set(alerts)
    for name, rule in alerts.items():
        assert rule["annotations"]["runbook"] == f"ops/runbooks.md#{name.lower()}"
        body = runbooks.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means**", "**Check**", "**Do**"):
            assert part in body, f"{name}: runbook lacks {part}"


def test_dashboards_are_valid_grafana_json():
    for uid in DASHBOARDS:
        board = json.loads((OPS / "grafana" / f"{uid}.json").read_text())
        assert board["uid"] == uid and board["panels"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24
            if panel["type"] != "row":
                assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"


def test_the_readme_metrics_table_lists_every_metric():
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `(ray_gpt_oss_[a-z_]+)`", readme, re.MULTILINE))
    assert table == {s.exported_name for s in SPECS}
