"""The KEDA workers of k8s/overlays/cluster: one ScaledJob per GPU size offered, each scaling
`fitjobs worker --once --gpus N` pods on the statement the service counts its queue with, and
every KEDA object valid against the schemas of KEDA's API (the pinned @kubernetes-models/keda)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.config import Settings
from service.store.queue_depth import queue_depth_sql
from tests.deploy.dockerfile_model import REPO_ROOT
from tests.deploy.kustomize_render import (
    KEDA_KINDS,
    KUSTOMIZATIONS,
    Rendered,
    gpu_count,
    pod_spec,
    pod_template,
    secret_templates,
)
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, validate_strictly

KEDA_OVERLAYS = ("overlays/cluster", "overlays/cluster+hub-egress+kueue+image-pull-secret")
KEDA_PACKAGE = REPO_ROOT / "tests" / "deploy" / "keda"
# Where `make setup` installs the package (package-lock.json pins it and its dependencies).
NODE_MODULES = REPO_ROOT / ".cache" / "node" / "node_modules"


def scaled_jobs(rendered: Rendered) -> dict[int, dict[str, Any]]:
    """The ScaledJobs by the GPU count their pods are started with (--gpus N)."""
    found: dict[int, dict[str, Any]] = {}
    for scaled_job in rendered.of_kind("ScaledJob"):
        (container,) = pod_spec(scaled_job)["containers"]
        args = build_parser().parse_args(container["command"][1:] + container["args"])
        assert args.gpus not in found, f"two ScaledJobs for {args.gpus} GPU(s)"
        found[args.gpus] = scaled_job
    return found


@pytest.fixture(params=KEDA_OVERLAYS)
def keda_rendered(request: pytest.FixtureRequest, kustomize: Callable[[str], Rendered]) -> Rendered:
    return kustomize(request.param)


def test_one_scaled_job_per_offered_gpu_size(keda_rendered: Rendered) -> None:
    """FITJOBS_GPU_SIZES, the ScaledJobs and their pods' GPUs name the same sizes."""
    config = keda_rendered.config()
    offered = Settings.from_env(config).gpu_sizes
    jobs = scaled_jobs(keda_rendered)
    assert offered == (1, 2, 4, 8)
    assert tuple(sorted(jobs)) == offered
    for size, scaled_job in jobs.items():
        assert scaled_job["metadata"]["name"] == f"fitjobs-worker-gpus-{size}"
        (container,) = pod_spec(scaled_job)["containers"]
        assert gpu_count(container) == size
        args = build_parser().parse_args(container["command"][1:] + container["args"])
        assert args.once and args.wait == 60


def test_each_trigger_counts_the_queue_of_its_size(keda_rendered: Rendered) -> None:
    postgres = keda_rendered.get("Service", "fitjobs-postgres")
    for size, scaled_job in scaled_jobs(keda_rendered).items():
        spec = scaled_job["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "postgresql"
        metadata = trigger["metadata"]
        assert metadata["query"] == queue_depth_sql(size)
        assert metadata["targetQueryValue"] == "1", "one pod per queued job"
        # From the KEDA operator's namespace: the Service's name qualified by its namespace.
        assert metadata["host"].split(".")[:3] == [postgres["metadata"]["name"], "fitjobs", "svc"]
        assert int(metadata["port"]) == postgres["spec"]["ports"][0]["port"]
        assert spec["minReplicaCount"] == 0, "an empty queue holds no GPU"
        assert spec["maxReplicaCount"] >= 1
        assert spec["scalingStrategy"]["strategy"] == "accurate"
        assert spec["scalingStrategy"]["pendingPodConditions"] == ["Ready"]
        assert spec["rollout"]["strategy"] == "gradual", "an update must not delete training pods"
        auth = keda_rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
        templates = {doc["metadata"]["name"]: doc for doc in secret_templates()}
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in templates[ref["name"]]["stringData"], ref
        assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"password"}
        database = keda_rendered.get("StatefulSet", "fitjobs-postgres")
        env = {v["name"]: v for v in pod_spec(database)["containers"][0]["env"]}
        assert metadata["userName"] == env["POSTGRES_USER"]["value"]
        assert metadata["dbName"] == env["POSTGRES_DB"]["value"]


def test_worker_pods_are_sized_and_protected(keda_rendered: Rendered) -> None:
    jobs = scaled_jobs(keda_rendered)
    memory = {}
    for size, scaled_job in jobs.items():
        template = pod_template(scaled_job)
        spec = template["spec"]
        (container,) = spec["containers"]
        # Training, or about to: consolidation must not evict it.
        annotations = template["metadata"]["annotations"]
        assert annotations["karpenter.sh/do-not-disrupt"] == "true"
        assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert spec["restartPolicy"] == "Never" and scaled_job["spec"]["jobTargetRef"]["backoffLimit"] == 0
        assert spec["priorityClassName"] == "fitjobs-training"
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert int(requests["cpu"]) == 4 * size
        memory[size] = int(requests["memory"].removesuffix("Gi"))
        shm = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        if size == 1:
            assert not shm
        else:
            (volume,) = shm
            assert mounts[volume["name"]] == "/dev/shm"
            # /dev/shm counts against the memory limit: it must leave room for the trainer.
            shm_gi = int(volume["emptyDir"]["sizeLimit"].removesuffix("Gi"))
            assert int(limits["memory"].removesuffix("Gi")) - shm_gi >= memory[size]
    assert memory == {size: memory[1] * size for size in jobs}, "memory grows with the GPUs"


def test_scaled_job_pod_templates_validate_strictly(keda_rendered: Rendered, tmp_path: Path) -> None:
    """A ScaledJob's jobTargetRef is a batch/v1 JobSpec: Kubernetes' schema checks it field by field
    (the KEDA schema below accepts unknown fields, as the API server's pruning would drop them)."""
    jobs = [{"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": s["metadata"]["name"], "namespace": s["metadata"]["namespace"]},
             "spec": s["spec"]["jobTargetRef"]} for s in keda_rendered.of_kind("ScaledJob")]
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(yaml.safe_dump_all(jobs))
    for version in KUBERNETES_VERSIONS:
        assert len(validate_strictly(manifest, version)) == len(jobs) == 4


def keda_validator() -> list[str]:
    """The command validating KEDA objects. Without node or the package: a visible skip, a failure under CI."""
    node = shutil.which("node")
    missing = "node is not installed" if node is None else (
        None if (NODE_MODULES / "@kubernetes-models" / "keda").is_dir()
        else f"{NODE_MODULES} lacks @kubernetes-models/keda (run `make setup`)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the KEDA schema check is required under CI: {missing}")
        pytest.skip(f"KEDA objects not validated against KEDA's schema: {missing}")
    assert node is not None
    return [node, str(KEDA_PACKAGE / "validate.mjs"), str(NODE_MODULES)]


def run_validator(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(keda_validator(), input=json.dumps(objects), capture_output=True, text=True,
                          timeout=120)


def test_keda_package_is_pinned() -> None:
    package = json.loads((KEDA_PACKAGE / "package.json").read_text())
    lock = json.loads((KEDA_PACKAGE / "package-lock.json").read_text())
    version = package["dependencies"]["@kubernetes-models/keda"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "an exact version"
    assert lock["packages"]["node_modules/@kubernetes-models/keda"]["version"] == version
    assert all(entry.get("integrity") for name, entry in lock["packages"].items() if name), "hashes for all"
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert f"@kubernetes-models/keda@{version}" in guide and "KEDA v2.19.0" in guide


@pytest.mark.parametrize("name", [n for n in KUSTOMIZATIONS if n.split("+")[0] == "overlays/cluster"])
def test_keda_objects_validate_against_keda_schema(name: str, kustomize: Callable[[str], Rendered]) -> None:
    objects = [obj for obj in kustomize(name).objects if obj["kind"] in KEDA_KINDS]
    assert len(objects) == 5, "four ScaledJobs and their TriggerAuthentication"
    result = run_validator(objects)
    assert result.returncode == 0, result.stdout + result.stderr
    valid = re.findall(r"^valid (\S+)$", result.stdout, re.MULTILINE)
    assert sorted(valid) == sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    print(f"k8s/{name}: {len(valid)} KEDA objects valid")


def test_keda_schema_check_refuses_broken_objects(kustomize: Callable[[str], Rendered]) -> None:
    """The check bites: a trigger without its query string, a count given as text, a TriggerAuthentication
    entry without its key."""
    rendered = kustomize("overlays/cluster")
    scaled_job = json.loads(json.dumps(rendered.of_kind("ScaledJob")[0]))
    scaled_job["spec"]["maxReplicaCount"] = "eight"
    scaled_job["spec"]["triggers"][0]["metadata"]["query"] = 1
    auth = json.loads(json.dumps(rendered.of_kind("TriggerAuthentication")[0]))
    del auth["spec"]["secretTargetRef"][0]["key"]
    result = run_validator([scaled_job, auth])
    assert result.returncode == 1
    assert "spec/maxReplicaCount must be integer" in result.stdout
    assert "metadata/query must be string" in result.stdout
    assert "must have required property key" in result.stdout
