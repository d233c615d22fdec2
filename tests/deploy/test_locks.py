"""The image's lock files: complete, hash-pinned, in step with pyproject.toml, CUDA held where TensorFlow wants it."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.dockerfile_model import REPO_ROOT

LOCKS = {"cpu": REPO_ROOT / "docker" / "requirements" / "cpu.txt",
         "cuda": REPO_ROOT / "docker" / "requirements" / "cuda.txt"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s\\;]+)")
# What a Linux x86_64 image with Python 3.11 evaluates markers as.
IMAGE_ENVIRONMENT: dict[str, str] = {**{key: str(value) for key, value in default_environment().items()},
                                     "python_version": "3.11", "sys_platform": "linux",
                                     "platform_system": "Linux", "platform_machine": "x86_64"}


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """Package -> (version, hashes) of a `pip-compile --generate-hashes` style file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        match = PIN.match(stripped)
        if match:
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(3), [])
        elif stripped.startswith("--hash=sha256:") and current is not None:
            entries[current][1].append(stripped.split(":", 1)[1].rstrip(" \\"))
    return entries


def project_dependencies() -> list[Requirement]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return [Requirement(text) for text in pyproject["project"]["dependencies"]]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_dependency_of_the_project_is_locked_within_its_range(lock: str) -> None:
    locked = read_lock(LOCKS[lock])
    assert len(locked) > 50
    for requirement in project_dependencies():
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in {LOCKS[lock].name}: run docker/lock.sh"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{LOCKS[lock].name} pins {name}=={version}, outside pyproject.toml's {requirement}: run docker/lock.sh"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_has_sha256_hashes(lock: str) -> None:
    for name, (version, hashes) in read_lock(LOCKS[lock]).items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in hashes), (name, version)


def test_the_cpu_lock_has_no_cuda_and_the_cuda_lock_differs_only_by_it() -> None:
    cpu, cuda = read_lock(LOCKS["cpu"]), read_lock(LOCKS["cuda"])
    assert not [name for name in cpu if name.startswith("nvidia-")]
    extra = set(cuda) - set(cpu)
    assert extra and all(name.startswith("nvidia-") for name in extra), extra
    assert {name: cpu[name][0] for name in cpu} == {name: cuda[name][0] for name in cpu}


def test_cuda_wheels_are_held_at_what_tensorflow_was_built_against() -> None:
    cuda = read_lock(LOCKS["cuda"])
    # The lower bounds of the installed TensorFlow's and-cuda extra: the versions it was built with.
    wanted = {}
    for text in requires("tensorflow") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and 'extra == "and-cuda"' in str(requirement.marker):
            floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            wanted[canonicalize_name(requirement.name)] = floors[0]
    assert len(wanted) >= 10
    assert {name: cuda[name][0] for name in wanted} == wanted
    constraints = dict(line.split("==") for line in
                       (REPO_ROOT / "docker" / "cuda-constraints.txt").read_text().splitlines()
                       if line and not line.startswith("#"))
    assert {canonicalize_name(name): version for name, version in constraints.items()} == wanted


def test_the_documented_cuda_and_cudnn_are_the_locked_ones() -> None:
    cuda = read_lock(LOCKS["cuda"])
    runtime, cudnn = cuda["nvidia-cuda-runtime-cu12"][0], cuda["nvidia-cudnn-cu12"][0]
    for document in ("Dockerfile", "docs/deploy.md"):
        text = (REPO_ROOT / document).read_text()
        assert f"nvidia-cuda-runtime-cu12 {runtime}" in text, document
        assert f"nvidia-cudnn-cu12 {cudnn}" in text, document
        major_minor = ".".join(runtime.split(".")[:2])
        assert f"CUDA {major_minor}" in text and f"cuDNN {'.'.join(cudnn.split('.')[:2])}" in text, document


def test_this_environment_runs_the_locked_versions() -> None:
    """`make setup` installs the CPU lock first, so the tests run what the images install."""
    from importlib.metadata import PackageNotFoundError, version

    mismatched: dict[str, tuple[str, str | None]] = {}
    for name, (locked, _) in read_lock(LOCKS["cpu"]).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            mismatched[name] = (locked, None)
            continue
        if canonicalize_name(name) not in ("pip",) and installed != locked:
            mismatched[name] = (locked, installed)
    assert not mismatched, f"locked vs installed (run `make setup`): {mismatched}"
