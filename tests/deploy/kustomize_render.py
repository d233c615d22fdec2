"""Kustomize trees under k8s/ rendered by `kubectl kustomize`, and walks over their pods."""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

K8S_ROOT = Path(__file__).resolve().parents[2] / "k8s"
OVERLAYS = ("overlays/single-node", "overlays/cluster", "overlays/cluster-worker-pool")
CLUSTER_OVERLAYS = ("overlays/cluster", "overlays/cluster-worker-pool")
# Components an overlay may add (commented out in the cluster overlays' kustomization.yaml).
OPTIONAL_COMPONENTS = ("hub-egress", "kueue", "image-pull-secret")
# Each cluster overlay with every optional component at once: "overlays/cluster+hub-egress+...".
WITH_ALL_COMPONENTS = tuple("+".join((overlay,) + OPTIONAL_COMPONENTS) for overlay in CLUSTER_OVERLAYS)
# What the pod tests and the schema checks run on.
KUSTOMIZATIONS = ("base",) + OVERLAYS + WITH_ALL_COMPONENTS
# Every cluster overlay with every subset of the optional components: these must all build.
COMBINATIONS = tuple("+".join((overlay,) + subset) for overlay in CLUSTER_OVERLAYS
                     for size in range(len(OPTIONAL_COMPONENTS) + 1)
                     for subset in itertools.combinations(OPTIONAL_COMPONENTS, size))
# Cluster-scoped Kueue objects a cluster admin applies once (k8s/kueue).
KUEUE_CLUSTER = "kueue"
SECRET_TEMPLATES = (K8S_ROOT / "base" / "secret.template.yaml",
                    K8S_ROOT / "components" / "cluster" / "postgres-secret.template.yaml")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ScaledJob")
# Kinds of the KEDA and Kueue CRDs, validated against their own schemas (not Kubernetes').
KEDA_KINDS = ("ScaledJob", "TriggerAuthentication")
KUEUE_KINDS = ("ResourceFlavor", "ClusterQueue", "LocalQueue")
CLUSTER_SCOPED_KINDS = ("Namespace", "PriorityClass", "ResourceFlavor", "ClusterQueue")


@dataclass(frozen=True)
class Rendered:
    """The output of `kubectl kustomize` for one kustomization folder."""

    name: str
    text: str
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Objects of one kind."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """The one object of this kind and name."""
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def core(self) -> list[dict[str, Any]]:
        """Objects of Kubernetes' own kinds (not KEDA's or Kueue's)."""
        return [obj for obj in self.objects if obj["kind"] not in KEDA_KINDS + KUEUE_KINDS]

    def workloads(self) -> list[dict[str, Any]]:
        """Objects that run pods."""
        return [obj for obj in self.objects if obj["kind"] in WORKLOAD_KINDS]

    def config(self) -> dict[str, str]:
        """The data of the fitjobs-config ConfigMap (its name carries kustomize's hash)."""
        maps = [obj for obj in self.of_kind("ConfigMap")
                if obj["metadata"]["name"].startswith("fitjobs-config")]
        assert len(maps) == 1, f"{self.name}: expected one fitjobs-config ConfigMap"
        return dict(maps[0]["data"])


def build(kubectl: str, name: str) -> Rendered:
    """Run `kubectl kustomize k8s/NAME` and parse its output.

    NAME may be OVERLAY+COMPONENT+...: the overlay with those components of k8s/components
    added, as uncommenting them in the overlay's kustomization.yaml does.
    """
    overlay, *components = name.split("+")
    with tempfile.TemporaryDirectory() as folder:
        root = str(K8S_ROOT / overlay)
        if components:
            # kustomize takes only relative paths to other kustomizations.
            root = folder
            kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                             "resources": [os.path.relpath(K8S_ROOT / overlay, folder)],
                             "components": [os.path.relpath(K8S_ROOT / "components" / c, folder)
                                            for c in components]}
            Path(folder, "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = subprocess.run([kubectl, "kustomize", root], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize k8s/{name} failed:\n{result.stderr}"
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    return Rendered(name, result.stdout, objects)


def secret_templates() -> list[dict[str, Any]]:
    """The Secrets that are created by hand from the templates next to the kustomizations."""
    return [yaml.safe_load(path.read_text()) for path in SECRET_TEMPLATES]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    """A workload's pod template (a ScaledJob's is that of the Jobs it creates)."""
    spec = workload["spec"]
    return dict(spec["jobTargetRef"]["template"] if workload["kind"] == "ScaledJob" else spec["template"])


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The spec of a workload's pod template."""
    return dict(pod_template(workload)["spec"])


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    """The labels of a workload's pod template."""
    return dict(pod_template(workload)["metadata"]["labels"])


def component(workload: dict[str, Any]) -> str:
    """The app.kubernetes.io/component label of a workload's pods."""
    return pod_labels(workload).get("app.kubernetes.io/component", "")


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of a pod spec, init containers included."""
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def gpu_count(container: dict[str, Any]) -> int:
    """nvidia.com/gpu the container asks for (extended resources: the limit is the request)."""
    resources = container.get("resources", {})
    value = resources.get("limits", {}).get("nvidia.com/gpu",
                                            resources.get("requests", {}).get("nvidia.com/gpu", 0))
    return int(value)


def is_fitjobs(container: dict[str, Any]) -> bool:
    """Whether a container runs the fitjobs image."""
    return str(container["image"]).rsplit("/", 1)[-1].split(":")[0].split("@")[0] == "fitjobs"
