"""Every kustomization under k8s/ builds, validates strictly against Kubernetes' schemas, and
renders pods that are scheduled, secured, probed and sized the way docs/deploy.md says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.config import SETTINGS, Settings
from tests.deploy.dockerfile_model import REPO_ROOT, Instruction, image_env
from tests.deploy.kustomize_render import (
    CLUSTER_OVERLAYS,
    CLUSTER_SCOPED_KINDS,
    COMBINATIONS,
    K8S_ROOT,
    OPTIONAL_COMPONENTS,
    OVERLAYS,
    SECRET_TEMPLATES,
    WITH_ALL_COMPONENTS,
    Rendered,
    component,
    containers,
    gpu_count,
    is_fitjobs,
    pod_labels,
    pod_spec,
    secret_templates,
)

# The oldest and the newest Kubernetes minor release still maintained upstream.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
NAMESPACE = "fitjobs"
# Set by another part of the service: comma-separated bearer tokens for /v1/*.
EXTRA_SECRET_SETTINGS = {"FITJOBS_API_TOKENS"}
GPU_COMPONENTS = {"node", "worker"}
HTTP_COMPONENTS = {"node", "api"}
# `fitjobs serve` waits FITJOBS_SHUTDOWN_GRACE + 30 s for its API and supervisor (service/cli.py).
SERVE_STOP_MARGIN_S = 30
# The bucket of the cluster layouts' object storage until a reader sets theirs (docs/deploy.md).
BUCKET_PLACEHOLDER = "s3://replace-with-your-bucket/fitjobs"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def kubernetes_validate() -> str:
    binary = Path(sys.executable).with_name("kubernetes-validate")
    path = str(binary) if binary.exists() else shutil.which("kubernetes-validate")
    assert path, "kubernetes-validate is missing: install the test extra (pip install -e '.[test]')"
    return path


def validate_strictly(path: Path, version: str) -> list[str]:
    """Run `kubernetes-validate --strict` on a file; returns the resources that passed."""
    result = subprocess.run([kubernetes_validate(), "--strict", "--kubernetes-version", version,
                             str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr
    return re.findall(r"passed for resource (\S+) against", result.stdout)


def fitjobs_workloads(rendered: Rendered) -> list[dict[str, Any]]:
    """Workloads whose pods run the fitjobs image."""
    return [w for w in rendered.workloads() if any(is_fitjobs(c) for c in containers(pod_spec(w)))]


# -- the build and the schemas ----------------------------------------------------------------

def test_kustomization_builds(rendered: Rendered) -> None:
    kinds = {obj["kind"] for obj in rendered.objects}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Service"} <= kinds
    assert rendered.workloads()
    for obj in rendered.objects:
        assert obj["apiVersion"] and obj["metadata"]["name"]


@pytest.mark.parametrize("name", COMBINATIONS)
def test_every_combination_of_optional_components_builds(
        name: str, kustomize: Callable[[str], Rendered]) -> None:
    """Each cluster overlay with any subset of k8s/components/{hub-egress,kueue,image-pull-secret}."""
    rendered = kustomize(name)
    names = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in rendered.objects]
    assert len(names) == len(set(names)), "no object twice"
    base = kustomize(name.split("+")[0])
    added = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects} - \
        {(obj["kind"], obj["metadata"]["name"]) for obj in base.objects}
    assert added == ({("LocalQueue", "fitjobs-gpu")} if "kueue" in name.split("+") else set())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(rendered: Rendered, version: str, tmp_path: Path) -> None:
    """Kubernetes' own kinds against its schemas; KEDA's and Kueue's in test_keda.py and test_kueue.py."""
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered.core()))
    passed = validate_strictly(manifest, version)
    expected = [f"{obj['kind'].lower()}/{obj['metadata']['name']}" for obj in rendered.core()]
    assert sorted(passed) == sorted(expected)
    print(f"k8s/{rendered.name}: {len(passed)} objects valid for Kubernetes {version}")


@pytest.mark.parametrize("template", SECRET_TEMPLATES, ids=lambda path: path.name)
def test_secret_templates_validate_strictly(template: Path) -> None:
    assert len(validate_strictly(template, KUBERNETES_VERSIONS[-1])) == 1


def test_objects_live_in_the_restricted_namespace(rendered: Rendered) -> None:
    namespace = rendered.get("Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.objects:
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
        else:
            assert "namespace" not in obj["metadata"], f"{obj['kind']}/{obj['metadata']['name']}"


def test_references_resolve(rendered: Rendered) -> None:
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects}
    secrets = {doc["metadata"]["name"] for doc in secret_templates()}
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        if "priorityClassName" in spec:
            assert ("PriorityClass", spec["priorityClassName"]) in names
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert all(("PersistentVolumeClaim", claim) in names for claim in claims)
        volumes = {v["name"] for v in spec.get("volumes", [])} | templates
        for container in containers(spec):
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        selected = [w for w in rendered.workloads() if selector.items() <= pod_labels(w).items()]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            for workload in selected:
                ports = {p["name"] for c in containers(pod_spec(workload)) for p in c.get("ports", [])}
                assert port["targetPort"] in ports


# -- configuration ----------------------------------------------------------------------------

def test_config_map_holds_only_real_settings(rendered: Rendered) -> None:
    config = rendered.config()
    known = {spec.env for spec in SETTINGS}
    assert set(config) <= known, set(config) - known
    secret_keys = {key for doc in secret_templates() if doc["metadata"]["name"] == "fitjobs-secrets"
                   for key in doc["stringData"]}
    assert secret_keys == {"FITJOBS_DATABASE_URL", "FITJOBS_WEBHOOK_SECRET"} | EXTRA_SECRET_SETTINGS
    assert secret_keys - EXTRA_SECRET_SETTINGS <= known
    assert not set(config) & secret_keys, "a key in both would be decided by envFrom order"
    settings = Settings.from_env(config)  # raises ConfigError on a value the service refuses
    assert settings.host == "0.0.0.0"
    assert str(settings.home) == "/var/lib/fitjobs"


def test_image_user_and_paths_match_the_pods(rendered: Rendered, dockerfile: list[Instruction]) -> None:
    user, _, group = [i for i in dockerfile if i.keyword == "USER"][-1].value.partition(":")
    image = image_env(dockerfile)
    config = rendered.config()
    writable = [config["FITJOBS_HOME"], config["FITJOBS_DATA_ROOT"], "/tmp"] + [
        image[name] for name in ("HF_HOME", "KERAS_HOME", "XDG_CACHE_HOME", "CUDA_CACHE_PATH",
                                 "XDG_RUNTIME_DIR")]
    for workload in fitjobs_workloads(rendered):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsUser"] == int(user)
        assert spec["securityContext"]["runAsGroup"] == int(group)
        assert spec["securityContext"]["fsGroup"] == int(group)
        for container in containers(spec):
            mounts = [m["mountPath"].rstrip("/") for m in container["volumeMounts"]]
            for path in writable:
                assert any(path == m or path.startswith(m + "/") for m in mounts), \
                    f"{workload['metadata']['name']}: {path} is on the read-only root filesystem"


def test_fitjobs_commands_exist(rendered: Rendered) -> None:
    choices = next(action for action in build_parser()._actions if action.dest == "command").choices
    assert choices is not None
    subcommands = set(choices)
    for workload in fitjobs_workloads(rendered):
        for container in containers(pod_spec(workload)):
            command = container["command"]
            assert command[0] == "fitjobs" and command[1] in subcommands and len(command) == 2
            build_parser().parse_args(command[1:] + container.get("args", []))  # exits on a bad option


# -- GPUs and scheduling ----------------------------------------------------------------------

def required_node_terms(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("affinity", {}).get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))


def prefers_non_gpu_nodes(spec: dict[str, Any]) -> bool:
    preferred = spec.get("affinity", {}).get("nodeAffinity", {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution", [])
    return any(term["weight"] > 0 and any(
        e["key"] == "nvidia.com/gpu.present" and e["operator"] == "NotIn" and e["values"] == ["true"]
        for e in term["preference"]["matchExpressions"]) for term in preferred)


def tolerates_gpu_taint(spec: dict[str, Any]) -> bool:
    return any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
               and t.get("operator") == "Exists" for t in spec.get("tolerations", []))


def test_gpu_pods_request_gpus_and_others_do_not(rendered: Rendered) -> None:
    seen = set()
    for workload in rendered.workloads():
        spec, role = pod_spec(workload), component(workload)
        seen.add(role)
        gpus = sum(gpu_count(c) for c in containers(spec))
        # No required node affinity or selector on GPU feature-discovery labels anywhere: node
        # groups that scale from zero do not show them before a node exists.
        assert not required_node_terms(spec) and not spec.get("nodeSelector"), workload["metadata"]["name"]
        if role in GPU_COMPONENTS:
            # The GPU limit places the pod, the toleration admits it to tainted GPU nodes.
            assert gpus >= 1, f"{role} pods must request nvidia.com/gpu"
            assert tolerates_gpu_taint(spec)
            for container in containers(spec):
                requested = container["resources"].get("requests", {}).get("nvidia.com/gpu")
                assert requested is None or int(requested) == gpu_count(container)
        else:
            # API and PostgreSQL prefer CPU nodes and still run on a cluster of GPU nodes only.
            assert gpus == 0, f"{role} pods must not hold GPUs"
            assert not tolerates_gpu_taint(spec) and prefers_non_gpu_nodes(spec)
    assert seen & GPU_COMPONENTS, "some pods train"


def test_termination_grace_covers_the_checkpoint_drain(rendered: Rendered) -> None:
    shutdown_grace = float(rendered.config()["FITJOBS_SHUTDOWN_GRACE"])
    for workload in fitjobs_workloads(rendered):
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        role = component(workload)
        if role == "node":
            assert grace >= shutdown_grace + SERVE_STOP_MARGIN_S
        elif role == "worker":
            # SIGTERM to the trainer, SIGKILL after the grace, then the requeue is written.
            assert grace >= shutdown_grace + 15


# -- security, probes, resources, images ------------------------------------------------------

def test_every_container_has_the_restricted_security_context(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert not any("hostPath" in volume for volume in spec.get("volumes", []))
        for container in containers(spec):
            context = container["securityContext"]
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert context["runAsNonRoot"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert not context.get("privileged"), name


def test_http_pods_are_probed_and_others_have_no_http_probes(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(pod_spec(workload)):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            probes: dict[str, Any] = {kind: container.get(kind)
                                      for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
            if component(workload) in HTTP_COMPONENTS:
                assert "http" in ports
                assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
                if component(workload) == "api":
                    assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            elif component(workload) == "worker":
                # No API: only the supervisor's metrics port, no readiness, exec probes only (the next test).
                assert set(ports) <= {"metrics"} and probes["readinessProbe"] is None
                assert all("httpGet" not in probe for probe in filter(None, probes.values()))
            else:
                for probe in filter(None, probes.values()):
                    assert "httpGet" not in probe


def test_supervisor_pods_are_probed_with_the_worker_check(rendered: Rendered) -> None:
    """Every container running a supervisor (`serve` or `worker`) is restarted when its loop hangs:
    startup and liveness exec probes run `fitjobs serve|worker --check`, which the CLI accepts."""
    config = Settings.from_env(rendered.config())
    probed = 0
    for workload in fitjobs_workloads(rendered):
        spec = pod_spec(workload)
        for container in containers(spec):
            role = container["command"][1]
            if role not in ("serve", "worker"):
                continue
            probed += 1
            name = f"{workload['metadata']['name']}/{container['name']}"
            for kind in ("startupProbe", "livenessProbe"):
                probe = container[kind]
                assert probe["exec"]["command"] == ["fitjobs", role, "--check"], name
                assert build_parser().parse_args(probe["exec"]["command"][1:]).check is True
                # A Python process answers: more than the default 1 s, on a busy node.
                assert probe["timeoutSeconds"] >= 5, f"{name} {kind}"
            startup, liveness = container["startupProbe"], container["livenessProbe"]
            # Before the first beat: GPU discovery, which may ask TensorFlow, then migrations.
            assert startup["periodSeconds"] * startup["failureThreshold"] >= config.gpu_discovery_timeout + 60, name
            # The check itself waits FITJOBS_WORKER_HEALTH_SECONDS; liveness adds no hair trigger.
            assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30, name
            env = {v["name"]: v.get("value") for v in container.get("env", [])}
            heartbeat = Settings.from_env({**rendered.config(), **env}).worker_heartbeat_file
            mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container["volumeMounts"]}
            mount = next(m for m in sorted(mounts, key=len, reverse=True) if str(heartbeat).startswith(m + "/"))
            volume = next(v for v in spec["volumes"] if v["name"] == mounts[mount])
            assert "emptyDir" in volume, f"{name}: the heartbeat file {heartbeat} belongs to this pod alone"
    assert probed, "some container runs a supervisor"


def test_supervisor_pods_name_the_port_of_their_metrics(rendered: Rendered) -> None:
    """Every container running a supervisor serves its /metrics on the `metrics` port, which k8s/monitoring
    scrapes; the setting and the port agree."""
    port = Settings.from_env(rendered.config()).supervisor_metrics_port
    supervisors = [container for workload in fitjobs_workloads(rendered) for container in containers(pod_spec(workload))
                   if container["command"][1] in ("serve", "worker")]
    assert supervisors and port, "the supervisors' metrics are on"
    for container in supervisors:
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert ports.get("metrics") == port, container["name"]


def test_every_container_requests_cpu_and_memory(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(pod_spec(workload)):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert "memory" in resources["limits"]


def test_images_are_pinned(rendered: Rendered) -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in rendered.workloads():
        for container in containers(pod_spec(workload)):
            image = container["image"]
            name, _, tag = image.split("@")[0].rpartition(":")
            assert "/" not in tag and tag and tag != "latest", f"{image} has no fixed tag"
            assert re.match(r"\d+\.\d+(\.\d+)?", tag), f"{image} is not pinned to a version"
            if is_fitjobs(container):
                assert tag == version, f"{image}: the fitjobs image is tagged with the project version"
                assert container["imagePullPolicy"] == "IfNotPresent"


# -- the two layouts --------------------------------------------------------------------------

def test_single_node_keeps_sqlite_and_artifacts_on_one_volume(kustomize: Callable[[str], Rendered]) -> None:
    rendered = kustomize("overlays/single-node")
    node = rendered.get("Deployment", "fitjobs-node")
    assert node["spec"]["replicas"] == 1
    assert node["spec"]["strategy"] == {"type": "Recreate"}
    container = pod_spec(node)["containers"][0]
    assert container["command"] == ["fitjobs", "serve"]
    home = next(v for v in pod_spec(node)["volumes"] if v["name"] == "home")
    assert set(home) == {"name", "persistentVolumeClaim"}, "exactly one volume source"
    claim = rendered.get("PersistentVolumeClaim", home["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    config = rendered.config()
    assert config["FITJOBS_DATA_ROOT"].startswith(config["FITJOBS_HOME"] + "/")
    assert "FITJOBS_DATABASE_URL" not in config, "SQLite in FITJOBS_HOME"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "home")
    assert mount["mountPath"] == config["FITJOBS_HOME"]


@pytest.mark.parametrize("overlay", CLUSTER_OVERLAYS)
def test_cluster_splits_api_and_workers(overlay: str, kustomize: Callable[[str], Rendered]) -> None:
    rendered = kustomize(overlay)
    assert not [w for w in rendered.workloads() if component(w) == "node"]
    api = rendered.get("Deployment", "fitjobs-api")
    workers = [w for w in rendered.workloads() if component(w) == "worker"]
    assert workers
    assert pod_spec(api)["containers"][0]["command"] == ["fitjobs", "api"]
    for worker in workers:
        assert pod_spec(worker)["containers"][0]["command"] == ["fitjobs", "worker"]
        assert pod_spec(worker)["priorityClassName"] == "fitjobs-training"
    assert rendered.get("Service", "fitjobs")["spec"]["selector"]["app.kubernetes.io/component"] == "api"
    priority = rendered.get("PriorityClass", "fitjobs-training")
    assert priority["value"] > 0 and priority["preemptionPolicy"] == "Never" and not priority["globalDefault"]

    hpa = rendered.get("HorizontalPodAutoscaler", "fitjobs-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "fitjobs-api"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in api["spec"], "the autoscaler owns the API's replica count"
    pdb = rendered.get("PodDisruptionBudget", "fitjobs-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(api).items()

    # Object storage holds what is kept: no ReadWriteMany volume, every pod's home is scratch.
    assert not rendered.of_kind("PersistentVolumeClaim")
    for workload in [api, *workers]:
        [home] = [v for v in pod_spec(workload)["volumes"] if v["name"] == "home"]
        assert set(home) == {"name", "emptyDir"} and home["emptyDir"]["sizeLimit"]
    assert rendered.config()["FITJOBS_STORAGE_URL"] == BUCKET_PLACEHOLDER

    database = rendered.get("StatefulSet", "fitjobs-postgres")
    assert pod_spec(database)["containers"][0]["image"].startswith("postgres:")


def test_worker_pool_is_a_long_running_deployment(kustomize: Callable[[str], Rendered]) -> None:
    rendered = kustomize("overlays/cluster-worker-pool")
    assert not rendered.of_kind("ScaledJob") and not rendered.of_kind("TriggerAuthentication")
    worker = rendered.get("Deployment", "fitjobs-worker")
    container = pod_spec(worker)["containers"][0]
    assert container["command"] == ["fitjobs", "worker"] and not container.get("args")
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    # Idle most of its life: autoscalers may consolidate it (its drain requeues its jobs).
    assert "karpenter.sh/do-not-disrupt" not in worker["spec"]["template"]["metadata"].get("annotations", {})
    assert "FITJOBS_GPU_SIZES" not in rendered.config(), "sizes follow the registered workers"


def dns_egress_peers(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [peer for rule in policy["spec"]["egress"] if {p["port"] for p in rule["ports"]} == {53}
            for peer in rule["to"]]


@pytest.mark.parametrize("name", CLUSTER_OVERLAYS + WITH_ALL_COMPONENTS)
def test_cluster_network_policy(name: str, kustomize: Callable[[str], Rendered]) -> None:
    rendered = kustomize(name)
    parts = name.split("+")
    policies = rendered.of_kind("NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and "Ingress" in deny[0]["spec"]["policyTypes"], "ingress is denied by default"

    def selects(policy: dict[str, Any], role: str) -> bool:
        labels = {"app.kubernetes.io/name": "fitjobs", "app.kubernetes.io/component": role}
        return policy["spec"]["podSelector"] != {} and \
            policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()

    ingress = [p for p in policies if p["spec"].get("ingress")]
    open_ingress = [p for p in ingress if any("from" not in rule for rule in p["spec"]["ingress"])]
    assert len(open_ingress) == 1 and selects(open_ingress[0], "api"), "only the API takes outside traffic"
    assert not [p for p in ingress if selects(p, "worker")], "workers take no connections"
    database_ingress = [p for p in ingress if selects(p, "database")]
    peers = [peer for p in database_ingress for rule in p["spec"]["ingress"] for peer in rule["from"]]
    sources = {value for peer in peers if "namespaceSelector" not in peer
               for expression in peer["podSelector"]["matchExpressions"] for value in expression["values"]}
    assert sources == {"api", "worker"}
    # With KEDA, its operator runs the triggers' queries, from its own namespace.
    keda = [peer for peer in peers if "namespaceSelector" in peer]
    if rendered.of_kind("ScaledJob"):
        assert keda == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
                         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}}}]
    else:
        assert not keda

    egress = [p for p in policies if selects(p, "worker") and "Egress" in p["spec"]["policyTypes"]]
    assert len(egress) == 1
    allowed = {(port["port"], port["protocol"]) for rule in egress[0]["spec"]["egress"]
               for port in rule["ports"]}
    # 443: the object store always; the Hub's rule (hub-egress) adds public addresses only.
    assert allowed == {(5432, "TCP"), (53, "UDP"), (53, "TCP"), (443, "TCP")}
    https = [rule for rule in egress[0]["spec"]["egress"] if {port["port"] for port in rule["ports"]} == {443}]
    assert len(https) == (2 if "hub-egress" in parts else 1)
    for rule in egress[0]["spec"]["egress"]:
        assert rule["to"], "every egress rule names its peers"
        ports = {port["port"] for port in rule["ports"]}
        if ports == {5432}:
            assert rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "database"
        elif ports == {443}:
            # Public addresses only: not the cluster's private ranges nor the metadata server.
            block = rule["to"][0]["ipBlock"]
            assert block["cidr"] == "0.0.0.0/0" and "169.254.0.0/16" in block["except"]
            assert "10.0.0.0/8" in block["except"] or block["except"] == ["169.254.0.0/16"]
    # DNS through the cluster's DNS pods and through NodeLocal DNSCache's link-local address.
    dns = dns_egress_peers(egress[0])
    assert {"k8s-app": "kube-dns"} in [peer.get("podSelector", {}).get("matchLabels") for peer in dns]
    assert {"cidr": "169.254.20.10/32"} in [peer.get("ipBlock") for peer in dns]


def test_optional_components_change_only_what_they_say(kustomize: Callable[[str], Rendered]) -> None:
    for overlay in CLUSTER_OVERLAYS:
        plain, full = kustomize(overlay), kustomize("+".join((overlay,) + OPTIONAL_COMPONENTS))
        account = full.get("ServiceAccount", "fitjobs")
        assert account["imagePullSecrets"] == [{"name": "fitjobs-registry"}]
        assert "imagePullSecrets" not in plain.get("ServiceAccount", "fitjobs")
        for workload in full.workloads():
            labelled = [pod_labels(workload).get(KUEUE_LABEL), workload["metadata"]["labels"].get(KUEUE_LABEL)]
            assert labelled == (["fitjobs-gpu"] * 2 if component(workload) == "worker" else [None, None])
        assert not [w for w in plain.workloads() if KUEUE_LABEL in pod_labels(w)], "off by default"


def test_docs_name_every_overlay_and_component() -> None:
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"k8s/{overlay}" in guide, overlay
        assert f"k8s/{overlay}" in readme, overlay
    for folder in sorted((K8S_ROOT / "components").iterdir()):
        assert f"k8s/components/{folder.name}" in guide, folder.name
    assert "k8s/kueue" in guide
    secret = yaml.safe_load(SECRET_TEMPLATES[0].read_text())
    assert secret["metadata"]["name"] in guide
    assert BUCKET_PLACEHOLDER.split("//")[1].split("/")[0] in guide
