"""k8s/monitoring: it builds, its Kubernetes objects validate strictly, the PodMonitor scrapes ports the pods
name, and every metric the alert rules and the Grafana dashboard query is one the service exports.

No schema of the Prometheus Operator's CRDs is available offline, so the PodMonitor and the
PrometheusRule are checked against the parts of their schemas written out below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.kustomize_render import K8S_ROOT, OVERLAYS, Rendered, containers, pod_spec
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, validate_strictly
from tests.support.exported_metrics import exported_families, series_names

MONITORING = K8S_ROOT / "monitoring"
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
METRIC_NAME = re.compile(r"\bfitjobs_[a-z0-9_]+")
# The PrometheusRule spec of monitoring.coreos.com/v1, as far as these rules use it.
RULE: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string"},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d|w|y)$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
RULE_GROUP: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name", "rules"],
    "properties": {"name": {"type": "string", "minLength": 1}, "interval": {"type": "string"},
                   "rules": {"type": "array", "minItems": 1, "items": RULE}},
}
RULE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"],
                 "properties": {"groups": {"type": "array", "minItems": 1, "items": RULE_GROUP}}},
    },
}
POD_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
                 "properties": {
                     "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                     "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "required": ["port"],
                         "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}}},
}


@pytest.fixture(scope="module")
def monitoring(kustomize: Callable[[str], Rendered]) -> Rendered:
    return kustomize("monitoring")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return series_names(exported_families(tmp_path_factory.mktemp("home")))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "fitjobs-dashboard.json").read_text())
    return loaded


def test_monitoring_builds_and_its_kubernetes_objects_validate(monitoring: Rendered, tmp_path: Path) -> None:
    kinds = sorted(obj["kind"] for obj in monitoring.objects)
    assert kinds == ["ConfigMap", "NetworkPolicy", "PodMonitor", "PrometheusRule"]
    assert all(obj["metadata"]["namespace"] == "fitjobs" for obj in monitoring.objects)
    core = tmp_path / "core.yaml"
    core.write_text(yaml.safe_dump_all([obj for obj in monitoring.objects if obj["kind"] not in OPERATOR_KINDS]))
    for version in KUBERNETES_VERSIONS:
        assert len(validate_strictly(core, version)) == 2
    jsonschema.validate(monitoring.get("PrometheusRule", "fitjobs"), RULE_SCHEMA)
    jsonschema.validate(monitoring.get("PodMonitor", "fitjobs"), POD_MONITOR_SCHEMA)
    config_map = monitoring.get("ConfigMap", "fitjobs-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["fitjobs-dashboard.json"]) == dashboard()


def test_no_overlay_includes_monitoring(kustomize: Callable[[str], Rendered]) -> None:
    for overlay in OVERLAYS:
        assert not {obj["kind"] for obj in kustomize(overlay).objects} & OPERATOR_KINDS, overlay


def test_pod_monitor_scrapes_ports_that_fitjobs_pods_name(monitoring: Rendered,
                                                          kustomize: Callable[[str], Rendered]) -> None:
    monitor = monitoring.get("PodMonitor", "fitjobs")
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    scraped = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    named: set[str] = set()
    for overlay in OVERLAYS:
        for workload in kustomize(overlay).workloads():
            labels = workload["spec"].get("template", workload["spec"].get("jobTargetRef", {}).get("template", {}))
            if selector <= labels.get("metadata", {}).get("labels", {}).items():
                named |= {port["name"] for c in containers(pod_spec(workload)) for port in c.get("ports", [])}
    assert scraped == {"http", "metrics"} and scraped <= named


def test_rules_and_dashboard_query_only_exported_metrics(monitoring: Rendered, exported: set[str]) -> None:
    rules = [rule for group in monitoring.get("PrometheusRule", "fitjobs")["spec"]["groups"] for rule in group["rules"]]
    expressions = [rule["expr"] for rule in rules]
    expressions += [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert not sorted(used - exported), "queries name metrics the service does not export"
    for expr in expressions:
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr
    alerts = {rule["alert"] for rule in rules}
    assert {"FitjobsQueueStuck", "FitjobsJobQueuedTooLong", "FitjobsQueueNotDraining", "FitjobsFailureSpike"} <= alerts
    # The dashboard shows what docs/operations.md says it does.
    for family in ("fitjobs_queue_depth", "fitjobs_jobs", "fitjobs_job_queue_wait_seconds_bucket",
                   "fitjobs_job_run_seconds_bucket", "fitjobs_job_failures_total",
                   "fitjobs_running_job_examples_per_second", "fitjobs_api_request_duration_seconds_bucket",
                   "fitjobs_api_open_event_streams"):
        assert family in used, family
