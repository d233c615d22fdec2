"""The Kueue objects of k8s/kueue (ResourceFlavor, ClusterQueue) and k8s/components/kueue
(LocalQueue) against Kueue's v1beta1 CRD schemas (vendored in tests/deploy/kueue, with their
source), and against the worker pods they must admit."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from tests.deploy.dockerfile_model import REPO_ROOT
from tests.deploy.kustomize_render import (
    KUEUE_CLUSTER,
    KUEUE_KINDS,
    Rendered,
    component,
    containers,
    pod_spec,
)

SCHEMA = json.loads((REPO_ROOT / "tests" / "deploy" / "kueue" / "kueue-v1beta1.schema.json").read_text())
WITH_KUEUE = ("overlays/cluster+kueue", "overlays/cluster-worker-pool+kueue")


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{kind}"})


def cel_errors(obj: dict[str, Any]) -> list[str]:
    """The CRDs' x-kubernetes-validations rules these objects could break (left out of the schema)."""
    errors = []
    if obj["kind"] == "ClusterQueue":
        spec = obj["spec"]
        for group in spec.get("resourceGroups", []):
            if any(len(f["resources"]) != len(group["coveredResources"]) for f in group["flavors"]):
                errors.append("flavors must have the same number of resources as the coveredResources")
        if "cohort" not in spec and any("borrowingLimit" in r for g in spec.get("resourceGroups", [])
                                        for f in g["flavors"] for r in f["resources"]):
            errors.append("borrowingLimit must be nil when cohort is empty")
    return errors


@pytest.fixture
def kueue_objects(kustomize: Callable[[str], Rendered]) -> list[dict[str, Any]]:
    objects = list(kustomize(KUEUE_CLUSTER).objects)
    for name in WITH_KUEUE:
        objects += [obj for obj in kustomize(name).objects if obj["kind"] in KUEUE_KINDS]
    return objects


def test_schema_names_its_source() -> None:
    assert set(SCHEMA["x-source"]) == set(KUEUE_KINDS)
    for kind, url in SCHEMA["x-source"].items():
        assert url.startswith("https://raw.githubusercontent.com/kubernetes-sigs/kueue/")
        assert url.endswith(f"kueue.x-k8s.io_{kind.lower()}s.yaml")
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert SCHEMA["x-kueue-version"] in guide and "tests/deploy/kueue/kueue-v1beta1.schema.json" in guide


def test_kueue_objects_validate_against_the_crd_schema(kueue_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(obj["kind"] for obj in kueue_objects)
    assert kinds == ["ClusterQueue", "LocalQueue", "LocalQueue", "ResourceFlavor"]
    for obj in kueue_objects:
        errors = [e.message for e in validator(obj["kind"]).iter_errors(obj)] + cel_errors(obj)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {errors}"


def test_kueue_schema_refuses_broken_objects(kueue_objects: list[dict[str, Any]]) -> None:
    """The check bites: an unknown field, a bad enum value, a quota that is no quantity."""
    queue = copy.deepcopy(next(o for o in kueue_objects if o["kind"] == "ClusterQueue"))
    queue["spec"]["queueingStrategy"] = "Fastest"
    queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "lots"
    queue["spec"]["quota"] = 1
    messages = [e.message for e in validator("ClusterQueue").iter_errors(queue)]
    assert any("'Fastest' is not one of" in m for m in messages), messages
    assert any("'quota' was unexpected" in m for m in messages), messages
    assert any("'lots' is not valid" in m for m in messages), messages
    uneven = copy.deepcopy(next(o for o in kueue_objects if o["kind"] == "ClusterQueue"))
    uneven["spec"]["resourceGroups"][0]["flavors"][0]["resources"].pop()
    assert cel_errors(uneven) == ["flavors must have the same number of resources as the coveredResources"]
    local = copy.deepcopy(next(o for o in kueue_objects if o["kind"] == "LocalQueue"))
    local["spec"]["clusterQueue"] = "Not_A_Name"
    assert list(validator("LocalQueue").iter_errors(local))


def test_queues_connect_and_cover_the_worker_pods(kustomize: Callable[[str], Rendered]) -> None:
    cluster = kustomize(KUEUE_CLUSTER)
    (flavor,) = cluster.of_kind("ResourceFlavor")
    (queue,) = cluster.of_kind("ClusterQueue")
    # No node labels: they would become the pods' nodeSelector and defeat scale-from-zero.
    assert not flavor["spec"].get("nodeLabels")
    (group,) = queue["spec"]["resourceGroups"]
    assert [f["name"] for f in group["flavors"]] == [flavor["metadata"]["name"]]
    quotas = {r["name"] for r in group["flavors"][0]["resources"]}
    for name in WITH_KUEUE:
        rendered = kustomize(name)
        (local,) = rendered.of_kind("LocalQueue")
        assert local["spec"]["clusterQueue"] == queue["metadata"]["name"]
        assert local["metadata"]["namespace"] == queue["spec"]["namespaceSelector"]["matchLabels"][
            "kubernetes.io/metadata.name"]
        workers = [w for w in rendered.workloads() if component(w) == "worker"]
        assert workers
        for worker in workers:
            for container in containers(pod_spec(worker)):
                # Kueue admits no workload asking for a resource its ClusterQueue does not cover.
                requested = set(container["resources"].get("requests", {})) | set(
                    container["resources"].get("limits", {}))
                assert requested <= set(group["coveredResources"]) == quotas, requested
                gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
                nominal = next(r["nominalQuota"] for r in group["flavors"][0]["resources"]
                               if r["name"] == "nvidia.com/gpu")
                assert gpus <= int(nominal), "the largest worker fits the quota"
